"""
Middlewares from labels, compiled once per snapshot into small callables.

A request middleware is called with the proxy's request (attributes
``method``, ``target``, ``headers`` — a list of (name, value) byte pairs —
``host``, ``scheme``, ``client_ip``) and returns None to go on, a
:class:`Reply` to answer at once, or a Deferred firing with either (basic
auth checks bcrypt hashes in a thread).  Response edits are precomputed
header lists the proxy applies to the backend's response head.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from twisted.logger import Logger

from edge.cidr import Networks
from edge.http import htpasswd
from edge.snapshot import Compress, Errors
from edge.snapshot import (
    AddPrefix, BasicAuth, Buffering, CircuitBreaker, ForwardAuth, Headers, InFlightReq, IPAllowList,
    RateLimit, RedirectRegex, RedirectScheme, ReplacePath, ReplacePathRegex, Retry, StripPrefix,
    StripPrefixRegex,
)

__all__ = ["Reply", "Chain", "compile_middlewares", "get_header", "set_header", "remove_header"]


@dataclass
class Reply:
    """A response edge makes itself (redirects, 401, 403, errors)."""

    status: int
    reason: bytes
    headers: list = field(default_factory=list)
    body: bytes = b""


def get_header(headers, name: bytes) -> bytes | None:
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


def remove_header(headers, name: bytes) -> None:
    headers[:] = [(k, v) for k, v in headers if k.lower() != name]


def set_header(headers, name: bytes, value: bytes) -> None:
    lower = name.lower()
    headers[:] = [(k, v) for k, v in headers if k.lower() != lower]
    headers.append((name, value))


def _host_without_port(host: bytes) -> bytes:
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[: end + 1] if end != -1 else host
    return host.split(b":", 1)[0]


def _redirect(request, scheme: str, port: str, permanent: bool) -> Reply:
    host = _host_without_port(request.host or b"")
    default = {"http": "80", "https": "443"}.get(scheme)
    authority = host if not port or port == default else host + b":" + port.encode("ascii")
    location = scheme.encode("ascii") + b"://" + authority + request.target
    safe = request.method in (b"GET", b"HEAD")
    if permanent:
        status, reason = (301, b"Moved Permanently") if safe else (308, b"Permanent Redirect")
    else:
        status, reason = (302, b"Found") if safe else (307, b"Temporary Redirect")
    return Reply(status, reason, [(b"Location", location)], b"")


def _redirect_scheme(mw: RedirectScheme, https_port: str):
    scheme = mw.scheme.lower()
    port = mw.port or (https_port if scheme == "https" else "")

    def redirect_scheme(request):
        if request.scheme == scheme:
            return None
        return _redirect(request, scheme, port, mw.permanent)

    return redirect_scheme


def _encoded(path: str) -> bytes:
    from urllib.parse import quote

    return quote(path, safe="/:@!$&'()*+,;=").encode("ascii")


def _strip_prefix(mw: StripPrefix):
    # Targets arrive normalised (edge.http.target): compare against the
    # prefix in the same encoded form.
    prefixes = tuple(sorted((_encoded(p.rstrip("/")) for p in mw.prefixes), key=len, reverse=True))

    def strip_prefix(request):
        target = request.target
        for prefix in prefixes:
            if not prefix:
                continue
            if target.startswith(prefix):
                rest = target[len(prefix):]
                if rest and rest[:1] not in (b"/", b"?"):
                    continue  # /api must not strip /apiv2
                if not rest.startswith(b"/"):
                    rest = b"/" + rest
                request.target = rest
                request.headers.append((b"X-Forwarded-Prefix", prefix))
                return None
        return None

    return strip_prefix


class _BasicAuth:
    _log = Logger()

    def __init__(self, mw: BasicAuth, reactor):
        self._users = htpasswd.parse_users(mw.users)
        realm = mw.realm.replace('"', "")
        self._challenge = Reply(
            401,
            b"Unauthorized",
            [(b"WWW-Authenticate", f'Basic realm="{realm}"'.encode("latin-1")),
             (b"Content-Type", b"text/plain; charset=utf-8")],
            b"401 Unauthorized\n",
        )
        self._remove = mw.remove_header
        self._user_header = mw.header_field.encode("latin-1")
        self._user_key = self._user_header.lower().replace(b"_", b"-")
        self._reactor = reactor
        self._cache: dict[bytes, bool] = {}

    def _answer(self, request, ok: bool):
        if ok:
            if self._user_header:
                self._name_user(request)
            if self._remove:
                remove_header(request.headers, b"authorization")
            return None
        return self._challenge

    def _name_user(self, request) -> None:
        """headerField: the user the (already checked) Authorization names, for the backend."""
        value = get_header(request.headers, b"authorization") or b""
        encoded = value.strip().partition(b" ")[2]
        user = base64.b64decode(encoded.strip(), validate=True).partition(b":")[0]
        request.headers.append((self._user_header, user))

    def _remember(self, value: bytes, ok: bool) -> bool:
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[value] = ok
        return ok

    def __call__(self, request):
        if self._user_header:  # never the client's own, authenticated or not, in any spelling
            key = self._user_key
            request.headers[:] = [(k, v) for k, v in request.headers if k.lower().replace(b"_", b"-") != key]
        value = get_header(request.headers, b"authorization")
        if value is None:
            return self._challenge
        known = self._cache.get(value)
        if known is not None:
            return self._answer(request, known)
        scheme, _, encoded = value.strip().partition(b" ")
        if scheme.lower() != b"basic":
            return self._challenge
        try:
            user, sep, password = base64.b64decode(encoded.strip(), validate=True).partition(b":")
        except ValueError:
            return self._challenge
        hashed = self._users.get(user.decode("utf-8", "replace")) if sep else None
        if hashed is None:
            return self._answer(request, self._remember(value, False))
        if htpasswd.is_slow(hashed) and self._reactor is not None:
            from twisted.internet.threads import deferToThreadPool

            d = deferToThreadPool(
                self._reactor, self._reactor.getThreadPool(),
                htpasswd.check_password, password, hashed,
            )
            d.addCallback(lambda ok: self._answer(request, self._remember(value, ok)))
            return d
        ok = htpasswd.check_password(password, hashed)
        return self._answer(request, self._remember(value, ok))


def _ip_allow(mw: IPAllowList):
    networks = Networks(mw.source_ranges)
    forbidden = Reply(403, b"Forbidden", [(b"Content-Type", b"text/plain; charset=utf-8")], b"403 Forbidden\n")
    if mw.ip_depth or mw.excluded_ips or mw.use_forwarded_for:
        from edge.http.ratelimit import source_key
        from edge.snapshot import SourceCriterion

        # v1 useXForwardedFor: the client address, or the last X-Forwarded-For
        # entry -- only a trusted proxy's are left by now (an untrusted
        # client's are dropped before routing), and only the entry that proxy
        # wrote is believed (Traefik 1.7 lets in any, which its client can write).
        client_too = mw.use_forwarded_for
        address = source_key(SourceCriterion(ip_depth=mw.ip_depth or int(client_too),
                                             excluded_ips=mw.excluded_ips))

        def ip_allow_by_strategy(request):
            if client_too and request.client_ip in networks:
                return None
            # No such address (too few X-Forwarded-For entries): refused, as Traefik does.
            found = address(request).decode("latin-1")
            return None if found and found in networks else forbidden

        return ip_allow_by_strategy

    def ip_allow(request):
        return None if request.client_ip in networks else forbidden

    return ip_allow


def _custom_request_headers(pairs):
    edits = tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs)

    def custom_request_headers(request):
        for name, value in edits:
            if value:
                set_header(request.headers, name, value)
            else:
                remove_header(request.headers, name.lower())
        return None

    return custom_request_headers


def _ssl_redirect(https_port: str, ssl_proxy: tuple = ()):
    def ssl_redirect(request):
        if request.scheme == "https":
            return None
        if ssl_proxy:
            from edge.http.secure import is_ssl

            if is_ssl(request, ssl_proxy):
                return None
        return _redirect(request, "https", https_port, True)

    return ssl_redirect


@dataclass
class Chain:
    """The compiled middlewares of one router."""

    request: tuple = ()
    # Response headers: names (lower case) to drop, then (name, value) to add.
    response_drop: frozenset = frozenset()
    response_add: tuple = ()
    # Strict-Transport-Security value, and whether to send it on plain HTTP too.
    sts: bytes | None = None
    sts_always: bool = False
    # sslProxyHeaders (lower-case name, value): such a request counts as HTTPS for HSTS.
    ssl_proxy: tuple = ()
    # edge.http.secure.Cors of the headers middlewares with CORS options.
    cors: tuple = ()
    # edge.http.retry.RetryPolicy (or buffering's ExpressionRetry): asked by exchange.error on a 502.
    retry: object = None
    # Response filter makers (compress, errors: edge.http.response_filters), in order.
    response: tuple = ()

    @property
    def empty(self) -> bool:
        return (not self.request and not self.response_drop and not self.response_add and self.sts is None
                and not self.cors)

    def response_headers(self, headers: list, scheme: str, request=None) -> list:
        """``headers`` with this chain's response edits applied (and ``request``'s own)."""
        cookies = getattr(request, "response_cookies", None)
        if cookies:
            from edge.http.forwardauth import add_response_cookies

            headers = add_response_cookies(headers, cookies)
        drop = self.response_drop
        add = list(self.response_add)
        if self.sts is not None and (scheme == "https" or self.sts_always or (
                self.ssl_proxy and request is not None and _is_ssl(request, self.ssl_proxy))):
            drop = drop | {b"strict-transport-security"}
            add.append((b"Strict-Transport-Security", self.sts))
        if drop:
            headers = [(k, v) for k, v in headers if k.lower() not in drop]
        headers = headers + add if add else headers
        for cors in self.cors:
            headers = cors.response(headers, request)
        return headers


def _is_ssl(request, pairs) -> bool:
    from edge.http.secure import is_ssl

    return is_ssl(request, pairs)


_RESPONSE = (Compress, Errors)

_REWRITES = {
    ReplacePath: "replace_path", ReplacePathRegex: "replace_path_regex", AddPrefix: "add_prefix",
    StripPrefixRegex: "strip_prefix_regex", RedirectRegex: "redirect_regex",
}


def _make_anew(middleware, make):
    return make()


def compile_middlewares(middlewares, *, reactor=None, https_port: str = "", keep=None) -> Chain:
    """
    Compile a router's middlewares, in order, into a :class:`Chain`.

    ``keep(middleware, make)`` returns the runtime object of a middleware
    that counts (rate and in-flight limits, circuit breakers), kept across
    rebuilds (:class:`edge.http.middleware_state.MiddlewareState`); without
    it each compile makes new ones.
    """
    if keep is None:
        keep = _make_anew
    request = []
    drop: set[bytes] = set()
    add: list = []
    sts = None
    sts_always = False
    ssl_proxy: tuple = ()
    cors: list = []
    retry = expression_retry = None
    response: list = []
    for mw in middlewares:
        if isinstance(mw, RedirectScheme):
            request.append(_redirect_scheme(mw, https_port))
        elif isinstance(mw, StripPrefix):
            request.append(_strip_prefix(mw))
        elif isinstance(mw, BasicAuth):
            request.append(_BasicAuth(mw, reactor))
        elif isinstance(mw, IPAllowList):
            request.append(_ip_allow(mw))
        elif isinstance(mw, ForwardAuth):
            from edge.http.forwardauth import ForwardAuthCheck

            if reactor is None:
                from twisted.internet import reactor as default_reactor

                reactor = default_reactor
            request.append(ForwardAuthCheck(mw, reactor))
        elif type(mw) in _REWRITES:
            from edge.http import rewrite

            request.append(getattr(rewrite, _REWRITES[type(mw)])(mw))
        elif isinstance(mw, (RateLimit, InFlightReq)):
            from edge.http.ratelimit import InFlightLimiter, RateLimiter

            if isinstance(mw, InFlightReq):
                request.append(keep(mw, lambda: InFlightLimiter(mw)))
            else:
                if reactor is None:
                    from twisted.internet import reactor as default_reactor

                    reactor = default_reactor
                request.append(keep(mw, lambda: RateLimiter(mw, reactor)))
        elif isinstance(mw, Headers):
            from edge.http import secure

            if mw.ssl_proxy_headers:
                ssl_proxy = secure.ssl_by_proxy_headers(mw.ssl_proxy_headers)
            if mw.allowed_hosts and not mw.is_development:
                request.append(secure.AllowedHosts(mw))
            if mw.ssl_redirect and not mw.is_development:
                request.append(_ssl_redirect(https_port, ssl_proxy))
            if secure.has_cors(mw):
                cors_one = secure.Cors(mw)
                request.append(cors_one.preflight)
                cors.append(cors_one)
            for name, value in secure.security_headers(mw):
                drop.add(name.lower())
                add = [(k, v) for k, v in add if k.lower() != name.lower()] + [(name, value)]
            if mw.custom_request:
                request.append(_custom_request_headers(mw.custom_request))
            for name, value in mw.custom_response:
                lower = name.lower().encode("latin-1")
                drop.add(lower)
                add = [(k, v) for k, v in add if k.lower() != lower]
                if value:
                    add.append((name.encode("latin-1"), value.encode("latin-1")))
            if (mw.sts_seconds > 0 or mw.force_sts_header) and not mw.is_development:
                value = f"max-age={mw.sts_seconds}"
                if mw.sts_include_subdomains:
                    value += "; includeSubDomains"
                if mw.sts_preload:
                    value += "; preload"
                sts = value.encode("ascii")
                sts_always = mw.force_sts_header
        elif isinstance(mw, (Retry, CircuitBreaker, Buffering)):
            if reactor is None:
                from twisted.internet import reactor as default_reactor

                reactor = default_reactor
            if isinstance(mw, Retry):
                from edge.http.retry import RetryPolicy

                retry = retry or RetryPolicy(mw, reactor)
            elif isinstance(mw, CircuitBreaker):
                from edge.http.circuitbreaker import Breaker

                request.append(keep(mw, lambda: Breaker(mw, reactor)))
            else:
                from edge.http.buffering import ExpressionRetry, RequestBuffer

                request.append(RequestBuffer(mw))
                answers = None
                if mw.retry_expression:
                    answers = ExpressionRetry(mw.retry_expression, reactor)
                    expression_retry = expression_retry or answers
                if mw.max_response_body_bytes or answers is not None:
                    from edge.http.buffering import ResponseBuffer

                    response.append(ResponseBuffer(mw, answers))
        elif type(mw) in _RESPONSE:
            from edge.http import compress, errorpages

            response.append(compress.CompressMiddleware(mw) if isinstance(mw, Compress)
                            else errorpages.ErrorPages(mw))
        else:
            raise ValueError(f"unknown middleware {type(mw).__name__}")
    return Chain(
        request=tuple(request),
        response_drop=frozenset(drop),
        response_add=tuple(add),
        sts=sts,
        sts_always=sts_always,
        ssl_proxy=ssl_proxy,
        cors=tuple(cors),
        retry=retry or expression_retry,
        response=tuple(response),
    )
