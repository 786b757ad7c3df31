"""
The security and CORS options of Traefik's ``headers`` middleware.

Traefik runs unrolled/secure for the security options (``frameDeny``,
``contentTypeNosniff``, ``allowedHosts``, ``sslProxyHeaders``, ...) and its
own CORS handling (``accessControl*``); this module does the same on edge's
request object and response header lists.  ``isDevelopment`` turns off what
unrolled/secure turns off in development: allowed hosts, the SSL redirect
and HSTS.
"""

from __future__ import annotations

import re

from edge.http.middlewares import Reply, get_header
from edge.snapshot import Headers

__all__ = ["security_headers", "AllowedHosts", "Cors", "ssl_by_proxy_headers", "has_cors"]


def security_headers(mw: Headers) -> list[tuple[bytes, bytes]]:
    """The response headers the security options always set."""
    out = []

    def put(name: str, value: str):
        out.append((name.encode("latin-1"), value.encode("latin-1")))

    if mw.custom_frame_options_value:
        put("X-Frame-Options", mw.custom_frame_options_value)
    elif mw.frame_deny:
        put("X-Frame-Options", "DENY")
    if mw.content_type_nosniff:
        put("X-Content-Type-Options", "nosniff")
    if mw.custom_browser_xss_value:
        put("X-XSS-Protection", mw.custom_browser_xss_value)
    elif mw.browser_xss_filter:
        put("X-XSS-Protection", "1; mode=block")
    if mw.content_security_policy:
        put("Content-Security-Policy", mw.content_security_policy)
    if mw.content_security_policy_report_only:
        put("Content-Security-Policy-Report-Only", mw.content_security_policy_report_only)
    if mw.referrer_policy:
        put("Referrer-Policy", mw.referrer_policy)
    if mw.permissions_policy:
        put("Permissions-Policy", mw.permissions_policy)
    if mw.feature_policy:
        put("Feature-Policy", mw.feature_policy)
    return out


def _forwarded(request, name: bytes) -> bytes | None:
    """A header's value; ``X-Forwarded-*`` only from a trusted proxy (Traefik's entry point drops the others)."""
    if name.startswith(b"x-forwarded-") or name == b"x-real-ip":
        peer = getattr(request, "peer", None)
        if peer is None or not peer.trusted:
            return None
    return get_header(request.headers, name)


def ssl_by_proxy_headers(pairs) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in pairs)


def is_ssl(request, proxy_pairs) -> bool:
    """The request came over HTTPS: its scheme, or an ``sslProxyHeaders`` pair it carries."""
    if request.scheme == "https":
        return True
    for name, value in proxy_pairs:
        if _forwarded(request, name) == value:
            return True
    return False


class AllowedHosts:
    """``allowedHosts``: other hosts get unrolled/secure's 500 "Bad Host"."""

    _bad = Reply(500, b"Internal Server Error", [(b"Content-Type", b"text/plain; charset=utf-8")], b"Bad Host\n")

    def __init__(self, mw: Headers):
        self._hosts = frozenset(h.lower().encode("latin-1") for h in mw.allowed_hosts)
        self._proxy = tuple(h.lower().encode("latin-1") for h in mw.hosts_proxy_headers)

    def __call__(self, request):
        host = request.host or b""
        for name in self._proxy:
            value = _forwarded(request, name)
            if value:
                host = value
                break
        return None if host.lower() in self._hosts else self._bad


def has_cors(mw: Headers) -> bool:
    return bool(mw.access_control_allow_origin_list or mw.access_control_allow_origin_list_regex
                or mw.access_control_allow_methods or mw.access_control_allow_headers
                or mw.access_control_expose_headers or mw.access_control_allow_credentials
                or mw.access_control_max_age)


class Cors:
    """Traefik's CORS: preflights answered by edge, allowed origins named on answers."""

    def __init__(self, mw: Headers):
        self._any = "*" in mw.access_control_allow_origin_list
        self._origins = frozenset(o.encode("latin-1") for o in mw.access_control_allow_origin_list)
        self._regexes = tuple(re.compile(r) for r in mw.access_control_allow_origin_list_regex)
        self._credentials = mw.access_control_allow_credentials
        self._vary = mw.add_vary_header
        join = lambda items: ", ".join(items).encode("latin-1")  # noqa: E731
        self._methods = join(mw.access_control_allow_methods)
        self._headers = join(mw.access_control_allow_headers)
        self._expose = join(mw.access_control_expose_headers)
        self._max_age = mw.access_control_max_age

    def _allowed(self, origin: bytes | None) -> bytes | None:
        if self._any:
            return b"*"
        if not origin:
            return None
        if origin in self._origins:
            return origin
        text = origin.decode("latin-1")
        if any(r.search(text) for r in self._regexes):
            return origin
        return None

    def preflight(self, request):
        """An OPTIONS with Origin and Access-Control-Request-Method is answered here, 200."""
        if request.method != b"OPTIONS":
            return None
        headers = request.headers
        origin = get_header(headers, b"origin")
        if not origin or not get_header(headers, b"access-control-request-method"):
            return None
        out = []
        if self._credentials:
            out.append((b"Access-Control-Allow-Credentials", b"true"))
        if self._headers:
            out.append((b"Access-Control-Allow-Headers", self._headers))
        if self._methods:
            out.append((b"Access-Control-Allow-Methods", self._methods))
        allowed = self._allowed(origin)
        if allowed is not None:
            out.append((b"Access-Control-Allow-Origin", allowed))
        if self._max_age:
            out.append((b"Access-Control-Max-Age", b"%d" % self._max_age))
        return Reply(200, b"OK", out, b"")

    def response(self, headers: list, request) -> list:
        """The CORS headers of an ordinary answer."""
        if request is None:
            return headers
        allowed = self._allowed(get_header(request.headers, b"origin"))
        if allowed is None:
            return headers
        drop = {b"access-control-allow-origin", b"access-control-allow-credentials",
                b"access-control-expose-headers"}
        out = [(k, v) for k, v in headers if k.lower() not in drop]
        out.append((b"Access-Control-Allow-Origin", allowed))
        if self._vary and allowed != b"*":
            out.append((b"Vary", b"Origin"))
        if self._credentials:
            out.append((b"Access-Control-Allow-Credentials", b"true"))
        if self._expose:
            out.append((b"Access-Control-Expose-Headers", self._expose))
        return out
