"""
One client connection spliced to one backend connection.

Bytes are relayed as they come; each side is registered as the other's
producer, so a slow reader pauses the fast writer (back-pressure: what edge
buffers per connection is bounded by the transports' buffers).  While the
backend connection is being made the client is paused.  A connection idle
both ways for ``idle_timeout`` seconds is closed; an end of either side
ends both (half-closed TCP is not relayed).
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from edge.tcp.proxyheader import proxy_header

__all__ = ["SpliceProtocol"]


class _BackendSide(Protocol):
    def __init__(self, splice: "SpliceProtocol"):
        self._splice = splice

    def connectionMade(self):
        self._splice.backend_ready(self)

    def dataReceived(self, data):
        self._splice.from_backend(data)

    def connectionLost(self, reason):
        self._splice.backend_lost()


class SpliceProtocol(Protocol):
    """
    The client side.  ``connect(protocol)`` starts the backend connection and
    returns a Deferred (edge.tcp.service picks the target); ``done()`` is
    called once, when the client side is closed.
    """

    _log = Logger()

    def __init__(self, connect: Callable, reactor, idle_timeout: float, proxy_version: int = 0,
                 done: Callable[[], None] = lambda: None, name: str = ""):
        self._connect = connect
        self._reactor = reactor
        self._idle = idle_timeout
        self._proxy_version = proxy_version
        self._done = done
        self.name = name
        self._backend: _BackendSide | None = None
        self._pending: list[bytes] = []
        self._last = 0.0
        self._timer = None
        self._closed = False
        self.bytes_in = self.bytes_out = 0

    # -- client side

    def connectionMade(self):
        self._last = self._reactor.seconds()
        self._timer = self._reactor.callLater(self._idle, self._check_idle)
        self.transport.pauseProducing()  # nothing more from the client until the backend is there
        d = self._connect(_BackendSide(self))
        d.addErrback(self._backend_failed)

    def dataReceived(self, data):
        self._last = self._reactor.seconds()
        self.bytes_in += len(data)
        if self._backend is not None:
            self._backend.transport.write(data)
        else:
            self._pending.append(data)

    def connectionLost(self, reason):
        self._closed = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self._backend is not None:
            self._backend.transport.loseConnection()
        done, self._done = self._done, None
        if done is not None:
            done()

    # -- backend side

    def backend_ready(self, backend: _BackendSide) -> None:
        if self._closed:
            backend.transport.abortConnection()
            return
        self._backend = backend
        if self._proxy_version:
            peer, host = self.transport.getPeer(), self.transport.getHost()
            backend.transport.write(proxy_header(
                self._proxy_version, (peer.host, peer.port), (host.host, host.port)))
        if self._pending:
            backend.transport.write(b"".join(self._pending))
            self._pending = []
        backend.transport.registerProducer(self.transport, True)
        self.transport.registerProducer(backend.transport, True)
        self.transport.resumeProducing()

    def _backend_failed(self, failure):
        self._log.info("TCP router {name}: backend connection failed: {error}",
                       name=self.name, error=failure.getErrorMessage())
        if not self._closed:
            self.transport.loseConnection()
        return None

    def from_backend(self, data: bytes) -> None:
        self._last = self._reactor.seconds()
        self.bytes_out += len(data)
        self.transport.write(data)

    def backend_lost(self) -> None:
        if not self._closed:
            self.transport.unregisterProducer()
            self.transport.loseConnection()
        self._backend = None

    def _check_idle(self) -> None:
        left = self._last + self._idle - self._reactor.seconds()
        if left > 0:
            self._timer = self._reactor.callLater(left, self._check_idle)
            return
        self._timer = None
        self._log.debug("TCP router {name}: idle connection closed", name=self.name)
        if self._backend is not None:
            self._backend.transport.abortConnection()
        self.transport.abortConnection()
