"""
Bounded fuzzing of the HTTP/1.1 request head through a real edge process.

Hypothesis builds request heads from the pieces framing attacks are made of
(methods, targets with escapes and dot-segments, framing and hop-by-hop
fields with odd spellings, CR/LF/NUL in odd places, chunked or sized bodies
carrying a whole request) and then flips and inserts bytes.  Whatever comes
out, on a fresh connection:

- every byte edge sends a backend is strictly framed (``strict_requests``),
  one request per backend connection (the backend closes after each answer,
  so a second one would be bytes edge framed as part of the first);
- no request path with a dot-segment reaches a backend;
- what the client gets parses as HTTP responses;
- edge still serves a plain request afterwards.

Examples are derandomized (the same ones each run) and bounded in number;
each waits at most ``_WAIT`` seconds for an answer, never asserted on time.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.recording_backend import RecordingBackend, strict_requests
from tests.test_hostile_http import SMUGGLED, _closing, _escapes, exchange, one_route, running, served

_WAIT = 0.5


@pytest.fixture(scope="module")
def fuzz_rig(tmp_path_factory):
    backend = RecordingBackend("fuzz", _closing)
    routes = one_route(backend, 'strip_prefixes = ["/api"]\n')
    with running(tmp_path_factory.mktemp("hostile-fuzz"), routes, [backend]) as edge:
        yield edge, backend


def _often(common: list, rare: list):
    """Mostly valid pieces, sometimes hostile ones, so both edge's refusals and its forwarding get exercised."""
    copies = -(-9 * len(rare) // len(common))  # about one draw in ten is a rare piece
    return st.sampled_from(common * copies + rare)


methods = _often([b"GET", b"POST", b"PUT", b"HEAD", b"OPTIONS", b"DELETE", b"PATCH"],
                 [b"CONNECT", b"get", b"G ET", b"PRI", b"TRACE", b"FOO"])
segments = _often([b"api", b"a", b"b.c", b"x%20y", b"", b"admin", b"a?b=1", b"%41", b"..", b".", b"%2e%2e", b"%2E."],
                  [b"%2f", b"%00", b"%", b"%zz", b";", b"#f", b"\\"])
targets = st.one_of(
    *[st.lists(segments, max_size=5).map(lambda parts: b"/" + b"/".join(parts))] * 4,
    st.sampled_from([b"*", b"http://f.test/x", b"HTTP://f.test/", b"f.test:80", b"//x", b""]),
)
versions = _often([b"HTTP/1.1", b"HTTP/1.0"], [b"HTTP/1.2", b"HTTP/2.0", b"HTTP/1.1 ", b"http/1.1", b""])
names = _often([b"Content-Length", b"Transfer-Encoding", b"Connection", b"Upgrade", b"Expect", b"X-A",
                b"Trailer", b"TE", b"X-Forwarded-For", b"Content_Length", b"content-length", b"Host"],
               [b"Transfer-Encoding ", b" Transfer-Encoding", b"", b"X A", b"X\x00"])
values = st.one_of(
    *[_often([b"f.test", b"0", b"5", b"42", b"chunked", b"Chunked", b"identity", b"upgrade", b"close",
            b"keep-alive", b"websocket", b"h2c", b"100-continue", b"", b"Upgrade, close", b"1.2.3.4"],
           [b"-1", b"5, 5", b"5,6", b"chunked, identity", b"gzip, chunked", b"18446744073709551616", b"\x00",
            b"a\rb", b" chunked"])] * 8,
    st.binary(max_size=12),
)
separators = _often([b"\r\n"], [b"\n", b"\r", b"\r\n "])
bodies = st.sampled_from([b"", b"hello", b"0\r\n\r\n" + SMUGGLED, b"5\r\nhello\r\n0\r\n\r\n",
                          b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED), SMUGGLED])


@st.composite
def requests(draw):
    line = draw(methods) + b" " + draw(targets) + b" " + draw(versions)
    fields = [(b"Host", b"f.test")] + draw(st.lists(st.tuples(names, values), max_size=3))
    if draw(st.booleans()):
        fields = draw(st.permutations(fields))
    head = line + b"\r\n" + b"".join(k + b": " + v + draw(separators) for k, v in fields)
    data = bytearray(head + draw(separators) + draw(bodies))
    # Byte-level damage, in some examples: flips and insertions at arbitrary places.
    if draw(st.integers(0, 5)) == 0:
        for position, byte in draw(st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)),
                                            min_size=1, max_size=3)):
            i = position % len(data)
            if draw(st.booleans()):
                data[i] = byte
            else:
                data.insert(i, byte)
    return bytes(data)


@settings(max_examples=400, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=requests())
def test_fuzz_request_heads_never_desync_edge_or_its_backend(fuzz_rig, data):
    edge, backend = fuzz_rig
    first = len(backend.snapshot())
    responses, _ = exchange(edge.port, data, expect=1, timeout=_WAIT)  # parses, or raises on garbage
    for r in responses:
        assert 100 <= r.status <= 599
    backend.settle()
    forwarded = 0
    for conn in backend.snapshot()[first:]:
        raw = bytes(conn.received)
        if raw.startswith(b"GET /still-alive "):
            continue
        forwarded += bool(raw)
        # The client may still owe a body edge is waiting for: a partial last request is fine.
        seen = strict_requests(raw, partial_tail=True)
        # edge sends one request at a time and this backend closes after each
        # answer: a second request on one connection is bytes edge framed as
        # one thing and the backend read as two.
        assert len(seen) <= 1, raw
        for request in seen:
            assert not _escapes(request.target), raw
    event(f"forwarded: {bool(forwarded)}; answered: {responses[0].status if responses else None}")
    assert served(edge.port, "f.test")
