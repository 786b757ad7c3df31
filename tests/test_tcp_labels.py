"""TCP/UDP labels into snapshot values, and the TCP rule language (pure logic)."""

from __future__ import annotations

import re

import pytest

from edge.discovery.build import DockerState, build_snapshot
from edge.config import DockerConfig
from edge.discovery.labels import read_labels
from edge.discovery.rule_parser import RuleError
from edge.snapshot import InFlightConn, IPAllowList, TCPRouterTLS
from edge.tcp.rules import matches, parse_tcp_rule

DOC = "docs/labels.md"


def _doc_rows():
    rows, section = [], ""
    with open(DOC, encoding="utf-8") as f:
        for line in f:
            if line.startswith("## "):
                section = line[3:].strip()
            if section == "TCP and UDP labels" and line.startswith("| `traefik."):
                cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
                for label in re.findall(r"`([^`]+)`", cells[0]):
                    if not label.startswith("."):
                        rows.append((label, cells[1]))
    return rows


_VALUES = {
    "rule": "HostSNI(`db.test`)", "entrypoints": "pg", "service": "db", "priority": "5",
    "middlewares": "m", "tls": "true", "passthrough": "true", "certresolver": "le",
    "main": "db.test", "sans": "db2.test", "port": "5432", "version": "2",
    "sourcerange": "10.0.0.0/8", "amount": "3",
}


@pytest.mark.parametrize("label, support", _doc_rows())
def test_doc_rows_say_what_the_reader_does(label, support):
    key = label.replace("<router>", "r").replace("<service>", "db").replace("<middleware>", "m").replace("<n>", "0")
    proto = key.split(".")[1]
    labels = {f"traefik.{proto}.services.db.loadbalancer.server.port": "5432", key: _VALUES.get(key.rsplit(".", 1)[-1], "true")}
    if proto == "tcp":
        labels.setdefault("traefik.tcp.routers.r.rule", "HostSNI(`db.test`)")
        labels.setdefault("traefik.tcp.routers.r.tls", "true")
        if ".middlewares.m." in key:
            labels["traefik.tcp.routers.r.middlewares"] = "m"
        if key.endswith(".middlewares"):
            labels["traefik.tcp.middlewares.m.inflightconn.amount"] = "2"
    else:
        labels.setdefault("traefik.udp.routers.r.entrypoints", "game")
    config = read_labels("doc_svc", labels)
    routers = config.l4.tcp_routers + config.l4.udp_routers
    if support == "supported":
        assert config.problems == (), (key, config.problems)
        assert [r.name for r in routers] == ["r@docker"], key
    else:
        assert [p.label for p in config.problems] == [key]
        assert all(p.level == "warning" for p in config.problems)


def _l4(labels):
    config = read_labels("app", labels)
    return config, config.l4


def test_passthrough_router_and_proxy_protocol_service():
    config, l4 = _l4({
        "traefik.tcp.routers.pg.rule": "HostSNI(`DB.example.com`)",
        "traefik.tcp.routers.pg.tls.passthrough": "true",
        "traefik.tcp.routers.pg.entrypoints": "websecure, pg",
        "traefik.tcp.services.pg.loadbalancer.server.port": "5432",
        "traefik.tcp.services.pg.loadbalancer.proxyProtocol.version": "1",
    })
    assert config.problems == () and config.routers == ()  # no HTTP router for TCP-only labels
    (router,) = l4.tcp_routers
    assert router.tls == TCPRouterTLS(passthrough=True)
    assert router.entry_points == ("websecure", "pg") and router.service == "pg@docker"
    assert matches(router.rule, "db.example.com", (), "10.1.1.1")
    (service,) = l4.services
    assert (service.name, service.port, service.proxy_protocol, service.protocol) == ("pg@docker", 5432, 1, "tcp")


@pytest.mark.parametrize("labels, message", [
    ({"traefik.tcp.routers.r.rule": "HostSNI(`a.test`)"}, "needs TLS"),
    ({"traefik.tcp.routers.r.rule": "ClientIP(`10.0.0.0/8`)"}, "needs HostSNI(`*`)"),
    ({"traefik.tcp.routers.r.rule": "Host(`a.test`)"}, "unknown TCP matcher"),
    ({"traefik.tcp.routers.r.rule": "HostSNI(`*`)", "traefik.tcp.routers.r.middlewares": "nope"}, "not defined"),
    ({"traefik.tcp.routers.r.rule": "HostSNI(`*`)", "traefik.tcp.routers.r.middlewares": "m",
      "traefik.tcp.middlewares.m.ipallowlist.sourcerange": "10.0.0.0/33"}, "not an address"),
    ({"traefik.tcp.routers.r.rule": ""}, "has no rule"),
])
def test_router_mistakes_drop_only_that_router_with_an_error(labels, message):
    labels = {**labels, "traefik.tcp.routers.ok.rule": "HostSNI(`*`)",
              "traefik.tcp.services.s.loadbalancer.server.port": "22"}
    config, l4 = _l4(labels)
    assert [r.name for r in l4.tcp_routers] == ["ok@docker"]
    assert any(p.level == "error" and message in p.message for p in config.problems), config.problems


def test_middlewares_resolve_in_order_and_both_spellings_work():
    _config, l4 = _l4({
        "traefik.tcp.routers.r.rule": "HostSNI(`*`)",
        "traefik.tcp.routers.r.middlewares": "lan,few",
        "traefik.tcp.middlewares.lan.ipwhitelist.sourcerange": "192.168.0.0/16, 10.0.0.1",
        "traefik.tcp.middlewares.few.inflightconn.amount": "4",
        "traefik.tcp.services.s.loadbalancer.server.port": "22",
    })
    (router,) = l4.tcp_routers
    assert router.middlewares == (IPAllowList(("192.168.0.0/16", "10.0.0.1")), InFlightConn(4))


def test_udp_router_defaults_to_the_only_udp_service():
    config, l4 = _l4({"traefik.udp.routers.game.entrypoints": "game",
                      "traefik.udp.services.srv.loadbalancer.server.port": "27015"})
    assert config.problems == ()
    (router,) = l4.udp_routers
    assert (router.service, router.entry_points) == ("srv@docker", ("game",))


def _container(labels, ports):
    return {
        "Id": "c1", "Names": ["/app"], "State": "running", "Labels": labels,
        "Ports": [{"PrivatePort": p, "Type": t} for p, t in ports],
        "NetworkSettings": {"Networks": {"net": {"NetworkID": "n1", "IPAddress": "10.0.1.7"}}},
    }


def test_snapshot_gets_tcp_and_udp_targets_with_ports_of_their_protocol():
    labels = {"traefik.tcp.routers.db.rule": "HostSNI(`*`)", "traefik.udp.routers.dns.entrypoints": "dns"}
    state = DockerState(containers=[_container(labels, [(5432, "tcp"), (53, "udp")])], containers_read=True,
                        networks=[{"Id": "n1", "Name": "net", "Driver": "bridge"}])
    snap = build_snapshot(state, DockerConfig(backend_addressing="task"))
    assert [(s.name, [(t.host, t.port) for t in s.targets]) for s in snap.tcp_services] == [("app@docker", [("10.0.1.7", 5432)])]
    assert [(s.name, [(t.host, t.port) for t in s.targets]) for s in snap.udp_services] == [("app@docker", [("10.0.1.7", 53)])]
    assert [r.name for r in snap.tcp_routers] == ["db@docker"] and [r.name for r in snap.udp_routers] == ["dns@docker"]
    assert snap.routers == ()


@pytest.mark.parametrize("rule, sni, alpn, client, expected", [
    ("HostSNI(`*`)", None, (), "1.2.3.4", True),
    ("HostSNI(`a.test`)", "a.test", (), "1.2.3.4", True),
    ("HostSNI(`a.test`)", "b.test", (), "1.2.3.4", False),
    ("HostSNI(`a.test`)", None, (), "1.2.3.4", False),
    ("HostSNI(`A.Test`)", "a.test", (), "1.2.3.4", True),
    ("HostSNIRegexp(`^.+\\.a\\.test$`)", "x.a.test", (), "1.2.3.4", True),
    ("HostSNIRegexp(`^.+\\.a\\.test$`)", "a.test", (), "1.2.3.4", False),
    ("HostSNIRegexp(`{sub:[a-z]+}.a.test`)", "abc.a.test", (), "1.2.3.4", True),
    ("HostSNI(`a.test`) && ALPN(`h2`)", "a.test", ("h2", "http/1.1"), "1.2.3.4", True),
    ("HostSNI(`a.test`) && ALPN(`h2`)", "a.test", ("http/1.1",), "1.2.3.4", False),
    ("HostSNI(`*`) && ClientIP(`10.0.0.0/8`)", None, (), "10.9.8.7", True),
    ("HostSNI(`*`) && ClientIP(`10.0.0.0/8`)", None, (), "::ffff:10.9.8.7", True),
    ("HostSNI(`*`) && !ClientIP(`10.0.0.0/8`)", None, (), "10.9.8.7", False),
    ("HostSNI(`a.test`) || (HostSNI(`b.test`) && ClientIP(`::1`))", "b.test", (), "::1", True),
])
def test_rule_matching(rule, sni, alpn, client, expected):
    assert matches(parse_tcp_rule(rule), sni, alpn, client) is expected


@pytest.mark.parametrize("rule", [
    "", "HostSNI()", "HostSNI(``)", "HostSNI(`*`, `a.test`)", "ALPN(`acme-tls/1`)", "ClientIP(`nope`)",
    "HostSNI(`a b`)", "HostSNI(`a.test`) &&", "Path(`/`)", "HostSNI(`a.test`" , "(" * 200 + "HostSNI(`*`)",
])
def test_bad_rules_raise_rule_error(rule):
    with pytest.raises(RuleError):
        parse_tcp_rule(rule)


def test_api_snapshot_names_tcp_and_udp_parts():
    from edge.discovery.jsonview import snapshot_to_data

    labels = {"traefik.tcp.routers.db.rule": "HostSNI(`*`)", "traefik.udp.routers.dns.entrypoints": "dns",
              "traefik.tcp.routers.db.middlewares": "few", "traefik.tcp.middlewares.few.inflightconn.amount": "2"}
    state = DockerState(containers=[_container(labels, [(5432, "tcp"), (53, "udp")])], containers_read=True,
                        networks=[{"Id": "n1", "Name": "net", "Driver": "bridge"}])
    data = snapshot_to_data(build_snapshot(state, DockerConfig(backend_addressing="task")))
    (router,) = data["tcp_routers"]
    assert (router["rule"], router["middlewares"]) == ("HostSNI(`*`)", [{"type": "InFlightConn", "amount": 2}])
    assert [s["targets"][0]["port"] for s in data["udp_services"]] == [53]
    assert [r["name"] for r in data["udp_routers"]] == ["dns@docker"]
