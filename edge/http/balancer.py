"""
Load balancing over a service's targets, with passive and active health.

A :class:`Balancer` is built per snapshot (it is part of the routing table)
but health lives in one :class:`HealthRegistry` that outlives snapshots, so a
target that just refused connections stays skipped when an unrelated label
change publishes a new snapshot.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

from twisted.logger import Logger

from edge import metrics
from edge.snapshot import BackendService, HealthCheck, Snapshot, Target

__all__ = ["HealthRegistry", "Balancer", "build_balancers", "sticky_value", "HealthChecks"]


def target_key(target: Target) -> tuple[str, str, int]:
    return (target.scheme, target.host, target.port)


def sticky_value(target: Target) -> str:
    """The cookie value naming ``target``: stable for the task's life, opaque."""
    return hashlib.sha1(target.id.encode("utf-8")).hexdigest()[:16]


def sticky_cookie(headers, name: bytes) -> str | None:
    """The value of cookie ``name`` in raw ``(name, value)`` request headers, if any."""
    for k, v in headers:
        if k.lower() == b"cookie":
            for part in v.split(b";"):
                key, sep, value = part.strip().partition(b"=")
                if sep and key == name:
                    return value.strip().decode("latin-1")
    return None


def set_sticky_cookie(sticky, target: Target) -> bytes:
    """The ``Set-Cookie`` value that pins a client to ``target``."""
    value = f"{sticky.name}={sticky_value(target)}; Path=/"
    if sticky.http_only:
        value += "; HttpOnly"
    if sticky.secure:
        value += "; Secure"
    if sticky.same_site:
        # Written as Go's net/http writes it (Traefik): SameSite=Lax, =Strict, =None.
        value += f"; SameSite={sticky.same_site.capitalize()}"
    return value.encode("latin-1")


class HealthRegistry:
    """
    Which targets to avoid, and until when.

    Passive: a target whose connection was refused or timed out is skipped
    for a back-off that doubles with each consecutive failure (``base`` up to
    ``cap`` seconds) and is forgiven on the first success.  Active: results of
    health checks, keyed by (service, target id).
    """

    _log = Logger()

    def __init__(self, reactor, base: float = 1.0, cap: float = 30.0):
        self._reactor = reactor
        self._base = base
        self._cap = cap
        self._down_until: dict[tuple, float] = {}
        self._failures: dict[tuple, int] = {}
        self.active_down: set[tuple[str, str]] = set()

    def usable(self, key: tuple) -> bool:
        until = self._down_until.get(key)
        if until is None:
            return True
        if self._reactor.seconds() >= until:
            return True
        return False

    def connect_failed(self, key: tuple) -> float:
        """Record a failed connect; returns the back-off applied."""
        count = self._failures.get(key, 0) + 1
        self._failures[key] = count
        backoff = min(self._cap, self._base * (2 ** (count - 1)))
        self._down_until[key] = self._reactor.seconds() + backoff
        return backoff

    def connect_succeeded(self, key: tuple) -> None:
        if key in self._down_until:
            del self._down_until[key]
            self._failures.pop(key, None)

    def forget_except(self, keys: Iterable[tuple]) -> None:
        """Drop state of targets no longer in any snapshot."""
        keep = set(keys)
        for key in [k for k in self._down_until if k not in keep]:
            del self._down_until[key]
            self._failures.pop(key, None)


class Balancer:
    """Weighted round-robin over one service's targets, health and stickiness aware."""

    __slots__ = (
        "service", "targets", "keys", "sticky", "_by_cookie", "_health", "_equal",
        "_next", "_current", "_weights", "_total", "_active", "urls", "cookies",
    )

    def __init__(self, service: BackendService, health: HealthRegistry):
        self.service = service.name
        self.targets: tuple[Target, ...] = tuple(t for t in service.targets if t.weight > 0)
        self.keys = tuple(target_key(t) for t in self.targets)
        self.urls = tuple(t.url for t in self.targets)
        self.cookies = tuple(sticky_value(t) for t in self.targets)
        self.sticky = service.sticky
        self._by_cookie = {sticky_value(t): i for i, t in enumerate(self.targets)}
        self._health = health
        self._weights = [t.weight for t in self.targets]
        self._equal = len(set(self._weights)) <= 1
        self._total = sum(self._weights)
        self._current = [0] * len(self.targets)
        self._next = 0
        self._active = service.health_check is not None

    def __len__(self) -> int:
        return len(self.targets)

    def _advance(self) -> int:
        if self._equal:
            i = self._next
            self._next = (i + 1) % len(self.targets)
            return i
        # Smooth weighted round-robin: spreads a heavy target's turns out.
        current = self._current
        best = 0
        for i, w in enumerate(self._weights):
            current[i] += w
            if current[i] > current[best]:
                best = i
        current[best] -= self._total
        return best

    def _healthy(self, i: int) -> bool:
        if not self._active:
            return True
        if (self.service, self.targets[i].id) in self._health.active_down:
            return False
        return True

    def choose(self, tried, headers) -> tuple[int | None, bytes | None]:
        """
        The target index for a request and the ``Set-Cookie`` it needs, if any.

        ``tried`` holds indexes already tried; the sticky cookie is honoured
        on the first try only.  ``(None, None)`` when no target is left.
        """
        sticky = self.sticky
        cookie = None
        if sticky is not None and not tried:
            cookie = sticky_cookie(headers, sticky.name.encode("latin-1"))
        index = self.pick_index(tried, cookie)
        if index is None or sticky is None or cookie == self.cookies[index]:
            return index, None
        return index, set_sticky_cookie(sticky, self.targets[index])

    def pick(self, exclude=(), cookie: str | None = None) -> Target | None:
        """The next target to try (see :meth:`pick_index`), or None."""
        i = self.pick_index(exclude, cookie)
        return None if i is None else self.targets[i]

    def pick_index(self, exclude=(), cookie: str | None = None) -> int | None:
        """
        The index of the next target to try, skipping ``exclude`` (indexes already tried).

        A sticky ``cookie`` naming a usable target wins.  Targets in passive
        back-off are used only when nothing else is left; targets failing
        their active health check never are.
        """
        n = len(self.targets)
        if not n:
            return None
        if cookie is not None:
            i = self._by_cookie.get(cookie)
            if (
                i is not None
                and i not in exclude
                and self._healthy(i)
                and self._health.usable(self.keys[i])
            ):
                return i
        usable = self._health.usable
        for _ in range(n):
            i = self._advance()
            if i in exclude or not self._healthy(i):
                continue
            if usable(self.keys[i]):
                return i
        for i in range(n):
            if i not in exclude and self._healthy(i):
                return i
        return None

    def index(self, target: Target) -> int:
        return self.targets.index(target)

    def has_healthy(self) -> bool:
        return any(self._healthy(i) for i in range(len(self.targets)))


def build_balancers(snapshot: Snapshot, health: HealthRegistry, reactor=None) -> dict[str, Balancer]:
    return {s.name: Balancer(s, health) for s in snapshot.services}


class HealthChecks:
    """
    Active health checks for services whose labels ask for them.

    Reconciled on every snapshot: a check keeps running while its service,
    settings and target stay the same, so a new snapshot does not reset it.
    ``probe(target, check) -> Deferred[bool]`` does one request.
    """

    _log = Logger()

    def __init__(self, reactor, health: HealthRegistry, probe):
        self._reactor = reactor
        self._health = health
        self._probe = probe
        self._running: dict[tuple, object] = {}

    def update(self, snapshot: Snapshot) -> None:
        from twisted.internet.task import LoopingCall

        wanted = {}
        for service in snapshot.services:
            if service.health_check is None:
                continue
            for target in service.targets:
                wanted[(service.name, target.id, target, service.health_check)] = None
        for key in [k for k in self._running if k not in wanted]:
            loop = self._running.pop(key)
            if loop.running:
                loop.stop()
            self._health.active_down.discard((key[0], key[1]))
            try:
                metrics.target_health.remove(key[0], key[1])
            except KeyError:
                pass
        for key in wanted:
            if key in self._running:
                continue
            service, target_id, target, check = key
            loop = LoopingCall(self._check, service, target, check)
            loop.clock = self._reactor
            self._running[key] = loop
            loop.start(max(check.interval, 0.1), now=True)

    def stop(self) -> None:
        for loop in self._running.values():
            if loop.running:
                loop.stop()
        self._running.clear()

    def _check(self, service: str, target: Target, check: HealthCheck):
        d = self._probe(target, check)

        def done(ok: bool) -> None:
            key = (service, target.id)
            was_down = key in self._health.active_down
            if ok:
                self._health.active_down.discard(key)
                if was_down:
                    self._log.info(
                        "Target {target} of {service} passes its health check again",
                        target=target.url, service=service,
                    )
            else:
                self._health.active_down.add(key)
                if not was_down:
                    self._log.warn(
                        "Target {target} of {service} fails its health check ({path})",
                        target=target.url, service=service, path=check.path,
                    )
            metrics.target_health.labels(service, target.id).set(1 if ok else 0)

        d.addCallback(done)
        d.addErrback(lambda f: done(False))
        # Never stop the loop on a failed probe.
        return None
