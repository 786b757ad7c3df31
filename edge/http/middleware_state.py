"""
Middleware state that outlives a routing table.

Routing tables are rebuilt for every snapshot, and a snapshot follows any
task change anywhere in the swarm.  The middlewares that count -- rate
limits, in-flight limits, circuit breakers -- must not start from zero each
time: a client would get a fresh burst, or twice the in-flight slots, or a
tripped breaker would close, whenever an unrelated service scaled.  Their
runtime objects are kept here, one per router and middleware definition (a
changed definition starts afresh), and forgotten when a rebuild no longer
uses them, so what is kept is bounded by the current snapshot.
"""

from __future__ import annotations

__all__ = ["MiddlewareState"]


class MiddlewareState:
    """Runtime objects of stateful middlewares, kept across table rebuilds."""

    def __init__(self):
        self._kept: dict = {}
        self._used: set = set()

    def begin(self) -> None:
        """A rebuild starts: what it does not ask for is dropped at :meth:`end`."""
        self._used = set()

    def keep(self, router: str, middleware, make):
        """The object kept for ``middleware`` on ``router``, made by ``make()`` the first time."""
        key = (router, middleware)
        try:
            found = self._kept.get(key)
        except TypeError:  # a definition that cannot be a key is never kept
            return make()
        if found is None:
            found = self._kept[key] = make()
        self._used.add(key)
        return found

    def end(self) -> None:
        """Forget the objects of routers and definitions the rebuild did not use."""
        self._kept = {k: v for k, v in self._kept.items() if k in self._used}

    def __len__(self) -> int:
        return len(self._kept)
