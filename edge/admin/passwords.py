"""
Basic auth for the admin site, on the HTTP layer's htpasswd checks.

bcrypt is slow on purpose and the dashboard polls the API every few seconds,
so a good (user, password) pair is remembered for the users list it was
checked against; a changed list (SIGHUP) starts afresh.  Only a digest of
the password is kept.
"""

from __future__ import annotations

import hashlib

from twisted.logger import Logger

__all__ = ["PasswordChecker"]


class PasswordChecker:
    _log = Logger()

    def __init__(self):
        self._users: tuple[str, ...] | None = None
        self._parsed: dict[str, str] = {}
        self._good: set[tuple[str, bytes]] = set()

    def __call__(self, users: tuple[str, ...], username: str, password: str) -> bool:
        from edge.http import htpasswd  # only needed once users are configured

        if users != self._users:
            self._users = users
            self._good.clear()
            try:
                self._parsed = htpasswd.parse_users(users)
            except htpasswd.UnsupportedHash as e:
                self._log.error("[admin] users: {error}; nobody can log in", error=str(e))
                self._parsed = {}
        hashed = self._parsed.get(username)
        if hashed is None:
            return False
        key = (username, hashlib.sha256(password.encode("utf-8")).digest())
        if key in self._good:
            return True
        if htpasswd.check_password(password.encode("utf-8"), hashed):
            self._good.add(key)
            return True
        return False
