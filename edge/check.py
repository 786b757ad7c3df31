"""
``python -m edge check CONFIG`` and ``twistd edge --check``: like ``nginx -t``.

Validates the config file (every key, the static routes), reads the labels
of the Docker engine or swarm when it answers, and prints the routers and
DNS names edge would serve, then exits: 0 when all is well, 1 for a
configuration error, 3 when the config is fine but some routers would not
serve (unknown entry point, a rule or middleware that does not compile, a
label error).  Docker unreachable is reported and does not fail the check:
the config is still valid, and edge serves its file routes meanwhile.

This runs before any reactor: one blocking read of the Docker API, with the
configured ``docker.timeout``.
"""

from __future__ import annotations

from typing import Callable, TextIO

from edge import config as _config
from edge.redact import redact_text
from edge.snapshot import Snapshot

__all__ = ["run_check", "docker_snapshot"]

OK, CONFIG_ERROR, ROUTER_ERRORS = 0, 1, 3


def docker_snapshot(config: _config.Config) -> tuple[Snapshot | None, str]:
    """What discovery would build from the engine now, or ``(None, why not)``."""
    try:
        from edge.discovery.build import build_snapshot
        from edge.discovery.docker_client import api_client, read_state

        client = api_client(config.docker.url, config.docker.timeout)
        try:
            state, me = read_state(client, config.docker)
        finally:
            close = getattr(client, "close", None)
            if close is not None:
                close()
    except Exception as e:  # the Docker SDK raises many kinds; all mean "not readable"
        return None, str(e) or type(e).__name__
    from edge.discovery.references import file_middlewares

    # Labels' name@file references resolve against the file being checked.
    return build_snapshot(state, config.docker, me, file_middlewares=file_middlewares(config)[0]), ""


def _dns_rows(snapshot: Snapshot, config: _config.Config):
    from edge.admin.dnsview import answers, candidate_names
    from edge.dns.hosts import parse_hosts
    from edge.dns.table import build_table

    hosts = []
    if config.dns.hosts_file:
        try:
            with open(config.dns.hosts_file, encoding="utf-8", errors="replace") as f:
                hosts, _ = parse_hosts(f.read(), config.dns.hosts_file)
        except OSError:
            hosts = []
    table, problems = build_table(snapshot, config.dns, hosts, 1)
    return answers(table, candidate_names(snapshot, config, hosts)), problems


def run_check(
    load: Callable[[], _config.Config],
    out: TextIO,
    docker: Callable[[_config.Config], tuple[Snapshot | None, str]] = docker_snapshot,
) -> int:
    """Print the report to ``out``; the exit status."""
    from edge.admin.routercheck import router_errors
    from edge.discovery.static import static_snapshot

    def say(line: str = "") -> None:
        out.write(redact_text(line) + "\n")

    try:
        config = load()
    except _config.ConfigError as e:
        say(f"edge: configuration error: {e}")
        return CONFIG_ERROR
    say(f"configuration {config.source or '(built-in defaults)'}: ok")
    for ep in config.entrypoints:
        kind = ("TLS" if ep.tls else "plain HTTP") if ep.protocol == "http" else f"{ep.protocol.upper()} routers"
        say(f"  entry point {ep.name}: {ep.address} ({kind})")
    say(f"  admin: {config.admin.address or 'off'}")
    if config.dns.enabled:
        say(f"  DNS: port {config.dns.port} on {', '.join(config.dns.interfaces)}, zone {config.dns.zone}")
    else:
        say("  DNS: off")

    snapshot = static_snapshot(config)
    found, error = docker(config)
    if found is None:
        say(f"docker {config.docker.url}: unreachable ({error}); labels not checked")
    else:
        say(f"docker {config.docker.url}: read {len(found.routers)} routers from labels")
        snapshot = snapshot.merged(found)

    errors = router_errors(snapshot, tuple(ep.name for ep in config.entrypoints))
    say()
    say(f"routers ({len(snapshot.routers)}):")
    for router in snapshot.routers:
        status = "error" if router.name in errors else "ok"
        service = snapshot.service(router.service)
        targets = ", ".join(t.url for t in service.targets) if service and service.targets else "no targets"
        eps = ", ".join(router.entry_points) or "all entry points"
        say(f"  {status:5}  {router.name}  {router.rule_text}  [{eps}] -> {targets}")
        if router.name in errors:
            say(f"         {errors[router.name]}")

    rows, dns_problems = _dns_rows(snapshot, config) if config.dns.enabled else ((), [])
    say()
    say(f"DNS names ({len(rows)}):")
    for name, rtype, values, source in rows:
        say(f"  {name} {rtype} {', '.join(values) or '(no records)'}  ({source})")

    problems = [(p.level, p.source, p.message) for p in snapshot.problems]
    problems += [("warning", "dns", p) for p in dns_problems]
    if problems:
        say()
        say(f"problems ({len(problems)}):")
        for level, source, message in problems:
            say(f"  {level}: {source}: {message}")
    bad = bool(errors) or any(level == "error" for level, _, _ in problems)
    say()
    say("check failed: some routers would not serve" if bad else "check passed")
    return ROUTER_ERRORS if bad else OK
