"""
Entry points and the state every request shares.

:class:`ProxyFactory` is one entry point: its client connections (HTTP/1.1,
:class:`~edge.http.http1.ServerProtocol`, which hands ``h2`` connections to
:class:`~edge.http.http2.HTTP2Connection`), the routing table swapped in per
snapshot, its redirect and ACME hook.  :class:`Proxy` is what every entry
point shares: backend pool, passive health, limits, trusted proxies, access
log and metrics.  The request pipeline itself is :mod:`edge.http.exchange`.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from edge.cidr import Networks
from edge.http.backend import BackendProtocol
from edge.http.http1 import ServerProtocol
from edge.http.middlewares import Reply
from edge.http.target import encoded_allowance

__all__ = ["ServerProtocol", "BackendProtocol", "ProxyFactory", "Proxy"]


class ProxyFactory(Factory):
    """Client connections of one entry point; ``table`` is swapped per snapshot."""

    protocol = ServerProtocol
    noisy = False
    _log = Logger()

    def __init__(self, proxy, name: str, scheme: str, port: int | str = ""):
        self.proxy = proxy
        self.name = name
        self.scheme = scheme
        self.port = port
        self.table = None
        self.redirect = None  # (scheme, port) when the entry point redirects everything
        self.proxy_protocol = False
        self.connections: set = set()
        self.stopping = False
        # ACME HTTP-01 answers on plain-HTTP entry points, before redirects and
        # routing: an object with respond(host, target) -> Reply | None.
        self.challenges = None
        self._drained = []
        self._refused = 0
        self._refused_logged = float("-inf")

    def refused(self, peer) -> None:
        """A connection closed at once: ``max_client_connections`` are open (logged every 10 s at most)."""
        self.proxy.refused_connection(self.name)
        now = self.proxy.reactor.seconds()
        self._refused += 1
        if now - self._refused_logged >= 10.0:
            self._log.warn(
                "Entry point {name}: {limit} client connections open; closed {count} new ones"
                " (last from {client})", name=self.name, limit=len(self.connections),
                count=self._refused, client=getattr(peer, "host", "?"))
            self._refused_logged = now
            self._refused = 0

    def connection_closed(self, protocol):
        if self.stopping and not self.connections:
            waiters, self._drained = self._drained, []
            for d in waiters:
                d.callback(None)

    def drain(self):
        """A Deferred that fires when every connection is closed."""
        if not self.connections:
            return succeed(None)
        d = Deferred()
        self._drained.append(d)
        return d


class Proxy:
    """State shared by every entry point: pool, health, limits, logs, metrics."""

    def __init__(self, reactor, limits, pool, health, trusted, access_log=None, stats=None):
        self.reactor = reactor
        self.limits = limits
        self.pool = pool
        self.health = health
        self._trusted = Networks(trusted)
        self.access_log = access_log
        self.stats = stats
        # Escapes let through in request paths (edge.http.target).
        self.allowed_encoded = encoded_allowance(getattr(limits, "allowed_encoded_characters", ()))
        self.not_found = Reply(404, b"Not Found", [(b"Content-Type", b"text/plain; charset=utf-8")],
                               b"404 page not found\n")

    def is_trusted(self, ip: str) -> bool:
        return bool(self._trusted) and ip in self._trusted

    def record(self, side, req):
        """A request is answered (or given up): count it and write its access log line."""
        if req.on_finish is not None:
            finish, req.on_finish = req.on_finish, None
            finish()
        now = self.reactor.seconds()
        stats = self.stats
        if stats is not None:
            stats.request(req.route.router if req.route else "", side.factory.name,
                          req.status, now - req.started)
        if self.access_log is not None:
            self.access_log.log(side, req, now)

    def connect_failed(self, service: str):
        if self.stats is not None:
            self.stats.connect_failed(service)

    def refused_connection(self, entrypoint: str):
        if self.stats is not None:
            self.stats.refused(entrypoint)

    def open_connections(self, entrypoint: str, delta: int):
        if self.stats is not None:
            self.stats.connections(entrypoint, delta)
