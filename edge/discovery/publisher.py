"""
Merge what providers report into one snapshot and hand it to consumers.

Each provider (Docker, the config file) reports a complete snapshot of its
own under its name.  Reports are coalesced for ``debounce`` seconds (Traefik's
ring channel idea: only the newest report per provider matters), merged, and
published only when the merged content differs from the last one published.
Consumers subscribe with a callable that takes a :class:`Snapshot`; it is
called on the reactor thread, once at once with the current snapshot and then
after every change.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from twisted.logger import Logger

from edge.snapshot import EMPTY, Snapshot

__all__ = ["ProviderStatus", "SnapshotPublisher"]

Subscriber = Callable[[Snapshot], None]


@dataclass(frozen=True)
class ProviderStatus:
    """How a provider is doing, for logs, the admin API and metrics."""

    name: str
    connected: bool = False
    last_sync: float | None = None  # reactor.seconds() of the last good sync
    last_error: str = ""
    last_error_at: float | None = None
    syncs: int = 0
    errors: int = 0


class SnapshotPublisher:
    _log = Logger()

    def __init__(self, reactor, debounce: float = 0.2):
        self._reactor = reactor
        self._debounce = debounce
        self._reports: dict[str, Snapshot] = {}
        self._subscribers: list[Subscriber] = []
        self._pending = None
        self._status: dict[str, ProviderStatus] = {}
        self.current: Snapshot = EMPTY
        self.generation = 0
        self.published_at: float | None = None

    # -- consumers -------------------------------------------------------

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call ``subscriber`` now and on every change; returns an unsubscribe callable."""
        self._subscribers.append(subscriber)
        self._deliver(subscriber, self.current)

        def unsubscribe() -> None:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

        return unsubscribe

    # -- providers -------------------------------------------------------

    def report(self, provider: str, snapshot: Snapshot) -> None:
        """A provider's complete current view; replaces its previous report."""
        self._reports[provider] = snapshot
        status = self.status(provider)
        self._status[provider] = replace(
            status,
            connected=True,
            last_sync=self._reactor.seconds(),
            syncs=status.syncs + 1,
        )
        if self._pending is None or not self._pending.active():
            if self._debounce > 0:
                self._pending = self._reactor.callLater(self._debounce, self._publish)
            else:
                self._publish()

    def report_error(self, provider: str, error: str) -> None:
        """A provider lost its source; its last report stays in force."""
        status = self.status(provider)
        self._status[provider] = replace(
            status,
            connected=False,
            last_error=error,
            last_error_at=self._reactor.seconds(),
            errors=status.errors + 1,
        )

    def status(self, provider: str) -> ProviderStatus:
        return self._status.get(provider) or ProviderStatus(provider)

    def statuses(self) -> tuple[ProviderStatus, ...]:
        return tuple(self._status[name] for name in sorted(self._status))

    def flush(self) -> None:
        """Publish pending reports now (used on shutdown and in tests)."""
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._publish()

    # -- internals -------------------------------------------------------

    def _publish(self) -> None:
        self._pending = None
        merged = EMPTY
        for name in sorted(self._reports):
            merged = merged.merged(self._reports[name])
        if merged == self.current:
            return
        self.current = merged
        self.generation += 1
        self.published_at = self._reactor.seconds()
        self._log.info(
            "Published snapshot {generation}: {routers} routers, {services} services,"
            " {targets} targets, {nodes} nodes, {problems} problems",
            generation=self.generation,
            routers=len(merged.routers),
            services=len(merged.services),
            targets=sum(len(s.targets) for s in merged.services),
            nodes=len(merged.nodes),
            problems=len(merged.problems),
        )
        for subscriber in list(self._subscribers):
            self._deliver(subscriber, merged)

    def _deliver(self, subscriber: Subscriber, snapshot: Snapshot) -> None:
        try:
            subscriber(snapshot)
        except Exception:
            self._log.failure("Snapshot subscriber {subscriber!r} failed", subscriber=subscriber)
