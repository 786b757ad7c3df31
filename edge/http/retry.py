"""
Traefik's ``retry`` middleware: send a request again when no backend answered.

Traefik retries only at the transport level, and stops as soon as the
request head was written to a backend (``httptrace.WroteHeaders``) or any
answer came.  In edge an *attempt* is one pass of the exchange over the
service's targets: a connect that fails already moves on to the next
untried target at once (``exchange.dispatch``; that is no new attempt).  An
attempt fails when edge would answer 502 before any byte of a response
reached the client:

- no target accepted the connection: nothing was sent, always retried;
- the backend closed or reset the connection (an h2c backend: or the
  stream) before its response head:
  retried only when sending the request again is safe -- an idempotent
  method (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) whose body is empty or
  held whole by the ``buffering`` middleware (Traefik would not retry here
  at all; a POST is never sent twice).

Then, while fewer than ``attempts`` were made (the first counts, as in
Traefik), the next attempt starts over every target after a back-off on the
reactor's clock: ``initial_interval`` growing by ``2 ** (1 / (attempts - 1))``
per attempt (Traefik's multiplier, which would reach twice the first wait
after ``attempts - 1`` steps; without its random jitter); no wait when
``initial_interval`` is 0.  A malformed response, a 504 or an answer of any status is never retried.
"""

from __future__ import annotations

from twisted.logger import Logger

from edge.http.backend import IDEMPOTENT
from edge.snapshot import MAX_RETRY_ATTEMPTS as MAX_ATTEMPTS, Retry

__all__ = ["RetryPolicy", "MAX_ATTEMPTS"]

# The causes the backend connections give when a connection (HTTP/1.1, h2c) or
# an h2c stream ends before the response head; any other 502 is an answer.
_ENDED = (" closed the connection", " reset the stream")


class RetryPolicy:
    """When and after what wait a failed request goes out again (``exchange.error`` asks)."""

    _log = Logger(namespace="edge.http.retry")

    def __init__(self, mw: Retry, reactor):
        self.attempts = max(1, min(mw.attempts, MAX_ATTEMPTS))
        self.initial = mw.initial_interval
        self._reactor = reactor
        self._multiplier = 2 ** (1 / (self.attempts - 1)) if self.attempts > 1 else 1.0

    def delay(self, attempt: int) -> float:
        """The wait before attempt number ``attempt`` (2 for the first retry)."""
        if self.initial <= 0:
            return 0.0
        return self.initial * self._multiplier ** (attempt - 2)

    def replayable(self, req, nothing_sent: bool) -> bool:
        if nothing_sent:
            return True
        if req.method not in IDEMPOTENT or not req.body_done:
            return False
        return req.held is not None or (not req.chunked and not req.content_length)

    def again(self, side, req, cause: str, nothing_sent: bool) -> bool:
        """Schedule the next attempt for ``req`` if one is left and safe; False to answer 502."""
        if req.attempts >= self.attempts:
            return False
        if not nothing_sent and not any(marker in cause for marker in _ENDED):
            return False  # a malformed answer: the backend did answer
        if not self.replayable(req, nothing_sent):
            return False
        self.schedule(side, req, cause)
        return True

    def schedule(self, side, req, cause: str) -> None:
        """Start the next attempt of ``req`` after its back-off."""
        req.attempts += 1
        wait = self.delay(req.attempts)
        self._log.info(
            "Router {router}: {cause}; attempt {attempt} of {attempts} in {wait:.3f}s",
            router=req.route.router, cause=cause, attempt=req.attempts, attempts=self.attempts, wait=wait,
        )
        self._reactor.callLater(wait, self._go, side, req)

    def _go(self, side, req) -> None:
        from edge.http import exchange

        if side.gone(req):
            return
        req.tried.clear()
        req.retried = False
        if req.held is not None:
            req.pending = list(req.held)
            req.pending_bytes = req.content_length
        exchange.dispatch(getattr(req, "response_filter", None) or side, req)
        side.flush()
