"""
Traefik's ``circuitBreaker`` middleware, as oxy's ``cbreaker`` documents it.

A :class:`Breaker` watches the answers of its router (status and time to the
end of the answer) in :class:`RollingStats`, the last ten seconds in
one-second buckets, and every ``check_period`` evaluates its expression
(:mod:`edge.expression`) over them.  States:

``standby`` (closed)
    Every request passes and is counted.
``tripped``
    The expression held: for ``fallback_duration`` every request is answered
    with ``response_code`` (503) by edge; the stats are reset.
``recovering``
    From the first request after ``fallback_duration`` (as oxy), for
    ``recovery_duration``, a growing share of requests passes
    (oxy's ratio controller: the share let through tracks
    ``0.5 * elapsed / recovery_duration``); if the expression holds again
    at a check the breaker trips again, else it is ``standby`` after that time.

A 502 or 504 (edge could not reach the backend, or it did not answer in
time) counts as a network error, as oxy counts them.  Memory is bounded:
ten buckets, each with a fixed latency histogram and at most one counter
per status code 100-599.  State lives with the compiled router, so a new
snapshot starts a breaker in ``standby`` with fresh stats (as the rate
limit's buckets).
"""

from __future__ import annotations

import math

from twisted.logger import Logger

from edge.http.exchange import REASONS, TEXT, add_on_finish
from edge.expression import CIRCUIT_BREAKER, parse
from edge.http.middlewares import Reply
from edge.snapshot import CircuitBreaker

__all__ = ["Breaker", "RollingStats", "STANDBY", "TRIPPED", "RECOVERING"]

STANDBY, TRIPPED, RECOVERING = "standby", "tripped", "recovering"

_BUCKETS = 10  # seconds of history, oxy's RTMetrics window
# Latency histogram bins: 1 ms to one hour, each bin 10% wider than the last.
_GROWTH = 1.1
_BINS = int(math.log(3_600_000) / math.log(_GROWTH)) + 2
_LOG_GROWTH = math.log(_GROWTH)


def _bin(latency_ms: float) -> int:
    if latency_ms <= 1.0:
        return 0
    return min(_BINS - 1, int(math.log(latency_ms) / _LOG_GROWTH) + 1)


def _bin_top(index: int) -> float:
    """The largest latency (ms) bin ``index`` holds."""
    return _GROWTH ** index if index else 1.0


class _Bucket:
    __slots__ = ("second", "total", "net_errors", "codes", "latency")

    def __init__(self):
        self.second = -1
        self.total = 0
        self.net_errors = 0
        self.codes: dict[int, int] = {}
        self.latency = [0] * _BINS


class RollingStats:
    """Answers of the last :data:`_BUCKETS` seconds; ``clock.seconds()`` says which second it is."""

    def __init__(self, clock):
        self._clock = clock
        self._buckets = [_Bucket() for _ in range(_BUCKETS)]

    def _live(self):
        now = int(self._clock.seconds())
        return [b for b in self._buckets if now - _BUCKETS < b.second <= now]

    def record(self, status: int, latency: float) -> None:
        second = int(self._clock.seconds())
        bucket = self._buckets[second % _BUCKETS]
        if bucket.second != second:
            bucket.__init__()
            bucket.second = second
        bucket.total += 1
        if status == 502 or status == 504:
            bucket.net_errors += 1
        if 100 <= status < 600:
            bucket.codes[status] = bucket.codes.get(status, 0) + 1
        bucket.latency[_bin(latency * 1000.0)] += 1

    def reset(self) -> None:
        for bucket in self._buckets:
            bucket.__init__()

    def network_error_ratio(self) -> float:
        live = self._live()
        total = sum(b.total for b in live)
        return sum(b.net_errors for b in live) / total if total else 0.0

    def response_code_ratio(self, start_a, end_a, start_b, end_b) -> float:
        """Answers with a code in [start_a, end_a) over those in [start_b, end_b) (0 when none)."""
        a = b = 0
        for bucket in self._live():
            for code, count in bucket.codes.items():
                if start_a <= code < end_a:
                    a += count
                if start_b <= code < end_b:
                    b += count
        return a / b if b else 0.0

    def latency_at_quantile_ms(self, quantile: float) -> float:
        """The latency (ms, to the histogram's 10% precision) below which ``quantile`` % of answers were."""
        live = self._live()
        total = sum(b.total for b in live)
        if not total:
            return 0.0
        wanted = max(1, math.ceil(total * min(max(quantile, 0.0), 100.0) / 100.0))
        seen = 0
        for i in range(_BINS):
            seen += sum(b.latency[i] for b in live)
            if seen >= wanted:
                return _bin_top(i)
        return _bin_top(_BINS - 1)

    def value(self, name: str, args: tuple):
        if name == "NetworkErrorRatio":
            return self.network_error_ratio()
        if name == "ResponseCodeRatio":
            return self.response_code_ratio(*args)
        return self.latency_at_quantile_ms(args[0])


class _Ratio:
    """oxy's ratio controller: let a request through while the share let through is below the target."""

    def __init__(self, start: float, duration: float):
        self.start = start
        self.duration = duration
        self.allowed = 0
        self.denied = 0

    def allow(self, now: float) -> bool:
        target = 0.5 * (now - self.start) / self.duration if self.duration > 0 else 1.0
        # Would letting this one through keep the share let through below the target?
        if (self.allowed + 1) / (self.allowed + self.denied + 1) < target:
            self.allowed += 1
            return True
        self.denied += 1
        return False


class Breaker:
    """One router's circuit breaker (a request middleware); ``clock`` is the reactor."""

    _log = Logger(namespace="edge.http.circuitbreaker")

    def __init__(self, mw: CircuitBreaker, clock, router: str = ""):
        self._condition = parse(mw.expression, CIRCUIT_BREAKER)
        self._expression = mw.expression
        self._clock = clock
        self._router = router
        self._check_period = mw.check_period
        self._fallback = mw.fallback_duration
        self._recovery = mw.recovery_duration
        self.stats = RollingStats(clock)
        self.state = STANDBY
        self._until = 0.0
        self._next_check = 0.0
        self._ratio: _Ratio | None = None
        code = mw.response_code
        reason = REASONS.get(code, b"Service Unavailable" if code == 503 else b"Error")
        self._reply = Reply(code, reason, [TEXT], f"{code} {reason.decode()}: circuit breaker open\n".encode())

    def __call__(self, request):
        now = self._clock.seconds()
        if self.state is not STANDBY and self._refuse(now):
            request.error = "circuit breaker open"
            return self._reply
        add_on_finish(request, lambda: self.record(request.status, self._clock.seconds() - now))
        return None

    def _refuse(self, now: float) -> bool:
        if self.state is TRIPPED:
            if now < self._until:
                return True
            self._set(RECOVERING, now + self._recovery)
            self._ratio = _Ratio(now, self._recovery)
        if now > self._until:
            self._set(STANDBY, now)
            return False
        return not self._ratio.allow(now)

    def record(self, status: int, latency: float) -> None:
        """One answer of this router (status, seconds to its end); then the periodic check."""
        self.stats.record(status, latency)
        now = self._clock.seconds()
        if now < self._next_check:
            return
        self._next_check = now + self._check_period
        if self.state is TRIPPED:
            return
        if self._condition(self.stats.value):
            self._set(TRIPPED, now + self._fallback)
            self.stats.reset()

    def _set(self, state: str, until: float) -> None:
        if state is TRIPPED:
            self._log.warn("Router {router}: circuit breaker {old} -> tripped ({expression})",
                           router=self._router, old=self.state, expression=self._expression)
        else:
            self._log.info("Router {router}: circuit breaker {old} -> {new}",
                           router=self._router, old=self.state, new=state)
        self.state = state
        self._until = until
