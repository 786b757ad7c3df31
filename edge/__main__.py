"""
``python -m edge COMMAND``: edge's tools in one place.

- ``check CONFIG``: validate a config (and a running swarm's labels) and
  print what edge would serve, like ``nginx -t`` (:mod:`edge.check`).
- ``passwd USER``: print a bcrypt entry for basic auth (:mod:`edge.passwd`).

The server itself runs as ``twistd -n edge --config CONFIG``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys


def _check(argv) -> int:
    from edge import config as _config
    from edge.check import run_check

    p = argparse.ArgumentParser(prog="python -m edge check", description="Validate an edge config and show what it serves.")
    p.add_argument("config", help="config file (TOML)")
    p.add_argument("--docker-url", help="Docker Engine API URL (default: the config's)")
    p.add_argument("--no-docker", action="store_true", help="do not read the Docker API")
    args = p.parse_args(argv)

    def load():
        config = _config.load(args.config)
        if args.docker_url:
            config = dataclasses.replace(config, docker=dataclasses.replace(config.docker, url=args.docker_url))
            _config.validate(config, config.source)
        return config

    if args.no_docker:
        return run_check(load, sys.stdout, docker=lambda config: (None, "--no-docker"))
    return run_check(load, sys.stdout)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"check": _check, "passwd": lambda rest: __import__("edge.passwd").passwd.main(rest)}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print(__doc__.strip())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
