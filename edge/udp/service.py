"""
UDP routers: every ``protocol = "udp"`` entry point relays datagrams to the
service of its router, one session per client address (Traefik's model).

A session is a UDP socket of its own, connected to one backend target (so
the kernel drops datagrams from anyone else), that lives while datagrams
flow either way and ends after ``[udp] session_timeout`` seconds of
silence.  The session table of an entry point is bounded
(``[udp] max_sessions``): datagrams from new clients beyond it are dropped
and counted, existing sessions keep working.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from edge import metrics
from edge.config import Config, EntryPoint, udp_address
from edge.snapshot import Snapshot

__all__ = ["UDPService", "make_udp_service", "udp_routes"]


def udp_routes(snapshot: Snapshot, entrypoint: str):
    """(router, service) for ``entrypoint``: the first router by name that names it (or none)."""
    services = {s.name: s for s in snapshot.udp_services}
    for router in sorted(snapshot.udp_routers, key=lambda r: r.name):
        if (not router.entry_points or entrypoint in router.entry_points) and router.service in services:
            return router, services[router.service]
    return None


class _Session(DatagramProtocol):
    """One client's socket towards its backend."""

    def __init__(self, entry: "_Entry", client: tuple, target):
        self._entry = entry
        self.client = client
        self.target = (target.host, target.port)
        self.last = 0.0
        self.port = None
        self.timer = None

    def startProtocol(self):
        self.transport.connect(*self.target)

    def datagramReceived(self, data, addr):
        self.last = self._entry.reactor.seconds()
        self._entry.reply(self.client, data)

    def connectionRefused(self):
        pass  # ICMP port unreachable from the backend: the client's retries decide


class _Entry(DatagramProtocol):
    _log = Logger()

    def __init__(self, service: "UDPService", ep: EntryPoint):
        self._service = service
        self.name = ep.name
        self.reactor = service.reactor
        self.sessions: dict[tuple, _Session] = {}
        self._next = 0

    def datagramReceived(self, data, addr):
        session = self.sessions.get(addr)
        if session is None:
            session = self._open(addr)
            if session is None:
                return
        session.last = self.reactor.seconds()
        metrics.udp_datagrams.labels(self.name, "in").inc()
        session.transport.write(data)

    def _open(self, addr) -> _Session | None:
        route = self._service.route(self.name)
        if route is None or not route[1].targets:
            metrics.udp_dropped.labels(self.name, "no router" if route is None else "no backend").inc()
            return None
        limit = self._service.config.max_sessions
        if len(self.sessions) >= limit:
            metrics.udp_dropped.labels(self.name, "sessions full").inc()
            self._log.debug("UDP entry point {name}: {limit} sessions open; datagram from {client} dropped",
                            name=self.name, limit=limit, client=addr[0])
            return None
        targets = route[1].targets
        target = targets[self._next % len(targets)]
        self._next += 1
        session = _Session(self, addr, target)
        interface = "::" if ":" in target.host else ""
        try:
            session.port = self.reactor.listenUDP(0, session, interface=interface)
        except Exception as e:  # out of sockets or the target is not an address
            self._log.warn("UDP entry point {name}: cannot open a session to {target}: {error}",
                           name=self.name, target=target.host, error=e)
            metrics.udp_dropped.labels(self.name, "socket").inc()
            return None
        self.sessions[addr] = session
        session.timer = self.reactor.callLater(self._service.config.session_timeout, self._check, addr)
        metrics.udp_sessions.labels(self.name).set(len(self.sessions))
        return session

    def reply(self, client, data: bytes) -> None:
        metrics.udp_datagrams.labels(self.name, "out").inc()
        self.transport.write(data, client)

    def _check(self, addr) -> None:
        session = self.sessions.get(addr)
        if session is None:
            return
        left = session.last + self._service.config.session_timeout - self.reactor.seconds()
        if left > 0:
            session.timer = self.reactor.callLater(left, self._check, addr)
            return
        self.close(addr)

    def close(self, addr) -> None:
        session = self.sessions.pop(addr, None)
        if session is None:
            return
        if session.timer is not None and session.timer.active():
            session.timer.cancel()
        session.port.stopListening()
        metrics.udp_sessions.labels(self.name).set(len(self.sessions))


class UDPService(Service):
    name = "udp"
    _log = Logger()

    def __init__(self, config: Config, publisher, reactor):
        self.config = config.udp
        self._entrypoints = [ep for ep in config.entrypoints if ep.protocol == "udp"]
        self._publisher = publisher
        self.reactor = reactor
        self._routes: dict[str, tuple] = {}
        self.entries: dict[str, _Entry] = {}
        self.ports: dict[str, object] = {}
        self.listen_errors: dict[str, str] = {}
        self.routers: tuple = ()
        self._unsubscribe = None

    def route(self, entrypoint: str):
        return self._routes.get(entrypoint)

    def apply(self, snapshot: Snapshot) -> None:
        self._routes = {ep.name: udp_routes(snapshot, ep.name) for ep in self._entrypoints}
        self.routers = snapshot.udp_routers
        # A session whose backend is gone ends now; the client's next datagram opens a new one.
        for name, entry in self.entries.items():
            route = self._routes.get(name)
            live = {(t.host, t.port) for t in route[1].targets} if route else set()
            for addr, session in list(entry.sessions.items()):
                if session.target not in live:
                    entry.close(addr)

    def privilegedStartService(self):
        super().privilegedStartService()
        for ep in self._entrypoints:
            port, interface = udp_address(ep.address)
            entry = _Entry(self, ep)
            try:
                self.ports[ep.name] = self.reactor.listenUDP(port, entry, interface=interface)
            except Exception as e:
                from edge.listeners import ListenError, describe_error

                raise ListenError(f"UDP entry point {ep.name} cannot listen on {ep.address}: {describe_error(e)}")
            self.entries[ep.name] = entry
            self._log.info("UDP entry point {name} listening on {address}", name=ep.name, address=ep.address)

    def startService(self):
        super().startService()
        self._unsubscribe = self._publisher.subscribe(self.apply)

    def stopService(self):
        super().stopService()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for entry in self.entries.values():
            for addr in list(entry.sessions):
                entry.close(addr)
        for port in self.ports.values():
            port.stopListening()
        self.ports.clear()


def make_udp_service(config: Config, publisher, reactor) -> UDPService:
    return UDPService(config, publisher, reactor)
