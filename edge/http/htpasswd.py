"""
Check passwords against htpasswd entries in the formats Traefik accepts.

bcrypt (``$2y$``/``$2a$``/``$2b$``), Apache MD5 (``$apr1$``) and SHA1
(``{SHA}``).  bcrypt is slow on purpose (tens of milliseconds), so callers
cache good answers and run uncached bcrypt checks off the reactor thread
(see :mod:`edge.http.middlewares`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import bcrypt

__all__ = ["parse_users", "check_password", "is_slow", "apr1", "UnsupportedHash"]


class UnsupportedHash(ValueError):
    """An htpasswd entry in a format edge cannot check (e.g. DES crypt)."""


def parse_users(entries) -> dict[str, str]:
    """``["name:hash", ...]`` as ``{name: hash}``; raise on a malformed entry."""
    users = {}
    for entry in entries:
        name, sep, hashed = entry.strip().partition(":")
        if not sep or not name or not hashed:
            raise UnsupportedHash(f"expected 'name:hash', got {entry!r}")
        if not hashed.startswith(("$2y$", "$2a$", "$2b$", "$apr1$", "{SHA}")):
            raise UnsupportedHash(
                f"user {name!r}: hash format not supported (use bcrypt, $apr1$ or {{SHA}})"
            )
        users[name] = hashed
    return users


def is_slow(hashed: str) -> bool:
    return hashed.startswith("$2")


def check_password(password: bytes, hashed: str) -> bool:
    """True when ``password`` matches the htpasswd hash ``hashed``."""
    if hashed.startswith("$2"):
        candidate = hashed.encode("ascii")
        if candidate.startswith(b"$2y$"):
            # Apache's $2y$ is the same algorithm as $2b$.
            candidate = b"$2b$" + candidate[4:]
        try:
            return bcrypt.checkpw(password, candidate)
        except ValueError:
            return False
    if hashed.startswith("$apr1$"):
        salt = hashed[6:].split("$", 1)[0]
        return hmac.compare_digest(apr1(password, salt.encode("ascii")), hashed)
    if hashed.startswith("{SHA}"):
        digest = base64.b64encode(hashlib.sha1(password).digest()).decode("ascii")
        return hmac.compare_digest(digest, hashed[5:])
    return False


_ITOA64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _to64(value: int, count: int) -> str:
    out = []
    for _ in range(count):
        out.append(_ITOA64[value & 0x3F])
        value >>= 6
    return "".join(out)


def apr1(password: bytes, salt: bytes) -> str:
    """Apache's MD5-crypt variant (``$apr1$salt$hash``), per its published algorithm."""
    magic = b"$apr1$"
    salt = salt[:8]
    ctx = hashlib.md5(password + magic + salt)
    alternate = hashlib.md5(password + salt + password).digest()
    remaining = len(password)
    while remaining > 0:
        ctx.update(alternate[: min(16, remaining)])
        remaining -= 16
    bits = len(password)
    while bits:
        ctx.update(b"\0" if bits & 1 else password[:1])
        bits >>= 1
    final = ctx.digest()
    for i in range(1000):
        step = hashlib.md5()
        step.update(password if i & 1 else final)
        if i % 3:
            step.update(salt)
        if i % 7:
            step.update(password)
        step.update(final if i & 1 else password)
        final = step.digest()
    f = final
    encoded = (
        _to64((f[0] << 16) | (f[6] << 8) | f[12], 4)
        + _to64((f[1] << 16) | (f[7] << 8) | f[13], 4)
        + _to64((f[2] << 16) | (f[8] << 8) | f[14], 4)
        + _to64((f[3] << 16) | (f[9] << 8) | f[15], 4)
        + _to64((f[4] << 16) | (f[10] << 8) | f[5], 4)
        + _to64(f[11], 2)
    )
    return f"$apr1${salt.decode('ascii')}${encoded}"
