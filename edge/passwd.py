"""
``python -m edge.passwd USER``: print a bcrypt ``USER:HASH`` entry for
``admin.users``, a route's ``basic_auth`` or a basic-auth label.

``htpasswd -nB`` does the same but is not installed on Debian by default.
The password is asked twice on a terminal, or read from the first line of
standard input when that is not a terminal (``--stdin`` forces it), so it
never appears in the process list or the shell history.
"""

from __future__ import annotations

import argparse
import getpass
import sys

__all__ = ["entry", "main"]


def entry(user: str, password: str, cost: int = 10) -> str:
    """``user:bcrypt-hash`` of ``password``."""
    import bcrypt

    hashed = bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(rounds=cost)).decode("ascii")
    return f"{user}:{hashed}"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m edge.passwd", description=__doc__.strip().split("\n\n")[0].replace("``", "")
    )
    p.add_argument("user", help="user name (no ':')")
    p.add_argument("--cost", type=int, default=10, help="bcrypt cost, 4-16 (default 10; each +1 doubles the work)")
    p.add_argument("--stdin", action="store_true", help="read the password from standard input")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if not args.user or ":" in args.user:
        print("edge.passwd: the user name must be non-empty and contain no ':'", file=sys.stderr)
        return 2
    if not 4 <= args.cost <= 16:
        print("edge.passwd: --cost must be between 4 and 16", file=sys.stderr)
        return 2
    if args.stdin or not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        try:
            password = getpass.getpass("Password: ")
            if getpass.getpass("Again: ") != password:
                print("edge.passwd: the passwords differ", file=sys.stderr)
                return 1
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 1
    if not password:
        print("edge.passwd: empty password", file=sys.stderr)
        return 1
    print(entry(args.user, password, args.cost))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
