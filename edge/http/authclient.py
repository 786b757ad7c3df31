"""
A small HTTP/1.1 client for forward-auth calls, on pooled keep-alive connections.

Twisted's Agent costs about 200 µs of Python per call (bench/forwardauth.sh),
several times edge's whole proxy path; an auth call is one request head out
and one small answer back, so this client writes the head as bytes and parses
the answer with httptools (llhttp), as edge's backend connections do.  It
serves bodies delimited by length, chunks or close, up to a bound; a request
whose answer has no body by method (HEAD) goes through the Agent instead.

Idle connections are kept per (scheme, host, port), newest reused first, at
most :data:`IDLE_PER_HOST`, and closed after :data:`IDLE_SECONDS`.  A pooled
connection that fails before any answer byte is retried once on a new one
(the server closed it while idle); a new connection is never retried.
"""

from __future__ import annotations

import httptools
from twisted.internet import defer, endpoints, protocol
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

__all__ = ["AuthClient", "Answer", "TooBig", "IDLE_PER_HOST", "IDLE_SECONDS"]

IDLE_PER_HOST = 64  # as [http] backend_pool_size: below the concurrency, connections churn
IDLE_SECONDS = 30.0


class TooBig(Exception):
    pass


class Answer:
    """The auth server's answer: status, reason, header pairs as sent, body."""

    __slots__ = ("code", "phrase", "headers", "body")

    def __init__(self, code: int, phrase: bytes, headers: list, body: bytes):
        self.code, self.phrase, self.headers, self.body = code, phrase, headers, body


class _StaleConnection(Exception):
    """A pooled connection ended before any byte of the answer."""


class _Connection(protocol.Protocol):
    def __init__(self, client: "AuthClient", key, limit: int):
        self._client = client
        self.key = key
        self._limit = limit
        self._pending: defer.Deferred | None = None
        self.idle_since = 0.0
        self.reused = False

    # -- one exchange

    def send(self, head: bytes) -> defer.Deferred:
        self._parser = httptools.HttpResponseParser(self)
        self._headers: list = []
        self._body: list = []
        self._size = 0
        self._name = b""
        self._got = False
        self._head_done = False
        self._phrase = b""
        self._complete = False
        self._pending = d = defer.Deferred(lambda _d: self.transport.abortConnection())
        self.transport.write(head)
        return d

    def on_status(self, phrase: bytes) -> None:
        self._phrase += phrase

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._head_done = True

    def on_body(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._limit:
            raise TooBig(f"auth answer over {self._limit} bytes")
        self._body.append(data)

    def on_message_complete(self) -> None:
        self._complete = True
        self._keep = self._parser.should_keep_alive()  # only true inside this callback

    def dataReceived(self, data: bytes) -> None:
        if self._pending is None:
            self.transport.abortConnection()  # bytes nobody asked for
            return
        self._got = True
        try:
            self._parser.feed_data(data)
        except TooBig as e:
            self._fail(Failure(e))
            return
        except httptools.HttpParserError as e:
            self._fail(Failure(ValueError(f"bad answer from the auth server: {e}")))
            return
        if self._complete:
            self._done(keep=self._keep)

    def connectionLost(self, reason=ConnectionDone) -> None:
        self._client._forget(self)
        if self._pending is None:
            return
        if self._head_done and not self._complete and not any(
                k.lower() in (b"content-length", b"transfer-encoding") for k, _ in self._headers):
            self._complete = True  # an answer whose body ends with the connection
            self._done(keep=False)
            return
        if not self._got and self.reused:
            self._fail(Failure(_StaleConnection()))
        else:
            self._fail(reason)

    def _done(self, keep: bool) -> None:
        d, self._pending = self._pending, None
        answer = Answer(self._parser.get_status_code(), self._phrase, self._headers, b"".join(self._body))
        if keep:
            self._client._release(self)
        else:
            self.transport.loseConnection()
        d.callback(answer)

    def _fail(self, failure: Failure) -> None:
        d, self._pending = self._pending, None
        self.transport.abortConnection()
        if d is not None and not d.called:
            d.errback(failure)


class AuthClient:
    """GETs to auth servers; ``policy`` makes the TLS connection creator for https."""

    def __init__(self, reactor, policy, connect_timeout: float, limit: int):
        self._reactor = reactor
        self._policy = policy
        self._connect_timeout = connect_timeout
        self._limit = limit
        self._idle: dict[tuple, list[_Connection]] = {}

    def request(self, scheme: str, host: str, port: int, head: bytes) -> defer.Deferred:
        key = (scheme, host, port)
        conn = self._take(key)
        if conn is not None:
            d = conn.send(head)
            d.addErrback(self._retry_stale, key, head)
            return d
        return self._connect(key).addCallback(lambda c: c.send(head))

    def _retry_stale(self, failure, key, head):
        failure.trap(_StaleConnection)
        return self._connect(key).addCallback(lambda c: c.send(head))

    def _connect(self, key) -> defer.Deferred:
        scheme, host, port = key
        endpoint = endpoints.HostnameEndpoint(self._reactor, host, port, timeout=self._connect_timeout)
        if scheme == "https":
            creator = self._policy.creatorForNetloc(host.encode("ascii"), port)
            endpoint = endpoints.wrapClientTLS(creator, endpoint)
        factory = protocol.Factory.forProtocol(lambda: _Connection(self, key, self._limit))
        factory.noisy = False
        return endpoint.connect(factory)

    def _take(self, key) -> _Connection | None:
        idle = self._idle.get(key)
        now = self._reactor.seconds()
        while idle:
            conn = idle.pop()
            if now - conn.idle_since <= IDLE_SECONDS:
                conn.reused = True
                return conn
            conn.transport.loseConnection()
        return None

    def _release(self, conn: _Connection) -> None:
        idle = self._idle.setdefault(conn.key, [])
        conn.idle_since = self._reactor.seconds()
        idle.append(conn)
        while len(idle) > IDLE_PER_HOST:
            idle.pop(0).transport.loseConnection()

    def _forget(self, conn: _Connection) -> None:
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def close(self) -> None:
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.transport.loseConnection()

