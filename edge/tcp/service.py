"""
TCP routers as a Twisted service: the ``protocol = "tcp"`` entry points'
listeners, and the TCP side of the HTTP TLS entry points (:meth:`wrap`).

Tables are rebuilt from each snapshot and swapped whole; a connection keeps
the route it was given.  The service owns the limits every connection is
checked against: open connections per entry point (``[tcp]
max_connections``) and the routers' per-IP ``inFlightConn`` counts.
"""

from __future__ import annotations

from collections import defaultdict

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, serverFromString
from twisted.logger import Logger

from edge import metrics
from edge.config import Config, EntryPoint, listen_address
from edge.shutdown import stop_listening
from edge.snapshot import Snapshot
from edge.tcp.entry import EntryFactory
from edge.tcp.splice import SpliceProtocol
from edge.tcp.table import TCPTable, build_tcp_table

__all__ = ["TCPService", "make_tcp_service", "tcp_entrypoints"]


def tcp_entrypoints(config: Config) -> list[EntryPoint]:
    """Entry points TCP routers may use: ``protocol = "tcp"`` ones and HTTP TLS ones."""
    return [ep for ep in config.entrypoints if ep.protocol == "tcp" or (ep.protocol == "http" and ep.tls)]


class TCPService(Service):
    name = "tcp"
    _log = Logger()

    def __init__(self, config: Config, publisher, reactor, *, tls_context=None):
        self.config = config.tcp
        self._config = config
        self._publisher = publisher
        self.reactor = reactor
        self._tls = tls_context
        self._tables: dict[str, TCPTable] = {ep.name: TCPTable() for ep in tcp_entrypoints(config)}
        self.open: dict[str, int] = defaultdict(int)
        self._in_flight: dict[tuple[str, str], int] = defaultdict(int)
        self.ports: dict[str, object] = {}
        self.listen_errors: dict[str, str] = {}
        self.routers: tuple = ()
        self._bound = False
        self._unsubscribe = None

    # -- what entry protocols ask

    def table(self, entrypoint: str) -> TCPTable:
        return self._tables.get(entrypoint) or TCPTable()

    def admit(self, entrypoint: str) -> bool:
        if self.open[entrypoint] >= self.config.max_connections:
            metrics.tcp_connections_refused.labels(entrypoint, "limit").inc()
            return False
        self.open[entrypoint] += 1
        metrics.tcp_open_connections.labels(entrypoint).set(self.open[entrypoint])
        return True

    def release(self, entrypoint: str) -> None:
        self.open[entrypoint] -= 1
        metrics.tcp_open_connections.labels(entrypoint).set(self.open[entrypoint])

    def splice_for(self, route, client: str, entrypoint: str):
        """The splice protocol for a connection on ``route``, or None when it is refused."""
        router = route.router.name
        if not route.allows(client):
            self._log.info("TCP router {router}: {client} is not in its allow list; connection refused",
                           router=router, client=client)
            metrics.tcp_connections_refused.labels(entrypoint, "allowlist").inc()
            return None
        key = (router, client)
        if route.in_flight and self._in_flight[key] >= route.in_flight:
            self._log.info("TCP router {router}: {client} has {amount} connections open; refused",
                           router=router, client=client, amount=route.in_flight)
            metrics.tcp_connections_refused.labels(entrypoint, "inflightconn").inc()
            return None
        target = self.table(entrypoint).pick(route)
        if target is None:
            self._log.info("TCP router {router}: service {service} has no backend",
                           router=router, service=route.service.name)
            metrics.tcp_connections_refused.labels(entrypoint, "no backend").inc()
            return None
        self._in_flight[key] += 1
        metrics.tcp_connections.labels(router, entrypoint).inc()

        def done():
            self._in_flight[key] -= 1
            if not self._in_flight[key]:
                del self._in_flight[key]

        endpoint_type = TCP6ClientEndpoint if ":" in target.host else TCP4ClientEndpoint
        endpoint = endpoint_type(self.reactor, target.host, target.port,
                                 timeout=self.config.backend_connect_timeout)
        return SpliceProtocol(
            lambda protocol: endpoint.connect(_OneProtocol(protocol)), self.reactor,
            self.config.idle_timeout, route.service.proxy_protocol, done, router,
        )

    def terminate(self, splice, addr):
        """``splice`` behind TLS with edge's certificates (None when there is no TLS context)."""
        if self._tls is None:
            self._log.warn("TCP router {name} terminates TLS but edge has no TLS context", name=splice.name)
            return None
        return self._tls.wrap(_OneProtocol(splice)).buildProtocol(addr)

    def factory(self, entrypoint: str) -> EntryFactory:
        """The server factory of a ``protocol = "tcp"`` entry point."""
        return EntryFactory(self, entrypoint)

    def wrap(self, entrypoint: str, factory):
        """The HTTP TLS listener ``factory`` with TCP routers in front of it."""
        return EntryFactory(self, entrypoint, fallback=factory)

    # -- snapshots and lifecycle

    def apply(self, snapshot: Snapshot) -> None:
        self._tables = {name: build_tcp_table(snapshot, name) for name in self._tables}
        self.routers = snapshot.tcp_routers
        self._log.debug("TCP routing tables rebuilt: {routes} routes",
                        routes=sum(len(t.routes) for t in self._tables.values()))

    def privilegedStartService(self):
        super().privilegedStartService()
        self._listen()
        if self.listen_errors:
            from edge.listeners import ListenError

            raise ListenError("; ".join(self.listen_errors.values()))

    def startService(self):
        super().startService()
        self._unsubscribe = self._publisher.subscribe(self.apply)
        if not self._bound:
            self._listen()

    def _listen(self):
        self._bound = True
        for ep in self._config.entrypoints:
            if ep.protocol != "tcp":
                continue
            d = serverFromString(self.reactor, listen_address(ep.address)).listen(self.factory(ep.name))
            d.addCallbacks(self._listening, self._listen_failed, callbackArgs=(ep,), errbackArgs=(ep,))

    def _listening(self, port, ep):
        self.ports[ep.name] = port
        self._log.info("TCP entry point {name} listening on {address}", name=ep.name, address=ep.address)

    def _listen_failed(self, failure, ep):
        from edge.listeners import describe_error

        self.listen_errors[ep.name] = (
            f"TCP entry point {ep.name} cannot listen on {ep.address}: {describe_error(failure.value)}"
        )

    @defer.inlineCallbacks
    def stopService(self):
        super().stopService()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        yield stop_listening(self.ports)
        self._bound = False


class _OneProtocol:
    """A factory for one prepared protocol: a splice's backend side, or a splice behind TLS."""

    noisy = False

    def __init__(self, protocol):
        self._protocol = protocol

    def buildProtocol(self, addr):
        return self._protocol

    def doStart(self):
        pass

    def doStop(self):
        pass

    def startedConnecting(self, connector):
        pass


def make_tcp_service(config: Config, publisher, reactor, *, tls_context=None) -> TCPService:
    return TCPService(config, publisher, reactor, tls_context=tls_context)
