"""
HTTP/2 from clients, HTTP/1.1 to backends.

When ALPN picks ``h2``, the HTTP/1.1 :class:`~edge.http.proxy.ServerProtocol`
hands the connection to :class:`H2Bridge` (its ``factory.h2_handler``).  The
bridge runs Twisted's own HTTP/2 implementation (``twisted.web._http2``, on
the ``h2`` package) over that transport, serving a twisted.web
:class:`~twisted.web.server.Site` whose one resource does what the HTTP/1.1
path does: route with the entry point's current
:class:`~edge.http.routing.RoutingTable`, run the router's middlewares, pick
a target from its balancer and forward over HTTP/1.1 with a twisted.web
:class:`~twisted.web.client.Agent` on a persistent
:class:`~twisted.web.client.HTTPConnectionPool`.

Response bodies stream (the backend connection is registered as the
stream's producer, so a slow client pauses its backend); request bodies
are collected by twisted.web before the resource sees the request (its
design), then streamed to the backend.
"""

from __future__ import annotations

import weakref

from twisted.application.service import Service
from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, TimeoutError
from twisted.internet.protocol import Protocol
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger
from twisted.web import server
from twisted.web._http2 import H2Connection
from twisted.web.client import (
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
    PartialDownloadError,
    ResponseDone,
    ResponseFailed,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web.resource import Resource
from zope.interface import implementer

from edge.http.balancer import target_key
from edge.http.middlewares import Reply
from edge.http.target import BadTarget, split_target

__all__ = ["H2Bridge"]

# Connection-specific headers: never forwarded, and HTTP/2 forbids them in
# responses (RFC 9113 8.2.2).
_HOP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
        b"transfer-encoding", b"upgrade", b"proxy-authorization", b"proxy-authenticate",
    }
)
_FORWARDED = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
     b"x-forwarded-port", b"x-real-ip", b"forwarded"}
)
_REQ_DROP = _HOP | {b"host", b"content-length", b"expect"}
_BODILESS = frozenset({b"GET", b"HEAD", b"DELETE", b"OPTIONS", b"TRACE"})
_TEXT = [(b"Content-Type", b"text/plain; charset=utf-8")]


@implementer(IAgentEndpointFactory)
class _BackendEndpoints:
    """
    Endpoints for backend URIs, cached per (scheme, host, port).

    Agent asks for an endpoint on every request (the pool then reuses a
    connection); Twisted's default builds a ``HostnameEndpoint`` each time,
    which IDNA-encodes the host and resolves it in a thread.  Targets are
    IP addresses almost always, so connect to them directly.
    """

    def __init__(self, reactor, connect_timeout: float):
        self._reactor = reactor
        self._timeout = connect_timeout
        self._tls = CertificateOptions(verify=False)
        self._cache: dict = {}

    def endpointForURI(self, uri):
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._cache.get(key)
        if endpoint is None:
            host = uri.host.decode("ascii")
            if isIPv6Address(host):
                endpoint = TCP6ClientEndpoint(self._reactor, host, uri.port, self._timeout)
            elif isIPAddress(host):
                endpoint = TCP4ClientEndpoint(self._reactor, host, uri.port, self._timeout)
            else:
                endpoint = HostnameEndpoint(self._reactor, host, uri.port, self._timeout)
            if uri.scheme == b"https":
                # Overlay backends usually have self-signed certificates.
                endpoint = wrapClientTLS(self._tls, endpoint)
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = endpoint
        return endpoint


class _Request(server.Request):
    # The backend decides the content type; edge adds none of its own.
    defaultContentType = None


class _Site(server.Site):
    requestFactory = _Request
    noisy = False

    def log(self, request):
        # Requests are counted through the proxy's stats, not twisted.web's log.
        pass


class _Call:
    """What middlewares see of one HTTP/2 request (the proxy's request shape)."""

    __slots__ = ("factory", "method", "target", "headers", "host", "scheme", "client_ip", "route",
                 "tried", "set_cookie", "started", "finished")

    def __init__(self, factory, method, target, headers, host, scheme, client_ip, started):
        self.factory = factory
        self.method = method
        self.target = target
        self.headers = headers
        self.host = host
        self.scheme = scheme
        self.client_ip = client_ip
        self.route = None
        self.tried: set = set()
        self.set_cookie = None
        self.started = started
        self.finished = False


class _BodyRelay(Protocol):
    """Streams one backend response body into an HTTP/2 stream."""

    def __init__(self, bridge: "H2Bridge", request, call: _Call, status: int):
        self._bridge = bridge
        self._request = request
        self._call = call
        self._status = status

    def connectionMade(self):
        if self._call.finished:
            self.transport.stopProducing()
            return
        # A full HTTP/2 flow-control window pauses the backend's socket.
        self._request.registerProducer(self.transport, True)
        self._request.notifyFinish().addErrback(self._client_gone)

    def _client_gone(self, failure):
        # Stop reading the backend (the pool drops that connection).
        self.transport.stopProducing()

    def dataReceived(self, data):
        if not self._call.finished:
            self._request.write(data)

    def connectionLost(self, reason):
        call = self._call
        if call.finished:
            return
        request = self._request
        request.unregisterProducer()
        if reason.check(ResponseDone, PotentialDataLoss):
            self._bridge._done(request, call, self._status)
            request.finish()
        else:
            self._bridge._log.warn(
                "Router {router}: the backend broke off the response body: {cause}",
                router=call.route.router,
                cause=reason.getErrorMessage(),
            )
            self._bridge._done(request, call, self._status)
            request.channel.abortConnection()  # RST_STREAM: the client sees a broken body


class _ProxyResource(Resource):
    isLeaf = True

    def __init__(self, bridge: "H2Bridge", factory):
        super().__init__()
        self._bridge = bridge
        self._factory = factory

    def render(self, request):
        self._bridge._handle(request, self._factory)
        return server.NOT_DONE_YET


def _server_protocol(transport):
    """The HTTP/1.1 protocol under ``transport`` (the TLS layer wraps it)."""
    return getattr(transport, "wrappedProtocol", None)


class H2Bridge(Service):
    """
    The ``h2_handler`` of every TLS entry point's :class:`~edge.http.proxy.ProxyFactory`.

    Reads the entry point's ``factory.table`` (swapped per snapshot) and
    ``factory.proxy`` (trusted proxies, health, stats, the 404 reply) at each
    request.  As a service it closes its HTTP/2 connections (GOAWAY) and
    its backend pool on shutdown.
    """

    _log = Logger()
    name = "http2"

    def __init__(
        self,
        reactor,
        *,
        pool_size: int = 64,
        connect_timeout: float = 5.0,
        response_timeout: float = 60.0,
        idle_timeout: float = 180.0,
    ):
        self._reactor = reactor
        self._response_timeout = response_timeout
        self._idle_timeout = idle_timeout
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = pool_size
        self.pool.retryAutomatically = True
        self._agent = Agent.usingEndpointFactory(
            reactor, _BackendEndpoints(reactor, connect_timeout), pool=self.pool
        )
        self._sites: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
        self._live: "weakref.WeakSet[H2Connection]" = weakref.WeakSet()
        self.connections = 0

    # -- the handler the HTTP/1.1 protocol calls ------------------------------

    def __call__(self, transport, first_bytes: bytes) -> H2Connection:
        """Run HTTP/2 on ``transport``, starting with ``first_bytes``."""
        server_protocol = _server_protocol(transport)
        factory = server_protocol.factory
        site = self._sites.get(factory)
        if site is None:
            site = self._sites[factory] = _Site(_ProxyResource(self, factory), reactor=self._reactor)
        connection = H2Connection(self._reactor)
        connection.site = site
        connection.factory = site
        connection.requestFactory = site.requestFactory
        connection.timeOut = self._idle_timeout
        connection.callLater = self._reactor.callLater
        # The HTTP/1.1 protocol registered its own producer; HTTP/2 paces
        # itself (a full socket buffer pauses its streams).
        try:
            transport.unregisterProducer()
        except Exception:
            pass
        # The HTTP/1.1 protocol's housekeeping would apply its header
        # timeout to this connection; HTTP/2 has its own idle timeout.
        factory.connections.discard(server_protocol)
        connection.makeConnection(transport)
        transport.registerProducer(connection, True)
        self.connections += 1
        self._live.add(connection)
        connection.dataReceived(first_bytes)
        return connection

    def stopService(self):
        """Say GOAWAY on every HTTP/2 connection, then close idle backend connections."""
        super().stopService()
        for connection in list(self._live):
            transport = connection.transport
            if transport is None or not getattr(transport, "connected", True):
                continue
            try:
                connection.conn.close_connection()
                transport.write(connection.conn.data_to_send())
            except Exception:
                pass
            transport.loseConnection()
        return self.pool.closeCachedConnections()

    # -- one request -------------------------------------------------------------

    def _handle(self, request, factory) -> None:
        proxy = factory.proxy
        peer = request.getClientAddress()
        client_ip = getattr(peer, "host", "") or ""
        headers = [(k, v) for k, vs in request.requestHeaders.getAllRawHeaders() for v in vs]
        host = request.getHeader(b"host") or b""
        call = _Call(
            factory, request.method, request.uri, headers, host, factory.scheme, client_ip,
            self._reactor.seconds(),
        )
        request.notifyFinish().addErrback(self._client_gone, call)
        try:
            authority, call.target = split_target(request.method, request.uri, proxy.allowed_encoded)
        except BadTarget as e:
            self._error(request, call, 400, b"Bad Request", str(e))
            return
        if authority is not None:
            call.host = host = authority
        table = factory.table
        route = (
            table.match(request.method, host, call.target, headers, client_ip)
            if table is not None
            else None
        )
        if route is None:
            self._reply(request, call, proxy.not_found)
            return
        call.route = route
        if proxy.is_trusted(client_ip):
            for name, value in headers:
                if name.lower() == b"x-forwarded-proto":
                    scheme = value.strip().lower()
                    if scheme in (b"http", b"https"):
                        call.scheme = scheme.decode("ascii")
                    break
        self._middlewares(request, call, route.middlewares.request, 0)

    def _middlewares(self, request, call: _Call, chain, index: int) -> None:
        for i in range(index, len(chain)):
            result = chain[i](call)
            if result is None:
                continue
            if isinstance(result, Reply):
                self._reply(request, call, result)
                return

            def resumed(outcome, i=i):
                if call.finished:
                    return
                if isinstance(outcome, Reply):
                    self._reply(request, call, outcome)
                else:
                    self._middlewares(request, call, chain, i + 1)

            def failed(failure):
                self._log.failure(
                    "Middleware failed on router {router}", failure, router=call.route.router
                )
                self._error(request, call, 500, b"Internal Server Error", "middleware failed")

            result.addCallbacks(resumed, failed)
            return
        self._forward(request, call)

    def _forward(self, request, call: _Call) -> None:
        if call.finished:
            return
        route = call.route
        balancer = route.balancer
        if balancer is None or not len(balancer):
            self._error(request, call, 503, b"Service Unavailable", "no running targets")
            return
        index, set_cookie = balancer.choose(call.tried, call.headers)
        if index is None:
            if call.tried:
                self._error(request, call, 502, b"Bad Gateway", "no target accepted the connection")
            else:
                self._error(request, call, 503, b"Service Unavailable", "no healthy targets")
            return
        if set_cookie is not None:
            call.set_cookie = set_cookie
        target = balancer.targets[index]
        call.tried.add(index)

        trusted = call.factory.proxy.is_trusted(call.client_ip)
        out = Headers()
        xff = None
        seen = set()
        for name, value in call.headers:
            lower = name.lower()
            if lower in _REQ_DROP:
                continue
            if lower in _FORWARDED:
                if not trusted:
                    continue
                if lower == b"x-forwarded-for":
                    xff = value if xff is None else xff + b", " + value
                    continue
                seen.add(lower)
            out.addRawHeader(name, value)
        ip = call.client_ip.encode("ascii", "replace")
        out.setRawHeaders(b"X-Forwarded-For", [xff + b", " + ip if xff else ip])
        if b"x-forwarded-proto" not in seen:
            out.setRawHeaders(b"X-Forwarded-Proto", [call.scheme.encode("ascii")])
        if b"x-real-ip" not in seen:
            out.setRawHeaders(b"X-Real-Ip", [ip])
        if b"x-forwarded-host" not in seen and call.host:
            out.setRawHeaders(b"X-Forwarded-Host", [call.host])
        if b"x-forwarded-port" not in seen:
            port = getattr(request.getHost(), "port", "") or call.factory.port
            out.setRawHeaders(b"X-Forwarded-Port", [str(port).encode("ascii")])
        if route.pass_host_header and call.host:
            out.setRawHeaders(b"Host", [call.host])

        body = None
        content = request.content
        if content is not None:
            content.seek(0, 2)
            size = content.tell()
            content.seek(0)
            if size or request.method not in _BODILESS:
                body = FileBodyProducer(content)
        url = target.url.encode("ascii") + call.target
        attempt = self._agent.request(request.method, url, out, body)
        attempt.addTimeout(self._response_timeout, self._reactor)
        call_ref = [attempt]
        request.notifyFinish().addErrback(lambda _: call_ref[0].cancel())
        attempt.addCallbacks(
            self._response, self._failed,
            callbackArgs=(request, call, target), errbackArgs=(request, call, target),
        )

    def _response(self, response, request, call: _Call, target) -> None:
        proxy = call.factory.proxy
        proxy.health.connect_succeeded(target_key(target))
        if call.finished:
            response.deliverBody(_Abort())  # the client went away meanwhile
            return
        request.setResponseCode(response.code, response.phrase or None)
        pairs = [
            (k, v)
            for k, vs in response.headers.getAllRawHeaders()
            for v in vs
            if k.lower() not in _HOP
        ]
        pairs = call.route.middlewares.response_headers(pairs, call.scheme)
        if call.set_cookie is not None:
            pairs.append((b"Set-Cookie", call.set_cookie))
        headers = Headers()
        for name, value in pairs:
            headers.addRawHeader(name, value)
        request.responseHeaders = headers
        if request.method == b"HEAD" or response.code in (204, 304) or response.length == 0:
            # Nothing to relay; let the pool have the connection back.
            response.deliverBody(_Discard())
            self._done(request, call, response.code)
            request.finish()
            return
        response.deliverBody(_BodyRelay(self, request, call, response.code))

    def _failed(self, failure, request, call: _Call, target) -> None:
        if call.finished:
            return
        proxy = call.factory.proxy
        route = call.route
        if failure.check(TimeoutError):
            self._error(request, call, 504, b"Gateway Timeout",
                        f"{target.url} did not answer in time")
            return
        if failure.check(ierror.ConnectError, ierror.ConnectionRefusedError, ierror.DNSLookupError):
            backoff = proxy.health.connect_failed(target_key(target))
            proxy.connect_failed(route.service)
            self._log.warn(
                "Router {router}: cannot connect to {target}: {cause}; skipping it for {backoff:.0f}s",
                router=route.router, target=target.url,
                cause=failure.getErrorMessage(), backoff=backoff,
            )
            if request.content is not None:
                request.content.seek(0)
            self._forward(request, call)  # the next target, if any
            return
        if failure.check(CancelledError):
            return
        cause = failure.getErrorMessage()
        if failure.check(ResponseFailed, PartialDownloadError):
            reasons = getattr(failure.value, "reasons", None) or ()
            cause = "; ".join(r.getErrorMessage() for r in reasons) or cause
        self._error(request, call, 502, b"Bad Gateway", f"{target.url}: {cause}")

    # -- answers -------------------------------------------------------------------

    def _error(self, request, call: _Call, status: int, reason: bytes, cause: str) -> None:
        route = call.route
        self._log.warn(
            "Router {router}: {status} for {method} {host}{path} over HTTP/2: {cause}",
            router=route.router if route else "-", status=status,
            method=call.method.decode("latin-1"), host=call.host.decode("latin-1"),
            path=call.target.decode("latin-1"), cause=cause,
        )
        self._reply(request, call, Reply(status, reason, list(_TEXT),
                                         f"{status} {reason.decode()}: {cause}\n".encode()))

    def _reply(self, request, call: _Call, reply: Reply) -> None:
        if call.finished:
            return
        request.setResponseCode(reply.status, reply.reason)
        headers = Headers()
        for name, value in reply.headers:
            headers.addRawHeader(name, value)
        if call.set_cookie is not None and reply.status < 500:
            headers.addRawHeader(b"Set-Cookie", call.set_cookie)
        headers.setRawHeaders(b"Content-Length", [str(len(reply.body)).encode("ascii")])
        request.responseHeaders = headers
        if request.method != b"HEAD" and reply.body:
            request.write(reply.body)
        self._done(request, call, reply.status)
        request.finish()

    def _done(self, request, call: _Call, status: int) -> None:
        call.finished = True
        stats = getattr(call.factory.proxy, "stats", None)
        if stats is not None:
            router = call.route.router if call.route is not None else ""
            stats.request(router, call.factory.name, status, self._reactor.seconds() - call.started)

    def _client_gone(self, failure, call: _Call) -> None:
        call.finished = True


class _Discard(Protocol):
    def connectionLost(self, reason):
        pass


class _Abort(Protocol):
    def connectionMade(self):
        self.transport.stopProducing()

    def connectionLost(self, reason):
        pass


