"""
Routes from the config file (Traefik's file provider idea).

``[routes.<name>]`` tables become routers and services named ``<name>@file``
whose targets are the listed URLs.  A route whose rule does not parse is
left out with a :class:`~edge.snapshot.Problem`; the others are kept.
``[middlewares.<name>]`` are built here too (edge.discovery.references): for
the routes' ``middlewares`` and, through :class:`FileMiddlewares`, for
Docker labels' ``<name>@file``.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from twisted.application.service import Service
from twisted.logger import Logger

from edge.config import Config, StaticRoute
from edge.discovery.references import FileMiddlewares, file_middlewares, route_middlewares
from edge.discovery.rule_parser import RuleError, parse_any
from edge.snapshot import (
    BackendService,
    BasicAuth,
    IPAllowList,
    Middleware,
    Problem,
    RedirectScheme,
    Router,
    RouterTLS,
    Snapshot,
    StripPrefix,
    Target,
)

__all__ = ["static_snapshot", "StaticProvider", "PROVIDER"]

PROVIDER = "file"


def _target(url: str) -> Target:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in ("http", "https") or not host:
        raise ValueError(f"expected an http:// or https:// URL with a host, got {url!r}")
    port = parts.port or (443 if scheme == "https" else 80)
    if parts.path not in ("", "/") or parts.query:
        raise ValueError(f"backend URLs carry no path or query, got {url!r}")
    return Target(id=url, host=host, port=port, scheme=scheme)


def _route(
    route: StaticRoute, source: str, named: tuple[Middleware, ...] = ()
) -> tuple[Router | None, BackendService | None, list[Problem]]:
    problems: list[Problem] = []
    label = f"routes.{route.name}"
    try:
        rule, implied = parse_any(route.rule)
    except RuleError as e:
        problems.append(Problem(source, f"route {route.name}: bad rule: {e}; route left out", "error", f"{label}.rule"))
        return None, None, problems
    targets = []
    for url in route.backends:
        try:
            targets.append(_target(url))
        except ValueError as e:
            problems.append(Problem(source, f"route {route.name}: {e}", "error", f"{label}.backends"))
    if not targets:
        problems.append(
            Problem(source, f"route {route.name}: no usable backend; route left out", "error", f"{label}.backends")
        )
        return None, None, problems
    bad_users = [u for u in route.basic_auth if ":" not in u or u.startswith(":")]
    if bad_users:
        problems.append(
            Problem(
                source,
                f"route {route.name}: basic_auth expects user:hash entries, got {bad_users[0]!r};"
                " route left out so it is not served unprotected",
                "error",
                f"{label}.basic_auth",
            )
        )
        return None, None, problems
    strip = tuple(p for p in route.strip_prefixes if p.startswith("/"))
    if len(strip) != len(route.strip_prefixes):
        problems.append(
            Problem(
                source,
                f"route {route.name}: strip_prefixes must start with '/'; others ignored",
                "error",
                f"{label}.strip_prefixes",
            )
        )
    middlewares: list[Middleware] = []
    if route.allow_ips:
        middlewares.append(IPAllowList(tuple(route.allow_ips)))
    if route.redirect_https:
        middlewares.append(RedirectScheme(scheme="https"))
    if route.basic_auth:
        middlewares.append(BasicAuth(users=tuple(route.basic_auth)))
    middlewares.extend(implied)
    if strip:
        middlewares.append(StripPrefix(strip))
    middlewares.extend(named)
    name = f"{route.name}@{PROVIDER}"
    router = Router(
        name=name,
        rule=rule,
        rule_text=route.rule,
        service=name,
        entry_points=tuple(route.entry_points),
        priority=route.priority,
        middlewares=tuple(middlewares),
        tls=RouterTLS(cert_resolver=route.cert_resolver) if route.tls or route.cert_resolver else None,
        provider=PROVIDER,
        source=source,
    )
    service = BackendService(name=name, targets=tuple(targets), pass_host_header=route.pass_host_header)
    return router, service, problems


def static_snapshot(config: Config) -> Snapshot:
    """Routers and services for the config file's ``[routes]``."""
    source = config.source or "config"
    routers, services = [], []
    available, found_here = file_middlewares(config)
    problems: list[Problem] = list(found_here)
    for route in config.routes:
        named, keep, found = route_middlewares(config, route, available) if route.middlewares else ((), True, ())
        problems.extend(found)
        if not keep:
            continue
        router, service, found = _route(route, source, named)
        problems.extend(found)
        if router is not None and service is not None:
            routers.append(router)
            services.append(service)
    return Snapshot.build(routers=routers, services=services, problems=problems)


class StaticProvider(Service):
    """Reports the config file's routes to the publisher at start and on reload."""

    _log = Logger()

    def __init__(self, config: Config, publisher, middlewares: FileMiddlewares | None = None):
        self._config = config
        self._publisher = publisher
        # The file's middlewares as the Docker provider's builds see them.
        self._middlewares = middlewares

    def startService(self) -> None:
        super().startService()
        self._report()

    def reload(self, config: Config) -> None:
        """Take a re-read config file's routes; reported at once when running."""
        self._config = config
        if self.running:
            self._report()

    def _report(self) -> None:
        snapshot = static_snapshot(self._config)
        for problem in snapshot.problems:
            self._log.warn("{source}: {message}", source=problem.source, message=problem.message)
        self._publisher.report(PROVIDER, snapshot)
        if self._middlewares is not None:
            self._middlewares.replace(file_middlewares(self._config)[0])
