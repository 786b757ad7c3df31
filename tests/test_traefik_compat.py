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


# -- 6, 7: rules (Traefik v2.11 pkg/rules with gorilla/mux; v3 pkg/muxer/http) --

from hypothesis import HealthCheck as HC  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from edge.discovery.rule_parser import RuleError, parse_v1, parse_v2  # noqa: E402
from edge.http.routing import MatchContext, compile_rule, normalize_host  # noqa: E402


def matches(rule, host="example.com", path="/", query="", headers=(), method="GET"):
    context = MatchContext(method, normalize_host(host.encode()), path, query, headers, "192.0.2.1")
    return compile_rule(rule)(context)


RULE_CASES = [
    # (syntax, rule, request, matches)
    # 6. v2 HostRegexp without placeholders is a literal, anchored host
    (None, "HostRegexp(`example.com`)", {"host": "example.com"}, True),
    (None, "HostRegexp(`example.com`)", {"host": "notexample.com"}, False),
    (None, "HostRegexp(`example.com`)", {"host": "example.com.evil.test"}, False),
    (None, "HostRegexp(`example.com`)", {"host": "exampleXcom"}, False),
    ("v2", "HostRegexp(`example.com`)", {"host": "notexample.com"}, False),
    ("v2", "HostRegexp(`{sub:[a-z]+}.example.com`)", {"host": "api.example.com"}, True),
    ("v2", "HostRegexp(`{sub:[a-z]+}.example.com`)", {"host": "api.example.com.evil.test"}, False),
    ("v2", "HostRegexp(`{sub:[a-z]+}.Example.com`)", {"host": "api.example.com"}, True),
    # v3: a Go regexp, searched (unanchored), on the lower-case host
    ("v3", "HostRegexp(`example.com`)", {"host": "notexample.com"}, True),
    ("v3", "HostRegexp(`example.com`)", {"host": "exampleXcom"}, True),
    ("v3", r"HostRegexp(`^example\.com$`)", {"host": "EXAMPLE.com"}, True),
    # Go regexps are case-sensitive: an upper-case pattern never meets a canonized host
    ("v3", r"HostRegexp(`^API\.example\.com$`)", {"host": "API.example.com"}, False),
    ("v3", r"HeaderRegexp(`X-Env`, `^prod$`)", {"headers": [(b"X-Env", b"PROD")]}, False),
    ("v3", r"HeaderRegexp(`X-Env`, `^prod$`)", {"headers": [(b"X-Env", b"prod")]}, True),
    (None, r"PathRegexp(`^/Admin`)", {"path": "/admin"}, False),
    # 7. v3 one-value Query matches only an empty value; v2 pairs; v3.7 Host(`*`)
    ("v3", "Query(`debug`)", {"query": "debug"}, True),
    ("v3", "Query(`debug`)", {"query": "debug="}, True),
    ("v3", "Query(`debug`)", {"query": "debug=1"}, False),
    ("v3", "Query(`debug`)", {"query": ""}, False),
    ("v3", "Query(`a`, `1`)", {"query": "a=1"}, True),
    ("v2", "Query(`a=1`)", {"query": "a=1"}, True),
    ("v2", "Query(`a=`)", {"query": "a=anything"}, True),
    ("v2", "Query(`a=`)", {"query": "b=1"}, False),
    ("v3", "Host(`*`)", {"host": "anything.example.org"}, True),
    (None, "Host(`*`)", {"host": "x.test"}, True),
]


@pytest.mark.parametrize("syntax, text, request_, expected", RULE_CASES)
def test_rule_and_request(syntax, text, request_, expected):
    assert matches(parse_v2(text, syntax), **request_) is expected


V1_RULE_CASES = [
    ("HostRegexp:example.com", {"host": "notexample.com"}, False),
    ("HostRegexp:example.com", {"host": "example.com"}, True),
    ("HostRegexp:{sub:[a-z]+}.example.com", {"host": "API.example.com"}, True),
    ("Query:a=1,b=", {"query": "a=1&b=x"}, True),
    ("Query:a=1,b=", {"query": "a=1"}, False),
]


@pytest.mark.parametrize("text, request_, expected", V1_RULE_CASES)
def test_v1_rule_and_request(text, request_, expected):
    rule, _ = parse_v1(text)
    assert matches(rule, **request_) is expected


REJECTED = [
    # (syntax, rule) Traefik's parser or matcher refuses
    (None, "Header(`X-A`, ``)"),
    (None, "Headers(`X-A`, ``)"),
    (None, "HeaderRegexp(`X-A`, ``)"),
    (None, "Query(`a`, ``)"),
    (None, "HostRegexp(`exämple.com`)"),
    (None, "Host(`exämple.com`)"),
    ("v2", "Query(`debug`)"),
    ("v2", "Query(`a=1`, `b`)"),
    ("v2", "PathRegexp(`^/x`)"),
    ("v2", "Header(`X-A`, `1`)"),
    ("v2", "Host(`*`)"),
    ("v3", "Host(`a.com`, `b.com`)"),
    ("v3", "PathPrefix(`/a`, `/b`)"),
    ("v3", "Method(`GET`, `POST`)"),
    ("v3", "Headers(`X-A`, `1`)"),
    ("v3", "Query(`a`, `b`, `c`)"),
]


@pytest.mark.parametrize("syntax, text", REJECTED)
def test_rules_traefik_rejects_are_rejected(syntax, text):
    with pytest.raises(RuleError):
        parse_v2(text, syntax)


@pytest.mark.parametrize("text", ["Query:a", "Query:a=1=2", "Query:a=1,b", "Headers:X-A,", "HostRegexp:exämple.com"])
def test_v1_rules_traefik_rejects_are_rejected(text):
    with pytest.raises(RuleError):
        parse_v1(text)


def test_rejected_rule_drops_the_router_with_an_error_naming_service_and_label():
    config = read_labels("app", {"traefik.http.routers.r.rule": "Header(`X-A`, ``)"})
    assert config.routers == ()
    (problem,) = errors(config)
    assert (problem.source, problem.label) == ("app", "traefik.http.routers.r.rule")


def test_rulesyntax_label_selects_the_grammar():
    base = {"traefik.http.routers.r.rule": "HostRegexp(`example.com`)"}
    v3 = read_labels("app", {**base, "traefik.http.routers.r.rulesyntax": "v3"})
    assert matches(only(v3.routers).rule, host="notexample.com")
    v2 = read_labels("app", {**base, "traefik.http.routers.r.rulesyntax": "v2"})
    assert not matches(only(v2.routers).rule, host="notexample.com")
    plain = read_labels("app", base)
    assert not matches(only(plain.routers).rule, host="notexample.com")


def only(items):
    (item,) = items
    return item


HOST_NAMES = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?(\.[a-z0-9]{1,8}){1,3}\Z")


@settings(max_examples=200, deadline=None, suppress_health_check=[HC.too_slow])
@given(HOST_NAMES, st.sampled_from([None, "v2"]), st.from_regex(r"\A[.-]?[a-c][a-c.-]{0,3}[a-c]\Z"))
def test_host_shaped_host_regexp_is_exactly_that_host(name, syntax, extra):
    rule = parse_v2(f"HostRegexp(`{name}`)", syntax)
    assert matches(rule, host=name)
    assert matches(rule, host=name.upper())
    assert not matches(rule, host=extra + name)
    assert not matches(rule, host=name + extra)


@settings(max_examples=300, deadline=None, suppress_health_check=[HC.too_slow])
@given(
    st.sampled_from(["Host", "HostRegexp", "Path", "PathPrefix", "PathRegexp", "Method", "Header",
                     "Headers", "HeaderRegexp", "Query", "ClientIP"]),
    st.lists(st.text(alphabet="a=/.{}:*`^$[]ä -", max_size=6), max_size=3),
    st.sampled_from([None, "v2", "v3"]),
)
def test_any_matcher_and_values_parse_or_raise_rule_error(matcher, values, syntax):
    text = f"{matcher}(" + ", ".join(f'"{v}"' for v in values) + ")"
    try:
        rule = parse_v2(text, syntax)
    except RuleError:
        return
    # whatever parsed compiles into a matcher that answers without raising
    assert matches(rule, host="a.b", path="/a", query="a=b") in (True, False)


# -- 11. sticky cookies (v2/v3 dynamic.Cookie defaults; Traefik 1.7 stickiness) --

from edge.http.balancer import set_sticky_cookie  # noqa: E402
from edge.snapshot import StickyCookie, Target  # noqa: E402

V2_STICKY = "traefik.http.services.s.loadbalancer.sticky"


@pytest.mark.parametrize(
    "labels, expected",
    [
        # Traefik sets no HttpOnly, Secure or SameSite unless asked
        ({f"{V2_STICKY}.cookie": "true"}, {"http_only": False, "secure": False, "same_site": ""}),
        ({f"{V2_STICKY}.cookie.name": "sid"}, {"name": "sid", "http_only": False}),
        ({f"{V2_STICKY}.cookie.httponly": "true", f"{V2_STICKY}.cookie.samesite": "lax"},
         {"http_only": True, "same_site": "lax"}),
        ({f"{V2_STICKY}.cookie.secure": "true"}, {"secure": True, "http_only": False}),
        # an explicit false is not overridden by cookie options
        ({f"{V2_STICKY}": "false", f"{V2_STICKY}.cookie.name": "sid"}, None),
        ({f"{V2_STICKY}.cookie": "false", f"{V2_STICKY}.cookie.name": "sid"}, None),
        ({f"{V2_STICKY}.cookie": "false", f"{V2_STICKY}.cookie.secure": "true"}, None),
        ({}, None),
    ],
)
def test_v2_sticky_cookie(labels, expected):
    config = read_labels("app", {"traefik.http.services.s.loadbalancer.server.port": "80", **labels})
    sticky = services_of(config)["s@docker"].sticky
    if expected is None:
        assert sticky is None
    else:
        assert sticky is not None
        assert {k: getattr(sticky, k) for k in expected} == expected


@pytest.mark.parametrize(
    "labels, expected",
    [
        ({"traefik.backend.loadbalancer.stickiness": "true"}, {"http_only": False, "secure": False}),
        ({"traefik.backend.loadbalancer.stickiness": "true",
          "traefik.backend.loadbalancer.stickiness.cookieName": "sid",
          "traefik.backend.loadbalancer.stickiness.secure": "true",
          "traefik.backend.loadbalancer.stickiness.httpOnly": "true",
          "traefik.backend.loadbalancer.stickiness.sameSite": "strict"},
         {"name": "sid", "secure": True, "http_only": True, "same_site": "strict"}),
        # Traefik 1.7: only stickiness=true turns it on
        ({"traefik.backend.loadbalancer.stickiness.cookieName": "sid"}, None),
        ({"traefik.backend.loadbalancer.stickiness": "false",
          "traefik.backend.loadbalancer.stickiness.secure": "true"}, None),
    ],
)
def test_v1_stickiness(labels, expected):
    config = read_labels("app", {"traefik.frontend.rule": "Host:a.test", "traefik.port": "80", **labels})
    assert [p for p in config.problems] == []
    sticky = services_of(config)["app@docker"].sticky
    if expected is None:
        assert sticky is None
    else:
        assert {k: getattr(sticky, k) for k in expected} == expected


def test_default_cookie_names_differ_per_service():
    config = read_labels("app", {
        "traefik.a.frontend.rule": "Host:a.test", "traefik.b.frontend.rule": "Host:a.test;PathPrefix:/b",
        "traefik.port": "80", "traefik.backend.loadbalancer.stickiness": "true",
    })
    names = {s.sticky.name for s in config.services}
    assert len(names) == 2


@pytest.mark.parametrize(
    "sticky, header",
    [
        (StickyCookie(name="sid", http_only=False), "sid=V; Path=/"),
        (StickyCookie(name="sid", http_only=True, secure=True, same_site="none"), "sid=V; Path=/; HttpOnly; Secure; SameSite=None"),
        (StickyCookie(name="sid", http_only=False, same_site="lax"), "sid=V; Path=/; SameSite=Lax"),
        (StickyCookie(name="sid", http_only=False, same_site="strict"), "sid=V; Path=/; SameSite=Strict"),
    ],
)
def test_set_cookie_attributes_as_traefik_writes_them(sticky, header):
    from edge.http.balancer import sticky_value

    target = Target("t1", "10.0.0.1", 80)
    assert set_sticky_cookie(sticky, target).decode() == header.replace("V", sticky_value(target))


# -- the v1 inheritance under hypothesis: root protection reaches every segment --

SEGMENT_NAMES = st.lists(st.from_regex(r"\A[a-z][a-z0-9]{0,6}\Z"), min_size=1, max_size=4, unique=True)


@settings(max_examples=150, deadline=None, suppress_health_check=[HC.too_slow])
@given(SEGMENT_NAMES, st.data())
def test_every_segment_is_protected_by_the_root_or_its_own_auth(segments, data):
    labels = {
        "traefik.frontend.auth.basic.users": "root:h",
        "traefik.frontend.whiteList.sourceRange": "10.0.0.0/8",
        "traefik.frontend.entryPoints": "websecure",
    }
    own = {}
    for segment in segments:
        labels[f"traefik.{segment}.frontend.rule"] = f"Host:{segment}.example.com"
        if data.draw(st.booleans(), label=f"{segment} has its own users"):
            own[segment] = f"{segment}:h"
            labels[data.draw(st.sampled_from([f"traefik.{segment}.frontend.auth.basic.users",
                                               f"traefik.{segment}.frontend.auth.basic"]))] = own[segment]
    config = read_labels("app", labels)
    routers = routers_of(config)
    assert set(routers) == {f"app-{s}@docker" for s in segments}
    for segment in segments:
        router = routers[f"app-{segment}@docker"]
        auth = [m for m in router.middlewares if isinstance(m, BasicAuth)]
        assert auth == [BasicAuth((own.get(segment, "root:h"),))]
        assert IPAllowList(("10.0.0.0/8",)) in router.middlewares
        assert router.entry_points == ("websecure",)


@pytest.mark.parametrize("syntax", [None, "v2"])
def test_a_literal_star_in_a_v2_template_is_no_wildcard(syntax):
    # gorilla/mux quotes text outside {...}: `*.example.com` is that literal text
    try:
        rule = parse_v2("HostRegexp(`*.example.com`)", syntax)
    except RuleError:
        return  # undeclared: not a host name, and not a valid regexp either
    assert not matches(rule, host="api.example.com")
