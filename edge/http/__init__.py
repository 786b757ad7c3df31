"""
edge's HTTP reverse proxy: one request pipeline, two client framings.

:mod:`edge.http.routing` turns a snapshot into per-entry-point routing
tables; :mod:`edge.http.http1` (HTTP/1.1) and :mod:`edge.http.http2`
(HTTP/2, on the ``h2`` package) frame client requests and answers;
:mod:`edge.http.exchange` takes every request through routing,
middlewares, balancer and pool; :mod:`edge.http.backend` is the pooled
HTTP/1.1 backend connection; :mod:`edge.http.forwarding` the forwarded
request head; :mod:`edge.http.proxy` the entry points and shared state;
:mod:`edge.http.service` the Twisted service that ties them to the
snapshot publisher.  See ``docs/http.md``.
"""

from edge.http.service import HTTPService, make_http_service

__all__ = ["HTTPService", "make_http_service"]
