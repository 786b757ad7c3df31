"""
Regression tests for dot-segments and percent-encoding in paths (the second
hole of the hostile-input issue, and the percent-decoding point of the
Traefik-semantics issue).

``/api/../admin``, ``/api/%2e%2e/admin`` and ``/%61dmin`` matched the wrong
router (or none of the protected ones) and reached backends un-normalised.
Checked as pure functions, in memory, and end to end with curl
``--path-as-is`` through a real edge process.
"""

from __future__ import annotations

import subprocess

import pytest

from edge.http.target import BadTarget, decode_path, normalize_path, split_target
from edge.rules import Host, PathPrefix, And
from edge.snapshot import BasicAuth, IPAllowList, StripPrefix
from tests.test_http_protocol import pooled_backend, setup
from tests.test_http_proxy import edge_factory, snapshot, web  # noqa: F401 (fixture)
from tests.test_security_smuggling import _hashed, recording  # noqa: F401 (fixture)

# -- 2. paths, pure --------------------------------------------------------------


@pytest.mark.parametrize(
    "path, normalised",
    [
        (b"/api/../admin", b"/admin"),
        (b"/api/%2e%2e/admin", b"/admin"),
        (b"/api/%2E%2E/admin", b"/admin"),
        (b"/api/.%2e/admin", b"/admin"),
        (b"/public/../private", b"/private"),
        (b"/%61dmin", b"/admin"),
        (b"/a/./b/", b"/a/b/"),
        (b"//admin", b"/admin"),
        (b"/a//b", b"/a/b"),
        (b"/../../etc/passwd", b"/etc/passwd"),
        (b"/a/b/..", b"/a/"),
        (b"/a%20b", b"/a%20b"),
        (b"/a%c3%a9", b"/a%C3%A9"),
        (b"/plain/path", b"/plain/path"),
    ],
)
def test_paths_are_normalised_as_traefik_v3_does(path, normalised):
    assert normalize_path(path) == normalised


@pytest.mark.parametrize(
    "path",
    [b"/public/..%2fprivate", b"/a%2Fb", b"/a%5cb", b"/a%00", b"/a%3bb", b"/a%25", b"/a%3F", b"/a%23",
     b"/a%", b"/a%4", b"/a%g1"],
)
def test_ambiguous_or_malformed_escapes_are_refused(path):
    with pytest.raises(BadTarget):
        normalize_path(path)


def test_an_allowed_escape_stays_encoded_and_is_not_a_separator():
    assert normalize_path(b"/a%2fb/../c", frozenset({0x2F})) == b"/c"
    assert normalize_path(b"/a%2fb", frozenset({0x2F})) == b"/a%2Fb"
    assert decode_path(b"/a%2Fb") == "/a/b"


@pytest.mark.parametrize(
    "target, authority, normalised",
    [
        (b"http://h/x?y=1", b"h", b"/x?y=1"),
        (b"HTTP://h/x", b"h", b"/x"),
        (b"http://h?x=1", b"h", b"/?x=1"),
        (b"http://h", b"h", b"/"),
        (b"/a/../b?q=/../", None, b"/b?q=/../"),
    ],
)
def test_request_targets(target, authority, normalised):
    assert split_target(b"GET", target) == (authority, normalised)


@pytest.mark.parametrize("target", [b"http://@/", b"http://user@h/", b"http:///x", b"ftp://h/", b"x", b"*"])
def test_bad_request_targets(target):
    with pytest.raises(BadTarget):
        split_target(b"GET", target)


def test_asterisk_form_is_for_options():
    assert split_target(b"OPTIONS", b"*") == (None, b"*")


@pytest.mark.parametrize("target", [
    b"/caf\xc3\xa9", b"/a\x80", b"/x?q=\xff", b"/a b", b"/a\tb", b"/a\x00b", b"/a\x1bb", b"/a\x7fb",
    b"/a\rb", b"/a\nb", b"http://h/\xc3\xa9", b"http://h\x01/x",
])
def test_bytes_no_request_target_may_hold_are_refused(target):
    """RFC 3986 §2 / RFC 9112 §3.2: a 400, not a path forwarded as the backend may read it."""
    with pytest.raises(BadTarget, match="outside printable ASCII"):
        split_target(b"GET", target)


@pytest.mark.parametrize("target", [b'/a"b<c>', b"/a{b}|c^d`e", b"/a\\b", b"/a[b]", b"/x?q={|}"])
def test_printable_characters_outside_rfc_3986_pass_unchanged(target):
    """Browsers send some raw (WHATWG's path set leaves | ^ [ ] alone); nghttp2 and Go accept them."""
    assert split_target(b"GET", target) == (None, target)


def test_http2_targets_are_origin_form_or_asterisk():
    """RFC 9113 §8.3.1: ``:path`` carries no scheme or authority (``:authority`` is the host)."""
    assert split_target(b"GET", b"/x?y", absolute_form=False) == (None, b"/x?y")
    assert split_target(b"OPTIONS", b"*", absolute_form=False) == (None, b"*")
    for target in (b"http://other.test/x", b"https://h", b"x"):
        with pytest.raises(BadTarget):
            split_target(b"GET", target, absolute_form=False)


# -- 2. paths, in memory ---------------------------------------------------------


def test_the_backend_receives_the_normalised_path():
    _, service, server, client = setup()
    _, backend_side = pooled_backend(service)
    server.dataReceived(b"GET /x/%2e%2e/y/./%7Ez?a=/../b HTTP/1.1\r\nHost: web.test\r\n\r\n")
    assert backend_side.value().startswith(b"GET /y/~z?a=/../b HTTP/1.1\r\n")


def test_an_encoded_slash_is_a_400():
    _, service, server, client = setup()
    _, backend_side = pooled_backend(service)
    server.dataReceived(b"GET /public/..%2fprivate HTTP/1.1\r\nHost: web.test\r\n\r\n")
    assert client.value().startswith(b"HTTP/1.1 400 ")
    assert backend_side.value() == b""


# -- end to end ------------------------------------------------------------------


def _curl(port: int, path: str) -> int:
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--path-as-is", "--max-time", "10",
         "-H", "Host: web.test", f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, timeout=20,
    )
    return int(out.stdout)


def test_dot_segments_and_escapes_cannot_pass_path_rules_end_to_end(recording, edge_factory):
    def on(prefix, name, middlewares, priority):
        return web([recording.target()], name=name,
                   rule=And((Host(("web.test",)), PathPrefix((prefix,)))),
                   rule_text=f"Host(`web.test`) && PathPrefix(`{prefix}`)", priority=priority,
                   middlewares=middlewares)

    e = edge_factory(snapshot(
        on("/api", "api", [StripPrefix(("/api",))], 10),
        on("/admin", "admin", [BasicAuth((f"alice:{_hashed('s3cret')}",))], 10),
        on("/private", "private", [IPAllowList(("10.99.0.0/16",))], 10),
        on("/public", "public", [], 10),
    ))
    expected = {
        "/api/../admin": 401,
        "/api/%2e%2e/admin": 401,
        "/api/%2E%2E/admin": 401,
        "/%61dmin": 401,
        "/%61dmin/x": 401,
        "//admin": 401,
        "/public/../private": 403,
        "/public/./../private": 403,
        "/public/..%2fprivate": 400,
        "/public/..%2Fprivate": 400,
        "/public/..%5cprivate": 400,
        "/api/x": 200,
        "/public/x": 200,
    }
    got = {path: _curl(e.port, path) for path in expected}
    assert got == expected
    seen = [line for _, line in recording.requests]
    assert seen == ["GET /x", "GET /public/x"]


# -- the ACME HTTP-01 hook sits before routing, on the normalised path -------------


def test_acme_challenges_are_answered_before_routing_on_plain_http():
    from edge.http.middlewares import Reply

    _, service, server, client = setup()
    _, backend_side = pooled_backend(service)
    asked = []

    class Challenges:
        def respond(self, host, target):
            asked.append((host, target))
            return Reply(200, b"OK", [(b"Content-Type", b"text/plain")], b"token.key")

    server.factory.challenges = Challenges()
    server.dataReceived(b"GET /x/../.well-known/acme-challenge/token HTTP/1.1\r\nHost: web.test\r\n\r\n")
    assert asked == [(b"web.test", b"/.well-known/acme-challenge/token")]
    assert client.value().endswith(b"\r\n\r\ntoken.key")
    assert backend_side.value() == b""
