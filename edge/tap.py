"""
``twistd edge``: command-line options and the service tree.

The plugin in ``twisted/plugins/edge_plugin.py`` points here.  Options only
collect values; :func:`makeService` reads the config file, applies the flags
over it and builds one :class:`EdgeService` holding discovery and the front
ends, all sharing one :class:`~edge.discovery.publisher.SnapshotPublisher`.
"""

from __future__ import annotations

import dataclasses

from twisted.application.service import MultiService
from twisted.logger import ILogObserver, Logger
from twisted.python import usage

from edge import config as _config
from edge.logs import make_observer

__all__ = ["Options", "makeService", "apply_flags", "EdgeService"]


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "edge: DNS server and reverse proxy for Docker Swarm. Reads the"
        " config file (TOML) if given, then applies the flags below over it."
        " Endpoint options take Twisted endpoint strings, e.g. tcp:80 or"
        " tcp:8080:interface=127.0.0.1."
    )
    optFlags = [
        ["check", None,
         "Validate the config (and the labels of the swarm, when reachable), print the"
         " routers and DNS names edge would serve, and exit (0 ok, 1 config error,"
         " 3 routers that would not serve)."],
    ]
    optParameters = [
        ["config", "c", None, "Configuration file (TOML). Default: built-in defaults."],
        ["docker-url", None, None,
         "Docker Engine API: unix:///path or tcp://host:port (a socket proxy)."
         " Default: $DOCKER_HOST, else unix:///var/run/docker.sock."
         " TLS follows DOCKER_TLS_VERIFY/DOCKER_CERT_PATH."],
        ["http", None, None, "Endpoint of the 'http' entry point (default tcp:8080)."],
        ["https", None, None, "Endpoint of the 'https' entry point (default tcp:8443)."],
        ["admin", None, None,
         "Endpoint of the admin API/dashboard/metrics (default"
         " tcp:8081:interface=127.0.0.1); 'none' disables it."],
        ["dns-port", None, None, "DNS port, UDP and TCP (default 5353).", int],
        ["zone", None, None, "DNS zone for cluster names (default swarm.home)."],
        ["domain", None, None, "Default domain: exposed services without a rule get Host:<service>.<domain>."],
        ["exposed-by-default", None, None, "true|false: route services without an enable label (default true)."],
        ["backend-addressing", None, None, "auto|task|published: how backends are reached (default auto)."],
        ["dns-hosts", None, None, "A hosts file whose names DNS answers."],
        ["log-format", None, None, "text|json (default text)."],
        ["log-level", None, None, "debug|info|warn|error (default info)."],
    ]

    def __init__(self):
        super().__init__()
        self["dns-interface"] = []
        self["dns-upstream"] = []

    def opt_dns_interface(self, address):
        """Address DNS listens on (repeatable; default 127.0.0.1)."""
        self["dns-interface"].append(address)

    def opt_dns_upstream(self, address):
        """Upstream DNS server ADDR[:PORT] (repeatable; default: /etc/resolv.conf)."""
        self["dns-upstream"].append(address)

    def opt_version(self):
        """Print edge's version and exit."""
        from importlib.metadata import version

        print(f"edge {version('edge')}")
        raise SystemExit(0)


def apply_flags(config: _config.Config, options) -> _config.Config:
    """The config with command-line flags laid over it, validated again."""
    r = dataclasses.replace
    docker = config.docker
    if options.get("docker-url"):
        docker = r(docker, url=options["docker-url"])
    if options.get("domain") is not None:
        docker = r(docker, domain=options["domain"])
    if options.get("exposed-by-default") is not None:
        try:
            docker = r(docker, exposed_by_default=_bool(options["exposed-by-default"]))
        except ValueError as e:
            raise _config.ConfigError(f"--exposed-by-default: {e}") from None
    if options.get("backend-addressing") is not None:
        docker = r(docker, backend_addressing=options["backend-addressing"])

    entrypoints = list(config.entrypoints)
    for name in ("http", "https"):
        if options.get(name):
            found = [i for i, ep in enumerate(entrypoints) if ep.name == name]
            if found:
                entrypoints[found[0]] = r(entrypoints[found[0]], address=options[name])
            else:
                entrypoints.append(_config.EntryPoint(name, options[name], tls=name == "https"))

    admin = config.admin
    if options.get("admin"):
        admin = r(admin, address="" if options["admin"] == "none" else options["admin"])

    dns = config.dns
    if options.get("dns-port") is not None:
        dns = r(dns, port=options["dns-port"])
    if options.get("dns-interface"):
        dns = r(dns, interfaces=tuple(options["dns-interface"]))
    if options.get("dns-upstream"):
        dns = r(dns, upstream=tuple(options["dns-upstream"]))
    if options.get("zone"):
        dns = r(dns, zone=options["zone"])
    if options.get("dns-hosts"):
        dns = r(dns, hosts_file=options["dns-hosts"])

    log = config.log
    if options.get("log-format"):
        log = r(log, format=options["log-format"])
    if options.get("log-level"):
        log = r(log, level=options["log-level"])

    merged = r(
        config,
        docker=docker,
        entrypoints=tuple(entrypoints),
        admin=admin,
        dns=dns,
        log=log,
    )
    # Validate the result the same way as a file.
    _config.validate(merged, config.source or "command line")
    return merged


class EdgeService(MultiService):
    """The root service; carries the log observer twistd should use."""

    def __init__(self, config: _config.Config, observer=None):
        super().__init__()
        self.config = config
        self.observer = observer

    def privilegedStartService(self):
        # Every front end binds here; one that cannot stops start-up in one line.
        from edge.listeners import ListenError

        try:
            super().privilegedStartService()
        except ListenError as e:
            raise SystemExit(f"edge: {e}") from None

    def startService(self):
        super().startService()
        # The config file's routes were reported as discovery started: publish
        # them now, before the reactor runs and the listeners accept anything,
        # so no request for a known route meets an empty routing table.
        publisher = getattr(self, "publisher", None)
        if publisher is not None:
            publisher.flush()

    def setServiceParent(self, parent):
        # twistd's AppLogger.start() asks the application for an ILogObserver.
        if self.observer is not None and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self.observer)
        return super().setServiceParent(parent)


def _json_access_log(config: _config.Config) -> _config.Config:
    """With JSON logs, access lines on standard output are JSON too: one stream, one format for jq."""
    http = config.http
    if config.log.format != "json" or http.access_log != "-" or http.access_log_format == "json":
        return config
    Logger(namespace="edge.tap").info(
        "The access log shares standard output with JSON logs: writing it as JSON lines"
        " (access_log_format {access_format!r} applies to an access log file)",
        access_format=http.access_log_format,
    )
    return dataclasses.replace(config, http=dataclasses.replace(http, access_log_format="json"))


def build_service(config: _config.Config, reactor) -> EdgeService:
    """Discovery and every front end, under one root service."""
    from edge.discovery.publisher import SnapshotPublisher
    from edge.discovery.service import make_discovery_service
    from edge.admin import make_admin_service
    from edge.admin.service import FrontEnds
    from edge.dns import make_dns_service

    from edge.listeners import ListenerBoard

    config = _json_access_log(config)
    root = EdgeService(config, make_observer(config.log.format, config.log.level))
    publisher = SnapshotPublisher(reactor, debounce=config.docker.debounce)
    root.publisher = publisher
    root.listeners = listeners = ListenerBoard()
    discovery = make_discovery_service(config, publisher, reactor)
    discovery.setServiceParent(root)
    # What a SIGHUP reloads, in this order (makeService hands them to ReloadService).
    root.reloadable = [discovery.static]
    # ACME certificates ([acme.<name>]) for the TLS entry points; the admin API lists them.
    root.acme = None
    if config.acme and any(ep.tls for ep in config.entrypoints):
        from edge.acme.service import make_acme_service

        root.acme = make_acme_service(config, publisher, reactor)
        root.acme.setServiceParent(root)
    # Front ends: each adds one line here, and hands the admin site what it reads.
    front_ends = FrontEnds()
    admin = make_admin_service(
        config, publisher, reactor, listeners,
        certificates=root.acme.certificates if root.acme is not None else None,
        front_ends=front_ends,
    )
    admin.setServiceParent(root)
    if config.admin.address:
        root.reloadable.append(admin)
    if config.dns.enabled:
        dns = make_dns_service(config, publisher, reactor)
        dns.setServiceParent(root)
        front_ends.dns = dns
        root.reloadable.append(dns)
        for interface in config.dns.interfaces:
            for protocol in ("udp", "tcp"):
                listeners.expect(
                    "dns", f"dns {protocol} {interface}", f"{interface}:{config.dns.port}",
                    lambda key=(protocol, interface): dns.listening_ports.get(key),
                )
    # TLS: certificates for the TLS entry points (root.tls feeds the HTTP service).
    root.tls = None
    # TCP routers on "tcp" entry points may terminate TLS too (edge.tcp).
    if any(ep.tls or ep.protocol == "tcp" for ep in config.entrypoints):
        from edge.tls.service import make_tls_service

        root.tls = make_tls_service(config, publisher, reactor, acme=root.acme)
        root.tls.setServiceParent(root)
        front_ends.tls = root.tls
    # TCP routers: "tcp" entry points, and in front of the HTTP TLS ones (edge.tcp).
    from edge.tcp.service import make_tcp_service, tcp_entrypoints

    tcp = None
    if tcp_entrypoints(config):
        tcp = make_tcp_service(config, publisher, reactor, tls_context=root.tls)
        tcp.setServiceParent(root)
        for ep in config.entrypoints:
            if ep.protocol == "tcp":
                listeners.expect("tcp", ep.name, ep.address, lambda name=ep.name: tcp.ports.get(name),
                                 lambda name=ep.name: tcp.listen_errors.get(name, ""))
    root.tcp = tcp
    root.udp = None
    if any(ep.protocol == "udp" for ep in config.entrypoints):  # UDP routers (edge.udp)
        from edge.udp.service import make_udp_service

        root.udp = udp = make_udp_service(config, publisher, reactor)
        udp.setServiceParent(root)
        for ep in config.entrypoints:
            if ep.protocol == "udp":
                listeners.expect("udp", ep.name, ep.address, lambda name=ep.name: udp.ports.get(name))
    from edge.http import make_http_service

    http = make_http_service(
        config, publisher, reactor, tls_context=root.tls,
        challenges=root.acme.board if root.acme is not None else None,  # ACME HTTP-01
        tcp=tcp,
    )
    http.setServiceParent(root)
    front_ends.http = http
    for ep in config.entrypoints:
        if ep.protocol != "http":
            continue
        listeners.expect(
            "https" if ep.tls else "http", ep.name, ep.address,
            lambda name=ep.name: http.ports.get(name),
            lambda name=ep.name: http.listen_errors.get(name, ""),
        )
    from edge.lifecycle import DockerWarmUp, StartupSummary

    DockerWarmUp(publisher, reactor, config.docker.timeout, http.proxy, config.docker.debounce).setServiceParent(root)
    StartupSummary(config, listeners, publisher, reactor).setServiceParent(root)
    return root


def _os_error(error: OSError, config: _config.Config) -> str:
    """One line for a file edge could not create or write, naming the setting behind it."""
    import os

    path = error.filename or ""
    message = f"{path}: {error.strerror or error}" if path else str(error)
    state = os.path.abspath(config.tls.state_dir) if config.tls.state_dir else ""
    if path and state and (os.path.abspath(path) + os.sep).startswith(state + os.sep) or (
        path and state and state.startswith(os.path.abspath(path) + os.sep)
    ):
        message += f" (tls.state_dir is {config.tls.state_dir!r}: edge keeps its CA and certificates there)"
    return message


def makeService(options) -> EdgeService:
    from twisted.internet import reactor

    if options.get("check"):
        import sys

        from edge.check import run_check

        raise SystemExit(run_check(lambda: apply_flags(_config.load(options.get("config")), options), sys.stdout))
    try:
        config = apply_flags(_config.load(options.get("config")), options)
    except _config.ConfigError as e:
        raise SystemExit(f"edge: configuration error: {e}")
    try:
        root = build_service(config, reactor)
    except _config.ConfigError as e:  # e.g. the TLS CA files named but missing
        raise SystemExit(f"edge: configuration error: {e}")
    except OSError as e:  # a directory edge must write, e.g. tls.state_dir
        raise SystemExit(f"edge: cannot start: {_os_error(e, config)}")
    from edge.lifecycle import ReloadService  # SIGHUP: re-read the file, flags laid over it again

    ReloadService(
        lambda: apply_flags(_config.load(options.get("config")), options),  # runs in the pool
        reactor, reactor.getThreadPool(), root,
        parts=root.reloadable,
        staged=[root.tls] if root.tls is not None else [],  # reads its certificate directory in the pool
    ).setServiceParent(root)
    return root
