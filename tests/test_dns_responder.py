"""
The responder's byte path and protocols, with test doubles: framing,
truncation, EDNS, recursion policy, bad input (hand-made and
hypothesis-generated), the forwarding cache on a fake clock, TCP framing.
"""

from __future__ import annotations

import struct

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.names import dns as tdns

from edge import metrics
from edge.config import DNSConfig, DNSRecord
from edge.dns.forward import Cache, Forwarder
from edge.dns.server import DNSDatagramServer, DNSStreamFactory, Responder
from edge.dns.table import build_table
from tests.test_dns_table import SNAPSHOT

BIG = DNSConfig(
    records=tuple(DNSRecord("big.home", "TXT", f"{i:02d}" + "x" * 100) for i in range(9))
    + (DNSRecord("small.home", "A", "192.168.1.5"),)
)


class FakeUpstream:
    """Stands in for twisted.names' client.Resolver: records questions, answers from a dict."""

    def __init__(self):
        self.answers: dict[tuple[str, int], tdns.Message] = {}
        self.udp: list[tuple[str, int]] = []
        self.tcp: list[tuple[str, int]] = []
        self.fail = False
        self.hold: list[defer.Deferred] | None = None

    def _answer(self, queries, log):
        (q,) = queries
        key = (q.name.name.decode().lower(), q.type)
        log.append(key)
        if self.fail:
            return defer.fail(defer.TimeoutError(queries))
        message = self.answers[key]
        if self.hold is not None:
            d = defer.Deferred()
            self.hold.append((d, message))
            return d
        return defer.succeed(message)

    def queryUDP(self, queries, timeout=None):
        return self._answer(queries, self.udp)

    def queryTCP(self, queries, timeout=None):
        message = self.answers[(queries[0].name.name.decode().lower(), queries[0].type)]
        self.tcp.append((queries[0].name.name.decode().lower(), queries[0].type))
        full = tdns.Message(rCode=message.rCode, answer=1)
        full.answers = message.answers
        full.authority = message.authority
        return defer.succeed(full)


def upstream_message(name, rtype=tdns.A, ttl=300, rcode=tdns.OK, answers=(), soa=None, trunc=False):
    m = tdns.Message(answer=1, rCode=rcode, trunc=trunc)
    m.queries = [tdns.Query(name, rtype)]
    m.answers = [tdns.RRHeader(name, r.TYPE, ttl=ttl, payload=r) for r in answers]
    if soa is not None:
        soa_ttl, minimum = soa
        m.authority = [
            tdns.RRHeader(
                "example.org",
                tdns.SOA,
                ttl=soa_ttl,
                payload=tdns.Record_SOA("ns.example.org", "h.example.org", minimum=minimum),
            )
        ]
    return m


class Rig:
    def __init__(self, config=BIG, cache_size=100):
        self.clock = Clock()
        self.clock.advance(10_000)
        self.upstream = FakeUpstream()
        self.forwarder = Forwarder([("127.0.0.1", 53)], 1.0, self.clock, Cache(cache_size, self.clock))
        self.forwarder._resolvers = [self.upstream]
        self.responder = Responder(config, self.clock, self.forwarder)
        self.responder.table, _ = build_table(SNAPSHOT, config, serial=1)

    def raw(self, wire, client="127.0.0.1", tcp=False):
        return self.responder.handle(wire, client, tcp=tcp)

    def ask(self, name, rdtype="A", client="127.0.0.1", tcp=False, **kwargs):
        query = dns.message.make_query(name, rdtype, **kwargs)
        out = self.raw(query.to_wire(), client, tcp)
        if isinstance(out, defer.Deferred):
            out = self_result(out)
        response = dns.message.from_wire(out)
        assert response.id == query.id
        return response


def self_result(d: defer.Deferred):
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


@pytest.fixture
def rig():
    return Rig()


# -- size, truncation, EDNS ------------------------------------------------------


def test_udp_without_edns_truncates_at_512_with_tc_and_no_records(rig):
    response = rig.ask("big.home", "TXT")
    assert response.flags & dns.flags.TC
    assert response.answer == [] and response.rcode() == dns.rcode.NOERROR


def test_tcp_carries_the_whole_answer(rig):
    response = rig.ask("big.home", "TXT", tcp=True)
    assert not response.flags & dns.flags.TC
    assert len(response.answer[0]) == 9


def test_edns_payload_size_lets_a_larger_udp_answer_through(rig):
    response = rig.ask("big.home", "TXT", use_edns=0, payload=4096)
    assert not response.flags & dns.flags.TC
    assert len(response.answer[0]) == 9
    # But never beyond 1232, edge's own limit, nor beyond a small client size.
    small = rig.ask("big.home", "TXT", use_edns=0, payload=600)
    assert small.flags & dns.flags.TC and small.edns == 0


def test_opt_is_echoed_with_edge_payload_and_the_do_bit(rig):
    plain = rig.ask("small.home")
    assert plain.edns == -1  # no OPT asked, none sent
    with_opt = rig.ask("small.home", use_edns=0, payload=4096)
    assert with_opt.edns == 0 and with_opt.payload == 1232
    assert not with_opt.ednsflags & dns.flags.DO
    with_do = rig.ask("small.home", use_edns=0, want_dnssec=True)
    assert with_do.ednsflags & dns.flags.DO


def test_edns_options_are_ignored_and_the_question_answered(rig):
    response = rig.ask(
        "small.home", use_edns=0, options=[dns.edns.GenericOption(10, b"12345678")]
    )
    assert [r.to_text() for r in response.answer[0]] == ["192.168.1.5"]
    assert response.edns == 0


def test_unknown_edns_version_gets_badvers(rig):
    response = rig.ask("small.home", use_edns=1)
    assert response.rcode() == dns.rcode.BADVERS


def test_rd_and_cd_flags_are_copied(rig):
    query = dns.message.make_query("small.home", "A")
    query.flags = dns.flags.CD  # no RD
    response = dns.message.from_wire(rig.raw(query.to_wire()))
    assert not response.flags & dns.flags.RD
    assert response.flags & dns.flags.CD
    assert response.flags & dns.flags.AA and response.flags & dns.flags.QR


# -- recursion policy ---------------------------------------------------------


def test_clients_outside_allow_recursion_are_refused_foreign_names(rig):
    response = rig.ask("www.example.org", client="203.0.113.9")
    assert response.rcode() == dns.rcode.REFUSED
    assert not response.flags & dns.flags.RA
    assert rig.upstream.udp == []
    # edge's own names are still answered, without RA.
    own = rig.ask("small.home", client="203.0.113.9")
    assert own.rcode() == dns.rcode.NOERROR and not own.flags & dns.flags.RA


def test_default_allow_recursion_covers_private_and_mapped_addresses(rig):
    rig.upstream.answers[("www.example.org", tdns.A)] = upstream_message(
        "www.example.org", answers=[tdns.Record_A("192.0.2.1")]
    )
    for client in ("10.1.2.3", "192.168.0.9", "::1", "fd12::1", "::ffff:172.16.0.1", "fe80::1%eth0"):
        assert rig.ask("www.example.org", client=client).rcode() == dns.rcode.NOERROR, client


# -- bad input ----------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x12\x34" + b"\x00" * 5])
def test_packets_shorter_than_a_header_are_dropped_and_counted(rig, data):
    before = rig.responder.bad_packets
    assert rig.raw(data) is None
    assert rig.responder.bad_packets == before + 1


def test_responses_are_never_answered(rig):
    response = dns.message.make_response(dns.message.make_query("small.home", "A"))
    assert rig.raw(response.to_wire()) is None


def test_a_broken_question_gets_formerr_with_the_query_id(rig):
    wire = b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example"  # name runs off the end
    response = dns.message.from_wire(rig.raw(wire))
    assert response.id == 0xABCD and response.rcode() == dns.rcode.FORMERR


def test_two_questions_get_formerr(rig):
    q = dns.message.make_query("small.home", "A")
    wire = bytearray(q.to_wire())
    question = bytes(wire[12:])
    wire[4:6] = b"\x00\x02"
    assert dns.message.from_wire(rig.raw(bytes(wire) + question)).rcode() == dns.rcode.FORMERR


def test_other_opcodes_get_notimp(rig):
    q = dns.message.make_query("small.home", "SOA")
    q.set_opcode(dns.opcode.NOTIFY)
    response = dns.message.from_wire(rig.raw(q.to_wire()))
    assert response.rcode() == dns.rcode.NOTIMP and response.id == q.id


def test_compressed_question_name_takes_the_slow_path():
    rig = Rig()
    # Question name "small.home" written as a pointer chain is unusual but legal-ish:
    # here the name itself is plain but the packet has an answer count of 0 and one
    # trailing additional record that is not OPT: the fast path declines, twisted parses.
    q = dns.message.make_query("small.home", "A")
    wire = q.to_wire()
    extra = b"\x00\x00\x10\x00\x01\x00\x00\x00\x00\x00\x01\x00"  # a TXT record in additional
    wire = wire[:10] + b"\x00\x01" + wire[12:] + extra
    response = dns.message.from_wire(rig.raw(wire))
    assert [r.to_text() for r in response.answer[0]] == ["192.168.1.5"]


def test_bad_packets_are_logged_once_per_interval(rig):
    from twisted.logger import LogLevel, globalLogPublisher

    seen = []
    observer = seen.append
    globalLogPublisher.addObserver(observer)
    try:
        for _ in range(5):
            rig.raw(b"\x00")
        rig.clock.advance(11)
        rig.raw(b"\x00")
    finally:
        globalLogPublisher.removeObserver(observer)
    warnings = [e for e in seen if e.get("log_level") == LogLevel.warn and "Malformed" in e.get("log_format", "")]
    assert [w["count"] for w in warnings] == [1, 5]


query_names = st.lists(
    st.binary(min_size=1, max_size=20).filter(lambda b: b"." not in b), min_size=0, max_size=4
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=600))
def test_fuzz_random_bytes_never_break_the_responder(rig, data):
    check_any_answer(rig, data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.sampled_from(["small.home", "big.home", "jenkins.athome.ga", "x.apps.home", "nope.swarm.home", "www.example.org"]),
    rdtype=st.sampled_from(["A", "AAAA", "TXT", "ANY", "SRV", "CAA"]),
    edns=st.sampled_from([None, 0]),
    flips=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
    cut=st.integers(0, 300),
    tcp=st.booleans(),
)
def test_fuzz_mutated_queries_never_break_the_responder(rig, name, rdtype, edns, flips, cut, tcp):
    rig.upstream.fail = True  # any forwarded question fails over to SERVFAIL at once
    wire = bytearray(dns.message.make_query(name, rdtype, use_edns=edns).to_wire())
    for position, value in flips:
        if position < len(wire):
            wire[position] = value
    if cut < len(wire):
        del wire[len(wire) - cut :]
    check_any_answer(rig, bytes(wire), tcp)


def check_any_answer(rig, data, tcp=False):
    out = rig.raw(data, tcp=tcp)
    if isinstance(out, defer.Deferred):
        out = self_result(out)
    if out is None:
        return
    assert isinstance(out, bytes)
    assert out[:2] == data[:2], "the answer carries the query's ID"
    assert out[2] & 0x80, "the answer is a response"
    # Whatever edge sends, a strict parser accepts it.
    dns.message.from_wire(out, question_only=False)
    if not tcp:
        assert len(out) <= 1232


# -- forwarding and the cache ----------------------------------------------------


def test_forwarded_answer_is_cached_and_counted_down(rig):
    rig.upstream.answers[("www.example.org", tdns.A)] = upstream_message(
        "www.example.org", ttl=300, answers=[tdns.Record_A("192.0.2.1")]
    )
    first = rig.ask("www.example.org")
    assert [r.to_text() for r in first.answer[0]] == ["192.0.2.1"]
    assert first.answer[0].ttl == 300 and not first.flags & dns.flags.AA
    rig.clock.advance(100.5)
    second = rig.ask("WWW.example.ORG")
    assert rig.upstream.udp == [("www.example.org", tdns.A)]
    assert second.answer[0].ttl == 200
    assert second.question[0].name.to_text() == "WWW.example.ORG."
    rig.clock.advance(200)
    rig.ask("www.example.org")
    assert len(rig.upstream.udp) == 2, "expired after its TTL"


def test_cache_hits_are_served_synchronously(rig):
    rig.upstream.answers[("www.example.org", tdns.A)] = upstream_message(
        "www.example.org", answers=[tdns.Record_A("192.0.2.1")]
    )
    wire = dns.message.make_query("www.example.org", "A").to_wire()
    assert isinstance(rig.raw(wire), defer.Deferred)
    assert isinstance(rig.raw(wire), bytes)


def test_nxdomain_is_cached_by_the_soa_minimum(rig):
    rig.upstream.answers[("gone.example.org", tdns.A)] = upstream_message(
        "gone.example.org", rcode=tdns.ENAME, soa=(3600, 30)
    )
    response = rig.ask("gone.example.org")
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.authority[0].rdtype == dns.rdatatype.SOA
    rig.clock.advance(29)
    assert rig.ask("gone.example.org").rcode() == dns.rcode.NXDOMAIN
    assert len(rig.upstream.udp) == 1
    rig.clock.advance(2)
    rig.ask("gone.example.org")
    assert len(rig.upstream.udp) == 2


def test_negative_answers_without_soa_are_not_cached(rig):
    rig.upstream.answers[("gone.example.org", tdns.A)] = upstream_message(
        "gone.example.org", rcode=tdns.ENAME
    )
    rig.ask("gone.example.org")
    rig.ask("gone.example.org")
    assert len(rig.upstream.udp) == 2


def test_truncated_upstream_answer_is_asked_again_over_tcp(rig):
    rig.upstream.answers[("big.example.org", tdns.TXT)] = upstream_message(
        "big.example.org", tdns.TXT, trunc=True, answers=[tdns.Record_TXT(b"x" * 200)] * 3
    )
    response = rig.ask("big.example.org", "TXT", use_edns=0, payload=1232)
    assert rig.upstream.tcp == [("big.example.org", tdns.TXT)]
    assert len(response.answer[0]) == 1  # three identical TXT records are one rdata
    assert not response.flags & dns.flags.TC


def test_all_upstreams_failing_is_servfail_and_not_cached(rig):
    rig.upstream.fail = True
    rig.upstream.answers[("www.example.org", tdns.A)] = upstream_message("www.example.org")
    assert rig.ask("www.example.org").rcode() == dns.rcode.SERVFAIL
    rig.upstream.fail = False
    assert rig.ask("www.example.org").rcode() == dns.rcode.NOERROR


def test_concurrent_questions_share_one_upstream_query(rig):
    rig.upstream.hold = []
    rig.upstream.answers[("www.example.org", tdns.A)] = upstream_message(
        "www.example.org", answers=[tdns.Record_A("192.0.2.1")]
    )
    wire = dns.message.make_query("www.example.org", "A").to_wire()
    pending = [rig.raw(wire) for _ in range(3)]
    assert len(rig.upstream.udp) == 1
    ((d, message),) = rig.upstream.hold
    d.callback(message)
    assert all(dns.message.from_wire(self_result(p)).answer for p in pending)


def test_cache_is_bounded_lru():
    rig = Rig(cache_size=2)
    for name in ("a.example.org", "b.example.org", "c.example.org"):
        rig.upstream.answers[(name, tdns.A)] = upstream_message(name, answers=[tdns.Record_A("192.0.2.1")])
        rig.ask(name)
    assert len(rig.forwarder.cache) == 2
    rig.ask("a.example.org")
    assert rig.upstream.udp.count(("a.example.org", tdns.A)) == 2


def test_cname_to_a_foreign_name_is_resolved_upstream_and_answered_whole():
    config = DNSConfig(records=(DNSRecord("outside.athome.ga", "CNAME", "www.example.org"),))
    rig = Rig(config=config)
    rig.upstream.answers[("www.example.org", tdns.A)] = upstream_message(
        "www.example.org", answers=[tdns.Record_A("192.0.2.1")]
    )
    response = rig.ask("outside.athome.ga")
    assert [(r.name.to_text(), dns.rdatatype.to_text(r.rdtype)) for r in response.answer] == [
        ("outside.athome.ga.", "CNAME"),
        ("www.example.org.", "A"),
    ]
    assert response.flags & dns.flags.AA
    # A client without recursion gets the CNAME alone.
    refused = rig.ask("outside.athome.ga", client="203.0.113.1")
    assert [dns.rdatatype.to_text(r.rdtype) for r in refused.answer] == ["CNAME"]


def test_owned_names_are_never_served_from_the_cache(rig):
    rig.upstream.answers[("jenkins.athome.ga", tdns.A)] = upstream_message(
        "jenkins.athome.ga", answers=[tdns.Record_A("192.0.2.66")]
    )
    rig.forwarder.cache.put(b"\x07jenkins\x06athome\x02ga\x00\x00\x01\x00\x01", b"\x07jenkins\x06athome\x02ga\x00", rig.upstream.answers[("jenkins.athome.ga", tdns.A)])
    assert "192.0.2.66" not in [r.to_text() for r in rig.ask("jenkins.athome.ga").answer[0]]


def test_metrics_are_flushed_in_batches(rig):
    def value(name, labels=None):
        return metrics.REGISTRY.get_sample_value(name, labels or {}) or 0

    labels = {"qtype": "A", "rcode": "NOERROR", "source": "auth"}
    before = value("edge_dns_queries_total", labels)
    for _ in range(3):
        rig.ask("small.home")
    assert value("edge_dns_queries_total", labels) == before
    rig.responder.flush_metrics()
    assert value("edge_dns_queries_total", labels) == before + 3


# -- protocols ---------------------------------------------------------------------


def test_udp_protocol_answers_through_the_transport(rig):
    proto = DNSDatagramServer(rig.responder)

    class Transport:
        def __init__(self):
            self.sent = []

        def write(self, data, addr):
            self.sent.append((data, addr))

    proto.transport = Transport()
    proto.startProtocol()
    query = dns.message.make_query("small.home", "A")
    proto.datagramReceived(query.to_wire(), ("127.0.0.1", 5555))
    proto.datagramReceived(b"junk", ("127.0.0.1", 5556))
    ((data, addr),) = proto.transport.sent
    assert addr == ("127.0.0.1", 5555) and dns.message.from_wire(data).id == query.id


def frames(data: bytes) -> list[bytes]:
    out = []
    while data:
        (n,) = struct.unpack("!H", data[:2])
        out.append(data[2 : 2 + n])
        data = data[2 + n :]
    return out


def test_tcp_frames_pipelined_queries_and_formerr_for_a_bad_one(rig):
    from twisted.internet.address import IPv4Address

    factory = DNSStreamFactory(rig.responder, rig.clock, idle_timeout=10)
    proto = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 4444))
    proto.makeConnection(transport)
    q1 = dns.message.make_query("small.home", "A").to_wire()
    bad = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x09short"
    q2 = dns.message.make_query("big.home", "TXT").to_wire()
    stream = b"".join(struct.pack("!H", len(m)) + m for m in (q1, bad, q2))
    for i in range(0, len(stream), 7):  # arrives in small pieces
        proto.dataReceived(stream[i : i + 7])
    replies = [dns.message.from_wire(f) for f in frames(transport.value())]
    assert [r.rcode() for r in replies] == [dns.rcode.NOERROR, dns.rcode.FORMERR, dns.rcode.NOERROR]
    assert len(replies[2].answer[0]) == 9  # whole, no truncation over TCP
    assert not transport.disconnecting
    rig.clock.advance(11)
    assert transport.disconnecting or transport.disconnected, "idle connections are closed"
    proto.connectionLost(None)
    assert factory.open == 0


def test_tcp_connections_beyond_the_limit_are_closed(rig):
    from twisted.internet.address import IPv4Address

    factory = DNSStreamFactory(rig.responder, rig.clock, max_connections=1)
    kept = []
    for _ in range(2):
        proto = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 4444))
        proto.makeConnection(transport)
        kept.append(transport)
    assert not kept[0].disconnecting
    assert kept[1].disconnecting or kept[1].disconnected
    assert factory.open == 1


def test_zone_transfers_are_refused(rig):
    for rdtype in ("AXFR", "IXFR"):
        assert rig.ask("swarm.home", rdtype, tcp=True).rcode() == dns.rcode.REFUSED
    assert rig.upstream.udp == []


def test_edns_cookie_option_still_takes_the_fast_path(rig):
    query = dns.message.make_query(
        "small.home", "A", use_edns=0, options=[dns.edns.GenericOption(10, b"12345678")]
    )
    wire = query.to_wire()
    rig.responder._handle = None  # the fast path must not need the general one
    response = dns.message.from_wire(rig.raw(wire))
    assert [r.to_text() for r in response.answer[0]] == ["192.168.1.5"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(st.binary(max_size=80), max_size=8))
def test_fuzz_garbage_on_tcp_never_breaks_the_stream_handler(rig, chunks):
    from twisted.internet.address import IPv4Address

    rig.upstream.fail = True
    factory = DNSStreamFactory(rig.responder, rig.clock)
    proto = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 4444))
    proto.makeConnection(transport)
    for chunk in chunks:
        if transport.disconnecting:
            break
        proto.dataReceived(chunk)
    for frame in frames(transport.value()):
        message = dns.message.from_wire(frame)
        assert message.flags & dns.flags.QR
    proto.connectionLost(None)
    assert factory.open == 0


def test_servfail_or_refused_from_one_upstream_moves_on_to_the_next(rig):
    second = FakeUpstream()
    rig.forwarder._resolvers = [rig.upstream, second]
    rig.upstream.answers[("www.example.org", tdns.A)] = upstream_message("www.example.org", rcode=tdns.ESERVER)
    second.answers[("www.example.org", tdns.A)] = upstream_message(
        "www.example.org", answers=[tdns.Record_A("192.0.2.7")]
    )
    assert [r.to_text() for r in rig.ask("www.example.org").answer[0]] == ["192.0.2.7"]
    assert rig.upstream.udp == second.udp == [("www.example.org", tdns.A)]
    # When every upstream fails that way, the client gets SERVFAIL, never an
    # upstream's REFUSED (that is about edge, not the name; dnsmasq does the same).
    rig.upstream.answers[("b.example.org", tdns.A)] = upstream_message("b.example.org", rcode=tdns.ESERVER)
    second.answers[("b.example.org", tdns.A)] = upstream_message("b.example.org", rcode=tdns.EREFUSED)
    assert rig.ask("b.example.org").rcode() == dns.rcode.SERVFAIL


def test_an_upstream_refused_reaches_the_client_as_servfail(rig):
    rig.upstream.answers[("c.example.org", tdns.A)] = upstream_message("c.example.org", rcode=tdns.EREFUSED)
    assert rig.ask("c.example.org").rcode() == dns.rcode.SERVFAIL


# -- hostile clients (issue 9) ---------------------------------------------------------


@pytest.mark.parametrize("field", [4, 6, 8, 10], ids=["QDCOUNT", "ANCOUNT", "NSCOUNT", "ARCOUNT"])
def test_a_header_claiming_more_records_than_the_packet_holds_gets_formerr(rig, field):
    q = dns.message.make_query("small.home", "A")
    wire = bytearray(q.to_wire())
    count = struct.unpack_from("!H", wire, field)[0]
    struct.pack_into("!H", wire, field, count + 1)
    response = dns.message.from_wire(rig.raw(bytes(wire)))
    assert response.rcode() == dns.rcode.FORMERR and response.id == q.id
    assert not response.answer


class FillingTransport(StringTransport):
    """A transport that pauses its producer past ``limit`` unread bytes, as a TCP one does."""

    def __init__(self, limit: int):
        from twisted.internet.address import IPv4Address

        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 4444))
        self.limit = limit
        self.full = False
        self.read = b""

    def write(self, data):
        super().write(data)
        if self.producer is not None and not self.full and len(self.value()) > self.limit:
            self.full = True
            self.producer.pauseProducing()

    def drain(self):
        """The client reads everything written so far."""
        self.read += self.value()
        self.clear()
        if self.full:
            self.full = False
            self.producer.resumeProducing()


def _stream(*queries) -> bytes:
    return b"".join(struct.pack("!H", len(w)) + w for w in (q.to_wire() for q in queries))


def test_tcp_stops_reading_and_answering_while_the_client_does_not_read(rig):
    factory = DNSStreamFactory(rig.responder, rig.clock)
    proto = factory.buildProtocol(None)
    transport = FillingTransport(limit=5000)
    proto.makeConnection(transport)
    queries = [dns.message.make_query("big.home", "TXT") for _ in range(30)]
    before = metrics.REGISTRY.get_sample_value("edge_dns_tcp_paused_total") or 0
    proto.dataReceived(_stream(*queries))  # 30 queries in one read, ~1 KB answer each
    held = len(frames(transport.value()))
    assert 5 <= held < 10, "answers stop once the buffer is full"
    assert transport.producerState == "paused", "and the socket is no longer read"
    assert metrics.REGISTRY.get_sample_value("edge_dns_tcp_paused_total") == before + 1
    for _ in range(30):  # the client reads; bounded
        if not transport.full:
            break
        transport.drain()
    transport.drain()
    answered = [dns.message.from_wire(f).id for f in frames(transport.read)]
    assert answered == [q.id for q in queries], "every query answered once, in order"
    assert transport.producerState == "producing"


def test_a_tcp_client_that_never_reads_is_closed_by_the_idle_timeout(rig):
    factory = DNSStreamFactory(rig.responder, rig.clock, idle_timeout=10)
    proto = factory.buildProtocol(None)
    transport = FillingTransport(limit=2000)
    proto.makeConnection(transport)
    proto.dataReceived(_stream(*[dns.message.make_query("big.home", "TXT") for _ in range(100)]))
    assert transport.full and not transport.disconnecting
    written = len(transport.value())
    proto.dataReceived(_stream(dns.message.make_query("big.home", "TXT")))  # more arrives: held
    assert len(transport.value()) == written
    rig.clock.advance(11)
    assert transport.disconnecting or transport.disconnected
    proto.connectionLost(None)
    assert factory.open == 0


def test_tcp_caps_forwarded_questions_in_flight_per_connection(rig):
    rig.upstream.hold = []
    names = [f"n{i}.example.org" for i in range(10)]
    for name in names:
        rig.upstream.answers[(name, tdns.A)] = upstream_message(name, answers=[tdns.Record_A("192.0.2.1")])
    factory = DNSStreamFactory(rig.responder, rig.clock, max_in_flight=4)
    proto = factory.buildProtocol(None)
    transport = FillingTransport(limit=1 << 20)
    proto.makeConnection(transport)
    queries = [dns.message.make_query(n, "A") for n in names]
    proto.dataReceived(_stream(*queries))
    assert len(rig.upstream.udp) == 4 and transport.producerState == "paused"
    for _ in range(10):  # upstream answers; bounded
        if not rig.upstream.hold:
            break
        d, message = rig.upstream.hold.pop(0)
        d.callback(message)
    answers = [dns.message.from_wire(f) for f in frames(transport.value())]
    assert sorted(a.id for a in answers) == sorted(q.id for q in queries)
    assert transport.producerState == "producing"


def test_refused_tcp_connections_are_logged_once_per_interval_and_counted(rig):
    from twisted.internet.address import IPv4Address
    from twisted.logger import LogLevel, globalLogPublisher

    factory = DNSStreamFactory(rig.responder, rig.clock, max_connections=1)
    before = metrics.REGISTRY.get_sample_value("edge_dns_tcp_refused_total") or 0
    seen = []
    globalLogPublisher.addObserver(seen.append)
    try:
        for i in range(7):
            if i == 6:
                rig.clock.advance(11)
            proto = factory.buildProtocol(None)
            transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 4444))
            proto.makeConnection(transport)
            assert (transport.disconnecting or transport.disconnected) == (i > 0)
    finally:
        globalLogPublisher.removeObserver(seen.append)
    warnings = [e for e in seen if e.get("log_level") == LogLevel.warn and "Refusing" in e.get("log_format", "")]
    assert [w["count"] for w in warnings] == [1, 5]
    assert metrics.REGISTRY.get_sample_value("edge_dns_tcp_refused_total") == before + 6


tcp_actions = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.lists(st.sampled_from(["big", "small", "bad", "nx"]), min_size=1, max_size=12),
                  st.integers(min_value=1, max_value=300)),
        st.tuples(st.just("drain"), st.just([]), st.just(0)),
    ),
    max_size=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=tcp_actions, limit=st.integers(min_value=0, max_value=6000))
def test_fuzz_tcp_back_pressure_answers_each_query_once_in_order_within_a_bound(rig, actions, limit):
    """
    Queries arrive in arbitrary pieces while the client reads at arbitrary
    moments: unread output never exceeds the buffer plus one answer, and in
    the end every query is answered exactly once, in order.
    """
    factory = DNSStreamFactory(rig.responder, rig.clock)
    proto = factory.buildProtocol(None)
    transport = FillingTransport(limit=limit)
    proto.makeConnection(transport)
    make = {
        "big": lambda: dns.message.make_query("big.home", "TXT").to_wire(),
        "small": lambda: dns.message.make_query("small.home", "A").to_wire(),
        "nx": lambda: dns.message.make_query("nothing.swarm.home", "A").to_wire(),
        # A question that runs off the end: FORMERR, in its turn.
        "bad": lambda: b"\x55\x66\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example",
    }
    sent_ids = []
    biggest = len(rig.raw(make["big"](), tcp=True)) + 2
    for kind, names, piece in actions:
        if kind == "drain":
            transport.drain()
            continue
        wires = [make[n]() for n in names]
        sent_ids += [w[:2] for w in wires]
        stream = b"".join(struct.pack("!H", len(w)) + w for w in wires)
        for i in range(0, len(stream), piece):
            proto.dataReceived(stream[i : i + piece])
            assert len(transport.value()) <= limit + biggest
    for _ in range(len(sent_ids) + 1):  # the client reads to the end; bounded
        transport.drain()
        if not transport.full:
            break
    transport.drain()
    assert [f[:2] for f in frames(transport.read)] == sent_ids
    proto.connectionLost(None)
    assert factory.open == 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    more=st.tuples(*[st.integers(min_value=0, max_value=3)] * 4).filter(any),
    edns=st.booleans(),
    cookie=st.booleans(),
)
def test_fuzz_a_header_counting_records_that_are_not_there_always_gets_formerr(rig, more, edns, cookie):
    options = [dns.edns.GenericOption(10, b"12345678")] if cookie else []
    q = dns.message.make_query("small.home", "A", use_edns=0 if edns else False, options=options)
    wire = bytearray(q.to_wire())
    counts = struct.unpack_from("!4H", wire, 4)
    struct.pack_into("!4H", wire, 4, *(c + m for c, m in zip(counts, more)))
    response = dns.message.from_wire(rig.raw(bytes(wire)))
    assert response.rcode() == dns.rcode.FORMERR and response.id == q.id and not response.answer
