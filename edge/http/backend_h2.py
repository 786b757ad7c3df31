"""
h2c backends: HTTP/2 with prior knowledge to a target, many streams per connection.

A target whose scheme is ``h2c`` (v1 ``traefik.protocol=h2c``, v2/v3
``loadbalancer.server.scheme=h2c``) speaks HTTP/2 in clear text and
nothing else: gRPC services are the common case.  :class:`H2CPool` keeps
connections per target, each an :class:`H2CConnection` on the ``h2``
package's sans-IO ``H2Connection``, and hands out one :class:`BackendStream`
per request.  To the client sides (:mod:`edge.http.http1`,
:mod:`edge.http.http2`) a stream looks exactly like the HTTP/1.1
:class:`~edge.http.backend.BackendProtocol`: the same ``attach`` /
``send_request`` / ``send_body`` / ``end_body`` / ``pause_reading`` /
``abandon`` hand-offs, the same response head attributes, and the same
:class:`~edge.http.exchange.ExchangeSide` calls back.  Only the framing
differs, plus what HTTP/1.1 backends never carry: response trailers
(``grpc-status``), handed on as ``req.trailers``.

The request head is :func:`edge.http.forwarding.request_head`'s (one set of
forwarding rules for every backend), turned into HTTP/2 fields; the one
``TE`` value HTTP/2 allows, ``trailers``, is forwarded when the client sent it.

Flow control is tied to the client side both ways:

* response bodies: DATA is handed to the side as it arrives and
  acknowledged (``acknowledge_received_data``) only while the side has not
  paused this stream (``pause_reading``: its client is slow), so a slow
  client closes its backend stream's window and nothing else's -- the
  connection window is large enough for every stream's window
  (:data:`CONNECTION_WINDOW`);
* request bodies: what the backend's windows do not take is held, and the
  side is told ``backend_full(True)`` (it stops reading, or acknowledging,
  its client) until a WINDOW_UPDATE lets the bytes go.

Failures are the HTTP/1.1 backend's: a connect failure tries the next
target (the exchange does), a reset stream, a GOAWAY or a lost connection
is a 502 before the response head and a cut-off client after it; the
side's own ``backend_response_timeout`` makes a 504.  A request the
backend never processed (REFUSED_STREAM, a stream above a GOAWAY's last
stream id, or one still queued) goes to a fresh connection once, when it
has no body to replay.  Upgrade requests cannot go to an h2c target (502).

Connection states (``H2CConnection._state``):

``CONNECTING``
    TCP connect in progress; streams handed out now wait for it.
``OPEN``
    Preface and SETTINGS sent; streams are opened up to the backend's
    ``SETTINGS_MAX_CONCURRENT_STREAMS`` and edge's :data:`MAX_STREAMS`.
``DRAINING``
    No new streams (the target left the snapshot, stream ids ran out, or
    the backend said GOAWAY); closes once the last stream is done.
``CLOSED``
    Gone.

Stream states (``BackendStream._state``):

``RESERVED``
    Handed out by the pool, not attached to a side yet.
``ATTACHED``
    Attached to a side; its HEADERS go out with ``send_request``.
``WAITING``
    HEADERS sent; no response head yet (1xx heads are skipped).
``RELAYING``
    The response head went to the side; body and trailers follow.
``DONE``
    Ended, reset or abandoned.
"""

from __future__ import annotations

from http import HTTPStatus

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionAborted
from twisted.python.failure import Failure
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.logger import Logger

from edge.http.backend import RESP_DROP, BackendProtocol, PeerReads
from edge.http.forwarding import request_head

__all__ = ["H2CPool", "H2CConnection", "BackendStream", "SCHEME", "MAX_STREAMS",
           "STREAM_WINDOW", "CONNECTION_WINDOW", "request_fields", "wants_trailers"]

SCHEME = "h2c"

CONNECTING, OPEN, DRAINING, CLOSED = "CONNECTING", "OPEN", "DRAINING", "CLOSED"
RESERVED, ATTACHED, WAITING, RELAYING, DONE = "RESERVED", "ATTACHED", "WAITING", "RELAYING", "DONE"

# edge's own bound of streams on one backend connection (the backend's
# SETTINGS_MAX_CONCURRENT_STREAMS may be lower); more requests open more connections.
MAX_STREAMS = 64
# Response bytes a backend may send on one stream before edge acknowledges
# them: what edge holds for a stream whose client is slow.
STREAM_WINDOW = 256 * 1024
# Every stream's window fits, so a paused stream never stalls the others.
CONNECTION_WINDOW = MAX_STREAMS * STREAM_WINDOW
# HPACK's own bound on a response head (a connection error past it); the
# configured backend_max_header_bytes/count apply per head, as a 502.
MAX_HEADER_LIST = 1 << 20
# Stream ids are 31 bits; a connection this close to the end takes no more.
_LAST_STREAM_ID = (1 << 31) - 1 - 2 * MAX_STREAMS

_CANCEL = h2.errors.ErrorCodes.CANCEL
_NO_ERROR = h2.errors.ErrorCodes.NO_ERROR
_REFUSED = h2.errors.ErrorCodes.REFUSED_STREAM

_ResponseReceived = h2.events.ResponseReceived
_InformationalResponseReceived = h2.events.InformationalResponseReceived
_DataReceived = h2.events.DataReceived
_TrailersReceived = h2.events.TrailersReceived
_StreamEnded = h2.events.StreamEnded
_StreamReset = h2.events.StreamReset
_WindowUpdated = h2.events.WindowUpdated
_RemoteSettingsChanged = h2.events.RemoteSettingsChanged
_ConnectionTerminated = h2.events.ConnectionTerminated

# Request header lines of request_head() that have no place in HTTP/2
# (framing and connection fields; Host becomes :authority).
_NOT_H2 = frozenset({b"host", b"transfer-encoding", b"connection", b"upgrade", b"keep-alive",
                     b"proxy-connection", b"te"})
_REASONS = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}


def wants_trailers(req) -> bool:
    """Whether the client said it accepts trailers (``TE: trailers``, RFC 9110 10.1.4)."""
    for name, value in req.headers:
        if len(name) == 2 and name.lower() == b"te":
            if b"trailers" in (t.split(b";", 1)[0].strip().lower() for t in value.split(b",")):
                return True
    return False


def request_fields(req, peer) -> list:
    """
    The HTTP/2 fields for ``req``: :func:`request_head`'s lines (hop-by-hop
    removal, ``X-Forwarded-*`` and ``trusted_proxies`` as for any backend),
    names lower-cased, ``Host`` as ``:authority``, framing fields dropped.
    The head is edge's own output (``name: value`` lines, no CR/LF in
    values: both parsers refuse them), so splitting it back is exact.
    """
    lines = request_head(req, peer).split(b"\r\n")
    authority = b""
    fields = []
    for line in lines[1:-2]:
        name, _, value = line.partition(b": ")
        lower = name.lower()
        if lower in _NOT_H2:
            if lower == b"host":
                authority = value
            continue
        fields.append((lower, value))
    if wants_trailers(req):
        fields.append((b"te", b"trailers"))
    return [(b":method", req.method), (b":scheme", b"http"), (b":authority", authority),
            (b":path", req.target)] + fields


def _config() -> h2.config.H2Configuration:
    return h2.config.H2Configuration(
        client_side=True,
        header_encoding=None,
        validate_inbound_headers=True,
        normalize_inbound_headers=True,
        # The fields are request_head()'s: already checked by the client framing.
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )


class BackendStream:
    """
    One request on an h2c connection: what the side sees as its backend.

    Response head attributes as on :class:`BackendProtocol` (``status``,
    ``reason``, ``headers``, ``kept`` -- always None, so sides take the
    general path through :meth:`relayable` --, ``content_length``,
    ``chunked``, ``connection_tokens``).
    """

    ends_body = True  # END_STREAM goes out with the body's end (BackendProtocol.ends_body)

    kept = None
    chunked = False
    connection_tokens = None
    relayable = BackendProtocol.relayable

    def __init__(self, conn: "H2CConnection", reused: bool):
        self.conn = conn
        self.key = conn.key
        self.reused = reused
        self.side = None
        self.req = None
        self.stream_id = None
        self._state = RESERVED
        self.status = 0
        self.reason = b""
        self.headers: list = []
        self.content_length = None
        self.got_bytes = False
        self._out: list = []  # request body bytes the backend's windows did not take yet
        self._out_end = False  # the side said the body is complete
        self._ended_out = False  # END_STREAM sent
        self._blocked = False  # bytes held for lack of window
        self._full_seen = False  # what the side was last told by backend_full()
        self._unacked = 0  # response bytes handed to the side, not yet acknowledged
        self._paused = False  # the side's client cannot take more
        self._no_body = False  # the side takes no body (HEAD, 204, 304)
        self._trailers = None

    @property
    def state(self) -> str:
        return self._state

    @property
    def connected(self) -> bool:
        return self._state is not DONE and self.conn._state is not CLOSED

    @property
    def transport(self):
        """The connection's transport (never written to by a side: it goes through this stream)."""
        return self.conn.transport if self._state is not DONE else None

    @property
    def write_full(self) -> bool:
        return self._blocked or self.conn.write_full

    @property
    def head_sent(self) -> bool:
        return self._state is RELAYING

    # -- hand-offs with the side (as BackendProtocol) ------------------------

    def attach(self, side, req, reused: bool) -> None:
        self.side = side
        self.req = req
        self.reused = reused
        self._state = ATTACHED

    def send_request(self, req, peer) -> None:
        """Open the stream with the request head and the body bytes so far."""
        if self._state is not ATTACHED:
            return
        if req.upgrade:
            # After the side's attach() returns: it is still setting up.
            self.conn.reactor.callLater(0, self._fail, f"Upgrade request to an h2c backend ({req.target_url})")
            return
        if req.pending:
            self._out, req.pending = req.pending, []
            req.pending_bytes = 0
        if req.body_done:
            self._out_end = True
        self.conn.open_stream(self, request_fields(req, peer))
        # The connection may be full already (other streams): the side hears it now.
        self._signal_full()

    def send_body(self, req, data: bytes) -> None:
        if not data or req is not self.req or self._state is DONE:
            return
        self._out.append(data)
        if self.stream_id is not None:
            self._send_out()
            self.conn.write_out()
        else:
            self._signal_full()

    def end_body(self, req) -> None:
        if req is not self.req or self._state is DONE or self._out_end:
            return
        self._out_end = True
        if self.stream_id is not None:
            self._send_out()
            self.conn.write_out()

    def pause_reading(self) -> None:
        """The client cannot take more: stop acknowledging this stream's DATA."""
        self._paused = True

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            if self._unacked:
                self._ack()
                self.conn.write_out()

    def abandon(self) -> None:
        """The side let go (client gone, timeout, answered otherwise): reset the stream."""
        if self._state is DONE:
            return
        self.side = None
        self.req = None
        self._finish(_CANCEL)
        self.conn.write_out()

    def close_tunnel(self) -> None:  # never a tunnel
        self.abandon()

    # -- request body out ------------------------------------------------------------

    def opened(self, stream_id: int) -> None:
        """The connection sent our HEADERS (with END_STREAM when nothing follows)."""
        self.stream_id = stream_id
        self._state = WAITING
        if self._out_end and not self._out:
            self._ended_out = True
        else:
            self._send_out()

    def headers_end_stream(self) -> bool:
        return self._out_end and not self._out

    def _send_out(self) -> None:
        """Send held request bytes as far as the backend's windows allow."""
        h2c = self.conn.h2
        sid = self.stream_id
        out = self._out
        try:
            while out:
                size = min(h2c.local_flow_control_window(sid), h2c.max_outbound_frame_size)
                if size <= 0:
                    break
                chunk = out[0]
                if len(chunk) <= size:
                    out.pop(0)
                    h2c.send_data(sid, chunk, end_stream=self._out_end and not out)
                    if self._out_end and not out:
                        self._ended_out = True
                else:
                    out[0] = chunk[size:]
                    h2c.send_data(sid, chunk[:size])
            if not out and self._out_end and not self._ended_out:
                self._ended_out = True
                h2c.end_stream(sid)
        except h2.exceptions.ProtocolError:
            # The backend closed its side or reset the stream; its events say which.
            out.clear()
        self._blocked = bool(out)
        self._signal_full()

    def _signal_full(self) -> None:
        full = self.write_full or (self.stream_id is None and bool(self._out))
        side = self.side
        if full != self._full_seen and side is not None:
            self._full_seen = full
            side.backend_full(full)

    # -- response in (called by the connection) ---------------------------------------

    def head(self, headers, ended: bool) -> None:
        side, req = self.side, self.req
        if side is None:
            return
        limits = side.proxy.limits
        status = 0
        fields = []
        size = 0
        content_length = None
        for name, value in headers:
            if name[:1] == b":":
                if name == b":status":
                    status = int(value) if value.isdigit() else 0
                continue
            size += len(name) + len(value) + 4
            if name == b"content-length":
                content_length = value
            fields.append((name, value))
        if not 200 <= status <= 599:
            self.fail(f"invalid response status {status} (from {req.target_url})")
            return
        why = self._too_big(fields, size, limits, "response head")
        if why:
            self.fail(f"{why} (from {req.target_url})")
            return
        self.got_bytes = True
        side.touch()
        self.status = req.status = status
        self.reason = _REASONS.get(status, b"-")
        self.headers = fields
        self.content_length = content_length
        self._state = RELAYING
        req.response_in_head = ended
        self._no_body = side.response_head(req, self)
        if ended and self.side is not None:
            self.ended()

    @staticmethod
    def _too_big(fields, size, limits, what) -> str:
        count = getattr(limits, "backend_max_header_count", 1000)
        most = getattr(limits, "backend_max_header_bytes", 65536)
        if len(fields) > count:
            return f"{what} with more than {count} fields"
        if size > most:
            return f"{what} larger than {most} bytes"
        return ""

    def interim(self) -> None:
        self.got_bytes = True
        if self.side is not None:
            self.side.touch()

    def data(self, data: bytes, flow_length: int) -> None:
        self._unacked += flow_length
        side = self.side
        if side is None or self._state is not RELAYING:
            return
        side.touch()
        if data and not self._no_body:
            side.response_body(self.req, data)

    def trailers(self, headers) -> None:
        side = self.side
        if side is None:
            return
        fields = [(n, v) for n, v in headers if n[:1] != b":" and n not in RESP_DROP]
        why = self._too_big(fields, sum(len(n) + len(v) + 4 for n, v in fields), side.proxy.limits, "trailers")
        if why:
            self.fail(f"{why} (from {self.req.target_url})")
            return
        self._trailers = fields

    def ended(self) -> None:
        """The backend ended its response: hand the end (and trailers) to the side."""
        side, req = self.side, self.req
        if side is None or self._state is not RELAYING:
            return
        req.trailers = self._trailers
        self.side = None
        self.req = None
        req.conn = None
        # The request half may still be open (an answer before the whole
        # body): the backend wants no more of it.
        self._finish(None if self._ended_out else _CANCEL)
        side.backend_detached(self)
        side.response_end(req)
        side.flush()  # an answer complete in its head has written nothing yet

    def flush_side(self) -> None:
        """After a batch of events: let the side write, then acknowledge what it took."""
        side = self.side
        if side is not None:
            side.flush()
        if self._unacked and not self._paused:
            self._ack()

    def window_opened(self) -> None:
        if self._out and self.stream_id is not None and self._state is not DONE:
            self._send_out()
        else:
            self._signal_full()

    def _ack(self) -> None:
        n, self._unacked = self._unacked, 0
        if n and self.stream_id is not None:
            self.conn.ack(n, self.stream_id)

    # -- failures ------------------------------------------------------------------

    def reset_by_backend(self, code) -> None:
        if code == _REFUSED and self._retry():
            return
        self.fail(f"{self.req.target_url if self.req else self.key} reset the stream ({_code(code)})")

    def unprocessed(self, why: str) -> None:
        """The backend never processed this stream (GOAWAY above it, or over its limit): retry once if possible."""
        if not self._retry():
            self.fail(why)

    def lost(self, why: str) -> None:
        """The connection is gone: a fresh one for a request that saw nothing yet, else fail."""
        if self.reused and not self.got_bytes and self._retry():
            return
        self.fail(why)

    def _retry(self) -> bool:
        side, req = self.side, self.req
        if side is None or self._state is RELAYING or req.retried or not self._replayable(req):
            return False
        req.retried = True
        req.tried.clear()
        self.side = None
        self.req = None
        req.conn = None
        self._finish(_CANCEL)
        side.backend_detached(self)
        side.retry(req)
        return True

    @staticmethod
    def _replayable(req) -> bool:
        return req.content_length in (None, 0) and not req.chunked and req.body_done

    def fail(self, cause: str) -> None:
        side, req = self.side, self.req
        head_sent = self._state is RELAYING
        self.side = None
        self.req = None
        if req is not None:
            req.conn = None
        self._finish(_CANCEL)
        if side is not None and req is not None:
            side.backend_failed(req, cause, head_sent)

    def _fail(self, cause: str) -> None:
        self.fail(cause)
        self.conn.write_out()

    def _finish(self, reset) -> None:
        """Done: reset the stream if asked, hand back its window, free its slot."""
        if self._state is DONE:
            return
        self._state = DONE
        self._out = []
        conn = self.conn
        sid = self.stream_id
        if sid is not None:
            if reset is not None and conn._state is not CLOSED:
                try:
                    conn.h2.reset_stream(sid, reset)
                except h2.exceptions.ProtocolError:
                    pass  # already closed both ways
            n, self._unacked = self._unacked, 0
            if n:
                conn.ack(n, sid)  # the connection's share comes back even for a closed stream
        conn.release(self)


def _code(code) -> str:
    return getattr(code, "name", str(code))


class H2CConnection(Protocol):
    """One HTTP/2 connection (prior knowledge, no TLS) to a target; many :class:`BackendStream`."""

    _log = Logger()

    def __init__(self, key, pool: "H2CPool", reactor, max_streams: int = MAX_STREAMS):
        self.key = key
        self._pool = pool
        self.reactor = reactor
        self.max_streams = max_streams
        self.h2 = h2.connection.H2Connection(config=_config())
        self._state = CONNECTING
        self._streams: dict[int, BackendStream] = {}  # open on the wire
        self.reserved = 0  # streams handed out and not done
        self.write_full = False
        self.idle_since = reactor.seconds()
        self._waiters: list = []  # (Deferred, stream) taken while connecting
        self._batch = False
        self._head = b""  # the backend's first bytes, until they show a SETTINGS frame

    @property
    def state(self) -> str:
        return self._state

    # -- the pool's side ----------------------------------------------------------

    def has_room(self) -> bool:
        if self._state is CONNECTING:
            return self.reserved < self.max_streams
        if self._state is not OPEN:
            return False
        limit = min(self.max_streams, self.h2.remote_settings.max_concurrent_streams)
        return self.reserved < limit

    def reserve(self, reused: bool) -> BackendStream:
        self.reserved += 1
        return BackendStream(self, reused)

    def wait(self) -> Deferred:
        """A stream once the connection is made (it fails with the connect error)."""
        d = Deferred()
        self._waiters.append((d, self.reserve(False)))
        return d

    def connect_failed(self, reason) -> None:
        self._state = CLOSED
        self._pool.forget(self)
        waiters, self._waiters = self._waiters, []
        for d, stream in waiters:
            stream._state = DONE
            d.errback(reason)

    def retire(self) -> None:
        """No new streams; close once the last one is done."""
        if self._state is OPEN:
            self._state = DRAINING
        if self._state is DRAINING and not self.reserved:
            self.close()

    def close(self) -> None:
        """GOAWAY (when the connection still allows one) and close."""
        if self._state is CLOSED:
            return
        was = self._state
        self._state = CLOSED
        if self.transport is None:
            return
        if was is not CONNECTING:
            try:
                self.h2.close_connection()
            except h2.exceptions.ProtocolError:
                pass
            self.write_out()
        try:
            self.transport.unregisterProducer()
        except Exception:
            pass
        self.transport.loseConnection()

    # -- connection -----------------------------------------------------------------

    def connectionMade(self) -> None:
        if self._state is CLOSED:
            # The pool closed (shutdown) while this connect was in progress.
            self.transport.loseConnection()
            self.connect_failed(Failure(ConnectionAborted("edge is closing its backend connections")))
            return
        h2c = self.h2
        h2c.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 0,  # the backend opens none
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
        })
        h2c.initiate_connection()
        h2c.decoder.max_header_list_size = MAX_HEADER_LIST
        h2c.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.transport.registerProducer(PeerReads(self), True)
        if self._state is CONNECTING:
            self._state = OPEN
        self.write_out()
        self._pool.connected(self)
        waiters, self._waiters = self._waiters, []
        for d, stream in waiters:
            d.callback(stream)

    def peer_full(self, full: bool) -> None:
        """Our socket buffer to the backend filled or drained: every stream's side hears it."""
        self.write_full = full
        for stream in list(self._streams.values()):
            stream._signal_full()

    def dataReceived(self, data: bytes) -> None:
        if self._state is CLOSED:
            return
        if self._head is not None:
            # A server's preface is a SETTINGS frame (RFC 9113 3.4); anything
            # else (an HTTP/1.1 "400 Bad Request") is not an h2c backend.
            self._head += data
            if len(self._head) < 4:
                return
            data, self._head = self._head, None
            if data[3] != 0x4:
                self._broken(f"{self._url()} does not speak HTTP/2 (answered {data[:40]!r})")
                return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self._broken(f"HTTP/2 protocol error from {self._url()}: {e}")
            return
        self._batch = True
        touched = {}
        streams = self._streams
        goaway = False
        try:
            for event in events:
                cls = event.__class__
                stream = streams.get(getattr(event, "stream_id", 0) or 0)
                if cls is _DataReceived:
                    if stream is None:
                        self.ack(event.flow_controlled_length, event.stream_id)
                    else:
                        stream.data(event.data, event.flow_controlled_length)
                        touched[stream] = None
                elif stream is None:
                    # Connection-level, or a stream that is done already.
                    if cls is _WindowUpdated and not event.stream_id:
                        for s in list(streams.values()):
                            s.window_opened()
                    elif cls is _RemoteSettingsChanged:
                        # Maybe a new initial window.
                        for s in list(streams.values()):
                            s.window_opened()
                    elif cls is _ConnectionTerminated:
                        self._goaway(event)
                        goaway = True
                        break
                elif cls is _ResponseReceived:
                    stream.head(event.headers, event.stream_ended is not None)
                    touched[stream] = None
                elif cls is _TrailersReceived:
                    stream.trailers(event.headers)
                elif cls is _StreamEnded:
                    stream.ended()
                elif cls is _StreamReset:
                    stream.reset_by_backend(event.error_code)
                elif cls is _WindowUpdated:
                    stream.window_opened()
                elif cls is _InformationalResponseReceived:
                    stream.interim()
            for stream in touched:
                stream.flush_side()
        finally:
            self._batch = False
        self.write_out()
        if goaway:
            self.close()

    def _goaway(self, event) -> None:
        """The backend said GOAWAY: h2 can send nothing more, so every stream ends here."""
        last = event.last_stream_id or 0
        self._log.info("h2c backend {target} said GOAWAY ({code}, last stream {last})",
                       target=self._url(), code=_code(event.error_code), last=last)
        self._state = DRAINING
        self._pool.forget(self)
        for stream in sorted(self._streams.values(), key=lambda s: s.stream_id):
            if stream.stream_id > last:
                stream.unprocessed(f"{self._url()} refused the stream (GOAWAY)")
            else:
                stream.fail(f"{self._url()} closed the connection (GOAWAY {_code(event.error_code)})")

    def _broken(self, why: str) -> None:
        self._log.warn("{why}; closing", why=why)
        self._state = CLOSED
        self._pool.forget(self)
        for stream in list(self._streams.values()):
            stream.fail(why)
        try:
            self.transport.unregisterProducer()
        except Exception:
            pass
        self.transport.abortConnection()

    def connectionLost(self, reason=None) -> None:
        state = self._state
        self._state = CLOSED
        self._pool.forget(self)
        cause = reason.getErrorMessage() if reason is not None else "connection lost"
        for stream in list(self._streams.values()):
            if state is CLOSED:
                stream.fail(f"{self._url()} connection closed")
            else:
                stream.lost(f"{self._url()} closed the connection: {cause}")

    # -- streams ------------------------------------------------------------------

    def open_stream(self, stream: BackendStream, fields: list) -> None:
        """HEADERS for a stream the pool reserved room for (has_room)."""
        if self._state is CLOSED:
            stream.lost(f"{self._url()} connection closed")
            return
        h2c = self.h2
        sid = h2c.get_next_available_stream_id()
        try:
            h2c.send_headers(sid, fields, end_stream=stream.headers_end_stream())
        except h2.exceptions.TooManyStreamsError:
            # The backend lowered its limit after the room was reserved.
            stream.unprocessed(f"{self._url()} allows no more streams")
            return
        except h2.exceptions.ProtocolError as e:
            stream.fail(f"cannot open a stream to {self._url()}: {e}")
            return
        self._streams[sid] = stream
        if sid >= _LAST_STREAM_ID and self._state is OPEN:
            self._state = DRAINING
        stream.opened(sid)
        self.write_out()

    def release(self, stream: BackendStream) -> None:
        """A stream is done: free its slot; a draining connection closes after its last."""
        sid = stream.stream_id
        if sid is not None and self._streams.get(sid) is stream:
            del self._streams[sid]
        self.reserved -= 1
        if not self.reserved:
            self.idle_since = self.reactor.seconds()
            if self._state is DRAINING:
                self.close()

    def ack(self, size: int, stream_id: int) -> None:
        try:
            self.h2.acknowledge_received_data(size, stream_id)
        except (h2.exceptions.ProtocolError, ValueError):
            pass

    def write_out(self) -> None:
        """Write what h2 queued (once per batch of backend events)."""
        if self._batch or self.transport is None:
            return
        data = self.h2.data_to_send()
        if data:
            self.transport.write(data)  # a no-op once the transport is closing

    def _url(self) -> str:
        scheme, host, port = self.key
        host = f"[{host}]" if ":" in host else host
        return f"{scheme}://{host}:{port}"


class _ConnectFactory(ClientFactory):
    noisy = False

    def __init__(self, conn: H2CConnection):
        self._conn = conn

    def buildProtocol(self, addr):
        return self._conn

    def clientConnectionFailed(self, connector, reason) -> None:
        self._conn.connect_failed(reason)


class H2CPool:
    """
    Connections to h2c targets by key ``("h2c", host, port)``.

    :meth:`take` returns a stream on a connection with room, newest first;
    :meth:`connect` one on a connection being made (streams of a burst share
    it) or on a new one.  A connection with no stream is closed after
    ``idle_timeout`` (:meth:`sweep`) or when its target leaves the snapshot.
    """

    _log = Logger()

    def __init__(self, reactor, *, connect_timeout: float = 5.0, idle_timeout: float = 90.0,
                 max_streams: int = MAX_STREAMS):
        self._reactor = reactor
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_streams = max_streams
        self._conns: dict[tuple, list[H2CConnection]] = {}
        self._live: set | None = None

    def take(self, key: tuple):
        for conn in reversed(self._conns.get(key, ())):
            if conn._state is OPEN and conn.has_room():
                return conn.reserve(True)
        return None

    def connect(self, key: tuple) -> Deferred:
        for conn in self._conns.get(key, ()):
            if conn._state is CONNECTING and conn.has_room():
                return conn.wait()
        _, host, port = key
        conn = H2CConnection(key, self, self._reactor, self.max_streams)
        self._conns.setdefault(key, []).append(conn)
        d = conn.wait()
        self._reactor.connectTCP(host, port, _ConnectFactory(conn), timeout=self.connect_timeout)
        return d

    def connected(self, conn: H2CConnection) -> None:
        if self._live is not None and conn.key not in self._live:
            conn.retire()

    def put(self, stream: BackendStream) -> None:
        """A stream handed out but never used (its request went away meanwhile)."""
        stream._finish(None)

    def forget(self, conn: H2CConnection) -> None:
        conns = self._conns.get(conn.key)
        if conns and conn in conns:
            conns.remove(conn)
            if not conns:
                del self._conns[conn.key]

    def retain(self, keys) -> None:
        """Connections to targets that left the snapshot take no new streams, and close when idle."""
        self._live = set(keys)
        for key in [k for k in self._conns if k not in self._live]:
            for conn in list(self._conns.pop(key)):
                conn.retire()

    def sweep(self) -> None:
        limit = self._reactor.seconds() - self.idle_timeout
        for conns in list(self._conns.values()):
            for conn in [c for c in conns if c._state is OPEN and not c.reserved and c.idle_since < limit]:
                self.forget(conn)
                conn.close()

    def close(self) -> None:
        for conns in list(self._conns.values()):
            for conn in list(conns):
                conn.close()
        self._conns.clear()

    def idle_count(self, key=None) -> int:
        keys = [key] if key is not None else list(self._conns)
        return sum(1 for k in keys for c in self._conns.get(k, ()) if c._state is OPEN and not c.reserved)

