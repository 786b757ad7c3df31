"""
Forward auth (Traefik ``forwardAuth``, v1 ``frontend.auth.forward.*``).

Labels are read into a ForwardAuth; then a real edge process (the HTTP
harness of tests/test_http_proxy.py) asks a real auth server
(tests/forward_auth_server.py, twisted.web) on every request, over HTTP/1.1
and HTTP/2 (curl --http2 on a TLS entry point), with the auth server on
plain HTTP and on HTTPS.  Everything on 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import requests

from edge.discovery.labels import read_labels
from edge.http.forwardauth import add_response_cookies, canonical
from edge.snapshot import ForwardAuth
from tests.h2curl import curl_h2
from tests.ports import free_port
from tests.test_http_proxy import ROOT, Edge, Origin, snapshot, web


class AuthServer:
    def __init__(self, cert_pem: str | None = None):
        self.port = free_port()
        args = [sys.executable, "-m", "tests.forward_auth_server", str(self.port)]
        if cert_pem:
            args.append(cert_pem)
        self.process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        if line.strip() != "ready":
            self.process.kill()
            raise AssertionError(f"auth server did not start: {line!r} {self.process.stderr.read()[-2000:]}")
        self.scheme = "https" if cert_pem else "http"

    def address(self, path="/verify") -> str:
        host = "localhost" if self.scheme == "https" else "127.0.0.1"
        return f"{self.scheme}://{host}:{self.port}{path}"

    def seen(self) -> list[dict]:
        return requests.get(f"{self.scheme}://127.0.0.1:{self.port}/_seen", timeout=5, verify=False).json()

    def last_headers(self) -> dict:
        last = self.seen()[-1]
        out: dict = {}
        for k, v in last["headers"]:
            out.setdefault(k.lower(), []).append(v)
        return out

    def stop(self):
        self.process.kill()
        self.process.wait()


@pytest.fixture(scope="module")
def auth():
    a = AuthServer()
    yield a
    a.stop()


@pytest.fixture(scope="module")
def origin():
    o = Origin("fa")
    yield o
    o.stop()


def _requests_to(origin) -> int:
    return origin.stats()["requests"]


def _echo_headers(response) -> dict:
    out: dict = {}
    for k, v in response.json()["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


def _routers(origin, auth):
    fa = ForwardAuth(
        address=auth.address(),
        auth_response_headers=("Remote-User", "remote-groups"),
        auth_response_headers_regex="^Remote-Em",
        add_auth_cookies_to_response=("authsess",),
    )
    only = ForwardAuth(address=auth.address(), auth_request_headers=("Authorization",))
    down = ForwardAuth(address=f"http://127.0.0.1:{free_port()}/verify")
    return snapshot(
        web([origin.target()], name="fa", host="fa.test", middlewares=[fa]),
        web([origin.target()], name="only", host="only.test", middlewares=[only]),
        web([origin.target()], name="down", host="down.test", middlewares=[down]),
    )


# -- labels ---------------------------------------------------------------


def test_v2_and_v1_labels_make_a_forward_auth_router():
    v2 = read_labels("app", {
        "traefik.http.routers.r.rule": "Host(`a.test`)",
        "traefik.http.routers.r.middlewares": "authelia",
        "traefik.http.middlewares.authelia.forwardauth.address": "http://authelia:9091/api/verify?rd=https://login.test/",
        "traefik.http.middlewares.authelia.forwardauth.trustForwardHeader": "true",
        "traefik.http.middlewares.authelia.forwardauth.authResponseHeaders": "Remote-User,Remote-Groups",
        "traefik.http.middlewares.authelia.forwardauth.authResponseHeadersRegex": "^X-Auth-",
        "traefik.http.middlewares.authelia.forwardauth.authRequestHeaders": "Cookie,Authorization",
        "traefik.http.middlewares.authelia.forwardauth.addAuthCookiesToResponse": "session",
        "traefik.http.middlewares.authelia.forwardauth.tls.insecureSkipVerify": "true",
        "traefik.http.services.s.loadbalancer.server.port": "80",
    })
    assert not v2.problems
    (router,) = v2.routers
    assert router.middlewares == (ForwardAuth(
        address="http://authelia:9091/api/verify?rd=https://login.test/",
        trust_forward_header=True,
        auth_response_headers=("Remote-User", "Remote-Groups"),
        auth_response_headers_regex="^X-Auth-",
        auth_request_headers=("Cookie", "Authorization"),
        add_auth_cookies_to_response=("session",),
        tls_insecure_skip_verify=True,
    ),)
    v1 = read_labels("old", {
        "traefik.frontend.rule": "Host:b.test",
        "traefik.frontend.auth.forward.address": "https://auth.test/",
        "traefik.frontend.auth.forward.trustForwardHeader": "true",
        "traefik.frontend.auth.forward.authResponseHeaders": "X-Forwarded-User",
        "traefik.port": "80",
    })
    assert not v1.problems
    (router,) = v1.routers
    assert router.middlewares == (ForwardAuth(
        address="https://auth.test/", trust_forward_header=True,
        auth_response_headers=("X-Forwarded-User",),
    ),)


@pytest.mark.parametrize("option,value", [
    ("address", "ftp://auth/"),
    ("address", "not a url"),
    ("authResponseHeadersRegex", "(unclosed"),
    ("forwardBody", "true"),
    ("tls.ca", "/nonexistent/ca.pem"),
])
def test_broken_forward_auth_drops_the_router(option, value):
    labels = {
        "traefik.http.routers.r.rule": "Host(`a.test`)",
        "traefik.http.routers.r.middlewares": "fa",
        "traefik.http.middlewares.fa.forwardauth.address": "http://auth/",
        "traefik.http.services.s.loadbalancer.server.port": "80",
    }
    labels[f"traefik.http.middlewares.fa.forwardauth.{option}"] = value
    config = read_labels("app", labels)
    assert config.routers == ()
    assert any(p.level == "error" and "dropped" in p.message for p in config.problems)


def test_v1_broken_forward_auth_drops_the_frontend():
    config = read_labels("old", {
        "traefik.frontend.rule": "Host:b.test",
        "traefik.frontend.auth.forward.trustForwardHeader": "true",
        "traefik.port": "80",
    })
    assert config.routers == ()
    assert any("dropped" in p.message for p in config.problems)


def test_auth_cookies_replace_the_backends_of_the_same_name():
    headers = [(b"Set-Cookie", b"authsess=old"), (b"Set-Cookie", b"app=1"), (b"X", b"y")]
    out = add_response_cookies(headers, [(b"authsess", b"authsess=new; Path=/")])
    assert out == [(b"Set-Cookie", b"app=1"), (b"X", b"y"), (b"Set-Cookie", b"authsess=new; Path=/")]
    assert canonical("x-auth-USER") == "X-Auth-User"


# -- a real edge, HTTP/1.1 -------------------------------------------------


@pytest.fixture
def edge(tmp_path, origin, auth):
    e = Edge(tmp_path, _routers(origin, auth))
    yield e
    e.stop()


def test_denied_answer_is_the_auth_servers_and_the_backend_is_not_asked(edge, origin, auth):
    before = _requests_to(origin)
    r = edge.get("/echo?q=1", host="fa.test", headers={"X-Forwarded-Uri": "/fake", "X-Forwarded-Method": "PUT"})
    assert r.status_code == 401
    assert r.text == "denied by auth\n"
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="test"'
    assert r.headers["X-Auth-Reason"] == "no-token"
    assert _requests_to(origin) == before + 1  # only the stats request itself
    seen = auth.last_headers()
    assert seen["x-forwarded-method"] == ["GET"]
    assert seen["x-forwarded-proto"] == ["http"]
    assert seen["x-forwarded-host"] == ["fa.test"]
    assert seen["x-forwarded-uri"] == ["/echo?q=1"]  # the untrusted client's own is not believed
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert auth.seen()[-1]["method"] == "GET" and auth.seen()[-1]["path"] == "/verify"


def test_allowed_request_gets_the_chosen_headers_and_cookie(edge, auth):
    r = edge.get("/echo", host="fa.test", headers={
        "Authorization": "Bearer good", "Remote-User": "mallory", "Remote-Email": "spoof@evil.test",
        "Cookie": "c=1",
    })
    assert r.status_code == 200
    seen = _echo_headers(r)
    assert seen["remote-user"] == ["alice"]  # the client's own value is replaced
    assert seen["remote-groups"] == ["admins", "users"]
    assert seen["remote-email"] == ["alice@example.test"]  # by authResponseHeadersRegex
    assert "x-auth-extra" not in seen
    assert r.headers.get("Set-Cookie") == "authsess=abc; Path=/"  # 'other' is not listed
    assert auth.last_headers()["cookie"] == ["c=1"]


def test_every_request_is_checked_on_one_kept_alive_connection(edge, auth):
    count = len(auth.seen())
    for _ in range(3):
        assert edge.get("/echo", host="fa.test", headers={"Authorization": "Bearer good"}).status_code == 200
    assert edge.get("/echo", host="fa.test").status_code == 401
    calls = auth.seen()[count:]
    assert len(calls) == 4
    assert len({c["port"] for c in calls}) == 1  # the auth connection is reused, not one per request


def test_redirect_location_is_resolved_against_the_auth_address(edge, auth):
    r = edge.get("/redirect/x", host="fa.test", allow_redirects=False)
    assert r.status_code == 302
    assert r.headers["Location"] == f"http://127.0.0.1:{auth.port}/login?rd=/redirect/x"
    assert r.text == "go log in"


def test_oversized_auth_answer_and_unreachable_auth_server_fail_closed(edge, origin):
    before = _requests_to(origin)
    assert edge.get("/big", host="fa.test").status_code == 500
    r = edge.get("/echo", host="down.test", headers={"Authorization": "Bearer good"})
    assert r.status_code == 500
    assert _requests_to(origin) == before + 1


def test_auth_request_headers_limit_what_the_auth_server_sees(edge, auth):
    r = edge.get("/echo", host="only.test", headers={"Authorization": "Bearer good", "Cookie": "secret=1"})
    assert r.status_code == 200
    seen = auth.last_headers()
    assert seen["authorization"] == ["Bearer good"]
    assert "cookie" not in seen and "user-agent" not in seen
    assert seen["x-forwarded-host"] == ["only.test"]


def test_trusted_proxy_with_trust_forward_header_passes_its_forwarded_headers(tmp_path, origin, auth):
    trusting = ForwardAuth(address=auth.address(), trust_forward_header=True)
    ignoring = ForwardAuth(address=auth.address())
    e = Edge(tmp_path, snapshot(
        web([origin.target()], name="t", host="t.test", middlewares=[trusting]),
        web([origin.target()], name="i", host="i.test", middlewares=[ignoring]),
    ), extra='trusted_proxies = ["127.0.0.1/32"]\n')
    try:
        sent = {"X-Forwarded-Uri": "/orig", "X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "front.test", "X-Forwarded-Method": "POST"}
        assert e.get("/echo", host="t.test", headers=dict(sent)).status_code == 401
        seen = auth.last_headers()
        assert seen["x-forwarded-uri"] == ["/orig"] and seen["x-forwarded-method"] == ["POST"]
        assert seen["x-forwarded-host"] == ["front.test"] and seen["x-forwarded-proto"] == ["https"]
        assert seen["x-forwarded-for"] == ["203.0.113.9, 127.0.0.1"]
        assert e.get("/echo", host="i.test", headers=dict(sent)).status_code == 401
        seen = auth.last_headers()
        assert seen["x-forwarded-uri"] == ["/echo"] and seen["x-forwarded-method"] == ["GET"]
        assert seen["x-forwarded-host"] == ["i.test"] and seen["x-forwarded-for"] == ["127.0.0.1"]
    finally:
        e.stop()


# -- HTTPS auth server: tls.ca, insecureSkipVerify -------------------------


def test_https_auth_server_checked_against_the_given_ca(tmp_path, origin):
    from tests.test_tls_store import TestCA, write

    ca = TestCA()
    bundle = write(str(tmp_path / "auth.pem"), ca.bundle("localhost"))
    other = TestCA("another root")
    a = AuthServer(bundle)
    try:
        good = ForwardAuth(address=a.address(), tls_ca=ca.pem().decode())
        wrong = ForwardAuth(address=a.address(), tls_ca=other.pem().decode())
        skip = ForwardAuth(address=a.address(), tls_insecure_skip_verify=True)
        e = Edge(tmp_path, snapshot(
            web([origin.target()], name="good", host="good.test", middlewares=[good]),
            web([origin.target()], name="wrong", host="wrong.test", middlewares=[wrong]),
            web([origin.target()], name="skip", host="skip.test", middlewares=[skip]),
        ))
        try:
            token = {"Authorization": "Bearer good"}
            assert e.get("/echo", host="good.test", headers=dict(token)).status_code == 200
            assert e.get("/echo", host="good.test").status_code == 401
            assert e.get("/echo", host="wrong.test", headers=dict(token)).status_code == 500
            assert e.get("/echo", host="skip.test", headers=dict(token)).status_code == 200
        finally:
            e.stop()
    finally:
        a.stop()


# -- HTTP/2 -----------------------------------------------------------------


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_forward_auth_over_http2(tmp_path, origin, auth):
    from tests.test_tls_store import TestCA, write

    ca = TestCA()
    pem = write(str(tmp_path / "web.pem"), ca.bundle("fa.test", "down.test"))
    root = write(str(tmp_path / "root.pem"), ca.pem())
    port = free_port()
    eps = f'[entrypoints.https]\naddress = "tcp:{port}:interface=127.0.0.1"\ntls = true\n'
    env = {**os.environ, "EDGE_TEST_CERT": pem, "EDGE_TEST_ALPN": "h2,http/1.1"}
    e = Edge(tmp_path, _routers(origin, auth), entrypoints=eps, env=env)

    def curl(host, path, *args):
        return curl_h2(root, port, host, path, *args)

    try:
        status, headers, body = curl("fa.test", "/echo?q=2")
        assert status.startswith("HTTP/2 401")
        assert body == b"denied by auth\n" and headers["x-auth-reason"] == ["no-token"]
        seen = auth.last_headers()
        assert seen["x-forwarded-proto"] == ["https"] and seen["x-forwarded-uri"] == ["/echo?q=2"]
        assert seen["x-forwarded-host"] == [f"fa.test:{port}"]  # Go's req.Host, port and all
        status, headers, body = curl("fa.test", "/echo", "-H", "Authorization: Bearer good",
                                     "-H", "Remote-User: mallory")
        assert status.startswith("HTTP/2 200")
        import json

        echoed: dict = {}
        for k, v in json.loads(body)["headers"]:
            echoed.setdefault(k.lower(), []).append(v)
        assert echoed["remote-user"] == ["alice"] and echoed["remote-groups"] == ["admins", "users"]
        assert headers["set-cookie"] == ["authsess=abc; Path=/"]
        status, _headers, _body = curl("down.test", "/echo", "-H", "Authorization: Bearer good")
        assert status.startswith("HTTP/2 500")
    finally:
        e.stop()


def test_pooled_connection_closed_by_the_auth_server_is_retried(tmp_path, origin):
    """An auth server that answers one request per connection and drops the next one unanswered."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(30)
    answered = []

    def serve():
        try:
            while len(answered) < 3:
                conn, _ = listener.accept()
                with conn:
                    conn.settimeout(10)
                    data = b""
                    while b"\r\n\r\n" not in data:
                        data += conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nRemote-User: bob\r\n\r\n")
                    answered.append(True)
                    conn.recv(65536)  # the next request on this connection: dropped unanswered
        except OSError:
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    fa = ForwardAuth(address=f"http://127.0.0.1:{listener.getsockname()[1]}/", auth_response_headers=("Remote-User",))
    e = Edge(tmp_path, snapshot(web([origin.target()], name="r", host="retry.test", middlewares=[fa])))
    try:
        for _ in range(2):
            r = e.get("/echo", host="retry.test")
            assert r.status_code == 200 and ["Remote-User", "bob"] in r.json()["headers"]
        assert len(answered) == 2  # the second check needed a new connection
    finally:
        e.stop()
        listener.close()


def test_preserve_request_method_asks_with_the_clients_method(tmp_path, origin, auth):
    fa = ForwardAuth(address=auth.address(), preserve_request_method=True)
    e = Edge(tmp_path, snapshot(web([origin.target()], name="pm", host="pm.test", middlewares=[fa])))
    try:
        r = requests.post(e.base + "/echo", data=b"x" * 10, timeout=10,
                          headers={"Host": "pm.test", "Authorization": "Bearer good"})
        assert r.status_code == 200 and auth.seen()[-1]["method"] == "POST"
        assert "content-length" not in auth.last_headers()  # the body is never sent to the auth server
        r = requests.head(e.base + "/echo", timeout=10, headers={"Host": "pm.test"})
        assert r.status_code == 401 and auth.seen()[-1]["method"] == "HEAD"  # the Agent path
        r = requests.head(e.base + "/echo", timeout=10, headers={"Host": "pm.test", "Authorization": "Bearer good"})
        assert r.status_code == 200
    finally:
        e.stop()
