"""
Traefik's ``rateLimit`` and ``inFlightReq`` middlewares.

Both count requests per *source* (:func:`source_key`: the client address by
default, or a header, the host, an ``X-Forwarded-For`` depth).  Sources are
kept in a bounded LRU table (:data:`MAX_SOURCES`, Traefik's own bound): a
client with many addresses evicts the oldest entries instead of growing the
table.  An evicted rate bucket starts full again.  In-flight counts exist
only while a source has requests in progress (so they are bounded by edge's
connection and stream limits), and are given back when the request is
logged as done, or when it is freed, whichever comes first.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict

from twisted.internet import defer

from edge.cidr import Networks
from edge.http.middlewares import Reply, get_header
from edge.snapshot import InFlightReq, RateLimit, SourceCriterion

__all__ = ["RateLimiter", "InFlightLimiter", "source_key", "MAX_SOURCES"]

MAX_SOURCES = 65536


def _too_many(extra=()) -> Reply:
    return Reply(429, b"Too Many Requests", [(b"Content-Type", b"text/plain; charset=utf-8"), *extra],
                 b"Too Many Requests\n")


def source_key(criterion: SourceCriterion):
    """A function request -> the key its requests are counted under."""
    if criterion.request_header_name:
        name = criterion.request_header_name.lower().encode("latin-1")
        return lambda request: get_header(request.headers, name) or b""
    if criterion.request_host:
        return lambda request: request.host or b""
    if criterion.ip_depth > 0 or criterion.excluded_ips:
        depth = criterion.ip_depth
        excluded = Networks(criterion.excluded_ips) if criterion.excluded_ips else None

        def forwarded(request) -> bytes:
            items: list[bytes] = []
            for k, v in request.headers:
                if k.lower() == b"x-forwarded-for":
                    items += [i.strip() for i in v.split(b",") if i.strip()]
            if depth > 0:
                return items[-depth] if len(items) >= depth else b""
            for item in reversed(items):  # excludedIPs: the first from the right not excluded
                if item.decode("latin-1") not in excluded:
                    return item
            return b""

        return forwarded
    return lambda request: request.client_ip


class _Bucket:
    __slots__ = ("tokens", "stamp")

    def __init__(self, tokens: float, stamp: float):
        self.tokens = tokens
        self.stamp = stamp


class RateLimiter:
    """
    A token bucket per source (Go's ``x/time/rate``, as Traefik): ``average``
    per ``period`` refilled continuously, ``burst`` at most.  A request that
    would wait up to half a token's interval (at most 500 ms, Traefik's
    ``maxDelay``) is held that long; a later one is answered 429 with
    ``Retry-After``.
    """

    def __init__(self, mw: RateLimit, reactor):
        self._reactor = reactor
        self._rate = mw.average / mw.period  # tokens per second
        self._burst = max(1, mw.burst)
        self._max_delay = min(0.5, 1 / (2 * self._rate)) if self._rate > 1 else 0.5
        self._key = source_key(mw.source)
        self._buckets: OrderedDict = OrderedDict()

    def __call__(self, request):
        now = self._reactor.seconds()
        key = self._key(request)
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            if len(buckets) >= MAX_SOURCES:
                buckets.popitem(last=False)
            bucket = buckets[key] = _Bucket(float(self._burst), now)
        else:
            buckets.move_to_end(key)
            bucket.tokens = min(float(self._burst), bucket.tokens + (now - bucket.stamp) * self._rate)
            bucket.stamp = now
        bucket.tokens -= 1.0
        if bucket.tokens >= 0:
            return None
        delay = -bucket.tokens / self._rate
        if delay > self._max_delay:
            bucket.tokens += 1.0  # the reservation is cancelled
            seconds = int(delay) if delay == int(delay) else int(delay) + 1
            return _too_many([(b"Retry-After", b"%d" % seconds)])
        d = defer.Deferred()
        self._reactor.callLater(delay, d.callback, None)
        return d


class InFlightLimiter:
    """At most ``amount`` requests of one source in progress; more get 429."""

    def __init__(self, mw: InFlightReq):
        self._amount = mw.amount
        self._key = source_key(mw.source)
        self._counts: dict = {}

    def __call__(self, request):
        key = self._key(request)
        counts = self._counts
        current = counts.get(key, 0)
        if current >= self._amount:
            return _too_many()
        if current == 0 and len(counts) >= MAX_SOURCES:
            return _too_many()  # every slot is a source with requests in progress
        counts[key] = current + 1
        released = []

        def release():
            if released:
                return
            released.append(True)
            left = counts.get(key, 1) - 1
            if left > 0:
                counts[key] = left
            else:
                counts.pop(key, None)

        previous = request.on_finish
        if previous is None:
            request.on_finish = release
        else:
            def both():
                previous()
                release()

            request.on_finish = both
        weakref.finalize(request, release)  # whatever ends the request, the slot comes back
        return None
