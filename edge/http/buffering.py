"""
Traefik's ``buffering`` middleware, request side: the body is read whole
before any backend is contacted.

While the body arrives, a :class:`_BodySink` stands where a backend
connection would be (the framings write body bytes to ``req.conn``; HTTP/2
acknowledges them as the sink takes them, so flow control keeps moving).
When the body is complete it is held (``req.held``: the pieces as they came), the
request is re-framed with its ``Content-Length`` and the rest of the chain
and the balancer go on.  A held body can be sent again, so the ``retry``
middleware and ``retryExpression`` may replay such a request.

Everything stays in memory; edge writes no temporary file.  So the bounds
are edge's own: a body past ``maxRequestBodyBytes`` -- or past
:data:`MAX_HELD` when that is 0 or larger -- is answered 413 (at once when
its ``Content-Length`` says so, else when the excess arrives), and all
bodies held at one time share :data:`TOTAL_HELD`; a body that would go past
it is answered 503.  ``memRequestBodyBytes`` (Traefik's threshold for going
to disk) therefore changes nothing.

``retryExpression`` (``Attempts()``, ``ResponseCode()``, ``IsNetworkError()``)
is asked when edge would answer 502 before any response byte (as
:mod:`edge.http.retry` decides what is safe): ``ResponseCode()`` is then 502
and ``IsNetworkError()`` true.  A backend's own answer is relayed as it
comes, never held and replayed.  Replays happen at once (as oxy's buffer)
and at most :data:`edge.http.retry.MAX_ATTEMPTS` attempts are made whatever
the expression says.
"""

from __future__ import annotations

import weakref

from twisted.logger import Logger

from edge.http.exchange import REASONS, TEXT, add_on_finish
from edge.expression import RETRY, parse
from edge.http.middlewares import Reply
from edge.http.response_filters import Filter, Head
from edge.http.retry import MAX_ATTEMPTS, RetryPolicy
from edge.snapshot import Buffering, Retry

__all__ = ["RequestBuffer", "ResponseBuffer", "ExpressionRetry", "Budget", "MAX_HELD", "TOTAL_HELD"]

MAX_HELD = 64 * 1024 * 1024  # one request body, at most
# Every body held at once, at most.  A held body costs edge up to about three
# times its size while it is sent (the send joins it with the head, the socket
# write slices what the kernel did not take): a 32 MiB upload raised the peak
# RSS by 95 MiB, the same upload without buffering by 0.
TOTAL_HELD = 128 * 1024 * 1024


class Budget:
    """Bytes held by every buffering middleware of the process, against one cap."""

    def __init__(self, limit: int = TOTAL_HELD):
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used = max(0, self.used - n)


BUDGET = Budget()


def _reply(status: int, why: str) -> Reply:
    return Reply(status, REASONS[status], [TEXT], f"{status} {REASONS[status].decode()}: {why}\n".encode())


class _Hold:
    """What :class:`RequestBuffer` returns: the exchange hands the request over (``take_over``)."""

    __slots__ = ("_buffer",)

    def __init__(self, buffer: "RequestBuffer"):
        self._buffer = buffer

    def take_over(self, side, req, proceed) -> None:
        sink = _BodySink(self._buffer, side, req, proceed)
        side.attach(req, sink, False)
        side.flush()


class RequestBuffer:
    """The request-side middleware (a request callable of the chain)."""

    def __init__(self, mw: Buffering, budget: Budget = BUDGET):
        limit = mw.max_request_body_bytes
        self.limit = limit if 0 < limit <= MAX_HELD else MAX_HELD
        self.budget = budget
        self._hold = _Hold(self)

    def __call__(self, request):
        if request.body_done or request.upgrade:
            return None  # no body to read
        if request.content_length is not None and request.content_length > self.limit:
            request.error = "request body larger than the buffering limit"
            return _reply(413, f"request body larger than {self.limit} bytes")
        return self._hold


class _BodySink:
    """
    Stands in for the backend connection while the body is read: what a
    framing calls on one (``attach``, ``send_request``, ``send_body``,
    ``end_body``, ``abandon``; ``req``, ``head_sent``, ``write_full``).
    """

    ends_body = True  # the held body is complete then (BackendProtocol.ends_body)

    head_sent = False
    write_full = False
    reused = False
    transport = None  # nothing to pause: the framing's own reads are the only input
    _log = Logger(namespace="edge.http.buffering")

    def __init__(self, buffer: RequestBuffer, side, req, proceed):
        self._buffer = buffer
        self._side = side
        self._proceed = proceed
        self._chunks: list[bytes] = []
        self._size = 0
        self._reserved = 0
        self._done = False
        self.req = None

    # -- what a framing calls on its backend connection

    def attach(self, side, req, reused: bool) -> None:
        self.req = req
        release = self._release
        add_on_finish(req, release)
        weakref.finalize(req, release)

    def send_request(self, req, peer) -> None:
        """No head is sent; the body bytes that arrived before us are the first held."""
        early, req.pending, req.pending_bytes = req.pending, [], 0
        for chunk in early:
            if not self._add(chunk):
                return

    def send_body(self, req, data: bytes) -> None:
        if data and self.req is not None:
            self._add(data)

    def end_body(self, req) -> None:
        if self.req is not None:
            self._complete()

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def abandon(self) -> None:
        """The client went away or was answered: the partial body goes."""
        self.req = None
        self._chunks = []
        self._release()

    # -- the body

    def _add(self, data: bytes) -> bool:
        n = len(data)
        if self._size + n > self._buffer.limit:
            self._refuse(413, f"request body larger than {self._buffer.limit} bytes")
            return False
        if not self._buffer.budget.take(n):
            self._refuse(503, "too many request bodies held by edge at once")
            return False
        self._reserved += n
        self._size += n
        self._chunks.append(data)
        return True

    def _detach(self):
        req, side = self.req, self._side
        self.req = None
        req.conn = None
        side.backend_detached(self)
        return req, side

    def _refuse(self, status: int, why: str) -> None:
        req, side = self._detach()
        self._chunks = []
        self._release()
        req.error = why
        self._log.info("Client {client}: {why}", client=req.client_ip, why=why)
        side.reply(req, _reply(status, why))
        side.flush()

    def _complete(self) -> None:
        if self._done:
            return
        self._done = True
        req, _side = self._detach()
        # Kept as the pieces that arrived: joining them would hold the body
        # twice; the send joins them once with the head.
        held, self._chunks = tuple(self._chunks), []
        req.held = held
        req.pending = list(held)
        req.pending_bytes = self._size
        req.chunked = False
        req.content_length = self._size
        req.expect = False  # the 100 Continue went out when the body was asked for
        self._proceed()

    def _release(self) -> None:
        reserved, self._reserved = self._reserved, 0
        if reserved:
            self._buffer.budget.give(reserved)


class ExpressionRetry:
    """``retryExpression``: replay a request when edge would answer 502, or on a backend's answer, if it says so."""

    def __init__(self, expression: str, reactor):
        self._condition = parse(expression, RETRY)
        self._policy = RetryPolicy(Retry(attempts=MAX_ATTEMPTS), reactor)

    def _holds(self, req, status: int) -> bool:
        attempts = req.attempts

        def values(name, _args):
            if name == "Attempts":
                return attempts
            if name == "ResponseCode":
                return status
            return status == 502 or status == 504  # IsNetworkError(), as oxy decides it

        return self._condition(values)

    def again(self, side, req, cause: str, nothing_sent: bool) -> bool:
        """Asked by exchange.error before edge answers 502."""
        if not self._holds(req, 502):
            return False
        return self._policy.again(side, req, cause, nothing_sent)

    def on_answer(self, side, req, status: int) -> bool:
        """A backend answered ``status`` (head only so far): True when that answer is dropped and replayed."""
        if req.attempts >= self._policy.attempts or not self._holds(req, status):
            return False
        if not self._policy.replayable(req, False):
            return False  # a POST, or a body that went out and is not held
        self._policy.schedule(side, req, f"{req.target_url} answered {status}")
        return True


class ResponseBuffer:
    """
    The response side of one router's ``buffering`` (a maker of
    :class:`_ResponseFilter`, in ``Chain.response``): with
    ``maxResponseBodyBytes`` the answer is held whole, in memory (the same
    per-body cap and shared budget as request bodies), and the client gets
    it with its ``Content-Length``, or **500** when it is larger (Traefik's
    answer); with a ``retryExpression`` a backend's answer is replayed when
    the expression holds for its status.
    """

    def __init__(self, mw: Buffering, retry: "ExpressionRetry | None", budget: Budget = BUDGET):
        limit = mw.max_response_body_bytes
        self.limit = (limit if limit <= MAX_HELD else MAX_HELD) if limit > 0 else 0
        self.retry = retry
        self.budget = budget

    def __call__(self, out, req):
        return _ResponseFilter(out, req, self)


class _ResponseFilter(Filter):
    """One answer, held (or only looked at) before the client sees any of it."""

    _log = Logger(namespace="edge.http.buffering")

    def __init__(self, out, req, owner: ResponseBuffer):
        super().__init__(out, req)
        self._owner = owner
        self._reset()
        add_on_finish(req, self._release)

    def _reset(self) -> None:
        self._passing = False
        self._head = None
        self._chunks: list[bytes] = []
        self._size = 0
        self._reserved = 0

    def _release(self) -> None:
        reserved, self._reserved = self._reserved, 0
        if reserved:
            self._owner.budget.give(reserved)

    def attach(self, req, conn, reused: bool) -> None:
        self._release()
        self._reset()
        super().attach(req, conn, reused)

    def _drop_conn(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            self.req.conn = None
            self.out.backend_detached(conn)
            conn.abandon()

    def _refuse(self, req, status: int, why: str) -> None:
        self._drop_conn()
        self._release()
        self._reset()
        self._head = None
        req.error = why
        self._log.info("Router {router}: {why}", router=req.route.router, why=why)
        self.out.reply(req, _reply(status, why))
        self.out.flush()

    def response_head(self, req, head) -> bool:
        owner = self._owner
        no_body = req.method == b"HEAD" or head.status in (204, 304)
        if head.status == 101:
            return self.out.response_head(req, head)
        if owner.retry is not None and owner.retry.on_answer(self, req, head.status):
            self._drop_conn()  # that answer goes; the next attempt is on its way
            return True
        if not owner.limit or no_body:
            self._passing = True  # nothing to hold (a HEAD keeps the length it announces)
            return self.out.response_head(req, head)
        if head.content_length is not None and not head.chunked and int(head.content_length) > owner.limit:
            self._refuse(req, 500, f"response body larger than {owner.limit} bytes")
            return True
        self._head = Head.of(head)
        return no_body

    def response_body(self, req, data: bytes) -> None:
        if self._passing:
            self.out.response_body(req, data)
            return
        if self._head is None:
            return
        n = len(data)
        if self._size + n > self._owner.limit:
            self._refuse(req, 500, f"response body larger than {self._owner.limit} bytes")
            return
        if not self._owner.budget.take(n):
            self._refuse(req, 503, "too many bodies held by edge at once")
            return
        self._reserved += n
        self._size += n
        self._chunks.append(data)

    def response_end(self, req) -> None:
        if self._passing:
            self.out.response_end(req)
            return
        head = self._head
        if head is None:
            return
        body = b"".join(self._chunks)
        self._chunks = []
        self._head = None
        head.content_length = b"%d" % len(body)
        head.chunked = False
        no_body = self.out.response_head(req, head)
        if body and not no_body:
            self.out.response_body(req, body)
        self.out.response_end(req)
        self._release()

    def backend_failed(self, req, cause: str, head_sent: bool) -> None:
        if self._head is not None:
            # The held answer broke off: nothing of it reached the client, so it is edge's 502.
            self._release()
            self._reset()
            self.out.backend_failed(req, cause, False)
            return
        self.out.backend_failed(req, cause, head_sent)
