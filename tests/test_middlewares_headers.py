"""
The security and CORS options of the ``headers`` middleware, through a real
edge process over HTTP/1.1 (requests) and HTTP/2 (curl --http2), plus the
label reading.  Everything on 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

import pytest
import requests

from edge.discovery.labels import read_labels
from edge.http.middlewares import compile_middlewares
from edge.rules import Host
from edge.snapshot import Headers
from tests.h2curl import curl_h2
from tests.ports import free_port
from tests.test_http_proxy import Edge, Origin, snapshot, web

SECURE = Headers(
    frame_deny=True, content_type_nosniff=True, browser_xss_filter=True,
    content_security_policy="default-src 'self'", referrer_policy="no-referrer",
    permissions_policy="camera=()",
    allowed_hosts=("ok.test",), hosts_proxy_headers=("X-Forwarded-Host",),
    ssl_proxy_headers=(("X-Forwarded-Proto", "https"),), sts_seconds=60,
)
CORS = Headers(
    access_control_allow_origin_list=("https://app.test",),
    access_control_allow_origin_list_regex=(r"^https://[a-z]+\.corp\.test$",),
    access_control_allow_methods=("GET", "PUT"), access_control_allow_headers=("X-Token",),
    access_control_expose_headers=("X-Total",), access_control_allow_credentials=True,
    access_control_max_age=600, add_vary_header=True,
)
EXPECTED = {
    "x-frame-options": "DENY", "x-content-type-options": "nosniff", "x-xss-protection": "1; mode=block",
    "content-security-policy": "default-src 'self'", "referrer-policy": "no-referrer",
    "permissions-policy": "camera=()",
}


def test_labels_v2_and_v1():
    v2 = read_labels("app", {
        "traefik.http.routers.r.rule": "Host(`a.test`)", "traefik.http.routers.r.middlewares": "h",
        "traefik.http.middlewares.h.headers.frameDeny": "true",
        "traefik.http.middlewares.h.headers.customFrameOptionsValue": "SAMEORIGIN",
        "traefik.http.middlewares.h.headers.allowedHosts": "a.test,b.test",
        "traefik.http.middlewares.h.headers.sslProxyHeaders.X-Forwarded-Proto": "https",
        "traefik.http.middlewares.h.headers.accessControlAllowOriginListRegex": "^https://.*\\.a\\.test$",
        "traefik.http.middlewares.h.headers.accessControlMaxAge": "100",
        "traefik.http.middlewares.h.headers.isDevelopment": "true",
        "traefik.http.services.s.loadbalancer.server.port": "80",
    })
    assert not v2.problems
    assert v2.routers[0].middlewares == (Headers(
        frame_deny=True, custom_frame_options_value="SAMEORIGIN", allowed_hosts=("a.test", "b.test"),
        ssl_proxy_headers=(("X-Forwarded-Proto", "https"),),
        access_control_allow_origin_list_regex=("^https://.*\\.a\\.test$",), access_control_max_age=100,
        is_development=True,
    ),)
    v1 = read_labels("old", {
        "traefik.frontend.rule": "Host:b.test", "traefik.port": "80",
        "traefik.frontend.headers.frameDeny": "true",
        "traefik.frontend.headers.allowedHosts": "b.test",
        "traefik.frontend.headers.SSLProxyHeaders": "X-Forwarded-Proto:https",
        "traefik.frontend.headers.contentSecurityPolicy": "default-src 'none'",
    })
    assert not v1.problems
    assert v1.routers[0].middlewares == (Headers(
        frame_deny=True, allowed_hosts=("b.test",), ssl_proxy_headers=(("X-Forwarded-Proto", "https"),),
        content_security_policy="default-src 'none'",
    ),)


def test_is_development_turns_off_allowed_hosts_ssl_redirect_and_hsts():
    chain = compile_middlewares([Headers(allowed_hosts=("a",), ssl_redirect=True, sts_seconds=5,
                                         frame_deny=True, is_development=True)])
    assert chain.request == () and chain.sts is None
    assert chain.response_add == ((b"X-Frame-Options", b"DENY"),)


@pytest.fixture(scope="module")
def origin():
    o = Origin("hd")
    yield o
    o.stop()


def _snapshot(origin, secure=SECURE):
    t = [origin.target()]
    return snapshot(
        web(t, name="sec", host="ok.test", rule=Host(("ok.test", "bad.test")), middlewares=[secure]),
        web(t, name="cors", host="cors.test", middlewares=[CORS]),
    )


@pytest.fixture
def edge(tmp_path, origin):
    e = Edge(tmp_path, _snapshot(origin))
    yield e
    e.stop()


def test_security_headers_allowed_hosts_and_ssl_proxy_headers(edge):
    r = edge.get("/echo", host="ok.test")
    assert r.status_code == 200
    assert {k: r.headers.get(k) for k in EXPECTED} == EXPECTED
    assert "Strict-Transport-Security" not in r.headers  # plain HTTP, untrusted client
    r = edge.get("/echo", host="bad.test")
    assert r.status_code == 500 and r.text == "Bad Host\n"
    # An untrusted client's X-Forwarded-Host / -Proto are not believed (Traefik's entry point drops them).
    assert edge.get("/echo", host="bad.test", headers={"X-Forwarded-Host": "ok.test"}).status_code == 500
    r = edge.get("/echo", host="ok.test", headers={"X-Forwarded-Proto": "https"})
    assert "Strict-Transport-Security" not in r.headers


def test_trusted_proxy_headers_count(tmp_path, origin):
    e = Edge(tmp_path, _snapshot(origin), extra='trusted_proxies = ["127.0.0.1/32"]\n')
    try:
        assert e.get("/echo", host="bad.test", headers={"X-Forwarded-Host": "ok.test"}).status_code == 200
        r = e.get("/echo", host="ok.test", headers={"X-Forwarded-Proto": "https"})
        assert r.headers["Strict-Transport-Security"] == "max-age=60"
    finally:
        e.stop()


def test_cors_preflight_and_answers(edge, origin):
    before = origin.stats()["requests"]
    r = requests.options(edge.base + "/echo", timeout=10, headers={
        "Host": "cors.test", "Origin": "https://app.test", "Access-Control-Request-Method": "PUT"})
    assert r.status_code == 200 and r.content == b""
    assert r.headers["Access-Control-Allow-Origin"] == "https://app.test"
    assert r.headers["Access-Control-Allow-Methods"] == "GET, PUT"
    assert r.headers["Access-Control-Allow-Headers"] == "X-Token"
    assert r.headers["Access-Control-Allow-Credentials"] == "true"
    assert r.headers["Access-Control-Max-Age"] == "600"
    assert origin.stats()["requests"] == before + 1  # the preflight never reached the origin
    r = edge.get("/echo", host="cors.test", headers={"Origin": "https://x.corp.test"})
    assert r.headers["Access-Control-Allow-Origin"] == "https://x.corp.test"
    assert r.headers["Vary"] == "Origin" and r.headers["Access-Control-Expose-Headers"] == "X-Total"
    r = edge.get("/echo", host="cors.test", headers={"Origin": "https://evil.test"})
    assert r.status_code == 200 and "Access-Control-Allow-Origin" not in r.headers
    r = requests.options(edge.base + "/echo", timeout=10, headers={
        "Host": "cors.test", "Origin": "https://evil.test", "Access-Control-Request-Method": "PUT"})
    assert r.status_code == 200 and "Access-Control-Allow-Origin" not in r.headers


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_headers_over_http2(tmp_path, origin):
    from tests.test_tls_store import TestCA, write

    ca = TestCA()
    pem = write(str(tmp_path / "web.pem"), ca.bundle("ok.test", "bad.test", "cors.test"))
    root = write(str(tmp_path / "root.pem"), ca.pem())
    port = free_port()
    eps = f'[entrypoints.https]\naddress = "tcp:{port}:interface=127.0.0.1"\ntls = true\n'
    env = {**os.environ, "EDGE_TEST_CERT": pem, "EDGE_TEST_ALPN": "h2,http/1.1"}
    # The host is compared as sent, port and all (Go's req.Host), and curl sends the port.
    secure = dataclasses.replace(SECURE, allowed_hosts=(f"ok.test:{port}",))
    e = Edge(tmp_path, _snapshot(origin, secure), entrypoints=eps, env=env)

    def curl(host, *args):
        status, headers, body = curl_h2(root, port, host, "/echo", *args)
        return status, {k: v[-1] for k, v in headers.items()}, body

    try:
        status, headers, _ = curl("ok.test")
        assert status.startswith("HTTP/2 200")
        assert {k: headers.get(k) for k in EXPECTED} == EXPECTED
        assert headers["strict-transport-security"] == "max-age=60"
        status, _, body = curl("bad.test")
        assert status.startswith("HTTP/2 500") and body == b"Bad Host\n"
        status, headers, _ = curl("cors.test", "-X", "OPTIONS", "-H", "Origin: https://app.test",
                                  "-H", "Access-Control-Request-Method: GET")
        assert status.startswith("HTTP/2 200") and headers["access-control-allow-origin"] == "https://app.test"
    finally:
        e.stop()
