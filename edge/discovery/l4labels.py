"""
Read ``traefik.tcp.*`` and ``traefik.udp.*`` labels (or ``edge.tcp.*``,
``edge.udp.*``) into TCP/UDP routers and service descriptions.

Called by :mod:`edge.discovery.labels` with its problem collector, so
mistakes are reported the same way: a problem naming the label, and only
the router it breaks is dropped.  A router whose ``ipallowlist`` cannot be
built is dropped, never served open.  Traefik's defaults hold: a router
without ``.service`` uses the service's only TCP (UDP) service, or a default
one named after the container whose port Docker tells.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from edge.discovery.rule_parser import RuleError
from edge.snapshot import InFlightConn, IPAllowList, TCPRouter, TCPRouterTLS, UDPRouter
from edge.tcp.rules import catch_all, needs_tls, parse_tcp_rule

__all__ = ["L4ServiceSpec", "L4Labels", "read_l4_labels"]


@dataclass(frozen=True)
class L4ServiceSpec:
    """A TCP or UDP load balancer the labels describe; targets come from Docker."""

    name: str  # qualified: "db@docker"
    protocol: str  # "tcp" | "udp"
    port: int | None = None
    network: str = ""
    lb_swarm: bool = False
    proxy_protocol: int = 0
    # What the shared target builder reads from HTTP specs.
    weight: int = 1

    @property
    def scheme(self) -> str:
        return self.protocol


@dataclass(frozen=True)
class L4Labels:
    tcp_routers: tuple[TCPRouter, ...] = ()
    udp_routers: tuple[UDPRouter, ...] = ()
    services: tuple[L4ServiceSpec, ...] = ()


_TLS_DOMAIN = re.compile(r"^tls\.domains\[(\d+)\]\.(main|sans)$")


def _collect(reader, entries, prefix: str):
    """{("tcp"|"udp", section, name): {option: (label, value)}} and the network labels."""
    found: dict[tuple[str, str, str], dict[str, tuple[str, str]]] = {}
    network = lb_swarm = None
    for label, parts, lower, value in entries:
        if lower[0] != prefix:
            continue
        if lower[1:2] in (["docker"], ["swarm"]) and len(lower) == 3:
            if lower[2] == "network":
                network = value.strip()
            elif lower[2] == "lbswarm":
                lb_swarm = (label, value)
            continue
        if lower[1:2] not in (["tcp"], ["udp"]):
            continue
        if len(lower) < 5 or not parts[3] or lower[2] not in ("routers", "services", "middlewares"):
            reader.unknown(label)
            continue
        key = (lower[1], lower[2], parts[3])
        found.setdefault(key, {})[".".join(lower[4:])] = (label, value)
    lb = reader.boolean(lb_swarm[0], lb_swarm[1], False) if lb_swarm else False
    return found, network or "", lb


def _middleware(reader, name: str, opts: dict[str, tuple[str, str]]):
    """An IPAllowList/InFlightConn, or None (reported) when it cannot be built."""
    kinds = {opt.split(".", 1)[0] for opt in opts}
    if len(kinds) != 1:
        label = next(iter(opts.values()))[0]
        reader.error(label, f"TCP middleware {name} names several kinds ({', '.join(sorted(kinds))})")
        return None
    kind = kinds.pop()
    if kind in ("ipallowlist", "ipwhitelist"):
        ranges: tuple[str, ...] = ()
        for opt, (label, value) in opts.items():
            if opt.split(".", 1)[1:] != ["sourcerange"]:
                reader.error(label, f"label {label}: TCP {kind} takes only sourceRange")
                return None
            ranges = tuple(r.strip() for r in value.split(",") if r.strip())
            for r in ranges:
                try:
                    ipaddress.ip_network(r, strict=False)
                except ValueError:
                    reader.error(label, f"label {label}: {r!r} is not an address or CIDR")
                    return None
        if not ranges:
            reader.error(next(iter(opts.values()))[0], f"TCP middleware {name}: {kind} needs sourceRange")
            return None
        return IPAllowList(ranges)
    if kind == "inflightconn":
        amount = None
        for opt, (label, value) in opts.items():
            if opt != "inflightconn.amount":
                reader.error(label, f"label {label}: inFlightConn takes only amount")
                return None
            amount = reader.integer(label, value, None, 1, 1_000_000)
        return InFlightConn(amount) if amount else None
    reader.error(
        next(iter(opts.values()))[0],
        f"TCP middleware {name}: {kind} is not a TCP middleware edge knows (ipAllowList, inFlightConn)",
    )
    return None


def _service(reader, protocol: str, name: str, opts, network: str, lb_swarm: bool) -> L4ServiceSpec:
    port, proxy = None, 0
    for opt, (label, value) in opts.items():
        if opt == "loadbalancer.server.port":
            port = reader.port(label, value)
        elif protocol == "tcp" and opt == "loadbalancer.proxyprotocol.version":
            proxy = reader.integer(label, value, 0, 1, 2)
        else:
            reader.unsupported(label)
    return L4ServiceSpec(f"{name}@{reader.provider}", protocol, port, network, lb_swarm, proxy)


def _entry_points(value: str) -> tuple[str, ...]:
    return tuple(e.strip() for e in value.split(",") if e.strip())


def _tcp_router(reader, source, name, opts, service_name, middlewares):
    provider = reader.provider
    rule_label, rule_text = opts.get("rule", ("", ""))
    if not rule_text.strip():
        reader.error(rule_label or f"tcp.routers.{name}", f"TCP router {name} has no rule (HostSNI(`*`) for any); not routed")
        return None
    try:
        rule = parse_tcp_rule(rule_text)
    except RuleError as e:
        reader.error(rule_label, f"TCP router {name}: bad rule {rule_text!r}: {e}; not routed")
        return None
    tls, tls_opts, entry_points, priority, used = None, {}, (), 0, []
    keep = True
    for opt, (label, value) in opts.items():
        if opt == "rule":
            continue
        if opt == "entrypoints":
            entry_points = _entry_points(value)
        elif opt == "service":
            service_name = f"{value.strip()}@{provider}" if "@" not in value else value.strip()
        elif opt == "priority":
            priority = reader.integer(label, value, 0, 0, 2**31 - 1)
        elif opt == "middlewares":
            for ref in _entry_points(value):
                local = ref.partition("@")
                built = middlewares.get(local[0]) if local[2] in ("", provider) else None
                if built is None:
                    reader.error(
                        label,
                        f"TCP router {name}: middleware {ref!r} is not defined (or not usable) in this"
                        " service's labels; router dropped so it is not served without it",
                    )
                    keep = False
                else:
                    used.append(built)
        elif opt == "tls":
            if reader.boolean(label, value, False):
                tls_opts.setdefault("on", True)
        elif opt == "tls.passthrough":
            tls_opts["on"] = True
            tls_opts["passthrough"] = reader.boolean(label, value, False)
        elif opt == "tls.certresolver":
            tls_opts["on"] = True
            tls_opts["cert_resolver"] = value.strip()
        elif _TLS_DOMAIN.match(opt):
            tls_opts["on"] = True
            tls_opts.setdefault("domains", []).extend(_entry_points(value))
        else:
            reader.unsupported(label)
    if not keep:
        return None
    if tls_opts.pop("on", False):
        domains = tuple(d.lower() for d in tls_opts.pop("domains", []))
        tls = TCPRouterTLS(domains=domains, **tls_opts)
    if tls is None and needs_tls(rule):
        reader.error(
            rule_label,
            f"TCP router {name}: a rule that reads the ClientHello ({rule_text}) needs TLS"
            " (.tls=true or .tls.passthrough=true); only HostSNI(`*`) routes plain TCP; not routed",
        )
        return None
    if tls is None and not catch_all(rule):
        reader.error(rule_label, f"TCP router {name}: a plain TCP router needs HostSNI(`*`); not routed")
        return None
    if service_name is None:
        reader.error(rule_label, f"TCP router {name}: several TCP services and no .service label; not routed")
        return None
    return TCPRouter(
        name=f"{name}@{provider}", rule=rule, rule_text=rule_text.strip(), service=service_name,
        entry_points=entry_points, priority=priority, middlewares=tuple(used), tls=tls,
        provider=provider, source=source,
    )


def read_l4_labels(reader, source: str, entries, prefix: str, default_name: str) -> L4Labels:
    """TCP/UDP routers and services from one service's labels (``entries`` as labels.py splits them)."""
    found, network, lb_swarm = _collect(reader, entries, prefix)
    if not found:
        return L4Labels()
    services: list[L4ServiceSpec] = []
    tcp_routers: list[TCPRouter] = []
    udp_routers: list[UDPRouter] = []
    for protocol in ("tcp", "udp"):
        specs = [
            _service(reader, protocol, name, opts, network, lb_swarm)
            for (p, section, name), opts in sorted(found.items())
            if p == protocol and section == "services"
        ]
        routers = {n: o for (p, section, n), o in sorted(found.items()) if p == protocol and section == "routers"}
        if routers and not specs:
            specs = [L4ServiceSpec(f"{default_name}@{reader.provider}", protocol, None, network, lb_swarm)]
        default_service = specs[0].name if len(specs) == 1 else None
        services.extend(specs)
        if protocol == "tcp":
            middlewares = {}
            for (p, section, name), opts in sorted(found.items()):
                if p == "tcp" and section == "middlewares":
                    built = _middleware(reader, name, opts)
                    if built is not None:
                        middlewares[name] = built
            for name, opts in routers.items():
                router = _tcp_router(reader, source, name, opts, default_service, middlewares)
                if router is not None:
                    tcp_routers.append(router)
            continue
        for (p, section, name), opts in sorted(found.items()):
            if p == "udp" and section == "middlewares":
                for label, _v in opts.values():
                    reader.unsupported(label, "Traefik has no UDP middlewares")
        for name, opts in routers.items():
            service_name, entry_points = default_service, ()
            for opt, (label, value) in opts.items():
                if opt == "entrypoints":
                    entry_points = _entry_points(value)
                elif opt == "service":
                    service_name = f"{value.strip()}@{reader.provider}" if "@" not in value else value.strip()
                else:
                    reader.unsupported(label, "UDP routers take entryPoints and service")
            if service_name is None:
                reader.error(f"udp.routers.{name}", f"UDP router {name}: several UDP services and no .service label; not routed")
                continue
            udp_routers.append(UDPRouter(f"{name}@{reader.provider}", service_name, entry_points, reader.provider, source))
    return L4Labels(tuple(tcp_routers), tuple(udp_routers), tuple(services))
