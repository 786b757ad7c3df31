"""
A raw TCP backend for hostile-input tests: it records every byte it receives
and answers scripted responses.

Unlike the origin in ``tests/test_http_harness.py`` (llhttp, strict), this
one reads requests the way a simple backend does, *leniently*: the head ends
at the first blank line, ``Transfer-Encoding`` containing ``chunked`` wins,
else the first ``Content-Length`` counts.  That is what makes a proxy's
framing mistakes visible: if edge forwards a head whose framing disagrees
with the bytes it sends, this backend desynchronises exactly as a real one
would, and the test sees which requests it believed it got.

Separately, :func:`strict_requests` checks that bytes edge sent are what an
HTTP/1.1 *sender* may send (RFC 9112): one unambiguous framing per message,
no obs-fold, no bare CR or LF, no control bytes, nothing left over.

The server runs in a thread of the test process (loopback only) so tests can
read what each connection received directly.
"""

from __future__ import annotations

import re
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

__all__ = ["Request", "Connection", "RecordingBackend", "strict_requests", "FramingError", "ok"]


class FramingError(ValueError):
    """Bytes that no compliant HTTP/1.1 sender would produce."""


@dataclass
class Request:
    """One request as a backend read it."""

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]


@dataclass
class Connection:
    """What one accepted connection carried, and what the backend made of it."""

    received: bytearray = field(default_factory=bytearray)
    requests: list[Request] = field(default_factory=list)
    sent: bytearray = field(default_factory=bytearray)
    closed: bool = False
    error: str = ""


def ok(request: Request, name: str) -> bytes:
    """The default script: 200 naming the backend and the target it read."""
    body = f"backend={name} target={request.target}".encode("latin-1")
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_CHUNK_SIZE = re.compile(rb"^([0-9A-Fa-f]{1,16})(;[^\r\n]*)?$")


def _split_head(head: bytes, strict: bool) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    if strict:
        if b"\r" in head.replace(b"\r\n", b"") or b"\n" in head.replace(b"\r\n", b""):
            raise FramingError("bare CR or LF in the head")
        lines = head.split(b"\r\n")
    else:
        lines = head.replace(b"\r\n", b"\n").split(b"\n")
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        if strict:
            if line[:1] in (b" ", b"\t"):
                raise FramingError(f"obs-fold line {line!r}")
            name, sep, value = line.partition(b":")
            if not sep or not _TOKEN.match(name):
                raise FramingError(f"bad header line {line!r}")
            value = value.strip(b" \t")
            if any(c < 0x20 and c != 0x09 or c == 0x7F for c in value):
                raise FramingError(f"control byte in header value {line!r}")
        else:
            name, sep, value = line.partition(b":")
            if not sep:
                continue
            value = value.strip()
        headers.append((name, value))
    return lines[0], headers


def _read_request(buf: bytes, strict: bool, early: bool = False):
    """
    ``(request, consumed)`` for the first request in ``buf``, or ``None`` if
    it is not complete yet.  With ``early``, ``(request, head size, body)``
    once the head is complete, ``body`` being the body's length to skip or
    ``"chunked"``.
    """
    end = buf.find(b"\r\n\r\n")
    sep = 4
    if not strict:
        lf = buf.find(b"\n\n")
        if lf != -1 and (end == -1 or lf < end):
            end, sep = lf, 2
    if end == -1:
        return None
    head = buf[:end]
    line, raw_headers = _split_head(head, strict)
    parts = line.split(b" ")
    if strict:
        if len(parts) != 3 or not _TOKEN.match(parts[0]) or not re.match(rb"^HTTP/1\.[01]$", parts[2]):
            raise FramingError(f"bad request line {line!r}")
        if any(c <= 0x20 or c == 0x7F for c in parts[1]):
            raise FramingError(f"bad request target {parts[1]!r}")
    elif len(parts) < 3:
        parts += [b""] * (3 - len(parts))
    method, target, version = (p.decode("latin-1") for p in (parts[0], parts[1], parts[-1]))
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw_headers]
    request = Request(method, target, version, headers)
    te = [v for k, v in headers if k.lower() == "transfer-encoding"]
    cl = [v for k, v in headers if k.lower() == "content-length"]
    pos = end + sep
    if strict:
        if te and cl:
            raise FramingError("both Transfer-Encoding and Content-Length")
        if len(cl) > 1:
            raise FramingError(f"{len(cl)} Content-Length fields")
        if cl and not cl[0].isdigit():
            raise FramingError(f"Content-Length {cl[0]!r}")
        if te:
            codings = [c.strip().lower() for v in te for c in v.split(",")]
            if codings[-1] != "chunked" or codings.count("chunked") != 1:
                raise FramingError(f"Transfer-Encoding {te!r}")
    chunked = any("chunked" in v.lower() for v in te)
    if early:
        length = None if chunked else _lenient_length(cl)
        return request, pos, ("chunked" if chunked else length)
    if chunked:
        body = bytearray()
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol == -1:
                return None
            size_line = buf[pos:eol]
            m = _CHUNK_SIZE.match(size_line) if strict else re.match(rb"^\s*([0-9A-Fa-f]+)", size_line)
            if not m:
                raise FramingError(f"chunk size line {size_line!r}")
            size = int(m.group(1), 16)
            pos = eol + 2
            if size == 0:
                # trailers up to a blank line
                trailer_end = buf.find(b"\r\n", pos)
                while trailer_end not in (-1, pos):
                    pos = trailer_end + 2
                    trailer_end = buf.find(b"\r\n", pos)
                if trailer_end == -1:
                    return None
                pos += 2
                break
            if len(buf) < pos + size + 2:
                return None
            body += buf[pos : pos + size]
            if strict and buf[pos + size : pos + size + 2] != b"\r\n":
                raise FramingError("chunk data not followed by CRLF")
            pos += size + 2
        request.body = bytes(body)
        return request, pos
    length = _lenient_length(cl)
    if len(buf) < pos + length:
        return None
    request.body = bytes(buf[pos : pos + length])
    return request, pos + length


def _lenient_length(cl: list[str]) -> int:
    if not cl:
        return 0
    m = re.match(r"^\s*(\d+)", cl[0])
    return int(m.group(1)) if m else 0


def strict_requests(data: bytes, partial_tail: bool = False) -> list[Request]:
    """
    Parse ``data`` as a compliant sender's stream of complete requests.

    Raises :class:`FramingError` on anything RFC 9112 forbids a sender to
    send, or on bytes left over after the last complete request (unless
    ``partial_tail``: the last request may still be on its way).
    """
    out = []
    buf = bytes(data)
    while buf:
        got = _read_request(buf, strict=True)
        if got is None:
            if partial_tail:
                break
            raise FramingError(f"incomplete request at the end: {buf[:200]!r}")
        request, used = got
        out.append(request)
        buf = buf[used:]
    return out


class RecordingBackend:
    """
    A threaded loopback backend that records bytes and answers a script.

    ``script(request, connection)`` returns the response bytes (or ``None``
    for no answer); with ``answer_early`` it is called as soon as a head is
    complete, before the body is read, as many backends do -- the body is
    then skipped by its lenient framing, exactly as such a backend would.
    """

    def __init__(self, name: str = "backend", script: Callable | None = None, answer_early: bool = False):
        self.name = name
        self.script = script or (lambda request, conn: ok(request, name))
        self.answer_early = answer_early
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self.connections: list[Connection] = []
        self._lock = threading.Lock()
        self._pending: dict[socket.socket, tuple[Connection, bytearray, list]] = {}
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._iterations = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"recording-{name}", daemon=True)
        self._thread.start()

    # -- what tests read ------------------------------------------------------

    def snapshot(self) -> list[Connection]:
        """Copies of the connections so far (the thread keeps writing to its own)."""
        with self._lock:
            return [
                Connection(bytearray(c.received), list(c.requests), bytearray(c.sent), c.closed, c.error)
                for c in self.connections
            ]

    def settle(self) -> None:
        """
        Return once the loop has run twice more, so bytes already in the
        kernel's buffers (accepted, then read) are in the records.
        """
        with self._lock:
            start = self._iterations
        self._wake_w.send(b"x")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with self._lock:
                if self._iterations >= start + 3:
                    return
            self._wake_w.send(b"x")
            time.sleep(0.001)
        raise AssertionError(f"backend {self.name} loop is stuck")

    def all_requests(self) -> list[Request]:
        with self._lock:
            return [r for c in self.connections for r in c.requests]

    def reset(self) -> None:
        """Forget what was recorded (open connections keep being recorded afresh)."""
        with self._lock:
            for c in self.connections:
                c.received.clear()
                c.requests.clear()
                c.sent.clear()
            self.connections = [c for c in self.connections if not c.closed]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in list(self._pending):
            sock.close()
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()
        self._selector.close()

    # -- the loop ---------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(0.05):
                sock = key.fileobj
                if sock is self._listener:
                    self._accept()
                elif sock is self._wake_r:
                    try:
                        sock.recv(4096)
                    except BlockingIOError:
                        pass
                else:
                    self._read(sock)
            with self._lock:
                self._iterations += 1

    def _accept(self) -> None:
        try:
            sock, _ = self._listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(True)
        sock.settimeout(5)
        conn = Connection()
        with self._lock:
            self.connections.append(conn)
        # per connection: (record, unparsed bytes, [body bytes still to skip])
        self._pending[sock] = (conn, bytearray(), [0])
        self._selector.register(sock, selectors.EVENT_READ)

    def _read(self, sock: socket.socket) -> None:
        conn, buf, skip = self._pending[sock]
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop(sock, conn)
            return
        with self._lock:
            conn.received += data
        buf += data
        try:
            self._serve(sock, conn, buf, skip)
        except (FramingError, OSError) as e:
            with self._lock:
                conn.error = str(e)
            self._send(sock, conn, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self._drop(sock, conn)

    def _serve(self, sock, conn: Connection, buf: bytearray, skip: list) -> None:
        while True:
            if skip[0]:
                n = min(skip[0], len(buf))
                del buf[:n]
                skip[0] -= n
                if skip[0]:
                    return
            if self.answer_early:
                got = _read_request(bytes(buf), strict=False, early=True)
                if got is None:
                    return
                request, used, body = got
                del buf[:used]
                if body == "chunked":
                    # Rare for these tests: read the chunked body before answering.
                    raise FramingError("answer_early backend does not take chunked bodies")
                skip[0] = body
            else:
                got = _read_request(bytes(buf), strict=False)
                if got is None:
                    return
                request, used = got
                del buf[:used]
            with self._lock:
                conn.requests.append(request)
            response = self.script(request, conn)
            if response:
                self._send(sock, conn, response)
            if response is None or b"connection: close" in response.lower():
                self._drop(sock, conn)
                return

    def _send(self, sock, conn: Connection, data: bytes) -> None:
        try:
            sock.sendall(data)
        except OSError:
            return
        with self._lock:
            conn.sent += data

    def _drop(self, sock, conn: Connection) -> None:
        if sock in self._pending:
            del self._pending[sock]
            self._selector.unregister(sock)
            sock.close()
        with self._lock:
            conn.closed = True
