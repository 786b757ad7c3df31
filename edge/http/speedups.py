"""
Speed-ups that lean on private internals of Twisted, in one place.

Each one is behind a switch (``[http] speedups``, on by default) and was
checked against the versions in :data:`CHECKED`; :func:`missing` names the
private attributes a speed-up needs that the installed packages no longer
have, and a test fails when that list is not empty.  With a switch off the
stock, public code path runs.

``direct_send``
    :func:`write` sends on the socket at once when a plain TCP transport has
    nothing queued.  Twisted queues every write until the next reactor turn,
    which costs two ``epoll_ctl`` calls and a dispatch per write; on the
    proxy's hot path that is a large share of the CPU per request.  Needs
    ``tcp.Connection``'s ``socket``, ``_tempDataBuffer``, ``dataBuffer``,
    ``offset`` and ``_writeDisconnected``.
``quiet_hpack``
    hpack calls ``logging.debug`` for every header it encodes or decodes
    (about 28 calls per proxied HTTP/2 request, each a level check);
    :func:`configure` points its module-level ``log`` at a logger whose
    ``debug`` does nothing.  Needs ``hpack.hpack.log``.
``lean_dispatch``
    :func:`lean_dispatch` dispatches epoll events of edge's own plain-TCP
    HTTP connections without ``log.callWithLogger`` (a ``logPrefix()`` call,
    a context dict pushed and a thread-local lookup, ~4 us per event, two
    events per proxied request).  That context only labels legacy
    ``twisted.python.log`` lines; edge logs through ``twisted.logger``.
    Needs ``EPollReactor``'s ``_poller``, ``_selectables`` and ``_doReadOrWrite``.

``quiet_frames``
    ``h2`` builds ``repr(frame)`` of every frame it receives for a trace
    call that logs nothing (the argument is made before the call): flags,
    priority and a hex dump of the header block, about 3% of a small
    request.  :func:`configure` gives ``hyperframe``'s ``Frame`` a
    ``__repr__`` that names the class and stream only.  Needs
    ``hyperframe.frame.Frame.__repr__`` (its own, not inherited).

``h2_data``
    :func:`h2_data_frames` frames an HTTP/2 response body of 16 KiB or more
    as DATA frames itself and does ``h2``'s bookkeeping for them (the
    connection's and the stream's state machines, both send windows), so
    the bytes are joined once for the TLS write instead of being copied
    five times by ``h2``/``hyperframe`` per frame (frame body, frame, batch,
    output buffer, ``data_to_send``), with two objects per frame.  Needs
    ``H2Connection``'s ``streams``, ``state_machine`` and
    ``outbound_flow_control_window``, the stream's ``state_machine`` and
    ``outbound_flow_control_window``, ``ConnectionInputs.SEND_DATA`` and
    ``StreamInputs.SEND_DATA``/``SEND_END_STREAM``.
``h2_hpack``
    :func:`h2_connection` gives each of edge's server ``H2Connection`` edge's
    HPACK encoder (:mod:`edge.http.hpackenc`: dict look-ups, no Huffman, no
    per-field logging) in place of ``hpack.Encoder``, and a decoder
    (:mod:`edge.http.hpackdec`) that looks a block of one-byte indexed fields
    (a repeated request) up in ``hpack``'s table itself and hands any other
    block to ``hpack.Decoder.decode`` (and keeps the last such block's fields
    for a byte-for-byte repeat).  Needs ``h2`` to encode through
    ``H2Connection.encoder`` (``encode``, ``header_table_size``) and decode
    through ``H2Connection.decoder``, ``hpack.table.HeaderTable.STATIC_TABLE``
    and ``get_by_index``, ``hpack.Decoder``'s ``header_table``,
    ``max_header_list_size``, ``max_allowed_table_size``,
    ``_assert_valid_table_size`` and ``header_table.maxsize``.
``h2_headers``
    :func:`h2_queue_headers` and :func:`h2_data_frames` with ``queue=True``
    put a response's HEADERS (CONTINUATION past the peer's frame size) and
    its small DATA frames straight into ``h2``'s output buffer with the same
    state-machine and window bookkeeping as ``send_headers``/``send_data``,
    without their per-call header re-encoding to bytes, informational-status
    scan, validation flags and frame objects.  Needs what ``h2_data`` needs,
    ``H2Connection._data_to_send`` (a bytearray), ``encoder`` and
    ``ConnectionInputs.SEND_HEADERS``/``StreamInputs.SEND_HEADERS``.
``openssl_direct``
    The TLS transport (:mod:`edge.tls.sni`) calls OpenSSL through
    pyOpenSSL's private ``_util`` binding (no exception per empty read, one
    shared read buffer) and sends straight to the socket; off, it runs
    Twisted's ``TLSMemoryBIOProtocol`` methods.  Needs ``OpenSSL._util``'s
    ``ffi``/``lib`` and the ``lib`` functions :func:`missing` lists.
"""

from __future__ import annotations

import errno

from twisted.internet import tcp

__all__ = ["write", "lean_dispatch", "configure", "missing", "CHECKED", "enabled"]

# Versions these speed-ups were read against: newer ones switch them off (configure).
CHECKED = {"Twisted": "26.10.0", "pyOpenSSL": "26.4.0", "hpack": "4.2.0", "h2": "4.4.1", "hyperframe": "6.1.0"}

# Only these take the direct-send shortcut: wrappers (TLS, PROXY protocol)
# forward attribute lookups to the TCP transport underneath, so duck typing
# would send plaintext past TLS.
_PLAIN_TCP = frozenset({tcp.Server, tcp.Client})

_switches = {"direct_send": True, "lean_dispatch": True, "quiet_hpack": True, "openssl_direct": True,
             "h2_data": True, "h2_hpack": True, "h2_headers": True, "quiet_frames": True}


class _QuietLog:
    """hpack's logger without its per-header debug calls."""

    def __init__(self, log):
        self._log = log

    def debug(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        return getattr(self._log, name)


def _quiet_hpack(on: bool) -> None:
    import hpack.hpack

    log = hpack.hpack.log
    if on and not isinstance(log, _QuietLog):
        hpack.hpack.log = _QuietLog(log)
    elif not on and isinstance(log, _QuietLog):
        hpack.hpack.log = log._log


_FRAME_REPR = None  # hyperframe's own Frame.__repr__, while quiet_frames replaces it


def _short_frame_repr(frame) -> str:
    return f"{frame.__class__.__name__}(stream_id={frame.stream_id})"


def _quiet_frames(on: bool) -> None:
    global _FRAME_REPR
    from hyperframe.frame import Frame

    if on and Frame.__repr__ is not _short_frame_repr:
        _FRAME_REPR = Frame.__repr__
        Frame.__repr__ = _short_frame_repr
    elif not on and Frame.__repr__ is _short_frame_repr:
        Frame.__repr__ = _FRAME_REPR


def enabled(name: str) -> bool:
    return _switches[name]


def _unchecked() -> list[str]:
    """Packages installed in a newer version than the speed-ups were checked against."""
    from importlib.metadata import PackageNotFoundError, version

    newer = []
    for package, checked in CHECKED.items():
        try:
            installed = version(package)
        except PackageNotFoundError:
            continue
        if _release(installed) > _release(checked):
            newer.append(f"{package} {installed} (checked: {checked})")
    return newer


def _release(text: str) -> tuple:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def configure(on: bool) -> None:
    """
    Turn every speed-up on or off (``[http] speedups``); call before serving.

    They stay off whatever ``on`` says when ``EDGE_SPEEDUPS=off`` is in the
    environment (CI runs the suite that way once), when a package is newer
    than the version they were checked against (:data:`CHECKED`, an upper
    bound), or when a private name they need is gone (:func:`missing`).
    """
    global write
    import os

    if on and os.environ.get("EDGE_SPEEDUPS", "").lower() in ("off", "0", "false", "no"):
        on = False
    if on:
        problems = _unchecked() + missing()
        if problems:
            from twisted.logger import Logger

            Logger(namespace="edge.http.speedups").warn(
                "Speed-ups off: {problems}", problems="; ".join(problems))
            on = False
    for name in _switches:
        _switches[name] = on
    write = _direct_write if on else _plain_write
    _quiet_hpack(on)
    _quiet_frames(on)


def _plain_write(transport, data: bytes) -> None:
    transport.write(data)


def _direct_write(transport, data: bytes) -> None:
    """``transport.write``, but send at once when a plain TCP transport has nothing queued."""
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


write = _direct_write


def lean_dispatch(reactor, protocols) -> bool:
    """
    Dispatch epoll events of plain-TCP connections whose protocol is one of ``protocols``
    straight to the reactor's ``_doReadOrWrite`` (which still turns errors
    into a logged disconnect); every other selectable (listening ports,
    TLS, DNS, the Docker client) is dispatched exactly as before.

    Installed only when switched on and on an unmodified ``EPollReactor``;
    returns whether it was.
    """
    if not _switches["lean_dispatch"]:
        return False
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:  # not Linux
        return False
    if not isinstance(reactor, EPollReactor) or type(reactor).doIteration is not EPollReactor.doPoll:
        return False
    if "doIteration" in vars(reactor):
        return False
    from twisted.logger import Logger
    from twisted.python.log import callWithLogger

    log = Logger(namespace="edge.http.speedups")
    poller = reactor._poller
    selectables = reactor._selectables
    drdw = reactor._doReadOrWrite
    plain = _PLAIN_TCP
    ours = frozenset(protocols)

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


def h2_connection(h2c) -> None:
    """Switch-dependent set-up of a new server ``H2Connection`` (before it encodes anything)."""
    if _switches["h2_hpack"]:
        from edge.http.hpackdec import Decoder
        from edge.http.hpackenc import Encoder

        h2c.encoder = Encoder(h2c.encoder.header_table_size)
        stock = h2c.decoder
        decoder = Decoder(stock.max_header_list_size)
        decoder.max_allowed_table_size = stock.max_allowed_table_size
        h2c.decoder = decoder


_DATA_HEADER = __import__("struct").Struct(">HBBBL")
# (Imported here, not per call: these run once per response.)
from h2.connection import ConnectionInputs  # noqa: E402
from h2.exceptions import StreamClosedError  # noqa: E402
from h2.stream import StreamInputs  # noqa: E402


def h2_queue_headers(h2c, stream_id: int, headers, end_stream: bool) -> bool:
    """
    Queue a final response head (status 200 or more) as ``h2c.send_headers``
    would; False (nothing done) when the stream is not open, so the caller
    lets ``h2`` raise its error.
    """
    stream = h2c.streams.get(stream_id)
    if stream is None:
        return False
    h2c.state_machine.process_input(ConnectionInputs.SEND_HEADERS)
    stream.state_machine.process_input(StreamInputs.SEND_HEADERS)
    block = h2c.encoder.encode(headers)
    if end_stream:
        stream.state_machine.process_input(StreamInputs.SEND_END_STREAM)
    size = h2c.max_outbound_frame_size
    buf = h2c._data_to_send
    pack = _DATA_HEADER.pack
    sid = stream_id & 0x7FFFFFFF
    total = len(block)
    kind, flags = 0x1, 0x1 if end_stream else 0  # HEADERS, then CONTINUATION
    for start in range(0, total or 1, size):
        piece = block[start:start + size]
        n = len(piece)
        buf += pack(n >> 8, n & 0xFF, kind, flags | (0x4 if start + size >= total else 0), sid)
        buf += piece
        kind, flags = 0x9, 0
    return True


def h2_data_frames(h2c, stream_id: int, data, end_stream: bool, queue: bool = False) -> list | None:
    """
    What ``h2c.send_data`` would queue for ``data`` cut into frames of the
    peer's ``max_outbound_frame_size``, as a list of frame headers and
    payload views for one ``writeSequence`` (the caller wrote what ``h2``
    had queued first), or with ``queue`` appended to ``h2``'s own output
    buffer; ``h2``'s state and windows are updated as its ``send_data``
    does.  The caller checked ``data`` fits the stream's window
    (``local_flow_control_window``).  Raises ``h2``'s errors for a closed
    stream or connection before anything changes.
    """
    stream = h2c.streams.get(stream_id)
    if stream is None:
        raise StreamClosedError(stream_id)
    total = len(data)
    h2c.state_machine.process_input(ConnectionInputs.SEND_DATA)
    stream.state_machine.process_input(StreamInputs.SEND_DATA)
    if end_stream:
        stream.state_machine.process_input(StreamInputs.SEND_END_STREAM)
    stream.outbound_flow_control_window -= total
    h2c.outbound_flow_control_window -= total
    size = h2c.max_outbound_frame_size
    sid = stream_id & 0x7FFFFFFF
    pack = _DATA_HEADER.pack
    if queue:
        buf = h2c._data_to_send
        for start in range(0, total or 1, size):
            n = min(size, total - start)
            buf += pack(n >> 8, n & 0xFF, 0, 0x1 if end_stream and start + n == total else 0, sid)
            buf += data[start:start + n]
        return None
    view = data if data.__class__ is memoryview else memoryview(data)
    pieces = []
    for start in range(0, total, size):
        n = min(size, total - start)
        flags = 0x1 if end_stream and start + n == total else 0
        pieces.append(pack(n >> 8, n & 0xFF, 0, flags, sid))
        pieces.append(view[start:start + n])
    return pieces


def missing() -> list[str]:
    """Private names the speed-ups need that the installed packages lack."""
    import socket

    gone = []
    a, b = socket.socketpair()
    try:
        conn = tcp.Connection(a, None)
        for name in ("socket", "_tempDataBuffer", "dataBuffer", "offset", "_writeDisconnected",
                     "connected", "disconnecting"):
            if not hasattr(conn, name):
                gone.append(f"twisted.internet.tcp.Connection.{name}")
    finally:
        a.close()
        b.close()
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:
        EPollReactor = None
    if EPollReactor is not None:
        reactor = EPollReactor()
        try:
            for name in ("_poller", "_selectables", "_doReadOrWrite", "doPoll"):
                if not hasattr(reactor, name):
                    gone.append(f"twisted.internet.epollreactor.EPollReactor.{name}")
        finally:
            reactor._poller.close()
            for fd in (reactor.waker.i, reactor.waker.o) if hasattr(reactor.waker, "i") else ():
                try:
                    import os

                    os.close(fd)
                except OSError:
                    pass
    try:
        from OpenSSL import _util

        for name in ("ffi", "lib"):
            if not hasattr(_util, name):
                gone.append(f"OpenSSL._util.{name}")
        for name in ("SSL_read", "SSL_write", "SSL_do_handshake", "SSL_get_error", "BIO_read", "BIO_write"):
            if not hasattr(_util.lib, name):
                gone.append(f"OpenSSL._util.lib.{name}")
    except ImportError:
        gone.append("OpenSSL._util")
    import hpack.hpack
    import hyperframe.frame

    if "__repr__" not in vars(hyperframe.frame.Frame):
        gone.append("hyperframe.frame.Frame.__repr__")
    if not hasattr(hpack.hpack, "log"):
        gone.append("hpack.hpack.log")
    gone += _missing_h2()
    return gone


def _missing_h2() -> list[str]:
    import h2.config
    import h2.connection
    import h2.stream

    gone = []
    for owner, names in ((h2.connection.ConnectionInputs, ("SEND_DATA", "SEND_HEADERS")),
                         (h2.stream.StreamInputs, ("SEND_DATA", "SEND_END_STREAM", "SEND_HEADERS"))):
        for name in names:
            if not hasattr(owner, name):
                gone.append(f"{owner.__module__}.{owner.__name__}.{name}")
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    for name in ("encode", "header_table_size"):
        if not hasattr(getattr(conn, "encoder", None), name):
            gone.append(f"h2.connection.H2Connection.encoder.{name}")
    import hpack.table

    for name in ("STATIC_TABLE", "get_by_index"):
        if not hasattr(hpack.table.HeaderTable, name):
            gone.append(f"hpack.table.HeaderTable.{name}")
    decoder = getattr(conn, "decoder", None)
    for name in ("header_table", "max_header_list_size", "max_allowed_table_size", "_assert_valid_table_size"):
        if not hasattr(decoder, name):
            gone.append(f"h2.connection.H2Connection.decoder.{name}")
    if not hasattr(getattr(decoder, "header_table", None), "maxsize"):
        gone.append("h2.connection.H2Connection.decoder.header_table.maxsize")
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":path", "/"), (":scheme", "https"), (":authority", "a")])
    for name in ("streams", "state_machine", "outbound_flow_control_window", "encoder"):
        if not hasattr(conn, name):
            gone.append(f"h2.connection.H2Connection.{name}")
    if not isinstance(getattr(conn, "_data_to_send", None), bytearray):
        gone.append("h2.connection.H2Connection._data_to_send (a bytearray)")
    stream = getattr(conn, "streams", {}).get(1)
    for name in ("state_machine", "outbound_flow_control_window"):
        if not hasattr(stream, name):
            gone.append(f"h2.stream.H2Stream.{name}")
    return gone
