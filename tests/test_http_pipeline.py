"""
One test table, two client framings.

Every row is a request, what the backend must (or must not) receive, and
what the client must get back.  Each row runs through the HTTP/1.1 framing
(:class:`edge.http.http1.ServerProtocol`) and the HTTP/2 framing
(:class:`edge.http.http2.HTTP2Connection`, driven by an ``h2`` client
connection) in memory: StringTransports on both sides, a Clock for time,
the real exchange, routing table, middlewares, balancer, pool and
:class:`edge.http.backend.BackendProtocol`.
"""

from __future__ import annotations

import io
import json
import socket
import struct
from dataclasses import dataclass, field, replace

import h2.config
import h2.connection
import h2.events
import httptools
import pytest
from twisted.internet import defer, error
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols import policies

from edge.config import Config, EntryPoint, HTTPConfig
from edge.discovery.publisher import SnapshotPublisher
from edge.http.accesslog import AccessLog
from edge.http.backend import BackendProtocol
from edge.http.http1 import ServerProtocol
from edge.http.service import HTTPService
from edge import metrics
from edge.rules import Host
from edge.snapshot import (
    AddPrefix, BackendService, BasicAuth, Buffering, CircuitBreaker, Compress, Errors, ForwardAuth, Headers,
    InFlightReq, IPAllowList, RateLimit, RedirectRegex, RedirectScheme, ReplacePath, ReplacePathRegex, Retry,
    Router, Snapshot, SourceCriterion, StickyCookie, StripPrefix, StripPrefixRegex, Target,
)


class Transport(StringTransport):
    def __init__(self, host="127.0.0.1"):
        super().__init__(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
            peerAddress=IPv4Address("TCP", host, 40000),
        )
        self.aborted = False

    def abortConnection(self):
        self.aborted = True
        self.loseConnection()


LIVE = ("http", "10.9.9.9", 80)
DEAD = ("http", "10.9.9.8", 80)


def _snapshot(middlewares=()):
    return Snapshot.build(
        routers=[
            Router("web", Host(("web.test",)), "Host(`web.test`)", "svc"),
            # The middleware rows' router.
            Router("mw", Host(("mw.test",)), "Host(`mw.test`)", "svc", middlewares=tuple(middlewares)),
            Router("two", Host(("two.test",)), "Host(`two.test`)", "svc2"),
            Router("sticky", Host(("sticky.test",)), "Host(`sticky.test`)", "svc3"),
            Router("auth", Host(("auth.test",)), "Host(`auth.test`)", "svc",
                   middlewares=(BasicAuth(("u:$apr1$x$y",)),)),
        ],
        services=[
            BackendService("svc", (Target("t1", "10.9.9.9", 80),)),
            # The dead target first in line: the balancer's round robin starts at it.
            BackendService("svc2", (Target("t0", "10.9.9.8", 80), Target("t1", "10.9.9.9", 80))),
            BackendService("svc3", (Target("t1", "10.9.9.9", 80),), sticky=StickyCookie()),
        ],
    )


class World:
    """
    An HTTP service on a memory reactor (a Clock that records connects and
    listens) whose backend connections are StringTransports.
    """

    def __init__(self, http=HTTPConfig(), redirect=False, middlewares=(), log_format="json",
                 entrypoints=None, tls_context=None):
        self.clock = MemoryReactorClock()
        if entrypoints is None:
            entrypoints = [EntryPoint("web", "tcp:1")]
            if redirect:
                entrypoints = [EntryPoint("web", "tcp:1", redirect_to="websecure"),
                               EntryPoint("websecure", "tcp:2", tls=True)]
        config = Config(entrypoints=tuple(entrypoints), http=http)
        publisher = SnapshotPublisher(self.clock, debounce=0)
        publisher.report("t", _snapshot(middlewares))
        self.service = HTTPService(config, publisher, self.clock, tls_context=tls_context)
        publisher.subscribe(self.service.apply)
        self.factory = self.service.factories[entrypoints[0].name]
        self.log = io.StringIO()
        self.log_format = log_format
        self.service.proxy.access_log = AccessLog(self.log, log_format, wall=lambda: 0.0)
        self.backends: list[tuple[BackendProtocol, Transport]] = []
        self.service.pool.connect = self._connect

    def _connect(self, key):
        if key == DEAD:
            return defer.fail(error.ConnectionRefusedError("refused"))
        return defer.succeed(self._backend(key))

    def _backend(self, key):
        backend = BackendProtocol(key, self.service.pool, self.service.config.http)

        class Connected:
            def connected(self, protocol):
                pass

        backend.factory = Connected()
        transport = Transport(key[1])
        backend.makeConnection(transport)
        self.backends.append((backend, transport))
        return backend

    def backend_bytes(self) -> bytes:
        return b"".join(t.value() for _, t in self.backends)

    def answer(self, response: bytes):
        """The last backend connection answers."""
        backend, _ = self.backends[-1]
        backend.dataReceived(response)

    def log_lines(self):
        lines = [line for line in self.log.getvalue().splitlines() if line]
        return [json.loads(line) for line in lines] if self.log_format == "json" else lines

    def auth_server(self, answer: bytes) -> bytes:
        """The forward-auth server (the last connection edge opened) answers; returns what it was asked."""
        self.clock.advance(0)
        host, port, factory, _timeout, _bind = self.clock.tcpClients[-1]
        protocol = factory.buildProtocol(None)
        transport = Transport(host)
        protocol.makeConnection(transport)
        asked = transport.value()
        protocol.dataReceived(answer)
        return asked


@dataclass
class Answer:
    status: int | None = None
    headers: list = field(default_factory=list)
    body: bytes = b""
    reset: bool = False

    def header(self, name: bytes):
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


class H1Client:
    name = "http/1.1"

    def __init__(self, world: World, listening=None, source="127.0.0.1", preamble=b""):
        """A connection to ``world.factory``, or through ``listening`` (what edge listens with) from ``source``."""
        self.world = world
        self.transport = Transport(source)
        if listening is None:
            self.server = ServerProtocol()
            self.server.factory = world.factory
        else:
            self.server = listening.buildProtocol(self.transport.getPeer())
        self.server.makeConnection(self.transport)
        self._preamble = preamble  # sent before the first request (a PROXY header)

    def send(self, method, path, host, headers=(), body=None):
        lines = [self._preamble, b"%s %s HTTP/1.1\r\n" % (method, path)]
        self._preamble = b""
        if host is not None:
            lines.append(b"Host: %s\r\n" % host)
        for k, v in headers:
            lines.append(b"%s: %s\r\n" % (k, v))
        if body is not None:
            lines.append(b"Content-Length: %d\r\n" % len(body))
        lines.append(b"\r\n")
        self.server.dataReceived(b"".join(lines) + (body or b""))

    def answer(self) -> Answer:
        answer = Answer()

        class P:
            def on_header(self, k, v):
                answer.headers.append((k, v))

            def on_body(self, b):
                answer.body += b

        parser = httptools.HttpResponseParser(P())
        data = self.transport.value()
        if data:
            try:
                parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                pass
            answer.status = parser.get_status_code()
        answer.reset = self.transport.aborted
        return answer


class H2Client:
    name = "h2"

    def __init__(self, world: World, listening=None, source="127.0.0.1", preamble=b""):
        self.world = world
        self.transport = Transport(source)
        if listening is None:
            # Through the hand-off a TLS connection takes when ALPN picked h2.
            self.transport.negotiatedProtocol = b"h2"
            self.server = ServerProtocol()
            self.server.factory = world.factory
        else:
            self.server = listening.buildProtocol(self.transport.getPeer())
        self.server.makeConnection(self.transport)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.h2.initiate_connection()
        self.server.dataReceived(preamble + self.h2.data_to_send())
        self.events = []
        self._pump()

    def _pump(self):
        self.world.clock.advance(0)  # edge writes HTTP/2 output once per reactor turn
        data = self.transport.value()
        self.transport.clear()
        if data:
            self.events += self.h2.receive_data(data)
            out = self.h2.data_to_send()
            if out:
                self.server.dataReceived(out)
                self._pump()

    def send(self, method, path, host, headers=(), body=None):
        sid = self.h2.get_next_available_stream_id()
        self.sid = sid
        fields = [(b":method", method), (b":path", path), (b":scheme", b"https")]
        if host is not None:
            fields.append((b":authority", host))
        fields += [(k.lower(), v) for k, v in headers]
        if body is not None:
            fields.append((b"content-length", b"%d" % len(body)))
        self.h2.send_headers(sid, fields, end_stream=body is None)
        if body is not None:
            self.h2.send_data(sid, body, end_stream=True)
        self.server.dataReceived(self.h2.data_to_send())
        self._pump()

    def answer(self) -> Answer:
        self._pump()
        answer = Answer()
        for e in self.events:
            if getattr(e, "stream_id", None) != self.sid:
                continue
            if isinstance(e, h2.events.ResponseReceived):
                answer.headers = [(k, v) for k, v in e.headers if k != b":status"]
                answer.status = int(dict(e.headers)[b":status"])
            elif isinstance(e, h2.events.DataReceived):
                answer.body += e.data
            elif isinstance(e, h2.events.StreamReset):
                answer.reset = e.error_code != 0
        return answer


@dataclass
class Row:
    name: str
    method: bytes = b"GET"
    path: bytes = b"/x"
    host: bytes | None = b"web.test"
    headers: tuple = ()
    body: bytes | None = None
    # The backend's answer (None: the backend must receive nothing).
    response: bytes | None = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    # Lines the backend's request must start with / contain / lack.
    backend_starts: bytes = b""
    backend_has: tuple = ()
    backend_lacks: tuple = ()
    status: int = 200
    body_out: bytes | None = None
    headers_out: tuple = ()
    lacks_out: tuple = ()
    http: HTTPConfig = HTTPConfig()
    redirect: bool = False
    after: str = ""  # "timeout": advance the clock past the backend timeout before the answer
    # The router "mw" (host mw.test) gets these middlewares.
    middlewares: tuple = ()
    # A forward-auth server's answer, and lines edge's auth request must contain.
    auth: bytes | None = None
    auth_has: tuple = ()
    # A second backend exchange after the first answer (an error page, a retried attempt):
    # its request must start with ``then_starts``, and it gets ``then``.
    then: bytes | None = None
    then_starts: bytes = b""


ROWS = [
    Row("routed GET", backend_starts=b"GET /x HTTP/1.1\r\nHost: web.test\r\n",
        backend_has=(b"X-Forwarded-For: 127.0.0.1\r\n", b"X-Forwarded-Host: web.test\r\n",
                     b"X-Real-Ip: 127.0.0.1\r\n"),
        body_out=b"hello"),
    # Traefik's entry point deletes these from a client it does not trust, with or without
    # middlewares on the router; edge writes its own X-Forwarded-For/Proto/Host/Port.
    Row("no middlewares: an untrusted client's X-Forwarded-Prefix/Uri/Method/Server do not reach the backend",
        headers=((b"X-Forwarded-Prefix", b"/evil"), (b"X-Forwarded-Uri", b"/evil-uri"),
                 (b"X-Forwarded-Method", b"EVILMETHOD"), (b"X-Forwarded-Server", b"evil-server"),
                 (b"X_Forwarded_For", b"203.0.113.66"), (b"X-Forwarded_Proto", b"evil-proto")),
        backend_starts=b"GET /x HTTP/1.1\r\n", backend_has=(b"X-Forwarded-For: 127.0.0.1\r\n",),
        backend_lacks=(b"evil", b"EVILMETHOD", b"203.0.113.66")),
    Row("no middlewares: a trusted proxy's X-Forwarded-Prefix and X-Forwarded-Uri are kept",
        headers=((b"X-Forwarded-Prefix", b"/outer"), (b"X-Forwarded-Uri", b"/outer/x")),
        http=HTTPConfig(trusted_proxies=("127.0.0.1/32",)),
        backend_has=(b"X-Forwarded-Prefix: /outer\r\n", b"X-Forwarded-Uri: /outer/x\r\n")),
    Row("dot-segments are removed before matching and forwarding", path=b"/a/%2e%2e/b/./c",
        backend_starts=b"GET /b/c HTTP/1.1\r\n"),
    Row("an encoded slash is refused", path=b"/a%2fb", response=None, status=400),
    Row("no route", host=b"nothing.test", response=None, status=404),
    # Bytes no request-target may hold (RFC 3986 §2, RFC 9112 §3.2): llhttp refuses them, and so
    # must the HTTP/2 path, where :path is an HPACK string that can carry any of them.
    Row("a byte outside ASCII in the path is a 400", path=b"/caf\xc3\xa9", response=None, status=400),
    Row("a byte outside ASCII in the query is a 400", path=b"/x?q=\xff", response=None, status=400),
    Row("a control byte in the path is a 400", path=b"/a\x1bb", response=None, status=400),
    Row("DEL in the path is a 400", path=b"/a\x7fb", response=None, status=400),
    Row("printable characters RFC 3986 does not list pass unchanged", path=b"/a{b}|c^d?q=[x]",
        backend_starts=b"GET /a{b}|c^d?q=[x] HTTP/1.1\r\n"),
    Row("a body with its length", method=b"POST", body=b"12345",
        backend_has=(b"Content-Length: 5\r\n", b"\r\n\r\n12345")),
    Row("a client's X-Forwarded-For is replaced (untrusted)",
        headers=((b"X-Forwarded-For", b"6.6.6.6"), (b"X-Real-Ip", b"6.6.6.6")),
        backend_has=(b"X-Forwarded-For: 127.0.0.1\r\n",), backend_lacks=(b"6.6.6.6",)),
    Row("a trusted proxy's X-Forwarded-For is extended",
        headers=((b"X-Forwarded-For", b"6.6.6.6"),),
        http=HTTPConfig(trusted_proxies=("127.0.0.0/8",)),
        backend_has=(b"X-Forwarded-For: 6.6.6.6, 127.0.0.1\r\n",)),
    Row("too many header fields", headers=tuple((b"x-h%d" % i, b"v") for i in range(101)),
        response=None, status=431),
    # The same head is refused (or not) on both framings: HTTP/2's pseudo-header fields are the
    # request line, not fields; :authority counts as the Host field.
    Row("99 header fields and the Host are within max_header_count",
        headers=tuple((b"x-h%d" % i, b"v") for i in range(99)), backend_has=(b"x-h98: v\r\n",)),
    Row("100 header fields and the Host are not", headers=tuple((b"x-h%d" % i, b"v") for i in range(100)),
        response=None, status=431),
    Row("a head just within max_header_bytes passes", headers=((b"x-big", b"a" * (65536 - 9 - 12 - 20)),)),
    Row("a head just over max_header_bytes is a 431 (HTTP/2 allowed 8 KiB more)",
        headers=((b"x-big", b"a" * (65536 - 9 - 12 + 1)),), response=None, status=431),
    # Methods are case-sensitive (RFC 9110 9.1); both framings serve llhttp's list.
    Row("a lower-case method is a 400", method=b"delete", response=None, status=400),
    Row("a method llhttp does not know is a 400", method=b"FOO", response=None, status=400),
    Row("a WebDAV method passes", method=b"PROPFIND", backend_starts=b"PROPFIND /x HTTP/1.1\r\n"),
    Row("an Expect other than 100-continue is a 417 (RFC 9110 10.1.1)", headers=((b"Expect", b"bogus"),),
        response=None, status=417),
    Row("Expect: 100-continue without a body is not forwarded", headers=((b"Expect", b"100-continue"),),
        backend_lacks=(b"expect",)),
    Row("a body over max_body_bytes", method=b"POST", body=b"x" * 20,
        http=HTTPConfig(max_body_bytes=10), response=None, status=413),
    Row("hop-by-hop response headers are dropped",
        response=b"HTTP/1.1 200 OK\r\nConnection: x-hop\r\nX-Hop: 1\r\nX-Keep: 2\r\nContent-Length: 2\r\n\r\nok",
        headers_out=((b"x-keep", b"2"),), lacks_out=(b"x-hop",), body_out=b"ok"),
    Row("a malformed backend response is a 502", response=b"HTTP/1.1 2OO OK\r\n\r\n", status=502),
    Row("a 101 to a request that asked for no upgrade is a 502",
        response=b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n",
        status=502),
    Row("a backend response head over its byte limit is a 502 (issue 9.4)",
        response=b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 80000 + b"\r\nContent-Length: 0\r\n\r\n", status=502),
    Row("a backend response head with too many fields is a 502 (issue 9.4)",
        response=b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(1001))
        + b"Content-Length: 0\r\n\r\n", status=502),
    Row("an invalid status below 100 is a 502, its body never relayed (issue 9.10)",
        response=b"HTTP/1.1 000 X\r\nContent-Length: 3\r\n\r\nabc", status=502),
    Row("an interim response's body is not relayed (issue 9.10)",
        response=b"HTTP/1.1 199 X\r\nContent-Length: 3\r\n\r\nabc"
                 b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", body_out=b"ok"),
    Row("HEAD: the length is relayed, no body", method=b"HEAD", body_out=b"",
        headers_out=((b"content-length", b"5"),)),
    Row("204 carries no body or length", response=b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n", status=204,
        body_out=b"", headers_out=((b"x-a", b"1"),), lacks_out=(b"content-length",)),
    Row("304 keeps its validators, no body", headers=((b"If-None-Match", b'"v1"'),),
        backend_has=(b'If-None-Match: "v1"\r\n',),
        response=b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n', status=304, body_out=b"",
        headers_out=((b"etag", b'"v1"'),)),
    Row("a chunked backend answer is relayed whole",
        response=b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        body_out=b"abcde", lacks_out=(b"content-length",)),
    Row("a 404 from the backend is relayed with its body",
        response=b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope", status=404, body_out=b"nope"),
    Row("edge's own 404 names no route", host=b"nothing.test", response=None, status=404,
        body_out=b"404 page not found\n"),
    Row("connect failure: the next target answers", host=b"two.test",
        backend_starts=b"GET /x HTTP/1.1\r\nHost: two.test\r\n"),
    Row("sticky cookie set on the answer", host=b"sticky.test",
        headers_out=((b"set-cookie", None),)),
    Row("basic auth refuses a request without credentials", host=b"auth.test",
        response=None, status=401),
    Row("backend timeout is a 504", after="timeout", status=504,
        backend_starts=b"GET /x HTTP/1.1\r\n"),
    Row("entry point redirect_to", redirect=True, response=None, status=301,
        headers_out=((b"location", b"https://web.test:2/x"),)),
]

# Every middleware edge supports (docs/labels.md), each through both framings.
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
PW = "u:{SHA}GpHWL3ymc5liWkNopqtdSjuqYHM="  # password "pw"
OK_AUTH = (b"Authorization", b"Basic dTpwdw==")
FRAME = b"HTTP/1.1 200 OK\r\nX-Frame-Options: SAMEORIGIN\r\nX-Powered-By: php\r\nContent-Length: 2\r\n\r\nok"
ALLOWED = b"HTTP/1.1 200 OK\r\nX-Auth-User: alice\r\nX-Other: no\r\nSet-Cookie: auth=1\r\nContent-Length: 0\r\n\r\n"
DENIED = (b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\nLocation: /login\r\n"
          b"Content-Length: 6\r\n\r\nno way")
FA = ForwardAuth("http://10.7.7.7:9000/auth", auth_response_headers=("X-Auth-User",),
                 add_auth_cookies_to_response=("auth",))
CORS = Headers(access_control_allow_origin_list=("https://app.test",), access_control_allow_methods=("GET", "PUT"),
               access_control_allow_headers=("X-Token",), access_control_max_age=60, add_vary_header=True,
               access_control_expose_headers=("X-Count",), access_control_allow_credentials=True)

MW_ROWS = [
    Row("redirectscheme", host=b"mw.test", middlewares=(RedirectScheme("https", permanent=True),), response=None,
        status=301, headers_out=((b"location", b"https://mw.test/x"),)),
    Row("redirectscheme keeps a POST a POST (308) and names its port", method=b"POST", body=b"ab", host=b"mw.test",
        middlewares=(RedirectScheme("https", port="8443", permanent=True),), response=None, status=308,
        headers_out=((b"location", b"https://mw.test:8443/x"),)),
    Row("redirectscheme: a trusted proxy's X-Forwarded-Proto https goes through", host=b"mw.test",
        headers=((b"X-Forwarded-Proto", b"https"),), http=HTTPConfig(trusted_proxies=("127.0.0.1/32",)),
        middlewares=(RedirectScheme("https"),), backend_has=(b"X-Forwarded-Proto: https\r\n",)),
    Row("redirectregex", host=b"mw.test", path=b"/old/p?q=1",
        middlewares=(RedirectRegex(r"^http://mw\.test/old/(.*)", "https://new.test/$1"),), response=None,
        status=302, headers_out=((b"location", b"https://new.test/p?q=1"),)),
    Row("redirectregex without a match passes", host=b"mw.test", path=b"/other",
        middlewares=(RedirectRegex(r"^http://mw\.test/old/(.*)", "https://new.test/$1"),),
        backend_starts=b"GET /other HTTP/1.1\r\n"),
    Row("stripprefix", host=b"mw.test", path=b"/api/v/x?q", middlewares=(StripPrefix(("/api",)),),
        backend_starts=b"GET /v/x?q HTTP/1.1\r\n", backend_has=(b"X-Forwarded-Prefix: /api\r\n",)),
    Row("stripprefix does not strip /apiv2", host=b"mw.test", path=b"/apiv2", middlewares=(StripPrefix(("/api",)),),
        backend_starts=b"GET /apiv2 HTTP/1.1\r\n", backend_lacks=(b"X-Forwarded-Prefix",)),
    Row("stripprefixregex", host=b"mw.test", path=b"/v12/x", middlewares=(StripPrefixRegex((r"/v[0-9]+",)),),
        backend_starts=b"GET /x HTTP/1.1\r\n", backend_has=(b"X-Forwarded-Prefix: /v12\r\n",)),
    Row("addprefix", host=b"mw.test", path=b"/x?a=b", middlewares=(AddPrefix("/pre"),),
        backend_starts=b"GET /pre/x?a=b HTTP/1.1\r\n"),
    Row("replacepath", host=b"mw.test", path=b"/x?q=1", middlewares=(ReplacePath("/new"),),
        backend_starts=b"GET /new?q=1 HTTP/1.1\r\n", backend_has=(b"X-Replaced-Path: /x\r\n",)),
    Row("replacepathregex", host=b"mw.test", path=b"/x/a%20b", middlewares=(ReplacePathRegex(r"^/x/(.*)", "/y/$1"),),
        backend_starts=b"GET /y/a%20b HTTP/1.1\r\n", backend_has=(b"X-Replaced-Path: /x/a%20b\r\n",)),
    Row("basicauth lets the right password through and removes the header", host=b"mw.test", headers=(OK_AUTH,),
        middlewares=(BasicAuth((PW,), remove_header=True),), backend_lacks=(b"dTpwdw",)),
    Row("basicauth keeps the header without removeheader", host=b"mw.test", headers=(OK_AUTH,),
        middlewares=(BasicAuth((PW,)),), backend_has=(b"dTpwdw==",)),
    Row("basicauth headerField names the user to the backend, never the client's own", host=b"mw.test",
        headers=(OK_AUTH, (b"X-Webauth-User", b"admin"), (b"X_WEBAUTH_USER", b"admin")),
        middlewares=(BasicAuth((PW,), header_field="X-WEBAUTH-USER"),),
        backend_has=(b"X-WEBAUTH-USER: u\r\n",), backend_lacks=(b"admin",)),
    Row("basicauth headerField: a refused client's own header reaches nothing", host=b"mw.test",
        headers=((b"X-Webauth-User", b"admin"),), middlewares=(BasicAuth((PW,), header_field="X-WEBAUTH-USER"),),
        response=None, status=401),
    Row("basicauth refuses a wrong password with its realm", host=b"mw.test",
        headers=((b"Authorization", b"Basic dTpubw=="),), middlewares=(BasicAuth((PW,), realm="lab"),),
        response=None, status=401, headers_out=((b"www-authenticate", b'Basic realm="lab"'),)),
    Row("headers: custom request headers set and removed", host=b"mw.test", headers=((b"X-Drop", b"1"),),
        middlewares=(Headers(custom_request=(("X-Set", "v"), ("X-Drop", ""))),),
        backend_has=(b"X-Set: v\r\n",), backend_lacks=(b"X-Drop",)),
    Row("headers: custom response headers set and removed, frameDeny replaces the backend's", host=b"mw.test",
        middlewares=(Headers(custom_response=(("X-Served", "edge"), ("X-Powered-By", "")), frame_deny=True,
                             content_type_nosniff=True, browser_xss_filter=True, content_security_policy="default-src 'self'",
                             referrer_policy="no-referrer", permissions_policy="camera=()"),),
        response=FRAME, body_out=b"ok",
        headers_out=((b"x-served", b"edge"), (b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff"),
                     (b"x-xss-protection", b"1; mode=block"), (b"content-security-policy", b"default-src 'self'"),
                     (b"referrer-policy", b"no-referrer"), (b"permissions-policy", b"camera=()")),
        lacks_out=(b"x-powered-by",)),
    Row("headers: HSTS forced on plain HTTP", host=b"mw.test",
        middlewares=(Headers(sts_seconds=60, sts_include_subdomains=True, sts_preload=True, force_sts_header=True),),
        headers_out=((b"strict-transport-security", b"max-age=60; includeSubDomains; preload"),)),
    Row("headers: HSTS not on plain HTTP unless forced", host=b"mw.test", middlewares=(Headers(sts_seconds=60),),
        lacks_out=(b"strict-transport-security",)),
    Row("headers: sslProxyHeaders from a trusted proxy count as HTTPS for HSTS", host=b"mw.test",
        headers=((b"X-Forwarded-Proto", b"https"),), http=HTTPConfig(trusted_proxies=("127.0.0.1/32",)),
        middlewares=(Headers(sts_seconds=60, ssl_proxy_headers=(("X-Forwarded-Proto", "https"),)),),
        headers_out=((b"strict-transport-security", b"max-age=60"),)),
    Row("headers: sslRedirect", host=b"mw.test", middlewares=(Headers(ssl_redirect=True),), response=None,
        status=301, headers_out=((b"location", b"https://mw.test/x"),)),
    Row("headers: allowedHosts refuses another host (500 Bad Host)", host=b"mw.test",
        middlewares=(Headers(allowed_hosts=("good.test",)),), response=None, status=500),
    Row("headers: isDevelopment turns allowedHosts off", host=b"mw.test",
        middlewares=(Headers(allowed_hosts=("good.test",), is_development=True),)),
    Row("headers: a CORS preflight is answered by edge", method=b"OPTIONS", host=b"mw.test",
        headers=((b"Origin", b"https://app.test"), (b"Access-Control-Request-Method", b"PUT")),
        middlewares=(CORS,), response=None, status=200,
        headers_out=((b"access-control-allow-origin", b"https://app.test"),
                     (b"access-control-allow-methods", b"GET, PUT"), (b"access-control-allow-headers", b"X-Token"),
                     (b"access-control-max-age", b"60"), (b"access-control-allow-credentials", b"true"))),
    Row("headers: CORS on an allowed origin's answer", host=b"mw.test", headers=((b"Origin", b"https://app.test"),),
        middlewares=(CORS,), headers_out=((b"access-control-allow-origin", b"https://app.test"), (b"vary", b"Origin"),
                                          (b"access-control-expose-headers", b"X-Count"))),
    Row("headers: no CORS headers for another origin", host=b"mw.test", headers=((b"Origin", b"https://evil.test"),),
        middlewares=(CORS,), lacks_out=(b"access-control-allow-origin",)),
    Row("ipallowlist lets the client's network through", host=b"mw.test",
        middlewares=(IPAllowList(("127.0.0.0/8",)),)),
    Row("ipallowlist refuses other clients", host=b"mw.test", middlewares=(IPAllowList(("10.0.0.0/8",)),),
        response=None, status=403),
    Row("ipallowlist ipstrategy.depth: from a trusted proxy, its X-Forwarded-For entry", host=b"mw.test",
        headers=((b"X-Forwarded-For", b"10.1.2.3, 192.0.2.1"),), http=HTTPConfig(trusted_proxies=("127.0.0.1/32",)),
        middlewares=(IPAllowList(("10.0.0.0/8",), ip_depth=2),)),
    Row("ipallowlist ipstrategy.depth: too few X-Forwarded-For entries is a 403", host=b"mw.test",
        headers=((b"X-Forwarded-For", b"10.1.2.3"),), http=HTTPConfig(trusted_proxies=("127.0.0.1/32",)),
        middlewares=(IPAllowList(("10.0.0.0/8",), ip_depth=2),), response=None, status=403),
    # Traefik's entry point deletes X-Forwarded-* (and their X_Forwarded_* spellings) of clients
    # it does not trust before any middleware runs: such a client cannot pick its own address.
    Row("ipallowlist ipstrategy.depth: an untrusted client's own X-Forwarded-For is not believed",
        host=b"mw.test", headers=((b"X-Forwarded-For", b"10.1.2.3"),),
        middlewares=(IPAllowList(("10.0.0.0/8",), ip_depth=1),), response=None, status=403),
    Row("ipallowlist ipstrategy.excludedips: nor with excluded addresses", host=b"mw.test",
        headers=((b"X-Forwarded-For", b"10.1.2.3, 192.0.2.1"),),
        middlewares=(IPAllowList(("10.0.0.0/8",), excluded_ips=("192.0.2.0/24",)),), response=None, status=403),
    Row("stripprefix: an untrusted client's own X-Forwarded-Prefix does not reach the backend", host=b"mw.test",
        path=b"/api/x", headers=((b"X-Forwarded-Prefix", b"/evil"), (b"X_Forwarded_Prefix", b"/evil2")),
        middlewares=(StripPrefix(("/api",)),), backend_starts=b"GET /x HTTP/1.1\r\n",
        backend_has=(b"X-Forwarded-Prefix: /api\r\n",), backend_lacks=(b"/evil",)),
    Row("a trusted proxy's X-Forwarded-Prefix is kept", host=b"mw.test", path=b"/api/x",
        headers=((b"X-Forwarded-Prefix", b"/outer"),), http=HTTPConfig(trusted_proxies=("127.0.0.1/32",)),
        middlewares=(StripPrefix(("/api",)),), backend_has=(b"X-Forwarded-Prefix: /outer\r\n",)),
    # Traefik 1.7's whiteList.useXForwardedFor: the address the trusted proxy in front reports.
    Row("v1 useXForwardedFor: a trusted proxy's X-Forwarded-For client is let in", host=b"mw.test",
        headers=((b"X-Forwarded-For", b"10.1.2.3"),), http=HTTPConfig(trusted_proxies=("127.0.0.1/32",)),
        middlewares=(IPAllowList(("10.0.0.0/8",), use_forwarded_for=True),)),
    Row("v1 useXForwardedFor: an untrusted client's own X-Forwarded-For is not believed", host=b"mw.test",
        headers=((b"X-Forwarded-For", b"10.1.2.3"),),
        middlewares=(IPAllowList(("10.0.0.0/8",), use_forwarded_for=True),), response=None, status=403),
    Row("v1 useXForwardedFor: only the entry the trusted proxy wrote counts, not one its client wrote",
        host=b"mw.test", headers=((b"X-Forwarded-For", b"10.1.2.3, 192.0.2.1"),),
        http=HTTPConfig(trusted_proxies=("127.0.0.1/32",)),
        middlewares=(IPAllowList(("10.0.0.0/8",), use_forwarded_for=True),), response=None, status=403),
    Row("ipallowlist ipstrategy.excludedips", host=b"mw.test",
        headers=((b"X-Forwarded-For", b"10.1.2.3, 192.0.2.1"),), http=HTTPConfig(trusted_proxies=("127.0.0.1/32",)),
        middlewares=(IPAllowList(("10.0.0.0/8",), excluded_ips=("192.0.2.0/24",)),)),
    Row("forwardauth: a 2xx lets the request through with the chosen headers and cookie", host=b"mw.test",
        headers=((b"X-Auth-User", b"mallory"),), middlewares=(FA,), auth=ALLOWED,
        auth_has=(b"GET /auth HTTP/1.1\r\n", b"X-Forwarded-Method: GET\r\n", b"X-Forwarded-Uri: /x\r\n",
                  b"X-Forwarded-Host: mw.test\r\n", b"X-Forwarded-For: 127.0.0.1\r\n"),
        backend_has=(b"X-Auth-User: alice\r\n",), backend_lacks=(b"mallory", b"X-Other"),
        headers_out=((b"set-cookie", b"auth=1"),)),
    Row("forwardauth: any other answer is relayed and the backend is not asked", host=b"mw.test",
        middlewares=(FA,), auth=DENIED, response=None, status=401, body_out=b"no way",
        headers_out=((b"www-authenticate", b"Bearer"), (b"location", b"http://10.7.7.7:9000/login"))),
    Row("forwardauth: a broken auth answer is a 500, never a pass", host=b"mw.test", middlewares=(FA,),
        auth=b"HTTP/1.1 2OO OK\r\n\r\n", response=None, status=500),
    Row("forwardauth: a body waits for the auth answer and reaches the backend whole", method=b"POST",
        body=b"payload-bytes", host=b"mw.test", middlewares=(FA,), auth=ALLOWED,
        auth_has=(b"X-Forwarded-Method: POST\r\n",),
        backend_has=(b"Content-Length: 13\r\n", b"\r\n\r\npayload-bytes")),
    Row("forwardauth: a denied POST's body never reaches a backend", method=b"POST", body=b"payload",
        host=b"mw.test", middlewares=(FA,), auth=DENIED, response=None, status=401),
    Row("ratelimit: the first request passes", host=b"mw.test", middlewares=(RateLimit(1, burst=1),)),
    Row("inflightreq: one request in flight passes", host=b"mw.test", middlewares=(InFlightReq(1),)),
    Row("retry: a backend that closes before answering is asked again", host=b"mw.test",
        middlewares=(Retry(2),), after="drop", then=OK, then_starts=b"GET /x HTTP/1.1\r\n", body_out=b"ok"),
    Row("retry: out of attempts is a 502", host=b"mw.test", middlewares=(Retry(1),), after="drop", status=502),
    Row("retry: a POST with a body is never sent twice", method=b"POST", body=b"once", host=b"mw.test",
        middlewares=(Retry(3),), after="drop", status=502),
    Row("buffering: a body over maxRequestBodyBytes is a 413 before any backend", method=b"POST",
        body=b"x" * 20, host=b"mw.test", middlewares=(Buffering(max_request_body_bytes=10),), response=None,
        status=413),
    Row("buffering: a held body goes on whole, with its length", method=b"POST", body=b"x" * 8,
        host=b"mw.test", middlewares=(Buffering(max_request_body_bytes=10),),
        backend_has=(b"Content-Length: 8\r\n", b"\r\n\r\nxxxxxxxx")),
    Row("errors: a 5xx is replaced by the error service's page under its status", host=b"mw.test",
        middlewares=(Errors(((500, 599),), "svc3", "/err/{status}?u={url}"),),
        response=b"HTTP/1.1 503 X\r\nContent-Length: 4\r\n\r\noops", status=503,
        then=b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 6\r\n\r\n<page>",
        then_starts=b"GET /err/503?u=%2Fx HTTP/1.1\r\n", body_out=b"<page>",
        headers_out=((b"content-type", b"text/html"),)),
    Row("errors: other statuses pass", host=b"mw.test",
        middlewares=(Errors(((500, 599),), "svc3", "/err/{status}"),), body_out=b"hello"),
    Row("errors: edge's own 502 is caught too", host=b"mw.test", path=b"/y",
        middlewares=(Errors(((500, 599),), "svc3", "/err/{status}"),), after="drop", status=502,
        then=b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nsorry", then_starts=b"GET /err/502 HTTP/1.1\r\n",
        body_out=b"sorry"),
    Row("chain: middlewares apply in order", host=b"mw.test", path=b"/api/x", headers=(OK_AUTH,),
        middlewares=(BasicAuth((PW,), remove_header=True), StripPrefix(("/api",)), AddPrefix("/v1"),
                     Headers(custom_request=(("X-Chain", "1"),), custom_response=(("X-Done", "1"),))),
        backend_starts=b"GET /v1/x HTTP/1.1\r\n", backend_has=(b"X-Chain: 1\r\n", b"X-Forwarded-Prefix: /api\r\n"),
        headers_out=((b"x-done", b"1"),)),
    Row("chain: a refusing middleware stops the chain", host=b"mw.test", path=b"/api/x",
        middlewares=(BasicAuth((PW,)), StripPrefix(("/api",))), response=None, status=401),
]


def _names_lowered(head: bytes) -> bytes:
    """``head`` with the name of every ``Name: value`` line lower-cased."""
    lines = []
    for line in head.split(b"\r\n"):
        name, sep, value = line.partition(b": ")
        lines.append(name.lower() + sep + value if sep and b" " not in name else line)
    return b"\r\n".join(lines)


@pytest.mark.parametrize("framing", [H1Client, H2Client], ids=["http1", "h2"])
@pytest.mark.parametrize("row", ROWS + MW_ROWS, ids=[r.name for r in ROWS + MW_ROWS])
def test_table(row: Row, framing):
    world = World(row.http, redirect=row.redirect, middlewares=row.middlewares)
    client = framing(world)
    world.clock.advance(100)
    client.send(row.method, row.path, row.host, row.headers, row.body)
    if row.auth is not None:
        asked = world.auth_server(row.auth)
        for line in row.auth_has:
            assert line in asked, asked
    sent = world.backend_bytes()
    if row.response is None:
        assert sent == b""
    else:
        assert sent.startswith(row.backend_starts)
        for line in row.backend_has:
            # Field names arrive lower-cased over HTTP/2 (RFC 9113 8.2.1); values as sent.
            assert _names_lowered(line) in _names_lowered(sent), sent
        for text in row.backend_lacks:
            assert text.lower() not in sent.lower()
        if row.after == "timeout":
            world.clock.advance(HTTPConfig().backend_response_timeout + 2)
            world.service._housekeeping()
        elif row.after == "drop":  # the backend closes without a byte of answer
            world.backends[-1][0].connectionLost(None)
        else:
            world.answer(row.response)
        if row.then is not None:
            client.answer()  # pumps what the first exchange made edge send
            world.clock.advance(0.01)  # a retry's back-off
            last, transport = world.backends[-1]  # a new connection, or the first one reused
            assert row.then_starts in transport.value(), transport.value()
            last.dataReceived(row.then)
    answer = client.answer()
    assert answer.status == row.status, answer
    if row.body_out is not None:
        assert answer.body == row.body_out
    for name, value in row.headers_out:
        got = answer.header(name)
        assert got is not None, (name, answer.headers)
        if value is not None:
            assert got == value
    for name in row.lacks_out:
        assert answer.header(name) is None
    lines = world.log_lines()
    assert len(lines) == 1, lines
    assert lines[0]["status"] == row.status
    assert lines[0]["protocol"] == ("HTTP/2.0" if framing is H2Client else "HTTP/1.1")


def test_the_pooled_connection_is_reused_after_each_framing():
    world = World()
    for framing in (H1Client, H2Client, H1Client):
        client = framing(world)
        client.send(b"GET", b"/x", b"web.test")
        world.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        assert client.answer().body == b"ok"
    assert len(world.backends) == 1
    assert world.service.pool.idle_count() == 1


# -- HTTP/1.1 framing only (HTTP/2 has no such framing to get wrong) -------------


def test_transfer_encoding_fields_are_judged_together():
    """gzip then chunked in two fields is "gzip, chunked": not chunked last alone (issue 9.11)."""
    world = World()
    client = H1Client(world)
    client.server.dataReceived(b"POST /x HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: gzip\r\n"
                               b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert client.answer().status == 501
    assert world.backend_bytes() == b""


def test_bytes_after_a_connection_close_request_are_ignored():
    """The request is answered; what follows it is not parsed into a 400 (issue 9.9)."""
    world = World()
    client = H1Client(world)
    client.server.dataReceived(b"POST /x HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n"
                               b"Content-Length: 3\r\n\r\nabcGARBAGE\r\n\r\n")
    assert world.backend_bytes().endswith(b"\r\n\r\nabc")
    world.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    answer = client.answer()
    assert (answer.status, answer.body) == (200, b"ok")
    assert not world.backends[-1][1].aborted  # the backend exchange was not cut off
    assert client.transport.disconnecting


def test_the_head_deadline_runs_from_the_first_byte():
    """One byte a second does not keep a head alive past request_header_timeout (issue 9.3)."""
    world = World()
    client = H1Client(world)
    world.clock.advance(1)
    head = b"GET /x HTTP/1.1\r\nHost: web.test\r\nX-Slow: " + b"a" * 100
    for i in range(40):
        if client.transport.disconnecting:
            break
        client.server.dataReceived(head[i:i + 1])
        world.clock.advance(1)
        world.service._housekeeping()
    assert client.transport.disconnecting
    assert i <= HTTPConfig().request_header_timeout + 2
    assert client.answer().status == 408


def test_a_malformed_pipelined_request_does_not_cancel_the_backend_timeout():
    """The first request still gets its 504 (issue 9.7)."""
    world = World()
    client = H1Client(world)
    client.server.dataReceived(b"GET /x HTTP/1.1\r\nHost: web.test\r\n\r\nGET /y HTTP/1.1\r\nHost: \x01\r\n\r\n")
    assert world.backend_bytes().startswith(b"GET /x HTTP/1.1\r\n")
    world.clock.advance(HTTPConfig().backend_response_timeout + 2)
    world.service._housekeeping()
    assert client.answer().status == 504


def test_a_client_that_stops_reading_loses_its_connection_and_backend_after_the_send_timeout():
    """Issue 9.6: nothing read for send_timeout closes both sides."""
    SEND_TIMEOUT = HTTPConfig().send_timeout

    world = World()
    client = H1Client(world)
    client.send(b"GET", b"/big", b"web.test")
    backend, backend_side = world.backends[-1]
    backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n" + b"x" * 65536)
    client.transport.producer.pauseProducing()  # the client's socket buffer is full
    assert backend_side.producerState == "paused"
    world.clock.advance(SEND_TIMEOUT / 2)
    world.service._housekeeping()
    assert not client.transport.disconnecting  # still within the timeout
    world.clock.advance(SEND_TIMEOUT)
    world.service._housekeeping()
    assert client.transport.disconnecting and backend_side.aborted
    assert world.service.pool.idle_count() == 0


def test_an_h2_stream_whose_window_stays_shut_is_reset_after_the_send_timeout():
    import h2.events
    import h2.settings

    SEND_TIMEOUT = HTTPConfig().send_timeout

    world = World()
    client = H2Client(world)
    client.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    client.server.dataReceived(client.h2.data_to_send())
    client._pump()
    client.send(b"GET", b"/big", b"web.test")
    backend, backend_side = world.backends[-1]
    backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000)
    world.clock.advance(SEND_TIMEOUT + 2)
    world.service._housekeeping()
    client._pump()
    assert any(isinstance(e, h2.events.StreamReset) and e.stream_id == client.sid for e in client.events)
    assert backend_side.aborted
    assert not client.transport.disconnecting  # other streams may go on


def test_an_idle_tunnel_is_closed():
    TUNNEL_IDLE_TIMEOUT = HTTPConfig().tunnel_idle_timeout

    world = World()
    client = H1Client(world)
    client.server.dataReceived(b"GET /ws HTTP/1.1\r\nHost: web.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    backend, backend_side = world.backends[-1]
    backend.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    client.server.dataReceived(b"frame")
    assert backend_side.value().endswith(b"frame")
    world.clock.advance(TUNNEL_IDLE_TIMEOUT - 10)
    backend.dataReceived(b"pong")  # traffic keeps it open
    world.service._housekeeping()
    assert not client.transport.disconnecting
    world.clock.advance(TUNNEL_IDLE_TIMEOUT + 1)
    world.service._housekeeping()
    assert client.transport.disconnecting


def test_a_client_that_half_closes_after_its_request_gets_the_answer():
    """Issue 9.12: FIN after the request is not a 499."""
    world = World()
    client = H1Client(world)
    client.send(b"GET", b"/x", b"web.test")
    client.server.readConnectionLost()
    assert not client.transport.disconnecting
    world.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    answer = client.answer()
    assert (answer.status, answer.body) == (200, b"ok")
    assert client.transport.disconnecting
    assert [line["status"] for line in world.log_lines()] == [200]



def test_connections_past_max_client_connections_are_closed_at_once_and_counted():
    """Issue 9.3: a cap per entry point, with a log line and a metric."""
    world = World(HTTPConfig(max_client_connections=2))
    clients = [H1Client(world) for _ in range(3)]
    assert [c.transport.aborted for c in clients] == [False, False, True]
    assert len(world.factory.connections) == 2
    assert world.service.stats._refused == {"web": 1}
    clients[0].server.connectionLost(None)
    assert not H1Client(world).transport.aborted  # room again


def test_a_half_close_in_the_middle_of_a_head_closes_at_once():
    world = World()
    client = H1Client(world)
    client.server.dataReceived(b"GET /x HTTP/1.1\r\nHost: web")
    client.server.readConnectionLost()
    assert client.transport.disconnecting
    assert world.backend_bytes() == b""


# -- middlewares whose answer depends on earlier requests, both framings ---------------

FRAMINGS = pytest.mark.parametrize("framing", [H1Client, H2Client], ids=["http1", "h2"])


@FRAMINGS
def test_ratelimit_refuses_past_the_burst_and_holds_a_short_wait(framing):
    world = World(middlewares=(RateLimit(1, burst=1),))
    world.clock.advance(100)
    first = framing(world)
    first.send(b"GET", b"/x", b"mw.test")
    world.answer(OK)
    assert first.answer().status == 200
    second = framing(world)
    second.send(b"GET", b"/x", b"mw.test")
    answer = second.answer()
    assert (answer.status, answer.header(b"retry-after")) == (429, b"1")
    assert len(world.backends) == 1  # the refused request reached no backend
    # 0.6 s later a token is 0.4 s away: within Traefik's 500 ms, the request waits for it.
    world.clock.advance(0.6)
    third = framing(world)
    third.send(b"GET", b"/x", b"mw.test")
    assert third.answer().status is None and world.service.pool.idle_count() == 1
    world.clock.advance(0.5)
    third.answer()  # pumps what the held request sent
    world.answer(OK)
    assert third.answer().status == 200
    assert [line["status"] for line in world.log_lines()] == [200, 429, 200]


@FRAMINGS
def test_an_untrusted_client_cannot_choose_its_rate_limit_bucket_by_x_forwarded_for(framing):
    world = World(middlewares=(RateLimit(1, burst=1, source=SourceCriterion(ip_depth=1)),))
    world.clock.advance(100)
    statuses = []
    for i in range(3):
        client = framing(world)
        before = world.backend_bytes()
        client.send(b"GET", b"/x", b"mw.test", ((b"X-Forwarded-For", b"198.51.100.%d" % i),))
        if world.backend_bytes() != before:
            world.answer(OK)
        statuses.append(client.answer().status)
    assert statuses == [200, 429, 429]


@FRAMINGS
@pytest.mark.parametrize("accept,coding", [(b"gzip", b"gzip"), (b"br;q=0.9, gzip;q=0.5", b"br"), (b"identity", None)])
def test_compress_encodes_what_the_client_accepts(framing, accept, coding):
    import gzip

    import brotli

    world = World(middlewares=(Compress(),))
    client = framing(world)
    client.send(b"GET", b"/x", b"mw.test", ((b"Accept-Encoding", accept),))
    text = b"compress me " * 200
    world.answer(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nETag: \"e1\"\r\nContent-Length: %d\r\n\r\n%s"
                 % (len(text), text))
    answer = client.answer()
    assert answer.status == 200
    assert answer.header(b"content-encoding") == coding
    if coding is None:
        assert answer.body == text and answer.header(b"content-length") == b"%d" % len(text)
    else:
        assert answer.header(b"content-length") is None and answer.header(b"etag") == b'W/"e1"'
        assert answer.header(b"vary") == b"Accept-Encoding"
        decode = gzip.decompress if coding == b"gzip" else brotli.decompress
        assert decode(answer.body) == text
    assert [line["bytes"] for line in world.log_lines()] == [len(answer.body)]


@FRAMINGS
def test_circuit_breaker_opens_on_5xx_and_answers_for_the_backend(framing):
    world = World(middlewares=(CircuitBreaker("ResponseCodeRatio(500, 600, 0, 600) > 0.5", check_period=1.0,
                                              fallback_duration=10.0),))
    world.clock.advance(100)
    first = framing(world)
    first.send(b"GET", b"/x", b"mw.test")
    world.answer(b"HTTP/1.1 500 X\r\nContent-Length: 0\r\n\r\n")
    assert first.answer().status == 500
    world.clock.advance(1.5)  # the breaker looks again after its check period
    world.service._housekeeping()
    sent = world.backend_bytes()
    second = framing(world)
    second.send(b"GET", b"/x", b"mw.test")
    assert second.answer().status == 503
    assert world.backend_bytes() == sent  # open: nothing reached the backend
    assert [line["status"] for line in world.log_lines()] == [500, 503]


@FRAMINGS
def test_inflightreq_refuses_a_second_request_in_flight_and_frees_the_slot(framing):
    world = World(middlewares=(InFlightReq(1),))
    world.clock.advance(100)
    first = framing(world)
    first.send(b"GET", b"/x", b"mw.test")
    second = framing(world)
    second.send(b"GET", b"/x", b"mw.test")
    assert second.answer().status == 429
    world.answer(OK)
    assert first.answer().status == 200
    third = framing(world)
    third.send(b"GET", b"/x", b"mw.test")
    assert world.backends[-1][1].value().startswith(b"GET /x")
    # A client that goes away mid-request gives its slot back too.
    third.server.connectionLost(None)
    fourth = framing(world)
    fourth.send(b"GET", b"/x", b"mw.test")
    world.answer(OK)
    assert fourth.answer().status == 200
    assert [line["status"] for line in world.log_lines()] == [429, 200, 499, 200]


# -- access log and metrics: the same for both framings ------------------------------

# (method, path, host, headers, body, backend answer or None for none / "timeout")
LOGGED = [
    (b"GET", b"/x?q=1", b"web.test", ((b"Referer", b"https://ref.test/"), (b"User-Agent", b"curl/8")), None, OK),
    (b"POST", b"/up", b"web.test", ((b"User-Agent", b"up"),), b"12345", OK),
    (b"GET", b"/x", b"nothing.test", (), None, None),
    (b"GET", b"/x", b"auth.test", (), None, None),
    (b"GET", b"/x", b"mw.test", (), None, None),
    (b"GET", b"/a%2fb", b"web.test", (), None, None),
    (b"POST", b"/big", b"web.test", (), b"x" * 20, None),
    (b"GET", b"/bad", b"web.test", (), None, b"HTTP/1.1 2OO OK\r\n\r\n"),
    (b"GET", b"/slow", b"web.test", (), None, "timeout"),
    (b"GET", b"/x", b"two.test", (), None, OK),
]


def _run_logged(framing, log_format):
    world = World(HTTPConfig(max_body_bytes=10), middlewares=(IPAllowList(("10.0.0.0/8",)),),
                  log_format=log_format)
    world.clock.advance(100)
    for method, path, host, headers, body, response in LOGGED:
        client = framing(world)
        before = len(world.backend_bytes())
        client.send(method, path, host, headers, body)
        assert (len(world.backend_bytes()) > before) == (response is not None)
        if response == "timeout":
            world.clock.advance(HTTPConfig().backend_response_timeout + 2)
            world.service._housekeeping()
        elif response is not None:
            world.answer(response)
        assert client.answer().status is not None
    world.service._housekeeping()
    return world


@pytest.mark.parametrize("log_format", ["common", "combined", "json"])
def test_the_access_log_line_is_the_same_for_both_framings_but_the_protocol(log_format):
    h1 = _run_logged(H1Client, log_format).log_lines()
    h2 = _run_logged(H2Client, log_format).log_lines()
    assert len(h1) == len(h2) == len(LOGGED)
    if log_format == "json":
        assert [line.pop("protocol") for line in h1] == ["HTTP/1.1"] * len(LOGGED)
        assert [line.pop("protocol") for line in h2] == ["HTTP/2.0"] * len(LOGGED)
        statuses = [line["status"] for line in h1]
    else:
        assert all(' HTTP/1.1" ' in line for line in h1) and all(' HTTP/2.0" ' in line for line in h2)
        h2 = [line.replace(' HTTP/2.0" ', ' HTTP/1.1" ', 1) for line in h2]
        statuses = [int(line.split('" ', 1)[1].split()[0]) for line in h1]
    assert statuses == [200, 200, 404, 401, 403, 400, 413, 502, 504, 200]
    for one, two in zip(h1, h2):
        assert one == two
    if log_format == "combined":
        assert '"GET /x?q=1 HTTP/1.1" 200 2 "https://ref.test/" "curl/8" 1 "web" "http://10.9.9.9:80"' in h1[0]


def _http_samples():
    """edge_http_* counters and duration counts, by labels."""
    out = {}
    for family in metrics.REGISTRY.collect():
        if family.name in ("edge_http_requests", "edge_http_request_duration_seconds",
                           "edge_http_upstream_connect_failures"):
            for sample in family.samples:
                if sample.name.endswith(("_total", "_count")):
                    out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _moved(before, after):
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def test_metrics_per_router_move_the_same_for_both_framings():
    moved = {}
    for framing in (H1Client, H2Client):
        before = _http_samples()
        _run_logged(framing, "json")
        moved[framing.name] = _moved(before, _http_samples())
    assert moved["http/1.1"] == moved["h2"]
    got = moved["h2"]
    web = ("edge_http_requests_total", (("code_class", "2xx"), ("entrypoint", "web"), ("router", "web")))
    assert got[web] == 2
    assert got[("edge_http_requests_total", (("code_class", "5xx"), ("entrypoint", "web"), ("router", "web")))] == 2
    assert got[("edge_http_requests_total", (("code_class", "4xx"), ("entrypoint", "web"), ("router", "mw")))] == 1
    assert got[("edge_http_request_duration_seconds_count", (("router", "two"),))] == 1
    assert got[("edge_http_upstream_connect_failures_total", (("service", "svc2"),))] == 1


# -- PROXY protocol (v1 and v2), trusted and untrusted sources, plain and TLS entry points ------

PROXY_FROM = "127.0.0.2"  # the load balancer allowed to speak PROXY
V1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 55555 443\r\n"
V2 = (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", 12)
      + socket.inet_aton("203.0.113.7") + socket.inet_aton("127.0.0.1") + struct.pack("!HH", 55555, 443))


class _TLSLike(policies.ProtocolWrapper):
    """Stands in for the TLS layer (``TLSMemoryBIOProtocol``) once its handshake chose ``alpn``."""

    def __init__(self, factory, wrapped):
        super().__init__(factory, wrapped)
        self.negotiatedProtocol = factory.alpn


class _TLSContext:
    """What ``service.wrap_tls`` is given: a TLS service with ``wrap(factory)``."""

    def __init__(self, alpn):
        self.alpn = alpn

    def wrap(self, factory):
        wrapping = policies.WrappingFactory(factory)
        wrapping.protocol = _TLSLike
        wrapping.alpn = self.alpn
        return wrapping


def _proxy_world(alpn):
    """edge listening as it does: PROXY chooser -> TLS -> entry point (on a memory reactor)."""
    world = World(entrypoints=[EntryPoint("web", "tcp:1", proxy_protocol=(PROXY_FROM + "/32",)),
                               EntryPoint("websecure", "tcp:2", tls=True, proxy_protocol=(PROXY_FROM + "/32",))],
                  tls_context=_TLSContext(alpn))
    world.service._listen()
    world.listening = {port: factory for port, factory, _backlog, _interface in world.clock.tcpServers}
    assert sorted(world.listening) == [1, 2]
    return world


# (client framing, entry point port, ALPN)
ENTRIES = pytest.mark.parametrize("framing,port,alpn", [
    (H1Client, 1, None), (H1Client, 2, None), (H2Client, 2, b"h2")], ids=["http1", "http1-tls", "h2-tls"])


@ENTRIES
@pytest.mark.parametrize("header", [V1, V2], ids=["v1", "v2"])
def test_proxy_protocol_from_a_trusted_source_names_the_client(framing, port, alpn, header):
    world = _proxy_world(alpn)
    client = framing(world, world.listening[port], source=PROXY_FROM, preamble=header)
    client.send(b"GET", b"/x", b"web.test", ((b"X-Forwarded-For", b"6.6.6.6"),))
    sent = world.backend_bytes()
    assert b"X-Forwarded-For: 203.0.113.7\r\n" in sent and b"X-Real-Ip: 203.0.113.7\r\n" in sent
    assert b"6.6.6.6" not in sent  # the named client is no trusted proxy
    assert b"X-Forwarded-Proto: %s\r\n" % (b"https" if port == 2 else b"http") in sent
    world.answer(OK)
    assert client.answer().status == 200
    (line,) = world.log_lines()
    assert (line["client"], line["status"], line["entrypoint"]) == (
        "203.0.113.7", 200, "websecure" if port == 2 else "web")


@ENTRIES
def test_without_a_proxy_header_a_trusted_source_is_closed(framing, port, alpn):
    world = _proxy_world(alpn)
    client = framing(world, world.listening[port], source=PROXY_FROM)
    client.send(b"GET", b"/x", b"web.test")
    assert world.backend_bytes() == b""
    assert client.answer().status is None and client.transport.disconnecting


@ENTRIES
def test_an_untrusted_source_is_served_as_itself(framing, port, alpn):
    world = _proxy_world(alpn)
    client = framing(world, world.listening[port], source="127.0.0.3")
    client.send(b"GET", b"/x", b"web.test")
    assert b"X-Forwarded-For: 127.0.0.3\r\n" in world.backend_bytes()
    world.answer(OK)
    assert client.answer().status == 200
    assert [line["client"] for line in world.log_lines()] == ["127.0.0.3"]


@ENTRIES
@pytest.mark.parametrize("header", [V1, V2], ids=["v1", "v2"])
def test_an_untrusted_source_cannot_claim_an_address(framing, port, alpn, header):
    world = _proxy_world(alpn)
    client = framing(world, world.listening[port], source="127.0.0.3", preamble=header)
    client.send(b"GET", b"/x", b"web.test")
    assert world.backend_bytes() == b""
    if framing is H1Client:
        assert client.answer().status == 400  # the PROXY line is just a bad request line
    else:
        # Not HTTP/2's preface (over real TLS it would not even be a handshake): closed.
        assert client.answer().status is None
    assert client.transport.disconnecting
    assert all(line["client"] == "127.0.0.3" for line in world.log_lines())


# -- HTTP/2 only ----------------------------------------------------------------------


def test_h2_cookie_crumbs_count_as_the_one_field_they_are_joined_into():
    """RFC 9113 8.2.3: a browser splits its Cookie; HTTP/1.1's one field must not become 20."""
    world = World()
    client = H2Client(world)
    crumbs = tuple((b"cookie", b"c%d=v" % i) for i in range(20))
    client.send(b"GET", b"/x", b"web.test", tuple((b"x-h%d" % i, b"v") for i in range(98)) + crumbs)
    sent = world.backend_bytes()
    assert b"cookie: " + b"; ".join(v for _, v in crumbs) + b"\r\n" in sent
    world.answer(OK)
    assert client.answer().status == 200


@pytest.mark.parametrize("path", [b"https://web.test/x", b"http://two.test/x", b"x"])
def test_an_h2_path_that_is_not_origin_form_is_a_400(path):
    """RFC 9113 8.3.1: no scheme or authority in :path, so it cannot route past :authority."""
    world = World()
    client = H2Client(world)
    client.send(b"GET", path, b"web.test")
    assert client.answer().status == 400
    assert world.backend_bytes() == b""
    assert [line["status"] for line in world.log_lines()] == [400]


@FRAMINGS
def test_counting_middlewares_keep_their_state_across_a_new_snapshot(framing):
    """A snapshot follows any task change in the swarm: limits and breakers must not start over."""
    limit = RateLimit(1, burst=1)
    breaker = CircuitBreaker("ResponseCodeRatio(500, 600, 0, 600) > 0.5", check_period=1.0,
                             fallback_duration=10.0)
    world = World(middlewares=(limit, InFlightReq(1), breaker))
    world.clock.advance(100)
    first = framing(world)
    first.send(b"GET", b"/x", b"mw.test")
    world.service.apply(_snapshot((limit, InFlightReq(1), breaker)))  # while it is in flight
    second = framing(world)
    second.send(b"GET", b"/x", b"mw.test")
    assert second.answer().status == 429  # the in-flight slot is still taken
    world.answer(b"HTTP/1.1 500 X\r\nContent-Length: 0\r\n\r\n")
    assert first.answer().status == 500
    world.clock.advance(1.5)
    world.service._housekeeping()
    world.service.apply(_snapshot((limit, InFlightReq(1), breaker)))
    sent = world.backend_bytes()
    third = framing(world)
    third.send(b"GET", b"/x", b"mw.test")
    assert third.answer().status == 503  # the breaker is still open
    assert world.backend_bytes() == sent
    # A changed definition starts afresh.
    world.service.apply(_snapshot((RateLimit(100, burst=100),)))
    fourth = framing(world)
    fourth.send(b"GET", b"/x", b"mw.test")
    world.answer(OK)
    assert fourth.answer().status == 200
