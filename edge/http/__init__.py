"""
edge's HTTP/1.1 reverse proxy.

:mod:`edge.http.routing` turns a snapshot into per-entry-point routing
tables, :mod:`edge.http.proxy` is the protocol-level hot path,
:mod:`edge.http.service` the Twisted service that ties them to the
snapshot publisher.  See ``docs/http.md``.
"""

from edge.http.service import HTTPService, make_http_service

__all__ = ["HTTPService", "make_http_service"]
