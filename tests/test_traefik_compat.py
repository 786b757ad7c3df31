"""
Compatibility with Traefik's documented and tested behaviour (issue 11).

Each table row is a case written from Traefik's documentation and source
(the version is named beside it): labels in, routers and services out; or a
rule and a request in, match or not out.  docs/labels.md says the same in
prose, under "Behaviour changes" where edge used to differ.
"""

from __future__ import annotations

import pytest

from edge.config import DockerConfig
from edge.discovery.build import DockerState, SelfFacts, build_snapshot
from edge.discovery.labels import read_labels
from edge.snapshot import BasicAuth, IPAllowList

FRONTEND = "ovle8874l8iyww0w8dq3zwz7w"
NETWORKS = [{"Name": "frontend", "Id": FRONTEND, "Driver": "overlay", "Scope": "swarm"}]
ON_FRONTEND = SelfFacts(in_container=True, container_id="e" * 64, network_ids=frozenset({FRONTEND}))


def routers_of(config):
    return {r.name: r for r in config.routers}


def services_of(config):
    return {s.name: s for s in config.services}


def errors(config):
    return [p for p in config.problems if p.level == "error"]


# -- 1. v1 segments inherit the root labels (Traefik 1.7, provider/label/segment.go) --

AUTH = "admin:$apr1$x$y"

V1_SEGMENTS = [
    # (labels, {router: (entry points, middlewares, priority)}, {service: (port, scheme, weight)})
    pytest.param(
        {
            "traefik.frontend.auth.basic.users": AUTH,
            "traefik.frontend.entryPoints": "https",
            "traefik.port": "8080",
            "traefik.a.frontend.rule": "Host:a.example.com",
            "traefik.b.frontend.rule": "Host:b.example.com",
        },
        {
            "app-a@docker": (("https",), (BasicAuth((AUTH,)),), 0),
            "app-b@docker": (("https",), (BasicAuth((AUTH,)),), 0),
        },
        {"app-a@docker": (8080, "http", 1), "app-b@docker": (8080, "http", 1)},
        id="root auth, entry points and port reach both segments; no root router",
    ),
    pytest.param(
        {
            "traefik.frontend.auth.basic.users": AUTH,
            "traefik.frontend.whiteList.sourceRange": "10.0.0.0/8",
            "traefik.frontend.priority": "7",
            "traefik.protocol": "https",
            "traefik.weight": "3",
            "traefik.port": "8080",
            "traefik.a.frontend.rule": "Host:a.example.com",
            "traefik.a.frontend.auth.basic.users": "other:$apr1$x$z",
            "traefik.a.port": "9000",
            "traefik.b.frontend.rule": "Host:b.example.com",
            "traefik.b.frontend.whitelistSourceRange": "192.0.2.0/24",
            "traefik.b.weight": "5",
        },
        {
            "app-a@docker": ((), (IPAllowList(("10.0.0.0/8",)), BasicAuth(("other:$apr1$x$z",))), 7),
            "app-b@docker": ((), (IPAllowList(("192.0.2.0/24",)), BasicAuth((AUTH,))), 7),
        },
        {"app-a@docker": (9000, "https", 3), "app-b@docker": (8080, "https", 5)},
        id="a segment's own option (either spelling) replaces the root's, the rest is inherited",
    ),
    pytest.param(
        {
            "traefik.frontend.rule": "Host:shared.example.com",
            "traefik.frontend.auth.basic": AUTH,
            "traefik.a.port": "80",
            "traefik.b.port": "81",
        },
        {
            "app-a@docker": ((), (BasicAuth((AUTH,)),), 0),
            "app-b@docker": ((), (BasicAuth((AUTH,)),), 0),
        },
        {"app-a@docker": (80, "http", 1), "app-b@docker": (81, "http", 1)},
        id="root rule and the deprecated auth.basic are inherited",
    ),
]


@pytest.mark.parametrize("labels, routers, services", V1_SEGMENTS)
def test_v1_segments_inherit_root_labels(labels, routers, services):
    config = read_labels("app", labels)
    assert errors(config) == []
    got = routers_of(config)
    assert {n: (r.entry_points, r.middlewares, r.priority) for n, r in got.items()} == routers
    assert {n: (s.port, s.scheme, s.weight) for n, s in services_of(config).items()} == services


def test_v1_segments_get_the_default_rule_and_a_segment_without_any_rule_stops_all():
    # Traefik 1.7 getFrontendRule(container, segmentLabels): the default rule
    # applies per segment; containerFilter drops the container when one
    # segment ends up with no rule at all.
    config = read_labels("app", {"traefik.a.port": "80", "traefik.b.port": "81"}, domain="example.com")
    assert {r.rule_text for r in config.routers} == {"Host:app.example.com"}
    assert len(config.routers) == 2
    config = read_labels("app", {"traefik.a.frontend.rule": "Host:a.example.com", "traefik.b.port": "81"})
    assert config.routers == ()
    assert errors(config)


# -- 3. compose containers are <service>_<project> (v1.7 and v2/v3 docker provider) --


def _compose_container(cid, project, service, labels, ip):
    return {
        "Id": cid,
        "Names": [f"/{project}-{service}-1"],
        "Labels": {"com.docker.compose.project": project, "com.docker.compose.service": service, **labels},
        "State": "running",
        "HostConfig": {"NetworkMode": "default"},
        "Ports": [{"PrivatePort": 80, "Type": "tcp"}],
        "NetworkSettings": {"Networks": {"frontend": {"NetworkID": FRONTEND, "IPAddress": ip}}},
    }


@pytest.mark.parametrize(
    "labels, hosts",
    [
        # v2/v3: router and service <service>-<project>, default rule Host(`web-shop.<domain>`)
        ({"traefik.enable": "true"}, {"web-shop.d.test", "web-blog.d.test"}),
        # v1.7: default rule Host:<service>.<project>.<domain>
        ({"traefik.port": "80"}, {"web.shop.d.test", "web.blog.d.test"}),
        ({"traefik.frontend.entryPoints": "http"}, {"web.shop.d.test", "web.blog.d.test"}),
    ],
    ids=["v2", "v1", "v1-no-port"],
)
def test_two_projects_with_a_web_service_are_never_merged(labels, hosts):
    state = DockerState(
        info={},
        containers_read=True,
        networks=NETWORKS,
        containers=[
            _compose_container("c1", "shop", "web", labels, "10.0.1.7"),
            _compose_container("c2", "blog", "web", labels, "10.0.1.8"),
        ],
    )
    snap = build_snapshot(state, DockerConfig(url="unix:///x.sock", domain="d.test"), ON_FRONTEND)
    assert [p for p in snap.problems if p.level == "error"] == []
    assert {h for r in snap.routers for h in r.hosts} == hosts
    by_router = {}
    for router in snap.routers:
        service = snap.service(router.service)
        by_router[router.name] = {t.host for t in service.targets}
    # each router reaches its own project's container only
    assert sorted(by_router.values(), key=sorted) == [{"10.0.1.7"}, {"10.0.1.8"}]
    if "traefik.enable" in labels:
        assert {r.name for r in snap.routers} == {"web-shop@docker", "web-blog@docker"}


# -- 4. only TCP/UDP labels: no HTTP router (v2/v3 docker provider buildConfiguration) --


@pytest.mark.parametrize(
    "labels, routed",
    [
        ({"traefik.tcp.routers.db.rule": "HostSNI(`*`)", "traefik.tcp.services.db.loadbalancer.server.port": "5432"}, False),
        ({"traefik.udp.services.dns.loadbalancer.server.port": "53"}, False),
        ({"traefik.tcp.routers.db.rule": "HostSNI(`*`)", "traefik.http.routers.web.rule": "Host(`w.test`)"}, True),
        ({"traefik.enable": "true"}, True),
    ],
)
def test_tcp_or_udp_only_labels_make_no_http_router(labels, routed):
    config = read_labels("db", labels, domain="example.com")
    assert bool(config.routers) is routed


# -- 5, 9, 10: ports, health, networks of containers (v2/v3 docker provider) --


def _container(labels, ports=(), status="Up 5 minutes", networks=None, cid="c1", name="app"):
    return {
        "Id": cid,
        "Names": [f"/{name}"],
        "Labels": labels,
        "State": "running",
        "Status": status,
        "HostConfig": {"NetworkMode": "default"},
        "Ports": [{"PrivatePort": p, "Type": t} for p, t in ports],
        "NetworkSettings": {
            "Networks": networks or {"frontend": {"NetworkID": FRONTEND, "IPAddress": "10.0.1.7"}}
        },
    }


def _build(*containers, **config):
    state = DockerState(info={}, containers_read=True, networks=NETWORKS, containers=list(containers))
    return build_snapshot(state, DockerConfig(url="unix:///x.sock", domain="d.test", **config), ON_FRONTEND)


def _targets(snap):
    return {(s.name, t.host, t.port) for s in snap.services for t in s.targets}


@pytest.mark.parametrize(
    "labels, ports, expected",
    [
        # getPort: the lowest exposed port when no label names one
        ({"traefik.enable": "true"}, [(8080, "tcp"), (443, "tcp"), (9000, "tcp")], {("app@docker", "10.0.1.7", 443)}),
        ({"traefik.port": "8080"}, [(8080, "tcp"), (443, "tcp")], {("app@docker", "10.0.1.7", 8080)}),
        ({"traefik.http.services.s.loadbalancer.server.port": "9000"}, [(80, "tcp")], {("s@docker", "10.0.1.7", 9000)}),
        # the number of the lowest exposed port, whatever its protocol, as Traefik
        ({"traefik.enable": "true"}, [(80, "tcp"), (53, "udp")], {("app@docker", "10.0.1.7", 53)}),
    ],
)
def test_port_is_the_label_or_the_lowest_exposed_one(labels, ports, expected):
    snap = _build(_container(labels, ports))
    assert _targets(snap) == expected
    assert snap.routers


def test_no_usable_port_means_no_router_not_one_without_targets():
    snap = _build(_container({"traefik.enable": "true"}))
    assert snap.routers == () and snap.services == ()
    assert any(p.level == "error" and p.label == "port" for p in snap.problems)


@pytest.mark.parametrize(
    "status, health, routed",
    [
        ("Up 5 minutes", None, True),
        ("Up 5 minutes (healthy)", None, True),
        ("Up 5 minutes (unhealthy)", None, False),
        ("Up 2 seconds (health: starting)", None, False),
        ("Up 5 minutes", "unhealthy", False),
        ("Up 5 minutes", "starting", False),
        ("Up 5 minutes", "healthy", True),
    ],
)
def test_only_healthy_or_unchecked_containers_are_routed(status, health, routed):
    raw = _container({"traefik.port": "80"}, status=status)
    if health:
        raw["Health"] = {"Status": health}
    snap = _build(raw)
    assert bool(snap.routers) is routed
    assert bool(_targets(snap)) is routed


def test_malformed_label_disables_the_container():
    config = read_labels("app", {"traefik.http.services.x": "", "traefik.http.routers.r.rule": "Host(`a.test`)"})
    assert config.routers == () and config.services == ()
    assert [p.label for p in errors(config)] == ["traefik.http.services.x"]


@pytest.mark.parametrize(
    "networks, expected",
    [
        # the named network is missing: warn and fall back to the container's network
        ({"other": {"NetworkID": "otherid", "IPAddress": "172.20.0.5"}}, {("app@docker", "172.20.0.5", 80)}),
        # an IPv6-only network: the container's IPv6 address
        (
            {"frontend": {"NetworkID": FRONTEND, "IPAddress": "", "GlobalIPv6Address": "fd00::7"}},
            {("app@docker", "fd00::7", 80)},
        ),
    ],
)
def test_network_fallback_and_ipv6_only_networks(networks, expected):
    labels = {"traefik.port": "80", "traefik.docker.network": "missing"}
    if "frontend" in networks:
        del labels["traefik.docker.network"]
    snap = _build(_container(labels, networks=networks), backend_addressing="task")
    assert _targets(snap) == expected
    assert [p for p in snap.problems if p.level == "error"] == []


# -- 8. one element defined differently by several containers is dropped (provider.Merge) --


def test_router_defined_differently_by_two_containers_is_dropped():
    a = _container({"traefik.http.routers.r.rule": "Host(`a.test`)", "traefik.http.routers.r.service": "s",
                    "traefik.http.services.s.loadbalancer.server.port": "80"}, cid="c1", name="one")
    b = _container({"traefik.http.routers.r.rule": "Host(`b.test`)", "traefik.http.routers.r.service": "s",
                    "traefik.http.services.s.loadbalancer.server.port": "80"}, cid="c2", name="two")
    snap = _build(a, b)
    assert [r.name for r in snap.routers] == []
    assert any(p.level == "error" and p.label == "router" for p in snap.problems)
    # the same router twice, equal: kept once, servers merged
    b["Labels"]["traefik.http.routers.r.rule"] = "Host(`a.test`)"
    snap = _build(a, b)
    assert [r.name for r in snap.routers] == ["r@docker"]
    assert len(snap.service("s@docker").targets) == 2


def test_service_defined_differently_drops_it_and_its_routers():
    common = {"traefik.http.routers.r.rule": "Host(`a.test`)", "traefik.http.services.s.loadbalancer.server.port": "80"}
    a = _container(dict(common), cid="c1", name="one")
    b = _container({**common, "traefik.http.services.s.loadbalancer.passhostheader": "false"}, cid="c2", name="two")
    snap = _build(a, b)
    assert snap.service("s@docker") is None
    assert snap.routers == ()
    assert any(p.level == "error" and p.label == "service" for p in snap.problems)


def test_middleware_defined_differently_drops_the_routers_using_it():
    def labels(users):
        return {
            "traefik.http.routers.r.rule": "Host(`a.test`)",
            "traefik.http.routers.r.middlewares": "auth",
            "traefik.http.middlewares.auth.basicauth.users": users,
            "traefik.http.services.s.loadbalancer.server.port": "80",
        }

    snap = _build(_container(labels("a:h"), cid="c1", name="one"), _container(labels("b:h"), cid="c2", name="two"))
    assert snap.routers == ()
    assert any(p.level == "error" and p.label == "middleware" for p in snap.problems)
    snap = _build(_container(labels("a:h"), cid="c1", name="one"), _container(labels("a:h"), cid="c2", name="two"))
    assert [r.name for r in snap.routers] == ["r@docker"]
