"""
Persistent connections to backend targets.

Idle connections are kept per target address and reused newest first,
which keeps the warmest connections busy and lets the old ones age out.
``size`` bounds them per target at each :meth:`sweep` (once a second), not
at each :meth:`put`: answers come back in bursts (one reactor turn can
finish a hundred exchanges, and the next turn starts a hundred more), and
closing the surplus at once meant a new connection for over a third of the
requests at 256 concurrent clients.  Between sweeps the idle connections
are bounded by the exchanges that were in flight together.  The pool never
holds a connection that is serving a request; the proxy owns it until it
hands it back with :meth:`put`.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory
from twisted.logger import Logger

from edge.http.backend_h2 import SCHEME as H2C, H2CPool

__all__ = ["BackendPool"]


class _ConnectFactory(ClientFactory):
    noisy = False

    def __init__(self, protocol_factory, key, deferred: Deferred):
        self._protocol_factory = protocol_factory
        self._key = key
        self._deferred = deferred

    def buildProtocol(self, addr):
        protocol = self._protocol_factory(self._key)
        protocol.factory = self
        return protocol

    def connected(self, protocol) -> None:
        d, self._deferred = self._deferred, None
        if d is not None:
            d.callback(protocol)

    def clientConnectionFailed(self, connector, reason) -> None:
        d, self._deferred = self._deferred, None
        if d is not None:
            d.errback(reason)


class BackendPool:
    """Idle backend connections by target key ``(scheme, host, port)``."""

    _log = Logger()

    def __init__(self, reactor, protocol_factory, *, size: int = 64,
                 connect_timeout: float = 5.0, idle_timeout: float = 90.0):
        self._reactor = reactor
        self._protocol_factory = protocol_factory
        self.size = size
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self._idle: dict[tuple, list] = {}
        self._live: set | None = None
        self._tls_options = None
        # h2c targets: streams on shared HTTP/2 connections (edge.http.backend_h2).
        self.h2c = H2CPool(reactor, connect_timeout=connect_timeout, idle_timeout=idle_timeout)

    def take(self, key: tuple):
        """An idle connection to ``key``, or None."""
        if key[0] == H2C:
            return self.h2c.take(key)
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.connected:
                return conn
        return None

    def put(self, conn) -> None:
        """Hand back a connection that finished its exchange cleanly."""
        key = conn.key
        if key[0] == H2C:
            self.h2c.put(conn)
            return
        if self._live is not None and key not in self._live:
            conn.transport.loseConnection()
            return
        idle = self._idle.get(key)
        if idle is None:
            idle = self._idle[key] = []
        conn.idle_since = self._reactor.seconds()
        idle.append(conn)

    def forget(self, conn) -> None:
        """A connection closed; drop it if it was idle."""
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def connect(self, key: tuple) -> Deferred:
        """A new connection to ``key``; fails with the connect error."""
        scheme, host, port = key
        if scheme == H2C:
            return self.h2c.connect(key)
        d = Deferred()
        factory = _ConnectFactory(self._protocol_factory, key, d)
        if scheme == "https":
            if self._tls_options is None:
                from twisted.internet.ssl import CertificateOptions

                # Backends inside a swarm usually carry self-signed certificates.
                self._tls_options = CertificateOptions(verify=False)
            self._reactor.connectSSL(host, port, factory, self._tls_options, timeout=self.connect_timeout)
        else:
            self._reactor.connectTCP(host, port, factory, timeout=self.connect_timeout)
        return d

    def retain(self, keys) -> None:
        """Close idle connections to targets that left the snapshot."""
        self._live = set(keys)
        self.h2c.retain(k for k in self._live if k[0] == H2C)
        for key in [k for k in self._idle if k not in self._live]:
            for conn in self._idle.pop(key):
                conn.transport.loseConnection()

    def sweep(self) -> None:
        """Close connections idle for longer than ``idle_timeout``, and the oldest beyond ``size``."""
        self.h2c.sweep()
        limit = self._reactor.seconds() - self.idle_timeout
        for key, idle in list(self._idle.items()):
            old = [c for c in idle if c.idle_since < limit]
            for conn in old:
                idle.remove(conn)
                conn.transport.loseConnection()
            surplus = len(idle) - self.size
            if surplus > 0:
                old, idle[:surplus] = idle[:surplus], []
                for conn in old:
                    conn.transport.loseConnection()
            if not idle:
                del self._idle[key]

    def close(self) -> None:
        self.h2c.close()
        for idle in self._idle.values():
            for conn in idle:
                conn.transport.loseConnection()
        self._idle.clear()

    def idle_count(self, key=None) -> int:
        if key is not None:
            return len(self._idle.get(key, ()))
        return sum(len(v) for v in self._idle.values())
