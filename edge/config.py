"""
edge's configuration: a TOML file, overridden by command-line flags.

Every section is a frozen dataclass; :func:`load` turns a TOML document into
them, checking every key against the dataclass fields and their types, so a
mistake stops start-up with one line naming the file, the key and what was
expected (:class:`ConfigError`).  ``docs/configuration.md`` documents each key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ConfigError",
    "DockerConfig",
    "EntryPoint",
    "AdminConfig",
    "DNSRecord",
    "DNSConfig",
    "HTTPConfig",
    "TLSConfig",
    "StaticRoute",
    "StaticMiddleware",
    "ACMEResolver",
    "ClusterConfig",
    "ACME_DIRECTORIES",
    "LogConfig",
    "TCPConfig",
    "UDPConfig",
    "udp_address",
    "Config",
    "load",
    "parse",
    "validate",
    "default_docker_url",
    "check_endpoint",
    "LISTEN_BACKLOG",
    "listen_address",
]


class ConfigError(Exception):
    """A configuration mistake; ``str()`` is the one line shown to the user."""


def default_docker_url() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


@dataclass(frozen=True)
class DockerConfig:
    # Docker Engine API address: unix:///path, tcp://host:port (a socket proxy).
    url: str = field(default_factory=default_docker_url)
    # Read swarm services, tasks and nodes: "auto" (when the engine is a
    # swarm manager), "true" or "false".
    swarm: str = "auto"
    # Read labelled plain containers: "auto" (when swarm is off), "true", "false".
    containers: str = "auto"
    # Route services that carry no traefik.enable/edge.enable label.
    exposed_by_default: bool = True
    # Traefik's `domain`: default rule Host:<service>.<domain>; "" for none.
    domain: str = ""
    # Network to reach backends on when labels do not name one.
    network: str = ""
    # "auto" | "task" | "published": how backends are addressed.
    backend_addressing: str = "auto"
    # Full re-sync period, seconds (a safety net behind the event stream).
    resync_interval: float = 60.0
    # Coalescing delay for bursts of events, seconds.
    debounce: float = 0.2
    # Docker API call timeout, seconds.
    timeout: float = 10.0
    # Longest pause between reconnect attempts, seconds.
    max_backoff: float = 30.0


@dataclass(frozen=True)
class EntryPoint:
    name: str
    # A Twisted server endpoint string, e.g. "tcp:80" or "tcp:8080:interface=127.0.0.1".
    address: str
    # Terminate TLS here (certificates from the [tls] section).
    tls: bool = False
    # Accept the PROXY protocol (v1/v2) from these sources (CIDRs); [] = off.
    proxy_protocol: tuple[str, ...] = ()
    # Redirect every request on this entry point to this one ("" = off).
    redirect_to: str = ""
    # "http" (HTTP/HTTPS routers; TCP routers too when tls = true), "tcp" (TCP
    # routers only) or "udp" (UDP routers; address "udp:PORT[:interface=ADDR]").
    # An address starting with "udp:" makes the entry point a UDP one.
    protocol: str = "http"


@dataclass(frozen=True)
class AdminConfig:
    # "" disables the admin endpoint (API, dashboard, /metrics, /healthz).
    address: str = "tcp:8081:interface=127.0.0.1"
    # htpasswd-style "user:hash" entries; [] = no authentication.
    users: tuple[str, ...] = ()


@dataclass(frozen=True)
class DNSRecord:
    name: str
    type: str
    value: str
    ttl: int = 0  # 0 = [dns] ttl


@dataclass(frozen=True)
class DNSConfig:
    enabled: bool = True
    port: int = 5353
    interfaces: tuple[str, ...] = ("127.0.0.1",)
    # Zone for cluster names: <service>.<zone>, managers.<zone>, ...
    zone: str = "swarm.home"
    # TTL of edge's own answers, seconds; short so changes propagate.
    ttl: int = 5
    # Addresses answered for routed host names; [] = manager node addresses.
    advertise: tuple[str, ...] = ()
    # Upstream servers "ADDR[:PORT]"; [] = those in /etc/resolv.conf.
    upstream: tuple[str, ...] = ()
    upstream_timeout: float = 2.0
    # Entries in the forwarding cache.
    cache_size: int = 10000
    # Clients that may ask for names edge does not own (CIDRs).
    allow_recursion: tuple[str, ...] = (
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    )
    hosts_file: str = ""
    records: tuple[DNSRecord, ...] = ()


@dataclass(frozen=True)
class HTTPConfig:
    # Sources whose X-Forwarded-* headers are trusted (CIDRs).
    trusted_proxies: tuple[str, ...] = ()
    # "" = off, "-" = standard output, else a file path.
    access_log: str = ""
    # "common" | "combined" | "json"
    access_log_format: str = "common"
    client_idle_timeout: float = 180.0
    request_header_timeout: float = 30.0
    backend_connect_timeout: float = 5.0
    backend_response_timeout: float = 60.0
    max_header_count: int = 100
    max_header_bytes: int = 65536
    # 0 = unlimited.
    max_body_bytes: int = 0
    # Persistent connections kept per backend target.
    backend_pool_size: int = 64
    # Grace period for requests in flight on shutdown, seconds.
    shutdown_grace: float = 10.0
    # Percent-encoded characters let through in request paths (refused with
    # 400 otherwise): slash, backslash, null, semicolon, percent,
    # question_mark, hash.  See docs/http.md, "Request paths".
    allowed_encoded_characters: tuple[str, ...] = ()
    # Backend response heads: bytes and fields past which edge answers 502
    # (a head is parsed on the reactor; an unbounded one costs every client).
    backend_max_header_bytes: int = 65536
    backend_max_header_count: int = 1000
    # A client that takes no byte of its answer for this long loses its
    # connection and the backend's (nginx's send_timeout), seconds.
    send_timeout: float = 60.0
    # An upgraded connection (WebSocket...) idle both ways this long is closed.
    tunnel_idle_timeout: float = 600.0
    # Client connections per entry point; more are closed at once (logged, counted).
    max_client_connections: int = 10000
    # Speed-ups on private internals of Twisted, pyOpenSSL and hpack
    # (edge.http.speedups); false runs the stock public code paths.
    speedups: bool = True


@dataclass(frozen=True)
class TLSConfig:
    # Directory of PEM certificates ("" = none).
    certificates: str = ""
    # Certificate served when SNI matches nothing ("" = the built-in CA's, or fail).
    default_certificate: str = ""
    # Issue certificates for routed names from edge's own CA.
    internal_ca: bool = False
    # Where the CA and issued certificates live.
    state_dir: str = "state"
    # "1.2" | "1.3"
    min_version: str = "1.2"
    # Redirect every plain-HTTP request to HTTPS.
    redirect_http: bool = False
    # Offer HTTP/2 through ALPN.
    http2: bool = True
    # The internal CA's root and key (PEM); "" = <state_dir>/ca/edge-ca.{crt,key},
    # created on first start.  Several instances: `python -m edge.tls init-ca`
    # once, then point every instance at the same files (docs/tls.md).
    ca_certificate: str = ""
    ca_key: str = ""
    # Seconds a client may take to finish the TLS handshake.
    handshake_timeout: float = 10.0


@dataclass(frozen=True)
class StaticRoute:
    """A route from the config file (Traefik's file provider idea)."""

    name: str
    # Rule in Traefik v2 syntax (v1 syntax is accepted too).
    rule: str
    # Backend URLs, e.g. ["http://192.168.1.10:5000"].
    backends: tuple[str, ...]
    entry_points: tuple[str, ...] = ()
    priority: int = 0
    pass_host_header: bool = True
    tls: bool = False
    redirect_https: bool = False
    strip_prefixes: tuple[str, ...] = ()
    basic_auth: tuple[str, ...] = ()
    allow_ips: tuple[str, ...] = ()
    # Name of an [acme.<name>] resolver that obtains this route's certificate.
    cert_resolver: str = ""
    # [middlewares.<name>] of this file, applied after the options above, in order.
    middlewares: tuple[str, ...] = ()


@dataclass(frozen=True)
class StaticMiddleware:
    """
    A middleware of the config file, ``[middlewares.<name>.<kind>]`` (Traefik's
    ``[http.middlewares...]``), usable from labels as ``<name>@file``.
    """

    name: str
    # (kind, option as written with dots, value in label form); see edge.discovery.references.
    options: tuple[tuple[str, str, str], ...] = ()
    # The files its options name (edge.discovery.labels.LabelFiles), read with this file.
    files: Any = field(default=None, repr=False)


# Named ACME directories for [acme.<name>] ca.
ACME_DIRECTORIES = {
    "letsencrypt": "https://acme-v02.api.letsencrypt.org/directory",
    "letsencrypt-staging": "https://acme-staging-v02.api.letsencrypt.org/directory",
}


@dataclass(frozen=True)
class ClusterConfig:
    """Several edge instances sharing one ACME account and its certificates (docs/tls.md)."""

    # This instance's name; the live instance with the lowest name orders. "" = the host name.
    name: str = ""
    # Endpoint for traffic between instances, e.g. "tcp:8444"; "" = a single instance.
    listen: str = ""
    # File holding the shared secret (a swarm secret); messages are sealed with it.
    secret_file: str = ""
    # Other instances, "host:port".
    peers: tuple[str, ...] = ()
    # A name resolving to every instance (tasks.<service> on the overlay), with their port.
    peers_dns: str = ""
    peers_port: int = 8444
    # Seconds without an answer before an instance counts as gone.
    peer_timeout: float = 3.0


@dataclass(frozen=True)
class ACMEResolver:
    """One ACME certificate resolver (Traefik's certificatesResolvers.<name>)."""

    name: str
    # Contact address given to the CA (expiry mail); "" = none.
    email: str = ""
    # "letsencrypt" | "letsencrypt-staging" | an https:// directory URL.
    ca: str = "letsencrypt"
    # PEM bundle to verify the CA's own HTTPS with ("" = the system's).
    ca_bundle: str = ""
    # "ec256" | "ec384" | "rsa2048" | "rsa4096": the certificates' key type.
    key_type: str = "ec256"
    # "http-01" | "tls-alpn-01" | "dns-01"
    challenge: str = "http-01"
    # Also order for Traefik v1 routers' Host rules (Traefik 1.7 onHostRule).
    on_host_rule: bool = False
    # External account binding (ZeroSSL, Google...): key id and base64url HMAC key.
    eab_kid: str = ""
    # Secrets stay out of repr(), so a changed [acme] logged on SIGHUP shows no key.
    eab_hmac_key: str = field(default="", repr=False)
    # DNS-01 by RFC 2136: the primary server ADDR[:PORT] and a TSIG key.
    dns_server: str = ""
    tsig_key_name: str = ""
    tsig_secret: str = field(default="", repr=False)
    tsig_algorithm: str = "hmac-sha256"
    # DNS-01 by a program: called as `hook present|cleanup FQDN VALUE`.
    dns_hook: str = ""
    # Seconds to wait after publishing a DNS-01 record before asking the CA.
    dns_propagation_delay: float = 0.0
    # Renew when less than this fraction of the lifetime is left (ARI first).
    renew_fraction: float = 0.3333
    # Give up one order after this many seconds.
    order_timeout: float = 120.0


@dataclass(frozen=True)
class TCPConfig:
    """Limits of TCP routers' connections (docs/tcp.md)."""

    # Seconds a client may take to send its ClientHello when edge must read it.
    hello_timeout: float = 10.0
    # Seconds without a byte either way before a proxied connection is closed.
    idle_timeout: float = 600.0
    backend_connect_timeout: float = 5.0
    # Open TCP-router connections per entry point; more are refused at once.
    max_connections: int = 10000


@dataclass(frozen=True)
class UDPConfig:
    """UDP routers' sessions (docs/tcp.md)."""

    # Seconds without a datagram before a client's session ends (Traefik's default: 3).
    session_timeout: float = 3.0
    # Client sessions per entry point; datagrams from new clients beyond it are dropped.
    max_sessions: int = 1024


@dataclass(frozen=True)
class LogConfig:
    # "text" | "json"
    format: str = "text"
    # "debug" | "info" | "warn" | "error"
    level: str = "info"


@dataclass(frozen=True)
class Config:
    docker: DockerConfig = field(default_factory=DockerConfig)
    entrypoints: tuple[EntryPoint, ...] = (
        EntryPoint("http", "tcp:8080"),
        EntryPoint("https", "tcp:8443", tls=True),
    )
    admin: AdminConfig = field(default_factory=AdminConfig)
    dns: DNSConfig = field(default_factory=DNSConfig)
    http: HTTPConfig = field(default_factory=HTTPConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    routes: tuple[StaticRoute, ...] = ()
    middlewares: tuple[StaticMiddleware, ...] = ()
    log: LogConfig = field(default_factory=LogConfig)
    acme: tuple[ACMEResolver, ...] = ()
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    tcp: TCPConfig = field(default_factory=TCPConfig)
    udp: UDPConfig = field(default_factory=UDPConfig)
    # Where the config came from, for messages.
    source: str = ""

    def entrypoint(self, name: str) -> EntryPoint | None:
        for ep in self.entrypoints:
            if ep.name == name:
                return ep
        return None


_CHOICES = {
    ("docker", "swarm"): ("auto", "true", "false"),
    ("docker", "containers"): ("auto", "true", "false"),
    ("docker", "backend_addressing"): ("auto", "task", "published"),
    ("http", "access_log_format"): ("common", "combined", "json"),
    ("tls", "min_version"): ("1.2", "1.3"),
    ("log", "format"): ("text", "json"),
    ("log", "level"): ("debug", "info", "warn", "error"),
}

_ENDPOINT_KEYS = {("admin", "address")}
_CIDR_KEYS = {
    ("dns", "allow_recursion"),
    ("http", "trusted_proxies"),
    ("entrypoints", "proxy_protocol"),
    ("routes", "allow_ips"),
}

_DNS_TYPES = ("A", "AAAA", "CNAME", "TXT", "MX", "SRV", "PTR")


def check_endpoint(description: str) -> None:
    """Raise ``ValueError`` unless ``description`` is a valid server endpoint string."""
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    serverFromString(MemoryReactor(), description)


LISTEN_BACKLOG = 511
"""Listen queue for edge's TCP listeners (Twisted's default is 50; nginx uses
511): a burst of new connections waits in the kernel instead of being dropped
and retried by clients a second or more later."""

_BACKLOG_TYPES = ("tcp", "tcp6", "ssl", "unix")


def listen_address(description: str) -> str:
    """
    ``description`` with ``backlog=LISTEN_BACKLOG`` added, for the endpoint
    types that take one, unless it names its own ``backlog=``.
    """
    parts = re.split(r"(?<!\\):", description)
    if parts[0].strip().lower() not in _BACKLOG_TYPES:
        return description
    if any(p.startswith("backlog=") for p in parts[1:]):
        return description
    return f"{description}:backlog={LISTEN_BACKLOG}"


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is tuple:
        (inner, *_rest) = typing.get_args(hint)
        return f"a list of {_type_name(inner)}"
    if dataclasses.is_dataclass(hint):
        return "a table"
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
    }.get(hint, str(hint))


class _Reader:
    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, message: str) -> typing.NoReturn:
        where = f"{self.source}: " if self.source else ""
        raise ConfigError(f"{where}{key}: {message}")

    def value(self, key: str, hint: Any, value: Any) -> Any:
        origin = typing.get_origin(hint)
        if hint is bool:
            if isinstance(value, bool):
                return value
        elif hint is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif hint is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        elif hint is str:
            if isinstance(value, str):
                return value
        elif origin is tuple:
            (inner, *_rest) = typing.get_args(hint)
            if isinstance(value, list):
                return tuple(
                    self.value(f"{key}[{i}]", inner, item)
                    for i, item in enumerate(value)
                )
        elif dataclasses.is_dataclass(hint):
            if isinstance(value, dict):
                return self.table(key, hint, value)
        self.fail(key, f"expected {_type_name(hint)}, got {value!r}")

    def table(self, key: str, cls: type, table: dict, **extra: Any) -> Any:
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)} - {"source"}
        kwargs = dict(extra)
        for name, value in table.items():
            full = f"{key}.{name}" if key else name
            if name not in names or name in extra:
                known = ", ".join(sorted(names - set(extra)))
                self.fail(full, f"unknown key (known keys: {known})")
            kwargs[name] = self.value(full, hints[name], value)
        try:
            return cls(**kwargs)
        except TypeError as e:
            missing = [
                f.name
                for f in dataclasses.fields(cls)
                if f.name not in kwargs
                and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING
            ]
            if missing:
                self.fail(key, f"missing required key {missing[0]!r}")
            self.fail(key, str(e))


def parse(document: dict, source: str = "") -> Config:
    """Build a :class:`Config` from a parsed TOML document, validating it all."""
    reader = _Reader(source)
    document = dict(document)
    kwargs: dict[str, Any] = {"source": source}

    entrypoints = document.pop("entrypoints", None)
    if entrypoints is not None:
        if not isinstance(entrypoints, dict):
            reader.fail("entrypoints", "expected a table of named entry points")
        eps = []
        for name, table in entrypoints.items():
            if not isinstance(table, dict):
                reader.fail(f"entrypoints.{name}", "expected a table")
            ep = reader.table(f"entrypoints.{name}", EntryPoint, table, name=name)
            if "protocol" not in table and ep.address.lower().startswith("udp:"):
                ep = dataclasses.replace(ep, protocol="udp")
            eps.append(ep)
        kwargs["entrypoints"] = tuple(eps)

    routes = document.pop("routes", None)
    if routes is not None:
        if not isinstance(routes, dict):
            reader.fail("routes", "expected a table of named routes")
        parsed = []
        for name, table in routes.items():
            if not isinstance(table, dict):
                reader.fail(f"routes.{name}", "expected a table")
            parsed.append(reader.table(f"routes.{name}", StaticRoute, table, name=name))
        kwargs["routes"] = tuple(parsed)

    middlewares = document.pop("middlewares", None)
    if middlewares is not None:
        if not isinstance(middlewares, dict):
            reader.fail("middlewares", "expected a table of named middlewares, e.g. [middlewares.auth.basicAuth]")
        from edge.discovery.references import label_options, read_files

        found = []
        for name, table in middlewares.items():
            try:
                options = label_options(name, table)
                found.append(StaticMiddleware(name, options, read_files(name, options)))
            except ValueError as e:
                key, _, message = str(e).partition(": ")
                reader.fail(key, message)
        kwargs["middlewares"] = tuple(found)
    http = document.get("http")
    if isinstance(http, dict) and "middlewares" in http:
        reader.fail("http.middlewares", "edge's middlewares are [middlewares.NAME.KIND] tables"
                    " (Traefik's [http.middlewares.NAME.KIND] without the http.)")

    acme = document.pop("acme", None)
    if acme is not None:
        if not isinstance(acme, dict):
            reader.fail("acme", "expected a table of named resolvers, e.g. [acme.le]")
        resolvers = []
        for name, table in acme.items():
            if not isinstance(table, dict):
                reader.fail(f"acme.{name}", "expected a table")
            resolvers.append(reader.table(f"acme.{name}", ACMEResolver, table, name=name))
        kwargs["acme"] = tuple(resolvers)

    rest = reader.table("", Config, document)
    config = dataclasses.replace(rest, **kwargs)
    _check(config, reader)
    return config


def validate(config: Config, source: str = "") -> None:
    """Raise :class:`ConfigError` unless ``config`` passes the checks a file gets."""
    _check(config, _Reader(source))


def _check(config: Config, reader: _Reader) -> None:
    """Cross-field checks: choices, endpoint strings, CIDRs, DNS records."""
    for (section, key), choices in _CHOICES.items():
        value = getattr(getattr(config, section), key)
        if value not in choices:
            reader.fail(
                f"{section}.{key}",
                f"expected one of {', '.join(choices)}, got {value!r}",
            )
    for section, key in _ENDPOINT_KEYS:
        value = getattr(getattr(config, section), key)
        if value:
            _check_endpoint(reader, f"{section}.{key}", value)
    names = set()
    for ep in config.entrypoints:
        if ep.name in names:
            reader.fail(f"entrypoints.{ep.name}", "defined twice")
        names.add(ep.name)
        if _check_l4_entrypoint(reader, ep):
            continue
        _check_endpoint(reader, f"entrypoints.{ep.name}.address", ep.address)
        _check_cidrs(reader, f"entrypoints.{ep.name}.proxy_protocol", ep.proxy_protocol)
    for ep in config.entrypoints:
        if ep.redirect_to and ep.redirect_to not in names:
            reader.fail(
                f"entrypoints.{ep.name}.redirect_to",
                f"no entry point named {ep.redirect_to!r}",
            )
    _check_cidrs(reader, "dns.allow_recursion", config.dns.allow_recursion)
    _check_cidrs(reader, "http.trusted_proxies", config.http.trusted_proxies)
    from edge.http.target import ENCODED_CHARACTERS

    for name in config.http.allowed_encoded_characters:
        if name not in ENCODED_CHARACTERS:
            reader.fail(
                "http.allowed_encoded_characters",
                f"expected names from {', '.join(ENCODED_CHARACTERS)}, got {name!r}",
            )
    if not 0 < config.dns.port < 65536:
        reader.fail("dns.port", f"expected a port number 1-65535, got {config.dns.port}")
    for i, record in enumerate(config.dns.records):
        if record.type.upper() not in _DNS_TYPES:
            reader.fail(
                f"dns.records[{i}].type",
                f"expected one of {', '.join(_DNS_TYPES)}, got {record.type!r}",
            )
    for address in config.dns.advertise:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            reader.fail("dns.advertise", f"expected IP addresses, got {address!r}")
    for route in config.routes:
        if not route.backends:
            reader.fail(f"routes.{route.name}.backends", "expected at least one URL")
        for url in route.backends:
            if not (url.startswith("http://") or url.startswith("https://")):
                reader.fail(
                    f"routes.{route.name}.backends",
                    f"expected http:// or https:// URLs, got {url!r}",
                )
        _check_cidrs(reader, f"routes.{route.name}.allow_ips", route.allow_ips)
        _check_route(reader, route, names)
    for key, value in (("tcp.hello_timeout", config.tcp.hello_timeout), ("tcp.idle_timeout", config.tcp.idle_timeout),
                       ("tcp.backend_connect_timeout", config.tcp.backend_connect_timeout),
                       ("udp.session_timeout", config.udp.session_timeout)):
        if value <= 0:
            reader.fail(key, "expected a positive number of seconds")
    for key, value in (("tcp.max_connections", config.tcp.max_connections), ("udp.max_sessions", config.udp.max_sessions)):
        if value < 1:
            reader.fail(key, f"expected a whole number of at least 1, got {value}")
    _check_docker_url(reader, config.docker.url)
    _check_dns_addresses(reader, config.dns)
    _check_acme(config, reader)
    _check_middlewares(config, reader)


def _check_middlewares(config: Config, reader: _Reader) -> None:
    """A middleware of the file, or a route's use of one, that would not work stops start-up."""
    if not config.middlewares and not any(r.middlewares for r in config.routes):
        return
    from edge.discovery.references import file_middlewares, first_error, route_middlewares

    available, problems = file_middlewares(config)
    error = first_error(problems)
    if error is None:
        for route in config.routes:
            if route.middlewares:
                error = first_error(route_middlewares(config, route, available)[2])
                if error is not None:
                    break
    if error is not None:
        reader.fail(*error)


_ACME_CHOICES = {
    "key_type": ("ec256", "ec384", "rsa2048", "rsa4096"),
    "challenge": ("http-01", "tls-alpn-01", "dns-01"),
    "tsig_algorithm": ("hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha1"),
}


def _check_acme(config: Config, reader: _Reader) -> None:
    resolvers = {r.name for r in config.acme}
    for r in config.acme:
        key = f"acme.{r.name}"
        for option, choices in _ACME_CHOICES.items():
            if getattr(r, option) not in choices:
                reader.fail(f"{key}.{option}", f"expected one of {', '.join(choices)}, got {getattr(r, option)!r}")
        if r.ca not in ACME_DIRECTORIES and not r.ca.startswith(("https://", "http://")):
            reader.fail(f"{key}.ca", f"expected {', '.join(ACME_DIRECTORIES)} or a directory URL, got {r.ca!r}")
        if bool(r.eab_kid) != bool(r.eab_hmac_key):
            reader.fail(f"{key}.eab_kid", "eab_kid and eab_hmac_key go together")
        if r.challenge == "dns-01" and not (r.dns_server or r.dns_hook):
            reader.fail(f"{key}.challenge", "dns-01 needs dns_server (RFC 2136) or dns_hook")
        if r.dns_server and not (r.tsig_key_name and r.tsig_secret):
            reader.fail(f"{key}.dns_server", "RFC 2136 updates need tsig_key_name and tsig_secret")
        if not 0.0 < r.renew_fraction < 1.0:
            reader.fail(f"{key}.renew_fraction", f"expected a number between 0 and 1, got {r.renew_fraction}")
        if r.order_timeout <= 0:
            reader.fail(f"{key}.order_timeout", "expected a positive number of seconds")
    cluster = config.cluster
    if cluster.listen:
        _check_endpoint(reader, "cluster.listen", cluster.listen)
        if not cluster.secret_file:
            reader.fail("cluster.secret_file", "instances authenticate each other with a shared secret; name its file")
    if (cluster.peers or cluster.peers_dns) and not cluster.listen:
        reader.fail("cluster.listen", "peers are configured but this instance does not listen for them")
    if not 0 < cluster.peers_port < 65536:
        reader.fail("cluster.peers_port", f"expected a port number 1-65535, got {cluster.peers_port}")
    for peer in cluster.peers:
        host, _, port = peer.rpartition(":")
        if not host or not port.isdigit():
            reader.fail("cluster.peers", f"expected host:port, got {peer!r}")
    for route in config.routes:
        if route.cert_resolver and route.cert_resolver not in resolvers:
            reader.fail(
                f"routes.{route.name}.cert_resolver",
                f"no [acme.{route.cert_resolver}] resolver is configured",
            )


_UDP_ADDRESS = re.compile(r"^udp:(\d+)(?::interface=([^:]+|\[[0-9a-fA-F:.]+\]|[0-9a-fA-F:]*::[0-9a-fA-F:]*))?$")


def udp_address(address: str) -> tuple[int, str]:
    """(port, interface) of ``udp:PORT[:interface=ADDR]``; raises ``ValueError``."""
    match = _UDP_ADDRESS.match(address.strip())
    if match is None:
        raise ValueError(f"expected udp:PORT or udp:PORT:interface=ADDR, got {address!r}")
    port, interface = int(match.group(1)), (match.group(2) or "").strip("[]")
    if not 0 < port < 65536:
        raise ValueError(f"expected a port number 1-65535, got {port}")
    if interface:
        ipaddress.ip_address(interface)
    return port, interface


def _check_l4_entrypoint(reader: _Reader, ep: EntryPoint) -> bool:
    """Checks of TCP/UDP entry points; True when the address was checked here (UDP)."""
    key = f"entrypoints.{ep.name}"
    if ep.protocol not in ("http", "tcp", "udp"):
        reader.fail(f"{key}.protocol", f"expected one of http, tcp, udp, got {ep.protocol!r}")
    if ep.protocol == "http":
        return False
    if ep.tls:
        reader.fail(f"{key}.tls", f"a {ep.protocol} entry point has no TLS of its own: TCP routers choose"
                    " terminated TLS or passthrough (.tls, .tls.passthrough)")
    if ep.redirect_to or ep.proxy_protocol:
        reader.fail(key, f"redirect_to and proxy_protocol apply to HTTP entry points, not {ep.protocol} ones")
    if ep.protocol == "tcp":
        if ep.address.lower().startswith("udp:"):
            reader.fail(f"{key}.address", f"a tcp entry point needs a TCP address, got {ep.address!r}")
        return False
    try:
        udp_address(ep.address)
    except ValueError as e:
        reader.fail(f"{key}.address", str(e))
    return True


def _check_route(reader: _Reader, route: StaticRoute, entrypoints: set[str]) -> None:
    """A route that would not serve is a mistake like any other key, not a warning."""
    key = f"routes.{route.name}"
    for name in route.entry_points:
        if name not in entrypoints:
            reader.fail(
                f"{key}.entry_points",
                f"unknown entry point {name!r} (known: {', '.join(sorted(entrypoints)) or 'none'})",
            )
    from edge.discovery.rule_parser import RuleError, parse_any

    try:
        parse_any(route.rule)
    except RuleError as e:
        reader.fail(f"{key}.rule", f"bad rule {route.rule!r}: {e}")
    try:
        from edge.http.htpasswd import UnsupportedHash, parse_users
    except ImportError:  # no HTTP front end installed
        return
    try:
        parse_users(route.basic_auth)
    except UnsupportedHash as e:
        from edge.redact import redact_text

        reader.fail(f"{key}.basic_auth", f"{redact_text(str(e))}; make entries with `python -m edge.passwd USER`")


def _check_dns_addresses(reader: _Reader, dns: DNSConfig) -> None:
    for interface in dns.interfaces:
        try:
            ipaddress.ip_address(interface)
        except ValueError:
            reader.fail(
                "dns.interfaces",
                f"expected IP addresses such as 127.0.0.1, 0.0.0.0 or ::, got {interface!r}",
            )
    from edge.dns.forward import parse_upstream

    for upstream in dns.upstream:
        try:
            parse_upstream(upstream)
        except ValueError:
            reader.fail(
                "dns.upstream",
                f"expected ADDR or ADDR:PORT with an IP address (e.g. 192.168.1.1 or"
                f" [2001:db8::1]:53), got {upstream!r}",
            )


_DOCKER_SCHEMES = ("unix", "tcp", "http", "https", "ssh")


def _check_docker_url(reader: _Reader, url: str) -> None:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in _DOCKER_SCHEMES or not rest.strip("/"):
        reader.fail(
            "docker.url",
            f"expected unix:///path/docker.sock or tcp://host:port, got {url!r}",
        )


def _check_endpoint(reader: _Reader, key: str, value: str) -> None:
    try:
        check_endpoint(value)
    except Exception as e:  # endpoint parsers raise assorted types
        reader.fail(
            key,
            f"expected a Twisted endpoint string like 'tcp:8080:interface=127.0.0.1',"
            f" got {value!r} ({e})",
        )


def _check_cidrs(reader: _Reader, key: str, values: tuple[str, ...]) -> None:
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            reader.fail(key, f"expected an address or CIDR, got {value!r}")


def document_line(path: str, offset: int) -> int:
    """The 1-based line of byte ``offset`` in the file at ``path``."""
    with open(path, "rb") as f:
        return f.read(offset).count(b"\n") + 1


def load(path: str | None) -> Config:
    """Read and validate the config file at ``path``; ``None`` gives the defaults."""
    if path is None:
        return Config()
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        line = document_line(path, e.start)
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} on line {line}); save it as UTF-8"
        ) from None
    return parse(document, source=path)
