"""
The exchange both client framings call: route -> middlewares -> balancer -> pool.

A framing (:mod:`edge.http.http1` for an HTTP/1.1 connection, :mod:`edge.http.http2`
for one HTTP/2 stream) parses a request head into a :class:`Request`,
checks its own framing limits, then calls :func:`route`.  From there the
request takes the same path whatever brought it: the entry point's redirect,
the routing table, the router's middlewares, the balancer's choice (sticky
cookie, passive health), a pooled or new backend connection, the next
target when a connect fails, and 502/503 answers when none is left.  The
framing gets the request back through the methods of its side
(:class:`ExchangeSide`), and the backend connection
(:class:`~edge.http.backend.BackendProtocol`) streams the answer to it.
"""

from __future__ import annotations

from typing import Protocol as _Protocol

from twisted.logger import Logger

from edge.http.balancer import target_key
from edge.http.forwarding import apply_trusted_scheme
from edge.http.middlewares import Reply, _redirect as redirect
from edge.http.response_filters import interpose

__all__ = ["Request", "ExchangeSide", "route", "dispatch", "error", "REASONS", "TEXT"]

_log = Logger(namespace="edge.http.exchange")

REASONS = {
    400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed",
    408: b"Request Timeout", 413: b"Content Too Large", 414: b"URI Too Long",
    417: b"Expectation Failed", 431: b"Request Header Fields Too Large",
    499: b"Client Closed Request", 500: b"Internal Server Error",
    501: b"Not Implemented", 502: b"Bad Gateway", 503: b"Service Unavailable",
    504: b"Gateway Timeout", 505: b"HTTP Version Not Supported",
}
TEXT = (b"Content-Type", b"text/plain; charset=utf-8")
NO_TARGET = "no target accepted the connection"  # every target refused or timed out: nothing was sent


def add_on_finish(req, fn) -> None:
    """Call ``fn`` too when ``req`` is done (after what is already registered)."""
    previous = req.on_finish
    if previous is None:
        req.on_finish = fn
    else:
        def both():
            previous()
            fn()

        req.on_finish = both


class Request:
    """One request's state; class attributes are the defaults (cheap to create)."""

    method = b""
    target = b""
    version = "1.1"
    host = b""
    keep_alive = True
    upgrade = False
    upgrade_value = b""
    chunked = False
    transfer_encoding = None
    content_length = None
    head_done = False
    body_done = False
    pending_bytes = 0
    connection_tokens = None
    expect = False
    header_bytes = 0
    header_count = 0
    body_bytes = 0
    route = None
    conn = None
    started = 0.0
    status = 0
    sent_bytes = 0
    target_url = ""
    replied = False
    set_cookie = None
    retried = False
    error = ""
    # Set for routers with middlewares: the connection's Peer (forward auth
    # needs whether it is a trusted proxy) and Set-Cookie pairs a middleware
    # adds to the answer (forward auth's addAuthCookiesToResponse).
    peer = None
    response_cookies = None
    # Called once when the request is done (answered or given up): inFlightReq.
    on_finish = None
    # The retry middleware's attempts so far, and a body the buffering
    # middleware holds whole (a tuple of bytes) so that an attempt can send it again.
    attempts = 1
    held = None
    # The response filter nearest the backend (compress, errors), for routers
    # with response middlewares: the side the backend connection talks to.
    response_filter = None
    # Whether a header named X... may be present (the untrusted-forwarded
    # sweep runs only then): unknown unless the framing tracks it (HTTP/1.1).
    x_headers = True
    # HTTP/1.1 response framing, set by the h1 side per exchange.
    body_mode = 0
    close_client = False
    # From an h2c backend (edge.http.backend_h2): the response's trailers
    # ((name, value) pairs, set before response_end), and whether the response
    # was complete in its head (HEADERS with END_STREAM: gRPC's Trailers-Only).
    trailers = None
    response_in_head = False

    def __init__(self, scheme: str, client_ip: str):
        self.scheme = scheme
        self.client_ip = client_ip
        self.headers: list = []
        self.pending: list = []
        self.tried: set = set()


class ExchangeSide(_Protocol):
    """
    What a framing offers the exchange and the backend connection.

    For HTTP/1.1 it is the client connection; for HTTP/2 one stream.
    """

    factory: object  # the entry point: .table, .redirect, .name
    proxy: object  # edge.http.proxy.Proxy

    # -- called by the exchange
    def reply(self, req: Request, reply: Reply) -> None: ...
    def attach(self, req: Request, conn, reused: bool) -> None: ...
    def gone(self, req: Request) -> bool: ...
    def pause(self, reason: str) -> None: ...
    def resume(self, reason: str) -> None: ...
    def flush(self) -> None: ...

    # -- called by the backend connection
    def touch(self) -> None: ...
    def backend_full(self, full: bool) -> None: ...
    def backend_detached(self, conn) -> None: ...
    def response_head(self, req: Request, head) -> bool: ...
    def response_body(self, req: Request, data: bytes) -> None: ...
    def response_end(self, req: Request) -> None: ...
    def backend_failed(self, req: Request, cause: str, head_sent: bool) -> None: ...
    def retry(self, req: Request) -> None: ...


def route(side, req: Request) -> None:
    """A request head is complete and checked: answer it or send it on its way."""
    factory = side.factory
    challenges = factory.challenges
    if challenges is not None and req.target.startswith(b"/.well-known/acme-challenge/"):
        # ACME HTTP-01 answers (plain-HTTP entry points), before redirects and routing.
        reply = challenges.respond(req.host, req.target)
        if reply is not None:
            req.error = "ACME challenge"
            side.reply(req, reply)
            return
    if factory.redirect is not None:
        scheme, port = factory.redirect
        req.error = "entry point redirect"
        side.reply(req, redirect(req, scheme, port, True))
        return
    if req.x_headers and not side.peer.trusted:
        _drop_untrusted_forwarded(req)
    table = factory.table
    matched = table.match(req.method, req.host, req.target, req.headers, req.client_ip) if table else None
    if matched is None:
        req.error = "no route"
        side.reply(req, side.proxy.not_found)
        return
    req.route = matched
    if side.peer.trusted:
        apply_trusted_scheme(req)
    chain = matched.middlewares.request
    if chain:
        req.peer = side.peer
        _run_middlewares(side, req, chain, 0)
    elif matched.middlewares.response:
        dispatch(interpose(side, req, matched.middlewares.response), req)
    else:
        dispatch(side, req)


# The forwarding headers Traefik's entry point deletes from clients it does
# not trust, before routing: Headers rules, ipStrategy, rate-limit sources,
# stripPrefix and the backend must not see an address, prefix, URI or method
# the client chose (edge writes its own X-Forwarded-For/Proto/Host/Port).
_CLIENT_FORWARDED = frozenset({
    b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port",
    b"x-forwarded-server", b"x-forwarded-uri", b"x-forwarded-method", b"x-forwarded-prefix",
    b"x-forwarded-scheme", b"x-forwarded-tls-client-cert", b"x-forwarded-tls-client-cert-info",
    b"x-scheme", b"x-real-ip",
})


def _drop_untrusted_forwarded(req: Request) -> None:
    """Remove those headers, in either spelling (``X_Forwarded_For`` is one to CGI/WSGI backends)."""
    headers = req.headers
    for name, _value in headers:
        if name[:2] in (b"X-", b"x-", b"X_", b"x_"):
            break
    else:
        return  # the common case: no X- header at all
    headers[:] = [(k, v) for k, v in headers
                  if k[:1] not in b"Xx" or k.lower().replace(b"_", b"-") not in _CLIENT_FORWARDED]


def _run_middlewares(side, req: Request, chain, index: int) -> None:
    for i in range(index, len(chain)):
        result = chain[i](req)
        if result is None:
            continue
        if isinstance(result, Reply):
            req.error = "answered by middleware"
            side.reply(req, result)
            return
        take_over = getattr(result, "take_over", None)
        if take_over is not None:
            # The middleware drives the request on (buffering reads the body
            # first) and calls proceed() to run the rest of the chain.
            take_over(side, req, lambda i=i: _run_middlewares(side, req, chain, i + 1))
            return
        # A Deferred (a bcrypt check in a thread).
        side.pause("middleware")

        def resumed(outcome, i=i):
            side.resume("middleware")
            if side.gone(req):
                return
            if isinstance(outcome, Reply):
                req.error = "answered by middleware"
                side.reply(req, outcome)
            else:
                _run_middlewares(side, req, chain, i + 1)
            side.flush()

        def failed(f):
            _log.failure("Middleware failed on router {router}", f, router=req.route.router)
            side.resume("middleware")
            if not side.gone(req):
                error(side, req, 500, "middleware failed")
                side.flush()

        result.addCallbacks(resumed, failed)
        return
    response = req.route.middlewares.response
    dispatch(interpose(side, req, response) if response else side, req)


def dispatch(side, req: Request) -> None:
    """Pick a target (skipping those tried) and get a connection to it."""
    balancer = req.route.balancer
    if balancer is None or not len(balancer):
        error(side, req, 503, "no running targets")
        return
    index, set_cookie = balancer.choose(req.tried, req.headers)
    if index is None:
        if req.tried:
            error(side, req, 502, NO_TARGET)
        else:
            error(side, req, 503, "no healthy targets")
        return
    if set_cookie is not None:
        req.set_cookie = set_cookie
    req.tried.add(index)
    req.target_url = balancer.urls[index]
    key = balancer.keys[index]
    proxy = side.proxy
    conn = proxy.pool.take(key)
    if conn is not None:
        side.attach(req, conn, True)
        return
    d = proxy.pool.connect(key)
    d.addCallbacks(_connected, _connect_failed, callbackArgs=(side, req),
                   errbackArgs=(side, req, balancer.targets[index]))


def _connected(conn, side, req: Request) -> None:
    proxy = side.proxy
    proxy.health.connect_succeeded(conn.key)
    if side.gone(req):
        proxy.pool.put(conn)
        return
    side.attach(req, conn, False)
    side.flush()


def _connect_failed(failure, side, req: Request, target) -> None:
    proxy = side.proxy
    backoff = proxy.health.connect_failed(target_key(target))
    proxy.connect_failed(req.route.service)
    _log.warn(
        "Router {router}: cannot connect to {target}: {cause}; skipping it for {backoff:.0f}s",
        router=req.route.router, target=target.url,
        cause=failure.getErrorMessage(), backoff=backoff,
    )
    if side.gone(req):
        return
    req.error = f"connect to {target.url} failed: {failure.getErrorMessage()}"
    dispatch(side, req)
    side.flush()


def error(side, req: Request, status: int, cause: str) -> None:
    """Answer ``req`` with an error of edge's own, and log why."""
    r = req.route
    if status == 502 and r is not None and r.middlewares.retry is not None:
        if r.middlewares.retry.again(side, req, cause, cause == NO_TARGET):
            return
    _log.warn(
        "Router {router}: {status} for {method} {host}{path}: {cause}",
        router=r.router if r else "-", status=status,
        method=req.method.decode("latin-1"), host=req.host.decode("latin-1"),
        path=req.target.decode("latin-1"), cause=req.error or cause,
    )
    if not req.error:
        req.error = cause
    side.reply(req, Reply(
        status, REASONS[status], [TEXT],
        f"{status} {REASONS[status].decode()}: {cause}\n".encode(),
    ))
