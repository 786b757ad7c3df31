"""
The HTTP/1.1 hot path: a protocol-level reverse proxy.

:class:`ServerProtocol` parses client requests with httptools (llhttp, which
is strict about framing), picks a route from the entry point's current
:class:`~edge.http.routing.RoutingTable`, and streams the request to a
pooled :class:`BackendProtocol`, which parses the response and streams it
back.  Nothing is buffered beyond one read: each side is registered as a
streaming producer on the other's transport, so a slow reader pauses the
fast writer.

Framing is always edge's own: bodies arrive de-chunked from the parser and
leave with a ``Content-Length`` copied from a validated header or re-chunked,
so a backend can never read a request differently from the way edge did.
Trailers are dropped.
"""

from __future__ import annotations

import ipaddress
from typing import Optional

import httptools
from twisted.internet import tcp
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

from edge.http.balancer import target_key
from edge.http.middlewares import Reply
from edge.http.target import BadTarget, encoded_allowance, split_target

__all__ = ["ServerProtocol", "BackendProtocol", "ProxyFactory", "Proxy", "lean_dispatch"]

# Request headers edge never forwards as received (hop-by-hop and framing),
# plus the forwarded headers, which it rewrites.
_HOP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
        b"transfer-encoding", b"upgrade", b"proxy-authorization", b"proxy-authenticate",
    }
)
_FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
                        b"x-forwarded-port", b"x-real-ip", b"forwarded"})
_REQ_DROP = _HOP | _FORWARDED | {b"content-length", b"expect", b"host"}
_REQ_DROP_TRUSTED = _HOP | {b"content-length", b"expect", b"host", b"x-forwarded-for"}
_RESP_DROP = _HOP | {b"content-length"}
# Header names worth lower-casing: only these lengths can be special.
_SPECIAL_LENGTHS = frozenset(len(n) for n in _REQ_DROP | _RESP_DROP | {b"upgrade", b"expect"})
_RESP_LENGTHS = frozenset(len(n) for n in _RESP_DROP)
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})

_REASONS = {
    400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed",
    408: b"Request Timeout", 413: b"Content Too Large", 414: b"URI Too Long",
    417: b"Expectation Failed", 431: b"Request Header Fields Too Large",
    501: b"Not Implemented", 502: b"Bad Gateway", 503: b"Service Unavailable",
    504: b"Gateway Timeout", 505: b"HTTP Version Not Supported",
}

# Phases of a client connection, for timeouts.
# The request line is not configurable: 8 KiB is what nginx and Traefik allow.
MAX_REQUEST_LINE = 8192

_IDLE, _HEAD, _ROUTING, _BACKEND, _TUNNEL, _CLOSED = range(6)

# How a response body travels to the client.
_NONE, _RAW, _CHUNK = range(3)


class _Reject(Exception):
    """Stop parsing this client's input and answer ``status``."""

    def __init__(self, status: int, why: str):
        super().__init__(why)
        self.status = status
        self.why = why


class _Request:
    """One request's state; class attributes are the defaults (cheap to create)."""

    method = b""
    target = b""
    version = "1.1"
    host = b""
    keep_alive = True
    upgrade = False
    upgrade_value = b""
    chunked = False
    transfer_encoding = None
    content_length = None
    head_done = False
    body_done = False
    pending_bytes = 0
    connection_tokens = None
    expect = False
    header_bytes = 0
    header_count = 0
    body_bytes = 0
    route = None
    conn = None
    started = 0.0
    status = 0
    sent_bytes = 0
    target_url = ""
    replied = False
    cookie = None
    set_cookie = None
    retried = False
    error = ""

    def __init__(self, scheme: str, client_ip: str):
        self.scheme = scheme
        self.client_ip = client_ip
        self.headers: list = []
        self.pending: list = []
        self.tried: set = set()


@implementer(IPushProducer)
class _PeerReads:
    """Registered on one side's transport: a full write buffer pauses the other side's reads."""

    __slots__ = ("_owner",)

    def __init__(self, owner):
        self._owner = owner

    def pauseProducing(self):
        self._owner._peer_full(True)

    def resumeProducing(self):
        self._owner._peer_full(False)

    def stopProducing(self):
        pass


# Only these take the direct-send shortcut: wrappers (TLS, PROXY protocol)
# forward attribute lookups to the TCP transport underneath, so duck typing
# would send plaintext past TLS.
_PLAIN_TCP = frozenset({tcp.Server, tcp.Client})


def _write(transport, data: bytes) -> None:
    """
    ``transport.write``, but send at once when a TCP transport has nothing queued.

    Twisted queues every write until the next reactor turn, which costs two
    epoll_ctl calls and a dispatch per write; on the proxy's hot path that
    is a large share of the CPU per request.  Only plain TCP transports with
    an empty buffer take the shortcut; anything else (TLS, PROXY wrappers,
    queued data, a closing connection) goes through ``write`` unchanged, and
    so does whatever the socket does not take.
    """
    if (
        transport.__class__ in _PLAIN_TCP
        and transport.connected
        and not transport.disconnecting
        and not transport._tempDataBuffer
        and transport.offset == len(transport.dataBuffer)
        and not transport._writeDisconnected
    ):
        try:
            sent = transport.socket.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = 0  # let the transport find the error on its own write
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def lean_dispatch(reactor) -> bool:
    """
    Dispatch epoll events of plain-TCP proxy connections without the log context.

    The stock ``EPollReactor.doPoll`` wraps every event in
    ``log.callWithLogger``: a ``logPrefix()`` call, a context dict copied and
    pushed, and a thread-local lookup -- about 4 us per event on the bench
    machine, two events per proxied request.  That context only labels
    legacy ``twisted.python.log`` lines (edge logs through
    ``twisted.logger``), so events of edge's own HTTP/1.1 connections go
    straight to the reactor's ``_doReadOrWrite`` (which still turns errors
    into a logged disconnect); every other selectable (listening ports,
    TLS, DNS, the Docker client) is dispatched exactly as before.

    Installed only on an unmodified ``EPollReactor``; returns whether it was.
    """
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:  # not Linux
        return False
    if not isinstance(reactor, EPollReactor) or type(reactor).doIteration is not EPollReactor.doPoll:
        return False
    if "doIteration" in vars(reactor):
        return False
    import errno

    from twisted.python.log import callWithLogger

    poller = reactor._poller
    selectables = reactor._selectables
    drdw = reactor._doReadOrWrite
    plain = _PLAIN_TCP
    ours = frozenset({ServerProtocol, BackendProtocol})
    log = ServerProtocol._log

    def doPoll(timeout):
        if timeout is None:
            timeout = -1
        try:
            events = poller.poll(timeout, len(selectables))
        except OSError as e:
            if e.errno == errno.EINTR:
                return
            raise
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            # (A closed tcp.Connection has no .protocol; it is never registered then.)
            if selectable.__class__ in plain and getattr(selectable, "protocol", None).__class__ in ours:
                try:
                    drdw(selectable, fd, event)
                except Exception:
                    log.failure("Unhandled error dispatching an event on {fd}", fd=fd)
            else:
                callWithLogger(selectable, drdw, selectable, fd, event)

    reactor.doIteration = doPoll
    return True


def _status_line(status: int, reason: bytes, _cache={}) -> bytes:
    line = _cache.get((status, reason))
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason)
        if len(_cache) < 1000:
            _cache[(status, reason)] = line
    return line


class ServerProtocol(Protocol):
    """One client connection on an entry point."""

    _log = Logger()

    def __init__(self):
        self._parser = httptools.HttpRequestParser(self)
        self._queue: list[_Request] = []
        self._parsing: Optional[_Request] = None
        self._paused: set = set()
        self._phase = _HEAD
        self._since = 0.0
        self._head_bytes = 0
        self._out: list = []
        self._closing = False
        self._closed = False
        self._backend: Optional[BackendProtocol] = None
        self._backend_paused = False
        self._first = True
        self._h2 = None
        self._tunnel_buffer: list | None = None

    # -- connection ----------------------------------------------------

    def connectionMade(self):
        factory = self.factory
        proxy = factory.proxy
        self._proxy = proxy
        self._reactor = proxy.reactor
        self._limits = limits = proxy.limits
        # Bytes read while a head is incomplete; bounds what the parser buffers.
        self._max_head_bytes = limits.max_header_bytes + MAX_REQUEST_LINE + 65536
        self._scheme = factory.scheme
        self._identify()
        self._since = self._reactor.seconds()
        self.transport.registerProducer(_PeerReads(self), True)
        factory.connections.add(self)
        proxy.open_connections(factory.name, +1)
        if factory.stopping:
            self._closing = True

    def _identify(self):
        """Who the client is; called again once a PROXY protocol header was read."""
        peer = self.transport.getPeer()
        self._client_ip = ip = getattr(peer, "host", "") or ""
        self._trusted = self._proxy.is_trusted(ip)
        host = self.transport.getHost()
        port = str(getattr(host, "port", "") or self.factory.port).encode("ascii")
        self._port_bytes = port
        self._forwarded_tail = (
            b"X-Forwarded-Proto: " + self._scheme.encode("ascii") + b"\r\n"
            b"X-Forwarded-Port: " + port + b"\r\n"
            b"X-Real-Ip: " + ip.encode("ascii") + b"\r\n"
            b"X-Forwarded-For: " + ip.encode("ascii") + b"\r\n"
        )

    def connectionLost(self, reason=None):
        if self._closed:
            return
        self._closed = True
        tunnel = self._phase == _TUNNEL
        self._phase = _CLOSED
        self.factory.connections.discard(self)
        self._proxy.open_connections(self.factory.name, -1)
        if self._h2 is not None:
            lost = getattr(self._h2, "connectionLost", None)
            if lost is not None:
                lost(reason)
            return
        backend = self._backend
        if backend is not None:
            self._backend = None
            if tunnel:
                backend.close_tunnel()
            else:
                backend.abandon()
        for req in self._queue:
            if req.head_done and not req.replied and req.route is not None:
                req.status = 499
                req.error = "client closed the connection"
                self._proxy.record(self, req)
        self._queue = []
        self.factory.connection_closed(self)

    def _close(self, abort: bool = False):
        """Finish writing what is queued, then close."""
        self._flush()
        if self._closed:
            return
        self._phase = _CLOSED
        transport = self.transport
        try:
            transport.unregisterProducer()
        except Exception:
            pass
        if abort:
            transport.abortConnection()
        else:
            transport.loseConnection()

    def _flush(self):
        if self._out:
            data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
            self._out = []
            _write(self.transport, data)

    # -- flow control ----------------------------------------------------

    def _pause(self, reason: str):
        if not self._paused:
            self.transport.pauseProducing()
        self._paused.add(reason)

    def _resume(self, reason: str):
        if reason in self._paused:
            self._paused.discard(reason)
            if not self._paused and not self._closed:
                self.transport.resumeProducing()

    def _peer_full(self, full: bool):
        """The client's write buffer filled or drained: pause or resume the backend."""
        self._backend_paused = full
        backend = self._backend
        if backend is not None and backend.transport is not None:
            if full:
                backend.transport.pauseProducing()
            else:
                backend.transport.resumeProducing()

    # -- input ---------------------------------------------------------

    def dataReceived(self, data: bytes):
        if self._phase == _TUNNEL:
            backend = self._backend
            if backend is not None:
                _write(backend.transport, data)
            return
        if self._h2 is not None:
            self._h2.dataReceived(data)
            return
        if self._first:
            self._first = False
            if self.factory.proxy_protocol:
                self._identify()
            handler = getattr(self.factory, "h2_handler", None)
            if handler is not None and getattr(self.transport, "negotiatedProtocol", None) == b"h2":
                self._h2 = handler(self.transport, data)
                self._h2 = self._h2 if hasattr(self._h2, "dataReceived") else _Detached()
                return
        if self._tunnel_buffer is not None:
            # Upgrade asked for, no answer yet: hold the client's bytes (bounded).
            self._tunnel_buffer.append(data)
            self._pause("upgrade")
            return
        if self._closed or self._phase == _CLOSED:
            return
        self._since = self._reactor.seconds()
        if self._phase == _HEAD or self._phase == _IDLE:
            self._head_bytes += len(data)
            if self._head_bytes > self._max_head_bytes:
                self._reject(431, "request head too large")
                return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            offset = e.args[0] if e.args else len(data)
            self._upgrade_requested(data[offset:])
        except httptools.HttpParserCallbackError as e:
            cause = e.__cause__ or e.__context__
            if isinstance(cause, _Reject):
                self._reject(cause.status, cause.why)
            elif not isinstance(cause, _Stop):
                self._log.error("Internal error handling a request: {error!r}", error=cause)
                self._reject(500, "internal error")
        except httptools.HttpParserError as e:
            self._reject(400, f"malformed request: {e}")
        self._flush()

    def _reject(self, status: int, why: str):
        """Answer a request edge cannot accept, then close (the stream is unusable)."""
        self._closing = True
        req = self._parsing if self._parsing is not None else _Request(self._scheme, self._client_ip)
        if req in self._queue and req is not self._queue[0]:
            # An earlier request is still being answered; just drop the connection after it.
            self._log.info("Client {client}: {why}; closing", client=self._client_ip, why=why)
            self._phase = _CLOSED
            return
        if req.replied:
            self._close(abort=True)
            return
        if req.conn is not None:
            backend, req.conn = req.conn, None
            self._backend = None
            backend.abandon()
        self._log.info(
            "Rejected request from {client}: {status} {why}",
            client=self._client_ip, status=status, why=why,
        )
        req.error = why
        self._send_reply(req, Reply(status, _REASONS.get(status, b"Error"),
                                    [(b"Content-Type", b"text/plain; charset=utf-8")],
                                    f"{status} {why}\n".encode("utf-8", "replace")), close=True)

    # -- httptools callbacks ---------------------------------------------

    def on_message_begin(self):
        if self._phase == _CLOSED:
            raise _Stop()
        req = _Request(self._scheme, self._client_ip)
        self._parsing = req
        self._queue.append(req)
        if len(self._queue) == 1:
            self._phase = _HEAD
            self._head_bytes = 0
        else:
            # Pipelined: hold further input until the earlier answers are out.
            self._pause("pipeline")

    def on_url(self, url: bytes):
        req = self._parsing
        req.target += url
        if len(req.target) > MAX_REQUEST_LINE:
            raise _Reject(414, "request target too long")

    def on_header(self, name: bytes, value: bytes):
        req = self._parsing
        req.header_count += 1
        req.header_bytes += len(name) + len(value) + 4
        limits = self._limits
        if req.header_count > limits.max_header_count:
            raise _Reject(431, "too many header fields")
        if req.header_bytes > limits.max_header_bytes:
            raise _Reject(431, "header fields too large")
        if req.head_done:
            return  # a trailer: dropped
        req.headers.append((name, value))
        if len(name) not in _SPECIAL_LENGTHS:
            return
        lower = name.lower()
        if lower == b"host":
            if req.host:
                raise _Reject(400, "more than one Host header")
            req.host = value
        elif lower == b"transfer-encoding":
            req.transfer_encoding = value
        elif lower == b"connection":
            tokens = {t.strip().lower() for t in value.split(b",")}
            req.connection_tokens = (req.connection_tokens or set()) | tokens
        elif lower == b"expect":
            if value.strip().lower() != b"100-continue":
                raise _Reject(417, "unsupported Expect value")
            req.expect = True
        elif lower == b"upgrade":
            req.upgrade_value = value

    def on_headers_complete(self):
        req = self._parsing
        parser = self._parser
        req.head_done = True
        req.method = parser.get_method()
        req.version = parser.get_http_version()
        req.keep_alive = parser.should_keep_alive()
        if req.transfer_encoding is not None:
            if req.version == "1.0":
                raise _Reject(400, "Transfer-Encoding in an HTTP/1.0 request")
            if req.transfer_encoding.strip().lower() != b"chunked":
                raise _Reject(501, "unsupported Transfer-Encoding")
            req.chunked = True
        else:
            for name, value in req.headers:
                if name.lower() == b"content-length":
                    req.content_length = int(value)
                    break
        if req.version == "1.0":
            req.expect = False
        if req.version != "1.1" and req.version != "1.0":
            raise _Reject(505, "HTTP version not supported")
        if req.upgrade_value and req.connection_tokens and b"upgrade" in req.connection_tokens:
            if req.chunked or req.content_length:
                # llhttp ends an Upgrade request at its head and hands what
                # follows over as tunnel bytes: edge would announce a body it
                # never sends, and the backend would read the next request
                # on that connection as this one's body (request smuggling).
                raise _Reject(400, "Upgrade request with a body")
            req.upgrade = True
        elif not req.chunked and not req.content_length:
            # No body follows this head: an answer from edge itself (404,
            # redirect, 401...) need not close the connection.
            req.body_done = True
        if self._queue[0] is req:
            self._start(req)

    def on_body(self, data: bytes):
        req = self._parsing
        req.body_bytes += len(data)
        limit = self._limits.max_body_bytes
        if limit and req.body_bytes > limit:
            raise _Reject(413, "request body too large")
        conn = req.conn
        if conn is not None and conn.req is req:
            self._since = self._reactor.seconds()
            if req.chunked:
                _write(conn.transport, b"%x\r\n%s\r\n" % (len(data), data))
            else:
                _write(conn.transport, data)
        elif req.replied:
            return  # answered already; the connection closes after
        else:
            req.pending.append(data)
            req.pending_bytes += len(data)
            if req.pending_bytes > 65536:
                self._pause("buffer")

    def on_message_complete(self):
        req = self._parsing
        req.body_done = True
        conn = req.conn
        if req.chunked and conn is not None and conn.req is req:
            conn.transport.write(b"0\r\n\r\n")

    # -- routing and dispatch --------------------------------------------

    def _start(self, req: _Request):
        """A request head is complete and it is this connection's turn."""
        self._phase = _ROUTING
        req.started = self._since = self._reactor.seconds()
        if req.method == b"CONNECT":
            raise _Reject(405, "CONNECT is not supported")
        try:
            authority, req.target = split_target(req.method, req.target, self._proxy.allowed_encoded)
        except BadTarget as e:
            raise _Reject(400, str(e)) from None
        if authority is not None:
            req.host = authority
        if not req.host:
            if req.version == "1.1":
                raise _Reject(400, "missing Host header")
        limit = self._limits.max_body_bytes
        if limit and req.content_length is not None and req.content_length > limit:
            raise _Reject(413, "request body too large")
        factory = self.factory
        challenges = factory.challenges
        if challenges is not None and req.target.startswith(b"/.well-known/acme-challenge/"):
            reply = challenges.respond(req.host, req.target)
            if reply is not None:
                req.error = "ACME challenge"
                self._send_reply(req, reply)
                return
        if factory.redirect is not None:
            from edge.http.middlewares import _redirect

            scheme, port = factory.redirect
            req.error = "entry point redirect"
            self._send_reply(req, _redirect(req, scheme, port, True))
            return
        table = factory.table
        route = table.match(req.method, req.host, req.target, req.headers, self._client_ip) if table else None
        if route is None:
            req.error = "no route"
            self._send_reply(req, self._proxy.not_found)
            return
        req.route = route
        if self._trusted:
            self._apply_trusted(req)
        chain = route.middlewares.request
        if chain:
            self._run_middlewares(req, chain, 0)
        else:
            self._dispatch(req)

    def _apply_trusted(self, req: _Request):
        for name, value in req.headers:
            if name.lower() == b"x-forwarded-proto":
                scheme = value.strip().lower()
                if scheme in (b"http", b"https"):
                    req.scheme = scheme.decode("ascii")
                break

    def _run_middlewares(self, req: _Request, chain, index: int):
        for i in range(index, len(chain)):
            result = chain[i](req)
            if result is None:
                continue
            if isinstance(result, Reply):
                req.error = "answered by middleware"
                self._send_reply(req, result)
                return
            # A Deferred (a bcrypt check in a thread).
            self._pause("middleware")

            def resumed(outcome, i=i):
                self._resume("middleware")
                if self._closed:
                    return
                if isinstance(outcome, Reply):
                    req.error = "answered by middleware"
                    self._send_reply(req, outcome)
                else:
                    self._run_middlewares(req, chain, i + 1)
                self._flush()

            def failed(f):
                self._log.failure("Middleware failed on router {router}", f, router=req.route.router)
                self._resume("middleware")
                if not self._closed:
                    self._error(req, 500, "middleware failed")
                    self._flush()

            result.addCallbacks(resumed, failed)
            return
        self._dispatch(req)

    def _dispatch(self, req: _Request):
        route = req.route
        balancer = route.balancer
        if balancer is None or not len(balancer):
            self._error(req, 503, "no running targets")
            return
        index, set_cookie = balancer.choose(req.tried, req.headers)
        if index is None:
            if req.tried:
                self._error(req, 502, "no target accepted the connection")
            else:
                self._error(req, 503, "no healthy targets")
            return
        if set_cookie is not None:
            req.set_cookie = set_cookie
        target = balancer.targets[index]
        req.tried.add(index)
        req.target_url = balancer.urls[index]
        key = balancer.keys[index]
        proxy = self._proxy
        conn = proxy.pool.take(key)
        if conn is not None:
            self._attach(req, conn, True)
            return
        d = proxy.pool.connect(key)
        d.addCallbacks(self._connected, self._connect_failed,
                       callbackArgs=(req,), errbackArgs=(req, target))

    def _connected(self, conn, req: _Request):
        self._proxy.health.connect_succeeded(conn.key)
        if self._closed or req.replied or self._queue[:1] != [req]:
            self._proxy.pool.put(conn)
            return
        self._attach(req, conn, False)
        self._flush()

    def _connect_failed(self, failure, req: _Request, target):
        proxy = self._proxy
        backoff = proxy.health.connect_failed(target_key(target))
        proxy.connect_failed(req.route.service)
        self._log.warn(
            "Router {router}: cannot connect to {target}: {cause}; skipping it for {backoff:.0f}s",
            router=req.route.router, target=target.url,
            cause=failure.getErrorMessage(), backoff=backoff,
        )
        if self._closed or req.replied:
            return
        req.error = f"connect to {target.url} failed: {failure.getErrorMessage()}"
        self._dispatch(req)
        self._flush()

    def _attach(self, req: _Request, conn: "BackendProtocol", reused: bool):
        req.conn = conn
        self._backend = conn
        self._phase = _BACKEND
        self._since = self._reactor.seconds()
        conn.attach(self, req, reused)
        head = self._request_head(req)
        if req.pending:
            body = req.pending
            req.pending = []
            req.pending_bytes = 0
            if req.chunked:
                body = [b"%x\r\n%s\r\n" % (len(b), b) for b in body]
            head = head + b"".join(body)
            self._resume("buffer")
        if req.body_done and req.chunked:
            head += b"0\r\n\r\n"
        _write(conn.transport, head)
        if self._backend_paused:
            conn.transport.pauseProducing()
        if req.expect and not req.body_done:
            self._out.append(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _request_head(self, req: _Request) -> bytes:
        route = req.route
        trusted = self._trusted
        drop = _REQ_DROP_TRUSTED if trusted else _REQ_DROP
        tokens = req.connection_tokens
        parts = [req.method, b" ", req.target, b" HTTP/1.1\r\nHost: "]
        if route.pass_host_header and req.host:
            parts.append(req.host)
        else:
            parts.append(req.target_url.split("://", 1)[1].encode("latin-1"))
        parts.append(b"\r\n")
        xff = None
        seen = None
        special = _SPECIAL_LENGTHS
        for name, value in req.headers:
            if tokens is None and len(name) not in special:
                parts += (name, b": ", value, b"\r\n")
                continue
            lower = name.lower()
            if lower in drop:
                if lower == b"x-forwarded-for":
                    xff = value if xff is None else xff + b", " + value
                continue
            if tokens is not None and lower in tokens:
                continue
            if trusted and lower in _FORWARDED:
                seen = (seen or set()) | {lower}
            parts += (name, b": ", value, b"\r\n")
        if req.chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        elif req.content_length is not None:
            parts.append(b"Content-Length: %d\r\n" % req.content_length)
        if req.upgrade:
            parts += (b"Connection: Upgrade\r\nUpgrade: ", req.upgrade_value, b"\r\n")
        if not trusted:
            parts.append(self._forwarded_tail)
            if req.host:
                parts += (b"X-Forwarded-Host: ", req.host, b"\r\n")
        else:
            ip = self._client_ip.encode("ascii")
            parts += (b"X-Forwarded-For: ", (xff + b", " + ip) if xff else ip, b"\r\n")
            seen = seen or ()
            for header, line in (
                (b"x-forwarded-proto", b"X-Forwarded-Proto: " + self._scheme.encode("ascii")),
                (b"x-real-ip", b"X-Real-Ip: " + ip),
            ):
                if header not in seen:
                    parts += (line, b"\r\n")
            if b"x-forwarded-host" not in seen and req.host:
                parts += (b"X-Forwarded-Host: ", req.host, b"\r\n")
            if b"x-forwarded-port" not in seen:
                parts += (b"X-Forwarded-Port: ", self._port_bytes, b"\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    # -- answers ---------------------------------------------------------

    def _error(self, req: _Request, status: int, cause: str):
        route = req.route
        self._log.warn(
            "Router {router}: {status} for {method} {host}{path}: {cause}",
            router=route.router if route else "-", status=status,
            method=req.method.decode("latin-1"), host=req.host.decode("latin-1"),
            path=req.target.decode("latin-1"), cause=req.error or cause,
        )
        if not req.error:
            req.error = cause
        self._send_reply(req, Reply(
            status, _REASONS[status], [(b"Content-Type", b"text/plain; charset=utf-8")],
            f"{status} {_REASONS[status].decode()}: {cause}\n".encode(),
        ))

    def _send_reply(self, req: _Request, reply: Reply, close: bool = False):
        """Answer ``req`` from edge itself."""
        req.replied = True
        req.status = reply.status
        close = close or self._closing or not req.keep_alive or not req.body_done or req.upgrade
        parts = [_status_line(reply.status, reply.reason)]
        for name, value in reply.headers:
            parts += (name, b": ", value, b"\r\n")
        if req.set_cookie is not None and reply.status < 500:
            parts += (b"Set-Cookie: ", req.set_cookie, b"\r\n")
        parts.append(b"Content-Length: %d\r\n" % len(reply.body))
        if close:
            parts.append(b"Connection: close\r\n")
        parts.append(b"\r\n")
        if req.method != b"HEAD":
            parts.append(reply.body)
        data = b"".join(parts)
        req.sent_bytes = len(reply.body)
        self._out.append(data)
        self._finished(req, close)

    def _finished(self, req: _Request, close: bool):
        """``req`` is fully answered: log it, then go on with the next one or close."""
        self._proxy.record(self, req)
        if self._queue and self._queue[0] is req:
            self._queue.pop(0)
        if self._backend is not None and self._backend.req is None:
            self._backend = None
        if close or self._closing:
            self._close()
            return
        self._phase = _IDLE
        self._since = self._reactor.seconds()
        if len(self._queue) <= 1:
            self._resume("pipeline")
        if self._queue:
            following = self._queue[0]
            self._phase = _HEAD
            self._head_bytes = 0
            if following.head_done:
                try:
                    self._start(following)
                except _Reject as r:
                    self._reject(r.status, r.why)

    # -- upgrade ---------------------------------------------------------

    def _upgrade_requested(self, rest: bytes):
        """The parser stopped after an Upgrade request; later bytes belong to the tunnel."""
        self._tunnel_buffer = [rest] if rest else []
        self._pause("upgrade")

    def start_tunnel(self, backend: "BackendProtocol"):
        self._phase = _TUNNEL
        buffered, self._tunnel_buffer = self._tunnel_buffer or [], None
        if buffered:
            backend.transport.write(b"".join(buffered))
        self._resume("upgrade")

    # -- timeouts ------------------------------------------------------

    def check_timeouts(self, now: float):
        phase = self._phase
        limits = self._limits
        idle = now - self._since
        if phase == _IDLE:
            if idle > limits.client_idle_timeout:
                self._close()
        elif phase == _HEAD:
            if idle > limits.request_header_timeout:
                if self._queue:
                    self._reject(408, "request head not received in time")
                    self._flush()
                else:
                    self._close()
        elif phase == _BACKEND:
            if self._backend_paused:
                return
            if idle > limits.backend_response_timeout:
                backend = self._backend
                req = backend.req if backend is not None else None
                if backend is not None:
                    self._backend = None
                    backend.abandon()
                if req is not None and not req.replied:
                    if backend.head_sent:
                        req.error = "backend stopped sending"
                        self._proxy.record(self, req)
                        self._close(abort=True)
                    else:
                        req.conn = None
                        self._error(req, 504, f"{req.target_url} did not answer in time")
                        self._closing = True
                        self._close()

    def shutdown(self):
        """Finish the request in flight (if any) and close."""
        self._closing = True
        if self._phase in (_IDLE, _HEAD) and not self._queue:
            self._close()


class _Stop(Exception):
    pass


class _BadResponse(Exception):
    """A backend response edge will not relay (answered with 502)."""


class _Detached:
    """Placeholder when an HTTP/2 handler took the transport over."""

    def dataReceived(self, data):
        pass


class BackendProtocol(Protocol):
    """One connection to a backend target, reused across requests."""

    _log = Logger()

    def __init__(self, key, pool):
        self.key = key
        self._pool = pool
        self.server: Optional[ServerProtocol] = None
        self.req: Optional[_Request] = None
        self.connected = False
        self.idle_since = 0.0
        self.head_sent = False
        self._parser = None
        self._tunnel = False

    def connectionMade(self):
        self.connected = True
        self.transport.registerProducer(_PeerReads(self), True)
        self.factory.connected(self)

    def _peer_full(self, full: bool):
        server = self.server
        if server is not None and not server._closed:
            if full:
                server._pause("backend")
            else:
                server._resume("backend")

    def attach(self, server: ServerProtocol, req: _Request, reused: bool):
        self.server = server
        self.req = req
        self.reused = reused
        self.head_sent = False
        self.got_bytes = False
        self._done = False
        self._extra = False
        self._body_mode = _NONE
        self._close_client = False
        self._status = 0
        if self._parser is None:
            # A fresh parser only when the last exchange left it mid-message
            # (a HEAD answer with a length); llhttp parses one response after another.
            self._parser = httptools.HttpResponseParser(self)

    def _detach(self):
        server = self.server
        self.server = None
        self.req = None
        if server is not None:
            if server._paused:
                server._resume("backend")
            if server._backend is self:
                server._backend = None
            if server._backend_paused and self.connected:
                # Paused for that client's sake; the pool needs it reading (to see a close).
                self.transport.resumeProducing()

    def close_tunnel(self):
        self.server = None
        try:
            self.transport.unregisterProducer()
        except Exception:
            pass
        self.transport.loseConnection()

    def abandon(self):
        """The client went away or timed out: this connection's state is unknown."""
        self.server = None
        self.req = None
        if self.transport is not None:
            try:
                self.transport.unregisterProducer()
            except Exception:
                pass
            self.transport.abortConnection()

    # -- input ---------------------------------------------------------

    def dataReceived(self, data: bytes):
        server = self.server
        if server is None:
            # Unsolicited bytes on an idle connection: it cannot be trusted.
            self.abandon()
            return
        if self._tunnel:
            _write(server.transport, data)
            return
        self.got_bytes = True
        server._since = server._reactor.seconds()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            offset = e.args[0] if e.args else len(data)
            if self._status == 101 and self.req is not None and self.req.upgrade:
                self._start_tunnel(data[offset:])
                return
            self._extra = True
        except httptools.HttpParserError as e:
            cause = e.__cause__ or e.__context__
            why = str(cause) if isinstance(cause, _BadResponse) else f"malformed response: {e}"
            self._fail(f"{why} (from {self.req.target_url if self.req else '?'})")
            return
        if self._done:
            self._complete()
        else:
            server._flush()

    def _fail(self, cause: str):
        server, req = self.server, self.req
        self.abandon()
        if server is None or req is None:
            return
        server._backend = None
        req.conn = None
        self._give_up(server, req, cause)

    # -- httptools callbacks ---------------------------------------------

    def on_message_begin(self):
        if self.head_sent:
            self._extra = True
        self._informational = False
        self._reason = b""
        self._headers = []
        self._kept = []
        self._cl = None
        self._te = False
        self._conn_close = False

    def on_status(self, reason: bytes):
        self._reason += reason

    def on_header(self, name: bytes, value: bytes):
        if self.head_sent:
            return  # trailers: dropped
        self._headers.append((name, value))
        if len(name) in _RESP_LENGTHS:
            lower = name.lower()
            if lower in _RESP_DROP:
                if lower == b"content-length":
                    self._cl = value
                elif lower == b"transfer-encoding":
                    self._te = True
                elif lower == b"connection":
                    value = value.strip().lower()
                    if value != b"keep-alive" and value != b"close":
                        self._conn_close = True  # its tokens are filtered when the head is built
                return
        self._kept += (name, b": ", value, b"\r\n")

    def on_headers_complete(self):
        if self._done or self.head_sent:
            self._extra = True
            return
        parser = self._parser
        status = parser.get_status_code()
        if status < 200 and status != 101:
            self._informational = True
            self._reason = b""
            return
        server, req = self.server, self.req
        if status == 101 and not req.upgrade:
            # Only an Upgrade request may be switched to a tunnel.
            raise _BadResponse("101 Switching Protocols to a request that asked for no upgrade")
        self._status = status
        self._keep_alive = parser.should_keep_alive()
        req.status = status
        head_method = req.method == b"HEAD"
        no_body = head_method or status == 204 or status == 304 or status == 101
        client_11 = req.version == "1.1"
        close = server._closing or not req.keep_alive or not req.body_done or req.upgrade
        parts = [_status_line(status, self._reason or b"-")]
        chain = req.route.middlewares
        if self._conn_close or status == 101 or not chain.empty:
            # The general path: Connection tokens, 101 headers, response edits.
            drop = _RESP_DROP
            if self._conn_close:
                for name, value in self._headers:
                    if name.lower() == b"connection":
                        drop = drop | {t.strip().lower() for t in value.split(b",")}
            if status == 101:
                drop = drop - {b"upgrade"}
            headers = self._headers
            if not chain.empty:
                headers = chain.response_headers(headers, req.scheme)
            for name, value in headers:
                if name.lower() not in drop:
                    parts += (name, b": ", value, b"\r\n")
        else:
            parts += self._kept
        if no_body:
            self._body_mode = _NONE
            if self._cl is not None and status != 204 and status != 101:
                parts += (b"Content-Length: ", self._cl, b"\r\n")
        elif self._cl is not None and not self._te:
            self._body_mode = _RAW
            parts += (b"Content-Length: ", self._cl, b"\r\n")
        elif client_11:
            self._body_mode = _CHUNK
            parts.append(b"Transfer-Encoding: chunked\r\n")
        else:
            self._body_mode = _RAW
            close = True
        if req.set_cookie is not None:
            parts += (b"Set-Cookie: ", req.set_cookie, b"\r\n")
        if status == 101:
            parts.append(b"Connection: Upgrade\r\n")
        elif close:
            parts.append(b"Connection: close\r\n")
        elif not client_11:
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        self._close_client = close
        server._out.append(b"".join(parts))
        self.head_sent = True
        req.replied = True
        if no_body and status != 101:
            self._done = True
            if head_method:
                self._parser = None

    def on_body(self, data: bytes):
        if self._done:
            return
        req = self.req
        req.sent_bytes += len(data)
        if self._body_mode == _CHUNK:
            self.server._out.append(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self.server._out.append(data)

    def on_message_complete(self):
        if self._informational:
            self._informational = False
            return
        if self.head_sent:
            self._done = True

    # -- end of an exchange ----------------------------------------------

    def _complete(self, closed: bool = False):
        server, req = self.server, self.req
        if self._body_mode == _CHUNK:
            server._out.append(b"0\r\n\r\n")
        reusable = (
            not closed
            and not self._extra
            and req.body_done
            and not req.upgrade  # only a 101 (a tunnel) may follow an Upgrade request
            and self._keep_alive
            and not (self._body_mode == _RAW and self._cl is None)
        )
        self._detach()
        req.conn = None
        if reusable:
            self._pool.put(self)
        elif not closed:
            try:
                self.transport.unregisterProducer()
            except Exception:
                pass
            self.transport.loseConnection()
        server._finished(req, self._close_client)
        server._flush()

    def _start_tunnel(self, rest: bytes):
        server, req = self.server, self.req
        self._tunnel = True
        server._flush()
        if rest:
            server.transport.write(rest)
        server.start_tunnel(self)
        server._proxy.record(server, req)

    def connectionLost(self, reason=None):
        self.connected = False
        self._pool.forget(self)
        server, req = self.server, self.req
        if server is None:
            return
        if self._tunnel:
            self.server = None
            server._close()
            return
        if self.head_sent and self._cl is None and not self._te and not self._done:
            # A body delimited by the connection's end: this is its end.
            self._done = True
            self._complete(closed=True)
            return
        self.server = None
        self.req = None
        server._backend = None
        req.conn = None
        if (
            not self.got_bytes
            and self.reused
            and not req.retried
            and req.method in _IDEMPOTENT
            and (req.content_length in (None, 0) and not req.chunked)
        ):
            # A pooled connection the backend had closed: try again on a fresh one.
            req.retried = True
            req.tried.clear()
            server._dispatch(req)
            server._flush()
            return
        cause = reason.getErrorMessage() if reason is not None else "connection lost"
        self._give_up(server, req, f"{req.target_url} closed the connection: {cause}")

    def _give_up(self, server, req, cause):
        """The exchange failed: 502 if nothing was sent yet, else cut the client off."""
        if self.head_sent:
            req.error = cause
            server._log.warn("Router {router}: {cause}", router=req.route.router, cause=cause)
            server._proxy.record(server, req)
            server._close(abort=True)
        else:
            server._error(req, 502, cause)
            server._closing = server._closing or not req.body_done
            if server._closing:
                server._close()
            else:
                server._flush()


class ProxyFactory(Factory):
    """Client connections of one entry point; ``table`` is swapped per snapshot."""

    protocol = ServerProtocol
    noisy = False

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
        # Set by the TLS layer: h2_handler(transport, first_bytes) takes over an h2 connection.
        self.h2_handler = None
        # ACME HTTP-01 answers on plain-HTTP entry points, before redirects and
        # routing: an object with respond(host, target) -> Reply | None.
        self.challenges = None
        self._drained = []

    def connection_closed(self, protocol):
        if self.stopping and not self.connections:
            waiters, self._drained = self._drained, []
            for d in waiters:
                d.callback(None)

    def drain(self):
        """A Deferred that fires when every connection is closed."""
        from twisted.internet.defer import Deferred, succeed

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
        self._trusted = tuple(ipaddress.ip_network(c, strict=False) for c in trusted)
        self._trusted_cache: dict[str, bool] = {}
        self.access_log = access_log
        self.stats = stats
        # Escapes let through in request paths (edge.http.target).
        self.allowed_encoded = encoded_allowance(getattr(limits, "allowed_encoded_characters", ()))
        self.not_found = Reply(404, b"Not Found", [(b"Content-Type", b"text/plain; charset=utf-8")],
                               b"404 page not found\n")

    def is_trusted(self, ip: str) -> bool:
        if not self._trusted:
            return False
        known = self._trusted_cache.get(ip)
        if known is None:
            try:
                address = ipaddress.ip_address(ip)
                if address.version == 6 and address.ipv4_mapped is not None:
                    address = address.ipv4_mapped
                known = any(address.version == n.version and address in n for n in self._trusted)
            except ValueError:
                known = False
            if len(self._trusted_cache) > 10000:
                self._trusted_cache.clear()
            self._trusted_cache[ip] = known
        return known

    def record(self, server: ServerProtocol, req: _Request):
        now = self.reactor.seconds()
        stats = self.stats
        if stats is not None:
            stats.request(req.route.router if req.route else "", server.factory.name,
                          req.status, now - req.started)
        if self.access_log is not None:
            self.access_log.log(server, req, now)

    def connect_failed(self, service: str):
        if self.stats is not None:
            self.stats.connect_failed(service)

    def open_connections(self, entrypoint: str, delta: int):
        if self.stats is not None:
            self.stats.connections(entrypoint, delta)
