"""
edge's HTTP proxy against real backends and real clients on loopback.

edge's HTTP service runs alone in a subprocess (``tests/test_http_harness.py
edge``), fed pickled snapshots; the origins are raw HTTP/1.1 servers from
the same harness.  Clients are requests, curl, the websockets library and
raw sockets for hostile input.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from edge.rules import Host, HostRegexp, PathPrefix, And
from edge.snapshot import (
    BackendService, BasicAuth, Headers, HealthCheck, IPAllowList, RedirectScheme,
    Router, Snapshot, StickyCookie, StripPrefix, Target,
)
from tests.swarmkit import wait_for
from tests.ports import free_port

ROOT = Path(__file__).resolve().parent.parent


def _start(args, env=None) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.test_http_harness", *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    line = process.stdout.readline()
    if line.strip() != "ready":
        process.kill()
        raise AssertionError(f"harness {args} did not start: {line!r} {process.stderr.read()[-2000:]}")
    return process


class Origin:
    def __init__(self, name: str):
        self.name = name
        self.port = free_port()
        self.process = _start(["origin", str(self.port), name])

    def target(self, id: str | None = None, weight: int = 1) -> Target:
        return Target(id or self.name, "127.0.0.1", self.port, weight=weight)

    def stats(self) -> dict:
        return requests.get(f"http://127.0.0.1:{self.port}/stats", timeout=5).json()

    def stop(self):
        self.process.kill()
        self.process.wait()


class Edge:
    def __init__(self, tmp: Path, snapshot: Snapshot, extra: str = "", entrypoints: str = "", env=None):
        self.port = free_port()
        self.tmp = tmp
        self.snapshot_path = tmp / "snapshot.pickle"
        self.access_log = tmp / "access.log"
        self.publish(snapshot, wait=False)
        eps = entrypoints or f'[entrypoints.http]\naddress = "tcp:{self.port}:interface=127.0.0.1"\n'
        config = tmp / "edge.toml"
        config.write_text(
            eps
            + "[http]\n"
            + f'access_log = "{self.access_log}"\naccess_log_format = "json"\n'
            + extra
        )
        self.process = _start(["edge", str(config), str(self.snapshot_path)], env=env)
        self.base = f"http://127.0.0.1:{self.port}"

    def publish(self, snapshot: Snapshot, wait: bool = True):
        tmp = self.snapshot_path.with_suffix(".new")
        tmp.write_bytes(pickle.dumps(snapshot))
        os.replace(tmp, self.snapshot_path)
        if wait:
            time.sleep(0.3)  # the harness polls every 50 ms; the tests below also poll

    def get(self, path="/", host="web.test", **kw):
        headers = kw.pop("headers", {})
        headers.setdefault("Host", host)
        return requests.get(self.base + path, headers=headers, timeout=kw.pop("timeout", 10), **kw)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM")

    def log_lines(self) -> list[dict]:
        wait_for(lambda: self.access_log.exists() and self.access_log.stat().st_size > 0, 5, "access log")
        return [json.loads(line) for line in self.access_log.read_text().splitlines() if line]

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.stderr.read()


def web(targets, name="web", host="web.test", rule=None, middlewares=(), priority=0,
        sticky=None, health_check=None, pass_host_header=True, rule_text=None):
    router = Router(
        name=name, rule=rule or Host((host,)), rule_text=rule_text or f"Host(`{host}`)",
        service=name, middlewares=tuple(middlewares), priority=priority,
    )
    service = BackendService(name, tuple(targets), pass_host_header=pass_host_header,
                             sticky=sticky, health_check=health_check)
    return router, service


def snapshot(*pairs) -> Snapshot:
    return Snapshot.build(routers=[p[0] for p in pairs], services=[p[1] for p in pairs])


@pytest.fixture(scope="module")
def origins():
    made = [Origin("a"), Origin("b")]
    yield made
    for o in made:
        o.stop()


@pytest.fixture
def edge_factory(tmp_path):
    started = []

    def make(snap, **kw):
        e = Edge(tmp_path, snap, **kw)
        started.append(e)
        return e

    yield make
    for e in started:
        e.stop()


def raw(port: int, data: bytes, *, source: str = "127.0.0.1", read_until_close=True,
        timeout: float = 10.0) -> bytes:
    """Send raw bytes, return everything the server sent until it closed."""
    with socket.socket() as s:
        s.bind((source, 0))
        s.settimeout(timeout)
        s.connect(("127.0.0.1", port))
        s.sendall(data)
        chunks = []
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if not read_until_close:
                    break
        except socket.timeout:
            pass
        return b"".join(chunks)


# -- routing -------------------------------------------------------------


def test_routes_by_host_and_answers_404_without_route(origins, edge_factory):
    a, b = origins
    e = edge_factory(snapshot(web([a.target()]), web([b.target()], name="api", host="api.test")))
    r = e.get("/name")
    assert (r.status_code, r.text) == (200, "a")
    r = e.get("/name", host="API.test:8080")
    assert (r.status_code, r.text) == (200, "b")
    r = e.get("/name", host="nothing.test")
    assert r.status_code == 404
    entries = e.log_lines() if e.access_log.exists() else []
    assert isinstance(entries, list)


def test_wildcard_path_prefix_and_priority(origins, edge_factory):
    a, b = origins
    wild = web([a.target()], name="wild", rule=HostRegexp(("*.wild.test",), r"[^.]+\.wild\.test", ("*.wild.test",)),
               rule_text="HostRegexp(`{sub:[^.]+}.wild.test`)")
    api = web([b.target()], name="wildapi",
              rule=And((HostRegexp(("*.wild.test",), r"[^.]+\.wild\.test", ("*.wild.test",)), PathPrefix(("/api",)))),
              rule_text="HostRegexp(`{sub:[^.]+}.wild.test`) && PathPrefix(`/api`)")
    e = edge_factory(snapshot(wild, api))
    assert e.get("/name", host="x.wild.test").text == "a"
    # The longer rule wins for /api...
    assert e.get("/api/../name", host="x.wild.test").status_code in (200, 404)
    r = e.get("/api", host="y.wild.test")
    assert r.headers["X-Origin"] == "b"
    # ...and the wildcard covers one label only, as the regexp says.
    assert e.get("/name", host="a.b.wild.test").status_code == 404


def test_503_without_targets_502_when_none_connect_504_when_slow(origins, edge_factory):
    a, _ = origins
    dead = free_port()
    e = edge_factory(
        snapshot(
            web([], name="empty", host="empty.test"),
            web([Target("dead", "127.0.0.1", dead)], name="dead", host="dead.test"),
            web([a.target()]),
        ),
        extra="backend_response_timeout = 1.0\n",
    )
    assert e.get(host="empty.test").status_code == 503
    r = e.get(host="dead.test")
    assert r.status_code == 502
    assert "connect" in r.text
    r = e.get("/slow/4")
    assert r.status_code == 504
    stderr = e.stop()
    assert "Router dead" in stderr and f"127.0.0.1:{dead}" in stderr


def test_snapshot_swap_keeps_requests_in_flight(origins, edge_factory):
    a, _ = origins
    e = edge_factory(snapshot(web([a.target()])))
    result = {}

    def slow():
        result["r"] = e.get("/slow/1.5")

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.4)
    e.publish(snapshot())
    wait_for(lambda: e.get("/name").status_code == 404, 5, "route gone")
    thread.join(10)
    assert result["r"].status_code == 200 and result["r"].text == "slow"


# -- forwarding ----------------------------------------------------------


def test_forwarded_headers_hop_by_hop_and_host(origins, edge_factory):
    a, _ = origins
    e = edge_factory(snapshot(web([a.target()])))
    r = e.get("/echo", headers={
        "X-Forwarded-For": "6.6.6.6", "X-Real-Ip": "6.6.6.6", "Connection": "X-Secret, keep-alive",
        "X-Secret": "1", "Keep-Alive": "timeout=5", "TE": "trailers", "Proxy-Authorization": "x",
    })
    seen = {k.lower(): v for k, v in r.json()["headers"]}
    assert seen["host"] == "web.test"
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-real-ip"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == "web.test"
    assert seen["x-forwarded-port"] == str(e.port)
    for gone in ("x-secret", "keep-alive", "te", "proxy-authorization", "connection"):
        assert gone not in seen


def test_trusted_proxy_headers_kept(origins, edge_factory):
    a, _ = origins
    e = edge_factory(snapshot(web([a.target()])), extra='trusted_proxies = ["127.0.0.2/32"]\n')
    request = (b"GET /echo HTTP/1.1\r\nHost: web.test\r\nX-Forwarded-For: 9.9.9.9\r\n"
               b"X-Forwarded-Proto: https\r\nConnection: close\r\n\r\n")
    trusted = raw(e.port, request, source="127.0.0.2")
    body = json.loads(trusted.split(b"\r\n\r\n", 1)[1])
    seen = {k.lower(): v for k, v in body["headers"]}
    assert seen["x-forwarded-for"] == "9.9.9.9, 127.0.0.2"
    assert seen["x-forwarded-proto"] == "https"
    untrusted = raw(e.port, request, source="127.0.0.3")
    seen = {k.lower(): v for k, v in json.loads(untrusted.split(b"\r\n\r\n", 1)[1])["headers"]}
    assert seen["x-forwarded-for"] == "127.0.0.3"
    assert seen["x-forwarded-proto"] == "http"


def test_pass_host_header_off(origins, edge_factory):
    a, _ = origins
    e = edge_factory(snapshot(web([a.target()], pass_host_header=False)))
    seen = {k.lower(): v for k, v in e.get("/echo").json()["headers"]}
    assert seen["host"] == f"127.0.0.1:{a.port}"


def test_bodies_chunked_upload_expect_continue_and_trailers(origins, edge_factory, tmp_path):
    a, _ = origins
    e = edge_factory(snapshot(web([a.target()])))
    # A chunked upload with a trailer: the origin sees the body, not the trailer.
    req = (b"POST /echo HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
           b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Sneaky: 1\r\n\r\n")
    answer = raw(e.port, req)
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["body_len"] == 11
    assert "x-sneaky" not in {k.lower() for k, _ in body["headers"]}
    # curl with Expect: 100-continue and a 3 MB file.
    payload = tmp_path / "payload"
    payload.write_bytes(os.urandom(3 << 20))
    out = subprocess.run(
        ["curl", "-sS", "-H", "Host: web.test", "-H", "Expect: 100-continue",
         "--data-binary", f"@{payload}", f"{e.base}/echo"],
        capture_output=True, text=True, timeout=30,
    )
    import hashlib
    body = json.loads(out.stdout)
    assert body["body_len"] == 3 << 20
    assert body["body_sha256"] == hashlib.sha256(payload.read_bytes()).hexdigest()
    assert "expect" not in {k.lower() for k, _ in body["headers"]}
    # A chunked response arrives whole; the origin's trailer does not.
    r = e.get("/chunked/5000")
    assert r.text == "c" * 5000 and "X-Trailer" not in r.headers


def test_head_204_304_and_keep_alive_framing(origins, edge_factory):
    a, _ = origins
    e = edge_factory(snapshot(web([a.target()])))
    pipeline = (
        b"HEAD /big/1000 HTTP/1.1\r\nHost: web.test\r\n\r\n"
        b"GET /status/204 HTTP/1.1\r\nHost: web.test\r\n\r\n"
        b"GET /status/304 HTTP/1.1\r\nHost: web.test\r\n\r\n"
        b"GET /name HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n"
    )
    answer = raw(e.port, pipeline)
    parts = answer.split(b"HTTP/1.1 ")
    assert [p[:3] for p in parts[1:]] == [b"200", b"204", b"304", b"200"]
    assert b"Content-Length: 1000" in parts[1]
    assert parts[1].endswith(b"\r\n\r\n")  # no body after HEAD
    assert parts[2].endswith(b"\r\n\r\n") and parts[3].endswith(b"\r\n\r\n")
    assert parts[4].endswith(b"\r\n\r\na")


def test_close_delimited_response_is_rechunked_for_http11_and_closed_for_http10(origins, edge_factory):
    a, _ = origins
    e = edge_factory(snapshot(web([a.target()])))
    eleven = raw(e.port, b"GET /close/300 HTTP/1.1\r\nHost: web.test\r\n\r\n"
                         b"GET /name HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in eleven
    assert eleven.count(b"HTTP/1.1 200") == 2  # the connection stayed usable
    ten = raw(e.port, b"GET /close/300 HTTP/1.0\r\nHost: web.test\r\n\r\n")
    assert ten.endswith(b"z" * 300) and b"chunked" not in ten


def test_client_keep_alive_and_backend_pool_reuse(edge_factory):
    origin = Origin("pool")
    try:
        e = edge_factory(snapshot(web([origin.target()])))
        before = origin.stats()["connections"]
        with requests.Session() as s:
            for _ in range(50):
                assert s.get(e.base + "/name", headers={"Host": "web.test"}, timeout=5).text == "pool"
        after = origin.stats()["connections"]
        # 50 sequential requests: one backend connection (plus the stats probes' own).
        assert after - before <= 2
    finally:
        origin.stop()


def test_websocket_through_edge(edge_factory):
    from websockets.sync.client import connect
    from websockets.sync.server import serve

    port = free_port()

    def echo(ws):
        for message in ws:
            ws.send(message)

    server = serve(echo, "127.0.0.1", port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        e = edge_factory(snapshot(web([Target("ws", "127.0.0.1", port)])))
        sock = socket.create_connection(("127.0.0.1", e.port), timeout=10)
        with connect(f"ws://web.test:{e.port}/chat", sock=sock, open_timeout=10) as ws:
            for i in range(20):
                ws.send(f"hello {i}")
                assert ws.recv(timeout=10) == f"hello {i}"
            big = "x" * 300000
            ws.send(big)
            assert ws.recv(timeout=10) == big
    finally:
        server.shutdown()


def test_raw_upgrade_tunnel_carries_bytes_both_ways(origins, edge_factory):
    a, _ = origins
    e = edge_factory(snapshot(web([a.target()])))
    with socket.create_connection(("127.0.0.1", e.port), timeout=10) as s:
        s.sendall(b"GET /upgrade HTTP/1.1\r\nHost: web.test\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\nearly")
        data = b""
        while b"early" not in data:
            more = s.recv(4096)
            assert more, data
            data += more
        assert data.startswith(b"HTTP/1.1 101")
        s.sendall(b"ping-pong")
        got = b""
        while len(got) < 9:
            more = s.recv(4096)
            assert more, got
            got += more
        assert got == b"ping-pong"


# -- balancing and health -----------------------------------------------


def test_round_robin_and_weights(origins, edge_factory):
    a, b = origins
    e = edge_factory(snapshot(web([a.target(weight=3), b.target(weight=1)])))
    names = [e.get("/name").text for _ in range(40)]
    assert names.count("a") == 30 and names.count("b") == 10


def test_sticky_cookie_and_fallback_when_task_gone(origins, edge_factory):
    a, b = origins
    sticky = StickyCookie(name="srv")
    e = edge_factory(snapshot(web([a.target("task-a"), b.target("task-b")], sticky=sticky)))
    first = e.get("/name")
    cookie = first.cookies.get("srv")
    assert cookie
    names = {e.get("/name", cookies={"srv": cookie}).text for _ in range(10)}
    assert names == {first.text}
    # The task behind the cookie leaves: the request goes elsewhere and gets a new cookie.
    remaining = b if first.text == "a" else a
    e.publish(snapshot(web([remaining.target(f"task-{remaining.name}")], sticky=sticky)))
    wait_for(lambda: e.get("/name", cookies={"srv": cookie}).text == remaining.name, 5, "fallback")
    r = e.get("/name", cookies={"srv": cookie})
    assert r.cookies.get("srv") and r.cookies.get("srv") != cookie


def test_refused_target_is_skipped_without_failed_requests(origins, edge_factory):
    a, _ = origins
    dead = Target("dead", "127.0.0.1", free_port())
    e = edge_factory(snapshot(web([dead, a.target()])))
    codes = [e.get("/name").status_code for _ in range(30)]
    assert codes == [200] * 30
    assert "cannot connect to http://127.0.0.1" in e.stop()


def test_active_health_check_takes_failing_target_out(edge_factory):
    good, bad = Origin("good"), Origin("bad")
    try:
        check = HealthCheck(path="/name", interval=0.3, timeout=1.0)
        e = edge_factory(snapshot(web([good.target(), bad.target()], health_check=check)))
        wait_for(lambda: {e.get("/name").text for _ in range(4)} == {"good", "bad"}, 10, "both healthy")
        bad.stop()
        # Until the check notices, passive back-off already avoids the refused target.
        codes = [e.get("/name").status_code for _ in range(20)]
        assert codes == [200] * 20
        time.sleep(1.0)  # a few check intervals
        assert [e.get("/name").text for _ in range(5)] == ["good"] * 5
        assert "fails its health check" in e.stop()
    finally:
        good.stop()


# -- middlewares ---------------------------------------------------------


def test_middlewares_end_to_end(origins, edge_factory):
    import bcrypt

    a, _ = origins
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$", 1)
    e = edge_factory(snapshot(
        web([a.target()], name="auth", host="auth.test", middlewares=[BasicAuth((f"alice:{hashed}",))]),
        web([a.target()], name="redir", host="redir.test",
            middlewares=[RedirectScheme(scheme="https", port="8443", permanent=True)]),
        web([a.target()], name="strip", host="strip.test", middlewares=[StripPrefix(("/api",))]),
        web([a.target()], name="deny", host="deny.test", middlewares=[IPAllowList(("10.0.0.0/8",))]),
        web([a.target()], name="allow", host="allow.test", middlewares=[IPAllowList(("127.0.0.0/8",))]),
        web([a.target()], name="hdr", host="hdr.test", middlewares=[Headers(
            custom_request=(("X-Added", "yes"), ("User-Agent", "")),
            custom_response=(("X-Resp", "1"), ("X-Origin", "")),
            sts_seconds=300, force_sts_header=True,
        )]),
    ))
    r = e.get(host="auth.test")
    assert r.status_code == 401 and "Basic" in r.headers["WWW-Authenticate"]
    assert e.get("/name", host="auth.test", auth=("alice", "wrong")).status_code == 401
    assert e.get("/name", host="auth.test", auth=("alice", "s3cret")).text == "a"
    r = e.get("/x?y=1", host="redir.test", allow_redirects=False)
    assert r.status_code == 301 and r.headers["Location"] == "https://redir.test:8443/x?y=1"
    body = e.get("/api/echo?q=1", host="strip.test").json()
    assert body["url"] == "/echo?q=1"
    assert ["X-Forwarded-Prefix", "/api"] in body["headers"]
    assert e.get("/name", host="deny.test").status_code == 403
    assert e.get("/name", host="allow.test").status_code == 200
    r = e.get("/echo", host="hdr.test")
    seen = {k.lower(): v for k, v in r.json()["headers"]}
    assert seen["x-added"] == "yes" and "user-agent" not in seen
    assert r.headers["X-Resp"] == "1" and "X-Origin" not in r.headers
    assert r.headers["Strict-Transport-Security"] == "max-age=300"


def test_entrypoint_redirect(origins, edge_factory):
    a, _ = origins
    port = free_port()
    eps = (f'[entrypoints.http]\naddress = "tcp:{port}:interface=127.0.0.1"\nredirect_to = "https"\n'
           '[entrypoints.https]\naddress = "tcp:8443:interface=127.0.0.1"\ntls = true\n')
    e = edge_factory(snapshot(web([a.target()])), entrypoints=eps)
    e.port, e.base = port, f"http://127.0.0.1:{port}"
    r = e.get("/p", allow_redirects=False)
    assert r.status_code == 301 and r.headers["Location"] == "https://web.test:8443/p"
    assert "wants TLS but no TLS context" in e.stop()


def test_tls_entry_point_forwards_with_https_proto(origins, edge_factory, tmp_path):
    a, _ = origins
    pem = tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=web.test",
         "-keyout", str(pem), "-out", str(tmp_path / "c.pem")],
        check=True, capture_output=True,
    )
    pem.write_text(pem.read_text() + (tmp_path / "c.pem").read_text())
    port = free_port()
    eps = f'[entrypoints.https]\naddress = "tcp:{port}:interface=127.0.0.1"\ntls = true\n'
    edge_factory(snapshot(web([a.target()])), entrypoints=eps, env={**os.environ, "EDGE_TEST_CERT": str(pem)})
    out = subprocess.run(
        ["curl", "-sSk", "--resolve", f"web.test:{port}:127.0.0.1", f"https://web.test:{port}/echo",
         f"https://web.test:{port}/big/200000"],
        capture_output=True, timeout=30,
    )
    first, _, rest = out.stdout.partition(b"}")
    seen = {k.lower(): v for k, v in json.loads(first + b"}")["headers"]}
    assert seen["x-forwarded-proto"] == "https"
    assert rest == b"b" * 200000  # a second request on the same TLS connection, whole


# -- hostile input -------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (b"POST /echo HTTP/1.1\r\nHost: web.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nHost: web.test\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde", 400),
        (b"POST /echo HTTP/1.1\r\nHost: web.test\r\nContent-Length: -3\r\n\r\nabc", 400),
        (b"POST /echo HTTP/1.1\r\nHost: web.test\r\nContent-Length: 0x3\r\n\r\nabc", 400),
        (b"GET /echo HTTP/1.1\r\nHost: web.test\r\nX-Folded: a\r\n b\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
        (b"POST /echo HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400),
        (b"POST /echo HTTP/1.0\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"GET /echo HTTP/1.1\r\n\r\n", 400),
        (b"GET /echo HTTP/1.1\r\nHost: web.test\r\nHost: other.test\r\n\r\n", 400),
        (b"GET /echo HTTP/1.1\r\nHost : web.test\r\n\r\n", 400),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: web.test\r\n\r\n", 414),
        (b"GET /echo HTTP/1.1\r\nHost: web.test\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n", 431),
        (b"GET /echo HTTP/1.1\r\nHost: web.test\r\nX-Big: " + b"b" * 70000 + b"\r\n\r\n", 431),
        (b"GET /echo HTTP/1.1\r\nHost: web.test\r\nExpect: something\r\n\r\n", 417),
        (b"CONNECT web.test:443 HTTP/1.1\r\nHost: web.test\r\n\r\n", 405),
        (b"GET /echo HTTP/2.0\r\nHost: web.test\r\n\r\n", 505),
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", 400),
    ],
)
def test_hostile_requests_rejected_before_reaching_backend(request_bytes, status, edge_factory):
    origin = Origin("victim")
    try:
        e = edge_factory(snapshot(web([origin.target()])))
        answer = raw(e.port, request_bytes)
        assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:200]
        assert b"Connection: close" in answer
        assert origin.stats()["requests"] == 1  # only the stats request itself
    finally:
        origin.stop()


def test_body_limit_and_timeouts(origins, edge_factory):
    a, _ = origins
    e = edge_factory(snapshot(web([a.target()])), extra=(
        "max_body_bytes = 1000\nrequest_header_timeout = 1.0\nclient_idle_timeout = 1.0\n"
    ))
    r = requests.post(e.base + "/echo", data=b"x" * 2000, headers={"Host": "web.test"}, timeout=10)
    assert r.status_code == 413
    chunked = raw(e.port, b"POST /echo HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                          + b"3e8\r\n" + b"y" * 1000 + b"\r\n" + b"3e8\r\n" + b"y" * 1000 + b"\r\n0\r\n\r\n")
    assert chunked.startswith(b"HTTP/1.1 413")
    # A head that never ends: 408 after the header timeout (the housekeeping tick is 1 s).
    slow = raw(e.port, b"GET /name HTTP/1.1\r\nHost: web.test\r\n", timeout=10)
    assert slow.startswith(b"HTTP/1.1 408")
    # An idle keep-alive connection is closed.
    with socket.create_connection(("127.0.0.1", e.port), timeout=10) as s:
        s.sendall(b"GET /name HTTP/1.1\r\nHost: web.test\r\n\r\n")
        data = s.recv(4096)
        assert data.startswith(b"HTTP/1.1 200")
        assert s.recv(4096) == b""  # closed by edge (our own 10 s timeout would raise)


def test_proxy_protocol_from_trusted_sources_only(origins, edge_factory):
    a, _ = origins
    port = free_port()
    eps = (f'[entrypoints.http]\naddress = "tcp:{port}:interface=127.0.0.1"\n'
           'proxy_protocol = ["127.0.0.2/32"]\n')
    e = edge_factory(snapshot(web([a.target()])), entrypoints=eps)
    request = b"GET /echo HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n"
    v1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 55555 80\r\n"
    answer = raw(port, v1 + request, source="127.0.0.2")
    seen = {k.lower(): v for k, v in json.loads(answer.split(b"\r\n\r\n", 1)[1])["headers"]}
    assert seen["x-forwarded-for"] == "203.0.113.7" and seen["x-real-ip"] == "203.0.113.7"
    # v2, binary
    import struct
    v2 = (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", 12)
          + socket.inet_aton("198.51.100.9") + socket.inet_aton("127.0.0.1") + struct.pack("!HH", 4000, 80))
    answer = raw(port, v2 + request, source="127.0.0.2")
    seen = {k.lower(): v for k, v in json.loads(answer.split(b"\r\n\r\n", 1)[1])["headers"]}
    assert seen["x-forwarded-for"] == "198.51.100.9"
    # An untrusted source cannot claim an address: its PROXY line is just a bad request.
    assert raw(port, v1 + request, source="127.0.0.3").startswith(b"HTTP/1.1 400")
    plain = raw(port, request, source="127.0.0.3")
    seen = {k.lower(): v for k, v in json.loads(plain.split(b"\r\n\r\n", 1)[1])["headers"]}
    assert seen["x-forwarded-for"] == "127.0.0.3"


def test_access_log_json(origins, edge_factory):
    a, _ = origins
    e = edge_factory(snapshot(web([a.target()])))
    e.get("/name")
    e.get("/name", host="missing.test")
    entries = wait_for(lambda: (lambda xs: xs if len(xs) >= 2 else None)(e.log_lines()), 5, "two log lines")
    ok = next(x for x in entries if x["status"] == 200)
    assert ok["router"] == "web" and ok["target"] == f"http://127.0.0.1:{a.port}"
    assert ok["bytes"] == 1 and ok["path"] == "/name" and ok["duration_ms"] >= 0
    missing = next(x for x in entries if x["status"] == 404)
    assert missing["router"] == "-" and missing["error"] == "no route"


def test_sigterm_lets_requests_in_flight_finish(origins, edge_factory):
    a, _ = origins
    e = edge_factory(snapshot(web([a.target()])), extra="shutdown_grace = 5.0\n")
    result = {}

    def slow():
        result["r"] = e.get("/slow/1.5")

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.5)
    e.process.terminate()
    thread.join(10)
    assert result["r"].status_code == 200 and result["r"].text == "slow"
    assert e.process.wait(10) == 0
    with pytest.raises(requests.ConnectionError):
        e.get("/name", timeout=2)


# -- memory on big transfers ---------------------------------------------


def test_one_gib_each_way_in_bounded_memory(edge_factory, tmp_path):
    origin = Origin("bulk")
    try:
        e = edge_factory(snapshot(web([origin.target()])))
        e.get("/name")
        before = e.rss_kib()
        size = 1 << 30
        down = subprocess.run(
            ["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download} %{http_code}",
             "-H", "Host: web.test", f"{e.base}/big/{size}"],
            capture_output=True, text=True, timeout=300,
        )
        assert down.stdout == f"{size} 200", down.stderr
        # Upload 1 GiB from a generator (chunked), streamed by requests.
        def gen():
            block = b"u" * (1 << 20)
            for _ in range(1024):
                yield block

        r = requests.post(e.base + "/echo", data=gen(), headers={"Host": "web.test"}, timeout=300)
        assert r.json()["body_len"] == size
        growth_mib = (e.rss_kib() - before) / 1024
        print(f"edge peak RSS grew {growth_mib:.1f} MiB over 1 GiB down + 1 GiB up")
        (tmp_path / "rss.txt").write_text(f"{growth_mib:.1f}\n")
        assert growth_mib < 8
    finally:
        origin.stop()


def test_a_half_closed_client_still_gets_its_answer(origins, edge_factory):
    """The client shuts its sending side after the request (issue 9.12): answered, as HAProxy does."""
    a, _ = origins
    e = edge_factory(snapshot(web([a.target()])))
    with socket.socket() as s:
        s.settimeout(10)
        s.connect(("127.0.0.1", e.port))
        s.sendall(b"GET /slow/0.3 HTTP/1.1\r\nHost: web.test\r\n\r\n")
        s.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 "), data[:200]
    assert data.endswith(b"slow")
