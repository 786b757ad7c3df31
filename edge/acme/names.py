"""
Which certificates the current snapshot asks an ACME resolver for.

Pure: routers in, name sets out.  Only routers that exist in the snapshot
count, so a name is ordered only while some router serves it; anyone can
send any SNI name, and that never starts an order.  TCP routers whose TLS
edge terminates count like HTTP ones (their ``HostSNI`` names); a
passthrough router's backend holds its own certificate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from edge.snapshot import Router, Snapshot, TCPRouter
from edge.tls.store import normalize_name

__all__ = ["Wanted", "wanted_certificates", "is_v1_rule"]

# RFC 1035 limits; anything else in a rule is not a name a CA would sign.
_MAX_NAME = 253
_MAX_NAMES_PER_CERT = 100  # Let's Encrypt's limit of names on one certificate


@dataclass(frozen=True)
class Wanted:
    """One certificate: the resolver that orders it and its names (first = main)."""

    resolver: str
    names: tuple[str, ...]

    @property
    def key(self) -> tuple[str, frozenset[str]]:
        return (self.resolver, frozenset(self.names))


def is_v1_rule(router: Router) -> bool:
    """Traefik v1 rules (``Host:a.b``) have no parentheses; v2/v3 ones always do."""
    return router.provider != "file" and "(" not in router.rule_text and ":" in router.rule_text


def _valid(name: str) -> bool:
    if not name or len(name) > _MAX_NAME or name.startswith(".") or ".." in name:
        return False
    body = name[2:] if name.startswith("*.") else name
    if "*" in body or "." not in body:
        return False
    return all(c.isalnum() or c in "-." for c in body)


def _names_of(router: Router | TCPRouter) -> list[str]:
    if router.tls is not None and router.tls.domains:
        candidates: Iterable[str] = router.tls.domains
    elif isinstance(router, TCPRouter):
        from edge.tcp.rules import sni_names

        candidates = sorted(sni_names(router.rule))
    else:
        candidates = sorted(router.hosts)
    return [normalize_name(n) for n in candidates]


def _tcp_routers(snapshot: Snapshot, problems: list[str]) -> list[TCPRouter]:
    """TCP routers that ask a resolver for a certificate edge serves itself."""
    found = []
    for router in snapshot.tcp_routers:
        if router.tls is None or not router.tls.cert_resolver:
            continue
        if router.tls.passthrough:
            problems.append(
                f"TCP router {router.name}: tls.certresolver with tls.passthrough: the backend terminates"
                " TLS with its own certificate; nothing is ordered"
            )
            continue
        if not _names_of(router):
            problems.append(
                f"TCP router {router.name}: no HostSNI name or tls.domains to order a certificate for"
            )
            continue
        found.append(router)
    return found


def wanted_certificates(
    snapshot: Snapshot,
    resolvers: dict[str, "object"],
    problems: list[str] | None = None,
) -> tuple[Wanted, ...]:
    """
    The certificates to keep for ``snapshot``.

    ``resolvers`` maps a resolver name to its config (``challenge`` and
    ``on_host_rule`` are read).  A router with ``tls.certresolver`` (or a
    static route's ``cert_resolver``) gets one certificate for its
    ``tls.domains`` if any, else for its rule's host names; Traefik v1
    routers get one per router from a resolver with ``on_host_rule``.
    Wildcards need DNS-01; names that cannot be ordered are reported in
    ``problems`` and left out.  A TCP router with ``tls.certresolver`` gets
    one for its ``tls.domains``, else its rule's ``HostSNI`` names.
    """
    problems = problems if problems is not None else []
    host_rule = sorted(name for name, r in resolvers.items() if getattr(r, "on_host_rule", False))
    seen: dict[tuple[str, frozenset[str]], Wanted] = {}
    routers: list[Router | TCPRouter] = [*snapshot.routers, *_tcp_routers(snapshot, problems)]
    for router in routers:
        resolver = router.tls.cert_resolver if router.tls is not None else ""
        if not resolver and host_rule and isinstance(router, Router) and is_v1_rule(router):
            resolver = host_rule[0]
        if not resolver:
            continue
        config = resolvers.get(resolver)
        if config is None:
            problems.append(f"router {router.name}: no [acme.{resolver}] resolver is configured")
            continue
        names: list[str] = []
        for name in _names_of(router):
            if not _valid(name):
                problems.append(f"router {router.name}: {name!r} cannot be in a certificate")
            elif name.startswith("*.") and getattr(config, "challenge", "") != "dns-01":
                problems.append(
                    f"router {router.name}: {name} is a wildcard; only a dns-01 resolver can order it"
                )
            elif name not in names:
                names.append(name)
        if not names:
            continue
        if len(names) > _MAX_NAMES_PER_CERT:
            problems.append(
                f"router {router.name}: {len(names)} names; the first {_MAX_NAMES_PER_CERT} are ordered"
            )
            names = names[:_MAX_NAMES_PER_CERT]
        wanted = Wanted(resolver, tuple(names))
        seen.setdefault(wanted.key, wanted)
    return tuple(sorted(seen.values(), key=lambda w: (w.resolver, w.names)))
