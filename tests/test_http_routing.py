"""
The pure parts of the HTTP proxy: routing tables, middlewares, htpasswd,
balancing and health, with Twisted's test doubles for time.
"""

from __future__ import annotations

import base64
import subprocess

import bcrypt
import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from edge.discovery.rule_parser import parse_any
from edge.http import htpasswd
from edge.http.balancer import Balancer, HealthRegistry, sticky_value, target_key
from edge.http.middlewares import Reply, compile_middlewares
from edge.http.routing import RoutingTable
from edge.snapshot import (
    BackendService, BasicAuth, Headers, IPAllowList, RedirectScheme, Router, Snapshot,
    StickyCookie, StripPrefix, Target,
)


def parse_rule(text):
    return parse_any(text)[0]


def router(name, rule_text, service=None, **kw) -> Router:
    return Router(name=name, rule=parse_rule(rule_text), rule_text=rule_text,
                  service=service or name, **kw)


def table(*routers, entrypoint="http", services=()) -> RoutingTable:
    services = list(services) or [BackendService(r.service, (Target(r.name, "127.0.0.1", 1),)) for r in routers]
    return RoutingTable.build(Snapshot.build(routers=routers, services=services), entrypoint)


def name_of(t: RoutingTable, host=b"a.test", path=b"/", method=b"GET", headers=(), ip="127.0.0.1"):
    route = t.match(method, host, path, headers, ip)
    return route.router if route else None


def test_exact_host_is_a_dictionary_hit_and_case_and_port_do_not_matter():
    t = table(router("a", "Host(`a.test`)"), router("b", "Host(`b.test`, `c.test`)"))
    assert name_of(t, b"A.Test:8080") == "a"
    assert name_of(t, b"c.test") == "b"
    assert name_of(t, b"d.test") is None
    assert set(t.by_host) == {"a.test", "b.test", "c.test"} and t.hostless == ()


def test_priority_longer_rule_first_then_explicit_priority():
    t = table(
        router("root", "Host(`a.test`)"),
        router("api", "Host(`a.test`) && PathPrefix(`/api`)"),
        router("catchall", "PathPrefix(`/`)"),
    )
    assert name_of(t, path=b"/api/x") == "api"
    # Traefik's order is by rule length: `PathPrefix(`/`)` (15) beats `Host(`a.test`)` (14)...
    assert name_of(t, path=b"/other") == "catchall"
    assert name_of(t, b"elsewhere.test", b"/x") == "catchall"
    # ...and loses to a longer host rule.
    t = table(router("root", "Host(`longer.a.test`)"), router("catchall", "PathPrefix(`/`)"))
    assert name_of(t, b"longer.a.test", b"/other") == "root"
    t = table(router("root", "Host(`a.test`)", priority=100),
              router("api", "Host(`a.test`) && PathPrefix(`/api`)"))
    assert name_of(t, path=b"/api/x") == "root"


def test_wildcards_regexps_methods_headers_not_query_and_client_ip():
    t = table(
        router("wild", "HostRegexp(`{sub:[a-z]+}.w.test`)"),
        router("post", "Host(`m.test`) && Method(`POST`)"),
        router("hdr", "Host(`h.test`) && Headers(`X-Env`, `prod`)"),
        router("notadmin", "Host(`n.test`) && !PathPrefix(`/admin`)"),
        router("query", "Host(`q.test`) && Query(`debug=1`)"),
        router("ip", "Host(`i.test`) && ClientIP(`10.0.0.0/8`)"),
        router("v1", "Host:v1.test;PathPrefix:/x"),
    )
    assert name_of(t, b"abc.w.test") == "wild"
    assert name_of(t, b"a1.w.test") is None
    assert name_of(t, b"m.test", method=b"POST") == "post"
    assert name_of(t, b"m.test", method=b"GET") is None
    assert name_of(t, b"h.test", headers=[(b"x-env", b"prod")]) == "hdr"
    assert name_of(t, b"h.test", headers=[(b"X-Env", b"dev")]) is None
    assert name_of(t, b"n.test", b"/page") == "notadmin"
    assert name_of(t, b"n.test", b"/admin/x") is None
    assert name_of(t, b"q.test", b"/?a=2&debug=1") == "query"
    assert name_of(t, b"q.test", b"/?debug=0") is None
    assert name_of(t, b"i.test", ip="10.1.2.3") == "ip"
    assert name_of(t, b"i.test", ip="192.168.1.1") is None
    assert name_of(t, b"v1.test", b"/x/y") == "v1"


def test_host_longer_than_any_dns_name_matches_nothing_and_is_not_cached():
    t = table(router("any", "HostRegexp(`.+`)"), router("a", "Host(`a.test`)"))
    longest = (b"a" * 60 + b".") * 4 + b"test"  # 248 characters, a valid name
    assert name_of(t, longest) == "any"
    flood = b"a" * 5000 + b".test"
    assert name_of(t, flood) is None
    assert flood not in t._raw


def test_entry_points_bind_routers():
    t_http = table(router("both", "Host(`a.test`)"),
                   router("secure", "Host(`s.test`)", entry_points=("https",)))
    assert name_of(t_http, b"s.test") is None and name_of(t_http, b"a.test") == "both"
    t_https = table(router("both", "Host(`a.test`)"),
                    router("secure", "Host(`s.test`)", entry_points=("https",)), entrypoint="https")
    assert name_of(t_https, b"s.test") == "secure"


class FakeRequest:
    def __init__(self, target=b"/", headers=(), scheme="http", host=b"a.test", ip="127.0.0.1", method=b"GET"):
        self.target = target
        self.headers = list(headers)
        self.scheme = scheme
        self.host = host
        self.client_ip = ip
        self.method = method


def run(chain, request):
    for mw in chain.request:
        result = mw(request)
        if result is not None:
            return result
    return None


def test_redirect_scheme_and_strip_prefix():
    chain = compile_middlewares([RedirectScheme("https", "", True)], https_port="8443")
    reply = run(chain, FakeRequest(b"/p?q=1", host=b"a.test:8080"))
    assert reply.status == 301 and dict(reply.headers)[b"Location"] == b"https://a.test:8443/p?q=1"
    reply = run(chain, FakeRequest(method=b"POST"))
    assert reply.status == 308
    assert run(chain, FakeRequest(scheme="https")) is None
    chain = compile_middlewares([StripPrefix(("/api", "/api/v2"))])
    for before, after in [(b"/api/v2/x", b"/x"), (b"/api", b"/"), (b"/apiv2", b"/apiv2"), (b"/api?x=1", b"/?x=1")]:
        request = FakeRequest(before)
        run(chain, request)
        assert request.target == after


def test_ip_allow_list_and_headers():
    chain = compile_middlewares([IPAllowList(("10.0.0.0/8", "::1/128"))])
    assert run(chain, FakeRequest(ip="10.9.9.9")) is None
    assert run(chain, FakeRequest(ip="::1")) is None
    assert run(chain, FakeRequest(ip="11.0.0.1")).status == 403
    chain = compile_middlewares([Headers(custom_request=(("X-A", "1"), ("Cookie", "")),
                                         custom_response=(("Server", ""), ("X-B", "2")),
                                         sts_seconds=60, sts_include_subdomains=True)])
    request = FakeRequest(headers=[(b"Cookie", b"c=1"), (b"x-a", b"old")])
    run(chain, request)
    assert request.headers == [(b"X-A", b"1")]
    out = chain.response_headers([(b"Server", b"nginx"), (b"Content-Type", b"text/plain")], "https")
    assert out == [(b"Content-Type", b"text/plain"), (b"X-B", b"2"),
                   (b"Strict-Transport-Security", b"max-age=60; includeSubDomains")]
    assert (b"Strict-Transport-Security", b"max-age=60; includeSubDomains") not in \
        chain.response_headers([], "http")


def _basic(user, password):
    return (b"Authorization", b"Basic " + base64.b64encode(f"{user}:{password}".encode()))


def test_htpasswd_formats_traefik_accepts():
    apr1 = subprocess.run(["openssl", "passwd", "-apr1", "pw1"], capture_output=True, text=True).stdout.strip()
    bc = bcrypt.hashpw(b"pw2", bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$")
    sha = "{SHA}" + base64.b64encode(__import__("hashlib").sha1(b"pw3").digest()).decode()
    for hashed, good in [(apr1, b"pw1"), (bc, b"pw2"), (sha, b"pw3")]:
        assert htpasswd.check_password(good, hashed)
        assert not htpasswd.check_password(b"wrong", hashed)
    with pytest.raises(htpasswd.UnsupportedHash):
        htpasswd.parse_users(["bob:abDESxyz"])


def test_basic_auth_fast_hashes_inline_bcrypt_in_a_thread():
    apr1 = htpasswd.apr1(b"pw", b"saltsalt")
    chain = compile_middlewares([BasicAuth((f"alice:{apr1}",), remove_header=True)])
    assert run(chain, FakeRequest()).status == 401
    assert run(chain, FakeRequest(headers=[_basic("alice", "nope")])).status == 401
    request = FakeRequest(headers=[_basic("alice", "pw")])
    assert run(chain, request) is None and request.headers == []

    calls = []

    class Reactor:
        def getThreadPool(self):
            return "pool"

    import edge.http.middlewares as mw
    bc = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    chain = compile_middlewares([BasicAuth((f"alice:{bc}",))], reactor=Reactor())
    import twisted.internet.threads as threads
    original = threads.deferToThreadPool

    def fake(reactor, pool, f, *args):
        d = Deferred()
        calls.append((f, args, d))
        return d

    threads.deferToThreadPool = fake
    try:
        result = run(chain, FakeRequest(headers=[_basic("alice", "pw")]))
        assert isinstance(result, Deferred) and len(calls) == 1
        f, args, d = calls[0]
        d.callback(f(*args))  # run the check "in the thread"
        assert result.result is None
        # The answer is cached: no second thread hop.
        assert run(chain, FakeRequest(headers=[_basic("alice", "pw")])) is None
        assert len(calls) == 1
    finally:
        threads.deferToThreadPool = original


def test_weighted_round_robin_is_smooth_and_exact():
    service = BackendService("s", (Target("a", "h", 1, weight=5), Target("b", "h", 2, weight=1),
                                   Target("c", "h", 3, weight=1)))
    b = Balancer(service, HealthRegistry(Clock()))
    picks = [b.pick().id for _ in range(70)]
    assert picks.count("a") == 50 and picks.count("b") == 10 and picks.count("c") == 10
    # Smooth: the heavy target never runs more than 5 times in a row here.
    longest = max(len(run) for run in "".join(picks).replace("b", " ").replace("c", " ").split())
    assert longest <= 5


def test_passive_backoff_skips_then_forgives():
    clock = Clock()
    health = HealthRegistry(clock, base=1.0, cap=8.0)
    a, b = Target("a", "h", 1), Target("b", "h", 2)
    bal = Balancer(BackendService("s", (a, b)), health)
    assert health.connect_failed(target_key(a)) == 1.0
    assert {bal.pick().id for _ in range(6)} == {"b"}
    clock.advance(1.0)
    assert {bal.pick().id for _ in range(6)} == {"a", "b"}
    # Consecutive failures double the back-off up to the cap.
    assert [health.connect_failed(target_key(a)) for _ in range(5)] == [2.0, 4.0, 8.0, 8.0, 8.0]
    health.connect_succeeded(target_key(a))
    assert {bal.pick().id for _ in range(6)} == {"a", "b"}
    # Everything down: still try something rather than fail outright.
    health.connect_failed(target_key(a))
    health.connect_failed(target_key(b))
    assert bal.pick() is not None
    assert bal.pick_index(exclude={0, 1}) is None


def test_sticky_cookie_names_the_task_and_falls_back():
    a, b = Target("task-a", "h", 1), Target("task-b", "h", 2)
    service = BackendService("s", (a, b), sticky=StickyCookie("srv"))
    bal = Balancer(service, HealthRegistry(Clock()))
    assert {bal.pick(cookie=sticky_value(b)).id for _ in range(5)} == {"task-b"}
    gone = Balancer(BackendService("s", (a,), sticky=StickyCookie("srv")), HealthRegistry(Clock()))
    assert gone.pick(cookie=sticky_value(b)).id == "task-a"
    bal._health.active_down.add(("s", "task-b"))
    bal._active = True
    assert bal.pick(cookie=sticky_value(b)).id == "task-a"


def test_bad_router_is_skipped_not_fatal():
    good = router("good", "Host(`a.test`)")
    bad = Router(name="bad", rule=parse_rule("Host(`b.test`)"), rule_text="x", service="bad",
                 middlewares=(BasicAuth(("nohash",)),))
    t = table(good, bad)
    assert name_of(t, b"a.test") == "good" and name_of(t, b"b.test") is None


def test_reply_type():
    assert Reply(404, b"Not Found").body == b""
