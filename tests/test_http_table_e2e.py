"""
Rows of the shared table (tests/test_http_pipeline.py) end to end: a real edge
process with TLS offering h2 and http/1.1 (tests/test_http_h2_e2e.py's
``tls_edge``), the raw origin of tests/test_http_harness.py behind it, and
curl asking each row once with ``--http2`` and once with ``--http1.1`` over
the same TLS entry point.  Both framings must give the same answer, and the
access log one line per request that differs only in its protocol.
Everything on 127.0.0.1.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
from dataclasses import dataclass

import pytest

from edge.rules import And, Host, PathPrefix
from edge.snapshot import (
    AddPrefix, BasicAuth, Headers, IPAllowList, RateLimit, RedirectRegex, ReplacePath, SourceCriterion,
    StripPrefix,
)
from tests.swarmkit import wait_for
from tests.test_hostile_h2 import END_HEADERS, END_STREAM, HEADERS, Client, frame, request_block, status_of
from tests.test_http_h2_e2e import tls_edge
from tests.test_http_proxy import Origin, snapshot, web

PW = "u:{SHA}GpHWL3ymc5liWkNopqtdSjuqYHM="  # password "pw"


def _routers(origin):
    """One host (the test certificate's), a router per path prefix, each with its middlewares."""
    def at(name, prefix, *middlewares):
        return web([origin.target()], name=name, rule=And((Host(("web.test",)), PathPrefix((prefix,)))),
                   rule_text=f"Host(`web.test`) && PathPrefix(`{prefix}`)", middlewares=middlewares)

    return snapshot(
        at("plain", "/echo"),
        at("strip", "/api", StripPrefix(("/api",)), AddPrefix("/echo")),
        at("auth", "/private", BasicAuth((PW,), realm="lab", remove_header=True), ReplacePath("/echo")),
        at("hdr", "/hdr", Headers(frame_deny=True, sts_seconds=60, custom_response=(("X-Served", "edge"),)),
           ReplacePath("/echo")),
        at("cors", "/cors", Headers(access_control_allow_origin_list=("https://app.test",),
                                    access_control_allow_methods=("GET", "PUT"), add_vary_header=True),
           ReplacePath("/echo")),
        at("deny", "/deny", IPAllowList(("10.0.0.0/8",))),
        at("rate", "/rate", RateLimit(1, period=3600.0, burst=1,
                                      source=SourceCriterion(request_header_name="X-Bucket")), ReplacePath("/echo")),
        at("redir", "/old", RedirectRegex(r"^https://web\.test:[0-9]+/old/(.*)", "https://web.test/new/$1")),
        at("who", "/who", BasicAuth((PW,), header_field="X-WEBAUTH-USER"), ReplacePath("/echo")),
        at("lan", "/lan", IPAllowList(("10.0.0.0/8",), use_forwarded_for=True), ReplacePath("/echo")),
    )


@pytest.fixture(scope="module")
def origin():
    o = Origin("table")
    yield o
    o.stop()


@pytest.fixture(scope="module")
def edge(origin, tmp_path_factory):
    e = tls_edge(tmp_path_factory.mktemp("table"), [origin.target()])
    try:
        e.publish(_routers(origin))
        wait_for(lambda: _curl(e, "--http2", "/api/x").status == 200, 10, "the table's routers")
        yield e
    finally:
        e.stop()


@dataclass
class Answer:
    status: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)


def _curl(edge, framing: str, path: str, *args: str) -> Answer:
    done = subprocess.run(
        ["curl", "-sS", framing, "-i", "--path-as-is", "--max-time", "20", "--cacert", edge.root,
         "--resolve", f"web.test:{edge.https_port}:127.0.0.1", *args,
         f"https://web.test:{edge.https_port}{path}"],
        capture_output=True, timeout=30,
    )
    assert done.returncode == 0, done.stderr
    head, _, body = done.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    expected = "HTTP/2 " if framing == "--http2" else "HTTP/1.1 "
    assert lines[0].startswith(expected), lines[0]
    headers: dict = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.setdefault(k.strip().lower(), []).append(v.strip())
    return Answer(int(lines[0].split()[1]), headers, body)


FRAMINGS = ["--http2", "--http1.1"]


@pytest.mark.parametrize("framing", FRAMINGS)
def test_stripprefix_then_addprefix(edge, framing):
    seen = _curl(edge, framing, "/api/x?q=1").json()
    assert seen["url"] == "/echo/x?q=1"
    headers = {k.lower(): v for k, v in seen["headers"]}
    assert headers["x-forwarded-prefix"] == "/api"
    assert headers["x-forwarded-proto"] == "https"


@pytest.mark.parametrize("framing", FRAMINGS)
def test_basicauth(edge, framing):
    refused = _curl(edge, framing, "/private")
    assert refused.status == 401 and refused.headers["www-authenticate"] == ['Basic realm="lab"']
    passed = _curl(edge, framing, "/private", "-u", "u:pw")
    assert passed.status == 200
    assert "authorization" not in {k.lower() for k, _ in passed.json()["headers"]}  # removeHeader


@pytest.mark.parametrize("framing", FRAMINGS)
def test_security_headers_and_hsts_on_tls(edge, framing):
    answer = _curl(edge, framing, "/hdr")
    assert answer.status == 200
    assert answer.headers["x-frame-options"] == ["DENY"]
    assert answer.headers["x-served"] == ["edge"]
    assert answer.headers["strict-transport-security"] == ["max-age=60"]


@pytest.mark.parametrize("framing", FRAMINGS)
def test_cors_preflight_answered_by_edge_and_origin_named_on_answers(edge, origin, framing):
    before = origin.stats()["requests"]
    preflight = _curl(edge, framing, "/cors", "-X", "OPTIONS", "-H", "Origin: https://app.test",
                      "-H", "Access-Control-Request-Method: PUT")
    assert preflight.status == 200 and preflight.body == b""
    assert preflight.headers["access-control-allow-methods"] == ["GET, PUT"]
    assert origin.stats()["requests"] == before + 1  # only the stats request: the preflight never reached it
    answer = _curl(edge, framing, "/cors", "-H", "Origin: https://app.test")
    assert answer.headers["access-control-allow-origin"] == ["https://app.test"]
    assert answer.headers["vary"] == ["Origin"]


@pytest.mark.parametrize("framing", FRAMINGS)
def test_ipallowlist_refuses(edge, framing):
    assert _curl(edge, framing, "/deny").status == 403


@pytest.mark.parametrize("framing", FRAMINGS)
def test_ratelimit_past_the_burst(edge, framing):
    bucket = framing.strip("-")
    assert _curl(edge, framing, "/rate", "-H", f"X-Bucket: {bucket}").status == 200
    refused = _curl(edge, framing, "/rate", "-H", f"X-Bucket: {bucket}")
    assert refused.status == 429 and refused.headers["retry-after"] == ["3600"]


@pytest.mark.parametrize("framing", FRAMINGS)
def test_redirectregex(edge, framing):
    answer = _curl(edge, framing, "/old/p?x=1")
    assert (answer.status, answer.headers["location"]) == (302, ["https://web.test/new/p?x=1"])


@pytest.mark.parametrize("framing", FRAMINGS)
def test_a_byte_outside_ascii_in_the_path_is_a_400(edge, framing):
    """curl escapes such bytes itself, so they go out raw from a socket (and HPACK, for h2)."""
    path = b"/echo/caf\xc3\xa9"
    if framing == "--http2":
        client = Client(edge)
        try:
            client.send(frame(HEADERS, END_STREAM | END_HEADERS, 1, request_block(path)))
            status = status_of(client.frames(until=lambda f: f[0] == HEADERS and f[2] == 1))
        finally:
            client.close()
    else:
        ctx = ssl.create_default_context(cafile=edge.root)
        ctx.set_alpn_protocols(["http/1.1"])
        with socket.create_connection(("127.0.0.1", edge.https_port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="web.test") as tls:
                tls.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n")
                answer = b""
                while chunk := tls.recv(65536):
                    answer += chunk
        status = answer.split(b" ", 2)[1].decode()
    assert status == "400"
    # edge's own 400: no target was chosen (an origin's llhttp would refuse such a line too).
    # llhttp stops at the byte, so the HTTP/1.1 line names no method or path; HTTP/2's does.
    protocol = "HTTP/2.0" if framing == "--http2" else "HTTP/1.1"
    wait_for(lambda: [x for x in _log(edge) if x["status"] == 400 and x["protocol"] == protocol], 10, "its log line")
    refused = [x for x in _log(edge) if x["status"] == 400 and x["protocol"] == protocol]
    assert all((x["router"], x["target"]) == ("-", "-") for x in refused), refused
    assert not [x for x in _log(edge) if x["path"] == path.decode("latin-1") and x["target"] != "-"]


def _log(edge) -> list[dict]:
    try:
        return edge.log_lines()
    except AssertionError:
        return []


def test_both_framings_log_the_same_line_but_the_protocol(edge):
    """The same requests through each framing: equal access log lines apart from the protocol."""
    paths = ["/api/logged", "/private/logged", "/deny/logged", "/old/logged", "/nothing/logged"]
    for framing in FRAMINGS:
        for path in paths:
            _curl(edge, framing, path)

    def mine(protocol):
        # (the path logged is the one forwarded: /api/logged went on as /echo/logged)
        return [line for line in _log(edge) if line["path"].endswith("/logged") and line["protocol"] == protocol]

    wait_for(lambda: len(mine("HTTP/2.0")) == len(mine("HTTP/1.1")) == len(paths), 10, "access log lines")
    lines = {"--http2": mine("HTTP/2.0"), "--http1.1": mine("HTTP/1.1")}
    drop = ("time", "duration_ms", "protocol")
    h2 = [{k: v for k, v in line.items() if k not in drop} for line in lines["--http2"]]
    h1 = [{k: v for k, v in line.items() if k not in drop} for line in lines["--http1.1"]]
    assert h2 == h1
    assert [(line["router"], line["status"]) for line in h2] == [
        ("strip", 200), ("auth", 401), ("deny", 403), ("redir", 302), ("-", 404)]


# -- the PROXY protocol in front of TLS, both framings ------------------------------------

PROXY_V1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 55555 443\r\n"


@pytest.fixture(scope="module")
def proxied(origin, tmp_path_factory):
    """An edge whose TLS entry point reads a PROXY header from 127.0.0.1 (the test's load balancer)."""
    e = tls_edge(tmp_path_factory.mktemp("proxied"), [origin.target()],
                 entrypoint='proxy_protocol = ["127.0.0.1/32"]\n')
    try:
        wait_for(lambda: _proxied_get(e, "http/1.1", b"/echo")[0] == 200, 10, "edge behind PROXY")
        yield e
    finally:
        e.stop()


def _proxied_get(edge, alpn: str, path: bytes, header: bytes = PROXY_V1, source: str = "127.0.0.1"):
    """(status, body) of a GET from ``source`` sent after ``header``, then TLS with ``alpn``."""
    import h2.config
    import h2.connection
    import h2.events

    ctx = ssl.create_default_context(cafile=edge.root)
    ctx.set_alpn_protocols([alpn])
    with socket.create_connection(("127.0.0.1", edge.https_port), timeout=10, source_address=(source, 0)) as raw:
        raw.sendall(header)
        with ctx.wrap_socket(raw, server_hostname="web.test") as tls:
            assert tls.selected_alpn_protocol() == alpn
            if alpn == "http/1.1":
                tls.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n")
                answer = b""
                while chunk := tls.recv(65536):
                    answer += chunk
                head, _, body = answer.partition(b"\r\n\r\n")
                return int(head.split(b" ", 2)[1]), body
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
            conn.initiate_connection()
            conn.send_headers(1, [(b":method", b"GET"), (b":path", path), (b":scheme", b"https"),
                                  (b":authority", b"web.test")], end_stream=True)
            tls.sendall(conn.data_to_send())
            status, body = None, b""
            for _ in range(100):  # bounded: a few reads answer one small request
                data = tls.recv(65536)
                if not data:
                    break
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        status = int(dict(event.headers)[b":status"])
                    elif isinstance(event, h2.events.DataReceived):
                        body += event.data
                        conn.acknowledge_received_data(event.flow_controlled_length, 1)
                    elif isinstance(event, h2.events.StreamEnded):
                        return status, body
                tls.sendall(conn.data_to_send())
            raise AssertionError(f"no complete answer: {status} {body!r}")


@pytest.mark.parametrize("alpn", ["h2", "http/1.1"])
def test_behind_the_proxy_protocol_the_named_client_is_the_client(proxied, alpn):
    status, body = _proxied_get(proxied, alpn, b"/echo")
    assert status == 200
    headers = {k.lower(): v for k, v in json.loads(body)["headers"]}
    assert headers["x-forwarded-for"] == "203.0.113.7" and headers["x-real-ip"] == "203.0.113.7"
    assert headers["x-forwarded-proto"] == "https"
    protocol = "HTTP/2.0" if alpn == "h2" else "HTTP/1.1"
    wait_for(lambda: [x for x in _log(proxied) if x["protocol"] == protocol and x["path"] == "/echo"
                      and x["client"] == "203.0.113.7"], 10, "its access log line")


def test_the_proxy_header_is_required_from_a_trusted_source(proxied):
    """A TLS ClientHello where the PROXY header should be: the connection is closed."""
    with pytest.raises((ssl.SSLError, OSError)):
        _proxied_get(proxied, "h2", b"/echo", header=b"")


@pytest.mark.parametrize("alpn", ["h2", "http/1.1"])
def test_an_untrusted_source_is_served_as_itself_and_cannot_send_a_proxy_header(proxied, alpn):
    status, body = _proxied_get(proxied, alpn, b"/echo", header=b"", source="127.0.0.3")
    assert status == 200
    headers = {k.lower(): v for k, v in json.loads(body)["headers"]}
    assert headers["x-forwarded-for"] == "127.0.0.3"
    with pytest.raises((ssl.SSLError, OSError)):  # its PROXY line is no TLS handshake
        _proxied_get(proxied, alpn, b"/echo", source="127.0.0.3")


@pytest.mark.parametrize("framing", FRAMINGS)
def test_basicauth_headerfield_names_the_user_and_drops_the_clients_own(edge, framing):
    seen = _curl(edge, framing, "/who", "-u", "u:pw", "-H", "X-WEBAUTH-USER: admin",
                 "-H", "X_WEBAUTH_USER: admin").json()
    users = [v for k, v in seen["headers"] if k.lower().replace("_", "-") == "x-webauth-user"]
    assert users == ["u"]
    assert _curl(edge, framing, "/who", "-H", "X-WEBAUTH-USER: admin").status == 401


@pytest.mark.parametrize("framing", FRAMINGS)
def test_an_untrusted_clients_forwarded_headers_reach_neither_rules_nor_backend(edge, framing):
    # v1 useXForwardedFor believes only a trusted proxy's X-Forwarded-For: this client is not one.
    assert _curl(edge, framing, "/lan", "-H", "X-Forwarded-For: 10.1.2.3").status == 403
    seen = _curl(edge, framing, "/echo", "-H", "X-Forwarded-Prefix: /evil", "-H", "X-Forwarded-Uri: /evil",
                 "-H", "X_Forwarded_For: 10.6.6.6").json()
    sent = " ".join(f"{k}: {v}" for k, v in seen["headers"])
    assert "evil" not in sent and "10.6.6.6" not in sent
    assert dict((k.lower(), v) for k, v in seen["headers"])["x-forwarded-for"] == "127.0.0.1"
