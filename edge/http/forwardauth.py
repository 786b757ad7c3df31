"""
Forward authentication (Traefik ``forwardAuth``): ask an auth server first.

For each request edge sends the auth server a ``GET`` (or the request's own
method with ``preserveRequestMethod``) carrying the client's headers and the
``X-Forwarded-Method/Proto/Host/Uri/For`` headers that describe it.  A 2xx
answer lets the request through, with the ``authResponseHeaders`` (and those
matching ``authResponseHeadersRegex``) copied onto it; any other answer is
relayed to the client -- status, headers, body -- and the request goes no
further.  An auth server that cannot be reached, times out, or answers with
more than :data:`MAX_BODY` bytes gets the client a 500: edge never lets a
request past a check it could not make.

The calls go through Twisted's Agent with one persistent connection pool per
TLS setting, shared by the snapshots that use it (:class:`Clients`), so a new
snapshot does not open new connections.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from urllib.parse import urljoin, urlsplit

from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers as TwistedHeaders
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from edge.http.authclient import Answer, AuthClient
from edge.http.middlewares import Reply
from edge.snapshot import ForwardAuth

__all__ = ["ForwardAuthCheck", "Clients", "MAX_BODY", "TIMEOUT", "canonical"]

MAX_BODY = 1024 * 1024  # an auth server's page (a login redirect, a 401) is small
TIMEOUT = 30.0  # Traefik's client timeout for the auth call
CONNECT_TIMEOUT = 5.0

_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
    b"proxy-authorization", b"te", b"trailer", b"transfer-encoding", b"upgrade",
})
# Never copied from the client's request to the auth request: the Agent
# writes its own Host and framing, and the auth request has no body.
_NOT_FORWARDED = _HOP | {b"host", b"content-length", b"expect", b"http2-settings"}
# What Traefik's entry point removes from an untrusted client (and forward
# auth then rebuilds); edge's trusted_proxies play the part of trustedIPs.
_CLIENT_FORWARDED = frozenset({
    b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port",
    b"x-forwarded-uri", b"x-forwarded-method", b"x-forwarded-prefix", b"x-forwarded-server",
    b"x-forwarded-tls-client-cert", b"x-forwarded-tls-client-cert-info", b"x-real-ip",
})
_REPLY_DROP = _HOP | {b"content-length"}
# Written by _auth_headers itself (the client's own are dropped or taken as given).
_SET_HERE = frozenset({b"x-forwarded-for", b"x-forwarded-method", b"x-forwarded-proto", b"x-forwarded-host",
                       b"x-forwarded-uri", b"x-forwarded-port"})
_INTERNAL = Reply(500, b"Internal Server Error", [(b"Content-Type", b"text/plain; charset=utf-8")],
                  b"500 Internal Server Error\n")


def canonical(name: str) -> str:
    """Go's ``http.CanonicalHeaderKey``: ``x-auth-user`` -> ``X-Auth-User``."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


class _TooBig(Exception):
    pass


class _Collect(protocol.Protocol):
    """Reads a response body up to ``limit`` bytes, aborting the connection beyond."""

    def __init__(self, done: defer.Deferred, limit: int):
        self._done = done
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._limit:
            if not self._done.called:
                self._done.errback(_TooBig(f"auth answer over {self._limit} bytes"))
            self.transport.stopProducing()
            return
        self._parts.append(data)

    def connectionLost(self, reason) -> None:
        if self._done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self._done.callback(b"".join(self._parts))
        else:
            self._done.errback(reason)


@implementer(IPolicyForHTTPS)
class _InsecurePolicy:
    """``insecureSkipVerify``: TLS without checking the auth server's certificate."""

    def __init__(self, options):
        self._options = options

    def creatorForNetloc(self, hostname, port):
        return self._options


def _policy(mw: ForwardAuth):
    from twisted.internet import ssl
    from twisted.web.client import BrowserLikePolicyForHTTPS

    client = None
    if mw.tls_cert and mw.tls_key:
        client = ssl.PrivateCertificate.loadPEM(mw.tls_key + "\n" + mw.tls_cert)
    if mw.tls_insecure_skip_verify:
        kwargs = {"verify": False}
        if client is not None:
            kwargs.update(privateKey=client.privateKey.original, certificate=client.original)
        return _InsecurePolicy(ssl.CertificateOptions(**kwargs))
    trust = ssl.Certificate.loadPEM(mw.tls_ca) if mw.tls_ca else None
    if client is None:
        return BrowserLikePolicyForHTTPS(trustRoot=trust)

    @implementer(IPolicyForHTTPS)
    class _WithClientCert:
        def creatorForNetloc(self, hostname, port):
            return ssl.optionsForClientTLS(hostname.decode("ascii"), trustRoot=trust,
                                           clientCertificate=client)

    return _WithClientCert()


class Clients:
    """
    Agents for auth calls, one per TLS setting, kept across snapshots.

    Bounded: past :attr:`limit` settings the oldest agent's pool is closed
    and dropped (a later request makes it again).
    """

    limit = 32

    def __init__(self, reactor):
        self._reactor = reactor
        self._agents: dict[tuple, Agent] = {}
        self._pools: dict[tuple, HTTPConnectionPool] = {}
        self._lean: dict[tuple, AuthClient] = {}

    @staticmethod
    def _key(mw: ForwardAuth) -> tuple:
        return (mw.tls_ca, mw.tls_cert, mw.tls_key, mw.tls_insecure_skip_verify)

    def client(self, mw: ForwardAuth) -> AuthClient:
        """The lean client (edge.http.authclient), for every method but HEAD."""
        key = self._key(mw)
        client = self._lean.get(key)
        if client is None:
            if len(self._lean) >= self.limit:
                self._lean.pop(next(iter(self._lean))).close()
            client = self._lean[key] = AuthClient(self._reactor, _policy(mw), CONNECT_TIMEOUT, MAX_BODY)
        return client

    def agent(self, mw: ForwardAuth) -> Agent:
        """Twisted's Agent, for HEAD (an answer without a body by method)."""
        key = self._key(mw)
        agent = self._agents.get(key)
        if agent is not None:
            return agent
        if len(self._agents) >= self.limit:
            oldest = next(iter(self._agents))
            del self._agents[oldest]
            self._pools.pop(oldest).closeCachedConnections()
        pool = HTTPConnectionPool(self._reactor, persistent=True)
        pool.maxPersistentPerHost = 64
        pool.cachedConnectionTimeout = 30
        # A GET on a pooled connection the auth server had closed is retried once on a
        # new one (Twisted retries only idempotent requests that got no answer).
        pool.retryAutomatically = True
        agent = Agent(self._reactor, contextFactory=_policy(mw), connectTimeout=CONNECT_TIMEOUT, pool=pool)
        self._agents[key] = agent
        self._pools[key] = pool
        return agent

    def close(self):
        """Close every pooled connection (edge is stopping)."""
        pools, self._pools, self._agents = self._pools, {}, {}
        lean, self._lean = self._lean, {}
        for client in lean.values():
            client.close()
        return defer.DeferredList([p.closeCachedConnections() for p in pools.values()])


_shared: dict[int, Clients] = {}


def clients_for(reactor) -> Clients:
    """The one :class:`Clients` of ``reactor`` (snapshots come and go; pools stay)."""
    found = _shared.get(id(reactor))
    if found is None or found._reactor is not reactor:
        found = _shared[id(reactor)] = Clients(reactor)
    return found


class ForwardAuthCheck:
    """The compiled middleware: called with the exchange's request, returns a Deferred."""

    _log = Logger(namespace="edge.http.forwardauth")

    def __init__(self, mw: ForwardAuth, reactor, clients: Clients | None = None):
        self._mw = mw
        self._reactor = reactor
        self._clients = clients or clients_for(reactor)
        self._address = mw.address.encode("ascii")
        parts = urlsplit(mw.address)
        self._scheme = parts.scheme
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        self._head_start = (b" " + target.encode("ascii") + b" HTTP/1.1\r\nHost: "
                            + parts.netloc.encode("ascii") + b"\r\n")
        self._trust = mw.trust_forward_header
        self._allowed = frozenset(h.lower().encode("latin-1") for h in mw.auth_request_headers)
        self._copy = tuple(canonical(h) for h in mw.auth_response_headers)
        self._regex = re.compile(mw.auth_response_headers_regex) if mw.auth_response_headers_regex else None
        self._cookies = frozenset(mw.add_auth_cookies_to_response)

    # -- the auth request

    def _auth_headers(self, request) -> list:
        peer = request.peer
        trusted = peer is not None and peer.trusted
        trust = trusted and self._trust
        allowed = self._allowed
        out: list = []
        prior: dict[bytes, list[bytes]] = {}
        for name, value in request.headers:
            lower = name.lower()
            if lower in _CLIENT_FORWARDED:
                if trusted:
                    prior.setdefault(lower, []).append(value)
                else:
                    continue
            if lower in _NOT_FORWARDED or lower in _SET_HERE or (allowed and lower not in allowed):
                continue
            out.append((name, value))

        def given(name: bytes) -> bytes | None:
            values = prior.get(name)
            return values[0] if trust and values else None

        ip = request.client_ip.encode("ascii", "replace")
        if trust and b"x-forwarded-for" in prior:
            ip = b", ".join(prior[b"x-forwarded-for"]) + b", " + ip
        out.append((b"X-Forwarded-For", ip))
        out.append((b"X-Forwarded-Method", given(b"x-forwarded-method") or request.method))
        scheme = peer.scheme.encode("ascii") if peer is not None else request.scheme.encode("ascii")
        out.append((b"X-Forwarded-Proto", given(b"x-forwarded-proto") or scheme))
        # A trusted proxy's X-Forwarded-Port is copied as any header (Traefik
        # copies it, and sets it only with trustForwardHeader).
        port = prior.get(b"x-forwarded-port", [None])[0] if trusted else None
        if port is not None:
            out.append((b"X-Forwarded-Port", port))
        host = given(b"x-forwarded-host") or request.host
        if host:
            out.append((b"X-Forwarded-Host", host))
        out.append((b"X-Forwarded-Uri", given(b"x-forwarded-uri") or request.target))
        return out

    def __call__(self, request):
        method = request.method if self._mw.preserve_request_method else b"GET"
        headers = self._auth_headers(request)
        if method == b"HEAD":
            agent = self._clients.agent(self._mw)
            d = defer.maybeDeferred(agent.request, method, self._address, TwistedHeaders(_grouped(headers)), None)
            d.addCallback(self._read)
        else:
            head = b"".join([method, self._head_start, *[k + b": " + v + b"\r\n" for k, v in headers], b"\r\n"])
            d = defer.maybeDeferred(self._clients.client(self._mw).request,
                                    self._scheme, self._host, self._port, head)
        d.addTimeout(TIMEOUT, self._reactor)
        d.addCallbacks(self._answer, self._failed, callbackArgs=(request,), errbackArgs=(request,))
        return d

    def _read(self, response):
        collect = None

        def cancel(_d):  # the timeout: stop reading, drop the connection
            if collect is not None and collect.transport is not None:
                collect.transport.stopProducing()

        done: defer.Deferred = defer.Deferred(cancel)
        collect = _Collect(done, MAX_BODY)
        response.deliverBody(collect)
        done.addCallback(lambda body: Answer(
            response.code, response.phrase or b"",
            [(k, v) for k, vs in response.headers.getAllRawHeaders() for v in vs], body))
        return done

    def _failed(self, failure, request):
        self._log.warn(
            "Forward auth {address} for {method} {host}{path}: {cause}; answering 500",
            address=self._mw.address, method=request.method.decode("latin-1"),
            host=request.host.decode("latin-1"), path=request.target.decode("latin-1"),
            cause=failure.getErrorMessage() or failure.type.__name__,
        )
        request.error = f"forward auth failed: {failure.getErrorMessage() or failure.type.__name__}"
        return _INTERNAL

    # -- its answer

    def _answer(self, answer: Answer, request):
        if not 200 <= answer.code < 300:
            return self._denied(answer)
        headers = request.headers
        if self._copy or self._regex is not None:
            listed = {c.lower() for c in self._copy}
            drop = set(listed)
            add: list = []
            for name in self._copy:
                lower = name.lower().encode("latin-1")
                add += [(name.encode("latin-1"), v) for k, v in answer.headers if k.lower() == lower]
            regex = self._regex
            if regex is not None:
                for name, _v in headers:
                    text = name.decode("latin-1")
                    if regex.search(canonical(text)):
                        drop.add(text.lower())
                for name, value in answer.headers:
                    text = canonical(name.decode("latin-1"))
                    if regex.search(text) and text.lower() not in listed:
                        add.append((text.encode("latin-1"), value))
            headers[:] = [(k, v) for k, v in headers if k.decode("latin-1").lower() not in drop] + add
        if self._cookies:
            cookies = []
            for value in (v for k, v in answer.headers if k.lower() == b"set-cookie"):
                name = value.split(b"=", 1)[0].strip().decode("latin-1")
                if name in self._cookies:
                    cookies.append((name.encode("latin-1"), value))
            if cookies:
                request.response_cookies = cookies
        return None

    def _denied(self, answer: Answer) -> Reply:
        headers = []
        for name, value in answer.headers:
            lower = name.lower()
            if lower in _REPLY_DROP:
                continue
            if lower == b"location" and not self._mw.preserve_location_header:
                value = urljoin(self._mw.address, value.decode("latin-1")).encode("latin-1")
            headers.append((name, value))
        try:
            reason = answer.phrase or HTTPStatus(answer.code).phrase.encode("ascii")
        except ValueError:
            reason = b"Unknown"
        return Reply(answer.code, reason, headers, answer.body)


def _grouped(pairs) -> dict:
    out: dict = {}
    for k, v in pairs:
        out.setdefault(k, []).append(v)
    return out


def add_response_cookies(headers: list, cookies) -> list:
    """Traefik ``addAuthCookiesToResponse``: the auth cookies replace the backend's of the same name."""
    names = {name for name, _ in cookies}
    kept = []
    for k, v in headers:
        if k.lower() == b"set-cookie" and v.split(b"=", 1)[0].strip() in names:
            continue
        kept.append((k, v))
    return kept + [(b"Set-Cookie", value) for _, value in cookies]
