"""
The retry middleware: pure back-off on a Clock, then through both client
framings in memory (tests/test_http_pipeline.py's World and clients).
"""

from __future__ import annotations

import math

import pytest
from twisted.internet import defer, error
from twisted.python import failure

from edge.http.retry import RetryPolicy
from edge.rules import Host
from edge.snapshot import BackendService, Buffering, Retry, Router, Snapshot, Target
from tests.test_http_pipeline import H1Client, H2Client, World

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
A = ("http", "10.9.9.9", 80)
B = ("http", "10.9.9.7", 80)


def test_backoff_grows_by_traefiks_multiplier():
    # 2 ** (1 / (attempts - 1)): the series reaches twice the first wait after attempts - 1 steps.
    policy = RetryPolicy(Retry(attempts=4, initial_interval=0.1), reactor=None)
    waits = [policy.delay(n) for n in (2, 3, 4)]
    assert waits == [pytest.approx(0.1), pytest.approx(0.1 * 2 ** (1 / 3)), pytest.approx(0.1 * 2 ** (2 / 3))]
    assert RetryPolicy(Retry(attempts=4), reactor=None).delay(3) == 0.0


def test_attempts_are_bounded():
    assert RetryPolicy(Retry(attempts=1000), reactor=None).attempts == 10


class RetryWorld(World):
    """World with router ``r.test`` -> service of ``targets`` and ``middlewares``; connects scripted."""

    def __init__(self, middlewares, targets=(A,)):
        super().__init__()
        self.script: list = []  # per connect: "refuse" or "ok"
        self.connects: list = []
        snapshot = Snapshot.build(
            routers=[Router("r", Host(("r.test",)), "Host(`r.test`)", "s", middlewares=tuple(middlewares))],
            services=[BackendService("s", tuple(Target(f"t{i}", k[1], 80) for i, k in enumerate(targets)))],
        )
        self.snapshot = snapshot
        self.service.apply(snapshot)
        self.service.pool.connect = self._scripted

    def _scripted(self, key):
        self.connects.append((key, self.clock.seconds()))
        what = self.script.pop(0) if self.script else "ok"
        if what == "refuse":
            return defer.fail(error.ConnectionRefusedError("refused"))
        return defer.succeed(self._backend(key))

    def reset_last(self):
        """The last backend connection is reset before it answers."""
        backend, transport = self.backends[-1]
        backend.connectionLost(failure.Failure(error.ConnectionLost("reset by peer")))


CLIENTS = [H1Client, H2Client]


@pytest.mark.parametrize("client_cls", CLIENTS, ids=lambda c: c.name)
def test_refused_connects_are_retried_after_the_backoff(client_cls):
    world = RetryWorld([Retry(attempts=3, initial_interval=0.1)])
    world.script = ["refuse", "refuse", "ok"]
    client = client_cls(world)
    client.send(b"GET", b"/x", b"r.test")
    assert len(world.connects) == 1
    assert client.answer().status is None  # waiting for the back-off, not answered
    world.clock.advance(0.099)
    assert len(world.connects) == 1
    world.clock.advance(0.001)
    assert len(world.connects) == 2
    world.clock.advance(0.1 * math.sqrt(2))
    assert len(world.connects) == 3
    world.answer(OK)
    answer = client.answer()
    assert answer.status == 200 and answer.body == b"hello"


@pytest.mark.parametrize("client_cls", CLIENTS, ids=lambda c: c.name)
def test_attempts_run_out_with_a_502(client_cls):
    world = RetryWorld([Retry(attempts=2)])
    world.script = ["refuse", "refuse", "refuse"]
    client = client_cls(world)
    client.send(b"GET", b"/x", b"r.test")
    world.clock.advance(0)
    assert client.answer().status == 502
    assert len(world.connects) == 2


@pytest.mark.parametrize("client_cls", CLIENTS, ids=lambda c: c.name)
def test_an_attempt_tries_every_target_first(client_cls):
    # Two targets, both refusing: the exchange's own failover is one attempt.
    world = RetryWorld([Retry(attempts=2)], targets=(A, B))
    world.script = ["refuse", "refuse", "refuse", "ok"]
    client = client_cls(world)
    client.send(b"GET", b"/x", b"r.test")
    world.clock.advance(0)
    assert [k for k, _ in world.connects[:2]] in ([A, B], [B, A])
    assert len(world.connects) == 4
    world.answer(OK)
    assert client.answer().status == 200


@pytest.mark.parametrize("client_cls", CLIENTS, ids=lambda c: c.name)
def test_without_retry_a_refused_connect_is_a_502_at_once(client_cls):
    world = RetryWorld([])
    world.script = ["refuse", "ok"]
    client = client_cls(world)
    client.send(b"GET", b"/x", b"r.test")
    assert client.answer().status == 502
    assert len(world.connects) == 1


@pytest.mark.parametrize("client_cls", CLIENTS, ids=lambda c: c.name)
def test_a_reset_before_the_response_head_is_retried_for_a_get(client_cls):
    world = RetryWorld([Retry(attempts=3)])
    client = client_cls(world)
    client.send(b"GET", b"/x", b"r.test")
    assert len(world.backends) == 1
    world.reset_last()
    world.clock.advance(0)
    assert len(world.backends) == 2
    assert world.backends[1][1].value().startswith(b"GET /x HTTP/1.1\r\n")
    world.answer(OK)
    assert client.answer().status == 200


@pytest.mark.parametrize("client_cls", CLIENTS, ids=lambda c: c.name)
def test_a_post_whose_body_went_out_is_not_sent_twice(client_cls):
    world = RetryWorld([Retry(attempts=3)])
    client = client_cls(world)
    client.send(b"POST", b"/x", b"r.test", body=b"12345")
    world.reset_last()
    world.clock.advance(0)
    assert client.answer().status == 502
    assert len(world.backends) == 1


@pytest.mark.parametrize("client_cls", CLIENTS, ids=lambda c: c.name)
def test_a_put_with_a_held_body_is_sent_again_whole(client_cls):
    world = RetryWorld([Buffering(max_request_body_bytes=100), Retry(attempts=2)])
    client = client_cls(world)
    client.send(b"PUT", b"/x", b"r.test", body=b"12345")
    world.reset_last()
    world.clock.advance(0)
    assert len(world.backends) == 2
    sent = world.backends[1][1].value()
    assert b"Content-Length: 5\r\n" in sent and sent.endswith(b"\r\n\r\n12345")
    world.answer(OK)
    assert client.answer().status == 200


@pytest.mark.parametrize("client_cls", CLIENTS, ids=lambda c: c.name)
def test_no_retry_once_the_response_head_went_to_the_client(client_cls):
    world = RetryWorld([Retry(attempts=3)])
    client = client_cls(world)
    client.send(b"GET", b"/x", b"r.test")
    world.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel")
    world.reset_last()
    world.clock.advance(1)
    assert len(world.backends) == 1
    answer = client.answer()
    assert answer.status == 200 and answer.reset


@pytest.mark.parametrize("client_cls", CLIENTS, ids=lambda c: c.name)
def test_an_answer_of_any_status_is_not_retried(client_cls):
    world = RetryWorld([Retry(attempts=3)])
    client = client_cls(world)
    client.send(b"GET", b"/x", b"r.test")
    world.answer(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
    world.clock.advance(1)
    assert client.answer().status == 503
    assert len(world.backends) == 1


@pytest.mark.parametrize("client_cls", CLIENTS, ids=lambda c: c.name)
def test_retry_expression_of_buffering_replays_network_errors(client_cls):
    world = RetryWorld([Buffering(retry_expression="IsNetworkError() && Attempts() <= 2")])
    world.script = ["refuse", "refuse", "refuse", "ok"]
    client = client_cls(world)
    client.send(b"POST", b"/x", b"r.test", body=b"abc")
    world.clock.advance(0)
    # Attempts 1 and 2 failed and were replayed; attempt 3 failed and Attempts() <= 2 no longer holds.
    assert len(world.connects) == 3
    assert client.answer().status == 502


def test_labels_retry():
    from edge.discovery.labels import read_labels

    base = {"traefik.http.services.s.loadbalancer.server.port": "80",
            "traefik.http.routers.r.rule": "Host(`a.test`)", "traefik.http.routers.r.middlewares": "re"}
    config = read_labels("web", {**base, "traefik.http.middlewares.re.retry.attempts": "4",
                                 "traefik.http.middlewares.re.retry.initialinterval": "100ms"})
    assert [r.middlewares for r in config.routers] == [(Retry(4, 0.1),)] and config.problems == ()
    config = read_labels("web", {**base, "traefik.http.middlewares.re.retry.attempts": "50"})
    assert [r.middlewares for r in config.routers] == [(Retry(10),)]
    assert any("at most 10 attempts" in p.message for p in config.problems)
    config = read_labels("web", {**base, "traefik.http.middlewares.re.retry.initialinterval": "1s"})
    assert config.routers == () or list(config.routers) == []
    assert any("has no attempts" in p.message for p in config.problems)


class _Side:
    def gone(self, req):
        return False

    def flush(self):
        pass


@pytest.mark.parametrize("cause, retried", [
    ("http://10.0.0.1:80 closed the connection: reset", True),
    ("h2c://10.0.0.1:80 reset the stream (REFUSED_STREAM)", True),
    ("malformed response: invalid status (from http://10.0.0.1:80)", False),
    ("response head larger than 73728 bytes (from http://10.0.0.1:80)", False),
])
def test_only_a_connection_or_stream_ended_before_the_head_is_retried(cause, retried):
    from twisted.internet.task import Clock

    from edge.http.exchange import Request

    clock = Clock()
    policy = RetryPolicy(Retry(attempts=2, initial_interval=1), clock)
    req = Request("http", "127.0.0.1")
    req.method, req.body_done = b"GET", True

    class Route:
        router = "r"

    req.route = Route()
    assert policy.again(_Side(), req, cause, nothing_sent=False) is retried
    assert len(clock.getDelayedCalls()) == (1 if retried else 0)
    if retried:
        assert clock.getDelayedCalls()[0].getTime() == 1.0 and req.attempts == 2
