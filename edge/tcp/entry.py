"""
The protocol every connection of a TCP-routed entry point starts with.

It reads the ClientHello when a router needs it (bounded in bytes and time),
chooses a route, applies the route's allow list and per-IP connection limit,
and hands the connection -- the bytes read so far included -- to a splice
(raw, for plain routers and TLS passthrough), to TLS termination in front of
a splice, or to the entry point's HTTP side when no TCP router matches.
"""

from __future__ import annotations

from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from edge.tcp.hello import MORE, NOT_TLS, HELLO_LIMIT, HelloError, read_hello

__all__ = ["EntryProtocol", "EntryFactory"]


class EntryFactory:
    """
    A server factory for one entry point.  ``router`` is the TCP service
    (:class:`edge.tcp.service.TCPService`): it holds the current table, the
    limits and the counters.  ``fallback`` is the HTTP side's factory (None
    on a ``protocol = "tcp"`` entry point).
    """

    noisy = False

    def __init__(self, router, entrypoint: str, fallback=None):
        self.router = router
        self.entrypoint = entrypoint
        self.fallback = fallback

    def doStart(self):
        if self.fallback is not None:
            self.fallback.doStart()

    def doStop(self):
        if self.fallback is not None:
            self.fallback.doStop()

    def logPrefix(self):
        return f"edge-tcp {self.entrypoint}"

    def buildProtocol(self, addr):
        table = self.router.table(self.entrypoint)
        if self.fallback is not None and not table.routes:
            return self.fallback.buildProtocol(addr)  # no TCP router here: HTTPS as before, no peeking
        protocol = EntryProtocol(self, table, addr)
        protocol.factory = self
        return protocol


class EntryProtocol(Protocol):
    _log = Logger()

    def __init__(self, factory: EntryFactory, table, addr):
        self._factory = factory
        self._table = table
        self._client = getattr(addr, "host", "")
        self._addr = addr
        self._buffer = b""
        self._inner = None
        self._timer = None
        self._counted = None

    def connectionMade(self):
        router = self._factory.router
        if not router.admit(self._factory.entrypoint):
            self._log.warn("TCP entry point {name}: {limit} connections open; refusing {client}",
                           name=self._factory.entrypoint, limit=router.config.max_connections,
                           client=self._client)
            self.transport.abortConnection()
            return
        self._counted = self._factory.entrypoint
        if not self._table.peek and self._factory.fallback is None:
            self._choose(None, ())  # plain routers only: server-first protocols (SSH...) need no wait
            return
        self._timer = router.reactor.callLater(router.config.hello_timeout, self._hello_timed_out)

    def dataReceived(self, data):
        if self._inner is not None:
            self._inner.dataReceived(data)
            return
        self._buffer += data
        try:
            hello = read_hello(self._buffer, HELLO_LIMIT)
        except HelloError as e:
            self._log.debug("TCP entry point {name}: {client} sent a bad ClientHello: {error}",
                            name=self._factory.entrypoint, client=self._client, error=str(e))
            if self._factory.fallback is not None:
                self._hand_to(self._factory.fallback.buildProtocol(self._addr))  # its TLS refuses it
            else:
                self.transport.abortConnection()
            return
        if hello is MORE:
            return
        if hello is NOT_TLS:
            self._choose(None, ())
        elif "acme-tls/1" in hello.alpn and self._factory.fallback is not None:
            # TLS-ALPN-01 validation is edge's own (as in Traefik): never a TCP router's.
            self._cancel_timer()
            self._hand_to(self._factory.fallback.buildProtocol(self._addr))
        else:
            self._choose(hello.sni, hello.alpn)

    def _hello_timed_out(self):
        self._timer = None
        if self._inner is None:
            self._log.debug("TCP entry point {name}: no ClientHello from {client} in time",
                            name=self._factory.entrypoint, client=self._client)
            self.transport.abortConnection()

    def _cancel_timer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _choose(self, sni, alpn):
        self._cancel_timer()
        # The transport's peer, read now: behind an HTTPS entry point's proxy_protocol
        # (always peeked, so this runs after the PROXY header) it is the client it named.
        self._client = getattr(self.transport.getPeer(), "host", self._client)
        route = self._table.match(sni, alpn, self._client)
        if route is None:
            if self._factory.fallback is not None:
                self._hand_to(self._factory.fallback.buildProtocol(self._addr))
            else:
                self._log.debug("TCP entry point {name}: no router for {client} (SNI {sni})",
                                name=self._factory.entrypoint, client=self._client, sni=sni)
                self.transport.abortConnection()
            return
        inner = self._factory.router.splice_for(route, self._client, self._factory.entrypoint)
        if inner is None:  # refused by a middleware, or no backend
            self.transport.abortConnection()
            return
        if route.terminate:
            inner = self._factory.router.terminate(inner, self._addr)
            if inner is None:
                self.transport.abortConnection()
                return
        self._hand_to(inner)

    def _hand_to(self, inner):
        self._inner = inner
        data, self._buffer = self._buffer, b""
        inner.makeConnection(self.transport)
        if data and self.transport.connected:
            inner.dataReceived(data)

    def connectionLost(self, reason):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self._counted is not None:
            self._factory.router.release(self._counted)
            self._counted = None
        if self._inner is not None:
            self._inner.connectionLost(reason)
