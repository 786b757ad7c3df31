"""
The circuit breaker: its expression parser, rolling stats and states on a
Clock, then through both client framings in memory.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from edge.expression import CIRCUIT_BREAKER, RETRY, ExpressionError, parse
from edge.http.circuitbreaker import RECOVERING, STANDBY, TRIPPED, Breaker, RollingStats
from edge.snapshot import CircuitBreaker
from tests.test_http_pipeline import H1Client, H2Client
from tests.test_middlewares_retry import RetryWorld

CLIENTS = [H1Client, H2Client]


def values(**known):
    return lambda name, args: known[name](*args) if callable(known[name]) else known[name]


@pytest.mark.parametrize("text, known, expected", [
    ("NetworkErrorRatio() > 0.5", {"NetworkErrorRatio": 0.6}, True),
    ("NetworkErrorRatio() > 0.5", {"NetworkErrorRatio": 0.5}, False),
    ("NetworkErrorRatio() >= 0.5", {"NetworkErrorRatio": 0.5}, True),
    ("ResponseCodeRatio(500, 600, 0, 600) > 0.25",
     {"ResponseCodeRatio": lambda a, b, c, d: 0.3 if (a, b, c, d) == (500, 600, 0, 600) else 0}, True),
    ("LatencyAtQuantileMS(50.0) > 100", {"LatencyAtQuantileMS": lambda q: 150 if q == 50.0 else 0}, True),
    ("NetworkErrorRatio() > 0.5 || LatencyAtQuantileMS(50.0) > 100",
     {"NetworkErrorRatio": 0.1, "LatencyAtQuantileMS": 101}, True),
    ("NetworkErrorRatio() > 0.5 && LatencyAtQuantileMS(50.0) > 100",
     {"NetworkErrorRatio": 0.9, "LatencyAtQuantileMS": 99}, False),
    # && binds tighter than ||; parentheses change it.
    ("NetworkErrorRatio() > 0.5 || NetworkErrorRatio() < 0.2 && LatencyAtQuantileMS(50) > 100",
     {"NetworkErrorRatio": 0.9, "LatencyAtQuantileMS": 1}, True),
    ("(NetworkErrorRatio() > 0.5 || NetworkErrorRatio() < 0.2) && LatencyAtQuantileMS(50) > 100",
     {"NetworkErrorRatio": 0.9, "LatencyAtQuantileMS": 1}, False),
    ("0.5 < NetworkErrorRatio()", {"NetworkErrorRatio": 0.7}, True),
    ("NetworkErrorRatio()!=0", {"NetworkErrorRatio": 0.0}, False),
])
def test_expressions_evaluate_as_written(text, known, expected):
    assert parse(text, CIRCUIT_BREAKER)(values(**known)) is expected


def test_retry_expressions():
    tree = parse("IsNetworkError() && Attempts() <= 2", RETRY)
    assert tree(values(IsNetworkError=True, Attempts=2)) is True
    assert tree(values(IsNetworkError=True, Attempts=3)) is False
    assert parse("ResponseCode() == 502", RETRY)(values(ResponseCode=502)) is True


@pytest.mark.parametrize("text, says", [
    ("", "empty"),
    ("NetworkErrorRatio() >", "expected a function or a number"),
    ("NetworkErrorRatio()", "a number is not a condition"),
    ("NetworkErrorRatio > 0.5", "expected '('"),
    ("Foo() > 1", "unknown function 'Foo'"),
    ("ResponseCodeRatio(500, 600) > 0.1", "takes 4 arguments, got 2"),
    ("(NetworkErrorRatio() > 0.5", "expected ')'"),
    ("NetworkErrorRatio() > 0.5)", "unexpected ')'"),
    ("NetworkErrorRatio() > 0.5 & 1", "unexpected '&"),
    ("1 > 0", "compares two numbers"),
    ("NetworkErrorRatio() > 0.5; __import__('os')", "unexpected ';"),
    ("(" * 40 + "NetworkErrorRatio() > 0" + ")" * 40, "more than 32 parentheses deep"),
    ("NetworkErrorRatio() > 0.5 " * 100, "longer than"),
])
def test_expressions_that_do_not_parse_say_why(text, says):
    with pytest.raises(ExpressionError) as e:
        parse(text, CIRCUIT_BREAKER)
    assert says in str(e.value)


def test_rolling_stats_forget_what_is_older_than_ten_seconds():
    clock = Clock()
    stats = RollingStats(clock)
    for status in (200, 200, 502, 500):
        stats.record(status, 0.01)
    assert stats.network_error_ratio() == pytest.approx(0.25)
    assert stats.response_code_ratio(500, 600, 0, 600) == pytest.approx(0.5)
    clock.advance(5)
    stats.record(200, 0.01)
    assert stats.network_error_ratio() == pytest.approx(0.2)
    clock.advance(5)  # the first second is now out of the window
    assert stats.network_error_ratio() == 0.0
    assert stats.response_code_ratio(500, 600, 0, 600) == 0.0
    clock.advance(10)
    assert stats.latency_at_quantile_ms(50) == 0.0


def test_latency_quantiles_within_the_histograms_precision():
    stats = RollingStats(Clock())
    for ms in range(1, 101):
        stats.record(200, ms / 1000)
    assert stats.latency_at_quantile_ms(50.0) == pytest.approx(50, rel=0.1)
    assert stats.latency_at_quantile_ms(99.0) == pytest.approx(99, rel=0.1)
    stats.record(200, 7200.0)  # two hours: the last bin, not a new one
    assert stats.latency_at_quantile_ms(100.0) >= 3_600_000 / 1.1


def test_the_stats_memory_is_bounded():
    clock = Clock()
    stats = RollingStats(clock)
    for i in range(5000):
        clock.advance(0.01)
        stats.record(100 + i % 1000, i / 100)
    buckets = stats._buckets
    assert len(buckets) == 10
    assert all(len(b.codes) <= 500 and len(b.latency) == len(buckets[0].latency) for b in buckets)


class Request:
    status = 0
    on_finish = None
    error = ""


def served(breaker, clock, status, took=0.01):
    """One request through ``breaker``: None when it passed (and answered ``status``), else edge's reply."""
    req = Request()
    reply = breaker(req)
    if reply is not None:
        return reply
    clock.advance(took)
    req.status = status
    req.on_finish()
    return None


def test_states_standby_tripped_recovering_standby():
    clock = Clock()
    breaker = Breaker(CircuitBreaker("NetworkErrorRatio() > 0.5", check_period=0.1, fallback_duration=10,
                                     recovery_duration=10), clock)
    assert served(breaker, clock, 200) is None
    clock.advance(0.2)
    assert served(breaker, clock, 502) is None
    clock.advance(0.2)
    assert served(breaker, clock, 502) is None  # 2 of 3: the check after it trips the breaker
    assert breaker.state is TRIPPED
    reply = served(breaker, clock, 200)
    assert reply.status == 503
    clock.advance(9.9)
    assert served(breaker, clock, 200).status == 503
    clock.advance(0.2)
    # Recovering: the share let through grows with the time since recovery began.
    passed = 0
    for _ in range(100):
        clock.advance(0.05)
        passed += served(breaker, clock, 200, took=0) is None
    assert breaker.state is RECOVERING
    assert 5 <= passed <= 60  # 0.5 * elapsed / 10 s over 5 s: up to 25% by the end
    clock.advance(6)
    assert served(breaker, clock, 200) is None
    assert breaker.state is STANDBY


def test_recovering_trips_again_when_the_expression_holds():
    clock = Clock()
    breaker = Breaker(CircuitBreaker("ResponseCodeRatio(500, 600, 0, 600) > 0.5", fallback_duration=1,
                                     recovery_duration=100), clock)
    clock.advance(1)
    served(breaker, clock, 500)
    assert breaker.state is TRIPPED
    clock.advance(1.5)
    results = []
    for _ in range(200):
        clock.advance(0.2)
        results.append(served(breaker, clock, 500))
        if breaker.state is TRIPPED:
            break
    assert breaker.state is TRIPPED
    assert any(r is None for r in results)  # some were let through, failed, and tripped it


def test_responsecode_is_the_tripped_answer():
    clock = Clock()
    breaker = Breaker(CircuitBreaker("NetworkErrorRatio() > 0", response_code=429), clock)
    clock.advance(1)
    served(breaker, clock, 504)
    assert served(breaker, clock, 200).status == 429


@pytest.mark.parametrize("client_cls", CLIENTS, ids=lambda c: c.name)
def test_a_failing_backend_trips_the_breaker_for_both_framings(client_cls):
    world = RetryWorld([CircuitBreaker("ResponseCodeRatio(500, 600, 0, 600) > 0.5", check_period=0.1,
                                       fallback_duration=5)])
    world.clock.advance(1)
    for status in (200, 500, 500):  # 1/2 is not > 0.5; 2/3 is
        client = client_cls(world)
        client.send(b"GET", b"/x", b"r.test")
        world.answer(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n" % status)
        assert client.answer().status == status
        world.clock.advance(0.2)
    connects = len(world.connects)
    client = client_cls(world)
    client.send(b"GET", b"/x", b"r.test")
    answer = client.answer()
    assert answer.status == 503 and b"circuit breaker" in answer.body
    assert len(world.connects) == connects  # no backend was asked
    # As in oxy, the first request after the fallback starts the recovery (and is refused: its
    # share is 0 then); once the recovery duration has passed, all go through again.
    world.clock.advance(5.1)
    client = client_cls(world)
    client.send(b"GET", b"/x", b"r.test")
    assert client.answer().status == 503
    world.clock.advance(10.1)
    client = client_cls(world)
    client.send(b"GET", b"/x", b"r.test")
    world.answer(OK)
    assert client.answer().status == 200


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def _routers(labels):
    from edge.discovery.labels import read_labels

    v1 = "traefik.frontend.rule" in labels
    port = {"traefik.port": "80"} if v1 else {"traefik.http.services.s.loadbalancer.server.port": "80"}
    config = read_labels("web", {**port, **labels})
    return {r.name: r.middlewares for r in config.routers}, config.problems


def test_labels_v2_circuitbreaker_with_every_option():
    routers, problems = _routers({
        "traefik.http.routers.r.rule": "Host(`a.test`)",
        "traefik.http.routers.r.middlewares": "cb",
        "traefik.http.middlewares.cb.circuitbreaker.expression": "LatencyAtQuantileMS(50.0) > 100",
        "traefik.http.middlewares.cb.circuitbreaker.checkperiod": "1s",
        "traefik.http.middlewares.cb.circuitbreaker.fallbackduration": "30s",
        "traefik.http.middlewares.cb.circuitbreaker.recoveryduration": "1m",
        "traefik.http.middlewares.cb.circuitbreaker.responsecode": "502",
    })
    assert problems == ()
    assert routers["r@docker"] == (CircuitBreaker("LatencyAtQuantileMS(50.0) > 100", 1.0, 30.0, 60.0, 502),)


def test_labels_an_expression_that_does_not_parse_drops_the_router():
    routers, problems = _routers({
        "traefik.http.routers.r.rule": "Host(`a.test`)",
        "traefik.http.routers.r.middlewares": "cb",
        "traefik.http.middlewares.cb.circuitbreaker.expression": "NetworkErrorRatio() >> 0.5",
    })
    assert routers == {}
    assert any("is not an expression edge can evaluate" in p.message and p.level == "error" for p in problems)


def test_labels_v1_backend_circuitbreaker_and_maxconn():
    from edge.snapshot import InFlightReq, SourceCriterion

    routers, problems = _routers({
        "traefik.frontend.rule": "Host:a.test",
        "traefik.backend.circuitbreaker.expression": "NetworkErrorRatio() > 0.5",
        "traefik.backend.maxconn.amount": "10",
        "traefik.backend.maxconn.extractorfunc": "request.host",
    })
    assert problems == ()
    (mws,) = routers.values()
    assert mws == (InFlightReq(10, SourceCriterion(request_host=True)), CircuitBreaker("NetworkErrorRatio() > 0.5"))
    routers, problems = _routers({
        "traefik.frontend.rule": "Host:a.test",
        "traefik.backend.circuitbreaker.expression": "Ratio() > 0.5",
    })
    assert routers == {} and any(p.level == "error" for p in problems)
    for alone in ({"traefik.backend.maxconn.extractorfunc": "client.ip"}, {"traefik.backend.maxconn.amount": "3"}):
        # Traefik 1.7 limits nothing unless both are set.
        routers, problems = _routers({"traefik.frontend.rule": "Host:a.test", **alone})
        assert list(routers.values()) == [()]
        assert [p.level for p in problems] == ["warning"] and "needs both" in problems[0].message
    routers, problems = _routers({"traefik.frontend.rule": "Host:a.test", "traefik.backend.maxconn.amount": "3",
                                  "traefik.backend.maxconn.extractorfunc": "request.cookie"})
    assert routers == {} and any(p.level == "error" for p in problems)
