"""
One TCP entry point's routing table, built from a snapshot and swapped whole.

Routes are tried in Traefik's order (priority, else rule length; then name).
A TLS connection goes to the first TLS router whose rule matches its
ClientHello; a connection that is not TLS only to plain ``HostSNI(`*`)``
routers.  Nothing matching means: the HTTP side of the entry point, if it
has one, else the connection is closed.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from edge.snapshot import InFlightConn, IPAllowList, Snapshot, TCPRouter, TCPService, Target
from edge.tcp.rules import matches, needs_tls

__all__ = ["TCPRoute", "TCPTable", "build_tcp_table"]


@dataclass(frozen=True)
class TCPRoute:
    router: TCPRouter
    service: TCPService
    allow: tuple  # one tuple of ip networks per allow list; the client must be in each
    in_flight: int  # per client IP; 0 = no limit

    @property
    def terminate(self) -> bool:
        """Edge terminates TLS and proxies the plaintext."""
        return self.router.tls is not None and not self.router.tls.passthrough

    def allows(self, client: str) -> bool:
        if not self.allow:
            return True
        try:
            ip = ipaddress.ip_address(client)
        except ValueError:
            return False
        ip = getattr(ip, "ipv4_mapped", None) or ip
        return all(any(ip in net for net in nets) for nets in self.allow)


@dataclass
class TCPTable:
    routes: tuple[TCPRoute, ...] = ()
    # A router reads the ClientHello: connections are peeked before routing.
    peek: bool = False
    _next: dict = field(default_factory=dict)

    def match(self, sni: str | None, alpn: tuple[str, ...], client: str) -> TCPRoute | None:
        """``sni`` None: the connection is not TLS."""
        tls = sni is not None
        for route in self.routes:
            if (route.router.tls is not None) == tls and matches(route.router.rule, sni, alpn, client):
                return route
        if sni is not None:
            # Traefik: a plain HostSNI(`*`) router takes TLS bytes it finds no TLS router for.
            for route in self.routes:
                if route.router.tls is None and matches(route.router.rule, None, (), client):
                    return route
        return None

    def pick(self, route: TCPRoute) -> Target | None:
        """The next backend of the route's service, round robin."""
        targets = route.service.targets
        if not targets:
            return None
        i = self._next.get(route.service.name, 0)
        self._next[route.service.name] = i + 1
        return targets[i % len(targets)]


def _route(router: TCPRouter, service: TCPService) -> TCPRoute:
    allow, in_flight = [], 0
    for middleware in router.middlewares:
        if isinstance(middleware, IPAllowList):
            allow.append(tuple(ipaddress.ip_network(r, strict=False) for r in middleware.source_ranges))
        elif isinstance(middleware, InFlightConn):
            in_flight = middleware.amount if not in_flight else min(in_flight, middleware.amount)
    return TCPRoute(router, service, tuple(allow), in_flight)


def build_tcp_table(snapshot: Snapshot, entrypoint: str) -> TCPTable:
    """The routes of ``entrypoint``: routers naming it, or naming no entry point."""
    services = {s.name: s for s in snapshot.tcp_services}
    routes = [
        _route(r, services[r.service])
        for r in snapshot.tcp_routers
        if (not r.entry_points or entrypoint in r.entry_points) and r.service in services
    ]
    routes.sort(key=lambda route: (-route.router.effective_priority, route.router.name))
    peek = any(route.router.tls is not None or needs_tls(route.router.rule) for route in routes)
    return TCPTable(tuple(routes), peek)
