"""
The proxy protocols in memory: StringTransports on both sides, a Clock for
time.  Covers what is awkward over sockets: the HTTP/2 hand-off, flow
control between the two sides, timeouts, and the access log formats.
"""

from __future__ import annotations

import io
import json

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from edge.config import Config, EntryPoint, HTTPConfig
from edge.discovery.publisher import SnapshotPublisher
from edge.http.accesslog import AccessLog
from edge.http.service import HTTPService
from edge.rules import Host
from edge.snapshot import BackendService, Router, Snapshot, Target

REQUEST = b"GET /x HTTP/1.1\r\nHost: web.test\r\nUser-Agent: t\r\nReferer: r\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


class Transport(StringTransport):
    def __init__(self, host="127.0.0.1"):
        super().__init__(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
            peerAddress=IPv4Address("TCP", host, 40000),
        )

    def abortConnection(self):
        self.loseConnection()


def setup(http=HTTPConfig()):
    clock = Clock()
    config = Config(entrypoints=(EntryPoint("http", "tcp:1"),), http=http)
    publisher = SnapshotPublisher(clock, debounce=0)
    publisher.report("t", Snapshot.build(
        routers=[Router("web", Host(("web.test",)), "Host(`web.test`)", "svc")],
        services=[BackendService("svc", (Target("t1", "10.9.9.9", 80),))],
    ))
    service = HTTPService(config, publisher, clock)
    publisher.subscribe(service.apply)
    factory = service.factories["http"]
    server = factory.buildProtocol(None)
    client_side = Transport()
    server.makeConnection(client_side)
    return clock, service, server, client_side


def pooled_backend(service):
    backend = service._backend_protocol(("http", "10.9.9.9", 80))

    class Connected:
        def connected(self, protocol):
            pass

    backend.factory = Connected()
    transport = Transport("10.9.9.9")
    backend.makeConnection(transport)
    service.pool.put(backend)
    return backend, transport


def test_request_through_a_pooled_connection_and_access_log():
    clock, service, server, client = setup()
    backend, backend_side = pooled_backend(service)
    out = io.StringIO()
    service.proxy.access_log = AccessLog(out, "combined", wall=lambda: 0.0)
    clock.advance(100)
    server.dataReceived(REQUEST)
    sent = backend_side.value()
    assert sent.startswith(b"GET /x HTTP/1.1\r\nHost: web.test\r\n")
    assert b"X-Forwarded-For: 127.0.0.1\r\n" in sent
    clock.advance(0.25)
    backend.dataReceived(RESPONSE)
    assert client.value() == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    assert service.pool.idle_count() == 1  # handed back for the next request
    line = out.getvalue()
    assert line == ('127.0.0.1 - - [01/Jan/1970:00:00:00 +0000] "GET /x HTTP/1.1" 200 5 "r" "t"'
                    ' 1 "web" "http://10.9.9.9:80" 250ms\n')


def test_json_access_log_line():
    out = io.StringIO()
    _, service, server, _ = setup()
    service.proxy.access_log = AccessLog(out, "json", wall=lambda: 1.5)
    server.dataReceived(b"GET / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n")
    record = json.loads(out.getvalue())
    assert record["status"] == 404 and record["router"] == "-" and record["error"] == "no route"
    assert record["time"] == "1970-01-01T00:00:01.500Z"  # RFC 3339, like edge's own JSON log lines


def test_h2_connections_are_handed_over_with_their_first_bytes():
    """ALPN h2: the HTTP/2 framing takes the transport, the connection stays counted and timed."""
    from hyperframe.frame import Frame, SettingsFrame

    clock, service, server, client = setup()
    client.negotiatedProtocol = b"h2"
    server.dataReceived(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    clock.advance(0)  # HTTP/2 output is written once per reactor turn
    frame, _ = Frame.parse_frame_header(memoryview(client.value()[:9]))
    assert isinstance(frame, SettingsFrame)  # the server preface, not an HTTP/1.1 answer
    assert client.producer is server._h2  # HTTP/2 paces the socket itself
    assert server in service.factories["http"].connections
    server.connectionLost(None)
    assert server not in service.factories["http"].connections


def test_a_full_client_buffer_pauses_the_backend_and_the_reverse():
    _, service, server, client = setup()
    backend, backend_side = pooled_backend(service)
    server.dataReceived(REQUEST)
    # The client's transport reports a full buffer: the backend stops reading.
    client.producer.pauseProducing()
    assert backend_side.producerState == "paused"
    client.producer.resumeProducing()
    assert backend_side.producerState == "producing"
    # The backend's transport fills: the client stops being read.
    backend_side.producer.pauseProducing()
    assert client.producerState == "paused"
    backend_side.producer.resumeProducing()
    assert client.producerState == "producing"


def tick(clock, service, seconds):
    """Advance time a second at a time, running the housekeeping tick as startService would."""
    for _ in range(seconds):
        clock.advance(1.0)
        service._housekeeping()


def test_backend_silence_gives_504_and_idle_clients_are_closed():
    clock, service, server, client = setup(HTTPConfig(backend_response_timeout=5.0, client_idle_timeout=10.0))
    backend, backend_side = pooled_backend(service)
    server.dataReceived(REQUEST)
    tick(clock, service, 4)
    assert client.value() == b""
    tick(clock, service, 3)
    assert client.value().startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")
    assert client.disconnecting and backend_side.disconnecting

    clock, service, server, client = setup(HTTPConfig(client_idle_timeout=10.0))
    backend, _ = pooled_backend(service)
    server.dataReceived(REQUEST)
    backend.dataReceived(RESPONSE)
    tick(clock, service, 9)
    assert not client.disconnecting
    tick(clock, service, 3)
    assert client.disconnecting


def test_request_durations_reach_the_histogram_in_bulk():
    from prometheus_client import generate_latest

    from edge import metrics
    from edge.http.service import Stats

    stats = Stats()
    for duration in (0.0005, 0.001, 0.003, 0.2, 20.0):
        stats.request("bulk-router", "http", 200, duration)
    stats.request("bulk-router", "http", 503, 0.01)
    stats.flush()
    lines = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in generate_latest(metrics.REGISTRY).decode().splitlines()
        if 'router="bulk-router"' in line
    }
    bucket = 'edge_http_request_duration_seconds_bucket{{le="{}",router="bulk-router"}}'
    assert lines[bucket.format("0.001")] == 2
    assert lines[bucket.format("0.005")] == 3
    assert lines[bucket.format("0.25")] == 5
    assert lines[bucket.format("+Inf")] == 6
    assert abs(lines['edge_http_request_duration_seconds_sum{router="bulk-router"}'] - 20.2145) < 1e-9
    assert lines['edge_http_requests_total{code_class="5xx",entrypoint="http",router="bulk-router"}'] == 1


def test_lean_dispatch_serves_requests_on_a_real_epoll_reactor():
    """edge's own connections skip callWithLogger; requests still flow, other reactors are left alone."""
    import os

    import pytest

    if os.environ.get("EDGE_SPEEDUPS") == "off":
        pytest.skip("speed-ups switched off (EDGE_SPEEDUPS=off)")
    import socket

    from twisted.internet.epollreactor import EPollReactor

    from edge.http.backend import BackendProtocol
    from edge.http.http1 import ServerProtocol
    from edge.http.speedups import lean_dispatch as _lean

    def lean_dispatch(r):
        return _lean(r, (ServerProtocol, BackendProtocol))

    assert not lean_dispatch(Clock())
    reactor = EPollReactor()
    config = Config(entrypoints=(EntryPoint("http", "tcp:0:interface=127.0.0.1"),))
    publisher = SnapshotPublisher(reactor, debounce=0)
    publisher.report("t", Snapshot.build(routers=[], services=[]))
    service = HTTPService(config, publisher, reactor)
    service.startService()
    try:
        assert "doIteration" in vars(reactor)  # installed by startService
        assert not lean_dispatch(reactor)  # and only once
        for _ in range(100):
            if "http" in service.ports:
                break
            reactor.iterate(0.01)
        port = service.ports["http"].getHost().port
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        client.setblocking(False)
        answer = b""
        for request in (1, 2):  # keep-alive: the second request on the same connection
            client.sendall(b"GET /x HTTP/1.1\r\nHost: nowhere.test\r\n\r\n")
            for _ in range(500):
                reactor.iterate(0.01)
                try:
                    answer += client.recv(65536)
                except BlockingIOError:
                    continue
                if answer.count(b"404 page not found\n") == request:
                    break
        assert answer.count(b"HTTP/1.1 404 Not Found\r\n") == 2, answer
        client.close()
    finally:
        service.stopService()
        for _ in range(20):
            reactor.iterate(0.01)
        reactor.disconnectAll()


def test_pool_keeps_a_burst_of_idle_connections_until_the_sweep_trims_the_oldest():
    from edge.http.pool import BackendPool

    clock = Clock()
    pool = BackendPool(clock, None, size=2)

    class Conn:
        connected = True

        def __init__(self, name):
            self.key = ("http", "10.9.9.9", 80)
            self.name = name
            self.transport = self
            self.closed = False

        def loseConnection(self):
            self.closed = True

    conns = [Conn(i) for i in range(5)]
    for conn in conns:
        pool.put(conn)
        clock.advance(0.1)
    assert pool.idle_count() == 5 and not any(c.closed for c in conns)  # a burst is kept
    pool.sweep()
    assert pool.idle_count() == 2
    assert [c.closed for c in conns] == [True, True, True, False, False]  # oldest closed
    assert pool.take(conns[0].key) is conns[4]  # newest reused first


def test_backend_writes_go_through_the_switched_speedups_write(monkeypatch):
    """`[http] speedups = false` must reach BackendProtocol.send (it bound the write at import)."""
    from edge.http import speedups
    from edge.http.backend import BackendProtocol

    sent = []
    monkeypatch.setattr(speedups, "write", lambda transport, data: sent.append(data))
    backend = BackendProtocol(("http", "127.0.0.1", 80), pool=None)
    backend.transport = StringTransport()
    backend.send(b"GET / HTTP/1.1\r\n\r\n")
    assert sent == [b"GET / HTTP/1.1\r\n\r\n"]
