"""
The admin site: dashboard, JSON API, ``/metrics``, ``/healthz``, ``/ca.crt``.

Each resource is small and reads live state through an :class:`AdminState`
at request time, so a new snapshot or a reloaded config shows up on the next
request with nothing to invalidate.
"""

from __future__ import annotations

import base64
import json
from importlib.resources import files
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.logger import Logger
from twisted.web import resource
from twisted.web.server import Request

from edge import metrics
from edge.admin.view import SECTIONS

__all__ = ["AdminRoot", "AdminState"]


class AdminState:
    """The live facts the admin resources serve; built by the admin service."""

    def __init__(
        self,
        overview: Callable[[], dict],
        snapshot_json: Callable[[], object],
        update_metrics: Callable[[], None],
        ca_certificate: Callable[[], bytes | None],
        users: Callable[[], tuple[str, ...]],
        check_password: Callable[[tuple[str, ...], str, str], bool],
        certificates: Callable[[], list] = lambda: [],
    ):
        self.overview = overview
        self.snapshot_json = snapshot_json
        self.update_metrics = update_metrics
        self.ca_certificate = ca_certificate
        self.users = users
        self.check_password = check_password
        # ACME-managed certificates (edge.acme.service.ACMEService.certificates).
        self.certificates = certificates


def _json(request: Request, value: object, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(value, indent=1, sort_keys=False).encode() + b"\n"


class _Leaf(resource.Resource):
    isLeaf = True

    def __init__(self, state: AdminState):
        super().__init__()
        self.state = state


class APIResource(resource.Resource):
    """``/api/overview`` (everything), ``/api/<section>``, ``/api/snapshot``."""

    def __init__(self, state: AdminState):
        super().__init__()
        self.state = state

    def getChild(self, path: bytes, request: Request):
        name = path.decode("ascii", "replace")
        if name in ("", "overview"):
            return _Section(self.state, None)
        if name == "snapshot":
            return _Snapshot(self.state)
        if name == "certificates":
            return _Certificates(self.state)
        if name in SECTIONS:
            return _Section(self.state, name)
        return _NotFound(f"no API section {name!r}; try /api/overview")


class _Section(_Leaf):
    def __init__(self, state: AdminState, section: str | None):
        super().__init__(state)
        self.section = section

    def render_GET(self, request: Request) -> bytes:
        value = self.state.overview()
        if self.section is not None:
            value = value[self.section]
        return _json(request, value)


class _Snapshot(_Leaf):
    def render_GET(self, request: Request) -> bytes:
        return _json(request, self.state.snapshot_json())


class _Certificates(_Leaf):
    """``/api/certificates``: each ACME certificate, its expiry and its last order's error."""

    def render_GET(self, request: Request) -> bytes:
        return _json(request, {"certificates": self.state.certificates()})


class _NotFound(resource.Resource):
    isLeaf = True

    def __init__(self, message: str):
        super().__init__()
        self.message = message

    def render(self, request: Request) -> bytes:
        return _json(request, {"error": self.message}, 404)


class MetricsResource(_Leaf):
    """Prometheus text format of :data:`edge.metrics.REGISTRY`."""

    def render_GET(self, request: Request) -> bytes:
        self.state.update_metrics()
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(metrics.REGISTRY)


class HealthResource(_Leaf):
    """200 while every configured listener listens; the container health check asks this.

    A listener that is not listening (a port lost after start-up, an address
    a reload could not bind) fails the check with 503: that node serves less
    than it was configured to.  Discovery trouble is reported in the body but
    does not fail the check: edge keeps routing with its last good snapshot,
    and a restart would only throw that away.
    """

    def render_GET(self, request: Request) -> bytes:
        view = self.state.overview()
        down = [l for l in view["listeners"] if l["state"] != "listening"]
        return _json(
            request,
            {
                "status": "fail" if down else "ok",
                "generation": view["generation"],
                "discovery": {d["name"]: d["connected"] for d in view["discovery"]},
                "listeners_down": [f"{l['name']} ({l['address']}): {l['error']}" for l in down],
            },
            503 if down else 200,
        )

    render_HEAD = render_GET


class CACertificateResource(_Leaf):
    """edge's own CA certificate, for clients to trust its issued certificates."""

    def render_GET(self, request: Request) -> bytes:
        pem = self.state.ca_certificate()
        if pem is None:
            return _NotFound("edge's internal CA is off ([tls] internal_ca = false)").render(request)
        request.setHeader(b"content-type", b"application/x-pem-file")
        request.setHeader(b"content-disposition", b'attachment; filename="edge-ca.crt"')
        return pem


class _Asset(resource.Resource):
    """One file of the dashboard, read once: a handful of small files."""

    isLeaf = True
    _TYPES = {
        ".html": b"text/html; charset=utf-8",
        ".js": b"text/javascript; charset=utf-8",
        ".css": b"text/css; charset=utf-8",
    }

    def __init__(self, path):
        super().__init__()
        self.body = path.read_bytes()
        self.content_type = self._TYPES[path.name[path.name.rindex("."):]]

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", self.content_type)
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"x-frame-options", b"DENY")
        request.setHeader(b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'")
        return self.body


class _Unauthorized(resource.Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        request.setResponseCode(401)
        request.setHeader(b"www-authenticate", b'Basic realm="edge admin", charset="UTF-8"')
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"authentication required\n"


class AdminRoot(resource.Resource):
    """
    The admin site's root.  With users configured every path but
    ``/healthz`` needs basic auth, so the container health check needs no
    credentials and reveals nothing.
    """

    _log = Logger()

    def __init__(self, state: AdminState):
        super().__init__()
        self.state = state
        static = files("edge.admin") / "static"
        self.putChild(b"", _Asset(static / "dashboard.html"))
        assets = resource.Resource()
        for name in ("dashboard.js", "dashboard.css"):
            assets.putChild(name.encode(), _Asset(static / name))
        self.putChild(b"static", assets)
        self.putChild(b"api", APIResource(state))
        self.putChild(b"metrics", MetricsResource(state))
        self.putChild(b"healthz", HealthResource(state))
        self.putChild(b"ca.crt", CACertificateResource(state))

    def getChildWithDefault(self, path: bytes, request: Request):
        if path != b"healthz" and not self._authorized(request):
            return _Unauthorized()
        return super().getChildWithDefault(path, request)

    def _authorized(self, request: Request) -> bool:
        users = self.state.users()
        if not users:
            return True
        header = request.getHeader(b"authorization") or b""
        scheme, _, encoded = header.partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            username, _, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        if self.state.check_password(users, username, password):
            return True
        self._log.warn(
            "Admin login failed for user {user!r} from {client}",
            user=username,
            client=request.getClientAddress(),
        )
        return False
