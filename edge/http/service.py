"""
The HTTP front end as a Twisted service: entry points, snapshot swaps, housekeeping.

One :class:`HTTPService` owns the listening ports of every entry point, the
backend pool and health state they share, and a one-second housekeeping
tick that enforces timeouts, ages out idle backend connections and flushes
metrics and the access log (so none of that costs a timer per request).
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections import defaultdict

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from edge import metrics
from edge.config import Config, EntryPoint, listen_address
from edge.http.accesslog import open_access_log
from edge.http.balancer import HealthChecks, HealthRegistry, build_balancers, target_key
from edge.http.pool import BackendPool
from edge.http import speedups
from edge.http.backend import BackendProtocol
from edge.http.http1 import ServerProtocol
from edge.http.proxy import Proxy, ProxyFactory
from edge.http.middleware_state import MiddlewareState
from edge.http.routing import RoutingTable
from edge.shutdown import drain_within, stop_listening
from edge.snapshot import Snapshot

__all__ = ["HTTPService", "make_http_service", "wrap_tls", "endpoint_port"]


class Stats:
    """Per-request counts gathered in dicts, pushed to Prometheus once a tick."""

    _BOUNDS = metrics.HTTP_DURATION_BUCKETS

    def __init__(self):
        self._requests: dict[tuple, int] = defaultdict(int)
        # Per router: [count per bucket..., sum of durations], as Prometheus keeps them.
        self._durations: dict[str, list] = {}
        self._connect_failures: dict[str, int] = defaultdict(int)
        self._connections: dict[str, int] = defaultdict(int)
        self._refused: dict[str, int] = defaultdict(int)

    def request(self, router: str, entrypoint: str, status: int, duration: float) -> None:
        self._requests[(router, entrypoint, status // 100)] += 1
        counts = self._durations.get(router)
        if counts is None:
            counts = self._durations[router] = [0] * (len(self._BOUNDS) + 2)
        counts[bisect_left(self._BOUNDS, duration)] += 1
        counts[-1] += duration

    def connect_failed(self, service: str) -> None:
        self._connect_failures[service] += 1

    def connections(self, entrypoint: str, delta: int) -> None:
        self._connections[entrypoint] += delta

    def refused(self, entrypoint: str) -> None:
        self._refused[entrypoint] += 1

    def flush(self) -> None:
        requests, self._requests = self._requests, defaultdict(int)
        for (router, entrypoint, code_class), count in requests.items():
            metrics.http_requests.labels(router, entrypoint, f"{code_class}xx").inc(count)
        durations, self._durations = self._durations, {}
        for router, counts in durations.items():
            child = metrics.http_request_duration.labels(router)
            buckets = getattr(child, "_buckets", None)
            if buckets is None or len(buckets) != len(counts) - 1:
                # Not the prometheus_client layout we know: one observation per bucket bound.
                for bound, n in zip(self._BOUNDS + (float("inf"),), counts):
                    for _ in range(n):
                        child.observe(bound)
                continue
            for bucket, n in zip(buckets, counts):
                if n:
                    bucket.inc(n)
            child._sum.inc(counts[-1])
        failures, self._connect_failures = self._connect_failures, defaultdict(int)
        for service, count in failures.items():
            metrics.http_upstream_connect_failures.labels(service).inc(count)
        for entrypoint, value in self._connections.items():
            metrics.http_open_connections.labels(entrypoint).set(value)
        refused, self._refused = self._refused, defaultdict(int)
        for entrypoint, count in refused.items():
            metrics.http_refused_connections.labels(entrypoint).inc(count)


def endpoint_port(address: str) -> int | None:
    """The port of a ``tcp:PORT[:...]``/``ssl:PORT`` endpoint string, if it has one."""
    match = re.match(r"^(?:tcp6?|ssl|tls)?:?(?:port=)?(\d+)", address)
    if match:
        return int(match.group(1))
    match = re.search(r"(?:^|:)port=(\d+)", address)
    return int(match.group(1)) if match else None


def wrap_tls(factory, tls_context):
    """Terminate TLS in front of ``factory`` (an ``IOpenSSLServerConnectionCreator``)."""
    from twisted.protocols.tls import TLSMemoryBIOFactory

    # edge.tls.service.TLSService adds a handshake deadline and failure logs.
    wrap = getattr(tls_context, "wrap", None)
    if wrap is not None:
        return wrap(factory)
    return TLSMemoryBIOFactory(tls_context, False, factory)


class _ProxyProtocolChooser:
    """Speak the PROXY protocol with trusted sources only; others talk plain HTTP."""

    def __init__(self, factory, trusted: Proxy):
        from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory

        self._factory = factory
        self._haproxy = HAProxyWrappingFactory(factory)
        self._trusted = trusted

    def doStart(self):
        self._factory.doStart()

    def doStop(self):
        self._factory.doStop()

    def logPrefix(self):
        return "edge-http (PROXY)"

    def buildProtocol(self, addr):
        if self._trusted.is_trusted(getattr(addr, "host", "")):
            return self._haproxy.buildProtocol(addr)
        return self._factory.buildProtocol(addr)


class HTTPService(Service):
    """Every HTTP entry point of the config, fed by the snapshot publisher."""

    _log = Logger()
    name = "http"

    def __init__(self, config: Config, publisher, reactor, *, tls_context=None,
                 challenges=None, tick: float = 1.0, tcp=None):
        self.config = config
        self._publisher = publisher
        self._reactor = reactor
        self._tls_context = tls_context
        self._tcp = tcp  # edge.tcp.service.TCPService: TCP routers on the TLS entry points
        self._tick_interval = tick
        http = config.http
        speedups.configure(http.speedups)
        self.health = HealthRegistry(reactor)
        self.pool = BackendPool(
            reactor, self._backend_protocol, size=http.backend_pool_size,
            connect_timeout=http.backend_connect_timeout,
        )
        self.stats = Stats()
        self.access_log = None
        self.proxy = Proxy(reactor, http, self.pool, self.health,
                           http.trusted_proxies, None, self.stats)
        self.checks = HealthChecks(reactor, self.health, self._probe)
        # Rate/in-flight limits and breakers keep counting across snapshots.
        self._middleware_state = MiddlewareState()
        self.factories: dict[str, ProxyFactory] = {}
        self.ports: dict[str, object] = {}
        # Entry point name -> why it is not listening (read by edge.listeners).
        self.listen_errors: dict[str, str] = {}
        self._bound = False
        https = [ep for ep in config.entrypoints if ep.tls]
        port = endpoint_port(https[0].address) if https else None
        self._https_port = "" if port in (None, 443) else str(port)
        for ep in self._entrypoints():
            factory = ProxyFactory(self.proxy, ep.name, "https" if ep.tls else "http",
                                   endpoint_port(ep.address) or "")
            if not ep.tls:
                factory.challenges = challenges
            factory.redirect = self._redirect_for(ep)
            self.factories[ep.name] = factory
        self._unsubscribe = None
        self._loop = None
        self.listening: defer.Deferred = defer.succeed(None)

    def _entrypoints(self):
        """The HTTP entry points (TCP and UDP ones belong to edge.tcp and edge.udp)."""
        return [ep for ep in self.config.entrypoints if ep.protocol == "http"]

    def _backend_protocol(self, key):
        return BackendProtocol(key, self.pool, self.config.http)

    def _redirect_for(self, ep: EntryPoint):
        target = None
        if ep.redirect_to:
            target = self.config.entrypoint(ep.redirect_to)
        elif self.config.tls.redirect_http and not ep.tls:
            target = next((e for e in self.config.entrypoints if e.tls), None)
        if target is None:
            return None
        port = endpoint_port(target.address)
        scheme = "https" if target.tls else "http"
        default = 443 if target.tls else 80
        return (scheme, "" if port in (None, default) else str(port))

    # -- snapshots -------------------------------------------------------

    def apply(self, snapshot: Snapshot) -> None:
        """Build new tables for every entry point and swap them in."""
        balancers = build_balancers(snapshot, self.health, self._reactor)
        # For middlewares that send requests to another service (errors).
        self.proxy.balancers = balancers
        self.proxy.snapshot = snapshot
        self._middleware_state.begin()
        for name, factory in self.factories.items():
            factory.table = RoutingTable.build(
                snapshot, name, balancers=balancers, reactor=self._reactor,
                https_port=self._https_port, state=self._middleware_state,
            )
        self._middleware_state.end()
        keys = {target_key(t) for s in snapshot.services for t in s.targets}
        self.pool.retain(keys)
        self.health.forget_except(keys)
        self.checks.update(snapshot)
        self._log.debug(
            "HTTP routing tables rebuilt: {routes} routes on {entrypoints} entry points",
            routes=sum(len(f.table.routes) for f in self.factories.values()),
            entrypoints=len(self.factories),
        )

    # -- lifecycle -------------------------------------------------------

    def startService(self):
        super().startService()
        import gc

        # Everything imported so far lives as long as the process: keep the
        # cyclic collector from re-scanning it on the request path.
        gc.freeze()
        speedups.lean_dispatch(self._reactor, (ServerProtocol, BackendProtocol))
        http = self.config.http
        try:
            self.access_log = open_access_log(http.access_log, http.access_log_format)
        except OSError as e:
            self._log.error("Access log {path} cannot be opened: {error}", path=http.access_log, error=e)
        self.proxy.access_log = self.access_log
        self._unsubscribe = self._publisher.subscribe(self.apply)
        if not self._bound:
            self._listen()
            for error in self.listen_errors.values():
                self._log.error("{error}", error=error)
        self._loop = LoopingCall(self._housekeeping)
        self._loop.clock = self._reactor
        self._loop.start(self._tick_interval, now=False)

    def privilegedStartService(self):
        """Bind every entry point before twistd drops privileges; a failure stops start-up."""
        super().privilegedStartService()
        self._listen()
        if self.listen_errors:
            from edge.listeners import ListenError

            raise ListenError("; ".join(self.listen_errors.values()))

    def _listen(self):
        self._bound = True
        waits = []
        for ep in self._entrypoints():
            factory = self.factories[ep.name]
            listening = factory
            if ep.tls:
                if self._tls_context is None:
                    self.listen_errors[ep.name] = (
                        f"HTTP entry point {ep.name} ({ep.address}) wants TLS but no TLS"
                        " context is available"
                    )
                    continue
                listening = wrap_tls(listening, self._tls_context)
                if self._tcp is not None:
                    listening = self._tcp.wrap(ep.name, listening)
            if ep.proxy_protocol:
                factory.proxy_protocol = True
                listening = _ProxyProtocolChooser(
                    listening, Proxy(self._reactor, None, None, None, ep.proxy_protocol)
                )
            endpoint = serverFromString(self._reactor, listen_address(ep.address))
            d = endpoint.listen(listening)
            d.addCallbacks(self._listening, self._listen_failed,
                           callbackArgs=(ep,), errbackArgs=(ep,))
            waits.append(d)
        self.listening = defer.gatherResults(waits)

    def _listening(self, port, ep: EntryPoint):
        self.ports[ep.name] = port
        self._log.info("HTTP entry point {name} listening on {address}", name=ep.name, address=ep.address)
        return port

    def _listen_failed(self, failure, ep: EntryPoint):
        from edge.listeners import describe_error

        self.listen_errors[ep.name] = (
            f"HTTP entry point {ep.name} cannot listen on {ep.address}: {describe_error(failure.value)}"
        )
        return None

    def _housekeeping(self):
        now = self._reactor.seconds()
        for factory in self.factories.values():
            for conn in list(factory.connections):
                conn.check_timeouts(now)
        self.pool.sweep()
        self.stats.flush()
        if self.access_log is not None:
            self.access_log.flush()

    @defer.inlineCallbacks
    def stopService(self):
        super().stopService()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        yield stop_listening(self.ports)
        self._bound = False
        drains = []
        for factory in self.factories.values():
            factory.stopping = True
            for conn in list(factory.connections):
                conn.shutdown()
            drains.append(factory.drain())
        grace = self.config.http.shutdown_grace
        yield drain_within(self._reactor, grace, drains)
        left = sum(len(f.connections) for f in self.factories.values())
        if left:
            self._log.warn("Closing {count} HTTP connections still busy after {grace}s",
                           count=left, grace=grace)
        for factory in self.factories.values():
            for conn in list(factory.connections):
                conn.close(abort=True)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.checks.stop()
        self.pool.close()
        self.stats.flush()
        if self.access_log is not None:
            self.access_log.close()

    # -- active health checks --------------------------------------------

    def _probe(self, target, check):
        from twisted.web.client import Agent, HTTPConnectionPool, readBody
        from twisted.web.http_headers import Headers

        scheme = check.scheme or target.scheme
        port = check.port or target.port
        host = f"[{target.host}]" if ":" in target.host else target.host
        url = f"{scheme}://{host}:{port}{check.path or '/'}".encode("ascii")
        headers = Headers({b"User-Agent": [b"edge-healthcheck"]})
        if check.hostname:
            headers.setRawHeaders(b"Host", [check.hostname.encode("ascii")])
        for name, value in check.headers:
            headers.addRawHeader(name.encode("latin-1"), value.encode("latin-1"))
        pool = HTTPConnectionPool(self._reactor, persistent=False)
        pool._factory = type("_QuietFactory", (pool._factory,), {"noisy": False})
        agent = Agent.usingEndpointFactory(
            self._reactor, _ProbeEndpoints(self._reactor, check.timeout), pool=pool
        )
        d = agent.request(b"GET", url, headers)

        def answered(response):
            body = readBody(response)
            body.addErrback(lambda _: None)
            return 200 <= response.code < 400

        d.addCallback(answered)
        d.addTimeout(check.timeout, self._reactor)
        return d


class _ProbeEndpoints:
    """Endpoints for health checks: https targets without certificate checks, like the proxy."""

    def __init__(self, reactor, timeout: float):
        self._reactor = reactor
        self._timeout = timeout

    def endpointForURI(self, uri):
        from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
        from twisted.internet.ssl import CertificateOptions

        endpoint = HostnameEndpoint(self._reactor, uri.host, uri.port, timeout=self._timeout)
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(CertificateOptions(verify=False), endpoint)
        return endpoint


def make_http_service(config: Config, publisher, reactor, *, tls_context=None,
                      challenges=None, tcp=None) -> HTTPService:
    """The HTTP front end; TLS entry points need ``tls_context`` from the TLS layer."""
    return HTTPService(config, publisher, reactor, tls_context=tls_context,
                       challenges=challenges, tcp=tcp)
