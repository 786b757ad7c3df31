"""
The ``errors`` middleware: custom error pages from another service.

As Traefik documents and does (``errors``, v2/v3; 1.7 ``frontend.errors``):
when the status of the answer is in ``status``, nothing of that answer
reaches the client (its body is read and dropped, so the connection can be
reused); edge asks the ``service`` for ``query`` (``{status}``,
``{originalStatus}`` and ``{url}``, the request target query-escaped, filled
in) with a ``GET`` carrying the client's request headers, through that
service's balancer and the shared backend pool, and answers with the page's
headers and body under the original status (or its ``statusRewrites``
value).  edge's own 502/503 for the router's service (no target, none
accepts a connection, the backend failed before its head) count as the
service's answer, as Traefik's load balancer answers inside the middleware.

If the page cannot be had (no such service or no target, the error service
fails, answers with more than :data:`PAGE_LIMIT` bytes or not within
``backend_response_timeout``), the client gets edge's plain-text answer
with that same status, as Traefik does when its page request fails.  The
page request itself goes through no middleware, so an error page never
asks for another.
"""

from __future__ import annotations

from http.client import responses as _PHRASES
from urllib.parse import quote_plus

from twisted.logger import Logger

from edge.http import exchange as _exchange
from edge.http.forwarding import request_bytes
from edge.http.middlewares import Chain
from edge.http.response_filters import Filter, Head
from edge.snapshot import Errors

__all__ = ["ErrorPages", "PAGE_LIMIT"]

# The most of an error page edge holds (it is sent whole, with its length).
PAGE_LIMIT = 1024 * 1024

_log = Logger(namespace="edge.http.errorpages")
_NO_CHAIN = Chain()
_CATCHING, _FETCHING, _DONE = "CATCHING", "FETCHING", "DONE"


def _reason(status: int) -> bytes:
    return _PHRASES.get(status, "Error").encode("ascii")


class ErrorPages:
    """One router's ``errors``, compiled; called per request to make its filter."""

    def __init__(self, mw: Errors):
        self.ranges = mw.status
        self.rewrites = mw.status_rewrites
        self.service = mw.service
        self.query = "/" + mw.query[1:] if mw.query.startswith("/") else "/" + mw.query

    def __call__(self, out, req):
        return _ErrorsFilter(out, req, self)

    def caught(self, status: int) -> int | None:
        """The status to answer with when ``status`` is caught, else None."""
        for low, high in self.ranges:
            if low <= status <= high:
                for r_low, r_high, new in self.rewrites:
                    if r_low <= status <= r_high:
                        return new
                return status
        return None

    def path(self, status: int, original: int, target: bytes) -> bytes:
        path = self.query.replace("{status}", str(status)).replace("{originalStatus}", str(original))
        if "{url}" in path:
            path = path.replace("{url}", quote_plus(target.decode("latin-1"), safe=""))
        return path.encode("latin-1")


class _PageRoute:
    """What the exchange and the forwarded head need of a route, for the page request."""

    __slots__ = ("router", "service", "balancer", "pass_host_header", "middlewares")

    def __init__(self, router: str, service: str, balancer, pass_host_header: bool):
        self.router = router
        self.service = service
        self.balancer = balancer
        self.pass_host_header = pass_host_header
        self.middlewares = _NO_CHAIN


class _ErrorsFilter(Filter):
    """Watches one answer; a caught status turns it into an error page."""

    def __init__(self, out, req, pages: ErrorPages):
        super().__init__(out, req)
        self._pages = pages
        self._state = None
        self._status = 0  # the status the client gets
        self._original = 0

    def _catch(self, original: int) -> bool:
        if self._state is not None:
            return False
        final = self._pages.caught(original)
        if final is None:
            return False
        self._state = _CATCHING
        self._status = final
        self._original = original
        return True

    # -- the answer being watched

    def response_head(self, req, head) -> bool:
        if head.status != 101 and self._catch(head.status):
            # Nothing goes out; the body is still read (and dropped) to keep the connection.
            return req.method == b"HEAD" or head.status in (204, 304)
        return self.out.response_head(req, head)

    def response_body(self, req, data: bytes) -> None:
        if self._state is None:
            self.out.response_body(req, data)

    def response_end(self, req) -> None:
        if self._state is _CATCHING:
            self._fetch()
        elif self._state is None:
            self.out.response_end(req)

    def reply(self, req, reply) -> None:
        # edge's own answer for the service (dispatch: no target, connect failures).
        if self._catch(reply.status):
            req.error = req.error or f"{reply.status} from edge"
            self._fetch()
        else:
            self.out.reply(req, reply)

    def backend_failed(self, req, cause: str, head_sent: bool) -> None:
        conn = self.conn
        if self._state is _CATCHING:
            # The caught answer's body broke off: nothing of it was sent anyway.
            if conn is not None:
                self.out.backend_detached(conn)
            self._fetch()
        elif not head_sent and req.body_done and self._catch(502):
            _log.warn("Router {router}: {cause}", router=req.route.router, cause=cause)
            req.error = cause
            if conn is not None:
                self.out.backend_detached(conn)
            self._fetch()
        else:
            self.out.backend_failed(req, cause, head_sent)

    # -- the page

    def _fetch(self) -> None:
        self._state = _FETCHING
        req = self.req
        out = self.out
        if out.gone(req):
            self._state = _DONE
            return
        proxy = out.proxy
        pages = self._pages
        balancer = (getattr(proxy, "balancers", None) or {}).get(pages.service)
        if balancer is None:
            _log.warn("Router {router}: error page service {service} does not exist",
                      router=req.route.router, service=pages.service)
            self.deliver(None)
            return
        snapshot = getattr(proxy, "snapshot", None)
        spec = snapshot.service(pages.service) if snapshot is not None else None
        page = _exchange.Request(req.scheme, req.client_ip)
        page.method = b"GET"
        page.target = pages.path(self._status, self._original, req.target)
        page.host = req.host
        page.headers = list(req.headers)
        page.head_done = True
        page.body_done = True
        page.started = req.started
        page.route = _PageRoute(req.route.router, pages.service, balancer,
                                spec.pass_host_header if spec is not None else True)
        _exchange.dispatch(_PageSide(self, page, proxy), page)

    def deliver(self, page) -> None:
        """The page (status, reason, headers, body) or None: edge's own text; to the client."""
        if self._state is _DONE:
            return
        self._state = _DONE
        req = self.req
        out = self.out
        if out.gone(req):
            return
        status = self._status
        req.status = status
        if page is None:
            headers = [(b"Content-Type", b"text/plain; charset=utf-8")]
            body = f"{status} {_reason(status).decode()}\n".encode()
        else:
            headers, body = page
        if not req.error:
            req.error = f"error page for {self._original}"
        no_body = out.response_head(req, Head(status, _reason(status), headers, b"%d" % len(body)))
        if not no_body and body:
            out.response_body(req, body)
        out.response_end(req)
        out.flush()


class _PageSide:
    """The exchange's side for the error page request: collects the page, bounded."""

    def __init__(self, owner: _ErrorsFilter, page, proxy):
        self._owner = owner
        self._page = page
        self.proxy = proxy
        self.factory = owner.out.factory
        self.peer = owner.out.peer
        self.conn = None
        self._headers = None
        self._body: list = []
        self._size = 0
        self._over = False
        self._done = False
        self._timer = proxy.reactor.callLater(proxy.limits.backend_response_timeout, self._timed_out)

    def _finish(self, page) -> None:
        if self._done:
            return
        self._done = True
        if self._timer.active():
            self._timer.cancel()
        self._owner.deliver(page)

    def _drop_conn(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            self._page.conn = None
            conn.abandon()

    def _timed_out(self) -> None:
        if self._done:
            return
        _log.warn("Router {router}: error page service {service} did not answer in time",
                  router=self._page.route.router, service=self._page.route.service)
        self._drop_conn()
        self._finish(None)

    # -- called by the exchange
    def reply(self, page, reply) -> None:
        _log.warn("Router {router}: no error page from {service}: {why}",
                  router=page.route.router, service=page.route.service, why=page.error or reply.status)
        self._finish(None)

    def attach(self, page, conn, reused: bool) -> None:
        page.conn = conn
        self.conn = conn
        conn.attach(self, page, reused)
        conn.send(request_bytes(page, self.peer))

    def gone(self, page) -> bool:
        return self._done

    def pause(self, reason: str) -> None:
        pass

    def resume(self, reason: str) -> None:
        pass

    def flush(self) -> None:
        pass

    # -- called by the backend connection
    def touch(self) -> None:
        pass

    def backend_full(self, full: bool) -> None:
        pass

    def backend_detached(self, conn) -> None:
        if self.conn is conn:
            self.conn = None

    def response_head(self, page, head) -> bool:
        self._headers = head.relayable()
        return head.status in (204, 304)

    def response_body(self, page, data: bytes) -> None:
        if self._done:
            return
        self._size += len(data)
        if self._size > PAGE_LIMIT:
            _log.warn("Router {router}: error page from {service} is over {limit} bytes",
                      router=page.route.router, service=page.route.service, limit=PAGE_LIMIT)
            self._drop_conn()
            self._finish(None)
            return
        self._body.append(data)

    def response_end(self, page) -> None:
        self._finish((self._headers or [], b"".join(self._body)))

    def backend_failed(self, page, cause: str, head_sent: bool) -> None:
        _log.warn("Router {router}: no error page from {service}: {cause}",
                  router=page.route.router, service=page.route.service, cause=cause)
        self.conn = None
        self._finish(None)

    def retry(self, page) -> None:
        _exchange.dispatch(self, page)

    def start_tunnel(self, backend, page, rest: bytes) -> None:  # never: the page asks no upgrade
        self.backend_failed(page, "101 to an error page request", True)

    def tunnel_data(self, data: bytes) -> None:
        pass

    def tunnel_closed(self) -> None:
        pass
