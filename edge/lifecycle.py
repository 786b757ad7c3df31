"""
SIGHUP: re-read the configuration file and hand it to every service.

The file is read and checked completely before anything changes; a mistake
is logged in one line and the running configuration stays.  A good one goes
to every service in the tree that has a ``reload(config)`` method (the TLS
service re-reads its certificate directory there), in tree order.

SIGTERM needs nothing here: twistd stops the service tree and waits for the
Deferreds that ``stopService`` returns, which is where the HTTP front end
lets requests in flight finish within ``[http] shutdown_grace``.
"""

from __future__ import annotations

import inspect
import signal
from typing import Callable

from twisted.application.service import IService, Service
from twisted.logger import Logger

from edge.admin.service import walk
from edge.config import Config, ConfigError

__all__ = ["ReloadService", "StartupSummary", "restart_needed"]

# What a reload applies while running; every other changed key is reported
# as taking effect on restart, so a SIGHUP never ignores a change silently.
_RELOADED = {
    "routes",  # the static provider re-reports them
    "middlewares",  # so does it, and the Docker provider builds again with them
    "admin.users",
    "tls.certificates",  # the TLS service re-reads its directory
    "dns.zone", "dns.ttl", "dns.advertise", "dns.upstream", "dns.upstream_timeout",
    "dns.cache_size", "dns.allow_recursion", "dns.hosts_file", "dns.records",
    "source",
}


def _flat(config: Config) -> dict[str, object]:
    """Dotted key -> value, entry points by name, routes as one value."""
    import dataclasses

    found: dict[str, object] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name == "entrypoints":
            for ep in value:
                for g in dataclasses.fields(ep):
                    found[f"entrypoints.{ep.name}.{g.name}"] = getattr(ep, g.name)
        elif dataclasses.is_dataclass(value):
            for g in dataclasses.fields(value):
                found[f"{f.name}.{g.name}"] = getattr(value, g.name)
        else:
            found[f.name] = value
    return found


def restart_needed(old: Config, new: Config) -> list[str]:
    """``key (old -> new)`` for each change a reload does not apply."""
    before, after = _flat(old), _flat(new)
    changes = []
    for key in sorted(set(before) | set(after)):
        if key in _RELOADED or key.split(".", 1)[0] in _RELOADED:
            continue
        if before.get(key) != after.get(key):
            if key.startswith("entrypoints.") and (key not in before or key not in after):
                name = key.split(".")[1]
                label = f"entrypoints.{name}"
                if not any(c.startswith(label + " ") for c in changes):
                    changes.append(f"{label} ({'added' if key not in before else 'removed'})")
                continue
            changes.append(f"{key} ({before.get(key)!r} -> {after.get(key)!r})")
    return changes


def _takes_config(method) -> bool:
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in parameters
    )


class ReloadService(Service):
    """Installs the SIGHUP handler while running; ``load`` builds the new config."""

    _log = Logger()

    def __init__(self, load: Callable[[], Config], reactor, signum: int = signal.SIGHUP):
        self._load = load
        self._reactor = reactor
        self._signum = signum
        self._previous = None
        self.reloads = 0
        self.rejected = 0

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(self._signum, self._on_signal)

    def stopService(self):
        if self._previous is not None:
            signal.signal(self._signum, self._previous)
            self._previous = None
        return super().stopService()

    def _on_signal(self, signum, frame) -> None:
        # A signal handler may run between any two bytecodes of the reactor
        # thread: only queue the work and wake the reactor.
        self._reactor.callFromThread(self.handle_hangup)

    def _root(self) -> IService:
        node: IService = self
        while getattr(node, "parent", None) is not None:
            node = node.parent
        return node

    def handle_hangup(self) -> bool:
        """Reload now; True when the new configuration was taken."""
        self._log.info("SIGHUP: re-reading the configuration")
        try:
            config = self._load()
        except ConfigError as e:
            self.rejected += 1
            self._log.error(
                "Configuration reload rejected, keeping the running configuration: {error}",
                error=str(e),
            )
            return False
        except Exception:
            self.rejected += 1
            self._log.failure("Configuration reload failed, keeping the running configuration")
            return False
        # The edge root (under twistd, the application's service is above it).
        root = self.parent if self.parent is not None else self._root()
        previous = getattr(root, "config", None)
        if isinstance(previous, Config):
            later = restart_needed(previous, config)
            if later:
                self._log.warn(
                    "Configuration reload: these changes take effect only on restart: {changes}",
                    changes="; ".join(later),
                )
        for service in walk(root):
            if service is self:
                continue
            reload = getattr(service, "reload", None)
            if not callable(reload):
                continue
            try:
                if _takes_config(reload):
                    reload(config)
                else:  # e.g. TLS: re-reads its certificate directory
                    reload()
            except Exception:
                self._log.failure(
                    "Service {service!r} failed to take the new configuration",
                    service=getattr(service, "name", None) or type(service).__name__,
                )
        if hasattr(root, "config"):
            root.config = config
        self.reloads += 1
        self._log.info(
            "Configuration reloaded from {source}", source=config.source or "defaults and flags"
        )
        return True


class StartupSummary(Service):
    """
    One line once edge is up: what listens where, and how Docker is doing.

    Waits (bounded by ``docker.timeout``) for the Docker provider's first
    sync or failure, so the line says "connected" or why not.
    """

    _log = Logger()

    def __init__(self, config: Config, listeners, publisher, reactor, poll: float = 0.1):
        self._config = config
        self._listeners = listeners
        self._publisher = publisher
        self._reactor = reactor
        self._poll = poll
        self._call = None
        self.line = ""

    def startService(self) -> None:
        super().startService()
        self._deadline = self._reactor.seconds() + self._config.docker.timeout
        self._call = self._reactor.callLater(0, self._check)

    def stopService(self):
        if self._call is not None and self._call.active():
            self._call.cancel()
        return super().stopService()

    def _check(self) -> None:
        status = self._publisher.status("docker")
        if not (status.syncs or status.errors) and self._reactor.seconds() < self._deadline:
            self._call = self._reactor.callLater(self._poll, self._check)
            return
        self._call = None
        self.line = self.summary(status)
        self._log.info("edge is up: {summary}", summary=self.line)

    def summary(self, status) -> str:
        config = self._config
        states = {(s.kind, s.name): s for s in self._listeners.states()}
        parts = []
        for ep in config.entrypoints:
            kind = ep.protocol if ep.protocol != "http" else ("https" if ep.tls else "http")
            state = states.get((kind, ep.name))
            where = ep.address if state is None or state.listening else f"{ep.address} NOT LISTENING"
            what = f"TLS {'on' if ep.tls else 'off'}" if ep.protocol == "http" else f"{ep.protocol.upper()} routers"
            parts.append(f"{ep.name} {where} ({what})")
        if config.dns.enabled:
            down = [s.name for s in states.values() if s.kind == "dns" and not s.listening]
            dns = f"DNS {', '.join(config.dns.interfaces)} port {config.dns.port} UDP+TCP"
            parts.append(dns + (f" ({', '.join(down)} NOT LISTENING)" if down else ""))
        else:
            parts.append("DNS off")
        parts.append(f"admin {config.admin.address}" if config.admin.address else "admin off")
        if status.connected:
            docker = "connected"
        elif status.last_error:
            docker = f"unreachable ({status.last_error}); serving the config file's routes"
        else:
            docker = f"no answer within {config.docker.timeout:g}s; still trying"
        parts.append(f"Docker {config.docker.url} {docker}")
        return "; ".join(parts)


class DockerWarmUp(Service):
    """
    Until Docker's routes are in the routing tables, an unknown host is not "404".

    Right after start (a restart, a rolling update of edge) a host that Docker
    labels will route is unknown only because the first sync has not finished:
    answer it 503 with ``Retry-After`` instead, until the first Docker
    snapshot is published or ``docker.timeout`` has passed.  The config
    file's routes are served from the first request on.
    """

    _log = Logger()
    RETRY_AFTER = b"2"

    def __init__(self, publisher, reactor, timeout: float, proxy, debounce: float = 0.2, poll: float = 0.1):
        self._debounce = debounce
        self._poll = poll
        self._poller = None
        self._publisher = publisher
        self._reactor = reactor
        self._timeout = timeout
        self._proxy = proxy  # reads .not_found per request
        self._normal = None
        self._unsubscribe = None
        self._timer = None
        self.warming = False

    def startService(self) -> None:
        super().startService()
        from edge.http.middlewares import Reply

        self._normal = self._proxy.not_found
        self._proxy.not_found = Reply(
            503, b"Service Unavailable",
            [(b"Content-Type", b"text/plain; charset=utf-8"), (b"Retry-After", self.RETRY_AFTER)],
            b"edge is starting: the routes from Docker are not loaded yet\n",
        )
        self.warming = True
        self._timer = self._reactor.callLater(self._timeout, self._done, "timeout")
        self._unsubscribe = self._publisher.subscribe(self._on_snapshot)
        self._poller = self._reactor.callLater(self._poll, self._check)

    def _on_snapshot(self, snapshot) -> None:
        # A publish merges every report present, so once Docker has synced the
        # snapshot being delivered (to the HTTP tables first) holds its routes.
        if self.warming and self._publisher.status("docker").syncs:
            self._done("synced")

    def _check(self) -> None:
        # A sync that changes nothing publishes nothing: once Docker has
        # reported and the publisher's debounce has passed, the tables are current.
        self._poller = None
        if not self.warming:
            return
        if self._publisher.status("docker").syncs:
            self._poller = self._reactor.callLater(self._debounce, self._done, "synced")
        else:
            self._poller = self._reactor.callLater(self._poll, self._check)

    def _done(self, why: str) -> None:
        if not self.warming:
            return
        self.warming = False
        self._proxy.not_found = self._normal
        for call in (self._timer, self._poller):
            if call is not None and call.active():
                call.cancel()
        if self._unsubscribe is not None:
            unsubscribe, self._unsubscribe = self._unsubscribe, None
            self._reactor.callLater(0, unsubscribe)  # not while the publisher iterates
        if why == "timeout":
            self._log.warn(
                "No Docker routes after {timeout}s (docker.timeout): unknown hosts get 404 from now on",
                timeout=self._timeout,
            )
        elif why == "synced":
            self._log.debug("Docker routes loaded: unknown hosts get 404 from now on")

    def stopService(self):
        self._done("stopping")
        return super().stopService()
