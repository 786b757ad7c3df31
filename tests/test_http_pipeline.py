"""
One test table, two client framings.

Every row is a request, what the backend must (or must not) receive, and
what the client must get back.  Each row runs through the HTTP/1.1 framing
(:class:`edge.http.http1.ServerProtocol`) and the HTTP/2 framing
(:class:`edge.http.http2.HTTP2Connection`, driven by an ``h2`` client
connection) in memory: StringTransports on both sides, a Clock for time,
the real exchange, routing table, middlewares, balancer, pool and
:class:`edge.http.backend.BackendProtocol`.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field, replace

import h2.config
import h2.connection
import h2.events
import httptools
import pytest
from twisted.internet import defer, error
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from edge.config import Config, EntryPoint, HTTPConfig
from edge.discovery.publisher import SnapshotPublisher
from edge.http.accesslog import AccessLog
from edge.http.backend import BackendProtocol
from edge.http.http1 import ServerProtocol
from edge.http.service import HTTPService
from edge.rules import Host
from edge.snapshot import BackendService, BasicAuth, Router, Snapshot, StickyCookie, Target


class Transport(StringTransport):
    def __init__(self, host="127.0.0.1"):
        super().__init__(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
            peerAddress=IPv4Address("TCP", host, 40000),
        )
        self.aborted = False

    def abortConnection(self):
        self.aborted = True
        self.loseConnection()


LIVE = ("http", "10.9.9.9", 80)
DEAD = ("http", "10.9.9.8", 80)


def _snapshot():
    return Snapshot.build(
        routers=[
            Router("web", Host(("web.test",)), "Host(`web.test`)", "svc"),
            Router("two", Host(("two.test",)), "Host(`two.test`)", "svc2"),
            Router("sticky", Host(("sticky.test",)), "Host(`sticky.test`)", "svc3"),
            Router("auth", Host(("auth.test",)), "Host(`auth.test`)", "svc",
                   middlewares=(BasicAuth(("u:$apr1$x$y",)),)),
        ],
        services=[
            BackendService("svc", (Target("t1", "10.9.9.9", 80),)),
            # The dead target first in line: the balancer's round robin starts at it.
            BackendService("svc2", (Target("t0", "10.9.9.8", 80), Target("t1", "10.9.9.9", 80))),
            BackendService("svc3", (Target("t1", "10.9.9.9", 80),), sticky=StickyCookie()),
        ],
    )


class World:
    """An HTTP service on a Clock whose backend connections are StringTransports."""

    def __init__(self, http=HTTPConfig(), redirect=False):
        self.clock = Clock()
        entrypoints = [EntryPoint("web", "tcp:1")]
        if redirect:
            entrypoints = [EntryPoint("web", "tcp:1", redirect_to="websecure"),
                           EntryPoint("websecure", "tcp:2", tls=True)]
        config = Config(entrypoints=tuple(entrypoints), http=http)
        publisher = SnapshotPublisher(self.clock, debounce=0)
        publisher.report("t", _snapshot())
        self.service = HTTPService(config, publisher, self.clock)
        publisher.subscribe(self.service.apply)
        self.factory = self.service.factories["web"]
        self.log = io.StringIO()
        self.service.proxy.access_log = AccessLog(self.log, "json", wall=lambda: 0.0)
        self.backends: list[tuple[BackendProtocol, Transport]] = []
        self.service.pool.connect = self._connect

    def _connect(self, key):
        if key == DEAD:
            return defer.fail(error.ConnectionRefusedError("refused"))
        return defer.succeed(self._backend(key))

    def _backend(self, key):
        backend = BackendProtocol(key, self.service.pool, self.service.config.http)

        class Connected:
            def connected(self, protocol):
                pass

        backend.factory = Connected()
        transport = Transport(key[1])
        backend.makeConnection(transport)
        self.backends.append((backend, transport))
        return backend

    def backend_bytes(self) -> bytes:
        return b"".join(t.value() for _, t in self.backends)

    def answer(self, response: bytes):
        """The last backend connection answers."""
        backend, _ = self.backends[-1]
        backend.dataReceived(response)

    def log_lines(self):
        return [json.loads(line) for line in self.log.getvalue().splitlines() if line]


@dataclass
class Answer:
    status: int | None = None
    headers: list = field(default_factory=list)
    body: bytes = b""
    reset: bool = False

    def header(self, name: bytes):
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


class H1Client:
    name = "http/1.1"

    def __init__(self, world: World):
        self.world = world
        self.transport = Transport()
        self.server = ServerProtocol()
        self.server.factory = world.factory
        self.server.makeConnection(self.transport)

    def send(self, method, path, host, headers=(), body=None):
        lines = [b"%s %s HTTP/1.1\r\n" % (method, path)]
        if host is not None:
            lines.append(b"Host: %s\r\n" % host)
        for k, v in headers:
            lines.append(b"%s: %s\r\n" % (k, v))
        if body is not None:
            lines.append(b"Content-Length: %d\r\n" % len(body))
        lines.append(b"\r\n")
        self.server.dataReceived(b"".join(lines) + (body or b""))

    def answer(self) -> Answer:
        answer = Answer()

        class P:
            def on_header(self, k, v):
                answer.headers.append((k, v))

            def on_body(self, b):
                answer.body += b

        parser = httptools.HttpResponseParser(P())
        data = self.transport.value()
        if data:
            try:
                parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                pass
            answer.status = parser.get_status_code()
        answer.reset = self.transport.aborted
        return answer


class H2Client:
    name = "h2"

    def __init__(self, world: World):
        self.world = world
        # Through the hand-off a TLS connection takes when ALPN picked h2.
        self.transport = Transport()
        self.transport.negotiatedProtocol = b"h2"
        self.server = ServerProtocol()
        self.server.factory = world.factory
        self.server.makeConnection(self.transport)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.h2.initiate_connection()
        self.server.dataReceived(self.h2.data_to_send())
        self.events = []
        self._pump()

    def _pump(self):
        self.world.clock.advance(0)  # edge writes HTTP/2 output once per reactor turn
        data = self.transport.value()
        self.transport.clear()
        if data:
            self.events += self.h2.receive_data(data)
            out = self.h2.data_to_send()
            if out:
                self.server.dataReceived(out)
                self._pump()

    def send(self, method, path, host, headers=(), body=None):
        sid = self.h2.get_next_available_stream_id()
        self.sid = sid
        fields = [(b":method", method), (b":path", path), (b":scheme", b"https")]
        if host is not None:
            fields.append((b":authority", host))
        fields += [(k.lower(), v) for k, v in headers]
        if body is not None:
            fields.append((b"content-length", b"%d" % len(body)))
        self.h2.send_headers(sid, fields, end_stream=body is None)
        if body is not None:
            self.h2.send_data(sid, body, end_stream=True)
        self.server.dataReceived(self.h2.data_to_send())
        self._pump()

    def answer(self) -> Answer:
        self._pump()
        answer = Answer()
        for e in self.events:
            if getattr(e, "stream_id", None) != self.sid:
                continue
            if isinstance(e, h2.events.ResponseReceived):
                answer.headers = [(k, v) for k, v in e.headers if k != b":status"]
                answer.status = int(dict(e.headers)[b":status"])
            elif isinstance(e, h2.events.DataReceived):
                answer.body += e.data
            elif isinstance(e, h2.events.StreamReset):
                answer.reset = e.error_code != 0
        return answer


@dataclass
class Row:
    name: str
    method: bytes = b"GET"
    path: bytes = b"/x"
    host: bytes | None = b"web.test"
    headers: tuple = ()
    body: bytes | None = None
    # The backend's answer (None: the backend must receive nothing).
    response: bytes | None = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    # Lines the backend's request must start with / contain / lack.
    backend_starts: bytes = b""
    backend_has: tuple = ()
    backend_lacks: tuple = ()
    status: int = 200
    body_out: bytes | None = None
    headers_out: tuple = ()
    lacks_out: tuple = ()
    http: HTTPConfig = HTTPConfig()
    redirect: bool = False
    after: str = ""  # "timeout": advance the clock past the backend timeout before the answer


ROWS = [
    Row("routed GET", backend_starts=b"GET /x HTTP/1.1\r\nHost: web.test\r\n",
        backend_has=(b"X-Forwarded-For: 127.0.0.1\r\n", b"X-Forwarded-Host: web.test\r\n",
                     b"X-Real-Ip: 127.0.0.1\r\n"),
        body_out=b"hello"),
    Row("dot-segments are removed before matching and forwarding", path=b"/a/%2e%2e/b/./c",
        backend_starts=b"GET /b/c HTTP/1.1\r\n"),
    Row("an encoded slash is refused", path=b"/a%2fb", response=None, status=400),
    Row("no route", host=b"nothing.test", response=None, status=404),
    Row("a body with its length", method=b"POST", body=b"12345",
        backend_has=(b"Content-Length: 5\r\n", b"\r\n\r\n12345")),
    Row("a client's X-Forwarded-For is replaced (untrusted)",
        headers=((b"X-Forwarded-For", b"6.6.6.6"), (b"X-Real-Ip", b"6.6.6.6")),
        backend_has=(b"X-Forwarded-For: 127.0.0.1\r\n",), backend_lacks=(b"6.6.6.6",)),
    Row("a trusted proxy's X-Forwarded-For is extended",
        headers=((b"X-Forwarded-For", b"6.6.6.6"),),
        http=HTTPConfig(trusted_proxies=("127.0.0.0/8",)),
        backend_has=(b"X-Forwarded-For: 6.6.6.6, 127.0.0.1\r\n",)),
    Row("too many header fields", headers=tuple((b"x-h%d" % i, b"v") for i in range(101)),
        response=None, status=431),
    Row("a body over max_body_bytes", method=b"POST", body=b"x" * 20,
        http=HTTPConfig(max_body_bytes=10), response=None, status=413),
    Row("hop-by-hop response headers are dropped",
        response=b"HTTP/1.1 200 OK\r\nConnection: x-hop\r\nX-Hop: 1\r\nX-Keep: 2\r\nContent-Length: 2\r\n\r\nok",
        headers_out=((b"x-keep", b"2"),), lacks_out=(b"x-hop",), body_out=b"ok"),
    Row("a malformed backend response is a 502", response=b"HTTP/1.1 2OO OK\r\n\r\n", status=502),
    Row("a 101 to a request that asked for no upgrade is a 502",
        response=b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n",
        status=502),
    Row("a backend response head over its byte limit is a 502 (issue 9.4)",
        response=b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 80000 + b"\r\nContent-Length: 0\r\n\r\n", status=502),
    Row("a backend response head with too many fields is a 502 (issue 9.4)",
        response=b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(1001))
        + b"Content-Length: 0\r\n\r\n", status=502),
    Row("an invalid status below 100 is a 502, its body never relayed (issue 9.10)",
        response=b"HTTP/1.1 000 X\r\nContent-Length: 3\r\n\r\nabc", status=502),
    Row("an interim response's body is not relayed (issue 9.10)",
        response=b"HTTP/1.1 199 X\r\nContent-Length: 3\r\n\r\nabc"
                 b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", body_out=b"ok"),
    Row("connect failure: the next target answers", host=b"two.test",
        backend_starts=b"GET /x HTTP/1.1\r\nHost: two.test\r\n"),
    Row("sticky cookie set on the answer", host=b"sticky.test",
        headers_out=((b"set-cookie", None),)),
    Row("basic auth refuses a request without credentials", host=b"auth.test",
        response=None, status=401),
    Row("backend timeout is a 504", after="timeout", status=504,
        backend_starts=b"GET /x HTTP/1.1\r\n"),
    Row("entry point redirect_to", redirect=True, response=None, status=301,
        headers_out=((b"location", b"https://web.test:2/x"),)),
]


@pytest.mark.parametrize("framing", [H1Client, H2Client], ids=["http1", "h2"])
@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_table(row: Row, framing):
    world = World(row.http, redirect=row.redirect)
    client = framing(world)
    world.clock.advance(100)
    client.send(row.method, row.path, row.host, row.headers, row.body)
    sent = world.backend_bytes()
    if row.response is None:
        assert sent == b""
    else:
        assert sent.startswith(row.backend_starts)
        for line in row.backend_has:
            assert line in sent
        for text in row.backend_lacks:
            assert text not in sent
        if row.after == "timeout":
            world.clock.advance(HTTPConfig().backend_response_timeout + 2)
            world.service._housekeeping()
        else:
            world.answer(row.response)
    answer = client.answer()
    assert answer.status == row.status, answer
    if row.body_out is not None:
        assert answer.body == row.body_out
    for name, value in row.headers_out:
        got = answer.header(name)
        assert got is not None, (name, answer.headers)
        if value is not None:
            assert got == value
    for name in row.lacks_out:
        assert answer.header(name) is None
    lines = world.log_lines()
    assert len(lines) == 1, lines
    assert lines[0]["status"] == row.status
    assert lines[0]["protocol"] == ("HTTP/2.0" if framing is H2Client else "HTTP/1.1")


def test_the_pooled_connection_is_reused_after_each_framing():
    world = World()
    for framing in (H1Client, H2Client, H1Client):
        client = framing(world)
        client.send(b"GET", b"/x", b"web.test")
        world.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        assert client.answer().body == b"ok"
    assert len(world.backends) == 1
    assert world.service.pool.idle_count() == 1


# -- HTTP/1.1 framing only (HTTP/2 has no such framing to get wrong) -------------


def test_transfer_encoding_fields_are_judged_together():
    """gzip then chunked in two fields is "gzip, chunked": not chunked last alone (issue 9.11)."""
    world = World()
    client = H1Client(world)
    client.server.dataReceived(b"POST /x HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: gzip\r\n"
                               b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert client.answer().status == 501
    assert world.backend_bytes() == b""


def test_bytes_after_a_connection_close_request_are_ignored():
    """The request is answered; what follows it is not parsed into a 400 (issue 9.9)."""
    world = World()
    client = H1Client(world)
    client.server.dataReceived(b"POST /x HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n"
                               b"Content-Length: 3\r\n\r\nabcGARBAGE\r\n\r\n")
    assert world.backend_bytes().endswith(b"\r\n\r\nabc")
    world.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    answer = client.answer()
    assert (answer.status, answer.body) == (200, b"ok")
    assert not world.backends[-1][1].aborted  # the backend exchange was not cut off
    assert client.transport.disconnecting


def test_the_head_deadline_runs_from_the_first_byte():
    """One byte a second does not keep a head alive past request_header_timeout (issue 9.3)."""
    world = World()
    client = H1Client(world)
    world.clock.advance(1)
    head = b"GET /x HTTP/1.1\r\nHost: web.test\r\nX-Slow: " + b"a" * 100
    for i in range(40):
        if client.transport.disconnecting:
            break
        client.server.dataReceived(head[i:i + 1])
        world.clock.advance(1)
        world.service._housekeeping()
    assert client.transport.disconnecting
    assert i <= HTTPConfig().request_header_timeout + 2
    assert client.answer().status == 408


def test_a_malformed_pipelined_request_does_not_cancel_the_backend_timeout():
    """The first request still gets its 504 (issue 9.7)."""
    world = World()
    client = H1Client(world)
    client.server.dataReceived(b"GET /x HTTP/1.1\r\nHost: web.test\r\n\r\nGET /y HTTP/1.1\r\nHost: \x01\r\n\r\n")
    assert world.backend_bytes().startswith(b"GET /x HTTP/1.1\r\n")
    world.clock.advance(HTTPConfig().backend_response_timeout + 2)
    world.service._housekeeping()
    assert client.answer().status == 504


def test_a_client_that_stops_reading_loses_its_connection_and_backend_after_the_send_timeout():
    """Issue 9.6: nothing read for send_timeout closes both sides."""
    SEND_TIMEOUT = HTTPConfig().send_timeout

    world = World()
    client = H1Client(world)
    client.send(b"GET", b"/big", b"web.test")
    backend, backend_side = world.backends[-1]
    backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n" + b"x" * 65536)
    client.transport.producer.pauseProducing()  # the client's socket buffer is full
    assert backend_side.producerState == "paused"
    world.clock.advance(SEND_TIMEOUT / 2)
    world.service._housekeeping()
    assert not client.transport.disconnecting  # still within the timeout
    world.clock.advance(SEND_TIMEOUT)
    world.service._housekeeping()
    assert client.transport.disconnecting and backend_side.aborted
    assert world.service.pool.idle_count() == 0


def test_an_h2_stream_whose_window_stays_shut_is_reset_after_the_send_timeout():
    import h2.events
    import h2.settings

    SEND_TIMEOUT = HTTPConfig().send_timeout

    world = World()
    client = H2Client(world)
    client.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    client.server.dataReceived(client.h2.data_to_send())
    client._pump()
    client.send(b"GET", b"/big", b"web.test")
    backend, backend_side = world.backends[-1]
    backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000)
    world.clock.advance(SEND_TIMEOUT + 2)
    world.service._housekeeping()
    client._pump()
    assert any(isinstance(e, h2.events.StreamReset) and e.stream_id == client.sid for e in client.events)
    assert backend_side.aborted
    assert not client.transport.disconnecting  # other streams may go on


def test_an_idle_tunnel_is_closed():
    TUNNEL_IDLE_TIMEOUT = HTTPConfig().tunnel_idle_timeout

    world = World()
    client = H1Client(world)
    client.server.dataReceived(b"GET /ws HTTP/1.1\r\nHost: web.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    backend, backend_side = world.backends[-1]
    backend.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    client.server.dataReceived(b"frame")
    assert backend_side.value().endswith(b"frame")
    world.clock.advance(TUNNEL_IDLE_TIMEOUT - 10)
    backend.dataReceived(b"pong")  # traffic keeps it open
    world.service._housekeeping()
    assert not client.transport.disconnecting
    world.clock.advance(TUNNEL_IDLE_TIMEOUT + 1)
    world.service._housekeeping()
    assert client.transport.disconnecting


def test_a_client_that_half_closes_after_its_request_gets_the_answer():
    """Issue 9.12: FIN after the request is not a 499."""
    world = World()
    client = H1Client(world)
    client.send(b"GET", b"/x", b"web.test")
    client.server.readConnectionLost()
    assert not client.transport.disconnecting
    world.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    answer = client.answer()
    assert (answer.status, answer.body) == (200, b"ok")
    assert client.transport.disconnecting
    assert [line["status"] for line in world.log_lines()] == [200]



def test_connections_past_max_client_connections_are_closed_at_once_and_counted():
    """Issue 9.3: a cap per entry point, with a log line and a metric."""
    world = World(HTTPConfig(max_client_connections=2))
    clients = [H1Client(world) for _ in range(3)]
    assert [c.transport.aborted for c in clients] == [False, False, True]
    assert len(world.factory.connections) == 2
    assert world.service.stats._refused == {"web": 1}
    clients[0].server.connectionLost(None)
    assert not H1Client(world).transport.aborted  # room again


def test_a_half_close_in_the_middle_of_a_head_closes_at_once():
    world = World()
    client = H1Client(world)
    client.server.dataReceived(b"GET /x HTTP/1.1\r\nHost: web")
    client.server.readConnectionLost()
    assert client.transport.disconnecting
    assert world.backend_bytes() == b""
