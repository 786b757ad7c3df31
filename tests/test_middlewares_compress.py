"""
The ``compress`` middleware through both client framings, in memory.

Every row runs through the HTTP/1.1 and the HTTP/2 framing with the real
exchange, routing table, balancer, pool and backend connection
(``tests/test_http_pipeline.World``); bodies are decoded with zlib,
brotli and zstandard, as a client would.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass

import brotli
import pytest
import zstandard

from edge.discovery.labels import read_labels
from edge.http.compress import negotiate
from edge.snapshot import Compress
from tests.test_http_pipeline import H1Client, H2Client, World

FRAMINGS = pytest.mark.parametrize("framing", [H1Client, H2Client], ids=["http1", "h2"])
TEXT = (b"<p>edge compresses this line again and again</p>\n" * 200)  # 10,000 bytes


def _decode(encoding, data: bytes) -> bytes:
    if encoding == b"gzip":
        return zlib.decompress(data, 31)
    if encoding == b"br":
        return brotli.decompress(data)
    if encoding == b"zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    raise AssertionError(encoding)


def _head(status=b"200 OK", headers=(), length=None) -> bytes:
    lines = [b"HTTP/1.1 " + status]
    lines += [b"%s: %s" % h for h in headers]
    if length is not None:
        lines.append(b"Content-Length: %d" % length)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _ask(framing, mw, headers=(), response=None, method=b"GET"):
    world = World(middlewares=(mw,))
    client = framing(world)
    client.send(method, b"/page", b"mw.test", headers)
    world.answer(response if response is not None else
                 _head(headers=((b"Content-Type", b"text/html; charset=utf-8"),), length=len(TEXT)) + TEXT)
    return world, client, client.answer()


@dataclass
class Row:
    name: str
    accept: bytes | None
    encoding: bytes | None  # expected Content-Encoding (None: the body arrives as it was)
    mw: Compress = Compress()
    response: bytes | None = None
    method: bytes = b"GET"
    more: tuple = ()  # other request headers
    vary: bool = True
    status: int = 200
    body: bytes = TEXT
    coded: bool | None = None  # whether edge encoded it (default: when an encoding is expected)


ROWS = [
    Row("gzip", b"gzip", b"gzip"),
    Row("br", b"br", b"br"),
    Row("zstd", b"zstd", b"zstd"),
    Row("the order of encodings decides between equals", b"gzip, br, zstd", b"zstd"),
    Row("a configured order", b"gzip, br, zstd", b"gzip", Compress(encodings=("gzip", "br"))),
    Row("q-values", b"gzip;q=0.5, br;q=0.9, zstd;q=0.1", b"br"),
    Row("q=0 refuses an encoding", b"zstd;q=0, br;q=0, gzip", b"gzip"),
    Row("q=0 on everything: none", b"gzip;q=0, *;q=0", None, vary=False),
    Row("* stands for the rest", b"*", b"zstd"),
    Row("* with defaultEncoding", b"*", b"gzip", Compress(default_encoding="gzip")),
    Row("a named one beats *", b"br;q=1, *;q=1", b"br"),
    Row("no Accept-Encoding: none", None, None, vary=False),
    Row("no Accept-Encoding and a defaultEncoding", None, b"br", Compress(default_encoding="br")),
    Row("an empty Accept-Encoding: none", b"", None, vary=False),
    Row("only unknown codings: none", b"deflate, compress", None, vary=False),
    Row("below minResponseBodyBytes", b"gzip", None,
        response=_head(headers=((b"Content-Type", b"text/plain"),), length=1023) + TEXT[:1023], body=TEXT[:1023]),
    Row("at minResponseBodyBytes", b"gzip", b"gzip",
        response=_head(headers=((b"Content-Type", b"text/plain"),), length=1024) + TEXT[:1024], body=TEXT[:1024]),
    Row("a lower minResponseBodyBytes", b"gzip", b"gzip", Compress(min_response_body_bytes=10),
        response=_head(length=20) + TEXT[:20], body=TEXT[:20]),
    Row("already encoded", b"gzip", b"br", coded=False,
        response=_head(headers=((b"Content-Encoding", b"br"),), length=len(TEXT)) + TEXT),
    Row("a Range request", b"gzip", None, more=((b"Range", b"bytes=0-"),), vary=False),
    Row("a 206", b"gzip", None, status=206,
        response=_head(b"206 Partial Content", ((b"Content-Range", b"bytes 0-9999/20000"),), len(TEXT)) + TEXT),
    Row("a 204", b"gzip", None, status=204, response=_head(b"204 No Content"), body=b""),
    Row("a 304", b"gzip", None, status=304, response=_head(b"304 Not Modified"), body=b""),
    Row("HEAD", b"gzip", None, method=b"HEAD", vary=False, body=b""),
    Row("an excluded type", b"gzip", None, Compress(excluded_content_types=("text/html",))),
    Row("an excluded type with parameters that differ", b"gzip", b"gzip",
        Compress(excluded_content_types=("text/html; charset=latin-1",))),
    Row("an included type", b"gzip", b"gzip", Compress(included_content_types=("text/html",))),
    Row("not an included type", b"gzip", None, Compress(included_content_types=("application/json",))),
    Row("grpc is never compressed", b"gzip", None,
        response=_head(headers=((b"Content-Type", b"application/grpc"),), length=len(TEXT)) + TEXT),
    Row("a request of an excluded type (Traefik looks at the request too)", b"gzip", None,
        Compress(excluded_content_types=("text/event-stream",)),
        more=((b"Content-Type", b"text/event-stream"),), vary=False),
    Row("a small chunked answer is compressed (minResponseBodyBytes is for known lengths)", b"gzip", b"gzip",
        response=_head(headers=((b"Transfer-Encoding", b"chunked"),)) + b"5\r\nhello\r\n0\r\n\r\n", body=b"hello"),
    Row("an empty chunked answer is sent as it is", b"gzip", None,
        response=_head(headers=((b"Transfer-Encoding", b"chunked"),)) + b"0\r\n\r\n", body=b""),
    Row("an error status is compressed too", b"gzip", b"gzip", status=500,
        response=_head(b"500 Internal Server Error", length=len(TEXT)) + TEXT),
]


@FRAMINGS
@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_compress(row: Row, framing):
    headers = ((b"Accept-Encoding", row.accept),) if row.accept is not None else ()
    world, client, answer = _ask(framing, row.mw, headers + row.more, row.response, row.method)
    assert answer.status == row.status, answer
    assert answer.header(b"content-encoding") == row.encoding
    vary = answer.header(b"vary")
    assert (vary == b"Accept-Encoding") if row.vary else vary is None, answer.headers
    if not (row.coded if row.coded is not None else row.encoding is not None):
        assert answer.body == row.body
    else:
        assert answer.header(b"content-length") is None
        assert _decode(row.encoding, answer.body) == row.body
        assert len(answer.body) < len(row.body) or len(row.body) < 100
        if framing is H1Client:
            assert answer.header(b"transfer-encoding") == b"chunked"
    # The backend connection went back to the pool: the exchange completed normally.
    assert world.service.pool.idle_count() == 1


@FRAMINGS
def test_compressed_answers_drop_accept_ranges_and_weaken_a_strong_etag(framing):
    response = _head(headers=((b"Accept-Ranges", b"bytes"), (b"ETag", b'"v1"'), (b"Vary", b"Cookie")),
                     length=len(TEXT)) + TEXT
    _, _, answer = _ask(framing, Compress(), ((b"Accept-Encoding", b"gzip"),), response)
    assert answer.header(b"content-encoding") == b"gzip"
    assert answer.header(b"accept-ranges") is None
    assert answer.header(b"etag") == b'W/"v1"'
    assert answer.header(b"vary") == b"Cookie, Accept-Encoding"


@FRAMINGS
def test_each_backend_read_is_flushed_to_the_client_at_once(framing):
    """Streaming: what one read brought decodes on the client before the answer ends."""
    world = World(middlewares=(Compress(),))
    client = framing(world)
    client.send(b"GET", b"/events", b"mw.test", ((b"Accept-Encoding", b"gzip"),))
    world.answer(_head(headers=((b"Content-Type", b"text/plain"), (b"Transfer-Encoding", b"chunked")))
                 + b"6\r\nfirst\n\r\n")
    decoder = zlib.decompressobj(31)
    first = client.answer().body
    assert decoder.decompress(first) == b"first\n"
    world.answer(b"7\r\nsecond\n\r\n")
    both = client.answer().body
    assert decoder.decompress(both[len(first):]) == b"second\n"
    world.answer(b"0\r\n\r\n")
    assert zlib.decompress(client.answer().body, 31) == b"first\nsecond\n"


def test_a_slow_http1_client_still_pauses_the_backend():
    world = World(middlewares=(Compress(),))
    client = H1Client(world)
    client.send(b"GET", b"/big", b"mw.test", ((b"Accept-Encoding", b"gzip"),))
    backend, backend_side = world.backends[-1]
    noise = os.urandom(65536)  # incompressible: as much goes out as comes in
    backend.dataReceived(_head(length=10 * len(noise)))
    backend.dataReceived(noise)
    assert len(client.answer().body) > 0
    client.transport.producer.pauseProducing()  # the client's socket buffer is full
    assert backend_side.producerState == "paused"
    client.transport.producer.resumeProducing()
    assert backend_side.producerState == "producing"


def test_a_shut_h2_window_pauses_the_backend_until_it_opens():
    world = World(middlewares=(Compress(),))
    client = H2Client(world)
    client.send(b"GET", b"/big", b"mw.test", ((b"Accept-Encoding", b"gzip"),))
    backend, backend_side = world.backends[-1]
    noise = os.urandom(200000)  # more than the client's 65,535-byte window, even compressed
    backend.dataReceived(_head(length=4 * len(noise)))
    backend.dataReceived(noise)
    client.answer()
    assert backend_side.producerState == "paused"
    got = client.answer().body
    # The client reads: it opens the window, edge sends more and reads the backend again.
    client.h2.acknowledge_received_data(len(got), client.sid)
    client.h2.increment_flow_control_window(1 << 20)
    client.h2.increment_flow_control_window(1 << 20, stream_id=client.sid)
    client.server.dataReceived(client.h2.data_to_send())
    client.answer()
    assert backend_side.producerState == "producing"
    assert len(client.answer().body) > len(got)


NEGOTIATION = [
    (None, "", None),
    (None, "gzip", "gzip"),
    ([b""], "gzip", None),
    ([b"gzip"], "", "gzip"),
    ([b"GZIP"], "", "gzip"),
    ([b"gzip, br"], "", "br"),
    ([b"gzip", b"br;q=0.2"], "", "gzip"),
    ([b"br;q=0.0"], "", None),
    ([b"br;q=abc, gzip;q=0.1"], "", "gzip"),
    ([b"*;q=0.5, gzip;q=0.6"], "", "gzip"),
    ([b"*;q=0.5, zstd;q=0"], "", "br"),
    ([b"*"], "gzip", "gzip"),
    ([b"identity"], "", None),
    ([b"br; q=1.5"], "", None),
]


@pytest.mark.parametrize("values,default,expected", NEGOTIATION, ids=[repr(n[:2]) for n in NEGOTIATION])
def test_negotiation(values, default, expected):
    assert negotiate(values, ("zstd", "br", "gzip"), default) == expected


def _labels(extra):
    return read_labels("web", {"traefik.http.routers.r.rule": "Host(`a.test`)",
                               "traefik.http.routers.r.middlewares": "c",
                               "traefik.http.services.s.loadbalancer.server.port": "80", **extra})


def test_labels_compress():
    config = _labels({
        "traefik.http.middlewares.c.compress": "true",
        "traefik.http.middlewares.c.compress.excludedcontenttypes": "text/event-stream, image/png",
        "traefik.http.middlewares.c.compress.minResponseBodyBytes": "200",
        "traefik.http.middlewares.c.compress.encodings": "br, gzip",
        "traefik.http.middlewares.c.compress.defaultEncoding": "gzip",
    })
    assert config.problems == ()
    assert config.routers[0].middlewares == (Compress(
        excluded_content_types=("text/event-stream", "image/png"), min_response_body_bytes=200,
        encodings=("br", "gzip"), default_encoding="gzip"),)
    assert _labels({"traefik.http.middlewares.c.compress": "true"}).routers[0].middlewares == (Compress(),)


@pytest.mark.parametrize("extra,why", [
    ({"traefik.http.middlewares.c.compress.excludedcontenttypes": "text/html",
      "traefik.http.middlewares.c.compress.includedcontenttypes": "text/css"}, "both"),
    ({"traefik.http.middlewares.c.compress.encodings": "gzip, deflate"}, "zstd, br, gzip"),
    ({"traefik.http.middlewares.c.compress.encodings": "gzip",
      "traefik.http.middlewares.c.compress.defaultencoding": "br"}, "not one of its encodings"),
    ({"traefik.http.middlewares.c.compress.excludedcontenttypes": "text"}, "not a media type"),
])
def test_labels_compress_refused(extra, why):
    """A compress Traefik refuses is left out (it protects nothing), with an error saying why."""
    config = _labels({"traefik.http.middlewares.c.compress": "true", **extra})
    assert config.routers and config.routers[0].middlewares == ()
    assert any(why in p.message for p in config.problems), config.problems


def test_compress_and_errors_are_no_longer_warned_about():
    config = _labels({"traefik.http.middlewares.c.compress": "true"})
    assert not any("not supported" in p.message for p in config.problems)
