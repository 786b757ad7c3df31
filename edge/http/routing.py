"""
Routing tables: from a snapshot to "which route serves this request".

A :class:`RoutingTable` is built once per snapshot and entry point and never
changes; the proxy swaps the reference when a new snapshot arrives, so a
request in flight keeps the route it matched.  Rules are compiled into
closures, and routers are indexed by the host names their rule requires, so
a lookup is a dictionary hit plus the few candidates for that host (and the
routers whose rule names no host), already in Traefik's priority order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

from twisted.logger import Logger

from edge import rules as R
from edge.cidr import Networks, parse_address
from edge.http.balancer import Balancer, HealthRegistry, build_balancers
from edge.http.middlewares import Chain, compile_middlewares
from edge.http.target import decode_path
from edge.snapshot import Router, Snapshot

__all__ = ["Route", "RoutingTable", "MatchContext", "compile_rule"]

_log = Logger()


class MatchContext:
    """What a rule looks at; strings are latin-1 decoded request bytes."""

    __slots__ = ("method", "host", "path", "query", "headers", "client_ip", "_ip")

    def __init__(self, method: str, host: str, path: str, query: str, headers, client_ip: str):
        self.method = method
        self.host = host
        self.path = path
        self.query = query
        self.headers = headers
        self.client_ip = client_ip
        self._ip = None

    def header_values(self, name: str) -> list[str]:
        wanted = name.encode("latin-1")
        return [
            v.decode("latin-1")
            for k, v in self.headers
            if k.lower() == wanted
        ]

    def ip(self):
        """The client address (IPv4-mapped IPv6 as IPv4), or False."""
        if self._ip is None:
            self._ip = parse_address(self.client_ip) or False
        return self._ip


Matcher = Callable[[MatchContext], bool]


def _query_pairs(query: str) -> list[tuple[str, str | None]]:
    from urllib.parse import unquote_plus

    pairs = []
    for part in query.split("&"):
        if not part:
            continue
        key, sep, value = part.partition("=")
        pairs.append((unquote_plus(key), unquote_plus(value) if sep else ""))
    return pairs


def compile_rule(rule: R.Rule) -> Matcher:
    """A closure answering whether a request matches ``rule``."""
    if isinstance(rule, R.Host):
        names = frozenset(rule.names)
        return lambda c: c.host in names
    if isinstance(rule, R.HostRegexp):
        match = R.compiled(rule.regex).fullmatch
        return lambda c: match(c.host) is not None
    if isinstance(rule, R.Path):
        paths = frozenset(rule.paths)
        return lambda c: c.path in paths
    if isinstance(rule, R.PathPrefix):
        prefixes = tuple(rule.prefixes)
        return lambda c: c.path.startswith(prefixes)
    if isinstance(rule, R.PathRegexp):
        match = R.compiled(rule.regex).fullmatch
        return lambda c: match(c.path) is not None
    if isinstance(rule, R.Method):
        methods = frozenset(m.upper() for m in rule.methods)
        return lambda c: c.method in methods
    if isinstance(rule, R.Header):
        name, value = rule.name, rule.value
        return lambda c: value in c.header_values(name)
    if isinstance(rule, R.HeaderRegexp):
        name, match = rule.name, R.compiled(rule.regex).fullmatch
        return lambda c: any(match(v) for v in c.header_values(name))
    if isinstance(rule, R.Query):
        key, value = rule.name, rule.value

        def query(c: MatchContext) -> bool:
            for k, v in _query_pairs(c.query):
                if k == key and (value is None or v == value):
                    return True
            return False

        return query
    if isinstance(rule, R.ClientIP):
        networks = Networks(rule.ranges)

        def client_ip(c: MatchContext) -> bool:
            ip = c.ip()
            return bool(ip) and ip in networks

        return client_ip
    if isinstance(rule, R.And):
        items = tuple(compile_rule(i) for i in rule.items)
        return lambda c: all(m(c) for m in items)
    if isinstance(rule, R.Or):
        items = tuple(compile_rule(i) for i in rule.items)
        return lambda c: any(m(c) for m in items)
    if isinstance(rule, R.Not):
        inner = compile_rule(rule.item)
        return lambda c: not inner(c)
    raise ValueError(f"unknown rule type {type(rule).__name__}")


def _required_hosts(rule: R.Rule) -> Optional[frozenset[str]]:
    """
    Host keys a request must hit for ``rule`` to match, or None when any host can.

    Keys are literal names, or ``*.suffix`` for simple host regexps; the rule
    itself is still evaluated, so the index only has to be a superset.
    """
    if isinstance(rule, R.Host):
        return frozenset(rule.names)
    if isinstance(rule, R.HostRegexp):
        return frozenset(rule.wildcards) if rule.wildcards else None
    if isinstance(rule, R.And):
        found = [h for h in map(_required_hosts, rule.items) if h is not None]
        return min(found, key=len) if found else None
    if isinstance(rule, R.Or):
        found = [_required_hosts(i) for i in rule.items]
        if any(h is None for h in found):
            return None
        return frozenset().union(*found)
    return None


@dataclass(eq=False)
class Route:
    """A router compiled for one entry point: what the proxy needs per request."""

    router: str
    service: str
    priority: int
    matcher: Optional[Matcher]  # None: the host index alone decides
    middlewares: Chain
    balancer: Optional[Balancer]
    pass_host_header: bool = True
    tls: bool = False

    def __repr__(self) -> str:
        return f"<Route {self.router} -> {self.service}>"


@dataclass(eq=False)
class RoutingTable:
    """Routes of one entry point, indexed by host; immutable once built."""

    entrypoint: str
    by_host: dict[str, tuple[Route, ...]] = field(default_factory=dict)
    by_suffix: dict[str, tuple[Route, ...]] = field(default_factory=dict)
    hostless: tuple[Route, ...] = ()
    routes: tuple[Route, ...] = ()
    _cache: dict = field(default_factory=dict)
    _raw: dict = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        snapshot: Snapshot,
        entrypoint_name: str,
        *,
        balancers: dict[str, Balancer] | None = None,
        health: HealthRegistry | None = None,
        reactor=None,
        https_port: str = "",
        state=None,
    ) -> "RoutingTable":
        """
        Compile every router of ``snapshot`` bound to ``entrypoint_name``.

        ``balancers`` (one per service, shared between entry points) come
        from :func:`edge.http.balancer.build_balancers`; when omitted a fresh
        set is built.  ``state`` (a :class:`~edge.http.middleware_state.MiddlewareState`)
        keeps counting middlewares across rebuilds.  A router that fails to
        compile is logged and skipped.
        """
        if balancers is None:
            balancers = build_balancers(snapshot, health or HealthRegistry(reactor), reactor)
        by_host: dict[str, list[Route]] = {}
        by_suffix: dict[str, list[Route]] = {}
        hostless: list[Route] = []
        routes: list[Route] = []
        for router in snapshot.routers:
            if router.entry_points and entrypoint_name not in router.entry_points:
                continue
            try:
                route = _compile_router(router, snapshot, balancers, reactor, https_port, state)
            except Exception as e:
                _log.error(
                    "Router {router} skipped: cannot compile it ({error})",
                    router=router.name,
                    error=e,
                )
                continue
            routes.append(route)
            hosts = _required_hosts(router.rule)
            if hosts is None:
                hostless.append(route)
                continue
            for host in hosts:
                if host.startswith("*."):
                    by_suffix.setdefault(host[2:], []).append(route)
                else:
                    by_host.setdefault(host, []).append(route)
        order = _order
        return cls(
            entrypoint=entrypoint_name,
            by_host={h: tuple(sorted(rs + hostless, key=order)) for h, rs in by_host.items()},
            by_suffix={s: tuple(sorted(rs, key=order)) for s, rs in by_suffix.items()},
            hostless=tuple(sorted(hostless, key=order)),
            routes=tuple(sorted(routes, key=order)),
        )

    def candidates(self, host: str) -> tuple[Route, ...]:
        """Routes that may match ``host`` (lower case, no port), best first."""
        found = self._cache.get(host)
        if found is not None:
            return found
        exact = self.by_host.get(host)
        if not self.by_suffix:
            return exact if exact is not None else self.hostless
        extra: list[Route] = []
        dot = host.find(".")
        while dot != -1:
            extra.extend(self.by_suffix.get(host[dot + 1 :], ()))
            dot = host.find(".", dot + 1)
        if not extra:
            found = exact if exact is not None else self.hostless
        else:
            base = list(exact) if exact is not None else list(self.hostless)
            found = tuple(sorted(dict.fromkeys(base + extra), key=_order))
        if len(self._cache) > 10000:
            self._cache.clear()
        self._cache[host] = found
        return found

    def match(
        self,
        method: bytes,
        host: bytes,
        path: bytes,
        headers: Iterable[tuple[bytes, bytes]] = (),
        client_ip: str = "",
    ) -> Route | None:
        """
        The best route for a request, or None.

        ``host`` is the Host header (a port is stripped here), ``path`` the
        request target (``/path?query``) as :func:`edge.http.target.split_target`
        normalised it (path rules see it percent-decoded), ``headers`` (name, value) byte
        pairs as the framing parsed them.
        """
        known = self._raw.get(host)
        if known is None:
            if len(host) > _MAX_HOST:
                # No DNS name is this long: nothing to match, and nothing worth
                # caching (a flood of long hosts must not fill memory or feed
                # host regexps large inputs).
                return None
            host_s = normalize_host(host)
            known = (host_s, self.candidates(host_s))
            if len(self._raw) > 10000:
                self._raw.clear()
            self._raw[host] = known
        host_s, candidates = known
        if not candidates:
            return None
        context = None
        for route in candidates:
            if route.matcher is None:
                return route
            if context is None:
                raw_path, _, q = path.partition(b"?")
                context = MatchContext(method.decode("latin-1"), host_s, decode_path(raw_path),
                                       q.decode("latin-1"), headers, client_ip)
            if route.matcher(context):
                return route
        return None


# A DNS name is at most 253 characters; with a port and brackets a Host header
# that names one stays under this.
_MAX_HOST = 262


def normalize_host(host: bytes) -> str:
    """``Example.COM:8080`` -> ``example.com``; ``[::1]:80`` -> ``::1``."""
    text = host.decode("latin-1").strip().lower()
    if text.startswith("["):
        end = text.find("]")
        return text[1:end] if end != -1 else text
    if text.count(":") == 1:
        text = text.split(":", 1)[0]
    return text.rstrip(".")


def _order(route: Route):
    return (-route.priority, route.router)


def _compile_router(router: Router, snapshot: Snapshot, balancers, reactor=None,
                    https_port: str = "", state=None) -> Route:
    rule = router.rule
    # A plain Host() rule is decided by the index alone.
    matcher = None if isinstance(rule, R.Host) else compile_rule(rule)
    service = snapshot.service(router.service)
    return Route(
        router=router.name,
        service=router.service,
        priority=router.effective_priority,
        matcher=matcher,
        middlewares=compile_middlewares(
            router.middlewares, reactor=reactor, https_port=https_port,
            keep=None if state is None else (lambda mw, make: state.keep(router.name, mw, make)),
        ),
        balancer=balancers.get(router.service),
        pass_host_header=service.pass_host_header if service else True,
        tls=router.tls is not None,
    )
