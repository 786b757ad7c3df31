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

from twisted.application.service import MultiService
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread, deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from edge.acme.challenges import ChallengeBoard
from edge.acme.client import ACMEClient, Issued, OrderError, directory_url
from edge.acme.dns01 import publisher_for
from edge.acme.files import ResolverFiles
from edge.acme.names import Wanted, wanted_certificates
from edge.acme.schedule import RETRY_BASE, RETRY_CAP, Managed, backoff
from edge.tls.store import CertificateIndex, CertifiedKey, StoreError, parse_bundle

__all__ = ["ACMEService", "make_acme_service"]


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def wire_key(wanted: Wanted) -> tuple:
    """How instances name one certificate to each other: resolver, then sorted names."""
    return (wanted.resolver, *sorted(wanted.names))


class ACMEService(MultiService):
    """
    Orders, renews and serves ACME certificates for routed names.

    With a ``cluster`` (:class:`edge.acme.peers.Cluster`) only the orderer
    orders; every certificate it gets is sent to the others, which serve it.
    """

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
        cluster=None,
    ):
        super().__init__()
        self.cluster = cluster
        if cluster is not None:
            cluster.on_peer_up = self.push_all
            cluster.ordering_keys = lambda: [list(wire_key(m.wanted)) for m in self.managed.values() if m.ordering]
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
        if self._pool is not None:
            self._pool.start()
        super().startService()
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
        stopped = super().stopService()
        if self._pool is None:
            return stopped
        # Wait for an order in progress (each CA request has a timeout) off
        # the reactor thread, so the reactor still serves what the order
        # waits for (a peer broadcast) and shutdown cannot deadlock.
        pool, self._pool = self._pool, None
        return deferToThread(pool.stop)

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
        if self.cluster is not None and not self.cluster.may_order():
            return
        elsewhere = self.cluster.in_flight_elsewhere() if self.cluster is not None else set()
        now = self._now()
        for managed in list(self.managed.values()):
            resolver = self.resolvers[managed.wanted.resolver]
            if managed.wanted.resolver in self._busy or not managed.due(now, resolver.renew_fraction):
                continue
            if wire_key(managed.wanted) in elsewhere:
                continue  # the previous orderer is still at it
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
        if self.cluster is not None:
            self.cluster.broadcast("/v1/certificate", self._certificate_message(managed))

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


    # -- several instances -------------------------------------------------

    def _certificate_message(self, managed: Managed) -> dict:
        from edge.acme.files import certificate_pem

        return {
            "resolver": managed.wanted.resolver,
            "names": list(managed.wanted.names),
            "pem": certificate_pem(managed.certified).decode("ascii"),
        }

    def push_all(self, address: str) -> None:
        """Everything this instance holds, to a peer that just (re)appeared."""
        for managed in list(self.managed.values()):
            if managed.serving(self._now()) is not None:
                self.cluster.send(address, "/v1/certificate", self._certificate_message(managed)).addErrback(
                    lambda f: None
                )
        for name, files in self.files.items():
            data = files.read_account()
            if data is not None:
                self.cluster.send(address, "/v1/account", {"resolver": name, "data": data}).addErrback(lambda f: None)

    def accept_certificate(self, value: dict) -> dict:
        """A certificate from the orderer: kept if it is for our resolver and newer."""
        resolver = str(value["resolver"])
        names = tuple(str(n) for n in value["names"])[:100]
        files = self.files.get(resolver)
        if files is None or not names:
            raise ValueError(f"no resolver {resolver!r} here")
        certified = parse_bundle(str(value["pem"]).encode("ascii"), now=self._now(), source="acme (peer)")
        if not set(names) <= certified.names:
            raise ValueError("the certificate does not cover the names it is sent for")
        managed = self.managed.get((resolver, frozenset(names)))
        current = managed.certified if managed is not None else None
        if current is not None and current.not_after >= certified.not_after:
            return {"kept": False}
        files.write_certificate(managed.wanted.names if managed is not None else names, certified)
        if managed is not None:
            managed.certified = certified
            managed.last_error = ""
            managed.failures = 0
            managed.not_before_attempt = None
            self._reindex()
        self._log.info(
            "Serving {names} as ordered by another instance, valid until {not_after}",
            names=", ".join(names),
            not_after=certified.not_after.isoformat(),
        )
        return {"kept": True}

    def accept_account(self, value: dict) -> dict:
        resolver = str(value["resolver"])
        data = value["data"]
        files = self.files.get(resolver)
        if files is None or not isinstance(data, dict) or data.get("directory") != directory_url(self.resolvers[resolver].ca):
            raise ValueError("an account for another resolver or CA")
        if files.read_account() != data:
            files.write_account(data)
            self._log.info("Using the ACME account of resolver {resolver} another instance created", resolver=resolver)
        return {"ok": True}


def _quiet_site():
    from twisted.web.server import Request, Site

    from edge.acme.seal import MAX_MESSAGE

    class BoundedRequest(Request):
        """A peer message larger than any real one ends the connection, unread."""

        _received = 0

        def gotLength(self, length):
            if length is not None and length > MAX_MESSAGE:
                self.channel.transport.abortConnection()
                length = 0
            super().gotLength(length)

        def handleContentChunk(self, data):
            self._received += len(data)
            if self._received > MAX_MESSAGE:
                self.channel.transport.abortConnection()
                return
            super().handleContentChunk(data)

    class QuietSite(Site):
        """Bounded peer messages; no access log line per hello (one a second per peer)."""

        requestFactory = BoundedRequest

        def log(self, request):
            pass

    return QuietSite


def _cluster_for(config, reactor, board, pool):
    """The peers, their listener and the board that replicates challenges, or Nones."""
    import socket

    from twisted.application import strports

    from edge.acme.peers import Cluster, PeerClient, PeerResource, ReplicatedBoard, _resolve_all, apply_challenge
    from edge.acme.seal import Sealer
    from edge.config import ConfigError

    _QuietSite = _quiet_site()
    settings = config.cluster
    if not settings.listen:
        return None, None, board
    try:
        sealer = Sealer.from_file(settings.secret_file)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cluster.secret_file {settings.secret_file}: {e}") from None
    cluster = Cluster(
        settings.name or socket.gethostname(),
        settings.peers,
        PeerClient(reactor, sealer, timeout=min(2.0, settings.peer_timeout)),
        reactor,
        peer_timeout=settings.peer_timeout,
        peers_dns=settings.peers_dns,
        peers_port=settings.peers_port,
        resolve=lambda name: deferToThreadPool(reactor, pool, _resolve_all, name),
    )
    handlers = {"/v1/hello": cluster.hello, "/v1/challenge": lambda v: apply_challenge(board, v)}
    site = _QuietSite(PeerResource(sealer, handlers))
    site.noisy = False
    listener = strports.service(settings.listen, site, reactor=reactor)
    return cluster, (listener, handlers), ReplicatedBoard(board, cluster, reactor)


def make_acme_service(config, publisher, reactor, board: ChallengeBoard | None = None) -> ACMEService:
    """The ACME service for ``config`` (a whole :class:`edge.config.Config`)."""
    board = board if board is not None else ChallengeBoard()
    resolvers = {r.name: r for r in config.acme}
    files = {name: ResolverFiles(config.tls.state_dir, name) for name in resolvers}
    # One thread per resolver's order, one for resolving peers' names.
    pool = ThreadPool(minthreads=0, maxthreads=max(1, min(4, len(resolvers))) + 1, name="edge-acme")
    cluster, peer_side, ordering_board = _cluster_for(config, reactor, board, pool)
    share = None
    if cluster is not None:
        share = lambda resolver: lambda data: reactor.callFromThread(  # noqa: E731
            cluster.broadcast, "/v1/account", {"resolver": resolver, "data": data}
        )
    clients = {
        name: ACMEClient(
            r, files[name], ordering_board, dns_publisher=publisher_for(r),
            on_account=share(name) if share is not None else None,
        )
        for name, r in resolvers.items()
    }
    service = ACMEService(resolvers, clients, files, publisher, reactor, board, pool=pool, cluster=cluster)
    if cluster is not None:
        listener, handlers = peer_side
        handlers["/v1/certificate"] = service.accept_certificate
        handlers["/v1/account"] = service.accept_account
        cluster.setServiceParent(service)
        listener.setServiceParent(service)
    return service
