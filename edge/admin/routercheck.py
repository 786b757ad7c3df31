"""
Why a router of the snapshot does not serve, as the admin API reports it.

The HTTP front end compiles each router when a snapshot arrives and leaves
out one that does not compile (it logs the reason).  The admin API must not
call such a router "ok", so this module compiles it the same way through the
HTTP layer's public functions, and checks its entry point names against the
configured ones.  Results are kept per snapshot: the dashboard polls.
"""

from __future__ import annotations

from typing import Mapping

from edge.snapshot import Router, Snapshot

__all__ = ["RouterChecker", "router_errors"]


def _compile_error(router: Router) -> str:
    try:
        from edge.http.middlewares import compile_middlewares
        from edge.http.routing import compile_rule
    except ImportError:  # no HTTP front end: nothing to compile for
        return ""
    from edge import rules as R

    try:
        if not isinstance(router.rule, R.Host):
            compile_rule(router.rule)
        compile_middlewares(router.middlewares)
    except Exception as e:  # the compilers raise assorted types, as the HTTP layer sees
        return f"left out of the routing table: cannot compile it ({e})"
    return ""


def router_errors(snapshot: Snapshot, entrypoints: tuple[str, ...]) -> dict[str, str]:
    """Router name -> why it does not serve, for the routers that do not."""
    known = ", ".join(entrypoints) or "none"
    found: dict[str, str] = {}
    for router in snapshot.routers:
        unknown = [name for name in router.entry_points if name not in entrypoints]
        reasons = []
        if unknown:
            reasons.append(
                f"unknown entry point{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}"
                f" (known: {known})"
            )
        error = _compile_error(router)
        if error:
            reasons.append(error)
        if reasons:
            found[router.name] = "; ".join(reasons)
    return found


class RouterChecker:
    """:func:`router_errors` of the latest snapshot, computed once per snapshot."""

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._entrypoints: tuple[str, ...] = ()
        self._errors: Mapping[str, str] = {}

    def __call__(self, snapshot: Snapshot, entrypoints: tuple[str, ...]) -> Mapping[str, str]:
        if snapshot is not self._snapshot or entrypoints != self._entrypoints:
            self._errors = router_errors(snapshot, entrypoints)
            self._snapshot, self._entrypoints = snapshot, entrypoints
        return self._errors
