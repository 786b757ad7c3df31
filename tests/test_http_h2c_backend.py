"""
h2c backends in memory: edge's HTTP service on a MemoryReactorClock, its
connections to an h2c target made by hand from the reactor's ``tcpClients``,
each answered by a server-side ``h2`` connection; clients through both
framings (the HTTP/1.1 and HTTP/2 clients of tests/test_http_pipeline.py).
"""

from __future__ import annotations

import io
import json

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import httptools
import pytest
from twisted.internet import error
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from edge.config import Config, EntryPoint, HTTPConfig
from edge.discovery.labels import read_labels
from edge.discovery.publisher import SnapshotPublisher
from edge.http import backend_h2
from edge.http.accesslog import AccessLog
from edge.http.service import HTTPService
from edge.rules import Host
from edge.snapshot import BackendService, Router, Snapshot, Target
from tests.test_http_pipeline import H1Client, H2Client, Transport

GRPC_OK = [(b"grpc-status", b"0"), (b"grpc-message", b"")]


class World:
    """An HTTP service whose h2c backend connections are made by hand."""

    def __init__(self, targets=(("t1", "10.9.9.9"),), http=HTTPConfig()):
        self.clock = self.reactor = MemoryReactorClock()
        config = Config(entrypoints=(EntryPoint("web", "tcp:1"),), http=http)
        publisher = SnapshotPublisher(self.clock, debounce=0)
        publisher.report("t", Snapshot.build(
            routers=[Router("grpc", Host(("web.test",)), "Host(`web.test`)", "svc")],
            services=[BackendService("svc", tuple(Target(i, h, 50051, scheme="h2c") for i, h in targets))],
        ))
        self.service = HTTPService(config, publisher, self.clock)
        publisher.subscribe(self.service.apply)
        self.factory = self.service.factories["web"]
        self.log = io.StringIO()
        self.service.proxy.access_log = AccessLog(self.log, "json", wall=lambda: 0.0)
        self.servers: list[Server] = []
        self._made = 0

    def accept(self, settings=None) -> "Server":
        """The next connection edge started: connected, with an h2 server on it."""
        host, port, factory, _timeout, _bind = self.reactor.tcpClients[self._made]
        self._made += 1
        server = Server(self, factory, host, settings)
        self.servers.append(server)
        return server

    def refuse(self):
        _host, _port, factory, _timeout, _bind = self.reactor.tcpClients[self._made]
        self._made += 1
        factory.clientConnectionFailed(None, Failure(error.ConnectionRefusedError("refused")))

    def pump(self, *clients):
        for _ in range(50):
            moved = False
            for c in clients:
                before = len(c.events) if hasattr(c, "events") else len(c.transport.value())
                if hasattr(c, "events"):
                    c._pump()
                    moved |= len(c.events) != before
            for s in self.servers:
                moved |= s.pump()
            if not moved:
                return


class Server:
    """The backend's side of one h2c connection (an ``h2`` server connection)."""

    def __init__(self, world, factory, host, settings=None):
        self.world = world
        self.protocol = factory.buildProtocol(None)
        self.transport = Transport(host)
        self.protocol.makeConnection(self.transport)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        if settings:
            self.h2.local_settings = h2.settings.Settings(client=False, initial_values=settings)
        self.h2.initiate_connection()
        self.events: list = []
        self.auto_ack = True
        self.pump()

    def pump(self) -> bool:
        data = self.transport.value()
        self.transport.clear()
        new = []
        if data:
            new = self.h2.receive_data(data)
            self.events += new
            if self.auto_ack:
                for e in new:
                    if isinstance(e, h2.events.DataReceived):
                        self.h2.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        out = self.h2.data_to_send()
        if out:
            self.protocol.dataReceived(out)
        return bool(data or out)

    def read_all(self) -> None:
        """Acknowledge every DATA byte so far, and from now on."""
        for e in self.events:
            if isinstance(e, h2.events.DataReceived):
                self.h2.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        self.auto_ack = True
        self.pump()

    def requests(self) -> list:
        return [e for e in self.events if isinstance(e, h2.events.RequestReceived)]

    def fields(self, index=-1) -> dict:
        return dict(self.requests()[index].headers)

    def body(self, sid) -> bytes:
        return b"".join(e.data for e in self.events if isinstance(e, h2.events.DataReceived) and e.stream_id == sid)

    def ended(self, sid) -> bool:
        return any(isinstance(e, h2.events.StreamEnded) and e.stream_id == sid for e in self.events)

    def reset(self, sid) -> bool:
        return any(isinstance(e, h2.events.StreamReset) and e.stream_id == sid for e in self.events)

    def respond(self, sid, status=200, headers=(), body=b"", trailers=None, end=True):
        fields = [(b":status", b"%d" % status)] + list(headers)
        only = end and not body and trailers is None
        self.h2.send_headers(sid, fields, end_stream=only)
        if body:
            self.h2.send_data(sid, body, end_stream=end and trailers is None)
        if trailers is not None:
            self.h2.send_headers(sid, trailers, end_stream=True)
        self.pump()


def h1_response(data: bytes):
    """(status, headers, body, trailers) of one HTTP/1.1 response."""
    got = {"headers": [], "body": b"", "trailers": []}

    class P:
        done = False

        def on_header(self, k, v):
            (got["trailers"] if P.done else got["headers"]).append((k, v))

        def on_headers_complete(self):
            P.done = True

        def on_body(self, b):
            got["body"] += b

    parser = httptools.HttpResponseParser(P())
    parser.feed_data(data)
    return parser.get_status_code(), got["headers"], got["body"], got["trailers"]


def h2_events(client, sid, kind):
    return [e for e in client.events if isinstance(e, kind) and getattr(e, "stream_id", None) == sid]


@pytest.fixture(params=["http/1.1", "h2"])
def framing(request):
    return request.param


def client_for(world, framing):
    return H1Client(world) if framing == "http/1.1" else H2Client(world)


def sent(framing, path, method=b"GET", headers=(), body=None, **world_options):
    """A World, a client of ``framing`` that sent a request, and the backend connection it reached."""
    world = World(**world_options)
    client = client_for(world, framing)
    client.send(method, path, b"web.test", headers=headers, body=body)
    server = world.accept()
    world.pump(client)
    return world, client, server


# -- the request goes out as HTTP/2 --------------------------------------------------


def test_request_head_and_body_go_out_as_http2_fields_and_data(framing):
    world = World()
    client = client_for(world, framing)
    client.send(b"POST", b"/pkg.Svc/Call?x=1", b"web.test",
                headers=((b"Content-Type", b"application/grpc"), (b"TE", b"trailers"),
                         (b"X-Forwarded-For", b"6.6.6.6")),
                body=b"hello")
    server = world.accept()
    world.pump(client)
    fields = server.fields()
    assert fields[b":method"] == b"POST"
    assert fields[b":scheme"] == b"http"
    assert fields[b":authority"] == b"web.test"
    assert fields[b":path"] == b"/pkg.Svc/Call?x=1"
    assert fields[b"content-type"] == b"application/grpc"
    assert fields[b"content-length"] == b"5"
    assert fields[b"te"] == b"trailers"  # the one TE value HTTP/2 allows, forwarded
    assert fields[b"x-forwarded-for"] == b"127.0.0.1"  # the same forwarding rules as HTTP/1.1
    assert b"host" not in fields and b"transfer-encoding" not in fields and b"connection" not in fields
    sid = server.requests()[-1].stream_id
    assert server.body(sid) == b"hello" and server.ended(sid)


def test_te_other_than_trailers_is_not_forwarded():
    world, client, server = sent("http/1.1", b"/", b"GET", headers=((b"TE", b"gzip"),))
    assert b"te" not in server.fields()


def test_a_body_without_length_streams_as_data_frames():
    world = World()
    client = H1Client(world)
    client.server.dataReceived(b"POST /up HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                               b"3\r\nabc\r\n")
    server = world.accept()
    world.pump(client)
    sid = server.requests()[-1].stream_id
    assert server.body(sid) == b"abc" and not server.ended(sid)
    client.server.dataReceived(b"2\r\nde\r\n0\r\n\r\n")
    world.pump(client)
    assert server.body(sid) == b"abcde" and server.ended(sid)
    assert b"content-length" not in server.fields()


# -- answers, trailers ------------------------------------------------------------------


def test_response_relayed_to_both_framings(framing):
    world, client, server = sent(framing, b"/x")
    sid = server.requests()[-1].stream_id
    server.respond(sid, headers=[(b"content-type", b"text/plain"), (b"content-length", b"5")], body=b"hello")
    world.pump(client)
    answer = client.answer()
    assert answer.status == 200 and answer.body == b"hello"
    assert answer.header(b"content-type") == b"text/plain"
    (line,) = [json.loads(x) for x in world.log.getvalue().splitlines()]
    assert (line["status"], line["target"]) == (200, "h2c://10.9.9.9:50051")


def test_trailers_reach_an_http2_client_as_a_trailing_headers_frame():
    world, client, server = sent("h2", b"/pkg.Svc/Call", b"POST", headers=((b"te", b"trailers"),), body=b"\0\0\0\0\0")
    sid = server.requests()[-1].stream_id
    server.respond(sid, headers=[(b"content-type", b"application/grpc")], body=b"\0\0\0\0\x01z",
                   trailers=[(b"grpc-status", b"5"), (b"grpc-message", b"no such thing")])
    world.pump(client)
    (trailers,) = h2_events(client, client.sid, h2.events.TrailersReceived)
    assert trailers.headers == [(b"grpc-status", b"5"), (b"grpc-message", b"no such thing")]
    assert trailers.stream_ended is not None
    assert b"".join(e.data for e in h2_events(client, client.sid, h2.events.DataReceived)) == b"\0\0\0\0\x01z"


def test_a_trailers_only_answer_stays_one_headers_frame_with_end_stream():
    world, client, server = sent("h2", b"/pkg.Svc/Call", b"POST", headers=((b"te", b"trailers"),), body=b"\0\0\0\0\0")
    sid = server.requests()[-1].stream_id
    server.respond(sid, headers=[(b"content-type", b"application/grpc"), (b"grpc-status", b"12"),
                                 (b"grpc-message", b"unimplemented")])
    world.pump(client)
    (head,) = h2_events(client, client.sid, h2.events.ResponseReceived)
    assert (b"grpc-status", b"12") in head.headers
    assert head.stream_ended is not None  # no DATA frame, no second HEADERS
    assert not h2_events(client, client.sid, h2.events.DataReceived)


def test_http11_client_that_sent_te_trailers_gets_chunked_trailers():
    world, client, server = sent("http/1.1", b"/x", b"GET", headers=((b"TE", b"trailers"),))
    server.respond(server.requests()[-1].stream_id, body=b"abc", trailers=[(b"grpc-status", b"0")])
    status, headers, body, trailers = h1_response(client.transport.value())
    assert (status, body) == (200, b"abc")
    assert (b"Transfer-Encoding", b"chunked") in headers
    assert trailers == [(b"grpc-status", b"0")]


def test_http11_client_without_te_trailers_gets_no_trailers():
    world, client, server = sent("http/1.1", b"/x")
    server.respond(server.requests()[-1].stream_id, body=b"abc", trailers=[(b"grpc-status", b"0")])
    status, _, body, trailers = h1_response(client.transport.value())
    assert (status, body, trailers) == (200, b"abc", [])
    assert client.transport.value().endswith(b"0\r\n\r\n")


# -- one connection, many streams -------------------------------------------------------


def test_concurrent_requests_share_one_connection():
    world = World()
    clients = [H2Client(world) for _ in range(3)]
    for c in clients:
        c.send(b"GET", b"/x", b"web.test")
    assert len(world.reactor.tcpClients) == 1  # the burst waits for one connect
    server = world.accept()
    world.pump(*clients)
    sids = [r.stream_id for r in server.requests()]
    assert sids == [1, 3, 5]
    for sid in sids:
        server.respond(sid, body=b"s%d" % sid)
    world.pump(*clients)
    assert sorted(c.answer().body for c in clients) == [b"s1", b"s3", b"s5"]
    # The next request reuses the connection.
    clients[0].send(b"GET", b"/y", b"web.test")
    world.pump(*clients)
    assert len(world.reactor.tcpClients) == 1 and server.requests()[-1].stream_id == 7


def test_backend_stream_limit_opens_another_connection():
    world = World()
    first, second = H2Client(world), H2Client(world)
    first.send(b"GET", b"/1", b"web.test")
    server = world.accept({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1})
    world.pump(first)
    second.send(b"GET", b"/2", b"web.test")
    assert len(world.reactor.tcpClients) == 2  # the first allows one stream only
    other = world.accept()
    world.pump(first, second)
    assert [dict(r.headers)[b":path"] for r in server.requests()] == [b"/1"]
    assert [dict(r.headers)[b":path"] for r in other.requests()] == [b"/2"]
    server.respond(1, body=b"one")
    other.respond(1, body=b"two")
    world.pump(first, second)
    assert (first.answer().body, second.answer().body) == (b"one", b"two")


def test_edges_own_stream_bound_opens_another_connection():
    world = World()
    world.service.pool.h2c.max_streams = 2
    clients = [H2Client(world) for _ in range(3)]
    for c in clients[:2]:
        c.send(b"GET", b"/x", b"web.test")
    server = world.accept()
    world.pump(*clients)
    clients[2].send(b"GET", b"/x", b"web.test")
    assert len(world.reactor.tcpClients) == 2
    other = world.accept()
    world.pump(*clients)
    assert len(server.requests()) == 2 and len(other.requests()) == 1


# -- failures ------------------------------------------------------------------


def test_connect_failure_tries_the_next_target(framing):
    world = World(targets=(("t0", "10.9.9.8"), ("t1", "10.9.9.9")))
    client = client_for(world, framing)
    client.send(b"GET", b"/x", b"web.test")
    world.refuse()
    server = world.accept()
    world.pump(client)
    assert world.reactor.tcpClients[1][0] == "10.9.9.9"
    server.respond(server.requests()[-1].stream_id, body=b"ok")
    world.pump(client)
    assert client.answer().body == b"ok"


def test_reset_before_the_head_is_a_502(framing):
    world, client, server = sent(framing, b"/x")
    server.h2.reset_stream(server.requests()[-1].stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
    server.pump()
    world.pump(client)
    answer = client.answer()
    assert answer.status == 502 and b"reset the stream (INTERNAL_ERROR)" in answer.body


def test_reset_after_the_head_cuts_the_client_off(framing):
    world, client, server = sent(framing, b"/x")
    sid = server.requests()[-1].stream_id
    server.respond(sid, body=b"part", end=False)
    server.h2.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
    server.pump()
    world.pump(client)
    answer = client.answer()
    assert answer.status == 200 and answer.reset


def test_refused_stream_goes_to_a_fresh_attempt():
    world, client, server = sent("http/1.1", b"/x")
    server.h2.reset_stream(1, h2.errors.ErrorCodes.REFUSED_STREAM)
    server.pump()
    world.pump(client)
    assert [r.stream_id for r in server.requests()] == [1, 3]  # same connection, a new stream
    server.respond(3, body=b"again")
    assert h1_response(client.transport.value())[2] == b"again"


def test_goaway_retries_unprocessed_streams_and_fails_the_others():
    world = World()
    first, second = H2Client(world), H2Client(world)
    first.send(b"GET", b"/1", b"web.test")
    second.send(b"GET", b"/2", b"web.test")
    server = world.accept()
    world.pump(first, second)
    assert [r.stream_id for r in server.requests()] == [1, 3]
    server.h2.close_connection(last_stream_id=1)
    server.pump()
    world.pump(first, second)
    assert first.answer().status == 502  # it was being processed: not replayed
    assert len(world.reactor.tcpClients) == 2  # stream 3 never was: a fresh connection
    fresh = world.accept()
    world.pump(first, second)
    assert dict(fresh.requests()[-1].headers)[b":path"] == b"/2"
    fresh.respond(1, body=b"two")
    world.pump(first, second)
    assert second.answer().body == b"two"


def test_connection_lost_before_the_head_is_a_502(framing):
    world, client, server = sent(framing, b"/x", b"POST", body=b"x")
    server.protocol.connectionLost(Failure(error.ConnectionLost("gone")))
    world.pump(client)
    assert client.answer().status == 502


def test_not_an_h2c_server_is_a_502():
    world = World()
    client = H1Client(world)
    client.send(b"GET", b"/x", b"web.test")
    host, port, factory, _t, _b = world.reactor.tcpClients[0]
    protocol = factory.buildProtocol(None)
    transport = Transport(host)
    protocol.makeConnection(transport)
    protocol.dataReceived(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    assert h1_response(client.transport.value())[0] == 502
    assert transport.aborted


def test_no_answer_in_time_is_a_504_and_the_stream_is_cancelled(framing):
    world, client, server = sent(framing, b"/x", http=HTTPConfig(backend_response_timeout=5))
    world.service.startService()
    try:
        world.clock.advance(7)
        world.clock.advance(1)
        world.pump(client)
        assert client.answer().status == 504
        sid = server.requests()[-1].stream_id
        assert server.reset(sid)  # edge let go of the stream; the connection stays
        assert server.protocol.state == backend_h2.OPEN
    finally:
        world.service.stopService()


def test_a_request_body_still_arriving_is_not_a_backend_timeout(framing):
    """A client streaming its request (gRPC client streaming) keeps the exchange alive."""
    world = World(http=HTTPConfig(backend_response_timeout=5))
    client = client_for(world, framing)
    if framing == "h2":
        sid = client.sid = client.h2.get_next_available_stream_id()
        client.h2.send_headers(sid, [(b":method", b"POST"), (b":path", b"/up"), (b":scheme", b"https"),
                                     (b":authority", b"web.test")])
        client.server.dataReceived(client.h2.data_to_send())

        def part(data):
            client.h2.send_data(sid, data)
            client.server.dataReceived(client.h2.data_to_send())
    else:
        client.server.dataReceived(b"POST /up HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\n")

        def part(data):
            client.server.dataReceived(b"%x\r\n%s\r\n" % (len(data), data))
    server = world.accept()
    world.pump(client)
    world.service.startService()
    try:
        for i in range(6):  # 18 s of upload, a part every 3 s
            world.clock.advance(3)
            part(b"part%d" % i)
            world.pump(client)
        assert server.body(1) == b"".join(b"part%d" % i for i in range(6))
        assert not server.reset(1)
        server.respond(1, body=b"got it")
        world.pump(client)
        assert client.answer().body == b"got it"
    finally:
        world.service.stopService()


def test_upgrade_requests_are_a_502():
    world = World()
    client = H1Client(world)
    client.server.dataReceived(b"GET /ws HTTP/1.1\r\nHost: web.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    server = world.accept()
    world.clock.advance(0)
    world.pump(client)
    assert h1_response(client.transport.value())[0] == 502
    assert server.requests() == []


def test_response_head_over_the_configured_bound_is_a_502():
    world, client, server = sent("http/1.1", b"/x", http=HTTPConfig(backend_max_header_count=3))
    server.respond(1, headers=[(b"x-%d" % i, b"v") for i in range(4)], body=b"x")
    world.pump(client)
    status, _, body, _ = h1_response(client.transport.value())
    assert status == 502 and b"more than 3 fields" in body


# -- flow control tied to the client -------------------------------------------------


def test_slow_http2_client_closes_its_backend_streams_window_only():
    world = World()
    client = H2Client(world)  # its stream windows stay at 65,535: it never acknowledges
    client.send(b"GET", b"/big", b"web.test")
    server = world.accept()
    world.pump(client)
    size = 600 * 1024
    server.h2.send_headers(1, [(b":status", b"200")])
    sent = 0
    while sent < size:
        window = server.h2.local_flow_control_window(1)
        if window == 0:
            break
        n = min(window, 16384, size - sent)
        server.h2.send_data(1, b"x" * n, end_stream=sent + n == size)
        sent += n
        server.pump()
        world.pump(client)
    got = sum(len(e.data) for e in h2_events(client, client.sid, h2.events.DataReceived))
    assert got == 65535  # what the client's window allows
    # The backend could send one stream window ahead, no more: edge holds that for the client.
    assert sent == backend_h2.STREAM_WINDOW
    assert server.h2.local_flow_control_window(1) == 0
    # The connection window is not the bottleneck: other streams still flow.
    assert server.h2.max_outbound_frame_size and server.h2.outbound_flow_control_window > 0
    # The client reads: everything follows.
    for _ in range(100):
        for e in h2_events(client, client.sid, h2.events.DataReceived):
            if not getattr(e, "acked", False):
                client.h2.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
                e.acked = True
        client.server.dataReceived(client.h2.data_to_send())
        world.pump(client)
        while sent < size and server.h2.local_flow_control_window(1) > 0:
            n = min(server.h2.local_flow_control_window(1), 16384, size - sent)
            server.h2.send_data(1, b"x" * n, end_stream=sent + n == size)
            sent += n
        server.pump()
        world.pump(client)
        if h2_events(client, client.sid, h2.events.StreamEnded):
            break
    assert sum(len(e.data) for e in h2_events(client, client.sid, h2.events.DataReceived)) == size


def test_slow_http11_client_pauses_acknowledgements():
    world, client, server = sent("http/1.1", b"/big")
    server.h2.send_headers(1, [(b":status", b"200")])
    client.server.peer_full(True)  # the client's socket buffer is full
    n = 0
    while server.h2.local_flow_control_window(1) > 0:
        server.h2.send_data(1, b"y" * 16384)
        n += 16384
        server.pump()
    assert n == backend_h2.STREAM_WINDOW  # nothing acknowledged while the client is full
    client.server.peer_full(False)
    server.pump()
    assert server.h2.local_flow_control_window(1) > 0  # the window reopened


def test_slow_backend_holds_the_clients_upload():
    world = World()
    client = H1Client(world)
    client.server.dataReceived(b"POST /up HTTP/1.1\r\nHost: web.test\r\nContent-Length: 200000\r\n\r\n")
    server = world.accept()
    server.auto_ack = False  # the backend reads nothing
    world.pump(client)
    client.server.dataReceived(b"z" * 100000)
    world.pump(client)
    assert len(server.body(1)) == 65535  # the backend's initial stream window
    assert client.transport.producerState == "paused"  # edge stops reading the client
    server.read_all()
    world.pump(client)
    assert len(server.body(1)) == 100000
    assert client.transport.producerState == "producing"


def test_slow_backend_holds_an_http2_clients_upload_in_its_window():
    world = World()
    client = H2Client(world)
    sid = client.sid = client.h2.get_next_available_stream_id()
    client.h2.send_headers(sid, [(b":method", b"POST"), (b":path", b"/up"), (b":scheme", b"https"),
                                 (b":authority", b"web.test")])
    client.server.dataReceived(client.h2.data_to_send())
    server = world.accept()
    server.auto_ack = False  # the backend reads nothing
    world.pump(client)

    def upload(data):
        for i in range(0, len(data), 16384):
            client.h2.send_data(sid, data[i:i + 16384])
        client.server.dataReceived(client.h2.data_to_send())
        world.pump(client)

    upload(b"z" * 65535)  # exactly the backend's initial stream window
    upload(b"w" * 1000)
    edge_stream = client.server._h2._streams[sid]
    assert len(server.body(1)) == 65535
    # The 1,000 bytes wait in edge for the backend's window, and edge does not
    # hand their window back to the client meanwhile.
    assert edge_stream._unacked == 1000
    server.read_all()
    world.pump(client)
    assert server.body(1) == b"z" * 65535 + b"w" * 1000
    assert edge_stream._unacked == 0


def test_client_reset_cancels_the_backend_stream_and_keeps_the_connection():
    world, client, server = sent("h2", b"/slow")
    client.h2.reset_stream(client.sid, h2.errors.ErrorCodes.CANCEL)
    client.server.dataReceived(client.h2.data_to_send())
    world.pump(client)
    assert server.reset(1)
    client.send(b"GET", b"/next", b"web.test")
    world.pump(client)
    assert len(world.reactor.tcpClients) == 1
    assert server.requests()[-1].stream_id == 3
    server.respond(3, body=b"next")
    world.pump(client)
    assert client.answer().body == b"next"


# -- pool housekeeping ------------------------------------------------------------------


def test_idle_connection_closes_after_the_idle_timeout():
    world, client, server = sent("http/1.1", b"/x")
    server.respond(1, body=b"ok")
    pool = world.service.pool
    assert pool.h2c.idle_count() == 1
    world.clock.advance(pool.idle_timeout + 1)
    pool.sweep()
    assert server.transport.disconnecting and pool.h2c.idle_count() == 0


def test_target_leaving_the_snapshot_closes_its_connection_when_done():
    world, client, server = sent("http/1.1", b"/x")
    world.service.pool.retain([])
    assert not server.transport.disconnecting  # a stream is in flight
    server.respond(1, body=b"ok")
    assert h1_response(client.transport.value())[2] == b"ok"
    assert server.transport.disconnecting


# -- labels ------------------------------------------------------------------------


@pytest.mark.parametrize("labels", [
    {"traefik.frontend.rule": "Host:g.test", "traefik.port": "50051", "traefik.protocol": "h2c"},
    {"traefik.http.routers.g.rule": "Host(`g.test`)",
     "traefik.http.services.g.loadbalancer.server.port": "50051",
     "traefik.http.services.g.loadbalancer.server.scheme": "h2c"},
])
def test_labels_name_h2c_targets(labels):
    config = read_labels("grpc", labels)
    (service,) = config.services
    assert service.scheme == "h2c"
    assert [p for p in config.problems if p.severity != "info"] == []


def test_h2c_health_check_scheme_falls_back_to_http_with_a_warning():
    config = read_labels("grpc", {
        "traefik.http.routers.g.rule": "Host(`g.test`)",
        "traefik.http.services.g.loadbalancer.server.port": "50051",
        "traefik.http.services.g.loadbalancer.healthcheck.path": "/",
        "traefik.http.services.g.loadbalancer.healthcheck.scheme": "h2c",
    })
    (service,) = config.services
    assert service.health_check.scheme == "http"
    assert any("health checks are made over HTTP/1.1" in p.message for p in config.problems)


def test_a_health_check_on_an_h2c_service_warns_that_probes_are_http11():
    labels = {
        "traefik.http.routers.g.rule": "Host(`g.test`)",
        "traefik.http.services.g.loadbalancer.server.port": "50051",
        "traefik.http.services.g.loadbalancer.server.scheme": "h2c",
        "traefik.http.services.g.loadbalancer.healthcheck.path": "/health",
    }
    config = read_labels("grpc", labels)
    assert any("health checks are made over HTTP/1.1" in p.message for p in config.problems)
    # An HTTP/1.1 endpoint named for the probes: no warning.
    config = read_labels("grpc", {**labels, "traefik.http.services.g.loadbalancer.healthcheck.scheme": "http",
                                  "traefik.http.services.g.loadbalancer.healthcheck.port": "8080"})
    assert not any("health checks are made over HTTP/1.1" in p.message for p in config.problems)
