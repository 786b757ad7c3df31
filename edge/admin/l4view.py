"""The admin API's ``tcp`` and ``udp`` sections: TCP/UDP routers and services as JSON."""

from __future__ import annotations

from edge.config import Config
from edge.snapshot import InFlightConn, IPAllowList, Snapshot

__all__ = ["tcp_view", "udp_view"]


def _targets(service) -> list[dict]:
    return [{"id": t.id, "address": f"{t.host}:{t.port}"} for t in service.targets]


def _middleware(m) -> dict:
    if isinstance(m, IPAllowList):
        return {"type": "ipallowlist", "source_ranges": list(m.source_ranges)}
    if isinstance(m, InFlightConn):
        return {"type": "inflightconn", "amount": m.amount}
    return {"type": type(m).__name__.lower()}


def _entry_points(config: Config, protocols, router) -> list[str]:
    eligible = [ep.name for ep in config.entrypoints if protocols(ep)]
    return [e for e in eligible if not router.entry_points or e in router.entry_points]


def tcp_view(snapshot: Snapshot, config: Config) -> dict:
    tcp_capable = lambda ep: ep.protocol == "tcp" or (ep.protocol == "http" and ep.tls)  # noqa: E731
    return {
        "routers": [
            {
                "name": r.name,
                "rule": r.rule_text,
                "service": r.service,
                "entrypoints": _entry_points(config, tcp_capable, r),
                "priority": r.effective_priority,
                "tls": None if r.tls is None else ("passthrough" if r.tls.passthrough else "terminated"),
                "middlewares": [_middleware(m) for m in r.middlewares],
                "source": r.source,
            }
            for r in snapshot.tcp_routers
        ],
        "services": [
            {"name": s.name, "proxy_protocol": s.proxy_protocol, "targets": _targets(s)}
            for s in snapshot.tcp_services
        ],
    }


def udp_view(snapshot: Snapshot, config: Config) -> dict:
    return {
        "routers": [
            {
                "name": r.name,
                "service": r.service,
                "entrypoints": _entry_points(config, lambda ep: ep.protocol == "udp", r),
                "source": r.source,
            }
            for r in snapshot.udp_routers
        ],
        "services": [{"name": s.name, "targets": _targets(s)} for s in snapshot.udp_services],
    }
