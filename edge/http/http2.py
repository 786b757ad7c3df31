"""
HTTP/2 from clients, on the ``h2`` package's sans-IO ``H2Connection``.

:class:`HTTP2Connection` runs on the TLS transport the HTTP/1.1 protocol
handed over when ALPN picked ``h2``.  It turns frames into requests, one
:class:`_Stream` per request, and each stream goes through the same
exchange as an HTTP/1.1 request (:mod:`edge.http.exchange`): the same
target normalisation, routing, middlewares, balancer, backend pool and
HTTP/1.1 backend connection (:class:`~edge.http.backend.BackendProtocol`),
access log and metrics.  Only the framing differs.

Flow control is tied to the backend connection both ways:

* request bodies: a DATA frame's bytes are acknowledged
  (``acknowledge_received_data``) only once they are written to a backend
  whose socket buffer is not full, so a slow backend holds the client's
  stream window shut, and bytes that arrive before a backend is attached
  stay within the window edge advertised (:data:`STREAM_WINDOW`);
* response bodies: what the stream's send window (or a full client socket
  buffer) does not take is held and the backend's reads are paused until a
  WINDOW_UPDATE (or a drained socket) lets it go on.

Connection states (``_state``):

``OPEN``
    Serving streams.
``DRAINING``
    A GOAWAY naming the last stream edge will serve went out (shutdown);
    streams up to it finish, newer ones are refused; the connection closes
    when none is left, or at the shutdown grace.
``CLOSED``
    The transport is gone or closing.

Stream states (``_Stream._state``):

``ROUTING``
    Head received; in the exchange (middlewares, connecting).
``FORWARDING``
    Attached to a backend connection; the request is being sent or answered.
``DONE``
    Answered completely (or reset); nothing more goes out.
"""

from __future__ import annotations

import re

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import GoAwayFrame
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from edge.http import exchange, speedups
from edge.http.exchange import REASONS, TEXT, Request
from edge.http.middlewares import Reply
from edge.http.target import BadTarget, split_target

__all__ = ["HTTP2Connection", "STREAM_WINDOW", "MAX_CONCURRENT_STREAMS"]

OPEN, DRAINING, CLOSED = "OPEN", "DRAINING", "CLOSED"
ROUTING, FORWARDING, DONE = "ROUTING", "FORWARDING", "DONE"

# Request body bytes a stream may have in flight before edge acknowledges
# them, and the connection's total: they bound what edge holds per stream
# and per connection while a backend is slow or not yet connected.
STREAM_WINDOW = 256 * 1024
CONNECTION_WINDOW = 1024 * 1024
MAX_CONCURRENT_STREAMS = 100
MAX_REQUEST_LINE = 8192
_BULK = 16384  # response bytes in one piece from which edge frames DATA itself (speedups.h2_data)
# Streams a client may reset before edge answered them, beyond those it let
# finish, before the connection is closed (rapid reset, CVE-2023-44487: each
# such stream costs a route and maybe a backend connect, the client nothing).
RESET_LIMIT = 200
# Frames that carry no request and no answer but cost edge work (SETTINGS, PING,
# PRIORITY, WINDOW_UPDATE, RST_STREAM, empty or padding-only DATA, unknown types;
# RFC 9113 10.5: CVE-2019-9512 ping, -9515 settings, -9518 empty frames floods)
# spend a connection's tokens: CONTROL_BUDGET to start with, refilled at
# CONTROL_PER_SECOND up to CONTROL_BUDGET (keep-alive PINGs), and CONTROL_PER_STREAM
# more per request and one per CONTROL_PER_BYTES of DATA either way (work done
# earns them); none left: GOAWAY ENHANCE_YOUR_CALM and the connection is closed.
CONTROL_BUDGET = 1000
CONTROL_PER_STREAM = 10
CONTROL_PER_BYTES = 2048
CONTROL_PER_SECOND = 1
_PREFACE_LENGTH = 24  # b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n": skipped by the frame meter
_CONTROL_NAMES = ("DATA", "", "PRIORITY", "RST_STREAM", "SETTINGS", "", "PING", "", "WINDOW_UPDATE",
                  "", "unknown")

# What could split or bend the HTTP/1.1 head built from the fields (RFC 9113 8.2.1,
# RFC 9110 5.5, 9.1) is a 400 on the stream.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_BAD_TARGET = re.compile(rb"[\x00-\x20\x7f]")
# A malformed request (RFC 9113 8.2.1-8.3) is a connection error (GOAWAY
# PROTOCOL_ERROR), as h2's own inbound validation made it; edge checks it here in
# the one pass over the fields instead (h2's is a chain of seven generators).
_FIELD_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+\Z")  # a token, lower case
_MALFORMED_NAME = re.compile(rb"[\x00-\x20A-Z:\x7f-\xff]")  # then malformed, not just a non-token
_SUSPECT_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]|\A[ \t]|[ \t]\Z")
_MALFORMED_VALUE = re.compile(rb"[\x00\r\n]|\A[ \t]|[ \t]\Z")
_CONNECTION_SPECIFIC = frozenset({b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding",
                                  b"upgrade"})


def _malformed_field(name: bytes, value: bytes) -> str | None:
    """Why a regular field (or trailer) makes its message malformed, or None."""
    if _FIELD_NAME.match(name) is None and (not name or _MALFORMED_NAME.search(name) is not None):
        return "invalid field name %r" % name[:64]
    if value and _MALFORMED_VALUE.search(value) is not None:
        return "invalid value in field %r" % name[:64]
    if name in _CONNECTION_SPECIFIC:
        return "connection-specific field %r" % name
    if name == b"te" and value.lower() != b"trailers":
        return "te other than trailers"
    return None

_NO_ERROR = h2.errors.ErrorCodes.NO_ERROR
_CANCEL = h2.errors.ErrorCodes.CANCEL
_INTERNAL = h2.errors.ErrorCodes.INTERNAL_ERROR
_REFUSED = h2.errors.ErrorCodes.REFUSED_STREAM

_RequestReceived = h2.events.RequestReceived
_DataReceived = h2.events.DataReceived
_StreamEnded = h2.events.StreamEnded
_StreamReset = h2.events.StreamReset
_WindowUpdated = h2.events.WindowUpdated
_ConnectionTerminated = h2.events.ConnectionTerminated
_TrailersReceived = h2.events.TrailersReceived



_METHODS: dict[bytes, bool] = {}


def _h1_method(method: bytes) -> bool:
    """
    Whether llhttp (HTTP/1.1's parser, :mod:`edge.http.http1`) takes this
    method: its list, case-sensitive (RFC 9110 9.1).  Both framings serve the
    same methods, so ``delete`` cannot pass a ``Method(`DELETE`)`` rule over
    HTTP/2 to a backend that upper-cases it.  Asked of llhttp once per name.
    """
    known = _METHODS.get(method)
    if known is None:
        import httptools

        parser = httptools.HttpRequestParser(None)
        target = b"h:1" if method == b"CONNECT" else b"/"
        try:
            parser.feed_data(method + b" " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n")
            known = True
        except httptools.HttpParserUpgrade:
            known = True  # CONNECT: the parser hands the rest over as a tunnel
        except httptools.HttpParserError:
            known = False
        if len(_METHODS) < 256:  # names seen: bounded, whatever clients send
            _METHODS[method] = known
    return known


def _http11_head_size(fields) -> tuple[int, int]:
    """
    Field count and bytes of a request head as :mod:`edge.http.http1` counts
    them, so that both framings refuse the same request with 431: regular
    fields, ``:authority`` as the Host field (without a ``host`` field), the
    cookie crumbs as the one field they are joined into (RFC 9113 8.2.3).
    ``:method``, ``:scheme`` and ``:path`` are the request line, not fields
    (``:path`` has its own limit, 414).
    """
    count = size = 0
    authority = None
    host = crumbs = False
    for name, value in fields:
        if name[:1] == b":":
            if name == b":authority":
                authority = value
            continue
        if name == b"cookie":
            if crumbs:
                size += len(value) + 2  # "; " and the crumb
                continue
            crumbs = True
        elif name == b"host":
            host = True
        count += 1
        size += len(name) + len(value) + 4
    if authority is not None and not host:
        count += 1
        size += len(authority) + 8
    return count, size


def _config():
    return h2.config.H2Configuration(
        client_side=False,
        header_encoding=None,
        # Checked by edge in its pass over the fields (HTTP2Connection._request,
        # _malformed_field), cookies joined there too.
        validate_inbound_headers=False,
        normalize_inbound_headers=False,
        # edge builds response headers itself from a parsed HTTP/1.1 head
        # (no CR/LF/NUL possible, hop-by-hop dropped, names lower-cased).
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )


class _Stream:
    """One request on an HTTP/2 connection: the exchange's side for it."""

    __slots__ = ("conn", "stream_id", "req", "factory", "proxy", "peer", "backend", "_state",
                 "_out", "_out_end", "_unacked", "_backend_full", "_since", "_ended_in",
                 "_blocked_since")

    def __init__(self, conn: "HTTP2Connection", stream_id: int, req: Request):
        self.conn = conn
        self.stream_id = stream_id
        self.req = req
        self.factory = conn.factory
        self.proxy = conn.proxy
        self.peer = conn.peer
        self.backend = None
        self._state = ROUTING
        self._out: list = []  # response body bytes the send window did not take yet
        self._out_end = False
        self._unacked = 0  # request body bytes received, not yet acknowledged
        self._backend_full = False
        self._since = conn.reactor.seconds()
        self._ended_in = False  # the client's END_STREAM arrived
        self._blocked_since = None  # since when held bytes wait for the client (send_timeout)

    # -- ExchangeSide: called by the exchange -------------------------------

    def gone(self, req) -> bool:
        return self._state is DONE or req.replied or self.conn._state is CLOSED

    def pause(self, reason: str) -> None:
        # Unacknowledged DATA already bounds a stream's input; other streams go on.
        pass

    def resume(self, reason: str) -> None:
        pass

    def flush(self) -> None:
        if self._out:
            self.send_pending()
        self.conn.flush()

    def reply(self, req: Request, reply: Reply) -> None:
        """Answer ``req`` from edge itself."""
        if self._state is DONE:
            return
        req.replied = True
        req.status = reply.status
        headers = [(b":status", b"%d" % reply.status)]
        for name, value in reply.headers:
            headers.append((name.lower(), value))
        if req.set_cookie is not None and reply.status < 500:
            headers.append((b"set-cookie", req.set_cookie))
        headers.append((b"content-length", b"%d" % len(reply.body)))
        body = reply.body if req.method != b"HEAD" else b""
        req.sent_bytes = len(reply.body)
        h2c = self.conn.h2
        try:
            self._send_head(reply.status, headers, not body)
        except h2.exceptions.ProtocolError:  # the stream or the connection is closed
            self._abandon_backend()
            self._finish(reset=None)
            return
        if body:
            self._out.append(body)
            self._out_end = True
            self.send_pending()
        else:
            self._finish(reset=None)
        if self.backend is not None:
            backend, self.backend = self.backend, None
            req.conn = None
            backend.abandon()

    def attach(self, req: Request, conn, reused: bool) -> None:
        """A backend connection is ours: send the head and what body arrived so far."""
        self._state = FORWARDING
        self._since = self.conn.reactor.seconds()
        req.conn = conn
        self.backend = conn
        self._backend_full = conn.write_full
        conn.attach(req.response_filter or self, req, reused)
        conn.send_request(req, self.peer)
        if self.conn._write_paused or self._out:
            conn.pause_reading()
        self._ack()

    # -- ExchangeSide: called by the backend connection -----------------------

    def touch(self) -> None:
        self._since = self.conn.reactor.seconds()

    def backend_full(self, full: bool) -> None:
        self._backend_full = full
        if not full:
            self._ack()
            self.conn.flush()

    def backend_detached(self, conn) -> None:
        if self.backend is conn:
            self.backend = None

    def response_head(self, req: Request, head) -> bool:
        status = head.status
        no_body = req.method == b"HEAD" or status == 204 or status == 304 or req.response_in_head
        pairs = head.relayable()
        chain = req.route.middlewares
        if not chain.empty:
            pairs = chain.response_headers(pairs, req.scheme, req)
        headers = [(b":status", b"%d" % status)]
        for name, value in pairs:
            headers.append((name.lower(), value))
        if head.content_length is not None and not head.chunked and status != 204:
            headers.append((b"content-length", head.content_length))
        if req.set_cookie is not None:
            headers.append((b"set-cookie", req.set_cookie))
        req.replied = True
        try:
            self._send_head(status, headers, no_body)
        except h2.exceptions.ProtocolError:  # the stream or the connection is closed
            self._abandon_backend()
            self._finish(reset=None)
        return no_body

    def _send_head(self, status: int, headers: list, end_stream: bool) -> None:
        h2c = self.conn.h2
        if status >= 200 and speedups.enabled("h2_headers") and speedups.h2_queue_headers(
                h2c, self.stream_id, headers, end_stream):
            return
        h2c.send_headers(self.stream_id, headers, end_stream=end_stream)

    def response_body(self, req: Request, data: bytes) -> None:
        if self._state is DONE:
            return
        req.sent_bytes += len(data)
        # Sent at the backend's flush() or with the end, so a body that ends
        # in this read goes out with END_STREAM on its last DATA frame.
        self._out.append(data)

    def response_end(self, req: Request) -> None:
        if self._state is DONE:
            return
        if req.method == b"HEAD" or req.status in (204, 304) or req.response_in_head:
            self._finish(reset=None)  # the head went out with END_STREAM
            self.conn.flush()  # which h2 still holds: nothing else would send it this turn
            return
        self._out_end = True
        self.send_pending()
        self.conn.flush()

    def backend_failed(self, req: Request, cause: str, head_sent: bool) -> None:
        self.backend = None
        if self._state is DONE:
            return
        if head_sent:
            req.error = cause
            self.conn._log.warn("Router {router}: {cause}", router=req.route.router, cause=cause)
            self._finish(reset=_INTERNAL)
        else:
            exchange.error(self, req, 502, cause)
        self.conn.flush()

    def retry(self, req: Request) -> None:
        exchange.dispatch(self, req)
        self.conn.flush()

    def tunnel_data(self, data: bytes) -> None:  # no Upgrade over HTTP/2
        pass

    def start_tunnel(self, backend, req, rest: bytes) -> None:
        self.backend_failed(req, "101 Switching Protocols over HTTP/2", True)

    def tunnel_closed(self) -> None:
        pass

    # -- request body ----------------------------------------------------------

    def data(self, data: bytes, flow_length: int, ended: bool) -> None:
        req = self.req
        if self._state is DONE or req.replied and req.conn is None:
            # Answered already: let the bytes go (the window must not stall others).
            self.conn.ack(flow_length, self.stream_id)
            return
        req.body_bytes += len(data)
        limit = self.conn.limits.max_body_bytes
        if limit and req.body_bytes > limit:
            self.conn.ack(flow_length, self.stream_id)
            self.too_large()
            return
        if req.content_length is not None and req.body_bytes > req.content_length:
            self.conn.ack(flow_length, self.stream_id)
            self._protocol_reset("request body longer than its content-length")
            return
        self._unacked += flow_length
        conn = req.conn
        if conn is not None and conn.req is req:
            self._since = self.conn.reactor.seconds()  # a body still coming is no backend timeout
            conn.send_body(req, data)
            self._ack()
        else:
            req.pending.append(data)
            req.pending_bytes += len(data)
        if ended:
            self.end_of_request()

    def end_of_request(self) -> None:
        self._ended_in = True
        req = self.req
        if req.body_done:
            return
        if req.content_length is not None and req.body_bytes != req.content_length:
            self._protocol_reset("request body shorter than its content-length")
            return
        req.body_done = True
        conn = req.conn
        if conn is not None and conn.req is req:
            conn.end_body(req)
        if self._state is DONE:
            self.conn.forget(self)

    def _ack(self) -> None:
        """Hand back the window of bytes a backend took, unless its socket buffer is full."""
        if self._unacked and not self._backend_full:
            n, self._unacked = self._unacked, 0
            self.conn.ack(n, self.stream_id)

    def too_large(self) -> None:
        req = self.req
        self.conn._log.info("Client {client}: HTTP/2 request body too large", client=req.client_ip)
        if req.replied:
            self._abandon_backend()
            self._finish(reset=_CANCEL)
        else:
            self._abandon_backend()
            req.error = "request body too large"
            self.reply(req, Reply(413, REASONS[413], [TEXT], b"413 request body too large\n"))

    def _protocol_reset(self, why: str) -> None:
        req = self.req
        req.error = why
        req.status = req.status or 400
        self._abandon_backend()
        self.conn._log.info("Client {client}: {why}; stream reset", client=req.client_ip, why=why)
        self._finish(reset=h2.errors.ErrorCodes.PROTOCOL_ERROR)

    # -- response body -----------------------------------------------------------

    def send_pending(self) -> None:
        """Send held response bytes as far as the windows allow; pause the backend if not all."""
        if self._state is DONE:
            return
        conn = self.conn
        h2c = conn.h2
        out = self._out
        sid = self.stream_id
        if conn._write_paused:
            if out and self.backend is not None:
                self.backend.pause_reading()
            return
        sent = 0
        queue = speedups.enabled("h2_headers")
        try:
            while out:
                window = h2c.local_flow_control_window(sid)
                if window <= 0:
                    break
                chunk = out[0]
                if len(chunk) >= _BULK and speedups.enabled("h2_data") and conn._state is not CLOSED:
                    # Bulk data: framed by edge, after what h2 holds (this stream's HEADERS).
                    if len(chunk) <= window:
                        out.pop(0)
                        last = self._out_end and not out and self.req.trailers is None
                    else:
                        if chunk.__class__ is not memoryview:
                            chunk = memoryview(chunk)
                        out[0] = chunk[window:]
                        chunk = chunk[:window]
                        last = False
                    conn.flush_now()
                    conn.transport.writeSequence(speedups.h2_data_frames(h2c, sid, chunk, last))
                    conn._data_out += len(chunk)
                    if last:
                        self._finish(reset=None, ended=True)
                        return
                    continue
                size = min(window, h2c.max_outbound_frame_size)
                if len(chunk) <= size:
                    out.pop(0)
                    last = self._out_end and not out and self.req.trailers is None
                    if queue:
                        speedups.h2_data_frames(h2c, sid, chunk, last, queue=True)
                    else:
                        h2c.send_data(sid, chunk, end_stream=last)
                    conn._data_out += len(chunk)
                    if last:
                        self._finish(reset=None, ended=True)
                        return
                    sent += len(chunk)
                else:
                    # Views, not copies: slicing the bytes took the rest of a 64 KiB
                    # read anew for every frame cut from it.
                    if chunk.__class__ is not memoryview:
                        chunk = memoryview(chunk)
                    out[0] = chunk[size:]
                    h2c.send_data(sid, chunk[:size])
                    sent += size
                    conn._data_out += size
            else:
                if self._out_end:
                    if self.req.trailers is None:
                        h2c.end_stream(sid)
                    else:  # an h2c backend's trailers (grpc-status): a trailing HEADERS
                        h2c.send_headers(sid, self.req.trailers, end_stream=True)
                    self._finish(reset=None, ended=True)
                    return
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self._abandon_backend()
            self._finish(reset=None)
            return
        if sent >= 16384:
            # Bulk data: out now (a turn's wait only pays off for small answers).
            conn.flush_now()
        if out:
            if self._blocked_since is None:
                self._blocked_since = conn.reactor.seconds()
        else:
            self._blocked_since = None
        backend = self.backend
        if backend is not None:
            if out:
                backend.pause_reading()
            else:
                backend.resume_reading()

    # -- ending -----------------------------------------------------------------------

    def _abandon_backend(self) -> None:
        backend = self.backend
        if backend is not None:
            self.backend = None
            self.req.conn = None
            backend.abandon()

    def _finish(self, reset, ended: bool = False) -> None:
        """The stream is done: reset it if asked, log the request, let the connection forget it."""
        if self._state is DONE:
            return
        self._state = DONE
        self._out = []
        self.conn._answered += 1
        req = self.req
        h2c = self.conn.h2
        if reset is None and not self._ended_in and req.replied:
            # A complete answer before the whole request: ask the client to stop (RFC 9113 8.1).
            reset = _NO_ERROR
        if reset is not None:
            try:
                h2c.reset_stream(self.stream_id, reset)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                pass
            self._ended_in = True
        self.proxy.record(self, req)
        self.conn.forget(self)

    def client_reset(self) -> None:
        """The client reset the stream (or the connection went)."""
        req = self.req
        self._ended_in = True
        self._abandon_backend()
        if self._state is not DONE:
            self._state = DONE
            if not req.replied:
                req.status = 499
                req.error = "client reset the stream"
            self.proxy.record(self, req)
        self.conn.forget(self)

    def check_timeout(self, now: float, limits) -> None:
        if self._state is DONE:
            return
        if self._out and self._blocked_since is not None and now - self._blocked_since > limits.send_timeout:
            # The client opens no window for this stream: let it and its backend go.
            self.req.error = "client did not read the response in time"
            self._abandon_backend()
            self._finish(reset=_CANCEL)
            return
        if self._state is not FORWARDING or self.backend is None:
            return
        if self._out or self.conn._write_paused or self._backend_full:
            return  # waiting on the client, not the backend
        if now - self._since <= limits.backend_response_timeout:
            return
        backend = self.backend
        req = self.req
        head_sent = backend.head_sent
        self._abandon_backend()
        if head_sent:
            req.error = "backend stopped sending"
            self._finish(reset=_INTERNAL)
        else:
            exchange.error(self, req, 504, f"{req.target_url} did not answer in time")


@implementer(IPushProducer)
class HTTP2Connection:
    """
    One client connection speaking HTTP/2, after the hand-off from HTTP/1.1.

    ``factory`` is the entry point (routing table, redirect, name), ``proxy``
    the shared state (pool, health, limits, logs), ``peer`` who the client
    is (:class:`~edge.http.forwarding.Peer`).
    """

    _log = Logger()

    def __init__(self, factory, proxy, peer, transport, reactor):
        self.factory = factory
        self.proxy = proxy
        self.peer = peer
        self.transport = transport
        self.reactor = reactor
        self.limits = proxy.limits
        self.h2 = h2.connection.H2Connection(config=_config())
        speedups.h2_connection(self.h2)
        self._streams: dict[int, _Stream] = {}
        self._state = OPEN
        self._write_paused = False
        self._last_stream = None  # set by shutdown(): the last stream served
        self._since = reactor.seconds()
        self._on_close = None
        self._full_since = 0.0  # when the client's socket buffer filled (send_timeout)
        self._flush_call = None  # the pending flush of this reactor turn
        self._resets = 0  # streams the client reset before their answer
        self._answered = 0  # streams answered completely
        # The frame meter (:meth:`_meter`): payload bytes of the current frame
        # still to come, a frame header split across reads, counts.
        self._meter_skip = _PREFACE_LENGTH
        self._meter_head = b""
        self._control = 0  # control frames received (see CONTROL_BUDGET)
        self._control_kinds = [0] * 11
        self._headers_in = 0  # HEADERS frames received
        self._data_in = 0  # DATA payload bytes received
        self._data_out = 0  # DATA payload bytes sent
        self._tokens = CONTROL_BUDGET  # control frames the connection may still send
        self._earned = 0  # tokens earned by requests and DATA so far
        self._refilled = reactor.seconds()

    def start(self, first_bytes: bytes, on_close=None) -> None:
        """Take over the transport: our SETTINGS, then the client's first bytes."""
        self._on_close = on_close
        h2c = self.h2
        limits = self.limits
        h2c.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            # The HPACK decoder's own bound (a connection error past it, so a
            # header bomb costs little): twice the 431 limit, so ordinary
            # excess gets an answer on its stream.
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 2 * (limits.max_header_bytes + MAX_REQUEST_LINE),
        })
        h2c.initiate_connection()
        h2c.decoder.max_header_list_size = 2 * (limits.max_header_bytes + MAX_REQUEST_LINE)
        h2c.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        try:
            self.transport.unregisterProducer()
        except Exception:
            pass
        self.transport.registerProducer(self, True)
        if first_bytes:
            self.dataReceived(first_bytes)
        else:
            self.flush()

    # -- IPushProducer (the client's socket buffer) -------------------------------

    def pauseProducing(self):
        self._write_paused = True
        self._full_since = self.reactor.seconds()
        # Stop reading the client too: what it sends (PINGs, SETTINGS, new
        # streams) makes more output, and a client that does not read it
        # must not grow edge's buffers (PING/SETTINGS floods).
        self.transport.pauseProducing()
        for stream in self._streams.values():
            if stream.backend is not None:
                stream.backend.pause_reading()

    def resumeProducing(self):
        self._write_paused = False
        if self._state is not CLOSED:
            self.transport.resumeProducing()
        for stream in list(self._streams.values()):
            stream.send_pending()
        self.flush()

    def stopProducing(self):
        pass

    # -- input -----------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._state is CLOSED:
            return
        self._since = self.reactor.seconds()
        if self._meter(data):
            self._flood()
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self._log.info("Client {client}: HTTP/2 protocol error: {error}",
                           client=self.peer.client_ip, error=e)
            self.flush()
            self._close(abort=False)
            return
        streams = self._streams
        for event in events:
            cls = event.__class__
            if cls is _RequestReceived:
                self._request(event)
                if self._state is CLOSED:
                    return
            elif cls is _DataReceived:
                stream = streams.get(event.stream_id)
                if stream is None:
                    self.ack(event.flow_controlled_length, event.stream_id)
                else:
                    stream.data(event.data, event.flow_controlled_length, event.stream_ended is not None)
            elif cls is _StreamEnded:
                stream = streams.get(event.stream_id)
                if stream is not None and not stream._ended_in:
                    stream.end_of_request()
            elif cls is _WindowUpdated:
                if event.stream_id:
                    stream = streams.get(event.stream_id)
                    if stream is not None and stream._out:
                        stream.send_pending()
                else:
                    for stream in list(streams.values()):
                        if stream._out:
                            stream.send_pending()
            elif cls is _StreamReset:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    if stream._state is not DONE:
                        self._resets += 1
                    stream.client_reset()
                    if self._resets > RESET_LIMIT + self._answered:
                        self._calm_down()
                        return
            elif cls is _TrailersReceived:
                # Dropped, as on HTTP/1.1 (StreamEnded follows), but checked as h2 would.
                for name, value in event.headers:
                    why = "pseudo-header field in trailers" if name[:1] == b":" else _malformed_field(name, value)
                    if why:
                        self._malformed(why)
                        return
            elif cls is _ConnectionTerminated:
                # h2 sends nothing after a GOAWAY (its state machine is closed
                # both ways), so streams in flight cannot be answered: end them.
                self._log.debug("Client {client} said GOAWAY ({code})", client=self.peer.client_ip,
                                code=event.error_code)
                self._close()
                for stream in list(streams.values()):
                    stream.client_reset()
                return
        self.flush()

    def _meter(self, data: bytes) -> bool:
        """
        Count the control frames in ``data`` (from the frame headers alone,
        before ``h2`` parses it: ``h2`` reports some of them as no event at all,
        a RST_STREAM or WINDOW_UPDATE on a closed stream say); whether the
        connection is past its budget.
        """
        n = len(data)
        skip = self._meter_skip
        if skip >= n:
            self._meter_skip = skip - n
            return False
        pos = skip
        if self._meter_head:
            data = self._meter_head + data
            n = len(data)
            self._meter_head = b""
        control = 0
        kinds = self._control_kinds
        while pos + 9 <= n:
            length = data[pos] << 16 | data[pos + 1] << 8 | data[pos + 2]
            kind = data[pos + 3]
            if kind == 0:  # DATA
                self._data_in += length
                if (length == 0 or data[pos + 4] & 0x8) and not data[pos + 4] & 0x1:
                    control += 1  # empty or padded (maybe padding only), not the end
                    kinds[0] += 1
            elif kind == 1:
                self._headers_in += 1
            elif kind != 9 and kind != 7 and kind != 5:  # not CONTINUATION, GOAWAY, PUSH_PROMISE
                control += 1
                kinds[kind if kind < 10 else 10] += 1
            pos += 9 + length
        if pos < n:
            self._meter_head = data[pos:]
            self._meter_skip = 0
        else:
            self._meter_skip = pos - n
        if not control:
            return False
        self._control += control
        earned = CONTROL_PER_STREAM * self._headers_in + (self._data_in + self._data_out) // CONTROL_PER_BYTES
        tokens = self._tokens + earned - self._earned
        self._earned = earned
        now = self.reactor.seconds()
        if tokens < CONTROL_BUDGET:
            tokens = min(CONTROL_BUDGET, tokens + (now - self._refilled) * CONTROL_PER_SECOND)
        self._refilled = now
        self._tokens = tokens - control
        return self._tokens < 0

    def _malformed(self, why: str) -> None:
        """A malformed request or trailer block (RFC 9113 8.1.1): GOAWAY PROTOCOL_ERROR and close."""
        self._log.info("Client {client}: HTTP/2 protocol error: malformed header block: {why}",
                       client=self.peer.client_ip, why=why)
        try:
            self.h2.close_connection(h2.errors.ErrorCodes.PROTOCOL_ERROR)
        except h2.exceptions.ProtocolError:
            pass
        self._close()

    def _flood(self) -> None:
        """Past the control-frame budget: GOAWAY ENHANCE_YOUR_CALM, log and close."""
        kinds = ", ".join(f"{count} {_CONTROL_NAMES[kind]}" for kind, count in enumerate(self._control_kinds)
                          if count)
        self._log.warn("Client {client}: {count} HTTP/2 control frames ({kinds}) for {requests} requests;"
                       " closing", client=self.peer.client_ip, count=self._control, kinds=kinds,
                       requests=self._headers_in)
        self._enhance_your_calm()

    def ack(self, size: int, stream_id: int) -> None:
        if size:
            try:
                self.h2.acknowledge_received_data(size, stream_id)
            except (h2.exceptions.ProtocolError, ValueError):
                pass

    def _request(self, event) -> None:
        sid = event.stream_id
        h2c = self.h2
        ended = event.stream_ended is not None
        if self._last_stream is not None and sid > self._last_stream:
            h2c.reset_stream(sid, _REFUSED)  # after our GOAWAY: the client retries elsewhere
            return
        req = Request(self.peer.scheme, self.peer.client_ip)
        req.version = "2.0"
        req.started = self.reactor.seconds()
        limits = self.limits
        method = target = authority = scheme = protocol = host = None
        headers = req.headers
        cookies = None
        bad = False
        expect = True
        malformed = None
        regular = False
        for name, value in event.headers:
            if value and _SUSPECT_VALUE.search(value) is not None:
                if _MALFORMED_VALUE.search(value) is not None:
                    malformed = "invalid value in field %r" % name[:64]
                    break
                bad = True
            if name[:1] == b":":
                if regular:
                    malformed = "pseudo-header field after a regular one"
                elif name == b":method":
                    malformed = method is not None and "two :method"
                    method = value
                elif name == b":path":
                    malformed = target is not None and "two :path"
                    target = value
                elif name == b":authority":
                    malformed = authority is not None and "two :authority"
                    authority = value
                elif name == b":scheme":
                    malformed = scheme is not None and "two :scheme"
                    scheme = value
                elif name == b":protocol":
                    malformed = protocol is not None and "two :protocol"
                    protocol = value
                else:
                    malformed = "pseudo-header field %r in a request" % name[:64]
                if malformed:
                    break
                continue
            regular = True
            if _FIELD_NAME.match(name) is None or name in _CONNECTION_SPECIFIC or name == b"te":
                malformed = _malformed_field(name, value)
                if malformed:
                    break
                if name != b"te":
                    bad = True  # not a token (RFC 9110 5.1): 400
            if name == b"cookie":
                # Split across fields in HTTP/2; one field for HTTP/1.1 (RFC 9113 8.2.3).
                cookies = value if cookies is None else cookies + b"; " + value
                continue
            if name == b"host":
                if host is not None:
                    malformed = "two host fields"
                    break
                host = value
                continue
            if name == b"content-length":
                try:
                    req.content_length = int(value)
                except ValueError:
                    req.content_length = -1
            elif name == b"expect" and value.strip().lower() != b"100-continue":
                expect = False  # an expectation edge cannot meet: 417, as on HTTP/1.1
            headers.append((name, value))
        if not malformed:
            if method is None:
                malformed = "no :method"
            elif method == b"CONNECT" and protocol is None:
                if scheme is not None or target is not None:
                    malformed = "CONNECT with :scheme or :path"
            elif scheme is None or target is None:
                malformed = "no :scheme or :path"
            elif protocol is not None and method != b"CONNECT":
                malformed = ":protocol without CONNECT"
            if malformed:
                pass
            elif target is not None and not target:
                malformed = "empty :path"
            elif authority is None:
                if host is None:
                    malformed = "no :authority or host"
                authority = host
            elif host is not None and host != authority:
                malformed = "host differs from :authority"
        if malformed:
            self._malformed(malformed)
            return
        stream = _Stream(self, sid, req)
        self._streams[sid] = stream
        if cookies is not None:
            headers.append((b"cookie", cookies))
        req.method = method or b""
        req.target = target or b""
        req.host = authority or b""
        req.head_done = True
        if ended:
            stream._ended_in = True
            req.body_done = True
        elif req.content_length is None:
            req.chunked = True  # a body of unknown length: chunked to the backend
        elif req.content_length == 0:
            req.body_done = True
        why = None
        status = 0
        count, size = _http11_head_size(event.headers)
        if count > limits.max_header_count:
            status, why = 431, "too many header fields"
        elif size > limits.max_header_bytes:
            status, why = 431, "header fields too large"
        elif len(req.target) > MAX_REQUEST_LINE:
            status, why = 414, "request target too long"
        elif bad:
            status, why = 400, "invalid character in a header field"
        elif _TOKEN.match(req.method) is None or not _h1_method(req.method):
            status, why = 400, "invalid :method"
        elif _BAD_TARGET.search(req.target) is not None or _BAD_TARGET.search(req.host) is not None:
            status, why = 400, "invalid character in :path or :authority"
        elif req.method == b"CONNECT":
            status, why = 405, "CONNECT is not supported"
        elif not expect:
            status, why = 417, "unsupported Expect value"
        elif req.content_length is not None and req.content_length < 0:
            status, why = 400, "invalid content-length"
        elif limits.max_body_bytes and req.content_length is not None and req.content_length > limits.max_body_bytes:
            status, why = 413, "request body too large"
        elif not req.host:
            status, why = 400, "missing :authority"
        if status == 0:
            try:
                # :path is origin-form (or *): the host is :authority alone (RFC 9113 8.3.1).
                _, req.target = split_target(req.method, req.target, self.proxy.allowed_encoded,
                                             absolute_form=False)
            except BadTarget as e:
                status, why = 400, str(e)
        if status:
            self._log.info("Rejected HTTP/2 request from {client}: {status} {why}",
                           client=req.client_ip, status=status, why=why)
            req.error = why
            stream.reply(req, Reply(status, REASONS[status], [TEXT], f"{status} {why}\n".encode()))
            return
        exchange.route(stream, req)

    # -- output ------------------------------------------------------------------------

    def flush(self) -> None:
        """
        Write what h2 has queued, once per reactor turn: the answers of many
        streams that complete in one turn (each from its own backend read)
        leave in one TLS write instead of one record and one send each.
        """
        if self._flush_call is None and self._state is not CLOSED:
            self._flush_call = self.reactor.callLater(0, self.flush_now)

    def flush_now(self) -> None:
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()
        data = self.h2.data_to_send()
        if data and self._state is not CLOSED:
            self.transport.write(data)

    def _calm_down(self) -> None:
        """Too many streams reset before their answer: GOAWAY and close."""
        self._log.warn("Client {client}: {count} HTTP/2 streams reset before their answer; closing",
                       client=self.peer.client_ip, count=self._resets)
        self._enhance_your_calm()

    def _enhance_your_calm(self) -> None:
        """GOAWAY ENHANCE_YOUR_CALM, read nothing more, close (at once if the client reads nothing)."""
        try:
            self.h2.close_connection(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
        except h2.exceptions.ProtocolError:
            pass
        self.transport.pauseProducing()
        # A client whose socket buffer is full would never take the GOAWAY (nor let the close finish).
        self._close(abort=self._write_paused)

    def forget(self, stream: _Stream) -> None:
        if self._streams.get(stream.stream_id) is stream:
            del self._streams[stream.stream_id]
            self._since = self.reactor.seconds()
        if self._state is DRAINING and not self._streams:
            self.flush()
            self._close()

    # -- lifecycle -----------------------------------------------------------------------

    def shutdown(self) -> None:
        """GOAWAY naming the last stream edge serves; the connection closes once they finish."""
        if self._state is not OPEN:
            return
        self._state = DRAINING
        last = self._last_stream = self.h2.highest_inbound_stream_id
        self.flush_now()
        # Written by hand: h2's close_connection() would end the streams in flight too.
        self.transport.write(GoAwayFrame(stream_id=0, last_stream_id=last, error_code=0).serialize())
        if not self._streams:
            self._close()

    def check_timeouts(self, now: float) -> None:
        if self._state is CLOSED:
            return
        limits = self.limits
        if self._write_paused and now - self._full_since > limits.send_timeout:
            self._log.info("Client {client} read nothing for {timeout}s; closing",
                           client=self.peer.client_ip, timeout=limits.send_timeout)
            self._close(abort=True)
            return
        for stream in list(self._streams.values()):
            stream.check_timeout(now, limits)
        if not self._streams and now - self._since > limits.client_idle_timeout:
            self.shutdown()
        self.flush()

    def close(self, abort: bool = False) -> None:
        self._close(abort)

    def _close(self, abort: bool = False) -> None:
        if self._state is CLOSED:
            return
        self.flush_now()
        self._state = CLOSED
        try:
            self.transport.unregisterProducer()
        except Exception:
            pass
        if abort:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    def connectionLost(self, reason=None) -> None:
        self._state = CLOSED
        for stream in list(self._streams.values()):
            stream.client_reset()
        self._streams.clear()
        if self._on_close is not None:
            self._on_close()
