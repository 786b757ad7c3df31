"""
``python -m edge.discovery``: print what discovery sees, as JSON.

Once (the default): wait for the first Docker sync, print the merged snapshot
(config-file routes included) and exit; exit status 1 when the Docker API
cannot be read.  ``--watch``: print one JSON document per line, a
``{"kind": "snapshot", ...}`` for every published change and a
``{"kind": "status", ...}`` whenever the Docker connection drops or returns,
until interrupted.  Logs go to standard error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from twisted.internet import defer, task
from twisted.logger import globalLogBeginner

from edge import config as _config
from edge.discovery.jsonview import snapshot_to_data as _snapshot_to_data
from edge.redact import redact_snapshot_data


def snapshot_to_data(snapshot) -> dict:
    """The snapshot as printed: password hashes and header secrets hidden (docs/security.md)."""
    return redact_snapshot_data(_snapshot_to_data(snapshot))
from edge.logs import make_observer


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m edge.discovery", description=__doc__.split("\n\n")[0].strip())
    p.add_argument("--config", help="edge config file (TOML); default: built-in defaults")
    p.add_argument("--docker-url", help="Docker Engine API URL (default: config, $DOCKER_HOST)")
    p.add_argument("--watch", action="store_true", help="follow changes, one JSON document per line")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the first sync (once mode)")
    p.add_argument("--log-level", default="warn", choices=("debug", "info", "warn", "error"))
    return p


def _emit(document: dict) -> None:
    sys.stdout.write(json.dumps(document, sort_keys=True) + "\n")
    sys.stdout.flush()


async def _main(reactor, args) -> int:
    from edge.discovery.publisher import SnapshotPublisher
    from edge.discovery.service import make_discovery_service

    try:
        config = _config.load(args.config)
    except _config.ConfigError as e:
        print(f"edge.discovery: configuration error: {e}", file=sys.stderr)
        return 2
    if args.docker_url:
        config = dataclasses.replace(config, docker=dataclasses.replace(config.docker, url=args.docker_url))

    publisher = SnapshotPublisher(reactor, debounce=config.docker.debounce)
    service = make_discovery_service(config, publisher, reactor)
    service.startService()
    try:
        if args.watch:
            await _watch(reactor, publisher)
            return 0
        return await _once(reactor, publisher, args.timeout)
    finally:
        await defer.maybeDeferred(service.stopService)


async def _once(reactor, publisher, timeout: float) -> int:
    deadline = reactor.seconds() + timeout
    while True:
        status = publisher.status("docker")
        if status.syncs:
            publisher.flush()
            _emit(snapshot_to_data(publisher.current))
            return 0
        if status.errors or reactor.seconds() > deadline:
            publisher.flush()
            error = status.last_error or f"no answer within {timeout}s"
            print(f"edge.discovery: Docker API unreachable: {error}", file=sys.stderr)
            _emit(snapshot_to_data(publisher.current))
            return 1
        await task.deferLater(reactor, 0.05, lambda: None)


async def _watch(reactor, publisher) -> None:
    def on_snapshot(snapshot):
        if publisher.generation:
            _emit(
                {
                    "kind": "snapshot",
                    "generation": publisher.generation,
                    "snapshot": snapshot_to_data(snapshot),
                }
            )

    publisher.subscribe(on_snapshot)
    connected = None
    done: defer.Deferred = defer.Deferred()
    reactor.addSystemEventTrigger("before", "shutdown", lambda: done.called or done.callback(None))

    def poll():
        nonlocal connected
        status = publisher.status("docker")
        if status.connected != connected and (status.syncs or status.errors):
            connected = status.connected
            _emit(
                {
                    "kind": "status",
                    "provider": "docker",
                    "connected": status.connected,
                    "error": status.last_error if not status.connected else "",
                    "generation": publisher.generation,
                }
            )

    loop = task.LoopingCall(poll)
    loop.clock = reactor
    loop.start(0.1)
    try:
        await done
    finally:
        loop.stop()


def main(argv=None) -> None:
    args = _parser().parse_args(argv)
    globalLogBeginner.beginLoggingTo(
        [make_observer("text", args.log_level, stream=sys.stderr)], redirectStandardIO=False
    )
    task.react(lambda reactor: defer.ensureDeferred(_main(reactor, args)).addCallback(_exit))


def _exit(code: int) -> None:
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
