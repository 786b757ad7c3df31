"""
The TCP/UDP data path's pure parts and protocols in memory: ClientHello
reading (from ClientHellos Python's own TLS stack writes), PROXY headers,
the entry protocol's limits (hello deadline, allow list, in-flight count,
connection cap) and the UDP session table bound.
"""

from __future__ import annotations

import ssl

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport

from edge.config import Config, EntryPoint, TCPConfig, UDPConfig, parse
from edge.snapshot import IPAllowList, InFlightConn, Snapshot, Target, TCPRouter, TCPRouterTLS, TCPService
from edge.snapshot import UDPRouter, UDPService
from edge.tcp.hello import MORE, NOT_TLS, Hello, HelloError, read_hello
from edge.tcp.proxyheader import proxy_header
from edge.tcp.rules import parse_tcp_rule
from edge.tcp.service import TCPService as TCPFrontEnd


def client_hello(server_name: str | None, alpn=()) -> bytes:
    """The first flight Python's TLS client sends."""
    context = ssl.create_default_context()
    if alpn:
        context.set_alpn_protocols(list(alpn))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_reads_sni_and_alpn_from_a_real_client_hello():
    data = client_hello("Pass.Example.com", ("h2", "http/1.1"))
    assert read_hello(data) == Hello("pass.example.com", ("h2", "http/1.1"))


def test_no_sni_is_an_empty_name():
    context = ssl.create_default_context()
    context.check_hostname = False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    assert read_hello(outgoing.read()) == Hello("", ())


def test_every_prefix_asks_for_more_and_the_whole_answers():
    data = client_hello("a.test")
    for n in range(len(data)):
        assert read_hello(data[:n]) is MORE
    assert read_hello(data + b"extra").sni == "a.test"


def test_a_hello_split_over_two_records_is_reassembled():
    data = client_hello("split.test")
    body = data[5:]
    cut = 40
    records = b"".join(
        bytes([0x16, 3, 1]) + len(part).to_bytes(2, "big") + part for part in (body[:cut], body[cut:])
    )
    assert read_hello(records).sni == "split.test"


def test_plain_bytes_are_not_tls():
    assert read_hello(b"GET / HTTP/1.1\r\n") is NOT_TLS
    assert read_hello(b"SSH-2.0-OpenSSH_9.2\r\n") is NOT_TLS


@pytest.mark.parametrize("data", [
    bytes([0x16, 3, 1, 0, 4, 2, 0, 0, 0]),  # a ServerHello, not a ClientHello
    bytes([0x16, 3, 1, 0, 0]),  # empty record
    bytes([0x16, 2, 0, 0, 5]) + b"xxxxx",  # SSL 2-ish version
    bytes([0x16, 3, 1, 0, 8, 1, 0, 0, 4, 3, 3, 0, 0]),  # a body cut short
])
def test_malformed_hellos_raise(data):
    with pytest.raises(HelloError):
        read_hello(data)


def test_a_hello_longer_than_the_limit_is_refused_before_it_is_read():
    header = bytes([0x16, 3, 1, 0x40, 0x00, 1]) + (70000).to_bytes(3, "big")
    with pytest.raises(HelloError):
        read_hello(header, limit=65536)


def test_proxy_headers():
    assert proxy_header(1, ("192.0.2.1", 5555), ("198.51.100.2", 443)) == b"PROXY TCP4 192.0.2.1 198.51.100.2 5555 443\r\n"
    assert proxy_header(1, ("2001:db8::1", 1), ("::1", 2)) == b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n"
    v2 = proxy_header(2, ("192.0.2.1", 5555), ("198.51.100.2", 443))
    assert v2 == (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + bytes([192, 0, 2, 1, 198, 51, 100, 2])
                  + (5555).to_bytes(2, "big") + (443).to_bytes(2, "big"))
    # An IPv4 client on an IPv6 listener: both named in IPv6 (the families must agree).
    assert proxy_header(1, ("::ffff:192.0.2.1", 1), ("::1", 2)) == b"PROXY TCP6 ::ffff:c000:201 ::1 1 2\r\n"


# -- the TCP front end in memory ------------------------------------------------


class _Publisher:
    def __init__(self, snapshot):
        self.snapshot = snapshot

    def subscribe(self, subscriber):
        subscriber(self.snapshot)
        return lambda: None


def _front_end(routers, *, max_connections=10000, hello_timeout=10.0):
    config = Config(entrypoints=(EntryPoint("raw", "tcp:0", protocol="tcp"),),
                    tcp=TCPConfig(max_connections=max_connections, hello_timeout=hello_timeout))
    snapshot = Snapshot.build(
        tcp_routers=routers,
        tcp_services=[TCPService("s@docker", (Target("t1", "127.0.0.1", 9999),))],
    )
    reactor = MemoryReactorClock()
    front = TCPFrontEnd(config, _Publisher(snapshot), reactor)
    front.apply(snapshot)
    return front, reactor


def _router(rule="HostSNI(`*`)", middlewares=(), tls=None):
    return TCPRouter("r@docker", parse_tcp_rule(rule), rule, "s@docker", middlewares=middlewares, tls=tls)


def _connect(front, client="10.0.0.5", fallback=None):
    """A connection to the entry point "raw"; with ``fallback``, as an HTTPS one in front of it."""
    factory = front.factory("raw") if fallback is None else front.wrap("raw", fallback)
    protocol = factory.buildProtocol(IPv4Address("TCP", client, 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", client, 40000))
    transport.abortConnection = lambda: setattr(transport, "aborted", True)
    transport.aborted = False
    protocol.makeConnection(transport)
    return protocol, transport


def test_plain_router_connects_to_the_backend_at_once(monkeypatch):
    front, reactor = _front_end([_router()])
    _protocol, transport = _connect(front)
    assert not transport.aborted
    (host, port, *_rest) = reactor.tcpClients[0]
    assert (host, port) == ("127.0.0.1", 9999)


def test_allow_list_refuses_before_any_backend_connection():
    front, reactor = _front_end([_router(middlewares=(IPAllowList(("192.168.0.0/16",)),))])
    _protocol, transport = _connect(front, "10.0.0.5")
    assert transport.aborted and reactor.tcpClients == []
    _protocol, transport = _connect(front, "192.168.1.1")
    assert not transport.aborted and len(reactor.tcpClients) == 1


def test_in_flight_connections_are_counted_per_client_ip():
    front, reactor = _front_end([_router(middlewares=(InFlightConn(1),))])
    first, t1 = _connect(front, "10.0.0.5")
    _second, t2 = _connect(front, "10.0.0.5")
    _other, t3 = _connect(front, "10.0.0.6")
    assert (t1.aborted, t2.aborted, t3.aborted) == (False, True, False)
    first.connectionLost(None)
    _again, t4 = _connect(front, "10.0.0.5")
    assert not t4.aborted


def test_connection_cap_per_entry_point():
    front, _reactor = _front_end([_router()], max_connections=2)
    transports = [_connect(front, f"10.0.0.{i}")[1] for i in range(3)]
    assert [t.aborted for t in transports] == [False, False, True]


def test_a_client_that_never_sends_its_hello_is_closed_at_the_deadline():
    front, reactor = _front_end([_router("HostSNI(`a.test`)", tls=TCPRouterTLS(passthrough=True))], hello_timeout=10)
    protocol, transport = _connect(front)
    protocol.dataReceived(b"\x16\x03\x01")  # a record begins, and no more comes
    reactor.advance(9)
    assert not transport.aborted
    reactor.advance(2)
    assert transport.aborted and reactor.tcpClients == []


def test_tls_with_an_unrouted_name_is_closed_on_a_tcp_entry_point():
    front, reactor = _front_end([_router("HostSNI(`a.test`)", tls=TCPRouterTLS(passthrough=True))])
    protocol, transport = _connect(front)
    protocol.dataReceived(client_hello("b.test"))
    assert transport.aborted and reactor.tcpClients == []
    protocol, transport = _connect(front)
    protocol.dataReceived(client_hello("a.test"))
    assert not transport.aborted and len(reactor.tcpClients) == 1


# -- UDP session table ----------------------------------------------------------


def test_udp_session_table_is_bounded_and_sessions_expire():
    from edge.udp.service import UDPService as UDPFrontEnd

    config = parse({"entrypoints": {"game": {"address": "udp:27015"}}, "udp": {"max_sessions": 2, "session_timeout": 3}})
    snapshot = Snapshot.build(udp_routers=[UDPRouter("g@docker", "g@docker")],
                              udp_services=[UDPService("g@docker", (Target("t", "127.0.0.1", 9),))])
    reactor = MemoryReactorClock()
    front = UDPFrontEnd(config, _Publisher(snapshot), reactor)

    class _Port:
        def __init__(self, protocol):
            self.protocol = protocol
            self.protocol.transport = self
            self.sent = []

        def write(self, data, addr=None):
            self.sent.append(data)

        def connect(self, host, port):
            self.peer = (host, port)

        def stopListening(self):
            self.stopped = True

    reactor.listenUDP = lambda port, protocol, interface="": _Port(protocol)
    front.privilegedStartService()
    front.startService()
    entry = front.entries["game"]
    for client in (("10.0.0.1", 1), ("10.0.0.2", 2), ("10.0.0.3", 3)):
        entry.datagramReceived(b"hi", client)
    assert sorted(entry.sessions) == [("10.0.0.1", 1), ("10.0.0.2", 2)]  # the third was dropped
    assert entry.sessions[("10.0.0.1", 1)].transport.sent == [b"hi"]
    reactor.advance(2)
    entry.datagramReceived(b"again", ("10.0.0.1", 1))
    reactor.advance(2)  # 4 s after the first, 2 after the last datagram of client 1
    assert sorted(entry.sessions) == [("10.0.0.1", 1)]
    reactor.advance(2)
    assert entry.sessions == {}
    front.stopService()


def test_config_entry_point_protocols():
    config = parse({"entrypoints": {"g": {"address": "udp:53"}, "t": {"address": "tcp:22", "protocol": "tcp"}}})
    assert [ep.protocol for ep in config.entrypoints] == ["udp", "tcp"]
    assert UDPConfig().session_timeout == 3.0  # Traefik's UDP timeout


# -- the splice ------------------------------------------------------------------


def _splice(reactor, idle=30.0, proxy=0):
    from edge.tcp.splice import SpliceProtocol

    connects = []

    def connect(backend):
        connects.append(backend)
        return Deferred()

    done = []
    splice = SpliceProtocol(connect, reactor, idle, proxy, lambda: done.append(True), "r@docker")
    client = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 5555),
                             hostAddress=IPv4Address("TCP", "127.0.0.1", 2222))
    client.abortConnection = lambda: setattr(client, "aborted", True)
    splice.makeConnection(client)
    return splice, client, connects, done


def _backend_connects(side):
    backend = StringTransport()
    backend.abortConnection = lambda: setattr(backend, "aborted", True)
    side.makeConnection(backend)
    return backend


def test_splice_holds_client_bytes_until_the_backend_is_there_and_sends_the_proxy_header_first():
    reactor = MemoryReactorClock()
    splice, client, connects, _done = _splice(reactor, proxy=1)
    assert client.producerState == "paused"  # the client is not read while the backend connects
    splice.dataReceived(b"hello")
    backend = _backend_connects(connects[0])
    assert backend.value() == b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 2222\r\nhello"
    assert client.producerState == "producing"
    # Each side is the other's producer: a full backend buffer pauses the client.
    assert backend.producer is client and client.producer is backend
    connects[0].dataReceived(b"answer")
    assert client.value() == b"answer"


def test_splice_closes_both_sides_after_the_idle_timeout_only():
    reactor = MemoryReactorClock()
    splice, client, connects, _done = _splice(reactor, idle=30)
    backend = _backend_connects(connects[0])
    reactor.advance(20)
    splice.dataReceived(b"still here")
    reactor.advance(20)  # 40 s after the start, 20 after the last byte
    assert not getattr(client, "aborted", False)
    reactor.advance(11)
    assert client.aborted and backend.aborted


def test_splice_end_of_the_backend_ends_the_client_and_reports_once():
    reactor = MemoryReactorClock()
    splice, client, connects, done = _splice(reactor)
    _backend_connects(connects[0])
    connects[0].connectionLost(None)
    assert client.disconnecting
    splice.connectionLost(None)
    assert done == [True]


class _Fallback:
    """Stands for the HTTPS side of an entry point."""

    def __init__(self):
        self.built = []

    def buildProtocol(self, addr):
        from twisted.internet.protocol import Protocol

        protocol = Protocol()
        received = []
        protocol.dataReceived = received.append
        protocol.received = received
        self.built.append(protocol)
        return protocol


def test_https_side_gets_unmatched_names_and_acme_validation_with_the_hello_bytes():
    front, reactor = _front_end([_router("HostSNI(`*`)", tls=TCPRouterTLS(passthrough=True))])
    fallback = _Fallback()
    protocol, transport = _connect(front, fallback=fallback)
    hello = client_hello("a.test", ("acme-tls/1",))
    protocol.dataReceived(hello)
    assert reactor.tcpClients == [] and not transport.aborted
    assert fallback.built[0].received == [hello]  # every byte read so far, unchanged
    protocol.dataReceived(b"more")
    assert fallback.built[0].received == [hello, b"more"]
    # Any other TLS name goes to the catch-all passthrough router.
    protocol, _transport = _connect(front, fallback=fallback)
    protocol.dataReceived(client_hello("a.test", ("h2",)))
    assert len(reactor.tcpClients) == 1 and len(fallback.built) == 1


def test_https_entry_point_without_tcp_routers_does_not_peek():
    front, _reactor = _front_end([])
    fallback = _Fallback()
    protocol, _transport = _connect(front, fallback=fallback)
    assert protocol is fallback.built[0]


def test_behind_an_entry_points_proxy_protocol_the_allow_list_sees_the_named_client():
    from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory  # as edge.http.service

    allow = (IPAllowList(("203.0.113.9/32",)),)
    front, reactor = _front_end([_router(middlewares=allow, tls=TCPRouterTLS(passthrough=True))])
    for client, routed in (("203.0.113.9", 1), ("203.0.113.10", 1)):  # backend connections so far
        factory = HAProxyWrappingFactory(front.wrap("raw", _Fallback()))
        protocol = factory.buildProtocol(IPv4Address("TCP", "10.0.0.2", 40000))  # the load balancer
        transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.2", 40000))
        transport.abortConnection = lambda: None
        protocol.makeConnection(transport)
        protocol.dataReceived(f"PROXY TCP4 {client} 10.0.0.1 5555 443\r\n".encode() + client_hello("a.test"))
        assert len(reactor.tcpClients) == routed


def test_splice_closes_the_client_when_the_backend_cannot_be_reached():
    from edge.tcp.splice import SpliceProtocol
    from twisted.internet.error import ConnectionRefusedError

    reactor = MemoryReactorClock()
    attempt = Deferred()
    done = []
    splice = SpliceProtocol(lambda backend: attempt, reactor, 30.0, 0, lambda: done.append(True), "r@docker")
    client = StringTransport()
    splice.makeConnection(client)
    splice.dataReceived(b"held")
    attempt.errback(ConnectionRefusedError())
    assert client.disconnecting and client.value() == b""
    splice.connectionLost(None)
    assert done == [True] and not reactor.getDelayedCalls()  # the idle timer is gone too
