"""
SIGHUP: re-read the configuration file and hand it to the parts that reload.

The file (and every file its ``[middlewares]`` name, and the certificate
files a reload reads) is read and checked in a thread pool, never on the
reactor thread; the result is applied on the reactor thread.  A mistake is
logged in one line, counted, and the running configuration stays.  A good
one goes to the parts :mod:`edge.tap` passed in, in that order, then to the
root config holder.  Reloads run one at a time: a SIGHUP while one is
reading is served once after it, with the file as it is then.

SIGHUP's handler only queues the work.  SIGTERM needs nothing here: twistd
stops the service tree and waits for the Deferreds that ``stopService``
returns, which is where the HTTP front end lets requests in flight finish
within ``[http] shutdown_grace``.
"""

from __future__ import annotations

import dataclasses
import signal
from typing import Callable, Generic, Protocol, Sequence, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from edge.config import Config, ConfigError

__all__ = [
    "ConfigHolder", "LatestRead", "Reloadable", "ReloadService", "StagedReloadable",
    "StartupSummary", "restart_needed",
]

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


class Reloadable(Protocol):
    """A part that takes a re-read configuration on the reactor thread (no file reads there)."""

    def reload(self, config: Config) -> None: ...


_Read = TypeVar("_Read")


class StagedReloadable(Protocol[_Read]):
    """
    A part whose reload reads files (TLS: its certificate directory):
    ``read_reload`` runs in the pool thread and changes nothing,
    ``apply_reload`` takes what it read on the reactor thread.
    """

    def read_reload(self, config: Config) -> _Read: ...

    def apply_reload(self, read: _Read) -> None: ...


class ConfigHolder(Protocol):
    """The root service: ``config`` is what the admin API and the next reload compare with."""

    config: Config


_T = TypeVar("_T")


class LatestRead(Generic[_T]):
    """
    ``read`` in a thread pool, then ``apply`` (or ``failed``) on the reactor
    thread, one at a time.  A request made while a read runs starts one more
    read after it, however many came (the newest file is what counts), so
    results are applied in the order they were read.
    """

    _log = Logger()

    def __init__(self, reactor, pool, read: Callable[[], _T], apply: Callable[[_T], object],
                 failed: Callable[[Failure], object]):
        self._reactor = reactor
        self._pool = pool
        self._read = read
        self._apply = apply
        self._failed = failed
        self._busy = False
        self._next: list[Deferred] | None = None

    @property
    def busy(self) -> bool:
        return self._busy

    def request(self) -> Deferred:
        """Fires with what ``apply``/``failed`` returned for a read begun at or after this call."""
        done: Deferred = Deferred()
        if self._busy:
            if self._next is None:
                self._next = []
            self._next.append(done)
        else:
            self._start([done])
        return done

    def _start(self, waiters: list[Deferred]) -> None:
        self._busy = True
        d = deferToThreadPool(self._reactor, self._pool, self._read)
        d.addCallbacks(self._apply, self._failed)
        d.addBoth(self._finished, waiters)

    def _finished(self, outcome, waiters: list[Deferred]) -> None:
        if isinstance(outcome, Failure):  # apply or failed itself raised
            self._log.failure("Applying a re-read configuration failed", outcome)
            outcome = None
        self._busy = False
        queued, self._next = self._next, None
        if queued is not None:
            self._start(queued)
        for waiter in waiters:
            waiter.callback(outcome)


@dataclasses.dataclass(frozen=True)
class _Reread:
    """What the pool thread read: the new config and each staged part's files (or why not)."""

    config: Config
    staged: list[tuple[StagedReloadable, object]]


def _name(part) -> str:
    return getattr(part, "name", None) or type(part).__name__


class ReloadService(Service):
    """
    Installs the SIGHUP handler while running.  ``load`` (blocking: it reads
    files) builds the new config in ``pool``; ``parts`` take it, then
    ``staged`` parts take what they read alongside, then ``holder.config``.
    """

    _log = Logger()

    def __init__(
        self,
        load: Callable[[], Config],
        reactor,
        pool,
        holder: ConfigHolder,
        parts: Sequence[Reloadable] = (),
        staged: Sequence[StagedReloadable] = (),
        signum: int = signal.SIGHUP,
    ):
        self._load = load
        self._reactor = reactor
        self._holder = holder
        self.parts = tuple(parts)
        self.staged = tuple(staged)
        self._signum = signum
        self._previous = None
        self._reads = LatestRead(reactor, pool, self._read, self._apply, self._rejected)
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

    def handle_hangup(self) -> Deferred:
        """Reload (reading in the pool); fires with True when the new configuration was taken."""
        if self._reads.busy:
            self._log.info("SIGHUP: a reload is reading; re-reading once more after it")
        else:
            self._log.info("SIGHUP: re-reading the configuration")
        return self._reads.request()

    # -- in the pool thread -------------------------------------------------

    def _read(self) -> _Reread:
        config = self._load()
        staged: list[tuple[StagedReloadable, object]] = []
        for part in self.staged:
            try:
                staged.append((part, part.read_reload(config)))
            except Exception:  # that part keeps what it has; logged on the reactor thread
                staged.append((part, Failure()))
        return _Reread(config, staged)

    # -- on the reactor thread ----------------------------------------------

    def _rejected(self, failure: Failure) -> bool:
        self.rejected += 1
        if failure.check(ConfigError):
            self._log.error(
                "Configuration reload rejected, keeping the running configuration: {error}",
                error=str(failure.value),
            )
        else:
            self._log.failure("Configuration reload failed, keeping the running configuration", failure)
        return False

    def _apply(self, reread: _Reread) -> bool:
        if not self.running:  # stopped while reading: the tree is going away
            self._log.info("Configuration re-read after edge began stopping; not applied")
            return False
        config = reread.config
        later = restart_needed(self._holder.config, config)
        if later:
            self._log.warn(
                "Configuration reload: these changes take effect only on restart: {changes}",
                changes="; ".join(later),
            )
        steps = [(part, part.reload, config) for part in self.parts]
        steps += [(part, part.apply_reload, read) for part, read in reread.staged]
        for part, step, argument in steps:
            try:
                if isinstance(argument, Failure):
                    argument.raiseException()
                step(argument)
            except Exception:
                self._log.failure("Service {service!r} failed to take the new configuration", service=_name(part))
        self._holder.config = config
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
