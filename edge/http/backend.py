"""
The backend side of an exchange: one pooled HTTP/1.1 connection to a target.

:class:`BackendProtocol` writes nothing of its own to the client.  It parses
the backend's response with httptools and hands each piece to the client
side it is attached to (an HTTP/1.1 connection or one HTTP/2 stream: an
:class:`ExchangeSide`), which frames it for its client.  The backend alone
decides whether the connection can go back to the pool.

States (``_state``), in the style of twisted.web's ``_newclient``:

``IDLE``
    In the pool, or just connected; no exchange.  Any byte from the
    backend now is unsolicited: the connection is dropped.
``WAITING``
    Attached to a side; the request head was written; no response head yet.
    Interim (1xx other than 101) heads are skipped.
``RELAYING``
    The response head went to the side; body bytes follow.
``TUNNEL``
    A 101 answered an Upgrade request: raw bytes both ways until one closes.
``CLOSED``
    The connection is gone or abandoned; never reused.
"""

from __future__ import annotations

from typing import Optional

import httptools
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from edge.http import speedups
from edge.http.forwarding import request_bytes

__all__ = ["BackendProtocol", "PeerReads", "IDEMPOTENT"]

IDLE, WAITING, RELAYING, TUNNEL, CLOSED = "IDLE", "WAITING", "RELAYING", "TUNNEL", "CLOSED"

# Response headers edge never relays as received: hop-by-hop and framing.
_HOP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
        b"transfer-encoding", b"upgrade", b"proxy-authorization", b"proxy-authenticate",
    }
)
RESP_DROP = _HOP | {b"content-length"}
_RESP_LENGTHS = frozenset(len(n) for n in RESP_DROP)
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})


@implementer(IPushProducer)
class PeerReads:
    """Registered on one side's transport: a full write buffer pauses the other side's reads."""

    __slots__ = ("_owner",)

    def __init__(self, owner):
        self._owner = owner

    def pauseProducing(self):
        self._owner.peer_full(True)

    def resumeProducing(self):
        self._owner.peer_full(False)

    def stopProducing(self):
        pass


class _BadResponse(Exception):
    """A backend response edge will not relay (answered with 502)."""


class BackendProtocol(Protocol):
    """
    One connection to a backend target, reused across exchanges.

    Once the response head is parsed, the side reads it from these
    attributes (no object per response): ``status``, ``reason``,
    ``headers`` (every (name, value) pair as received), ``kept`` (the
    relayable header lines already serialised for HTTP/1.1 -- ``name:
    value\r\n`` -- or None when a ``Connection`` field names more headers
    to drop; see :meth:`relayable`), ``content_length`` (bytes, or None),
    ``chunked`` and ``connection_tokens``.
    """

    _log = Logger()
    # Whether end_body must be called when a request's body ends without
    # chunked framing (HTTP/1.1 needs it only for chunked; an h2c stream or a
    # body sink always): the HTTP/1.1 side skips the call otherwise.
    ends_body = False

    def __init__(self, key, pool, limits=None):
        self.key = key
        self._pool = pool
        # Response head bounds (bytes before the head ends, fields): past them, 502.
        self._max_head_bytes = getattr(limits, "backend_max_header_bytes", 65536) + 8192
        self._max_fields = getattr(limits, "backend_max_header_count", 1000)
        self.side = None
        self.req = None
        self.transport = None
        self.connected = False
        self.idle_since = 0.0
        self.reused = False
        self._state = IDLE
        self._parser = None
        self._reading_paused = False
        # Our socket buffer is full (a side attached now must not send more yet).
        self.write_full = False

    def connectionMade(self):
        self.connected = True
        self.transport.registerProducer(PeerReads(self), True)
        self.factory.connected(self)

    @property
    def state(self) -> str:
        return self._state

    @property
    def head_sent(self) -> bool:
        """Whether the response head reached the side (a failure now cannot be a 502)."""
        return self._state is RELAYING or self._state is TUNNEL

    # -- hand-offs with the client side ----------------------------------

    def peer_full(self, full: bool):
        """Our write buffer filled or drained: the side pauses or resumes its client."""
        self.write_full = full
        side = self.side
        if side is not None:
            side.backend_full(full)

    def pause_reading(self):
        """The client cannot take more: stop reading the backend."""
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pauseProducing()

    def resume_reading(self):
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resumeProducing()

    def attach(self, side, req, reused: bool):
        """Start an exchange for ``side``; the side writes the request with :meth:`send`."""
        self.side = side
        self.req = req
        self.reused = reused
        self._state = WAITING
        self.got_bytes = False
        self._done = False
        self._extra = False
        self._status = 0
        self._head_bytes = 0
        self._fields = 0
        if self._parser is None:
            # A fresh parser only when the last exchange left it mid-message
            # (a HEAD answer with a length); llhttp parses one response after another.
            self._parser = httptools.HttpResponseParser(self)

    def relayable(self, keep=frozenset()) -> list:
        """The response's (name, value) pairs a proxy may pass on (``keep``: names to keep anyway)."""
        drop = RESP_DROP - keep
        tokens = self.connection_tokens
        if tokens:
            drop = drop | (tokens - keep)
        return [(n, v) for n, v in self.headers if n.lower() not in drop]

    def send(self, data: bytes):
        """Raw bytes for the backend (a tunnel's, or a side's own framing)."""
        speedups.write(self.transport, data)

    # The request as the sides hand it over; the framing is the backend's
    # (HTTP/1.1 here, HTTP/2 for h2c targets: edge.http.backend_h2).

    def send_request(self, req, peer):
        """The request head, and the body bytes that arrived before this connection."""
        speedups.write(self.transport, request_bytes(req, peer))

    def send_body(self, req, data: bytes):
        """Request body bytes: chunked when the request is, else as they are."""
        if not data:
            return
        if req.chunked:
            speedups.write(self.transport, b"%x\r\n%s\r\n" % (len(data), data))
        else:
            speedups.write(self.transport, data)

    def end_body(self, req):
        """The request body is complete."""
        if req.chunked:
            self.transport.write(b"0\r\n\r\n")

    def _detach(self):
        side = self.side
        self.side = None
        self.req = None
        if self._reading_paused and self.connected:
            # Paused for that client's sake; the pool needs it reading (to see a close).
            self.resume_reading()
        if side is not None:
            side.backend_detached(self)

    def close_tunnel(self):
        self.side = None
        self._state = CLOSED
        try:
            self.transport.unregisterProducer()
        except Exception:
            pass
        self.transport.loseConnection()

    def abandon(self):
        """The client went away or timed out: this connection's state is unknown."""
        self.side = None
        self.req = None
        self._state = CLOSED
        if self.transport is not None:
            try:
                self.transport.unregisterProducer()
            except Exception:
                pass
            self.transport.abortConnection()

    # -- input -------------------------------------------------------------

    def dataReceived(self, data: bytes):
        side = self.side
        if side is None:
            # Unsolicited bytes on an idle connection: it cannot be trusted.
            self.abandon()
            return
        if self._state is TUNNEL:
            side.tunnel_data(data)
            return
        self.got_bytes = True
        side.touch()
        if self._state is WAITING:
            self._head_bytes += len(data)
            if self._head_bytes > self._max_head_bytes:
                self._fail(f"response head larger than {self._max_head_bytes} bytes"
                           f" (from {self.req.target_url})")
                return
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
        if self.side is None:
            return  # the side let go of us in a callback (its client is gone)
        if self._done:
            self._complete()
        else:
            side.flush()

    def _fail(self, cause: str):
        side, req = self.side, self.req
        head_sent = self.head_sent
        self.abandon()
        if side is not None and req is not None:
            side.backend_failed(req, cause, head_sent)

    # -- httptools callbacks ---------------------------------------------

    def on_message_begin(self):
        if self._state is RELAYING:
            self._extra = True
        self._informational = False
        self._reason = b""
        self.headers = []
        self.kept = []
        self.content_length = None
        self.chunked = False
        self.connection_tokens = None

    def on_status(self, reason: bytes):
        self._reason += reason

    def on_header(self, name: bytes, value: bytes):
        if self._state is RELAYING:
            return  # trailers: dropped
        self._fields += 1
        if self._fields > self._max_fields:
            raise _BadResponse(f"response head with more than {self._max_fields} fields")
        self.headers.append((name, value))
        if len(name) in _RESP_LENGTHS:
            lower = name.lower()
            if lower in RESP_DROP:
                if lower == b"content-length":
                    self.content_length = value
                elif lower == b"transfer-encoding":
                    self.chunked = True
                elif lower == b"connection":
                    single = value.strip().lower()
                    if single != b"keep-alive" and single != b"close":
                        tokens = {t.strip() for t in single.split(b",")} - {b"keep-alive", b"close", b""}
                        if tokens:
                            self.connection_tokens = (self.connection_tokens or set()) | tokens
                return
        self.kept += (name, b": ", value, b"\r\n")

    def on_headers_complete(self):
        if self._done or self._state is RELAYING:
            self._extra = True
            return
        parser = self._parser
        status = parser.get_status_code()
        if status < 100:
            raise _BadResponse(f"invalid response status {status}")
        if status < 200 and status != 101:
            self._informational = True
            self._fields = 0
            self._reason = b""
            return
        req = self.req
        if status == 101 and not req.upgrade:
            # Only an Upgrade request may be switched to a tunnel.
            raise _BadResponse("101 Switching Protocols to a request that asked for no upgrade")
        self._status = status
        self._keep_alive = parser.should_keep_alive()
        req.status = status
        self.status = status
        self.reason = self._reason or b"-"
        if self.connection_tokens:
            self.kept = None
        self._state = RELAYING
        no_body = self.side.response_head(req, self)
        if self.side is None:
            return
        if no_body and status != 101:
            self._done = True
            if req.method == b"HEAD":
                self._parser = None

    def on_body(self, data: bytes):
        side = self.side
        if self._done or side is None or self._state is not RELAYING:
            return  # (an interim response carries no body to relay)
        side.response_body(self.req, data)

    def on_message_complete(self):
        if self._informational:
            self._informational = False
            return
        if self._state is RELAYING:
            self._done = True

    # -- end of an exchange ----------------------------------------------

    def _complete(self, closed: bool = False):
        side, req = self.side, self.req
        reusable = (
            not closed
            and not self._extra
            and req.body_done
            and not req.upgrade
            and self._keep_alive
        )
        self._detach()
        req.conn = None
        if reusable:
            self._state = IDLE
            self._pool.put(self)
        else:
            self._state = CLOSED
            if not closed:
                try:
                    self.transport.unregisterProducer()
                except Exception:
                    pass
                self.transport.loseConnection()
        side.response_end(req)

    def _start_tunnel(self, rest: bytes):
        self._state = TUNNEL
        self.side.start_tunnel(self, self.req, rest)

    def connectionLost(self, reason=None):
        self.connected = False
        self._pool.forget(self)
        side, req = self.side, self.req
        state = self._state
        self._state = CLOSED
        if side is None:
            return
        if state is TUNNEL:
            self.side = None
            side.tunnel_closed()
            return
        if state is RELAYING and self.content_length is None and not self.chunked and not self._done:
            # A body delimited by the connection's end: this is its end.
            self._done = True
            self._complete(closed=True)
            return
        self.side = None
        self.req = None
        req.conn = None
        if (
            not self.got_bytes
            and self.reused
            and not req.retried
            and req.method in IDEMPOTENT
            and req.content_length in (None, 0)
            and not req.chunked
        ):
            # A pooled connection the backend had closed: try again on a fresh one.
            req.retried = True
            req.tried.clear()
            side.backend_detached(self)
            side.retry(req)
            return
        side.backend_detached(self)
        cause = reason.getErrorMessage() if reason is not None else "connection lost"
        side.backend_failed(req, f"{req.target_url} closed the connection: {cause}", state is RELAYING)
