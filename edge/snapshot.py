"""
The snapshot: one immutable value holding everything discovery knows.

Providers (Docker, the config file) build a complete :class:`Snapshot` every
time; consumers (DNS, HTTP, admin) hold one reference and swap it whole.  All
types here are frozen and hashable, so two snapshots built from the same
Docker state compare equal and the publisher can drop no-op updates.

Names are qualified by provider, as Traefik does: ``web@docker``,
``nas@file``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Union

from edge.rules import Rule, hosts_of

__all__ = [
    "Target",
    "StickyCookie",
    "HealthCheck",
    "BackendService",
    "RedirectScheme",
    "StripPrefix",
    "BasicAuth",
    "Headers",
    "IPAllowList",
    "ForwardAuth",
    "ReplacePath",
    "ReplacePathRegex",
    "AddPrefix",
    "StripPrefixRegex",
    "RedirectRegex",
    "SourceCriterion",
    "RateLimit",
    "InFlightReq",
    "Compress",
    "Errors",
    "Retry",
    "CircuitBreaker",
    "Buffering",
    "Middleware",
    "RouterTLS",
    "Router",
    "Node",
    "PublishedPort",
    "SwarmService",
    "Problem",
    "InFlightConn",
    "TCPRouterTLS",
    "TCPRouter",
    "TCPService",
    "UDPRouter",
    "UDPService",
    "Snapshot",
    "EMPTY",
]


@dataclass(frozen=True)
class Target:
    """
    One backend endpoint: a swarm task, a container, or a static URL.

    ``id`` is stable for the life of the task (sticky sessions key on it).
    """

    id: str
    host: str
    port: int
    scheme: str = "http"  # or "https", or "h2c": HTTP/2 with prior knowledge (edge.http.backend_h2)
    weight: int = 1
    node_id: str = ""

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True)
class StickyCookie:
    name: str = "_edge_sticky"
    secure: bool = False
    http_only: bool = True
    same_site: str = ""


@dataclass(frozen=True)
class HealthCheck:
    path: str = "/"
    interval: float = 30.0
    timeout: float = 5.0
    port: int = 0
    scheme: str = ""
    hostname: str = ""
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class BackendService:
    """A load-balanced set of targets that routers send requests to."""

    name: str
    targets: tuple[Target, ...] = ()
    pass_host_header: bool = True
    sticky: StickyCookie | None = None
    health_check: HealthCheck | None = None


@dataclass(frozen=True)
class RedirectScheme:
    scheme: str = "https"
    port: str = ""
    permanent: bool = False


@dataclass(frozen=True)
class StripPrefix:
    prefixes: tuple[str, ...]


@dataclass(frozen=True)
class BasicAuth:
    """``users`` holds ``name:hash`` entries in htpasswd formats."""

    users: tuple[str, ...]
    realm: str = "edge"
    remove_header: bool = False
    # headerField: the authenticated user's name goes to the backend in this
    # header (Grafana's X-WEBAUTH-USER); a client's own is always removed.
    header_field: str = ""


@dataclass(frozen=True)
class Headers:
    custom_request: tuple[tuple[str, str], ...] = ()
    custom_response: tuple[tuple[str, str], ...] = ()
    sts_seconds: int = 0
    sts_include_subdomains: bool = False
    sts_preload: bool = False
    force_sts_header: bool = False
    ssl_redirect: bool = False
    # Traefik's security headers (unrolled/secure), set on responses.
    frame_deny: bool = False
    custom_frame_options_value: str = ""
    content_type_nosniff: bool = False
    browser_xss_filter: bool = False
    custom_browser_xss_value: str = ""
    content_security_policy: str = ""
    content_security_policy_report_only: str = ""
    referrer_policy: str = ""
    permissions_policy: str = ""
    feature_policy: str = ""
    # Requests: hosts allowed (else 500 "Bad Host"), headers that may carry
    # the host, and (header, value) pairs that mean the request was HTTPS.
    allowed_hosts: tuple[str, ...] = ()
    hosts_proxy_headers: tuple[str, ...] = ()
    ssl_proxy_headers: tuple[tuple[str, str], ...] = ()
    is_development: bool = False
    # CORS.
    access_control_allow_origin_list: tuple[str, ...] = ()
    access_control_allow_origin_list_regex: tuple[str, ...] = ()
    access_control_allow_methods: tuple[str, ...] = ()
    access_control_allow_headers: tuple[str, ...] = ()
    access_control_expose_headers: tuple[str, ...] = ()
    access_control_allow_credentials: bool = False
    access_control_max_age: int = 0
    add_vary_header: bool = False


@dataclass(frozen=True)
class IPAllowList:
    source_ranges: tuple[str, ...]
    # ipStrategy: the depth-th X-Forwarded-For address from the right, or the
    # first from the right not excluded, instead of the client address.
    ip_depth: int = 0
    excluded_ips: tuple[str, ...] = ()
    # Traefik 1.7's whiteList.useXForwardedFor: the client address, or the one
    # the trusted proxy in front reports (the last X-Forwarded-For entry).
    use_forwarded_for: bool = False


@dataclass(frozen=True)
class ForwardAuth:
    """
    Ask ``address`` before each request (Traefik ``forwardAuth``).

    ``tls_ca``/``tls_cert``/``tls_key`` hold PEM text (read from the label's
    file when the label names one), so a snapshot carries no file paths.
    """

    address: str
    trust_forward_header: bool = False
    auth_response_headers: tuple[str, ...] = ()
    auth_response_headers_regex: str = ""
    auth_request_headers: tuple[str, ...] = ()
    add_auth_cookies_to_response: tuple[str, ...] = ()
    preserve_request_method: bool = False
    preserve_location_header: bool = False
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_insecure_skip_verify: bool = False


@dataclass(frozen=True)
class ReplacePath:
    """Traefik ``replacePath``: the path becomes ``path`` (query kept)."""

    path: str


@dataclass(frozen=True)
class ReplacePathRegex:
    """Traefik ``replacePathRegex``; ``replacement`` uses Go's ``$1``/``${name}``."""

    regex: str
    replacement: str


@dataclass(frozen=True)
class AddPrefix:
    prefix: str


@dataclass(frozen=True)
class StripPrefixRegex:
    regexes: tuple[str, ...]


@dataclass(frozen=True)
class RedirectRegex:
    """Traefik ``redirectRegex``: matched against the whole URL (``http://host/path?q``)."""

    regex: str
    replacement: str
    permanent: bool = False


@dataclass(frozen=True)
class SourceCriterion:
    """Whose requests count together (Traefik ``sourceCriterion``); default the client address."""

    request_header_name: str = ""
    request_host: bool = False
    ip_depth: int = 0  # > 0: the depth-th address from the right of X-Forwarded-For
    excluded_ips: tuple[str, ...] = ()


@dataclass(frozen=True)
class RateLimit:
    """Token bucket: ``average`` requests per ``period`` seconds, ``burst`` at once."""

    average: int
    period: float = 1.0
    burst: int = 1
    source: SourceCriterion = SourceCriterion()


@dataclass(frozen=True)
class InFlightReq:
    amount: int
    source: SourceCriterion = SourceCriterion()


MAX_RETRY_ATTEMPTS = 10  # edge's bound on Retry.attempts (each attempt may try every target)


@dataclass(frozen=True)
class Retry:
    """Traefik ``retry``: ``attempts`` in all (the first counts), back-off from ``initial_interval`` s."""

    attempts: int
    initial_interval: float = 0.0


@dataclass(frozen=True)
class CircuitBreaker:
    """Traefik ``circuitBreaker``: ``expression`` as written (parsed by edge.expression)."""

    expression: str
    check_period: float = 0.1
    fallback_duration: float = 10.0
    recovery_duration: float = 10.0
    response_code: int = 503


@dataclass(frozen=True)
class Buffering:
    """Traefik ``buffering``: the request body read whole before a backend is contacted (and the answer)."""

    max_request_body_bytes: int = 0
    mem_request_body_bytes: int = 1048576
    retry_expression: str = ""
    max_response_body_bytes: int = 0  # > 0: the answer is held whole too, 500 past it


Middleware = Union[RedirectScheme, StripPrefix, BasicAuth, Headers, IPAllowList, ForwardAuth,
                   ReplacePath, ReplacePathRegex, AddPrefix, StripPrefixRegex, RedirectRegex,
                   RateLimit, InFlightReq, Retry, CircuitBreaker, Buffering]


@dataclass(frozen=True)
class Compress:
    """Traefik ``compress``: answers encoded in what the client accepts (edge.http.compress)."""

    excluded_content_types: tuple[str, ...] = ()
    included_content_types: tuple[str, ...] = ()
    min_response_body_bytes: int = 1024
    encodings: tuple[str, ...] = ("zstd", "br", "gzip")  # by preference
    default_encoding: str = ""


@dataclass(frozen=True)
class Errors:
    """
    Traefik ``errors``: an answer whose status is in ``status`` (inclusive
    ranges) is replaced by ``query`` fetched from ``service`` (edge.http.errorpages).
    """

    status: tuple[tuple[int, int], ...]
    service: str  # qualified: name@provider
    query: str = ""
    # (low, high, new status): statusRewrites.
    status_rewrites: tuple[tuple[int, int, int], ...] = ()


# The response-side middlewares join the union here (kept apart from the line above).
Middleware = Union[Middleware, Compress, Errors]  # type: ignore[misc]


@dataclass(frozen=True)
class RouterTLS:
    """TLS is asked for on this router; certificates come from the TLS layer."""

    cert_resolver: str = ""
    domains: tuple[str, ...] = ()


@dataclass(frozen=True)
class Router:
    """
    A rule that sends matching requests through middlewares to a service.

    ``entry_points`` empty means every entry point.  ``middlewares`` are
    resolved values, applied in order.
    """

    name: str
    rule: Rule
    rule_text: str
    service: str
    entry_points: tuple[str, ...] = ()
    priority: int = 0
    middlewares: tuple[Middleware, ...] = ()
    tls: RouterTLS | None = None
    provider: str = "docker"
    source: str = ""

    @property
    def effective_priority(self) -> int:
        """Traefik's order: explicit priority, else the rule's length."""
        return self.priority if self.priority else len(self.rule_text)

    @property
    def hosts(self) -> frozenset[str]:
        """Literal host names (lower case) the rule can match; may include ``*.x``."""
        return hosts_of(self.rule)


@dataclass(frozen=True)
class Node:
    id: str
    hostname: str
    role: str  # "manager" | "worker"
    address: str
    state: str = "ready"
    availability: str = "active"
    leader: bool = False
    # Managers: swarm's ManagerStatus.Reachability ("reachable", "unreachable");
    # "" for workers and for nodes not from swarm.
    reachability: str = ""

    @property
    def reachable(self) -> bool:
        """Swarm can reach the node: not ``down``, not an ``unreachable`` manager.

        Swarm marks a stopped manager unreachable within a second but down only
        10-14 s later; its tasks keep reading ``running`` meanwhile.
        """
        return self.state != "down" and self.reachability != "unreachable"

    @property
    def serving(self) -> bool:
        """Ready, active (not drained or paused) and reachable: fit to be answered."""
        return self.state == "ready" and self.availability == "active" and self.reachable


@dataclass(frozen=True)
class PublishedPort:
    target_port: int
    published_port: int
    protocol: str = "tcp"
    mode: str = "ingress"  # "ingress" | "host"


@dataclass(frozen=True)
class SwarmService:
    """DNS-relevant facts about one Docker service (or labelled container)."""

    name: str
    id: str = ""
    stack: str = ""
    published_ports: tuple[PublishedPort, ...] = ()
    # Nodes that run a task of this service that is running now.
    node_ids: tuple[str, ...] = ()
    replicas_running: int = 0
    provider: str = "docker"


@dataclass(frozen=True)
class Problem:
    """A warning or error about one service or label; never fatal."""

    source: str
    message: str
    level: str = "warning"  # "warning" | "error"
    label: str = ""


@dataclass(frozen=True)
class InFlightConn:
    """TCP middleware: at most ``amount`` simultaneous connections per client IP."""

    amount: int


@dataclass(frozen=True)
class TCPRouterTLS:
    """TLS on a TCP router: terminated by edge, or passed through to the backend."""

    passthrough: bool = False
    cert_resolver: str = ""
    domains: tuple[str, ...] = ()


@dataclass(frozen=True)
class TCPRouter:
    """
    A ``traefik.tcp.routers`` router; ``rule`` is an :mod:`edge.tcp.rules`
    value.  ``middlewares`` hold :class:`IPAllowList` and :class:`InFlightConn`.
    """

    name: str
    rule: object
    rule_text: str
    service: str
    entry_points: tuple[str, ...] = ()
    priority: int = 0
    middlewares: tuple[object, ...] = ()
    tls: TCPRouterTLS | None = None
    provider: str = "docker"
    source: str = ""

    @property
    def effective_priority(self) -> int:
        return self.priority if self.priority else len(self.rule_text)


@dataclass(frozen=True)
class TCPService:
    name: str
    targets: tuple[Target, ...] = ()
    proxy_protocol: int = 0  # PROXY protocol version sent to the backend; 0 = none


@dataclass(frozen=True)
class UDPRouter:
    name: str
    service: str
    entry_points: tuple[str, ...] = ()
    provider: str = "docker"
    source: str = ""


@dataclass(frozen=True)
class UDPService:
    name: str
    targets: tuple[Target, ...] = ()


@dataclass(frozen=True)
class Snapshot:
    """Everything the front ends need, sorted so equal content is equal."""

    routers: tuple[Router, ...] = ()
    services: tuple[BackendService, ...] = ()
    nodes: tuple[Node, ...] = ()
    swarm_services: tuple[SwarmService, ...] = ()
    problems: tuple[Problem, ...] = ()
    tcp_routers: tuple[TCPRouter, ...] = ()
    tcp_services: tuple[TCPService, ...] = ()
    udp_routers: tuple[UDPRouter, ...] = ()
    udp_services: tuple[UDPService, ...] = ()
    _service_index: dict = field(
        default=None, init=False, repr=False, compare=False, hash=False
    )

    def service(self, name: str) -> BackendService | None:
        index = self._service_index
        if index is None:
            index = {s.name: s for s in self.services}
            object.__setattr__(self, "_service_index", index)
        return index.get(name)

    def host_names(self) -> Iterator[tuple[str, Router]]:
        """Every literal host name in every router's rule, with its router."""
        for router in self.routers:
            for host in router.hosts:
                yield host, router

    @classmethod
    def build(
        cls,
        routers=(),
        services=(),
        nodes=(),
        swarm_services=(),
        problems=(),
        tcp_routers=(),
        tcp_services=(),
        udp_routers=(),
        udp_services=(),
    ) -> "Snapshot":
        """Sort every part by name so equal content gives an equal snapshot."""
        return cls(
            routers=tuple(sorted(routers, key=lambda r: r.name)),
            services=tuple(
                sorted(
                    (
                        BackendService(
                            name=s.name,
                            targets=tuple(sorted(s.targets, key=lambda t: t.id)),
                            pass_host_header=s.pass_host_header,
                            sticky=s.sticky,
                            health_check=s.health_check,
                        )
                        for s in services
                    ),
                    key=lambda s: s.name,
                )
            ),
            nodes=tuple(sorted(nodes, key=lambda n: n.id)),
            swarm_services=tuple(sorted(swarm_services, key=lambda s: s.name)),
            problems=tuple(
                sorted(set(problems), key=lambda p: (p.source, p.label, p.message))
            ),
            tcp_routers=tuple(sorted(tcp_routers, key=lambda r: r.name)),
            tcp_services=tuple(
                sorted(
                    (
                        TCPService(s.name, tuple(sorted(s.targets, key=lambda t: t.id)), s.proxy_protocol)
                        for s in tcp_services
                    ),
                    key=lambda s: s.name,
                )
            ),
            udp_routers=tuple(sorted(udp_routers, key=lambda r: r.name)),
            udp_services=tuple(
                sorted(
                    (UDPService(s.name, tuple(sorted(s.targets, key=lambda t: t.id))) for s in udp_services),
                    key=lambda s: s.name,
                )
            ),
        )

    def merged(self, other: "Snapshot") -> "Snapshot":
        """The union of two providers' snapshots (names are already qualified)."""
        return Snapshot.build(
            routers=self.routers + other.routers,
            services=self.services + other.services,
            nodes=self.nodes + other.nodes,
            swarm_services=self.swarm_services + other.swarm_services,
            problems=self.problems + other.problems,
            tcp_routers=self.tcp_routers + other.tcp_routers,
            tcp_services=self.tcp_services + other.tcp_services,
            udp_routers=self.udp_routers + other.udp_routers,
            udp_services=self.udp_services + other.udp_services,
        )


EMPTY = Snapshot()
