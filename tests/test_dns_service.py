"""
The DNS service's life cycle on a memory reactor: where it binds, how it
follows the publisher, which upstreams it picks, how it stops.
"""

from __future__ import annotations

import dns.message
import dns.rcode
import pytest
from twisted.internet.testing import MemoryReactorClock

from edge.config import Config, DNSConfig
from edge.discovery.publisher import SnapshotPublisher
from edge.dns import make_dns_service
from edge.dns.forward import parse_upstream, resolv_conf_servers
from edge.dns.server import DNSDatagramServer, DNSService, DNSStreamFactory
from edge.rules import Host
from edge.snapshot import Node, Router, Snapshot


class Reactor(MemoryReactorClock):
    """MemoryReactorClock plus a recorded listenUDP."""

    def __init__(self):
        super().__init__()
        self.udpPorts_ = []

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        fake = _Port()
        self.udpPorts_.append((port, protocol, interface, fake))
        protocol.makeConnection(fake)
        return fake


class _Port:
    stopped = False

    def write(self, data, addr):
        pass

    def stopListening(self):
        self.stopped = True


def snapshot(host: str) -> Snapshot:
    return Snapshot.build(
        routers=[Router(f"{host}@docker", Host((host,)), f"Host:{host}", "s")],
        nodes=[Node("n1", "mgr", "manager", "192.168.1.10")],
    )


def ask(service: DNSService, name: str) -> dns.message.Message:
    query = dns.message.make_query(name, "A")
    return dns.message.from_wire(service.responder.handle(query.to_wire(), "127.0.0.1"))


@pytest.fixture
def running():
    reactor = Reactor()
    publisher = SnapshotPublisher(reactor, debounce=0)
    config = Config(dns=DNSConfig(port=5454, interfaces=("127.0.0.1", "::1"), upstream=("192.0.2.53",)))
    service = make_dns_service(config, publisher, reactor)
    service.privilegedStartService()
    service.startService()
    yield reactor, publisher, service
    if service.running:
        service.stopService()


def test_binds_udp_and_tcp_on_every_interface_before_privileges_drop(running):
    reactor, _publisher, _service = running
    assert [(p, i) for p, _proto, i, _f in reactor.udpPorts_] == [(5454, "127.0.0.1"), (5454, "::1")]
    assert all(isinstance(proto, DNSDatagramServer) for _p, proto, _i, _f in reactor.udpPorts_)
    assert [(p, i) for p, _f, _b, i in reactor.tcpServers] == [(5454, "127.0.0.1"), (5454, "::1")]
    assert all(isinstance(f, DNSStreamFactory) for _p, f, _b, _i in reactor.tcpServers)


def test_a_published_snapshot_is_answered_in_the_same_reactor_turn(running):
    reactor, publisher, service = running
    publisher.report("docker", snapshot("one.home"))
    assert [r.to_text() for r in ask(service, "one.home").answer[0]] == ["192.168.1.10"]
    publisher.report("docker", snapshot("two.home"))
    # No reactor time passed: the table is swapped inside the publisher's callback.
    assert ask(service, "two.home").answer
    assert not service.responder.table.owns(b"\x03one\x04home\x00")


def test_stop_unbinds_and_unsubscribes(running):
    reactor, publisher, service = running
    service.stopService()
    assert all(fake.stopped for *_rest, fake in reactor.udpPorts_)
    table = service.responder.table
    publisher.report("docker", snapshot("late.home"))
    assert service.responder.table is table


def test_metrics_are_flushed_each_second_on_the_injected_clock(running):
    from edge import metrics

    reactor, publisher, service = running
    publisher.report("docker", snapshot("counted.home"))
    labels = {"qtype": "A", "rcode": "NOERROR", "source": "auth"}
    before = metrics.REGISTRY.get_sample_value("edge_dns_queries_total", labels) or 0
    for _ in range(4):
        ask(service, "counted.home")
    reactor.advance(1.0)
    assert metrics.REGISTRY.get_sample_value("edge_dns_queries_total", labels) == before + 4


def test_hosts_file_problems_keep_the_last_good_contents(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("192.168.1.5 nas\n")
    reactor = Reactor()
    publisher = SnapshotPublisher(reactor, debounce=0)
    service = DNSService(DNSConfig(hosts_file=str(hosts), upstream=("192.0.2.53",)), publisher, reactor)
    service.privilegedStartService()
    assert ask(service, "nas").answer
    hosts.unlink()
    reactor.advance(DNSService.HOSTS_POLL)
    assert ask(service, "nas").answer, "a vanished hosts file keeps its last good names"


def test_default_upstreams_come_from_resolv_conf_and_never_edge_itself(tmp_path):
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(
        "# generated\nsearch lan\nnameserver 127.0.0.1\nnameserver 192.168.1.1\n"
        "nameserver fe80::1%eth0\noptions edns0\n"
    )
    reactor = Reactor()
    publisher = SnapshotPublisher(reactor, debounce=0)
    on_53 = DNSService(DNSConfig(port=53, interfaces=("0.0.0.0",)), publisher, reactor, str(resolv))
    assert on_53.forwarder.servers == [("192.168.1.1", 53), ("fe80::1", 53)]
    on_5353 = DNSService(DNSConfig(port=5353), publisher, reactor, str(resolv))
    assert on_5353.forwarder.servers[0] == ("127.0.0.1", 53)


def test_no_upstream_at_all_gives_servfail_for_foreign_names(tmp_path):
    reactor = Reactor()
    publisher = SnapshotPublisher(reactor, debounce=0)
    service = DNSService(DNSConfig(), publisher, reactor, str(tmp_path / "missing"))
    assert service.forwarder.servers == []
    out = service.responder.handle(dns.message.make_query("example.org", "A").to_wire(), "127.0.0.1")
    results = []
    out.addCallback(results.append)
    assert dns.message.from_wire(results[0]).rcode() == dns.rcode.SERVFAIL


@pytest.mark.parametrize(
    "text, expected",
    [
        ("192.168.1.1", ("192.168.1.1", 53)),
        ("192.168.1.1:5353", ("192.168.1.1", 5353)),
        ("::1", ("::1", 53)),
        ("[::1]:5353", ("::1", 5353)),
        ("[fd00::1]", ("fd00::1", 53)),
    ],
)
def test_upstream_addresses(text, expected):
    assert parse_upstream(text) == expected


@pytest.mark.parametrize("text", ["dns.google", "1.2.3.4:0", "1.2.3.4:x", "[::1]x"])
def test_bad_upstream_addresses(text):
    with pytest.raises(ValueError):
        parse_upstream(text)


def test_resolv_conf_parsing_skips_junk():
    assert resolv_conf_servers("nameserver\nnameserver bogus\nnameserver 10.0.0.2 # x\n") == [("10.0.0.2", 53)]


def test_sighup_reload_applies_records_and_policy_but_not_the_port(running):
    from edge.config import DNSRecord

    reactor, publisher, service = running
    publisher.report("docker", snapshot("one.home"))
    forwarder = service.forwarder
    new = Config(
        dns=DNSConfig(
            port=9999,
            interfaces=("127.0.0.1", "::1"),
            upstream=("192.0.2.53",),
            allow_recursion=("10.0.0.0/8",),
            records=(DNSRecord("nas.home", "A", "192.168.1.5"),),
            ttl=30,
        )
    )
    service.reload(new)
    response = ask(service, "nas.home")
    assert [r.to_text() for r in response.answer[0]] == ["192.168.1.5"]
    assert response.answer[0].ttl == 30
    assert ask(service, "one.home").answer, "snapshot names stay"
    assert service.config.port == 5454, "the port needs a restart"
    assert service.forwarder is forwarder, "same upstreams: the cache is kept"
    refused = dns.message.from_wire(
        service.responder.handle(dns.message.make_query("example.org", "A").to_wire(), "127.0.0.1")
    )
    assert refused.rcode() == dns.rcode.REFUSED
    service.reload(Config(dns=DNSConfig(port=5454, interfaces=("127.0.0.1", "::1"), upstream=("192.0.2.54",))))
    assert service.forwarder.servers == [("192.0.2.54", 53)]


def test_dockers_embedded_resolver_is_not_mistaken_for_edge(tmp_path):
    """In a container on a user-defined network resolv.conf names 127.0.0.11,
    which Docker routes to dockerd even when edge listens on 0.0.0.0:53."""
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.11\noptions ndots:0\n")
    reactor = Reactor()
    publisher = SnapshotPublisher(reactor, debounce=0)
    service = DNSService(DNSConfig(port=53, interfaces=("0.0.0.0",)), publisher, reactor, str(resolv))
    assert service.forwarder.servers == [("127.0.0.11", 53)]
