"""
Known HTTP/2 attacks through a REAL edge process over TLS (issue 9, item 14).

edge runs as in ``tests/test_http_h2_e2e.py`` (:func:`tls_edge`) in front of
a :class:`~tests.recording_backend.RecordingBackend`, so the tests see every
byte edge forwarded.  The attack clients are plain ``ssl`` sockets with ALPN
h2 writing hand-built frames (a 9-byte header and a payload; HPACK by the
``hpack`` package or by hand) where a conforming library would refuse to
send the malformed thing.  The in-memory versions of several attacks are in
``tests/test_http_h2.py``; these prove the same against the real process.

After each attack (:func:`attack`): edge is alive, another client (curl
--http2) is answered 200, edge's RSS grew less than :data:`RSS_BOUND_KIB`,
and edge's CPU seconds for the attack are printed as a ``FIGURE`` line (not
asserted: no timed assertions).  Each attack is bounded in frames and in
time (socket timeouts); a send that blocks because edge stopped reading is
the evidence of back-pressure.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import struct
import threading
import time
from contextlib import contextmanager

import hpack
import pytest

from edge.snapshot import Target
from edge.http import http2
from edge.http.hpackenc import _int  # an HPACK integer (RFC 7541 5.1), checked by test_speedups
from tests.recording_backend import RecordingBackend, ok, strict_requests
from tests.swarmkit import wait_for
from tests.test_http_h2_e2e import _curl, tls_edge

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")

RSS_BOUND_KIB = 32 * 1024

DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
PROTOCOL_ERROR, FLOW_CONTROL_ERROR, CANCEL, ENHANCE_YOUR_CALM = 0x1, 0x3, 0x8, 0xB
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
INJECTED = (b"/admin", b"injected", b"evil", b"transfer-encoding", b"GET /x2")


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", sid) + payload




def literal(name: bytes, value: bytes, indexing: bool = False) -> bytes:
    """A literal field with a literal name, raw (no Huffman, no validation)."""
    first = 0x40 if indexing else 0x00
    return bytes([first]) + _int(len(name), 7) + name + _int(len(value), 7) + value


def request_block(path: bytes = b"/x", method: bytes = b"GET", extra: bytes = b"") -> bytes:
    return (literal(b":method", method) + literal(b":scheme", b"https") + literal(b":path", path)
            + literal(b":authority", b"web.test") + extra)


class Client:
    """One attack connection: TLS with ALPN h2, the preface, SETTINGS (and ACK of edge's)."""

    def __init__(self, edge, settings: bytes = b"", timeout: float = 5.0, small_buffers: bool = False):
        ctx = ssl.create_default_context(cafile=edge.root)
        ctx.set_alpn_protocols(["h2"])
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if small_buffers:  # so a client that does not read fills edge's output soon
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        raw.settimeout(timeout)
        raw.connect(("127.0.0.1", edge.https_port))
        self.sock = ctx.wrap_socket(raw, server_hostname="web.test")
        assert self.sock.selected_alpn_protocol() == "h2"
        self.buf = b""
        self.closed = False
        self.blocked = False  # a send timed out: edge stopped reading us
        self.sent = 0
        self.send(PREFACE + frame(SETTINGS, 0, 0, settings) + frame(SETTINGS, ACK, 0))

    def send(self, data: bytes) -> bool:
        """Send; False if edge closed or stopped reading (timeout)."""
        try:
            self.sock.sendall(data)
        except (socket.timeout, TimeoutError):
            self.blocked = True
            return False
        except (OSError, ssl.SSLError):
            return False
        self.sent += len(data)
        return True

    def frames(self, until=lambda f: False, timeout: float = 5.0) -> list[tuple[int, int, int, bytes]]:
        """Frames read until ``until(frame)``, the connection's end or ``timeout``."""
        got = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while len(self.buf) >= 9:
                length = int.from_bytes(self.buf[:3], "big")
                if len(self.buf) < 9 + length:
                    break
                f = (self.buf[3], self.buf[4], int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF,
                     self.buf[9:9 + length])
                self.buf = self.buf[9 + length:]
                got.append(f)
                if until(f):
                    return got
            if self.closed:
                return got
            try:
                self.sock.settimeout(max(0.05, deadline - time.monotonic()))
                data = self.sock.recv(65536)
            except (socket.timeout, TimeoutError):
                return got
            except (OSError, ssl.SSLError):
                data = b""
            if not data:
                self.closed = True
            self.buf += data
        return got

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def goaway_code(frames) -> int | None:
    codes = [int.from_bytes(p[4:8], "big") for t, _, _, p in frames if t == GOAWAY]
    return codes[0] if codes else None


def resets(frames) -> dict[int, int]:
    return {sid: int.from_bytes(p[:4], "big") for t, _, sid, p in frames if t == RST_STREAM}


def status_of(frames, sid: int = 1) -> str | None:
    """The :status of edge's first response head on ``sid`` (edge's first header block)."""
    for t, _, s, p in frames:
        if t == HEADERS and s == sid:
            return dict(hpack.Decoder().decode(p)).get(":status")
    return None


def refused(c: "Client", frames, sid: int = 1) -> bool:
    """edge refused the request: a connection error, a stream reset or a 4xx answer."""
    status = status_of(frames, sid)
    return (goaway_code(frames) is not None or sid in resets(frames) or c.closed
            or status is not None and status.startswith("4"))


def _status(vm: str, pid: int) -> int:
    for line in open(f"/proc/{pid}/status").read().splitlines():
        if line.startswith(vm + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {vm}")


def _cpu(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Rig:
    def __init__(self, edge, backend):
        self.edge, self.backend = edge, backend
        self.note = ""

    def attack_requests(self):
        """What the backend read during the attack (the check request excluded)."""
        self.backend.settle()
        return [r for r in self.backend.all_requests() if not r.target.startswith("/served")]


@contextmanager
def attack(edge, backend, name: str):
    """Measure one attack; afterwards edge is alive, serves others, and its RSS is bounded."""
    pid = edge.process.pid
    backend.settle()
    backend.reset()
    rss, cpu = _status("VmRSS", pid), _cpu(pid)
    rig = _Rig(edge, backend)
    yield rig
    grown = _status("VmRSS", pid) - rss
    spent = _cpu(pid) - cpu
    print(f"\nFIGURE {name}: {rig.note}, edge CPU {spent:.2f} s, RSS {grown / 1024:+.1f} MiB")
    assert edge.process.poll() is None, "edge died"
    assert grown < RSS_BOUND_KIB, f"RSS grew by {grown} KiB"
    path = "/served-" + name.replace(" ", "-")
    done = _curl(edge, "-w", " %{http_code} %{http_version}", path=path, timeout=20)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"backend={backend.name} target={path} 200 2".encode(), done.stdout
    backend.settle()
    # Whatever edge sent the backend is strictly framed HTTP/1.1 (nothing hidden in it).
    for conn in backend.snapshot():
        strict_requests(bytes(conn.received), partial_tail=True)


def _script(request, conn):
    if request.target.startswith("/hold"):
        return b""  # no answer, connection kept: the stream stays open
    return ok(request, "h2b")


class _Stderr:
    """Drains edge's log (stderr) so a chatty attack cannot block it on a full pipe."""

    def __init__(self, process):
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._run, args=(process.stderr,), daemon=True)
        self._t.start()

    def _run(self, stream):
        for line in stream:
            self.lines.append(line)
            del self.lines[:-5000]


@pytest.fixture(scope="module")
def backend():
    b = RecordingBackend("h2b", _script)
    yield b
    b.close()


@pytest.fixture(scope="module")
def edge(backend, tmp_path_factory):
    e = tls_edge(tmp_path_factory.mktemp("h2hostile"), [Target("h2b", "127.0.0.1", backend.port)])
    e.log = _Stderr(e.process)
    _curl(e, path="/served-warm-up")  # warm up before the first baseline
    yield e
    e.stop()


def _no_injection(requests):
    for r in requests:
        flat = (r.target + " " + " ".join(f"{k}: {v}" for k, v in r.headers)).lower().encode()
        for bad in INJECTED:
            assert bad.lower() not in flat, (bad, r)


# -- resets, frames and floods --------------------------------------------------------


def test_rapid_reset_is_cut_off_and_backend_work_stays_bounded(edge, backend):
    with attack(edge, backend, "rapid reset") as rig:
        c = Client(edge)
        enc_block = request_block(b"/rr")
        sent = 0
        for batch in range(50):  # 5,000 HEADERS + RST_STREAM(CANCEL) at most
            data = b"".join(frame(HEADERS, END_STREAM | END_HEADERS, 2 * i + 1, enc_block)
                            + frame(RST_STREAM, 0, 2 * i + 1, struct.pack(">I", CANCEL))
                            for i in range(batch * 100, batch * 100 + 100))
            if not c.send(data):
                break
            sent += 100
        got = c.frames(until=lambda f: f[0] == GOAWAY)
        c.close()
        reached = rig.attack_requests()
        cut = wait_for(lambda: [x for x in edge.log.lines if "streams reset before their answer" in x],
                       5, "edge's log line on the cut-off")
        rig.note = (f"{sent} streams written, GOAWAY {goaway_code(got)}, {len(reached)} reached the backend; "
                    f"edge: {cut[-1].split(': ', 1)[-1].strip()}")
        assert goaway_code(got) == ENHANCE_YOUR_CALM, got[-3:]
        assert len(reached) <= http2.RESET_LIMIT + http2.MAX_CONCURRENT_STREAMS, len(reached)
        assert all(r.target == "/rr" for r in reached)


def test_continuation_flood_is_cut_off(edge, backend):
    with attack(edge, backend, "CONTINUATION flood") as rig:
        c = Client(edge)
        block = request_block(b"/cont")
        c.send(frame(HEADERS, 0, 1, block[:10]))  # no END_HEADERS: CONTINUATION must follow
        count = 0
        for _ in range(20):  # up to 10,000 empty CONTINUATION frames (the CVE-2024-27316 shape)
            if not c.send(frame(CONTINUATION, 0, 1) * 500):
                break
            count += 500
        got = c.frames(until=lambda f: f[0] == GOAWAY)
        c.close()
        rig.note = f"{count} empty CONTINUATION frames written, GOAWAY {goaway_code(got)}"
        assert goaway_code(got) == PROTOCOL_ERROR, got
        assert rig.attack_requests() == []


def test_hpack_bomb_never_reaches_the_backend(edge, backend):
    with attack(edge, backend, "HPACK bomb") as rig:
        c = Client(edge)
        # One 4,000-byte value into the dynamic table, then 1-byte references to it (index 62).
        refs = 12000
        block = request_block(b"/bomb") + literal(b"x-bomb", b"b" * 4000, indexing=True) + b"\xbe" * refs
        c.send(frame(HEADERS, END_STREAM | END_HEADERS, 1, block))
        got = c.frames(until=lambda f: f[0] == GOAWAY or f[0] == RST_STREAM or f[0] == HEADERS)
        c.close()
        rig.note = (f"{len(block)} bytes of HPACK decoding to {refs * 4006 >> 20} MiB, "
                    f"GOAWAY {goaway_code(got)}, status {status_of(got)}")
        assert refused(c, got), got
        assert rig.attack_requests() == []


def test_oversized_header_list_is_answered_431(edge, backend):
    with attack(edge, backend, "oversized header list") as rig:
        c = Client(edge)
        block = request_block(b"/big-head") + b"".join(
            literal(b"x-h%d" % i, b"v" * 4000) for i in range(25))  # ~100 KB > 64 KiB + 8 KiB
        chunks = [block[i:i + 16384] for i in range(0, len(block), 16384)]
        data = frame(HEADERS, END_STREAM, 1, chunks[0])
        for i, chunk in enumerate(chunks[1:], 1):
            data += frame(CONTINUATION, END_HEADERS if i == len(chunks) - 1 else 0, 1, chunk)
        c.send(data)
        got = c.frames(until=lambda f: f[0] == HEADERS or f[0] == GOAWAY)
        c.close()
        rig.note = f"{len(block)} bytes of header fields"
        assert status_of(got) == "431", got
        assert rig.attack_requests() == []


@pytest.mark.parametrize("kind", ["SETTINGS", "PING"])
def test_a_flood_from_a_client_that_does_not_read_is_not_read_either(edge, backend, kind):
    one = frame(SETTINGS, 0, 0) if kind == "SETTINGS" else frame(PING, 0, 0, b"12345678")
    with attack(edge, backend, f"{kind} flood, not read") as rig:
        cut_before = _cut_offs(edge)
        c = Client(edge, timeout=2.0, small_buffers=True)
        chunk = one * (65536 // len(one))
        for _ in range(64 * 16):  # up to 64 MiB of frames, never read
            if not c.send(chunk):
                break
        rig.note = (f"{c.sent >> 10} KiB of {kind} frames sent before edge "
                    + ("stopped reading" if c.blocked else "closed"))
        assert c.sent < 64 << 20, "edge read 64 MiB of frames from a client that reads nothing"
        if not c.blocked:
            # Not back-pressure: then edge spent the connection's control-frame budget and closed it.
            wait_for(lambda: _cut_offs(edge) > cut_before, 5, "edge's log line on the cut-off")
        c.close()


def _cut_offs(edge) -> int:
    return len([x for x in edge.log.lines if "control frames" in x and "closing" in x])


def _hold_stream(c: "Client", sid: int = 1) -> None:
    """A POST whose body never ends: the stream stays open for DATA frames."""
    c.send(frame(HEADERS, END_HEADERS, sid, request_block(b"/hold", b"POST")))


# Frames a client can send without end that carry no request and no answer (RFC 9113
# 10.5; CVE-2019-9512 ping, -9515 settings, -9518 empty frames, ...).  Each case:
# (what to send first, one flood frame).
_CONTROL_FLOODS = {
    "SETTINGS": (None, frame(SETTINGS, 0, 0, struct.pack(">HI", 0x3, 100))),
    "PING": (None, frame(PING, 0, 0, b"12345678")),
    "empty DATA": (_hold_stream, frame(DATA, 0, 1)),
    "WINDOW_UPDATE": (None, frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1))),
    "PRIORITY": (None, frame(2, 0, 3, struct.pack(">IB", 0, 15))),
    "RST_STREAM on a closed stream": (
        lambda c: c.send(frame(HEADERS, END_STREAM | END_HEADERS, 1, request_block(b"/done"))),
        frame(RST_STREAM, 0, 1, struct.pack(">I", CANCEL))),
}


@pytest.mark.parametrize("kind", list(_CONTROL_FLOODS))
def test_a_control_frame_flood_from_a_reading_client_gets_goaway_enhance_your_calm(edge, backend, kind):
    """A client that reads every answer (PING and SETTINGS ACKs) but floods: cut off by the budget."""
    first, one = _CONTROL_FLOODS[kind]
    with attack(edge, backend, f"{kind} flood") as rig:
        c = Client(edge)
        if first is not None:
            first(c)
            c.frames(until=lambda f: f[0] == DATA and f[1] & END_STREAM, timeout=2 if kind != "empty DATA" else 0.3)
        got = []
        sent = 0
        for _ in range(50):  # 50,000 frames at most, read as they are answered
            if not c.send(one * 1000):
                break
            sent += 1000
            got += c.frames(until=lambda f: f[0] == GOAWAY, timeout=0.05)
            if goaway_code(got) is not None or c.closed:
                break
        got += c.frames(until=lambda f: f[0] == GOAWAY, timeout=2)
        c.close()
        rig.note = f"{sent} {kind} frames written, GOAWAY {goaway_code(got)}"
        assert goaway_code(got) == ENHANCE_YOUR_CALM, (sent, got[-3:])
        assert sent <= 2 * http2.CONTROL_BUDGET + 1000
        line = wait_for(lambda: [x for x in edge.log.lines if "control frames" in x and "closing" in x],
                        5, "edge's log line on the cut-off")
        rig.note += f"; edge: {line[-1].split(': ', 1)[-1].strip()}"


def test_window_updates_then_overflow_is_a_flow_control_error(edge, backend):
    # (A flood of them is cut off sooner: test_a_control_frame_flood_from_a_reading_client...)
    with attack(edge, backend, "WINDOW_UPDATE overflow") as rig:
        c = Client(edge)
        n = http2.CONTROL_BUDGET // 2
        c.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1)) * n)
        c.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 0x7FFFFFFF)))
        got = c.frames(until=lambda f: f[0] == GOAWAY)
        c.close()
        rig.note = f"{n} WINDOW_UPDATE frames then one past 2^31-1"
        assert goaway_code(got) == FLOW_CONTROL_ERROR, got


def test_too_many_concurrent_streams_cost_no_more_backend_work(edge, backend):
    with attack(edge, backend, "too many streams") as rig:
        c = Client(edge)
        limit = http2.MAX_CONCURRENT_STREAMS
        n = 3 * limit
        streams = [frame(HEADERS, END_STREAM | END_HEADERS, 2 * i + 1, request_block(b"/hold")) for i in range(n)]
        c.send(b"".join(streams[:limit]))  # as many as edge allows, held open by the backend
        wait_for(lambda: len(rig.attack_requests()) == limit, 10, "the allowed streams at the backend")
        c.send(b"".join(streams[limit:]))
        got = c.frames(until=lambda f: f[0] == GOAWAY)
        rig.note = f"{limit} streams held open, then {n - limit} more"
        assert goaway_code(got) == PROTOCOL_ERROR or c.closed, got
        assert len(rig.attack_requests()) == limit  # no backend work past the limit
        c.close()
        # The held streams' backend connections are let go with the client.
        wait_for(lambda: all(x.closed for x in backend.snapshot() if x.requests
                             and x.requests[0].target == "/hold"), 10, "backend connections freed")


# -- HTTP/2 -> HTTP/1.1 downgrade smuggling -------------------------------------------

_DOWNGRADE = {
    "CR/LF in a value": literal(b"x-a", b"1\r\nGET /admin HTTP/1.1\r\nHost: evil"),
    "bare LF in a value": literal(b"x-a", b"1\nx-injected: 1"),
    "NUL in a value": literal(b"x-a", b"1\x00injected"),
    "control byte in a value": literal(b"x-a", b"1\x0binjected"),
    "colon in a name": literal(b"x-injected:evil", b"1"),
    "CR/LF in a name": literal(b"x-a\r\nx-injected", b"1"),
    "space in a name": literal(b"x-injected evil", b"1"),
    "transfer-encoding": literal(b"transfer-encoding", b"chunked"),
}


@pytest.mark.parametrize("case", list(_DOWNGRADE))
def test_downgrade_smuggling_in_header_fields_never_reaches_the_backend(edge, backend, case):
    with attack(edge, backend, f"downgrade {case}") as rig:
        c = Client(edge)
        c.send(frame(HEADERS, END_STREAM | END_HEADERS, 1, request_block(b"/smuggle", extra=_DOWNGRADE[case])))
        got = c.frames(until=lambda f: f[0] in (GOAWAY, RST_STREAM, HEADERS))
        c.close()
        rig.note = "1 request"
        reached = rig.attack_requests()
        _no_injection(reached)
        assert reached == [], reached
        assert refused(c, got), got


# Malformed requests (RFC 9113 8.2.1-8.3): a connection error, as h2's own inbound
# validation made them before edge took the check over (these pass on both).
_AUTH = literal(b":authority", b"web.test")
_MALFORMED = {
    "uppercase name": request_block(b"/m", extra=literal(b"X-Upper", b"1")),
    "empty name": request_block(b"/m", extra=literal(b"", b"1")),
    "name with a byte over 0x7f": request_block(b"/m", extra=literal(b"x-\xe9", b"1")),
    "value with a leading space": request_block(b"/m", extra=literal(b"x-a", b" 1")),
    "value with a trailing tab": request_block(b"/m", extra=literal(b"x-a", b"1\t")),
    "CR in :path": request_block(b"/m\rx"),
    "te: gzip": request_block(b"/m", extra=literal(b"te", b"gzip")),
    "connection": request_block(b"/m", extra=literal(b"connection", b"keep-alive")),
    "keep-alive": request_block(b"/m", extra=literal(b"keep-alive", b"5")),
    "proxy-connection": request_block(b"/m", extra=literal(b"proxy-connection", b"close")),
    "upgrade": request_block(b"/m", extra=literal(b"upgrade", b"h2c")),
    "pseudo after regular": request_block(b"/m", extra=literal(b"x-a", b"1") + literal(b":scheme", b"https")),
    "two :path": request_block(b"/m", extra=literal(b":path", b"/n")),
    ":status in a request": request_block(b"/m", extra=literal(b":status", b"200")),
    "unknown pseudo": request_block(b"/m", extra=literal(b":x", b"1")),
    "no :method": literal(b":scheme", b"https") + literal(b":path", b"/m") + _AUTH,
    "no :path": literal(b":method", b"GET") + literal(b":scheme", b"https") + _AUTH,
    "no :scheme": literal(b":method", b"GET") + literal(b":path", b"/m") + _AUTH,
    "empty :path": request_block(b""),
    "CONNECT with :path": request_block(b"/m", b"CONNECT"),
    ":protocol without CONNECT": request_block(b"/m", extra=literal(b":protocol", b"websocket")),
    "no :authority or host": literal(b":method", b"GET") + literal(b":scheme", b"https") + literal(b":path", b"/m"),
    "host differs from :authority": request_block(b"/m", extra=literal(b"host", b"admin.test")),
    "two host fields": (literal(b":method", b"GET") + literal(b":scheme", b"https") + literal(b":path", b"/m")
                        + literal(b"host", b"web.test") + literal(b"host", b"web.test")),
}


@pytest.mark.parametrize("case", list(_MALFORMED))
def test_a_malformed_request_is_a_connection_error_and_never_reaches_the_backend(edge, backend, case):
    with attack(edge, backend, f"malformed {case}") as rig:
        c = Client(edge)
        c.send(frame(HEADERS, END_STREAM | END_HEADERS, 1, _MALFORMED[case]))
        got = c.frames(until=lambda f: f[0] == GOAWAY)
        c.close()
        rig.note = "1 request"
        assert goaway_code(got) == PROTOCOL_ERROR, got
        assert rig.attack_requests() == []


@pytest.mark.parametrize("trailer", [literal(b":path", b"/x"), literal(b"X-Upper", b"1"),
                                     literal(b"x-a", b"1\r\nx-injected: 1"), literal(b"transfer-encoding", b"chunked")],
                         ids=["pseudo", "uppercase", "CR/LF", "connection-specific"])
def test_malformed_trailers_are_a_connection_error(edge, backend, trailer):
    with attack(edge, backend, "malformed trailers") as rig:
        c = Client(edge)
        c.send(frame(HEADERS, END_HEADERS, 1, request_block(b"/trailers", b"POST"))
               + frame(DATA, 0, 1, b"body") + frame(HEADERS, END_STREAM | END_HEADERS, 1, trailer))
        got = c.frames(until=lambda f: f[0] == GOAWAY)
        c.close()
        rig.note = "1 request with trailers"
        assert goaway_code(got) == PROTOCOL_ERROR, got
        _no_injection(rig.attack_requests())


_REQUEST_LINE = {
    "path CR/LF": (b"GET", b"/x HTTP/1.1\r\nx-injected: 1"),
    "path CR/LF request": (b"GET", b"/x\r\n\r\nGET /admin HTTP/1.1"),
    "path space": (b"GET", b"/x /admin"),
    "path tab": (b"GET", b"/x\tinjected"),
    "path DEL": (b"GET", b"/x\x7finjected"),
    "method space": (b"GET /admin", b"/x"),
    "method control byte": (b"GET\x0binjected", b"/x"),
}


@pytest.mark.parametrize("case", list(_REQUEST_LINE))
def test_a_request_line_with_cr_lf_space_or_controls_never_reaches_the_backend(edge, backend, case):
    """The request line is built from :method and :path: nothing may split or extend it."""
    method, path = _REQUEST_LINE[case]
    with attack(edge, backend, f"downgrade {case}") as rig:
        c = Client(edge)
        c.send(frame(HEADERS, END_STREAM | END_HEADERS, 1, request_block(path, method)))
        got = c.frames(until=lambda f: f[0] in (GOAWAY, RST_STREAM, HEADERS))
        c.close()
        rig.note = "1 request"
        assert rig.attack_requests() == []
        assert refused(c, got), got


@pytest.mark.parametrize("declared,frames_", [
    (5, [b"0123456789GET /x2 HTTP/1.1\r\n\r\n"]),  # longer than declared, one frame
    (40, [b"01234"]),  # shorter than declared
    (5, [b"01234", b"GET /x2 HTTP/1.1\r\nHost: web.test\r\n\r\n"]),  # exact, then more
], ids=["longer", "shorter", "exact-then-more"])
def test_content_length_disagreeing_with_data_is_never_forwarded_whole(edge, backend, declared, frames_):
    with attack(edge, backend, "content-length vs DATA") as rig:
        c = Client(edge)
        head = request_block(b"/cl", b"POST", literal(b"content-length", b"%d" % declared))
        data = frame(HEADERS, END_HEADERS, 1, head)
        for i, body in enumerate(frames_):
            data += frame(DATA, END_STREAM if i == len(frames_) - 1 else 0, 1, body)
        c.send(data)
        got = c.frames(until=lambda f: f[0] in (GOAWAY, RST_STREAM))
        c.close()
        rig.note = f"content-length {declared}, DATA {sum(map(len, frames_))} bytes"
        assert refused(c, got), got
        received = b"".join(bytes(x.received) for x in backend.snapshot())
        assert b"GET /x2" not in received  # the excess never reaches a backend
        reached = rig.attack_requests()
        _no_injection(reached)
        if len(frames_) == 1:
            assert reached == [], reached  # never a complete request to the backend


# -- zero-window stall ------------------------------------------------------------------


def test_zero_window_stall_is_reset_at_send_timeout_and_frees_the_backend(tmp_path):
    big = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (1 << 20) + b"z" * (1 << 20)
    stalled = RecordingBackend("h2z", lambda r, c: big if r.target == "/big" else ok(r, "h2z"))
    edge = tls_edge(tmp_path, [Target("h2z", "127.0.0.1", stalled.port)], extra="send_timeout = 1\n")
    edge.log = _Stderr(edge.process)
    try:
        with attack(edge, stalled, "zero-window stall") as rig:
            # SETTINGS_INITIAL_WINDOW_SIZE = 0: edge may send no DATA on any stream.
            c = Client(edge, settings=struct.pack(">HI", 0x4, 0))
            c.send(frame(HEADERS, END_STREAM | END_HEADERS, 1, request_block(b"/big")))
            got = c.frames(until=lambda f: f[0] == RST_STREAM, timeout=15)
            rig.note = "1 MiB response to a window of 0"
            assert resets(got).get(1) == CANCEL, got
            assert not [f for f in got if f[0] == DATA and f[3]]
            wait_for(lambda: all(x.closed for x in stalled.snapshot()), 10, "backend connection freed")
            c.close()
    finally:
        edge.stop()
        stalled.close()


# -- the control-frame budget in memory (the frame meter across split reads) ---------------


def _memory_client():
    from tests.test_http_pipeline import H2Client, World

    world = World()
    return world, H2Client(world)


def _goaways(client):
    import h2.events

    return [e.error_code for e in client.events if isinstance(e, h2.events.ConnectionTerminated)]


def test_the_control_frame_budget_grows_with_requests_and_is_counted_across_split_reads():
    world, client = _memory_client()
    server = client.server
    # A client that pings and opens the window once per request (as gRPC's BDP
    # pings do): three times the base budget in all, never cut off.
    rounds = 3 * http2.CONTROL_BUDGET // 2
    for i in range(rounds):
        client.send(b"GET", b"/x", b"web.test")
        world.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        client.h2.ping(b"%08d" % i)
        client.h2.increment_flow_control_window(2)
        server.dataReceived(client.h2.data_to_send())
        client._pump()
    assert _goaways(client) == []
    assert client.answer().status == 200
    # Then PINGs alone, in reads that split frame headers (7 bytes at a time):
    # cut off once the budget those requests earned is spent.
    allowance = http2.CONTROL_BUDGET + http2.CONTROL_PER_STREAM * rounds - 2 * rounds
    flood = frame(PING, 0, 0, b"12345678") * (allowance + 50)
    for i in range(0, len(flood), 7):
        server.dataReceived(flood[i:i + 7])
        if client.transport.disconnecting:
            break
    client._pump()
    assert _goaways(client) == [ENHANCE_YOUR_CALM]
    assert allowance - 10 <= server._h2._control_kinds[PING] - rounds <= allowance + 10


def test_a_long_lived_connection_may_ping_now_and_then():
    # A connection with no request that PINGs every 20 s (gRPC keep-alive) for
    # about 14 hours: 2.5 times the base budget, never cut off; a burst is (the
    # hours did not bank more than the base budget).
    world, client = _memory_client()
    for i in range(5 * http2.CONTROL_BUDGET // 2):
        world.clock.advance(20)
        client.h2.ping(b"%08d" % i)
        client.server.dataReceived(client.h2.data_to_send())
        client._pump()
    assert _goaways(client) == [] and not client.transport.disconnecting
    client.server.dataReceived(frame(PING, 0, 0, b"12345678") * (http2.CONTROL_BUDGET + 10))
    client._pump()
    assert _goaways(client) == [ENHANCE_YOUR_CALM]


def test_data_earns_control_frames_as_it_flows():
    world, client = _memory_client()
    client.send(b"GET", b"/big", b"web.test")
    # 16 MiB of response on one stream, two WINDOW_UPDATEs (stream and connection)
    # from the client per 8 KiB taken: 4,096 of them, four times the base budget,
    # before the stream ends.
    world.answer(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (16 << 20))
    chunk = b"d" * 8192
    for _ in range(2048):
        world.answer(chunk)
        client.h2.increment_flow_control_window(8192)
        client.h2.increment_flow_control_window(8192, client.sid)
        client.server.dataReceived(client.h2.data_to_send())
        client.world.clock.advance(0)
        client.transport.clear()
    assert _goaways(client) == [] and not client.transport.disconnecting
