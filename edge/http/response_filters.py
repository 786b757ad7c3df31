"""
Response filters: the middlewares that see a backend's answer before the client does.

``compress`` and ``errors`` need the response head and its body stream,
which the request middlewares (:mod:`edge.http.middlewares`) never see.  For
a router whose chain has such middlewares, the exchange puts one
:class:`Filter` per middleware in front of the framing's side when it
dispatches the request; the backend connection then talks to the filter
nearest to it (``req.response_filter``), and each filter hands what it lets
through to the side towards the client (``out``: the next filter, or the
HTTP/1.1 connection / HTTP/2 stream).  The first middleware listed is the
one nearest to the client, as in Traefik, where it wraps the ones after it.

A router without response middlewares never builds a filter: its requests
take exactly the path they took before (``req.response_filter`` stays None).

Flow control is untouched: the framing still pauses and resumes the
backend connection itself (it holds the connection, not the filter), and a
filter passes each backend read on within the same reactor turn.
"""

from __future__ import annotations

from edge.http import exchange as _exchange

__all__ = ["Head", "Filter", "interpose"]


class Head:
    """
    A response head made by a filter, read by the framings the way they read
    :class:`~edge.http.backend.BackendProtocol`'s own: ``status``, ``reason``,
    ``relayable()``, ``content_length`` (bytes or None), ``chunked``.
    ``kept`` is None, so the framings build the header lines from
    ``relayable()``.
    """

    __slots__ = ("status", "reason", "headers", "content_length", "chunked")
    kept = None

    def __init__(self, status: int, reason: bytes, headers: list, content_length=None, chunked=False):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content_length = content_length
        self.chunked = chunked

    def relayable(self, keep=frozenset()) -> list:
        return list(self.headers)

    @classmethod
    def of(cls, head) -> "Head":
        """A copy of a backend's head (hop-by-hop fields already dropped) to edit."""
        return cls(head.status, head.reason, head.relayable(), head.content_length, head.chunked)


class Filter:
    """
    One response middleware for one request, in front of ``out``.

    What a subclass does not override goes to ``out`` unchanged, so a filter
    is an :class:`~edge.http.exchange.ExchangeSide` for the exchange and the
    backend connection alike.
    """

    def __init__(self, out, req):
        self.out = out
        self.req = req
        self.conn = None  # the backend connection attached through this filter

    def __getattr__(self, name):
        # factory, proxy, peer, pause, resume, start_tunnel, tunnel_data, ...
        return getattr(self.out, name)

    # -- called by the exchange
    def attach(self, req, conn, reused: bool) -> None:
        self.conn = conn
        self.out.attach(req, conn, reused)

    def reply(self, req, reply) -> None:
        self.out.reply(req, reply)

    def gone(self, req) -> bool:
        return self.out.gone(req)

    def flush(self) -> None:
        self.out.flush()

    # -- called by the backend connection
    def touch(self) -> None:
        self.out.touch()

    def backend_full(self, full: bool) -> None:
        self.out.backend_full(full)

    def backend_detached(self, conn) -> None:
        self.out.backend_detached(conn)

    def response_head(self, req, head) -> bool:
        return self.out.response_head(req, head)

    def response_body(self, req, data: bytes) -> None:
        self.out.response_body(req, data)

    def response_end(self, req) -> None:
        self.out.response_end(req)

    def backend_failed(self, req, cause: str, head_sent: bool) -> None:
        self.out.backend_failed(req, cause, head_sent)

    def retry(self, req) -> None:
        # Only the filter nearest the backend hears this: dispatch again through it.
        _exchange.dispatch(self, req)
        self.flush()


def interpose(side, req, makers):
    """
    The side to dispatch ``req`` with: ``side`` behind the filters ``makers``
    build for it, in the chain's order (each ``make(out, req)`` returns a
    filter, or ``out`` itself when it has nothing to do for this request).
    """
    inner = side
    for make in makers:
        inner = make(inner, req)
    if inner is not side:
        req.response_filter = inner
    return inner
