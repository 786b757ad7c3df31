"""
The names edge answers itself, built from hand-made snapshots.

Queries are made with dnspython and answered by the :class:`Responder`'s
byte path (no sockets, a :class:`~twisted.internet.task.Clock`), so these
tests cover the table and the fast path's framing together.
"""

from __future__ import annotations

import dataclasses

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from twisted.internet.task import Clock

from edge.config import DNSConfig, DNSRecord
from edge.dns.forward import Cache, Forwarder
from edge.dns.hosts import parse_hosts
from edge.dns.server import Responder
from edge.dns.table import build_table
from edge.rules import And, Host, HostRegexp, Not, PathPrefix
from edge.snapshot import Node, PublishedPort, Router, Snapshot, SwarmService

MANAGERS = ("192.168.1.10", "192.168.1.11")

SNAPSHOT = Snapshot.build(
    routers=[
        Router("jenkins@docker", Host(("jenkins.athome.ga",)), "Host:jenkins.athome.ga", "jenkins"),
        Router(
            "apps@docker",
            HostRegexp(("{sub:[a-z]+}.apps.home",), r"[a-z]+\.apps\.home", ("*.apps.home",)),
            "HostRegexp:{sub:[a-z]+}.apps.home",
            "apps",
        ),
        Router(
            "mixed@docker",
            And((Host(("wiki.athome.ga", "WIKI2.athome.ga", "192.168.1.10")), Not(Host(("never.athome.ga",))), PathPrefix(("/x",)))),
            "...",
            "wiki",
        ),
    ],
    nodes=[
        Node("n1", "mgr1", "manager", MANAGERS[0]),
        Node("n2", "mgr2.lan", "manager", MANAGERS[1]),
        Node("n3", "w1", "worker", "192.168.1.20"),
        Node("n4", "w2", "worker", "192.168.1.21", state="down"),
    ],
    swarm_services=[
        SwarmService("web", published_ports=(PublishedPort(80, 30080, mode="host"),), node_ids=("n3",)),
        SwarmService("mesh", published_ports=(PublishedPort(53, 5300, protocol="udp"),)),
        SwarmService("db"),
    ],
)


class Server:
    """A responder on a fake clock, with a table built from the given inputs."""

    def __init__(self, snapshot=SNAPSHOT, config=DNSConfig(), hosts=()):
        self.clock = Clock()
        self.clock.advance(1000)
        self.forwarder = Forwarder([], 1.0, self.clock, Cache(100, self.clock))
        self.responder = Responder(config, self.clock, self.forwarder)
        self.table, self.problems = build_table(snapshot, config, hosts, serial=42)
        self.responder.table = self.table

    def ask(self, name, rdtype="A", client="127.0.0.1", tcp=False, **kwargs) -> dns.message.Message:
        query = dns.message.make_query(name, rdtype, **kwargs)
        out = self.responder.handle(query.to_wire(), client, tcp=tcp)
        assert isinstance(out, bytes), f"{name} {rdtype} was not answered from the table: {out!r}"
        response = dns.message.from_wire(out)
        assert response.id == query.id
        return response


def addresses(response, rdtype="A") -> list[str]:
    return [
        r.to_text()
        for rrset in response.answer
        if rrset.rdtype == dns.rdatatype.from_text(rdtype)
        for r in rrset
    ]


@pytest.fixture
def server():
    return Server()


def test_router_host_answers_manager_addresses_authoritatively(server):
    response = server.ask("jenkins.athome.ga")
    assert response.rcode() == dns.rcode.NOERROR
    assert response.flags & dns.flags.AA
    assert sorted(addresses(response)) == sorted(MANAGERS)
    assert response.answer[0].ttl == DNSConfig().ttl


def test_every_positive_host_of_a_compound_rule_answers_but_negated_ones_do_not(server):
    assert sorted(addresses(server.ask("wiki.athome.ga"))) == sorted(MANAGERS)
    assert sorted(addresses(server.ask("wiki2.athome.ga"))) == sorted(MANAGERS)
    assert not server.table.owns(b"\x05never\x06athome\x02ga\x00")
    # An address in a Host rule is not a DNS name.
    assert not server.table.owns(b"\x03192\x03168\x011\x0210\x00")


def test_advertise_overrides_manager_addresses():
    s = Server(config=DNSConfig(advertise=("10.0.0.1", "fd00::1")))
    assert addresses(s.ask("jenkins.athome.ga")) == ["10.0.0.1"]
    assert addresses(s.ask("jenkins.athome.ga", "AAAA"), "AAAA") == ["fd00::1"]


def test_names_are_case_insensitive_and_the_question_keeps_its_case(server):
    response = server.ask("JeNkInS.AtHoMe.Ga")
    assert sorted(addresses(response)) == sorted(MANAGERS)
    assert response.question[0].name.to_text() == "JeNkInS.AtHoMe.Ga."


def test_wildcard_hosts_answer_for_names_below_them(server):
    for name in ("grafana.apps.home", "a.b.apps.home", "X.APPS.HOME"):
        response = server.ask(name)
        assert sorted(addresses(response)) == sorted(MANAGERS), name
        assert response.answer[0].name.to_text().lower() == name.lower() + "."
    # The suffix itself is not matched by *.apps.home and is not edge's.
    assert not server.table.owns(b"\x04apps\x04home\x00")


def test_several_addresses_rotate_between_answers(server):
    firsts = {addresses(server.ask("managers.swarm.home"))[0] for _ in range(4)}
    assert firsts == set(MANAGERS)


def test_nodata_has_the_soa_with_the_negative_ttl(server):
    response = server.ask("jenkins.athome.ga", "AAAA")
    assert response.rcode() == dns.rcode.NOERROR
    assert response.answer == []
    (soa,) = response.authority
    assert soa.rdtype == dns.rdatatype.SOA
    assert soa.ttl == DNSConfig().ttl
    assert soa[0].minimum == DNSConfig().ttl
    assert soa[0].serial == 42


def test_unknown_name_in_the_zone_is_nxdomain_with_the_zone_soa(server):
    response = server.ask("nothing.swarm.home", "A")
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.flags & dns.flags.AA
    (soa,) = response.authority
    assert soa.name.to_text() == "swarm.home."
    assert soa[0].mname.to_text() == "ns.swarm.home."


def test_cluster_zone_names(server):
    assert sorted(addresses(server.ask("managers.swarm.home"))) == sorted(MANAGERS)
    # Only ready workers: w2 is down.
    assert addresses(server.ask("workers.swarm.home")) == ["192.168.1.20"]
    assert addresses(server.ask("mgr1.swarm.home")) == [MANAGERS[0]]
    # Node host names use their first label.
    assert addresses(server.ask("mgr2.swarm.home")) == [MANAGERS[1]]
    assert addresses(server.ask("w2.swarm.home")) == ["192.168.1.21"]
    ns = server.ask("swarm.home", "NS")
    assert [r.to_text() for r in ns.answer[0]] == ["ns.swarm.home."]
    assert sorted(addresses(server.ask("ns.swarm.home"))) == sorted(MANAGERS)
    assert server.ask("swarm.home", "SOA").answer[0][0].serial == 42


def test_published_services_answer_the_nodes_that_serve_the_port(server):
    # Host mode: only the node running the task.
    assert addresses(server.ask("web.swarm.home")) == ["192.168.1.20"]
    # Ingress mode: every ready node (routing mesh).
    assert sorted(addresses(server.ask("mesh.swarm.home"))) == sorted(MANAGERS + ("192.168.1.20",))
    # Not published: the edge addresses.
    assert sorted(addresses(server.ask("db.swarm.home"))) == sorted(MANAGERS)


def test_srv_records_for_published_ports(server):
    response = server.ask("_80._tcp.web.swarm.home", "SRV")
    assert [r.to_text() for r in response.answer[0]] == ["0 0 30080 w1.swarm.home."]
    udp = server.ask("_53._udp.mesh.swarm.home", "SRV")
    assert sorted(r.target.to_text() for r in udp.answer[0]) == [
        "mgr1.swarm.home.",
        "mgr2.swarm.home.",
        "w1.swarm.home.",
    ]
    assert {r.port for r in udp.answer[0]} == {5300}
    # The empty non-terminal above an SRV name exists: NODATA, not NXDOMAIN (RFC 8020).
    ent = server.ask("_tcp.web.swarm.home", "A")
    assert ent.rcode() == dns.rcode.NOERROR and ent.answer == []


def test_ptr_records_for_node_addresses(server):
    response = server.ask("10.1.168.192.in-addr.arpa", "PTR")
    assert [r.to_text() for r in response.answer[0]] == ["mgr1.swarm.home."]


def test_any_gets_one_rrset_rfc8482(server):
    response = server.ask("swarm.home", "ANY")
    assert len(response.answer) == 1
    addr = server.ask("jenkins.athome.ga", "ANY")
    assert len(addr.answer) == 1 and addr.answer[0].rdtype == dns.rdatatype.A


STATIC = DNSConfig(
    records=(
        DNSRecord("jenkins2.athome.ga", "CNAME", "managers.swarm.home"),
        DNSRecord("outside.athome.ga", "CNAME", "www.example.org"),
        DNSRecord("loop1.home", "CNAME", "loop2.home"),
        DNSRecord("loop2.home", "CNAME", "loop1.home"),
        DNSRecord("nas.home", "A", "192.168.1.5", ttl=60),
        DNSRecord("nas.home", "AAAA", "fd00::5"),
        DNSRecord("nas.home", "TXT", "hello world"),
        DNSRecord("home", "MX", "10 mail.home"),
        DNSRecord("_ldap._tcp.home", "SRV", "0 5 389 nas.home"),
        DNSRecord("192.168.1.5", "PTR", "nas.home"),
        DNSRecord("bad.home", "A", "not-an-address"),
        DNSRecord("wrongfamily.home", "A", "fd00::1"),
        DNSRecord("jenkins.athome.ga", "A", "192.168.1.99"),
    )
)


@pytest.fixture
def static():
    hosts, problems = parse_hosts(
        "# comment\n192.168.1.30 printer printer.home  # trailing\nnonsense\n999.1.1.1 x\n", "hosts"
    )
    s = Server(config=STATIC, hosts=hosts)
    s.hosts_problems = problems
    return s


def test_cname_into_edge_names_is_followed_in_the_same_answer(static):
    response = static.ask("jenkins2.athome.ga")
    rrsets = {(r.name.to_text(), dns.rdatatype.to_text(r.rdtype)) for r in response.answer}
    assert rrsets == {("jenkins2.athome.ga.", "CNAME"), ("managers.swarm.home.", "A")}
    assert sorted(addresses(response)) == sorted(MANAGERS)
    assert response.flags & dns.flags.AA


def test_cname_out_of_edge_names_is_marked_for_the_upstream(static):
    entry = static.table.exact[b"\x07outside\x06athome\x02ga\x00\x00\x01\x00\x01"]
    assert entry.external is not None
    assert entry.external.target == b"\x03www\x07example\x03org\x00"
    # The CNAME itself is answered from the table.
    response = static.ask("outside.athome.ga", "CNAME")
    assert [r.to_text() for r in response.answer[0]] == ["www.example.org."]


def test_cname_loop_is_servfail_not_a_hang(static):
    out = static.responder.handle(dns.message.make_query("loop1.home", "A").to_wire(), "127.0.0.1")
    assert dns.message.from_wire(out).rcode() == dns.rcode.SERVFAIL


def test_static_records_of_every_type(static):
    a = static.ask("nas.home")
    assert addresses(a) == ["192.168.1.5"] and a.answer[0].ttl == 60
    assert addresses(static.ask("nas.home", "AAAA"), "AAAA") == ["fd00::5"]
    assert [r.to_text() for r in static.ask("nas.home", "TXT").answer[0]] == ['"hello world"']
    assert [r.to_text() for r in static.ask("home", "MX").answer[0]] == ["10 mail.home."]
    assert [r.to_text() for r in static.ask("_ldap._tcp.home", "SRV").answer[0]] == ["0 5 389 nas.home."]
    assert [r.to_text() for r in static.ask("5.1.168.192.in-addr.arpa", "PTR").answer[0]] == ["nas.home."]


def test_static_records_win_over_routers_and_clashes_are_reported(static):
    assert addresses(static.ask("jenkins.athome.ga")) == ["192.168.1.99"]
    assert any("jenkins.athome.ga is already defined by static" in p for p in static.problems)


def test_bad_static_records_are_skipped_with_a_problem(static):
    assert any("bad.home" in p and "not-an-address" in p for p in static.problems)
    assert any("wrongfamily.home" in p for p in static.problems)
    # The name exists (NODATA) but has no bogus record.
    assert static.ask("bad.home").answer == []


def test_hosts_file_names_and_their_ptr(static):
    assert addresses(static.ask("printer")) == ["192.168.1.30"]
    assert addresses(static.ask("PRINTER.home")) == ["192.168.1.30"]
    ptr = static.ask("30.1.168.192.in-addr.arpa", "PTR")
    assert [r.to_text() for r in ptr.answer[0]] == ["printer."]
    assert len(static.hosts_problems) == 2
    assert "hosts:3" in static.hosts_problems[0] and "hosts:4" in static.hosts_problems[1]


def test_names_edge_does_not_own_are_not_in_the_table(server):
    for name in (b"\x03www\x06google\x03com\x00", b"\x06athome\x02ga\x00", b"\x04home\x00"):
        assert server.table.lookup(name, 1) is None


def test_no_managers_means_routed_names_exist_without_addresses():
    snapshot = dataclasses.replace(SNAPSHOT, nodes=())
    s = Server(snapshot=snapshot)
    response = s.ask("jenkins.athome.ga")
    assert response.rcode() == dns.rcode.NOERROR and response.answer == []
    assert any("no edge addresses" in p for p in s.problems)


def test_a_removed_service_is_gone_from_the_next_table():
    before = Server()
    assert addresses(before.ask("web.swarm.home"))
    remaining = tuple(s for s in SNAPSHOT.swarm_services if s.name != "web")
    after = Server(snapshot=dataclasses.replace(SNAPSHOT, swarm_services=remaining, routers=()))
    assert after.ask("web.swarm.home").rcode() == dns.rcode.NXDOMAIN
    assert not after.table.owns(b"\x07jenkins\x06athome\x02ga\x00")


def test_no_zone_configured():
    s = Server(config=DNSConfig(zone=""))
    assert sorted(addresses(s.ask("jenkins.athome.ga"))) == sorted(MANAGERS)
    assert s.table.lookup(b"\x08managers\x05swarm\x04home\x00", 1) is None


def test_tcp_routers_hostsni_names_answer_like_router_hosts():
    from edge.snapshot import TCPRouter
    from edge.tcp.rules import parse_tcp_rule

    rule = "HostSNI(`db.athome.ga`) || HostSNI(`*`)"
    snapshot = Snapshot.build(
        routers=SNAPSHOT.routers, nodes=SNAPSHOT.nodes,
        tcp_routers=[TCPRouter("db@docker", parse_tcp_rule(rule), rule, "db")],
    )
    srv = Server(snapshot)
    response = srv.ask("db.athome.ga")
    assert response.rcode() == dns.rcode.NOERROR and response.flags & dns.flags.AA
    assert sorted(addresses(response)) == sorted(MANAGERS)
    assert srv.problems == []
