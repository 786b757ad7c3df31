"""
The admin service: one listening port for the dashboard, API, metrics and
health check, reading the publisher and the rest of the service tree live.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from twisted.internet.endpoints import serverFromString
from twisted.application.service import MultiService
from twisted.logger import Logger
from twisted.web.server import Site

from edge import metrics
from edge.admin.dnsview import answers, candidate_names
from edge.admin.passwords import PasswordChecker
from edge.admin.routercheck import RouterChecker
from edge.admin.view import Facts, overview
from edge.admin.web import AdminRoot, AdminState
from edge.config import Config
from edge.listeners import ListenError, ListenerBoard, describe_error
from edge.redact import redact_snapshot_data
from edge.snapshot import Snapshot, Target

__all__ = ["AdminService", "FrontEnds", "routed_names"]


@dataclass
class FrontEnds:
    """
    The services the admin site reads, handed over by whoever builds them.

    Each is None until (or unless) it exists: ``http`` (its ``health``
    registry: targets backed off after failed connects), ``dns`` (its
    ``responder.table`` and ``hosts_entries()``: what DNS answers) and
    ``tls`` (``root_certificate_pem()``: the CA users install).
    """

    http: object = None
    dns: object = None
    tls: object = None


def routed_names(snapshot: Snapshot, config: Config) -> tuple[tuple[str, str, tuple[str, ...], str], ...]:
    """
    The names DNS answers for routed hosts, and the static records.

    Routed hosts resolve to ``[dns] advertise`` or else to the serving
    managers, where edge listens.  Both come from the DNS table's own
    functions (one rule, which keeps managers through a leader election), so
    this is what the DNS server answers for the same snapshot.
    """
    from edge.dns.table import edge_addresses, serving_managers

    addresses = edge_addresses(snapshot, config.dns)
    rows: dict[str, tuple[str, str, tuple[str, ...], str]] = {}
    for host, router in snapshot.host_names():
        if host in rows:
            rows[host] = (host, "A", addresses, f"{rows[host][3]}, {router.name}")
        else:
            rows[host] = (host, "A", addresses, router.name)
    zone = config.dns.zone.strip().rstrip(".").lower()
    if zone:
        managers = tuple(n.address for n in serving_managers(snapshot) if n.address)
        rows[f"managers.{zone}"] = (f"managers.{zone}", "A", managers, "cluster zone")
    for record in config.dns.records:
        key = f"{record.name}/{record.type}"
        rows[key] = (record.name, record.type.upper(), (record.value,), "config")
    return tuple(rows[k] for k in sorted(rows))


def _health_from_metrics() -> dict[tuple[str, str], bool]:
    """What the HTTP layer last published in ``edge_target_up``."""
    found = {}
    for family in metrics.target_health.collect():
        for sample in family.samples:
            labels = sample.labels
            found[(labels.get("service", ""), labels.get("target", ""))] = sample.value >= 1
    return found


def _edge_version() -> str:
    try:
        return version("edge")
    except PackageNotFoundError:
        return ""


class _QuietSite(Site):
    """No access log: the dashboard polls and the health check runs every few seconds."""

    noisy = False

    def log(self, request) -> None:
        pass


class AdminService(MultiService):
    """
    Serves the admin site on ``config.admin.address``.

    The TLS service's CA certificate, the DNS service's names and the HTTP
    proxy's passive health are read, when asked for, from ``front_ends``
    (:class:`FrontEnds`), which the builder fills in as it makes them.
    """

    _log = Logger()

    def __init__(self, config: Config, publisher, reactor, listeners: ListenerBoard | None = None,
                 certificates=None, front_ends: FrontEnds | None = None):
        super().__init__()
        self.front_ends = front_ends if front_ends is not None else FrontEnds()
        self._certificates = certificates if certificates is not None else list
        self.config = config
        self.publisher = publisher
        self.reactor = reactor
        self.listeners = listeners if listeners is not None else ListenerBoard()
        self._passwords = PasswordChecker()
        self._router_errors = RouterChecker()
        self.site = _QuietSite(AdminRoot(self.state()), reactor=reactor)
        self.site.displayTracebacks = False
        # The listening port, once bound, and why not when it could not be.
        self.port = None
        self.listen_error = ""
        self._expected = False

    # -- what the resources read ---------------------------------------------

    def state(self) -> AdminState:
        return AdminState(
            overview=self.overview,
            snapshot_json=self.snapshot_json,
            update_metrics=self.update_metrics,
            ca_certificate=self.ca_certificate,
            users=lambda: self.config.admin.users,
            check_password=self._passwords,
            certificates=self._certificates,
        )

    def overview(self) -> dict:
        snapshot = self.publisher.current
        health = _health_from_metrics()

        passive = self._passive_health()

        def lookup(service: str, target: Target) -> bool | None:
            for key in (target.id, target.url, f"{target.host}:{target.port}"):
                if (service, key) in health:
                    return health[(service, key)]
            if passive is not None and not passive(target):
                return "failing"  # the proxy is backing off after failed connects
            return None

        names = self._dns_names(snapshot)
        facts = Facts(
            generation=self.publisher.generation,
            published_at=self.publisher.published_at,
            now=self.reactor.seconds(),
            statuses=self.publisher.statuses(),
            health=lookup,
            dns_names=tuple(names),
            version=_edge_version(),
            listeners=tuple(state.as_dict() for state in self.listeners.states()),
            router_errors=self._router_errors(
                snapshot, tuple(ep.name for ep in self.config.entrypoints)
            ),
        )
        return overview(snapshot, self.config, facts)

    def _passive_health(self):
        """The HTTP proxy's view of a target's connects, when the proxy runs."""
        registry = getattr(self.front_ends.http, "health", None)
        if registry is None:
            return None
        from edge.http.balancer import target_key

        return lambda target: registry.usable(target_key(target))

    def _dns_names(self, snapshot: Snapshot):
        """What the running DNS server answers, else what it would (DNS off or absent)."""
        dns = self.front_ends.dns
        table = getattr(getattr(dns, "responder", None), "table", None)
        if table is not None:
            hosts = getattr(dns, "hosts_entries", None)
            try:
                return answers(table, candidate_names(snapshot, self.config, hosts() if hosts else ()))
            except Exception:
                self._log.failure("Reading the DNS answer table failed")
        return routed_names(snapshot, self.config)

    def snapshot_json(self) -> object:
        from edge.discovery.jsonview import snapshot_to_data

        # Password hashes and header secrets stay inside edge, as on the dashboard.
        return redact_snapshot_data(snapshot_to_data(self.publisher.current))

    def update_metrics(self) -> None:
        """Refresh the gauges that are read off the publisher at scrape time."""
        metrics.snapshot_generation.set(self.publisher.generation)
        snapshot = self.publisher.current
        errors = self._router_errors(snapshot, tuple(ep.name for ep in self.config.entrypoints))
        metrics.router_error.clear()
        for router in snapshot.routers:
            metrics.router_error.labels(router.name).set(1 if router.name in errors else 0)
        now = self.reactor.seconds()
        for status in self.publisher.statuses():
            metrics.discovery_connected.labels(status.name).set(1 if status.connected else 0)
            if status.last_sync is not None:
                metrics.discovery_last_sync_age.labels(status.name).set(max(0.0, now - status.last_sync))

    def ca_certificate(self) -> bytes | None:
        tls = self.front_ends.tls
        if tls is None:
            return None
        pem = tls.root_certificate_pem()
        if pem is None:
            return None
        return pem if isinstance(pem, bytes) else pem.encode("ascii")

    # -- lifecycle ----------------------------------------------------------------

    def reload(self, config: Config) -> None:
        """Take new users at once; a new listening address needs a restart."""
        if config.admin.address != self.config.admin.address:
            self._log.warn(
                "Admin address change from {old} to {new} takes effect on restart",
                old=self.config.admin.address,
                new=config.admin.address,
            )
            config = dataclasses.replace(
                config, admin=dataclasses.replace(config.admin, address=self.config.admin.address)
            )
        self.config = config

    def privilegedStartService(self) -> None:
        """Bind before twistd drops privileges; a port that cannot be had stops start-up."""
        super().privilegedStartService()
        self._listen()
        if self.port is None:
            raise ListenError(self.listen_error)

    def _listen(self) -> None:
        address = self.config.admin.address
        if not self._expected:
            self._expected = True
            self.listeners.expect("admin", "admin", address, lambda: self.port, lambda: self.listen_error)
        d = serverFromString(self.reactor, address).listen(self.site)

        def listening(port):
            self.port = port
            self.listen_error = ""

        def failed(failure):
            self.listen_error = f"admin cannot listen on {address}: {describe_error(failure.value)}"

        d.addCallbacks(listening, failed)

    def startService(self) -> None:
        if self.port is None and not self.listen_error:
            self._listen()  # started without privilegedStartService (tests, embedding)
        if self.listen_error:
            self._log.error("{error}", error=self.listen_error)
        else:
            self._log.info("Admin dashboard, API and metrics on {address}", address=self.config.admin.address)
        super().startService()

    def stopService(self):
        port, self.port = self.port, None
        self.listen_error = ""
        super().stopService()
        if port is not None:
            return port.stopListening()
        return None


def make_admin_service(config: Config, publisher, reactor,
                       listeners: ListenerBoard | None = None, certificates=None,
                       front_ends: FrontEnds | None = None) -> MultiService:
    """
    The admin service, or an empty one when ``[admin] address`` is "".
    ``certificates()`` lists the ACME-managed certificates (``/api/certificates``).
    """
    if not config.admin.address:
        return MultiService()
    return AdminService(config, publisher, reactor, listeners, certificates, front_ends)
