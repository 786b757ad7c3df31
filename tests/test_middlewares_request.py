"""
Request-side middlewares: replacePath, replacePathRegex, addPrefix,
stripPrefixRegex, redirectRegex (and v1 redirect.regex), chain, rateLimit
(and v1 rateLimit), inFlightReq.

Unit tests of the bucket logic use Twisted's Clock; the rest go through a
real edge process (tests/test_http_proxy.py's harness) over HTTP/1.1 with
requests and over HTTP/2 with curl --http2.  Everything on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import threading

import pytest
import requests
from twisted.internet.task import Clock

from edge.discovery.labels import read_labels
from edge.http import ratelimit
from edge.http.exchange import Request
from edge.http.rewrite import go_expand
from edge.snapshot import (
    AddPrefix, InFlightReq, RateLimit, RedirectRegex, ReplacePath, ReplacePathRegex, SourceCriterion,
    StripPrefixRegex,
)
from tests.h2curl import curl_h2
from tests.ports import free_port
from tests.swarmkit import wait_for
from tests.test_http_proxy import Edge, Origin, snapshot, web


def _req(ip="10.0.0.1", headers=()):
    r = Request("http", ip)
    r.headers = list(headers)
    r.host = b"a.test"
    r.target = b"/"
    r.method = b"GET"
    return r


# -- units ------------------------------------------------------------------


def test_go_replacement_templates():
    import re

    m = re.search(r"^/(?P<first>[a-z]+)/(\d+)", "/abc/42/rest")
    assert go_expand("/x/$1/${2}/${first}/$$/$9", m) == "/x/abc/42/abc/$/"


def test_rate_limit_bucket_burst_refill_and_retry_after():
    clock = Clock()
    limiter = ratelimit.RateLimiter(RateLimit(average=6, period=60.0, burst=2), clock)
    assert limiter(_req()) is None and limiter(_req()) is None
    reply = limiter(_req())
    assert reply.status == 429 and (b"Retry-After", b"10") in reply.headers
    assert limiter(_req("10.0.0.2")) is None  # another source, another bucket
    clock.advance(10)
    assert limiter(_req()) is None  # one token back after 10 s
    assert limiter(_req()).status == 429


def test_rate_limit_holds_a_request_that_waits_less_than_max_delay():
    clock = Clock()
    limiter = ratelimit.RateLimiter(RateLimit(average=10, period=1.0, burst=1), clock)
    assert limiter(_req()) is None
    clock.advance(0.05)  # half a token: 50 ms to wait, max delay is 50 ms
    d = limiter(_req())
    assert not isinstance(d, type(None)) and not d.called
    clock.advance(0.05)
    assert d.called


def test_rate_limit_sources_are_bounded(monkeypatch):
    monkeypatch.setattr(ratelimit, "MAX_SOURCES", 100)
    limiter = ratelimit.RateLimiter(RateLimit(average=1, period=60.0, burst=1), Clock())
    for i in range(1000):
        limiter(_req(f"10.0.{i // 256}.{i % 256}"))
    assert len(limiter._buckets) == 100


def test_source_criteria():
    xff = [(b"X-Forwarded-For", b"198.51.100.1, 203.0.113.5"), (b"X-Forwarded-For", b"10.0.0.9")]
    assert ratelimit.source_key(SourceCriterion(ip_depth=1))(_req(headers=xff)) == b"10.0.0.9"
    assert ratelimit.source_key(SourceCriterion(ip_depth=2))(_req(headers=xff)) == b"203.0.113.5"
    assert ratelimit.source_key(SourceCriterion(ip_depth=9))(_req(headers=xff)) == b""
    assert ratelimit.source_key(SourceCriterion(excluded_ips=("10.0.0.0/8",)))(_req(headers=xff)) == b"203.0.113.5"
    assert ratelimit.source_key(SourceCriterion(request_header_name="X-Key"))(
        _req(headers=[(b"x-key", b"k1")])) == b"k1"
    assert ratelimit.source_key(SourceCriterion(request_host=True))(_req()) == b"a.test"
    assert ratelimit.source_key(SourceCriterion())(_req("10.1.1.1")) == "10.1.1.1"


def test_in_flight_slots_come_back_when_the_request_finishes():
    limiter = ratelimit.InFlightLimiter(InFlightReq(amount=2))
    first, second = _req(), _req()
    assert limiter(first) is None and limiter(second) is None
    assert limiter(_req()).status == 429
    first.on_finish()
    first.on_finish()  # once only: a second call gives nothing back twice
    third = _req()
    assert limiter(third) is None
    assert limiter._counts == {"10.0.0.1": 2}
    assert limiter(_req()).status == 429
    second.on_finish()
    third.on_finish()
    assert limiter._counts == {}


def test_labels_for_request_middlewares_and_chain():
    config = read_labels("app", {
        "traefik.http.routers.r.rule": "Host(`a.test`)",
        "traefik.http.routers.r.middlewares": "all,lim",
        "traefik.http.middlewares.all.chain.middlewares": "rp,nested",
        "traefik.http.middlewares.nested.chain.middlewares": "ap,sr",
        "traefik.http.middlewares.rp.replacepath.path": "/fixed",
        "traefik.http.middlewares.ap.addprefix.prefix": "/pre",
        "traefik.http.middlewares.sr.stripprefixregex.regex": "/t/[a-z]+,/u/[0-9]+",
        "traefik.http.middlewares.lim.inflightreq.amount": "3",
        "traefik.http.middlewares.lim.inflightreq.sourcecriterion.requesthost": "true",
        "traefik.http.services.s.loadbalancer.server.port": "80",
    })
    assert not config.problems
    assert config.routers[0].middlewares == (
        ReplacePath("/fixed"), AddPrefix("/pre"), StripPrefixRegex(("/t/[a-z]+", "/u/[0-9]+")),
        InFlightReq(3, SourceCriterion(request_host=True)),
    )


@pytest.mark.parametrize("labels", [
    {"traefik.http.middlewares.m.chain.middlewares": "m"},
    {"traefik.http.middlewares.m.chain.middlewares": "missing"},
    {"traefik.http.middlewares.m.replacepathregex.regex": "(bad", "traefik.http.middlewares.m.replacepathregex.replacement": "/"},
    {"traefik.http.middlewares.m.ratelimit.average": "many"},
    {"traefik.http.middlewares.m.inflightreq.amount": "0"},
    {"traefik.http.middlewares.m.ratelimit.average": "5", "traefik.http.middlewares.m.ratelimit.sourcecriterion.ipstrategy.excludedips": "nope"},
])
def test_broken_request_middlewares_drop_the_router(labels):
    config = read_labels("app", {
        "traefik.http.routers.r.rule": "Host(`a.test`)",
        "traefik.http.routers.r.middlewares": "m",
        "traefik.http.services.s.loadbalancer.server.port": "80",
        **labels,
    })
    assert config.routers == ()
    assert any(p.level == "error" for p in config.problems)


def test_v1_redirect_regex_and_rate_limit_labels():
    config = read_labels("old", {
        "traefik.frontend.rule": "Host:b.test",
        "traefik.frontend.redirect.regex": "^http://b.test/(.*)",
        "traefik.frontend.redirect.replacement": "https://c.test/$1",
        "traefik.frontend.redirect.permanent": "true",
        "traefik.frontend.rateLimit.extractorFunc": "request.host",
        "traefik.frontend.rateLimit.rateSet.a.period": "10s",
        "traefik.frontend.rateLimit.rateSet.a.average": "100",
        "traefik.frontend.rateLimit.rateSet.a.burst": "200",
        "traefik.port": "80",
    })
    assert not config.problems
    assert config.routers[0].middlewares == (
        RateLimit(100, 10.0, 200, SourceCriterion(request_host=True)),
        RedirectRegex("^http://b.test/(.*)", "https://c.test/$1", True),
    )


# -- a real edge ---------------------------------------------------------------


@pytest.fixture(scope="module")
def origin():
    o = Origin("rq")
    yield o
    o.stop()


def _routers(origin):
    t = [origin.target()]
    chained = read_labels("app", {
        "traefik.http.routers.ch.rule": "Host(`ch.test`)",
        "traefik.http.routers.ch.middlewares": "c",
        "traefik.http.middlewares.c.chain.middlewares": "a,b",
        "traefik.http.middlewares.a.addprefix.prefix": "/echo",
        "traefik.http.middlewares.b.replacepathregex.regex": "^/echo/(.*)",
        "traefik.http.middlewares.b.replacepathregex.replacement": "/echo/chained/$1",
        "traefik.http.services.s.loadbalancer.server.port": "80",
    }).routers[0].middlewares
    return snapshot(
        web(t, name="rp", host="rp.test", middlewares=[ReplacePath("/echo")]),
        web(t, name="rpr", host="rpr.test", middlewares=[ReplacePathRegex("^/api/(.*)", "/echo/$1")]),
        web(t, name="ap", host="ap.test", middlewares=[AddPrefix("/echo")]),
        web(t, name="spr", host="spr.test", middlewares=[StripPrefixRegex(("/t/[a-z]+",))]),
        web(t, name="rr", host="rr.test", middlewares=[RedirectRegex(r"^(https?)://rr\.test(:\d+)?/old/(.*)", "$1://new.test/${3}", True)]),
        web(t, name="ch", host="ch.test", middlewares=chained),
        web(t, name="rl", host="rl.test", middlewares=[RateLimit(1, 3600.0, 2, SourceCriterion(request_header_name="X-Key"))]),
        web(t, name="ifr", host="ifr.test", middlewares=[InFlightReq(1)]),
    )


@pytest.fixture
def edge(tmp_path, origin):
    e = Edge(tmp_path, _routers(origin))
    yield e
    e.stop()


def test_path_rewrites_reach_the_backend(edge):
    body = edge.get("/anything?q=1", host="rp.test").json()
    assert body["url"] == "/echo?q=1" and ["X-Replaced-Path", "/anything"] in body["headers"]
    body = edge.get("/api/a%20b?z=2", host="rpr.test").json()
    assert body["url"] == "/echo/a%20b?z=2" and ["X-Replaced-Path", "/api/a%20b"] in body["headers"]
    assert edge.get("/?k=v", host="rpr.test").json()["url"] == "/?k=v"  # no match: untouched
    assert edge.get("/x", host="ap.test").json()["url"] == "/echo/x"
    body = edge.get("/t/abc/echo", host="spr.test").json()
    assert body["url"] == "/echo" and ["X-Forwarded-Prefix", "/t/abc"] in body["headers"]
    # chain: addPrefix /echo, then ^/echo/(.*) -> /echo/chained/$1, in that order
    assert edge.get("/x", host="ch.test").json()["url"] == "/echo/chained/x"


def test_redirect_regex(edge):
    r = edge.get("/old/page?x=1", host="rr.test", allow_redirects=False)
    assert r.status_code == 301 and r.headers["Location"] == "http://new.test/page?x=1"
    r = requests.post(edge.base + "/old/p", headers={"Host": "rr.test"}, allow_redirects=False, timeout=10)
    assert r.status_code == 308
    assert edge.get("/echo", host="rr.test").json()["url"] == "/echo"  # no match: forwarded


def test_rate_limit_per_header(edge):
    key = {"X-Key": "k1"}
    assert [edge.get("/echo", host="rl.test", headers=dict(key)).status_code for _ in range(3)] == [200, 200, 429]
    r = edge.get("/echo", host="rl.test", headers=dict(key))
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 3000
    assert edge.get("/echo", host="rl.test", headers={"X-Key": "k2"}).status_code == 200


def test_in_flight_requests(edge, origin):
    before = origin.stats()["requests"]
    done = {}
    slow = threading.Thread(target=lambda: done.setdefault("r", edge.get("/slow/2", host="ifr.test", timeout=20)))
    slow.start()
    wait_for(lambda: origin.stats()["requests"] >= before + 2, 10, "the slow request at the origin")
    assert edge.get("/echo", host="ifr.test").status_code == 429
    slow.join(20)
    assert done["r"].status_code == 200
    assert edge.get("/echo", host="ifr.test").status_code == 200  # its slot came back


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_request_middlewares_over_http2(tmp_path, origin):
    from tests.test_tls_store import TestCA, write

    ca = TestCA()
    names = ("rp.test", "rr.test", "rl.test", "spr.test")
    pem = write(str(tmp_path / "web.pem"), ca.bundle(*names))
    root = write(str(tmp_path / "root.pem"), ca.pem())
    port = free_port()
    eps = f'[entrypoints.https]\naddress = "tcp:{port}:interface=127.0.0.1"\ntls = true\n'
    env = {**os.environ, "EDGE_TEST_CERT": pem, "EDGE_TEST_ALPN": "h2,http/1.1"}
    e = Edge(tmp_path, _routers(origin), entrypoints=eps, env=env)

    def curl(host, path, *args):
        status, headers, body = curl_h2(root, port, host, path, *args)
        return status, {k: v[-1] for k, v in headers.items()}, body

    try:
        status, _h, body = curl("rp.test", "/anything?q=1")
        assert status.startswith("HTTP/2 200") and json.loads(body)["url"] == "/echo?q=1"
        status, _h, body = curl("spr.test", "/t/xyz/echo")
        assert json.loads(body)["url"] == "/echo"
        status, headers, _b = curl("rr.test", "/old/x")
        assert status.startswith("HTTP/2 301") and headers["location"] == "https://new.test/x"
        codes = [curl("rl.test", "/echo", "-H", "X-Key: h2")[0].split()[1] for _ in range(3)]
        assert codes == ["200", "200", "429"]
    finally:
        e.stop()


def test_basic_auth_users_file_through_edge(tmp_path, origin):
    import base64
    import hashlib

    users = tmp_path / "htpasswd"
    digest = base64.b64encode(hashlib.sha1(b"s3cret").digest()).decode()
    users.write_text(f"# team\nalice:{{SHA}}{digest}\n\n")
    config = read_labels("app", {
        "traefik.http.routers.r.rule": "Host(`uf.test`)",
        "traefik.http.routers.r.middlewares": "auth",
        "traefik.http.middlewares.auth.basicauth.usersfile": str(users),
        "traefik.http.services.s.loadbalancer.server.port": "80",
    })
    assert not config.problems
    e = Edge(tmp_path, snapshot(web([origin.target()], name="uf", host="uf.test",
                                    middlewares=config.routers[0].middlewares)))
    try:
        assert e.get("/echo", host="uf.test").status_code == 401
        assert e.get("/echo", host="uf.test", auth=("alice", "wrong")).status_code == 401
        assert e.get("/echo", host="uf.test", auth=("alice", "s3cret")).status_code == 200
    finally:
        e.stop()


def test_ip_allow_list_by_forwarded_for_depth(tmp_path, origin):
    from edge.snapshot import IPAllowList

    e = Edge(tmp_path, snapshot(
        web([origin.target()], name="d", host="depth.test",
            middlewares=[IPAllowList(("203.0.113.0/24",), ip_depth=1)]),
        web([origin.target()], name="x", host="excl.test",
            middlewares=[IPAllowList(("203.0.113.0/24",), excluded_ips=("10.0.0.0/8",))]),
    ), extra='trusted_proxies = ["127.0.0.1/32"]\n')  # from anyone else X-Forwarded-For is dropped first
    try:
        def status(host, xff=None):
            return e.get("/echo", host=host, headers={"X-Forwarded-For": xff} if xff else {}).status_code

        assert status("depth.test", "198.51.100.1, 203.0.113.7") == 200
        assert status("depth.test", "203.0.113.7, 10.0.0.1") == 403
        assert status("depth.test") == 403  # no address at that depth
        assert status("excl.test", "203.0.113.7, 10.0.0.1, 10.0.0.2") == 200
        assert status("excl.test", "198.51.100.1, 10.0.0.1") == 403
    finally:
        e.stop()


def test_content_type_without_auto_detection_is_accepted_and_with_it_warned():
    def read(value):
        return read_labels("app", {
            "traefik.http.routers.r.rule": "Host(`a.test`)",
            "traefik.http.routers.r.middlewares": "ct",
            "traefik.http.middlewares.ct.contenttype.autodetect": value,
            "traefik.http.services.s.loadbalancer.server.port": "80",
        })

    quiet = read("false")
    assert quiet.problems == () and quiet.routers[0].middlewares == ()
    sniff = read("true")
    assert sniff.routers and any("never guesses" in p.message for p in sniff.problems)
