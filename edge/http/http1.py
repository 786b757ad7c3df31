"""
HTTP/1.1 from clients: the client-side framing of the request pipeline.

:class:`ServerProtocol` parses requests with httptools (llhttp, strict about
framing), checks the framing limits, and hands each request head to the
exchange (:mod:`edge.http.exchange`) the HTTP/2 framing uses too.  It is the
exchange's side for its requests: it writes edge's own answers, the backend
response heads and bodies (re-framed: a validated ``Content-Length`` or
chunked), and streams request bodies to the attached backend connection.
When ALPN picked ``h2`` it hands the transport to
:class:`~edge.http.http2.HTTP2Connection` and only forwards events to it.

Each side is registered as a streaming producer on the other's transport,
so a slow reader pauses the fast writer; nothing is buffered beyond one read.

Connection states (``_state``), for timeouts and input handling:

``IDLE``
    Between requests on a keep-alive connection (``client_idle_timeout``).
``HEAD``
    A request head is being read (``request_header_timeout``).
``ROUTING``
    In the exchange: middlewares, choosing a target, connecting.
``BACKEND``
    Attached to a backend connection (``backend_response_timeout`` while
    the backend, not the client, is the one holding things up).
``TUNNEL``
    A 101 turned the connection into a tunnel: bytes are relayed raw.
``HTTP2``
    Handed over to the HTTP/2 framing.
``CLOSED``
    Closing or closed; no more input is read.
"""

from __future__ import annotations

from typing import Optional

import httptools
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from edge.http import exchange, speedups
from edge.http.backend import PeerReads
from edge.http.backend_h2 import wants_trailers
from edge.http.exchange import REASONS, TEXT, Request
from edge.http.forwarding import Peer, SPECIAL_LENGTHS
from edge.http.middlewares import Reply
from edge.http.target import BadTarget, split_target

__all__ = ["ServerProtocol", "MAX_REQUEST_LINE"]

# The request line is not configurable: 8 KiB is what nginx and Traefik allow.
MAX_REQUEST_LINE = 8192

IDLE, HEAD, ROUTING, BACKEND, TUNNEL, HTTP2, CLOSED = (
    "IDLE", "HEAD", "ROUTING", "BACKEND", "TUNNEL", "HTTP2", "CLOSED")

# How a response body travels to the client.
_NONE, _RAW, _CHUNK = range(3)


class _Reject(Exception):
    """Stop parsing this client's input and answer ``status``."""

    def __init__(self, status: int, why: str):
        super().__init__(why)
        self.status = status
        self.why = why


class _Stop(Exception):
    pass


def _status_line(status: int, reason: bytes, _cache={}) -> bytes:
    line = _cache.get((status, reason))
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason)
        if len(_cache) < 1000:
            _cache[(status, reason)] = line
    return line


def _last_chunk(req) -> bytes:
    """A chunked body's end: with an h2c backend's trailers if the client sent ``TE: trailers``."""
    if not wants_trailers(req):
        return b"0\r\n\r\n"
    return b"0\r\n" + b"".join(b"%s: %s\r\n" % pair for pair in req.trailers) + b"\r\n"


@implementer(IHalfCloseableProtocol)
class ServerProtocol(Protocol):
    """One client connection on an entry point."""

    _log = Logger()

    def __init__(self):
        self._parser = httptools.HttpRequestParser(self)
        self._queue: list[Request] = []
        self._parsing: Optional[Request] = None
        self._paused: set = set()
        self._state = HEAD
        self._since = 0.0
        self._head_bytes = 0
        self._out: list = []
        self._closing = False
        self._closed = False
        self._backend = None
        self._backend_paused = False
        self._full_since = 0.0  # when the client's write buffer filled (send_timeout)
        self._first = True
        self._h2 = None
        self._tunnel_buffer: list | None = None
        # No more requests are read on this connection (after Connection:
        # close, or after input edge refused behind a request still in flight).
        self._input_done = False

    # -- connection ----------------------------------------------------

    def connectionMade(self):
        factory = self.factory
        self.proxy = proxy = factory.proxy
        self._reactor = proxy.reactor
        self._limits = limits = proxy.limits
        # Bytes read while a head is incomplete; bounds what the parser buffers.
        self._max_head_bytes = limits.max_header_bytes + MAX_REQUEST_LINE + 65536
        self._scheme = factory.scheme
        self._identify()
        self._since = self._reactor.seconds()
        if len(factory.connections) >= limits.max_client_connections:
            # The entry point is full: this connection goes at once.
            self._closed = True
            self._state = CLOSED
            factory.refused(self.transport.getPeer())
            self.transport.abortConnection()
            return
        self.transport.registerProducer(PeerReads(self), True)
        factory.connections.add(self)
        proxy.open_connections(factory.name, +1)
        if factory.stopping:
            self._closing = True

    def _identify(self):
        """Who the client is; called again once a PROXY protocol header was read."""
        peer = self.transport.getPeer()
        ip = getattr(peer, "host", "") or ""
        host = self.transport.getHost()
        port = str(getattr(host, "port", "") or self.factory.port)
        self.peer = Peer(ip, self.proxy.is_trusted(ip), self._scheme, port)

    def connectionLost(self, reason=None):
        if self._closed:
            return
        self._closed = True
        state = self._state
        self._state = CLOSED
        factory = self.factory
        factory.connections.discard(self)
        self.proxy.open_connections(factory.name, -1)
        if self._h2 is not None:
            self._h2.connectionLost(reason)
            factory.connection_closed(self)
            return
        backend = self._backend
        if backend is not None:
            self._backend = None
            if state is TUNNEL:
                backend.close_tunnel()
            else:
                backend.abandon()
        for req in self._queue:
            if req.head_done and not req.replied and req.route is not None:
                req.status = 499
                req.error = "client closed the connection"
                self.proxy.record(self, req)
        self._queue = []
        factory.connection_closed(self)

    def readConnectionLost(self):
        """
        The client half-closed after its request: answer it, then close
        (HAProxy's default), rather than abandoning the exchange (a 499).
        """
        self._input_done = True
        if (self._state is HTTP2 or self._state is TUNNEL or not self._queue
                or not self._queue[0].head_done):
            self._close()  # nothing complete to answer
        else:
            self._closing = True

    def writeConnectionLost(self):
        pass

    def close(self, abort: bool = False):
        """Finish writing what is queued, then close (``abort``: at once)."""
        if self._h2 is not None:
            self._h2.close(abort)
            return
        self._close(abort)

    def _close(self, abort: bool = False):
        self._flush()
        if self._closed:
            return
        self._state = CLOSED
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
            speedups.write(self.transport, data)

    flush = _flush

    # -- flow control ----------------------------------------------------

    def pause(self, reason: str):
        if not self._paused:
            self.transport.pauseProducing()
        self._paused.add(reason)

    def resume(self, reason: str):
        if reason in self._paused:
            self._paused.discard(reason)
            if not self._paused and not self._closed:
                self.transport.resumeProducing()

    def peer_full(self, full: bool):
        """The client's write buffer filled or drained: pause or resume the backend."""
        self._backend_paused = full
        if full:
            self._full_since = self._reactor.seconds()
        backend = self._backend
        if backend is not None and backend.transport is not None:
            if full:
                backend.pause_reading()
            else:
                backend.resume_reading()

    # -- input ---------------------------------------------------------

    def dataReceived(self, data: bytes):
        state = self._state
        if state is TUNNEL:
            backend = self._backend
            if backend is not None:
                self._since = self._reactor.seconds()
                backend.send(data)
            return
        if state is HTTP2:
            self._h2.dataReceived(data)
            return
        if self._first:
            self._first = False
            if self.factory.proxy_protocol:
                self._identify()
            if getattr(self.transport, "negotiatedProtocol", None) == b"h2":
                self._start_h2(data)
                return
        if self._tunnel_buffer is not None:
            # Upgrade asked for, no answer yet: hold the client's bytes (bounded).
            self._tunnel_buffer.append(data)
            self.pause("upgrade")
            return
        if self._closed or state is CLOSED or self._input_done:
            return  # RFC 9112 9.6: nothing after a Connection: close request is read
        if state is IDLE:
            # A new head starts: its deadline runs from this first byte, and
            # later bytes of the same head do not move it (slowloris).
            self._state = state = HEAD
            self._since = self._reactor.seconds()
        elif state is not HEAD:
            self._since = self._reactor.seconds()
        if state is HEAD:
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

    def _start_h2(self, data: bytes):
        """ALPN chose h2: the HTTP/2 framing takes the transport; we only relay events."""
        from edge.http.http2 import HTTP2Connection

        self._state = HTTP2
        self._h2 = HTTP2Connection(self.factory, self.proxy, self.peer, self.transport, self._reactor)
        self._h2.start(data)

    def _reject(self, status: int, why: str):
        """Answer a request edge cannot accept, then close (the stream is unusable)."""
        self._closing = True
        req = self._parsing if self._parsing is not None else Request(self._scheme, self.peer.client_ip)
        if req in self._queue and req is not self._queue[0]:
            # An earlier request is still being answered (and keeps its
            # timeouts); read nothing more and close after it.
            self._log.info("Client {client}: {why}; closing", client=self.peer.client_ip, why=why)
            self._input_done = True
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
            client=self.peer.client_ip, status=status, why=why,
        )
        req.error = why
        self._send_reply(req, Reply(status, REASONS.get(status, b"Error"), [TEXT],
                                    f"{status} {why}\n".encode("utf-8", "replace")), close=True)

    # -- httptools callbacks ---------------------------------------------

    def on_message_begin(self):
        if self._state is CLOSED:
            raise _Stop()
        req = Request(self._scheme, self.peer.client_ip)
        req.x_headers = False
        self._parsing = req
        self._queue.append(req)
        if len(self._queue) == 1:
            self._state = HEAD
            self._head_bytes = 0
        else:
            # Pipelined: hold further input until the earlier answers are out.
            self.pause("pipeline")

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
        if name[0] | 32 == 120:  # X-... or x_...: exchange.route sweeps an untrusted client's X-Forwarded-*
            req.x_headers = True
        if len(name) not in SPECIAL_LENGTHS:
            return
        lower = name.lower()
        if lower == b"host":
            if req.host:
                raise _Reject(400, "more than one Host header")
            req.host = value
        elif lower == b"transfer-encoding":
            # Several fields are one list (RFC 9110 5.3): judged together.
            te = req.transfer_encoding
            req.transfer_encoding = value if te is None else te + b", " + value
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
            conn.send_body(req, data)
        elif req.replied:
            return  # answered already; the connection closes after
        else:
            req.pending.append(data)
            req.pending_bytes += len(data)
            if req.pending_bytes > 65536:
                self.pause("buffer")

    def on_message_complete(self):
        req = self._parsing
        req.body_done = True
        conn = req.conn
        if conn is not None and conn.req is req and (req.chunked or conn.ends_body):
            conn.end_body(req)
        if not req.keep_alive:
            # The last request on this connection: what follows is ignored,
            # not parsed into a 400 for a request already being answered.
            self._input_done = True
            raise _Stop()

    # -- into the exchange -------------------------------------------------

    def _start(self, req: Request):
        """A request head is complete and it is this connection's turn."""
        self._state = ROUTING
        req.started = self._since = self._reactor.seconds()
        if req.method == b"CONNECT":
            raise _Reject(405, "CONNECT is not supported")
        try:
            authority, req.target = split_target(req.method, req.target, self.proxy.allowed_encoded)
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
        exchange.route(self, req)

    # -- ExchangeSide: called by the exchange ---------------------------------

    def gone(self, req: Request) -> bool:
        return self._closed or req.replied or self._queue[:1] != [req]

    def reply(self, req: Request, reply: Reply) -> None:
        self._send_reply(req, reply)

    def attach(self, req: Request, conn, reused: bool):
        req.conn = conn
        self._backend = conn
        self._state = BACKEND
        self._since = self._reactor.seconds()
        conn.attach(req.response_filter or self, req, reused)
        buffered = bool(req.pending)
        conn.send_request(req, self.peer)
        if buffered:
            self.resume("buffer")
        if self._backend_paused:
            conn.pause_reading()
        if req.expect and not req.body_done:
            self._out.append(b"HTTP/1.1 100 Continue\r\n\r\n")

    # -- ExchangeSide: called by the backend connection -------------------------

    def touch(self) -> None:
        self._since = self._reactor.seconds()

    def backend_full(self, full: bool) -> None:
        if self._closed:
            return
        if full:
            self.pause("backend")
        else:
            self.resume("backend")

    def backend_detached(self, conn) -> None:
        if self._paused:
            self.resume("backend")
        if self._backend is conn:
            self._backend = None

    def response_head(self, req: Request, head) -> bool:
        status = head.status
        head_method = req.method == b"HEAD"
        no_body = head_method or status == 204 or status == 304 or status == 101
        client_11 = req.version == "1.1"
        close = self._closing or not req.keep_alive or not req.body_done or req.upgrade
        parts = [_status_line(status, head.reason)]
        chain = req.route.middlewares
        cl = head.content_length
        if head.kept is None or status == 101 or not chain.empty:
            # The general path: Connection tokens, 101 headers, response edits.
            headers = head.relayable(keep=frozenset({b"upgrade"}) if status == 101 else frozenset())
            if not chain.empty:
                headers = chain.response_headers(headers, req.scheme, req)
            for name, value in headers:
                parts += (name, b": ", value, b"\r\n")
        else:
            parts += head.kept
        if no_body:
            req.body_mode = _NONE
            if cl is not None and status != 204 and status != 101:
                parts += (b"Content-Length: ", cl, b"\r\n")
        elif cl is not None and not head.chunked:
            req.body_mode = _RAW
            parts += (b"Content-Length: ", cl, b"\r\n")
        elif client_11:
            req.body_mode = _CHUNK
            parts.append(b"Transfer-Encoding: chunked\r\n")
        else:
            req.body_mode = _RAW
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
        req.close_client = close
        self._out.append(b"".join(parts))
        req.replied = True
        return no_body

    def response_body(self, req: Request, data: bytes) -> None:
        req.sent_bytes += len(data)
        if req.body_mode == _CHUNK:
            self._out.append(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self._out.append(data)

    def response_end(self, req: Request) -> None:
        if req.body_mode == _CHUNK:
            self._out.append(b"0\r\n\r\n" if req.trailers is None else _last_chunk(req))
        self._finished(req, req.close_client)
        self._flush()

    def backend_failed(self, req: Request, cause: str, head_sent: bool) -> None:
        """The exchange failed: 502 if nothing was sent yet, else cut the client off."""
        self._backend = None
        if head_sent:
            req.error = cause
            self._log.warn("Router {router}: {cause}", router=req.route.router, cause=cause)
            self.proxy.record(self, req)
            self._close(abort=True)
        else:
            exchange.error(self, req, 502, cause)
            self._closing = self._closing or not req.body_done
            if self._closing:
                self._close()
            else:
                self._flush()

    def retry(self, req: Request) -> None:
        exchange.dispatch(self, req)
        self._flush()

    # -- answers ---------------------------------------------------------

    def _send_reply(self, req: Request, reply: Reply, close: bool = False):
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
        req.sent_bytes = len(reply.body)
        self._out.append(b"".join(parts))
        self._finished(req, close)

    def _finished(self, req: Request, close: bool):
        """``req`` is fully answered: log it, then go on with the next one or close."""
        self.proxy.record(self, req)
        if self._queue and self._queue[0] is req:
            self._queue.pop(0)
        if self._backend is not None and self._backend.req is None:
            self._backend = None
        if close or self._closing:
            self._close()
            return
        self._state = IDLE
        self._since = self._reactor.seconds()
        if len(self._queue) <= 1:
            self.resume("pipeline")
        if self._queue:
            following = self._queue[0]
            self._state = HEAD
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
        self.pause("upgrade")

    def start_tunnel(self, backend, req: Request, rest: bytes):
        self._flush()
        if rest:
            self.transport.write(rest)
        self._state = TUNNEL
        buffered, self._tunnel_buffer = self._tunnel_buffer or [], None
        if buffered:
            backend.send(b"".join(buffered))
        self.resume("upgrade")
        self.proxy.record(self, req)

    def tunnel_data(self, data: bytes):
        self._since = self._reactor.seconds()
        speedups.write(self.transport, data)

    def tunnel_closed(self):
        self._close()

    # -- timeouts and shutdown ---------------------------------------------

    def check_timeouts(self, now: float):
        state = self._state
        if state is HTTP2:
            self._h2.check_timeouts(now)
            return
        limits = self._limits
        if self._backend_paused and now - self._full_since > limits.send_timeout:
            # The client stopped reading: its connection and the backend's go.
            self._log.info("Client {client} read nothing for {timeout}s; closing",
                           client=self.peer.client_ip, timeout=limits.send_timeout)
            req = self._queue[0] if self._queue else None
            backend, self._backend = self._backend, None
            if backend is not None:
                if state is TUNNEL:
                    backend.close_tunnel()
                else:
                    backend.abandon()
            if req is not None and req.head_done and state is not TUNNEL:
                req.error = "client did not read the response in time"
                self.proxy.record(self, req)
                self._queue = []
            self._close(abort=True)
            return
        idle = now - self._since
        if state is TUNNEL:
            if idle > limits.tunnel_idle_timeout:
                self._log.info("Tunnel for {client} idle for {timeout}s; closing",
                               client=self.peer.client_ip, timeout=limits.tunnel_idle_timeout)
                self._close()
        elif state is IDLE:
            if idle > limits.client_idle_timeout:
                self._close()
        elif state is HEAD:
            if idle > limits.request_header_timeout:
                if self._queue:
                    self._reject(408, "request head not received in time")
                    self._flush()
                else:
                    self._close()
        elif state is BACKEND:
            if self._backend_paused:
                return
            if idle > limits.backend_response_timeout:
                backend = self._backend
                req = backend.req if backend is not None else None
                head_sent = backend is not None and backend.head_sent
                if backend is not None:
                    self._backend = None
                    backend.abandon()
                if req is not None and (head_sent or not req.replied):
                    if head_sent:
                        req.error = "backend stopped sending"
                        self.proxy.record(self, req)
                        self._close(abort=True)
                    else:
                        req.conn = None
                        exchange.error(self, req, 504, f"{req.target_url} did not answer in time")
                        self._closing = True
                        self._close()

    def shutdown(self):
        """Finish the request in flight (if any) and close; HTTP/2 says GOAWAY."""
        self._closing = True
        if self._state is HTTP2:
            self._h2.shutdown()
        elif self._state in (IDLE, HEAD) and not self._queue:
            self._close()
