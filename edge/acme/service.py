"""
The ACME service: keeps one certificate per wanted name set, issued and renewed.

It follows the snapshot (:func:`~edge.acme.names.wanted_certificates`),
loads what ``tls.state_dir`` already holds, and once a second starts the
orders that are due: at most one per resolver at a time, each in a small
dedicated thread pool (the ``acme`` package blocks).  Results come back to
the reactor thread as Deferred callbacks and are swapped into a fresh
:class:`~edge.tls.store.CertificateIndex` the handshake reads through
:meth:`ACMEService.lookup`.  A failed order records its reason and leaves
the certificate in service alone.
"""

from __future__ import annotations

import datetime
from typing import Callable

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from edge.acme.challenges import ChallengeBoard
from edge.acme.client import ACMEClient, Issued, OrderError, directory_url
from edge.acme.dns01 import publisher_for
from edge.acme.files import ResolverFiles
from edge.acme.names import Wanted, wanted_certificates
from edge.acme.schedule import RETRY_BASE, RETRY_CAP, Managed, backoff
from edge.tls.store import CertificateIndex, CertifiedKey, StoreError

__all__ = ["ACMEService", "make_acme_service"]


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class ACMEService(Service):
    """Orders, renews and serves ACME certificates for routed names."""

    _log = Logger()
    name = "acme"

    def __init__(
        self,
        resolvers: dict,
        clients: dict[str, ACMEClient],
        files: dict[str, ResolverFiles],
        publisher,
        reactor,
        board: ChallengeBoard,
        pool: ThreadPool | None = None,
        interval: float = 1.0,
        now: Callable[[], datetime.datetime] = _utcnow,
        retry_base: float = RETRY_BASE,
        retry_cap: float = RETRY_CAP,
    ):
        self.resolvers = resolvers
        self.clients = clients
        self.files = files
        self.board = board
        self._publisher = publisher
        self._reactor = reactor
        self._pool = pool
        self._interval = interval
        self._now = now
        self._retry_base = retry_base
        self._retry_cap = retry_cap
        self.managed: dict[tuple, Managed] = {}
        self.index = CertificateIndex()
        self._busy: set[str] = set()
        self._reported: set[str] = set()
        self._unsubscribe = None
        self._loop: LoopingCall | None = None

    # -- what the TLS layer and the admin API use -------------------------

    def lookup(self, name: str) -> CertifiedKey | None:
        """An issued, unexpired certificate covering ``name``, or ``None``."""
        found = self.index.lookup(name)
        if found is not None and found.not_after <= self._now():
            return None
        return found

    def certificates(self) -> list[dict]:
        """Each managed certificate, for the admin API."""
        rows = []
        for managed in sorted(self.managed.values(), key=lambda m: (m.wanted.resolver, m.wanted.names)):
            resolver = self.resolvers[managed.wanted.resolver]
            certified = managed.certified
            renew_at = managed.renew_at(resolver.renew_fraction)
            issuer = ""
            if certified is not None:
                issuer = certified.leaf.issuer.rfc4514_string()
            rows.append(
                {
                    "names": list(managed.wanted.names),
                    "resolver": managed.wanted.resolver,
                    "ca": directory_url(resolver.ca),
                    "challenge": resolver.challenge,
                    "issuer": issuer,
                    "not_after": certified.not_after.isoformat() if certified else None,
                    "renew_at": renew_at.isoformat() if renew_at else None,
                    "last_attempt": managed.last_attempt.isoformat() if managed.last_attempt else None,
                    "last_error": managed.last_error,
                    "next_attempt": (
                        managed.not_before_attempt.isoformat() if managed.not_before_attempt else None
                    ),
                    "ordering": managed.ordering,
                    "orders": managed.orders,
                    "path": managed.path,
                }
            )
        return rows

    # -- service ----------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self._pool is not None:
            self._pool.start()
        self._unsubscribe = self._publisher.subscribe(self.update)
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self._reactor
        self._loop.start(self._interval, now=False)

    def stopService(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._pool is not None:
            # Waits for an order in progress; each CA request has a timeout.
            self._pool.stop()
        return super().stopService()

    # -- following the snapshot -------------------------------------------

    def update(self, snapshot) -> None:
        problems: list[str] = []
        wanted = wanted_certificates(snapshot, self.resolvers, problems)
        for problem in problems:
            if problem not in self._reported and len(self._reported) < 1000:
                self._reported.add(problem)
                self._log.warn("ACME: {problem}", problem=problem)
        keys = {w.key for w in wanted}
        for key in list(self.managed):
            if key not in keys and not self.managed[key].ordering:
                del self.managed[key]  # the file stays: routed again, it is reused
        for w in wanted:
            if w.key not in self.managed:
                self.managed[w.key] = self._load(w)
        self._reindex()
        self.tick()

    def _load(self, wanted: Wanted) -> Managed:
        managed = Managed(wanted)
        files = self.files[wanted.resolver]
        managed.path = files.certificate_path(wanted.names)
        try:
            managed.certified = files.read_certificate(wanted.names, now=self._now())
        except StoreError as e:
            self._log.warn(
                "Ignoring saved ACME certificate {path}: {problem}", path=managed.path, problem=e
            )
        return managed

    def _reindex(self) -> None:
        now = self._now()
        self.index = CertificateIndex.build(
            m.serving(now) for m in self.managed.values() if m.serving(now) is not None
        )

    # -- ordering ---------------------------------------------------------

    def tick(self) -> None:
        """Start every due order whose resolver is idle."""
        if not self.running:
            return
        now = self._now()
        for managed in list(self.managed.values()):
            resolver = self.resolvers[managed.wanted.resolver]
            if managed.wanted.resolver in self._busy or not managed.due(now, resolver.renew_fraction):
                continue
            self._start(managed, now)

    def _start(self, managed: Managed, now: datetime.datetime) -> None:
        wanted = managed.wanted
        self._busy.add(wanted.resolver)
        managed.ordering = True
        managed.last_attempt = now
        managed.orders += 1
        self._log.info(
            "Ordering a certificate for {names} from ACME resolver {resolver}{why}",
            names=", ".join(wanted.names),
            resolver=wanted.resolver,
            why=" (renewal)" if managed.certified is not None else "",
        )
        client = self.clients[wanted.resolver]
        files = self.files[wanted.resolver]

        def order_and_save() -> Issued:
            issued = client.order(wanted.names)
            try:
                files.write_certificate(wanted.names, issued.certified)
            except OSError as e:
                # Served from memory; the next start orders again.
                self._log.warn("Cannot save the ACME certificate in {path}: {error}", path=managed.path, error=e)
            return issued

        if self._pool is None:
            from twisted.internet.defer import maybeDeferred

            d = maybeDeferred(order_and_save)
        else:
            d = deferToThreadPool(self._reactor, self._pool, order_and_save)
        d.addCallbacks(self._issued, self._failed, (managed,), None, (managed,), None)
        d.addBoth(self._done, managed)

    def _issued(self, issued: Issued, managed: Managed) -> None:
        managed.certified = issued.certified
        managed.ari = issued.renew_at
        managed.last_error = ""
        managed.failures = 0
        managed.not_before_attempt = None
        self._log.info(
            "Issued {names} by {issuer}, valid until {not_after}",
            names=", ".join(managed.wanted.names),
            issuer=issued.certified.leaf.issuer.rfc4514_string(),
            not_after=issued.certified.not_after.isoformat(),
        )

    def _failed(self, failure, managed: Managed) -> None:
        error = failure.value
        retry_after = getattr(error, "retry_after", None)
        managed.failures += 1
        managed.last_error = str(error) if isinstance(error, OrderError) else repr(error)
        delay = backoff(managed.failures, retry_after, self._retry_base, self._retry_cap)
        managed.not_before_attempt = self._now() + datetime.timedelta(seconds=delay)
        if not isinstance(error, OrderError):
            self._log.failure("ACME order failed unexpectedly", failure)
        self._log.error(
            "ACME order for {names} failed: {error}; next attempt in {delay:.0f} s{keeping}",
            names=", ".join(managed.wanted.names),
            error=managed.last_error,
            delay=delay,
            keeping=", the current certificate stays in service" if managed.serving(self._now()) else "",
        )

    def _done(self, _ignored, managed: Managed) -> None:
        managed.ordering = False
        self._busy.discard(managed.wanted.resolver)
        self._reindex()


def make_acme_service(config, publisher, reactor, board: ChallengeBoard | None = None) -> ACMEService:
    """The ACME service for ``config`` (a whole :class:`edge.config.Config`)."""
    board = board if board is not None else ChallengeBoard()
    resolvers = {r.name: r for r in config.acme}
    files = {name: ResolverFiles(config.tls.state_dir, name) for name in resolvers}
    clients = {
        name: ACMEClient(r, files[name], board, dns_publisher=publisher_for(r))
        for name, r in resolvers.items()
    }
    pool = ThreadPool(minthreads=0, maxthreads=max(1, min(4, len(resolvers))), name="edge-acme")
    return ACMEService(resolvers, clients, files, publisher, reactor, board, pool=pool)
