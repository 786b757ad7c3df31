"""
Read Traefik v1, Traefik v2/v3 and edge's own ``edge.*`` labels into routers
and services (interface first; the readers follow in the next commits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from edge.snapshot import HealthCheck, Problem, Router, StickyCookie

__all__ = ["ServiceSpec", "LabelConfig", "read_labels"]


@dataclass(frozen=True)
class ServiceSpec:
    """What labels say about one load-balanced service; targets come from Docker."""

    name: str
    port: int | None = None
    scheme: str = "http"
    weight: int = 1
    network: str = ""
    lb_swarm: bool = False
    pass_host_header: bool = True
    sticky: StickyCookie | None = None
    health_check: HealthCheck | None = None


@dataclass(frozen=True)
class LabelConfig:
    enabled: bool
    routers: tuple[Router, ...]
    services: tuple[ServiceSpec, ...]
    problems: tuple[Problem, ...]


def read_labels(
    source: str,
    labels: Mapping[str, str],
    *,
    provider: str = "docker",
    domain: str = "",
    exposed_by_default: bool = True,
) -> LabelConfig:
    """Interface placeholder: reads only the enable flag for now."""
    enabled = exposed_by_default
    for key in ("traefik.enable", "edge.enable"):
        if key in labels:
            enabled = labels[key].strip().lower() == "true"
    return LabelConfig(enabled=enabled, routers=(), services=(), problems=())
