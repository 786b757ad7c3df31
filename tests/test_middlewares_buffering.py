"""
The buffering middleware (request side) through both client framings in
memory: the body is read whole before any backend is contacted, bounded,
and sent with its Content-Length.
"""

from __future__ import annotations

import pytest

from edge.http import buffering
from edge.http.buffering import Budget, RequestBuffer
from edge.snapshot import Buffering
from tests.test_http_pipeline import H1Client, H2Client
from tests.test_middlewares_retry import OK, RetryWorld

CLIENTS = [H1Client, H2Client]


def start(client, method=b"POST", length=None, headers=()):
    """A request head for r.test whose body follows in parts (:func:`more`)."""
    if isinstance(client, H1Client):
        lines = [b"%s /up HTTP/1.1\r\nHost: r.test\r\n" % method]
        lines += [b"%s: %s\r\n" % h for h in headers]
        lines.append(b"Content-Length: %d\r\n" % length if length is not None else b"Transfer-Encoding: chunked\r\n")
        client.server.dataReceived(b"".join(lines) + b"\r\n")
        return
    sid = client.sid = client.h2.get_next_available_stream_id()
    fields = [(b":method", method), (b":path", b"/up"), (b":scheme", b"https"), (b":authority", b"r.test")]
    fields += [(k.lower(), v) for k, v in headers]
    if length is not None:
        fields.append((b"content-length", b"%d" % length))
    client.h2.send_headers(sid, fields)
    client.server.dataReceived(client.h2.data_to_send())
    client._pump()


def more(client, data: bytes, end=False):
    if isinstance(client, H1Client):
        client.server.dataReceived(data)
        return
    client.h2.send_data(client.sid, data, end_stream=end)
    client.server.dataReceived(client.h2.data_to_send())
    client._pump()


def chunk(client, data: bytes, end=False):
    """A piece of a body without a length (HTTP/1.1: a chunk)."""
    if isinstance(client, H1Client):
        client.server.dataReceived((b"%x\r\n%s\r\n" % (len(data), data) if data else b"")
                                   + (b"0\r\n\r\n" if end else b""))
        return
    more(client, data, end)


@pytest.mark.parametrize("client_cls", CLIENTS, ids=lambda c: c.name)
def test_no_backend_is_contacted_before_the_body_is_complete(client_cls):
    world = RetryWorld([Buffering(max_request_body_bytes=1000)])
    client = client_cls(world)
    start(client, length=10)
    more(client, b"01234")
    assert world.connects == []
    more(client, b"56789", end=True)
    assert len(world.connects) == 1
    sent = world.backends[0][1].value()
    assert sent.startswith(b"POST /up HTTP/1.1\r\n")
    assert b"Content-Length: 10\r\n" in sent and sent.endswith(b"\r\n\r\n0123456789")
    world.answer(OK)
    assert client.answer().status == 200


@pytest.mark.parametrize("client_cls", CLIENTS, ids=lambda c: c.name)
def test_a_body_without_a_length_reaches_the_backend_with_one(client_cls):
    world = RetryWorld([Buffering()])
    client = client_cls(world)
    start(client)
    chunk(client, b"abc")
    chunk(client, b"defg")
    assert world.connects == []
    chunk(client, b"", end=True)
    sent = world.backends[0][1].value()
    assert b"Content-Length: 7\r\n" in sent and b"chunked" not in sent.lower()
    assert sent.endswith(b"\r\n\r\nabcdefg")


@pytest.mark.parametrize("client_cls", CLIENTS, ids=lambda c: c.name)
def test_a_declared_length_over_the_limit_is_a_413_before_any_byte(client_cls):
    world = RetryWorld([Buffering(max_request_body_bytes=4)])
    client = client_cls(world)
    start(client, length=5)
    answer = client.answer()
    assert answer.status == 413
    assert world.connects == []


@pytest.mark.parametrize("client_cls", CLIENTS, ids=lambda c: c.name)
def test_a_body_growing_past_the_limit_is_a_413(client_cls):
    world = RetryWorld([Buffering(max_request_body_bytes=6)])
    client = client_cls(world)
    before = buffering.BUDGET.used
    start(client)
    chunk(client, b"abcd")
    assert buffering.BUDGET.used == before + 4
    chunk(client, b"efgh")
    assert client.answer().status == 413
    assert world.connects == []
    assert buffering.BUDGET.used == before  # what it held is given back


@pytest.mark.parametrize("client_cls", CLIENTS, ids=lambda c: c.name)
def test_the_bodies_held_at_once_share_one_budget(client_cls, monkeypatch):
    world = RetryWorld([Buffering()])
    small = Budget(limit=8)
    original = RequestBuffer.__init__
    monkeypatch.setattr(RequestBuffer, "__init__", lambda self, mw, budget=small: original(self, mw, budget))
    world.service.apply(world.snapshot)  # rebuild the chain with the small budget
    first, second = client_cls(world), client_cls(world)
    start(first)
    chunk(first, b"123456")
    assert small.used == 6
    start(second)
    chunk(second, b"1234")
    assert second.answer().status == 503
    chunk(first, b"", end=True)
    world.answer(OK)
    assert first.answer().status == 200
    assert small.used == 0


@pytest.mark.parametrize("client_cls", CLIENTS, ids=lambda c: c.name)
def test_a_client_that_goes_away_mid_body_frees_what_was_held(client_cls):
    world = RetryWorld([Buffering()])
    client = client_cls(world)
    before = buffering.BUDGET.used
    start(client, length=100)
    more(client, b"x" * 40)
    assert buffering.BUDGET.used == before + 40
    client.server.connectionLost(None)
    assert buffering.BUDGET.used == before
    assert world.connects == []


def test_expect_100_continue_is_answered_so_the_body_comes():
    world = RetryWorld([Buffering()])
    client = H1Client(world)
    start(client, length=3, headers=((b"Expect", b"100-continue"),))
    assert client.transport.value().startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert world.connects == []
    more(client, b"abc")
    sent = world.backends[0][1].value()
    assert b"Expect" not in sent and sent.endswith(b"\r\n\r\nabc")
    world.answer(OK)
    assert client.transport.value().count(b"100 Continue") == 1


@pytest.mark.parametrize("client_cls", CLIENTS, ids=lambda c: c.name)
def test_a_request_without_body_passes_at_once(client_cls):
    world = RetryWorld([Buffering(max_request_body_bytes=1)])
    client = client_cls(world)
    client.send(b"GET", b"/x", b"r.test")
    assert len(world.connects) == 1
    world.answer(OK)
    assert client.answer().status == 200


def test_a_large_http2_body_keeps_the_flow_control_windows_moving():
    # 2 MiB is twice the connection window edge advertises: without edge
    # acknowledging what the buffer took, the client could not send it all.
    world = RetryWorld([Buffering(max_request_body_bytes=4 * 1024 * 1024)])
    client = H2Client(world)
    size = 2 * 1024 * 1024
    start(client, length=size)
    sent = 0
    piece = b"y" * 16384
    for _ in range(1000):  # bounded: 128 pieces are needed
        if sent == size:
            break
        window = min(client.h2.local_flow_control_window(client.sid), client.h2.max_outbound_frame_size)
        assert window > 0, "edge stopped opening the window"
        n = min(window, len(piece), size - sent)
        more(client, piece[:n], end=sent + n == size)
        sent += n
    assert sent == size
    head, _, body = world.backends[0][1].value().partition(b"\r\n\r\n")
    assert b"Content-Length: %d\r\n" % size in head + b"\r\n" and len(body) == size


def test_labels_buffering_v2_and_v1():
    from edge.discovery.labels import read_labels

    config = read_labels("web", {
        "traefik.http.services.s.loadbalancer.server.port": "80",
        "traefik.http.routers.r.rule": "Host(`a.test`)", "traefik.http.routers.r.middlewares": "b",
        "traefik.http.middlewares.b.buffering.maxRequestBodyBytes": "2000000",
        "traefik.http.middlewares.b.buffering.memRequestBodyBytes": "100",
        "traefik.http.middlewares.b.buffering.retryExpression": "IsNetworkError() && Attempts() < 2",
        "traefik.http.middlewares.b.buffering.maxResponseBodyBytes": "10",
        "traefik.http.middlewares.b.buffering.memResponseBodyBytes": "10",
    })
    assert [r.middlewares for r in config.routers] == [
        (Buffering(2000000, 100, "IsNetworkError() && Attempts() < 2", max_response_body_bytes=10),)]
    assert config.problems == ()
    config = read_labels("web", {
        "traefik.frontend.rule": "Host:a.test", "traefik.port": "80",
        "traefik.backend.buffering.maxRequestBodyBytes": "10",
        "traefik.backend.buffering.retryExpression": "IsNetworkError() && Attempts() <= 2",
    })
    assert [r.middlewares for r in config.routers] == [(Buffering(10, retry_expression="IsNetworkError() && Attempts() <= 2"),)]
    config = read_labels("web", {
        "traefik.frontend.rule": "Host:a.test", "traefik.port": "80",
        "traefik.backend.buffering.retryExpression": "Attempts() < 2 &&",
    })
    assert list(config.routers) == [] and any(p.level == "error" for p in config.problems)


RESPONSE_CLIENTS = pytest.mark.parametrize("client_cls", CLIENTS, ids=lambda c: c.name)
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-App: 1\r\n\r\n"


@RESPONSE_CLIENTS
def test_an_answer_is_held_whole_and_sent_with_its_length(client_cls):
    world = RetryWorld([Buffering(max_response_body_bytes=100)])
    client = client_cls(world)
    client.send(b"GET", b"/x", b"r.test")
    world.answer(CHUNKED + b"5\r\nhello\r\n")
    assert client.answer().status is None  # nothing reaches the client while it is held
    world.answer(b"6\r\n world\r\n0\r\n\r\n")
    answer = client.answer()
    assert answer.status == 200 and answer.body == b"hello world"
    assert answer.header(b"content-length") == b"11" and answer.header(b"x-app") == b"1"
    assert answer.header(b"transfer-encoding") is None


@RESPONSE_CLIENTS
def test_an_answer_announcing_too_much_is_a_500(client_cls):
    world = RetryWorld([Buffering(max_response_body_bytes=10)])
    client = client_cls(world)
    client.send(b"GET", b"/x", b"r.test")
    world.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello")
    answer = client.answer()
    assert answer.status == 500 and b"hello" not in answer.body
    assert world.backends[0][1].disconnecting  # that backend connection is not reused


@RESPONSE_CLIENTS
def test_an_answer_growing_past_the_limit_is_a_500(client_cls):
    world = RetryWorld([Buffering(max_response_body_bytes=10)])
    client = client_cls(world)
    before = buffering.BUDGET.used
    client.send(b"GET", b"/x", b"r.test")
    world.answer(CHUNKED + b"8\r\n12345678\r\n")
    assert buffering.BUDGET.used == before + 8
    world.answer(b"8\r\n12345678\r\n")
    answer = client.answer()
    assert answer.status == 500 and b"1234" not in answer.body
    assert buffering.BUDGET.used == before


@RESPONSE_CLIENTS
def test_a_held_answer_that_breaks_off_is_a_502_not_a_cut(client_cls):
    from twisted.internet import error
    from twisted.python import failure

    world = RetryWorld([Buffering(max_response_body_bytes=100)])
    client = client_cls(world)
    client.send(b"GET", b"/x", b"r.test")
    world.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nhalf")
    world.backends[0][0].connectionLost(failure.Failure(error.ConnectionLost("reset")))
    answer = client.answer()
    assert answer.status == 502 and not answer.reset


@RESPONSE_CLIENTS
def test_retry_expression_replays_a_get_on_the_backends_status(client_cls):
    world = RetryWorld([Buffering(retry_expression="ResponseCode() == 503 && Attempts() < 3")])
    client = client_cls(world)
    client.send(b"GET", b"/x", b"r.test")
    for _ in range(2):
        world.answer(b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy")
        world.clock.advance(0)
    assert len(world.backends) == 3
    world.answer(b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy")  # Attempts() is 3 now
    answer = client.answer()
    assert answer.status == 503 and answer.body == b"busy"
    assert len(world.backends) == 3


@RESPONSE_CLIENTS
def test_retry_expression_never_replays_a_post(client_cls):
    world = RetryWorld([Buffering(retry_expression="ResponseCode() == 503")])
    client = client_cls(world)
    client.send(b"POST", b"/x", b"r.test", body=b"abc")
    world.answer(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")
    world.clock.advance(0)
    assert client.answer().status == 503
    assert len(world.backends) == 1


@RESPONSE_CLIENTS
def test_retry_expression_replays_a_held_put_whole(client_cls):
    world = RetryWorld([Buffering(retry_expression="ResponseCode() >= 500 && Attempts() < 2")])
    client = client_cls(world)
    client.send(b"PUT", b"/x", b"r.test", body=b"12345")
    world.answer(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")
    world.clock.advance(0)
    assert len(world.backends) == 2 and world.backends[1][1].value().endswith(b"\r\n\r\n12345")
    world.answer(OK)
    assert client.answer().status == 200
