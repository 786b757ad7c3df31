"""Traefik v1, v2/v3 and edge.* labels -> routers, service specs and problems."""

import os
import re as _re

import pytest
from hypothesis import HealthCheck as HC
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.discovery.labels import (
    LabelConfig,
    ServiceSpec,
    default_host,
    normalize_name,
    read_labels,
    read_middlewares,
)
from edge.rules import And, Host, HostRegexp, PathPrefix
from edge.snapshot import (
    BasicAuth,
    HealthCheck,
    Headers,
    IPAllowList,
    RedirectScheme,
    RouterTLS,
    StickyCookie,
    StripPrefix,
)


def problems(config: LabelConfig, level: str | None = None):
    return [p for p in config.problems if level is None or p.level == level]


def only_router(config: LabelConfig):
    assert len(config.routers) == 1, config
    return config.routers[0]


def only_service(config: LabelConfig):
    assert len(config.services) == 1, config
    return config.services[0]


# -- names and defaults ---------------------------------------------------------


@pytest.mark.parametrize(
    "source, domain, host",
    [
        ("proxy_jenkins", "example.com", "proxy-jenkins.example.com"),
        ("a/b_c", "lan.", "a-b-c.lan"),
        ("Web", "Home.LAN", "web.home.lan"),
        ("web", "", ""),
    ],
)
def test_default_host(source, domain, host):
    assert default_host(source, domain) == host


def test_no_labels_no_domain_routes_nothing_and_says_nothing():
    config = read_labels("db", {"com.docker.stack.namespace": "x"})
    assert config == LabelConfig(True, (), (), ())


def test_no_labels_with_domain_gets_traefik_default_router():
    config = read_labels("proxy_jenkins", {}, domain="example.com")
    router = only_router(config)
    assert router.name == "proxy-jenkins@docker"
    assert router.rule == Host(("proxy-jenkins.example.com",))
    assert router.rule_text == "Host(`proxy-jenkins.example.com`)"
    assert router.service == "proxy-jenkins@docker"
    assert router.source == "proxy_jenkins"
    assert router.provider == "docker"
    assert only_service(config) == ServiceSpec(name="proxy-jenkins@docker")
    assert config.problems == ()


def test_enabled_without_rule_or_domain_is_a_problem():
    config = read_labels("web", {"traefik.enable": "true", "traefik.docker.network": "proxy"})
    assert config.enabled and config.routers == ()
    (problem,) = config.problems
    assert problem.source == "web"
    assert "no routing rule" in problem.message and "domain" in problem.message


# -- enable -------------------------------------------------------------------

ENABLE_CASES = [
    ({}, True, True),
    ({}, False, False),
    ({"traefik.enable": "true"}, False, True),
    ({"traefik.enable": "false"}, True, False),
    ({"TRAEFIK.ENABLE": "False"}, True, False),
    ({"edge.enable": "true", "traefik.enable": "false"}, False, True),
    ({"edge.enable": "false", "traefik.enable": "true"}, True, False),
    ({"traefik.enable": "1"}, False, True),
]


@pytest.mark.parametrize("labels, exposed, enabled", ENABLE_CASES)
def test_enable(labels, exposed, enabled):
    labels = dict(labels, **{"traefik.http.routers.r.rule": "Host(`a.b`)"})
    config = read_labels("web", labels, exposed_by_default=exposed)
    assert config.enabled is enabled
    assert bool(config.routers) is enabled
    assert problems(config) == []


def test_bad_enable_value_does_not_expose():
    config = read_labels("web", {"traefik.enable": "ture", "traefik.http.routers.r.rule": "Host(`a`)"})
    assert config.enabled is False and config.routers == ()
    (problem,) = config.problems
    assert problem.level == "error" and problem.label == "traefik.enable"


# -- Traefik v1 -----------------------------------------------------------------


def test_v1_full_service():
    labels = {
        "traefik.enable": "true",
        "traefik.frontend.rule": "Host:jenkins.example.com,ci.example.com;PathPrefixStrip:/ci",
        "traefik.port": "8080",
        "traefik.protocol": "https",
        "traefik.weight": "3",
        "traefik.docker.network": "proxy",
        "traefik.frontend.entryPoints": "http, https",
        "traefik.frontend.priority": "10",
        "traefik.frontend.passHostHeader": "false",
        "traefik.frontend.redirect.entryPoint": "https",
        "traefik.frontend.auth.basic.users": "admin:$apr1$abc$def,bob:{SHA}xyz",
        "traefik.frontend.auth.basic.removeHeader": "true",
        "traefik.frontend.whiteList.sourceRange": "10.0.0.0/8, 192.168.1.0/24",
        "traefik.frontend.headers.customRequestHeaders": "X-Script-Name:/ci||X-Env:prod",
        "traefik.frontend.headers.customResponseHeaders": "X-Frame-Options:DENY",
        "traefik.frontend.headers.STSSeconds": "31536000",
        "traefik.frontend.headers.STSIncludeSubdomains": "true",
        "traefik.frontend.headers.STSPreload": "true",
        "traefik.frontend.headers.forceSTSHeader": "true",
        "traefik.frontend.headers.SSLRedirect": "true",
        "traefik.backend": "jenkins",
        "traefik.backend.loadbalancer.stickiness": "true",
        "traefik.backend.loadbalancer.stickiness.cookieName": "jsticky",
        "traefik.backend.loadbalancer.swarm": "true",
        "traefik.backend.healthcheck.path": "/login",
        "traefik.backend.healthcheck.interval": "1m30s",
        "traefik.backend.healthcheck.timeout": "3",
        "traefik.backend.healthcheck.port": "8081",
    }
    config = read_labels("proxy_jenkins", labels)
    assert problems(config) == []
    router = only_router(config)
    assert router.name == "proxy-jenkins@docker"
    assert router.rule == And(
        (Host(("jenkins.example.com", "ci.example.com")), PathPrefix(("/ci",)))
    )
    assert router.rule_text == labels["traefik.frontend.rule"]
    assert router.entry_points == ("http", "https")
    assert router.priority == 10
    assert router.middlewares == (
        IPAllowList(("10.0.0.0/8", "192.168.1.0/24")),
        RedirectScheme(scheme="https"),
        BasicAuth(users=("admin:$apr1$abc$def", "bob:{SHA}xyz"), remove_header=True),
        Headers(
            custom_request=(("X-Script-Name", "/ci"), ("X-Env", "prod")),
            custom_response=(("X-Frame-Options", "DENY"),),
            sts_seconds=31536000,
            sts_include_subdomains=True,
            sts_preload=True,
            force_sts_header=True,
            ssl_redirect=True,
        ),
        StripPrefix(("/ci",)),
    )
    assert router.service == "proxy-jenkins@docker"
    assert only_service(config) == ServiceSpec(
        name="proxy-jenkins@docker",
        port=8080,
        scheme="https",
        weight=3,
        network="proxy",
        lb_swarm=True,
        pass_host_header=False,
        sticky=StickyCookie(name="jsticky", http_only=False),  # Traefik sets no HttpOnly
        health_check=HealthCheck(path="/login", interval=90.0, timeout=3.0, port=8081),
    )


def test_v1_default_rule_uses_domain_and_traefik_domain_label():
    config = read_labels("stack_app", {"traefik.port": "80"}, domain="example.com")
    assert only_router(config).rule_text == "Host:stack-app.example.com"
    assert only_router(config).rule == Host(("stack-app.example.com",))
    config = read_labels(
        "stack_app", {"traefik.port": "80", "traefik.domain": "other.org"}, domain="example.com"
    )
    assert only_router(config).rule == Host(("stack-app.other.org",))


def test_v1_no_rule_no_domain_is_a_problem():
    config = read_labels("stack_app", {"traefik.port": "80"})
    assert config.routers == ()
    (problem,) = config.problems
    assert problem.label == "traefik.frontend.rule" and "no rule" in problem.message


def test_v1_segments():
    labels = {
        "traefik.web.frontend.rule": "Host:web.example.com",
        "traefik.web.port": "80",
        "traefik.api.frontend.rule": "Host:api.example.com;PathPrefix:/v1",
        "traefik.api.port": "8080",
        "traefik.api.protocol": "https",
        "traefik.api.frontend.entryPoints": "https",
        "traefik.api.frontend.auth.basic.users": "u:h",
        "traefik.backend.loadbalancer.stickiness": "true",
    }
    config = read_labels("app", labels)
    assert problems(config) == []
    routers = {r.name: r for r in config.routers}
    assert set(routers) == {"app-web@docker", "app-api@docker"}
    assert routers["app-web@docker"].rule == Host(("web.example.com",))
    assert routers["app-web@docker"].middlewares == ()
    assert routers["app-api@docker"].entry_points == ("https",)
    assert routers["app-api@docker"].middlewares == (BasicAuth(("u:h",)),)
    services = {s.name: s for s in config.services}
    assert services["app-web@docker"].port == 80
    assert services["app-api@docker"] == ServiceSpec(
        name="app-api@docker", port=8080, scheme="https",
        # no HttpOnly, as Traefik; a cookie name of the service's own
        sticky=StickyCookie(name=services["app-api@docker"].sticky.name, http_only=False),
    )
    assert routers["app-api@docker"].service == "app-api@docker"
    assert services["app-api@docker"].sticky.name.startswith("_")
    assert services["app-api@docker"].sticky.name != StickyCookie().name


def test_v1_redirect_to_other_entry_point_warns():
    config = read_labels(
        "a", {"traefik.frontend.rule": "Host:a.b", "traefik.frontend.redirect.entryPoint": "websecure"}
    )
    assert only_router(config).middlewares == (RedirectScheme(scheme="https"),)
    (problem,) = config.problems
    assert problem.level == "warning" and "websecure" in problem.message


@pytest.mark.parametrize(
    "label, value",
    [
        ("traefik.frontend.auth.basic.users", "nocolon"),
        ("traefik.frontend.auth.basic.usersFile", "/run/secrets/htpasswd"),
        ("traefik.frontend.auth.forward.address", "ftp://auth:4181"),
        ("traefik.frontend.whiteList.sourceRange", "10.0.0.0/8,not-a-range"),
    ],
)
def test_v1_unusable_protection_drops_the_frontend(label, value):
    config = read_labels("a", {"traefik.frontend.rule": "Host:a.b", label: value})
    assert config.routers == ()
    errors = problems(config, "error")
    assert errors and all(p.label == label for p in errors)
    assert any("not served unprotected" in p.message for p in errors)


def test_v1_broken_rule_drops_only_that_segment():
    config = read_labels(
        "app",
        {
            "traefik.good.frontend.rule": "Host:good.example.com",
            "traefik.bad.frontend.rule": "Hots:bad.example.com",
        },
    )
    assert [r.name for r in config.routers] == ["app-good@docker"]
    (problem,) = config.problems
    assert problem.level == "error"
    assert problem.source == "app"
    assert problem.label == "traefik.bad.frontend.rule"
    assert "unknown matcher 'Hots'" in problem.message


# -- Traefik v2/v3 -----------------------------------------------------------------


def test_v2_full_service():
    labels = {
        "traefik.enable": "true",
        "traefik.swarm.network": "proxy",
        "traefik.swarm.lbswarm": "true",
        "traefik.http.routers.web.rule": "Host(`web.example.com`) && PathPrefix(`/app`)",
        "traefik.http.routers.web.entrypoints": "websecure",
        "traefik.http.routers.web.priority": "42",
        "traefik.http.routers.web.tls": "true",
        "traefik.http.routers.web.tls.certresolver": "le",
        "traefik.http.routers.web.tls.domains[0].main": "example.com",
        "traefik.http.routers.web.tls.domains[0].sans": "*.example.com,www.example.com",
        "traefik.http.routers.web.middlewares": "allow, auth@docker, strip, hdrs, redirect",
        "traefik.http.routers.web.service": "websvc",
        "traefik.http.services.websvc.loadbalancer.server.port": "8080",
        "traefik.http.services.websvc.loadbalancer.server.scheme": "https",
        "traefik.http.services.websvc.loadbalancer.passhostheader": "false",
        "traefik.http.services.websvc.loadbalancer.sticky.cookie.name": "s",
        "traefik.http.services.websvc.loadbalancer.sticky.cookie.secure": "true",
        "traefik.http.services.websvc.loadbalancer.sticky.cookie.httponly": "false",
        "traefik.http.services.websvc.loadbalancer.sticky.cookie.samesite": "Strict",
        "traefik.http.services.websvc.loadbalancer.healthcheck.path": "/health",
        "traefik.http.services.websvc.loadbalancer.healthcheck.interval": "10s",
        "traefik.http.services.websvc.loadbalancer.healthcheck.timeout": "500ms",
        "traefik.http.services.websvc.loadbalancer.healthcheck.scheme": "http",
        "traefik.http.services.websvc.loadbalancer.healthcheck.hostname": "web.local",
        "traefik.http.services.websvc.loadbalancer.healthcheck.headers.X-Probe": "1",
        "traefik.http.middlewares.allow.ipallowlist.sourcerange": "10.0.0.0/8,fd00::/8",
        "traefik.http.middlewares.auth.basicauth.users": "a:$2y$05$x,b:$apr1$y",
        "traefik.http.middlewares.auth.basicauth.realm": "Private",
        "traefik.http.middlewares.auth.basicauth.removeheader": "true",
        "traefik.http.middlewares.strip.stripprefix.prefixes": "/app,/web",
        "traefik.http.middlewares.hdrs.headers.customrequestheaders.X-Forwarded-Prefix": "/app",
        "traefik.http.middlewares.hdrs.headers.customresponseheaders.X-Served-By": "edge",
        "traefik.http.middlewares.hdrs.headers.stsseconds": "300",
        "traefik.http.middlewares.hdrs.headers.stsincludesubdomains": "true",
        "traefik.http.middlewares.redirect.redirectscheme.scheme": "https",
        "traefik.http.middlewares.redirect.redirectscheme.port": "8443",
        "traefik.http.middlewares.redirect.redirectscheme.permanent": "true",
    }
    config = read_labels("stack_web", labels)
    assert problems(config) == []
    router = only_router(config)
    assert router.name == "web@docker"
    assert router.entry_points == ("websecure",)
    assert router.priority == 42
    assert router.tls == RouterTLS(
        cert_resolver="le", domains=("example.com", "*.example.com", "www.example.com")
    )
    assert router.service == "websvc@docker"
    assert router.middlewares == (
        IPAllowList(("10.0.0.0/8", "fd00::/8")),
        BasicAuth(("a:$2y$05$x", "b:$apr1$y"), realm="Private", remove_header=True),
        StripPrefix(("/app", "/web")),
        Headers(
            custom_request=(("X-Forwarded-Prefix", "/app"),),
            custom_response=(("X-Served-By", "edge"),),
            sts_seconds=300,
            sts_include_subdomains=True,
        ),
        RedirectScheme(scheme="https", port="8443", permanent=True),
    )
    assert only_service(config) == ServiceSpec(
        name="websvc@docker",
        port=8080,
        scheme="https",
        network="proxy",
        lb_swarm=True,
        pass_host_header=False,
        sticky=StickyCookie(name="s", secure=True, http_only=False, same_site="strict"),
        health_check=HealthCheck(
            path="/health",
            interval=10.0,
            timeout=0.5,
            scheme="http",
            hostname="web.local",
            headers=(("X-Probe", "1"),),
        ),
    )


def test_v2_labels_are_case_insensitive_but_names_keep_case():
    config = read_labels(
        "s",
        {
            "Traefik.HTTP.Routers.MyApp.Rule": "Host(`a.b`)",
            "traefik.http.routers.MyApp.EntryPoints": "web",
            "traefik.http.services.Svc.LoadBalancer.Server.Port": "81",
        },
    )
    assert problems(config) == []
    router = only_router(config)
    assert (router.name, router.entry_points, router.service) == ("MyApp@docker", ("web",), "Svc@docker")
    assert only_service(config).port == 81


def test_v2_docker_network_and_lbswarm():
    config = read_labels(
        "s",
        {
            "traefik.docker.network": "net1",
            "traefik.docker.lbswarm": "true",
            "traefik.http.routers.r.rule": "Host(`a`)",
        },
    )
    assert only_service(config) == ServiceSpec(name="s@docker", network="net1", lb_swarm=True)
    assert only_router(config).service == "s@docker"


def test_v2_default_router_for_a_lone_service():
    labels = {"traefik.http.services.app.loadbalancer.server.port": "3000"}
    config = read_labels("stack_app", labels, domain="example.com")
    router = only_router(config)
    assert router.name == "stack-app@docker"
    assert router.rule == Host(("stack-app.example.com",))
    assert router.service == "app@docker"
    assert only_service(config).port == 3000
    # and without a default domain: a problem, no router
    config = read_labels("stack_app", labels)
    assert config.routers == ()
    (problem,) = config.problems
    assert "no routing rule" in problem.message


def test_v2_router_without_rule_takes_the_default_rule():
    config = read_labels("app", {"traefik.http.routers.r.entrypoints": "web"}, domain="lan")
    assert only_router(config).rule == Host(("app.lan",))
    config = read_labels("app", {"traefik.http.routers.r.entrypoints": "web"})
    assert config.routers == ()
    (problem,) = config.problems
    assert problem.label == "traefik.http.routers.r.rule"


def test_v2_routers_link_to_the_single_service():
    config = read_labels(
        "app",
        {
            "traefik.http.routers.a.rule": "Host(`a`)",
            "traefik.http.routers.b.rule": "Host(`b`)",
            "traefik.http.services.only.loadbalancer.server.port": "80",
        },
    )
    assert [(r.name, r.service) for r in config.routers] == [
        ("a@docker", "only@docker"),
        ("b@docker", "only@docker"),
    ]


def test_v2_router_without_service_among_several_is_dropped():
    config = read_labels(
        "app",
        {
            "traefik.http.routers.a.rule": "Host(`a`)",
            "traefik.http.routers.b.rule": "Host(`b`)",
            "traefik.http.routers.b.service": "two",
            "traefik.http.services.one.loadbalancer.server.port": "80",
            "traefik.http.services.two.loadbalancer.server.port": "81",
        },
    )
    assert [r.name for r in config.routers] == ["b@docker"]
    (problem,) = config.problems
    assert problem.level == "error" and "router a names no service" in problem.message


def test_v2_several_services_without_router_is_a_problem():
    config = read_labels(
        "app",
        {
            "traefik.http.services.one.loadbalancer.server.port": "80",
            "traefik.http.services.two.loadbalancer.server.port": "81",
        },
        domain="lan",
    )
    assert config.routers == ()
    assert len(config.services) == 2
    (problem,) = config.problems
    assert problem.level == "error" and "several services" in problem.message


def test_v2_service_references_keep_other_providers():
    config = read_labels(
        "app",
        {
            "traefik.http.routers.a.rule": "Host(`a`)",
            "traefik.http.routers.a.service": "nas@file",
            "traefik.http.routers.b.rule": "Host(`b`)",
            "traefik.http.routers.b.service": "other",
        },
    )
    assert {r.name: r.service for r in config.routers} == {
        "a@docker": "nas@file",
        "b@docker": "other@docker",
    }


def test_broken_rule_drops_only_that_router():
    labels = {
        "traefik.http.routers.good.rule": "Host(`good.example.com`)",
        "traefik.http.routers.bad.rule": "Host(`bad.example.com`",
        "traefik.http.routers.bad.entrypoints": "web",
        "traefik.http.services.s.loadbalancer.server.port": "80",
    }
    config = read_labels("proxy_app", labels)
    assert [r.name for r in config.routers] == ["good@docker"]
    assert only_service(config).port == 80
    (problem,) = config.problems
    assert problem.level == "error"
    assert problem.source == "proxy_app"
    assert problem.label == "traefik.http.routers.bad.rule"
    assert "router bad" in problem.message and "position 22" in problem.message


# -- middleware resolution ------------------------------------------------------------


def _with_middlewares(refs: str, **defs):
    labels = {
        "traefik.http.routers.r.rule": "Host(`r.example.com`)",
        "traefik.http.routers.r.middlewares": refs,
        "traefik.http.routers.other.rule": "Host(`other.example.com`)",
    }
    labels.update({k.replace("__", "."): v for k, v in defs.items()})
    return read_labels("app", labels)


@pytest.mark.parametrize(
    "refs, defs, why",
    [
        ("auth@file", {}, "not defined in the config file's [middlewares]"),
        ("auth@internal", {}, "names provider 'internal', which edge does not have"),
        ("nowhere", {}, "not defined in this service's labels"),
        ("nowhere@docker", {}, "not defined in this service's labels"),
        (
            "fa",
            {"traefik__http__middlewares__fa__forwardauth__address": "auth:4181"},
            "not an http(s) URL",
        ),
        (
            "ba",
            {"traefik__http__middlewares__ba__basicauth__usersfile": "/nonexistent/users"},
            "users file cannot be read",
        ),
        (
            "ba",
            {"traefik__http__middlewares__ba__basicauth__users": "justaname"},
            "not user:hash",
        ),
        (
            "al",
            {"traefik__http__middlewares__al__ipwhitelist__sourcerange": "10.0.0.0/33"},
            "source range is invalid",
        ),
        (
            "ch",
            {"traefik__http__middlewares__ch__chain__middlewares": "a"},
            "chain",
        ),
        (
            "mixed",
            {
                "traefik__http__middlewares__mixed__basicauth__users": "a:b",
                "traefik__http__middlewares__mixed__stripprefix__prefixes": "/x",
            },
            "mixes several kinds",
        ),
    ],
)
def test_missing_or_unusable_guard_middleware_drops_the_router(refs, defs, why):
    config = _with_middlewares(refs, **defs)
    assert [r.name for r in config.routers] == ["other@docker"]
    dropped = [p for p in config.problems if p.label == "traefik.http.routers.r.middlewares"]
    assert len(dropped) == 1 and dropped[0].level == "error"
    assert "router dropped" in dropped[0].message
    assert why in " ".join(p.message for p in config.problems)


def test_unsupported_safe_middleware_is_left_out_with_warnings():
    config = _with_middlewares(
        "gz, strip",
        traefik__http__middlewares__gz__grpcweb__alloworigins="*",
        traefik__http__middlewares__strip__stripprefix__prefixes="/x",
    )
    router = {r.name: r for r in config.routers}["r@docker"]
    assert router.middlewares == (StripPrefix(("/x",)),)
    assert {p.level for p in config.problems} == {"warning"}
    labels = {p.label for p in config.problems}
    assert labels == {"traefik.http.middlewares.gz.grpcweb.alloworigins", "traefik.http.routers.r.middlewares"}


def test_shared_middlewares_resolve_across_services():
    definer = {
        "traefik.http.middlewares.auth.basicauth.users": "u:h",
        "traefik.http.middlewares.https.redirectscheme.scheme": "https",
        "traefik.http.middlewares.broken.basicauth.users": "",
        "traefik.http.routers.x.rule": "Host(`x`)",
    }
    shared = read_middlewares("traefik_traefik", definer)
    assert shared == {
        "auth@docker": BasicAuth(("u:h",)),
        "https@docker": RedirectScheme(),
    }
    config = read_labels(
        "app",
        {
            "traefik.http.routers.r.rule": "Host(`r`)",
            "traefik.http.routers.r.middlewares": "https@docker,auth@docker",
        },
        shared_middlewares=shared,
    )
    assert only_router(config).middlewares == (RedirectScheme(), BasicAuth(("u:h",)))
    assert config.problems == ()


# -- edge.* --------------------------------------------------------------------------


def test_edge_labels_use_the_v2_grammar_and_win_over_traefik():
    labels = {
        "edge.enable": "true",
        "edge.docker.network": "edge_net",
        "edge.http.routers.app.rule": "HostRegexp(`{sub:[a-z]+}.apps.lan`)",
        "edge.http.routers.app.middlewares": "only-lan",
        "edge.http.middlewares.only-lan.ipallowlist.sourcerange": "192.168.0.0/16",
        "edge.http.services.app.loadbalancer.server.port": "9000",
        # what Traefik reads; edge ignores it when edge.* routing labels exist
        "traefik.enable": "false",
        "traefik.frontend.rule": "Host:old.example.com",
        "traefik.http.routers.old.rule": "Host(`old.example.com`)",
    }
    config = read_labels("stack_app", labels, exposed_by_default=False)
    assert config.problems == ()
    router = only_router(config)
    assert router.name == "app@docker"
    assert isinstance(router.rule, HostRegexp) and router.hosts == frozenset({"*.apps.lan"})
    assert router.middlewares == (IPAllowList(("192.168.0.0/16",)),)
    assert only_service(config) == ServiceSpec(name="app@docker", port=9000, network="edge_net")


def test_unknown_edge_label_warns():
    config = read_labels("a", {"edge.http.routers.r.rule": "Host(`a`)", "edge.http.routers.r.colour": "red"})
    (problem,) = config.problems
    assert problem.label == "edge.http.routers.r.colour" and problem.level == "warning"


# -- warnings and bad values -------------------------------------------------------------


def test_unsupported_labels_warn_once_each():
    labels = {
        "traefik.http.routers.r.rule": "Host(`a`)",
        "traefik.tcp.routers.t.rule": "HostSNI(`*`)",
        "traefik.tcp.services.t.loadbalancer.server.port": "5432",
        "traefik.http.routers.r.tls.options": "modern",
        "traefik.http.services.s.loadbalancer.healthcheck.followredirects": "true",
        "traefik.http.services.s.loadbalancer.healthcheck.path": "/",
        "traefik.http.middlewares.m.headers.sslhost": "a.test",
        "traefik.http.middlewares.m.headers.publickey": "pin",
        "traefik.madeup": "1",
    }
    config = read_labels("app", labels)
    warned = [p.label for p in config.problems]
    assert sorted(warned) == sorted(set(warned))  # one each
    assert set(warned) == set(labels) - {
        "traefik.http.routers.r.rule",
        "traefik.http.services.s.loadbalancer.healthcheck.path",
        "traefik.tcp.routers.t.rule",  # TCP routers are supported (edge.discovery.l4labels)
        "traefik.tcp.services.t.loadbalancer.server.port",
    }
    assert all(p.level == "warning" and p.label in p.message for p in config.problems)
    assert [r.name for r in config.routers] == ["r@docker"]


def test_v1_labels_beside_v2_ones_are_ignored_with_one_warning():
    config = read_labels(
        "app",
        {
            "traefik.http.routers.r.rule": "Host(`new`)",
            "traefik.frontend.rule": "Host:old",
            "traefik.port": "80",
        },
    )
    assert [r.rule for r in config.routers] == [Host(("new",))]
    (problem,) = config.problems
    assert "v1 labels" in problem.message


BAD_VALUES = [
    ("traefik.http.services.s.loadbalancer.server.port", "abc", "port", None),
    ("traefik.http.services.s.loadbalancer.server.port", "70000", "port", None),
    ("traefik.http.services.s.loadbalancer.server.weight", "-1", "weight", 1),
    ("traefik.http.services.s.loadbalancer.server.scheme", "ftp", "scheme", "http"),
    ("traefik.http.services.s.loadbalancer.passhostheader", "maybe", "pass_host_header", True),
]


@pytest.mark.parametrize("label, value, attr, fallback", BAD_VALUES)
def test_bad_service_values_fall_back(label, value, attr, fallback):
    config = read_labels("app", {"traefik.http.routers.r.rule": "Host(`a`)", label: value})
    assert getattr(only_service(config), attr) == fallback
    (problem,) = config.problems
    assert problem.level == "error" and problem.label == label and repr(value) in problem.message
    assert len(config.routers) == 1


@pytest.mark.parametrize(
    "label, value, attr, fallback",
    [
        ("traefik.port", "abc", "port", None),
        ("traefik.weight", "-1", "weight", 1),
        ("traefik.protocol", "gopher", "scheme", "http"),
    ],
)
def test_bad_v1_values_fall_back(label, value, attr, fallback):
    config = read_labels("app", {"traefik.frontend.rule": "Host:a", label: value})
    assert getattr(only_service(config), attr) == fallback
    (problem,) = config.problems
    assert problem.level == "error" and problem.label == label
    assert len(config.routers) == 1


def test_bad_priority_and_duration():
    config = read_labels(
        "app",
        {
            "traefik.http.routers.r.rule": "Host(`a`)",
            "traefik.http.routers.r.priority": "high",
            "traefik.http.services.s.loadbalancer.healthcheck.path": "/h",
            "traefik.http.services.s.loadbalancer.healthcheck.interval": "soon",
        },
    )
    assert only_router(config).priority == 0
    assert only_service(config).health_check == HealthCheck(path="/h", interval=30.0)
    assert {p.label for p in problems(config, "error")} == {
        "traefik.http.routers.r.priority",
        "traefik.http.services.s.loadbalancer.healthcheck.interval",
    }


# -- never raises -------------------------------------------------------------------------

_KEY_PARTS = st.sampled_from(
    ["traefik", "edge", "http", "routers", "services", "middlewares", "r", "s", "m", "rule",
     "loadbalancer", "server", "port", "frontend", "backend", "basicauth", "users", "headers",
     "customrequestheaders", "X-A", "enable", "docker", "swarm", "network", "lbswarm", "tls",
     "domains[0]", "main", "healthcheck", "path", "interval", "sticky", "cookie", "name", "",
     "ipallowlist", "sourcerange", "stripprefix", "prefixes", "redirectscheme", "scheme",
     "entrypoints", "service", "priority", "web", "auth", "whiteList", "weight", "protocol",
     "loadbalancer.stickiness", "redirect", "entryPoint", "tcp"]
)
_VALUES = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        ["true", "false", "80", "-1", "Host(`a.b`)", "Host:a.b", "Host(`a", "a:b", "10.0.0.0/8",
         "r", "s", "m", "m@docker", "x@file", "/x", "1m", "https", "Host:a;PathPrefixStrip:/x"]
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HC.too_slow])
@given(
    st.dictionaries(st.lists(_KEY_PARTS, min_size=1, max_size=7).map(".".join), _VALUES, max_size=12),
    st.sampled_from(["", "example.com"]),
    st.booleans(),
)
def test_read_labels_never_raises(labels, domain, exposed):
    config = read_labels("stack_svc", labels, domain=domain, exposed_by_default=exposed)
    assert not any("internal error" in p.message for p in config.problems), config.problems
    names = {s.name for s in config.services}
    for router in config.routers:
        assert router.source == "stack_svc" and router.name.endswith("@docker")
        if router.service.endswith("@docker") and router.service.split("@")[0] in {
            n.split("@")[0] for n in names
        }:
            assert router.service in names


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=20), st.text(max_size=20), max_size=8))
def test_read_labels_never_raises_on_any_text(labels):
    config = read_labels("svc", labels)
    assert not any("internal error" in p.message for p in config.problems)


def test_normalize_name():
    assert normalize_name("proxy_jenkins") == "proxy-jenkins"
    assert normalize_name("a/b") == "a-b"


# -- docs/labels.md matches the code ------------------------------------------------------

_DOC = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "labels.md")


def _doc_rows():
    """(section, label, support) for each table row of docs/labels.md naming labels."""
    section = ""
    rows = []
    with open(_DOC, encoding="utf-8") as f:
        for line in f:
            if line.startswith("## "):
                section = line[3:].strip()
            if not line.startswith("| `traefik.") and not line.startswith("| `edge."):
                continue
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            for label in _re.findall(r"`([^`]+)`", cells[0]):
                if label.startswith("."):
                    continue  # ".replacement" style continuations
                rows.append((section, label, cells[1]))
    return rows


def _value_for(label: str) -> str:
    last = label.lower().rsplit(".", 1)[-1]
    values = {
        "rule": "Host(`doc.example.com`)",
        "rulesyntax": "v3",
        "entrypoints": "web",
        "priority": "5",
        "middlewares": "m",
        "service": "s",
        "certresolver": "le",
        "main": "doc.example.com",
        "sans": "www.doc.example.com",
        "port": "8080",
        "scheme": "https",
        "protocol": "https",
        "weight": "2",
        "name": "cookie",
        "cookiename": "cookie",
        "samesite": "lax",
        "path": "/health",
        "interval": "10s",
        "timeout": "2s",
        "hostname": "probe.local",
        "network": "net",
        "users": "u:$apr1$x$y",
        "basic": "u:$apr1$x$y",
        "realm": "r",
        "prefixes": "/x",
        "sourcerange": "10.0.0.0/8",
        "whitelistsourcerange": "10.0.0.0/8",
        "stsseconds": "60",
        "customrequestheaders": "X-A:1||X-B:2",
        "customresponseheaders": "X-A:1",
        "headers": "X-A:1",
        "entrypoint": "https",
        "domain": "example.com",
        "backend": "b",
        "address": "http://auth.test:4181/verify",
        "authresponseheaders": "Remote-User,Remote-Groups",
        "authrequestheaders": "Cookie",
        "authresponseheadersregex": "^X-Auth-",
        "addauthcookiestoresponse": "session",
        "ca": _PEM,
        "cert": _PEM,
        "regex": "^/a/(.*)",
        "replacement": "/b/$1",
        "prefix": "/x",
        "average": "10",
        "burst": "20",
        "period": "1m",
        "amount": "5",
        "depth": "1",
        "excludedips": "10.0.0.0/8",
        "requestheadername": "X-Key",
        "extractorfunc": "client.ip",
        "accesscontrolmaxage": "60",
        "sslproxyheaders": "X-Forwarded-Proto:https",
        "usersfile": _users_file(),
        "autodetect": "false",
        "attempts": "3",
        "initialinterval": "100ms",
        "expression": "NetworkErrorRatio() > 0.5",
        "checkperiod": "1s",
        "fallbackduration": "10s",
        "recoveryduration": "10s",
        "responsecode": "503",
        "maxrequestbodybytes": "1000",
        "memrequestbodybytes": "1000",
        "maxresponsebodybytes": "1000",
        "encodings": "gzip,br",
        "defaultencoding": "gzip",
        "excludedcontenttypes": "text/event-stream",
        "includedcontenttypes": "text/html",
        "minresponsebodybytes": "1024",
        "status": "500-599",
        "query": "/{status}.html",
        "memresponsebodybytes": "1000",
        "retryexpression": "IsNetworkError() && Attempts() <= 2",
    }
    return values.get(last, "true")


def _users_file() -> str:
    """An htpasswd file for the usersFile rows (made once per test run)."""
    import tempfile

    global _USERS_PATH
    if _USERS_PATH is None:
        fd, _USERS_PATH = tempfile.mkstemp(prefix="edge-users-")
        os.write(fd, b"# doc test\nu:$apr1$x$y\n")
        os.close(fd)
    return _USERS_PATH


_USERS_PATH = None
_PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
# A middleware option that needs the middleware's main options beside it.
_MAIN_OPTIONS = {
    ".forwardauth.": {"address": "http://auth.test/"},
    ".replacepathregex.": {"regex": "^/a", "replacement": "/b"},
    ".redirectregex.": {"regex": "^http://a/", "replacement": "http://b/"},
    ".ratelimit.": {"average": "5"},
    ".inflightreq.": {"amount": "5"},
    ".retry.": {"attempts": "2"},
    ".circuitbreaker.": {"expression": "NetworkErrorRatio() > 0.5"},
    ".errors.": {"status": "500-599", "service": "s"},
    ".ipallowlist.": {"sourcerange": "10.0.0.0/8"},
}


def _concrete(label: str) -> str:
    return (
        label.replace("<router>", "r")
        .replace("<service>", "s")
        .replace("<middleware>", "m")
        .replace("<segment>", "seg")
        .replace("<Header>", "X-Test")
        .replace("<n>", "0")
        .replace("<code or range>", "418")
        .replace("<name>", "e")
    )


def test_doc_lists_labels_with_a_support_column():
    rows = _doc_rows()
    assert len(rows) > 80
    assert {support for _s, _l, support in rows} == {"supported", "partly", "not supported"}


def _doc_supported():
    return [
        (section, label)
        for section, label, support in _doc_rows()
        if support in ("supported", "partly") and "*" not in label
        and not section.startswith("TCP and UDP")  # tests/test_tcp_labels.py reads those
    ]


@pytest.mark.parametrize("section, label", _doc_supported())
def test_every_supported_label_in_the_doc_is_read_without_a_warning(section, label):
    label = _concrete(label)
    value = _value_for(label)
    if section.startswith("Traefik v2"):
        variants = [("traefik", label), ("edge", "edge." + label[len("traefik."):])]
        for prefix, key in variants:
            labels = {
                f"{prefix}.http.routers.r.rule": "Host(`doc.example.com`)",
                f"{prefix}.http.routers.r.service": "s",
                f"{prefix}.http.services.s.loadbalancer.server.port": "80",
                key: value,
            }
            if ".middlewares.m." in key:
                labels[f"{prefix}.http.routers.r.middlewares"] = "m"
                # options that need their middleware's main option beside them
                if ".basicauth." in key and not key.endswith(".users"):
                    labels[f"{prefix}.http.middlewares.m.basicauth.users"] = "u:h"
                if ".stripprefix." in key and not key.endswith(".prefixes"):
                    labels[f"{prefix}.http.middlewares.m.stripprefix.prefixes"] = "/x"
                for kind, main in _MAIN_OPTIONS.items():
                    if kind in key:
                        for opt, v in main.items():
                            labels.setdefault(f"{prefix}.http.middlewares.m{kind}{opt}", v)
                if key.endswith(".tls.cert"):
                    labels[key[: -len("cert")] + "key"] = _PEM
                if ".statusrewrites." in key:
                    labels[key] = "400"
                if ".chain." in key:
                    labels[key] = "member"
                    labels[f"{prefix}.http.middlewares.member.addprefix.prefix"] = "/p"
            elif key.endswith(".middlewares"):
                labels[f"{prefix}.http.middlewares.m.redirectscheme.scheme"] = "https"
            if ".healthcheck." in key and not key.endswith(".path"):
                labels[f"{prefix}.http.services.s.loadbalancer.healthcheck.path"] = "/h"
            config = read_labels("doc_svc", labels)
            assert config.problems == (), (key, config.problems)
            assert config.routers, key
    else:
        segment = ".seg." in label
        rule_key = "traefik.seg.frontend.rule" if segment else "traefik.frontend.rule"
        if label.lower().endswith("frontend.rule"):
            value = "Host:doc.example.com"
        labels = {rule_key: "Host:doc.example.com", label: value}
        if label.lower().startswith("traefik.backend.healthcheck.") and not label.endswith(".path"):
            labels["traefik.backend.healthcheck.path"] = "/h"
        if label.lower() == "traefik.frontend.redirect.permanent":
            labels["traefik.frontend.redirect.entryPoint"] = "https"
        if ".auth.forward." in label.lower():
            labels.setdefault("traefik.frontend.auth.forward.address", "http://auth.test/")
            if label.endswith(".tls.cert"):
                labels["traefik.frontend.auth.forward.tls.key"] = _PEM
        if ".frontend.errors." in label.lower():
            labels.setdefault(label.rsplit(".", 1)[0] + ".status", "500-599")
            labels.setdefault(label.rsplit(".", 1)[0] + ".backend", "b")
        if label.lower().startswith("traefik.backend.maxconn."):  # Traefik 1.7 needs both
            labels.setdefault("traefik.backend.maxconn.amount", "5")
            labels.setdefault("traefik.backend.maxconn.extractorFunc", "client.ip")
        if label.lower() == "traefik.frontend.redirect.regex":
            labels["traefik.frontend.redirect.replacement"] = "http://b/"
        if label.lower() == "traefik.frontend.redirect.replacement":
            labels["traefik.frontend.redirect.regex"] = "^http://a/"
        config = read_labels("doc_svc", labels)
        assert config.problems == (), (label, config.problems)
        assert config.routers, label


def test_every_unsupported_label_in_the_doc_warns():
    for section, label, support in _doc_rows():
        if support != "not supported" or "*" in label or section.startswith("TCP and UDP"):
            continue  # the TCP and UDP rows: tests/test_tcp_labels.py
        label = _concrete(label)
        if section.startswith("Traefik v2"):
            labels = {"traefik.http.routers.r.rule": "Host(`a`)", label: _value_for(label)}
        else:
            labels = {"traefik.frontend.rule": "Host:a", label: _value_for(label)}
        config = read_labels("doc_svc", labels)
        assert [p.label for p in config.problems if p.label == label], (label, config.problems)


def test_unhashable_label_values_are_read_without_the_cache():
    config = read_labels("odd", {"traefik.http.routers.r.rule": ["Host(`a`)"], "traefik.port": None})
    # the list is read as its text, which is no rule; nothing raises
    assert config.routers == ()
    assert any(p.label == "traefik.http.routers.r.rule" and p.level == "error" for p in config.problems)


def test_memoized_results_follow_their_inputs():
    labels = {"traefik.http.routers.r.rule": "Host(`a`)", "traefik.http.routers.r.middlewares": "m@docker"}
    assert read_labels("x", labels).routers == ()
    shared = {"m@docker": RedirectScheme()}
    assert only_router(read_labels("x", labels, shared_middlewares=shared)).middlewares == (RedirectScheme(),)
    assert read_labels("x", labels).routers == ()
    assert read_labels("x", labels, exposed_by_default=True) == read_labels("x", dict(labels))


def test_v1_whitelist_use_x_forwarded_for_is_read_into_the_allow_list():
    labels = {
        "traefik.port": "80",
        "traefik.frontend.rule": "Host:lan.example.com",
        "traefik.frontend.whiteList.useXForwardedFor": "true",
        "traefik.frontend.whiteList.sourceRange": "192.168.0.0/16",
    }
    config = read_labels("lan", labels)
    assert config.problems == ()
    assert only_router(config).middlewares == (IPAllowList(("192.168.0.0/16",), use_forwarded_for=True),)


def test_basicauth_headerfield_v2_and_v1_name_the_user_header():
    from edge.snapshot import BasicAuth

    v2 = read_labels("graf", {
        "traefik.http.routers.graf.rule": "Host(`graf.lan`)",
        "traefik.http.routers.graf.middlewares": "auth",
        "traefik.http.middlewares.auth.basicauth.users": "u:$apr1$x$y",
        "traefik.http.middlewares.auth.basicauth.headerfield": "X-WEBAUTH-USER",
        "traefik.http.services.graf.loadbalancer.server.port": "3000",
    })
    assert v2.problems == ()
    assert only_router(v2).middlewares == (BasicAuth(("u:$apr1$x$y",), header_field="X-WEBAUTH-USER"),)
    v1 = read_labels("graf", {
        "traefik.port": "3000", "traefik.frontend.rule": "Host:graf.lan",
        "traefik.frontend.auth.basic.users": "u:$apr1$x$y", "traefik.frontend.auth.headerField": "X-WEBAUTH-USER",
    })
    assert v1.problems == ()
    assert only_router(v1).middlewares == (BasicAuth(("u:$apr1$x$y",), header_field="X-WEBAUTH-USER"),)


def test_basicauth_headerfield_that_is_no_header_name_drops_the_router():
    config = read_labels("graf", {
        "traefik.http.routers.graf.rule": "Host(`graf.lan`)",
        "traefik.http.routers.graf.middlewares": "auth",
        "traefik.http.middlewares.auth.basicauth.users": "u:$apr1$x$y",
        "traefik.http.middlewares.auth.basicauth.headerfield": "X User",
        "traefik.http.services.graf.loadbalancer.server.port": "3000",
    })
    assert config.routers == () and any("not a header name" in p.message for p in config.problems)
