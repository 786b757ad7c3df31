"""
What the admin API says about the running edge, as plain JSON-ready values.

:func:`overview` is a pure function of the current snapshot and a few facts
gathered around it (discovery status, target health, DNS names), so the API
and the dashboard show exactly what the front ends are using, and tests can
check it without a reactor.  Nothing secret leaves here: basic-auth users are
counted, never listed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from edge.config import Config
from edge.admin.l4view import tcp_view, udp_view
from edge.redact import redact_text
from edge.discovery.publisher import ProviderStatus
from edge.snapshot import (
    BasicAuth,
    BackendService,
    Headers,
    IPAllowList,
    Problem,
    RedirectScheme,
    Router,
    Snapshot,
    StripPrefix,
    Target,
)

__all__ = ["Facts", "overview", "middleware_view", "SECTIONS"]

SECTIONS = ("summary", "problems", "entrypoints", "listeners", "routers", "services", "dns", "discovery", "nodes",
            "tcp", "udp")

# Health as the HTTP layer reports it: (service name, target) -> True (its
# health check passes), False (it fails), "failing" (no check, but the proxy's
# connections fail and it is backing off), None (nothing known: unchecked).
HealthLookup = Callable[[str, Target], "bool | str | None"]


@dataclass(frozen=True)
class Facts:
    """Everything besides the snapshot that the overview reports."""

    generation: int = 0
    published_at: float | None = None
    now: float = 0.0
    statuses: tuple[ProviderStatus, ...] = ()
    health: HealthLookup = field(default=lambda service, target: None)
    # (name, type, values, source) rows the DNS server answers.
    dns_names: tuple[tuple[str, str, tuple[str, ...], str], ...] = ()
    version: str = ""
    # Every configured listener as ListenerState.as_dict() gives it.
    listeners: tuple[dict, ...] = ()
    # Router name -> why it does not serve (edge.admin.routercheck).
    router_errors: Mapping[str, str] = field(default_factory=dict)


def middleware_view(middleware: Any) -> dict:
    """One middleware, described without secrets."""
    kind = type(middleware).__name__
    if isinstance(middleware, RedirectScheme):
        detail = f"to {middleware.scheme}" + (f":{middleware.port}" if middleware.port else "")
        if middleware.permanent:
            detail += " (permanent)"
    elif isinstance(middleware, StripPrefix):
        detail = ", ".join(middleware.prefixes)
    elif isinstance(middleware, BasicAuth):
        detail = f"{len(middleware.users)} user(s), realm {middleware.realm!r}"
    elif isinstance(middleware, IPAllowList):
        detail = ", ".join(middleware.source_ranges)
    elif isinstance(middleware, Headers):
        parts = []
        if middleware.custom_request:
            parts.append(f"{len(middleware.custom_request)} request header(s)")
        if middleware.custom_response:
            parts.append(f"{len(middleware.custom_response)} response header(s)")
        if middleware.sts_seconds:
            parts.append(f"HSTS {middleware.sts_seconds}s")
        if middleware.ssl_redirect:
            parts.append("TLS redirect")
        detail = ", ".join(parts)
    else:
        detail = ""
    return {"type": kind, "detail": detail}


def _target_view(service: BackendService, target: Target, facts: Facts) -> dict:
    health = facts.health(service.name, target)
    return {
        "id": target.id,
        "url": target.url,
        "weight": target.weight,
        "node": target.node_id,
        "health": (
            "unknown" if health is None else "failing" if health == "failing" else ("up" if health else "down")
        ),
    }


def _service_view(service: BackendService, facts: Facts, used_by: list[str]) -> dict:
    targets = [_target_view(service, t, facts) for t in service.targets]
    down = sum(1 for t in targets if t["health"] in ("down", "failing"))
    if not targets or down == len(targets):
        status = "error"
    elif down:
        status = "warning"
    else:
        status = "ok"
    check = service.health_check
    return {
        "name": service.name,
        "provider": service.name.rpartition("@")[2] if "@" in service.name else "",
        "status": status,
        "targets": targets,
        "targets_up": sum(1 for t in targets if t["health"] == "up"),
        # Checked and failing, or (no check) refusing connections: not used.
        "targets_down": down,
        "targets_checked_down": sum(1 for t in targets if t["health"] == "down"),
        "targets_failing": sum(1 for t in targets if t["health"] == "failing"),
        "targets_unchecked": sum(1 for t in targets if t["health"] == "unknown"),
        "pass_host_header": service.pass_host_header,
        "sticky": service.sticky.name if service.sticky else "",
        "health_check": (
            {"path": check.path, "interval": check.interval, "timeout": check.timeout}
            if check
            else None
        ),
        "routers": used_by,
    }


def _port(address: str) -> int | None:
    import re

    match = re.match(r"^(?:tcp6?|ssl|tls)?:?(?:port=)?(\d+)", address) or re.search(r"(?:^|:)port=(\d+)", address)
    return int(match.group(1)) if match else None


def _router_urls(router: Router, config: Config, entry_points: list[str]) -> list[str]:
    """A link per host and entry point, with the entry point's port unless it is the default."""
    urls = []
    for host in sorted(router.hosts):
        if host.startswith("*"):
            continue
        for name in entry_points:
            ep = config.entrypoint(name)
            if ep is None:
                continue
            tls = ep.tls
            scheme = "https" if tls else "http"
            port = _port(ep.address)
            default = 443 if tls else 80
            url = f"{scheme}://{host}" + ("" if port in (None, default) else f":{port}") + "/"
            if url not in urls:
                urls.append(url)
    return urls


def _router_view(router: Router, config: Config, services: Mapping[str, dict], error: str = "") -> dict:
    all_eps = [ep.name for ep in config.entrypoints]
    entry_points = list(router.entry_points) or all_eps
    tls_eps = [n for n in entry_points if (ep := config.entrypoint(n)) and ep.tls]
    tls_enabled = router.tls is not None or bool(tls_eps)
    service = services.get(router.service)
    if service is None or error:
        status = "error"
    else:
        status = service["status"]
    return {
        "name": router.name,
        "provider": router.provider,
        "rule": router.rule_text,
        "hosts": sorted(router.hosts),
        "entrypoints": entry_points,
        "priority": router.effective_priority,
        "service": router.service,
        "middlewares": [middleware_view(m) for m in router.middlewares],
        "tls": {
            "enabled": tls_enabled,
            # Asked for on the router itself (labels/route), not only by a TLS entry point.
            "router": router.tls is not None,
            "entrypoints": tls_eps,
            "cert_resolver": router.tls.cert_resolver if router.tls else "",
            "domains": list(router.tls.domains) if router.tls else [],
        },
        "urls": _router_urls(router, config, entry_points),
        "status": status,
        "error": redact_text(error),
        "source": router.source,
    }


def _status_view(status: ProviderStatus, now: float) -> dict:
    return {
        "name": status.name,
        "connected": status.connected,
        "last_sync": status.last_sync,
        "last_sync_age": None if status.last_sync is None else max(0.0, now - status.last_sync),
        "last_error": status.last_error,
        "last_error_at": status.last_error_at,
        "syncs": status.syncs,
        "errors": status.errors,
    }


def _problem(level: str, source: str, message: str, label: str = "") -> dict:
    return {"level": level, "source": source, "message": redact_text(message), "label": label}


def _why_down(service: dict) -> str:
    parts = []
    if service["targets_checked_down"]:
        parts.append(f"{service['targets_checked_down']} failing the health check")
    if service["targets_failing"]:
        parts.append(
            f"{service['targets_failing']} refusing connections"
            + ("" if service["health_check"] else " (no health check configured)")
        )
    return ", ".join(parts)


def _problems(
    snapshot: Snapshot,
    routers: Iterable[dict],
    services: Mapping[str, dict],
    statuses: Iterable[ProviderStatus],
) -> list[dict]:
    """Everything a person should look at first, errors before warnings."""
    found: list[dict] = []
    for status in statuses:
        if not status.connected:
            message = "not connected"
            if status.last_error:
                message += f": {status.last_error}"
            if status.last_sync is not None:
                message += " (serving its last good state)"
            found.append(_problem("error", f"discovery {status.name}", message))
    for router in routers:
        if router["error"]:
            found.append(_problem("error", router["name"], router["error"]))
        if router["service"] not in services:
            found.append(
                _problem(
                    "error",
                    router["name"],
                    f"routes to service {router['service']!r}, which does not exist",
                )
            )
    for service in services.values():
        if not service["targets"]:
            found.append(_problem("error", service["name"], "no targets: requests get 503"))
        elif service["targets_down"] == len(service["targets"]):
            found.append(_problem("error", service["name"], "every target is down: " + _why_down(service)))
        elif service["targets_down"]:
            found.append(
                _problem(
                    "warning",
                    service["name"],
                    f"{service['targets_down']} of {len(service['targets'])} targets down: {_why_down(service)}",
                )
            )
    found.extend(
        _problem(p.level, p.source, p.message, p.label) for p in snapshot.problems
    )
    order = {"error": 0, "warning": 1}
    found.sort(key=lambda p: (order.get(p["level"], 2), p["source"], p["message"]))
    return found


def overview(snapshot: Snapshot, config: Config, facts: Facts) -> dict:
    """The whole picture: what the API serves at ``/api/overview``."""
    used_by: dict[str, list[str]] = {}
    for router in snapshot.routers:
        used_by.setdefault(router.service, []).append(router.name)
    services = {
        s.name: _service_view(s, facts, used_by.get(s.name, [])) for s in snapshot.services
    }
    routers = [
        _router_view(r, config, services, facts.router_errors.get(r.name, "")) for r in snapshot.routers
    ]
    problems = _problems(snapshot, routers, services, facts.statuses)
    for listener in facts.listeners:
        if listener["state"] != "listening":
            problems.insert(0, _problem("error", f"listener {listener['name']}", listener["error"]))
    listening = {l["name"]: l for l in facts.listeners if l["kind"] in ("http", "https", "tcp", "udp")}
    targets = [t for s in services.values() for t in s["targets"]]
    return {
        "version": facts.version,
        "generation": facts.generation,
        "published_at": facts.published_at,
        "now": facts.now,
        "summary": {
            "routers": len(routers),
            "services": len(services),
            "targets": len(targets),
            "targets_up": sum(1 for t in targets if t["health"] == "up"),
            "targets_down": sum(1 for t in targets if t["health"] in ("down", "failing")),
            "targets_failing": sum(1 for t in targets if t["health"] == "failing"),
            "targets_unchecked": sum(1 for t in targets if t["health"] == "unknown"),
            "errors": sum(1 for p in problems if p["level"] == "error"),
            "warnings": sum(1 for p in problems if p["level"] != "error"),
            "dns_names": len(facts.dns_names),
        },
        "problems": problems,
        "entrypoints": [
            {
                "name": ep.name,
                "address": ep.address,
                "tls": ep.tls,
                "protocol": ep.protocol,
                "redirect_to": ep.redirect_to,
                "state": listening[ep.name]["state"] if ep.name in listening else "unknown",
                "error": listening[ep.name]["error"] if ep.name in listening else "",
            }
            for ep in config.entrypoints
        ],
        "listeners": list(facts.listeners),
        "routers": routers,
        "services": list(services.values()),
        "tcp": tcp_view(snapshot, config),
        "udp": udp_view(snapshot, config),
        "dns": {
            "enabled": config.dns.enabled,
            "zone": config.dns.zone,
            "ttl": config.dns.ttl,
            "port": config.dns.port,
            "names": [
                {"name": name, "type": rtype, "values": list(values), "source": source}
                for name, rtype, values, source in facts.dns_names
            ],
        },
        "discovery": [_status_view(s, facts.now) for s in facts.statuses],
        "nodes": [
            {
                "id": n.id,
                "hostname": n.hostname,
                "role": n.role,
                "address": n.address,
                "state": n.state,
                "availability": n.availability,
                "leader": n.leader,
            }
            for n in snapshot.nodes
        ],
    }
