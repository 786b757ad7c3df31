"""
A snapshot as plain JSON-able data, for ``python -m edge.discovery`` and the
admin API.

Dataclasses become dicts of their fields; a router's rule becomes its
``rule_text`` (the parsed tree is an implementation detail); middlewares get a
``type`` key naming their kind.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from edge.snapshot import Router, Snapshot

__all__ = ["to_data", "snapshot_to_data"]


def to_data(value: Any) -> Any:
    """Plain dicts, lists, strings and numbers for any snapshot part."""
    if isinstance(value, Router):
        data = {"name": value.name, "rule": value.rule_text}
        for f in dataclasses.fields(value):
            if f.name not in ("name", "rule", "rule_text"):
                data[f.name] = to_data(getattr(value, f.name))
        data["priority_effective"] = value.effective_priority
        return data
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        data = {}
        for f in dataclasses.fields(value):
            if f.name.startswith("_"):
                continue
            data[f.name] = to_data(getattr(value, f.name))
        return data
    if isinstance(value, (tuple, list, set, frozenset)):
        items = [to_data(v) for v in value]
        return sorted(items) if isinstance(value, (set, frozenset)) else items
    if isinstance(value, dict):
        return {str(k): to_data(v) for k, v in value.items()}
    return value


def _middleware(value: Any) -> Any:
    data = to_data(value)
    return {"type": type(value).__name__, **data}


def snapshot_to_data(snapshot: Snapshot) -> dict:
    """The whole snapshot: routers, services with targets, nodes, swarm services, problems."""
    routers = []
    for router in snapshot.routers:
        data = to_data(router)
        data["middlewares"] = [_middleware(m) for m in router.middlewares]
        routers.append(data)
    services = []
    for service in snapshot.services:
        data = to_data(service)
        for target, raw in zip(data["targets"], service.targets):
            target["url"] = raw.url
        services.append(data)
    return {
        "routers": routers,
        "services": services,
        "nodes": to_data(snapshot.nodes),
        "swarm_services": to_data(snapshot.swarm_services),
        "problems": to_data(snapshot.problems),
        # TCP/UDP routers: the rule as written, middlewares with their type.
        "tcp_routers": [
            {**to_data(r), "rule": r.rule_text, "middlewares": [_middleware(m) for m in r.middlewares]}
            for r in snapshot.tcp_routers
        ],
        "tcp_services": to_data(snapshot.tcp_services),
        "udp_routers": to_data(snapshot.udp_routers),
        "udp_services": to_data(snapshot.udp_services),
    }
