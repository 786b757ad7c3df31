"""
The ACME account and certificates under ``tls.state_dir``.

Layout, per resolver: ``acme/<resolver>/account.json`` (the account key as a
JWK, the CA's directory URL and the account URL) and
``acme/<resolver>/certs/<main name>-<hash of the names>.pem`` (chain and key
in one PEM file, the format :mod:`edge.tls.store` reads).  Writes go to a
temporary file renamed over the old one, mode 0600, so a crash never leaves
half a key.  Blocking file I/O: called from the worker thread, or once at
start.
"""

from __future__ import annotations

import hashlib
import json
import os
import re

from cryptography.hazmat.primitives import serialization

from edge.tls.store import CertifiedKey, StoreError, load_bundle

__all__ = ["ResolverFiles", "certificate_pem", "write_private"]

_SAFE = re.compile(r"[^a-z0-9.-]")


def write_private(path: str, data: bytes) -> None:
    """``data`` into ``path`` atomically, readable by edge alone."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(temporary, path)


def certificate_pem(certified: CertifiedKey) -> bytes:
    """Chain then key, one PEM file."""
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certified.chain)
    key = certified.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return chain + key


class ResolverFiles:
    """One resolver's directory."""

    def __init__(self, state_dir: str, resolver: str):
        self.directory = os.path.join(state_dir, "acme", _SAFE.sub("_", resolver.lower()))

    # -- account ----------------------------------------------------------

    @property
    def account_path(self) -> str:
        return os.path.join(self.directory, "account.json")

    def read_account(self) -> dict | None:
        """The saved account, or ``None`` when there is none or it is unreadable."""
        try:
            with open(self.account_path, "rb") as f:
                data = json.loads(f.read(1 << 20))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and "key" in data else None

    def write_account(self, data: dict) -> None:
        write_private(self.account_path, json.dumps(data, indent=1, sort_keys=True).encode())

    # -- certificates -----------------------------------------------------

    def certificate_path(self, names: tuple[str, ...]) -> str:
        digest = hashlib.sha256(",".join(sorted(names)).encode()).hexdigest()[:10]
        main = _SAFE.sub("_", names[0].replace("*", "_wildcard_"))
        return os.path.join(self.directory, "certs", f"{main}-{digest}.pem")

    def read_certificate(self, names: tuple[str, ...], now=None) -> CertifiedKey | None:
        """The saved certificate for exactly ``names``, if it exists and still works."""
        path = self.certificate_path(names)
        if not os.path.exists(path):
            return None
        certified = load_bundle(path, now=now)  # raises StoreError
        if not set(names) <= certified.names:
            raise StoreError(f"names {', '.join(sorted(certified.names))}, not {', '.join(names)}")
        return certified

    def write_certificate(self, names: tuple[str, ...], certified: CertifiedKey) -> str:
        path = self.certificate_path(names)
        write_private(path, certificate_pem(certified))
        return path
