"""
``compress`` and ``errors`` end to end: a real edge process over TLS (ALPN
h2 and http/1.1, tests/test_http_harness.py), raw origins behind it, and
curl as the client over HTTP/1.1 and HTTP/2; bodies are decoded here with
zlib, brotli and zstandard.  Everything on 127.0.0.1.  ``/opts/...`` is a
second router with the options set (encodings, minResponseBodyBytes,
excludedContentTypes, statusRewrites).
"""

from __future__ import annotations

import json
import subprocess
import zlib

import brotli
import pytest
import zstandard

from edge.rules import And, Host, PathPrefix
from edge.snapshot import BackendService, Compress, Errors, Router, Snapshot, StripPrefix
from tests.swarmkit import wait_for
from tests.test_http_h2_e2e import tls_edge
from tests.test_http_proxy import Origin

VERSIONS = pytest.mark.parametrize("version", ["--http1.1", "--http2"])


@pytest.fixture(scope="module")
def origins():
    made = Origin("app"), Origin("pages")
    yield made
    for o in made:
        o.stop()


@pytest.fixture(scope="module")
def edge(origins, tmp_path_factory):
    app, pages = origins
    e = tls_edge(tmp_path_factory.mktemp("mw-e2e"), [app.target()])
    middlewares = (Compress(), Errors(status=((500, 599),), service="pages", query="/echo?s={status}&u={url}"))
    # /opts/...: the options, on a second router (the prefix is stripped before the origin).
    options = (StripPrefix(("/opts",)),
               Compress(excluded_content_types=("application/json",), min_response_body_bytes=100,
                        encodings=("br", "gzip")),
               Errors(status=((400, 499),), service="pages", query="/echo?s={status}&o={originalStatus}",
                      status_rewrites=((418, 418, 404),)))
    e.publish(Snapshot.build(
        routers=[Router("web", Host(("web.test",)), "Host(`web.test`)", "web", middlewares=middlewares),
                 Router("opts", And((Host(("web.test",)), PathPrefix(("/opts",)))),
                        "Host(`web.test`) && PathPrefix(`/opts`)", "web", middlewares=options)],
        services=[BackendService("web", (app.target(),)), BackendService("pages", (pages.target(),))],
    ))
    # The harness reads the new snapshot within a poll or two: wait until it routes with the middlewares.
    wait_for(lambda: b'"origin": "pages"' in _curl(e, "--http1.1", "/opts/status/418")[2], 20,
             "the snapshot with middlewares")
    yield e
    e.stop()


def _curl(edge, version, path, *args):
    done = subprocess.run(
        ["curl", "-sS", version, "--max-time", "20", "--cacert", edge.root, "-D", "-", "-o", "-",
         "--resolve", f"web.test:{edge.https_port}:127.0.0.1", *args, f"https://web.test:{edge.https_port}{path}"],
        capture_output=True, timeout=30,
    )
    assert done.returncode == 0, done.stderr
    head, _, body = done.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/2 " if version == "--http2" else "HTTP/1.1 "), lines[0]
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


@VERSIONS
@pytest.mark.parametrize("encoding,decode", [
    ("gzip", lambda b: zlib.decompress(b, 31)),
    ("br", brotli.decompress),
    ("zstd", lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b)),
])
def test_a_big_answer_is_compressed_in_the_encoding_asked_for(edge, version, encoding, decode):
    status, headers, body = _curl(edge, version, "/big/300000", "-H", f"Accept-Encoding: {encoding}")
    assert status == 200
    assert headers["content-encoding"] == encoding
    assert headers["vary"] == "Accept-Encoding"
    assert "content-length" not in headers
    assert len(body) < 10000  # 300,000 identical bytes
    assert decode(body) == b"b" * 300000


@VERSIONS
def test_curl_compressed_gets_zstd_first_and_decodes_it(edge, version):
    status, headers, body = _curl(edge, version, "/big/300000", "--compressed")
    assert status == 200 and headers["content-encoding"] == "zstd"  # the default preference
    assert body == b"b" * 300000  # curl decoded it


@VERSIONS
def test_without_accept_encoding_nothing_changes(edge, version):
    status, headers, body = _curl(edge, version, "/big/5000")
    assert status == 200 and "content-encoding" not in headers and headers["content-length"] == "5000"
    assert body == b"b" * 5000


@VERSIONS
def test_a_chunked_answer_is_compressed_and_complete(edge, version):
    status, headers, body = _curl(edge, version, "/chunked/50000", "-H", "Accept-Encoding: gzip")
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert zlib.decompress(body, 31) == b"c" * 50000


@VERSIONS
def test_a_500_gets_the_page_of_the_pages_service_with_status_500(edge, version):
    status, headers, body = _curl(edge, version, "/status/500?x=1", "-H", "X-Who: curl")
    assert status == 500
    page = json.loads(body)
    assert page["origin"] == "pages"
    assert page["method"] == "GET"
    assert page["url"] == "/echo?s=500&u=%2Fstatus%2F500%3Fx%3D1"
    sent = {k.lower(): v for k, v in page["headers"]}
    assert sent["x-who"] == "curl"  # the client's headers go with the page request (Traefik copies them)


@VERSIONS
def test_a_404_is_not_in_range_and_passes(edge, version):
    status, _, body = _curl(edge, version, "/status/404")
    assert (status, body) == (404, b"status body")


@VERSIONS
@pytest.mark.parametrize("path,accept,encoding", [
    ("/opts/big/500", "zstd, br, gzip", "br"),  # encodings=br,gzip: zstd is not offered
    ("/opts/big/500", "gzip", "gzip"),
    ("/opts/big/99", "gzip", None),  # below minResponseBodyBytes=100
    ("/opts/big/100", "gzip", "gzip"),
    ("/opts/echo", "gzip", None),  # application/json is excluded
])
def test_compress_options(edge, version, path, accept, encoding):
    status, headers, body = _curl(edge, version, path, "-H", f"Accept-Encoding: {accept}")
    assert status == 200
    assert headers.get("content-encoding") == encoding
    if encoding == "br":
        body = brotli.decompress(body)
    elif encoding == "gzip":
        body = zlib.decompress(body, 31)
    if path.startswith("/opts/big/"):
        assert body == b"b" * int(path.rsplit("/", 1)[1])


@VERSIONS
def test_status_rewrites_and_original_status(edge, version):
    status, _, body = _curl(edge, version, "/opts/status/418")
    assert status == 404
    assert json.loads(body)["url"] == "/echo?s=404&o=418"
