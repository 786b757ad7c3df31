"""The sealed peer channel and the choice of orderer, in memory."""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

import pytest

from edge.acme.peers import Cluster, PeerResource
from edge.acme.seal import SealError, Sealer


def test_sealed_messages_are_bound_to_secret_path_and_time():
    now = [1000.0]
    sealer = Sealer(b"s" * 32, max_age=60, clock=lambda: now[0])
    message = sealer.seal(b"/v1/hello", {"name": "a"})
    assert sealer.open(b"/v1/hello", message) == {"name": "a"}
    with pytest.raises(SealError):
        sealer.open(b"/v1/certificate", message)
    with pytest.raises(SealError):
        Sealer(b"t" * 32, clock=lambda: now[0]).open(b"/v1/hello", message)
    with pytest.raises(SealError):
        sealer.open(b"/v1/hello", message[:-1] + bytes([message[-1] ^ 1]))
    now[0] += 61
    with pytest.raises(SealError):
        sealer.open(b"/v1/hello", message)
    with pytest.raises(ValueError):
        Sealer(b"short")


class FakeClient:
    """Answers hellos for the peers in ``up`` (address -> (name, ordering))."""

    def __init__(self):
        self.up = {}
        self.sent = []

    def post(self, address, path, value):
        self.sent.append((address, path, value))
        if address not in self.up:
            return defer.fail(ConnectionRefusedError(address))
        name, ordering = self.up[address]
        return defer.succeed({"name": name, "ordering": ordering})


def _cluster(me="b"):
    clock = Clock()
    client = FakeClient()
    cluster = Cluster(me, ("a:1", "c:1"), client, clock, peer_timeout=3.0)
    return cluster, client, clock


def test_the_lowest_live_name_orders_only_after_settling():
    cluster, client, clock = _cluster("b")
    client.up = {"a:1": ("a", []), "c:1": ("c", [])}
    cluster.startService()
    assert not cluster.may_order() and cluster.orderer() == "a"
    clock.advance(1)
    clock.advance(1)
    assert cluster.settled and cluster.orderer() == "a" and not cluster.may_order()
    # a stops answering: after peer_timeout b takes over.
    del client.up["a:1"]
    for _ in range(4):
        clock.advance(1)
    assert cluster.orderer() == "b" and cluster.may_order()
    assert set(cluster.live()) == {"c:1"}


def test_a_peer_up_is_announced_and_its_orders_are_left_to_it():
    cluster, client, clock = _cluster("a")
    ups = []
    cluster.on_peer_up = ups.append
    cluster.startService()
    assert ups == []
    client.up = {"c:1": ("c", [["le", "x.example.com"]])}
    clock.advance(1)
    assert ups == ["c:1"]
    assert cluster.in_flight_elsewhere() == {("le", "x.example.com")}
    clock.advance(1)
    assert ups == ["c:1"]  # once, not every round


def test_peer_resource_refuses_what_is_not_sealed_for_it():
    sealer = Sealer(b"k" * 32)
    seen = []
    resource = PeerResource(sealer, {"/v1/hello": lambda v: seen.append(v) or {"name": "a"}})

    def post(path, body):
        request = DummyRequest([path.lstrip(b"/")])
        request.path = path
        request.method = b"POST"
        from io import BytesIO

        request.content = BytesIO(body)
        return request, resource.render_POST(request)

    request, reply = post(b"/v1/hello", sealer.seal(b"/v1/hello", {"name": "b"}))
    assert sealer.open(b"/v1/hello reply", reply) == {"name": "a"} and seen == [{"name": "b"}]
    request, reply = post(b"/v1/hello", Sealer(b"z" * 32).seal(b"/v1/hello", {"name": "x"}))
    assert request.responseCode == 403 and reply == b"" and len(seen) == 1
    request, reply = post(b"/v1/other", sealer.seal(b"/v1/other", {}))
    assert request.responseCode == 403


def test_no_ordering_until_every_known_instance_answered_or_the_grace_is_over():
    clock = Clock()
    client = FakeClient()
    cluster = Cluster("a", ("b:1", "c:1"), client, clock, peer_timeout=3.0)
    client.up = {"c:1": ("c", [])}  # b is not up yet
    cluster.startService()
    for _ in range(5):
        clock.advance(1)
    assert not cluster.settled and not cluster.may_order()
    client.up["b:1"] = ("b", [])
    clock.advance(1)
    assert cluster.settled and cluster.may_order()
    lonely = Cluster("a", ("b:1", "c:1"), FakeClient(), clock, peer_timeout=3.0)
    lonely.startService()
    for _ in range(13):
        clock.advance(1)
    assert not lonely.settled
    clock.advance(1)
    assert lonely.settled and lonely.may_order()  # alone after the grace: it orders


def _peer_protocol():
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    from edge.acme.service import _quiet_site

    sealer = Sealer(b"k" * 32)
    # Its own clock: a Site on the global reactor leaves the channels' timeouts
    # and abort calls behind for whichever trial test runs the reactor next.
    site = _quiet_site()(PeerResource(sealer, {"/v1/hello": lambda v: {"name": "a"}}), reactor=Clock())
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    transport = StringTransport()
    protocol.makeConnection(transport)
    return sealer, protocol, transport


def test_peer_port_drops_a_body_larger_than_any_message_unread():
    from edge.acme.seal import MAX_MESSAGE

    _, protocol, transport = _peer_protocol()
    protocol.dataReceived(
        b"POST /v1/hello HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (MAX_MESSAGE + 1) + b"x" * 1000
    )
    assert transport.disconnecting or transport.disconnected or getattr(transport, "aborted", False)
    assert transport.value() == b""


def test_peer_port_drops_a_chunked_body_past_the_bound():
    from edge.acme.seal import MAX_MESSAGE

    _, protocol, transport = _peer_protocol()
    protocol.dataReceived(b"POST /v1/hello HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (1 << 20, b"x" * (1 << 20))
    for _ in range(MAX_MESSAGE // (1 << 20) + 1):
        protocol.dataReceived(chunk)
    assert getattr(transport, "aborted", False) or transport.disconnecting
    assert transport.value() == b""


def test_peer_port_answers_a_sealed_hello():
    sealer, protocol, transport = _peer_protocol()
    body = sealer.seal(b"/v1/hello", {"name": "b"})
    protocol.dataReceived(b"POST /v1/hello HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    head, _, reply = transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert sealer.open(b"/v1/hello reply", reply) == {"name": "a"}
