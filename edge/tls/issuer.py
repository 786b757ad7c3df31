"""
Issuers: where certificates for names without a file come from.

The handshake path asks one question, :meth:`ICertificateIssuer.certificate_for`,
synchronously, and takes ``None`` for "not now" (the default certificate is
served instead).  The built-in CA answers at once, issuing on the first ask;
an ACME issuer would answer from its cache and start an order in the
background on a miss, without any change to the handshake path.

Which names may be issued for is decided by the caller (routed host names
only), never by the issuer: anyone can send any SNI name.
"""

from __future__ import annotations

import datetime
import os
import re
from typing import Callable

from cryptography.hazmat.primitives import serialization
from twisted.logger import Logger
from zope.interface import Interface, implementer

from edge import metrics
from edge.tls.ca import CertificateAuthority, check_leaf
from edge.tls.store import CertifiedKey, StoreError, load_bundle

__all__ = ["ICertificateIssuer", "InternalCAIssuer"]


class ICertificateIssuer(Interface):
    def certificate_for(name: str) -> CertifiedKey | None:
        """
        A certificate covering ``name`` that can be served right now, or
        ``None``.  Called during TLS handshakes: must not block for long.
        ``name`` is normalized and already allowed by routing.
        """

    def root_certificate_pem() -> bytes | None:
        """The PEM root clients should trust for these certificates, if any."""


_SAFE = re.compile(r"[^a-z0-9.-]")


def _file_name(name: str) -> str:
    # "*.lan" -> "_wildcard_.lan.pem"; names are already IDNA/lowercase.
    return _SAFE.sub("_", name.replace("*", "_wildcard_")) + ".pem"


@implementer(ICertificateIssuer)
class InternalCAIssuer:
    """
    Leaves from edge's own CA, cached in memory and under ``directory``.

    A leaf lives ``lifetime`` and is replaced on the first ask after less
    than ``renew_before`` is left, so an instance running for months never
    serves an expired one.
    """

    _log = Logger()

    def __init__(
        self,
        ca: CertificateAuthority,
        directory: str,
        lifetime: datetime.timedelta = datetime.timedelta(days=30),
        renew_before: datetime.timedelta = datetime.timedelta(days=10),
        now: Callable[[], datetime.datetime] | None = None,
    ):
        self._ca = ca
        self._directory = directory
        self._lifetime = lifetime
        self._renew_before = renew_before
        self._now = now or (lambda: datetime.datetime.now(datetime.timezone.utc))
        self._cache: dict[str, CertifiedKey] = {}
        self.issued = 0

    def root_certificate_pem(self) -> bytes:
        return self._ca.root_pem()

    def certificate_for(self, name: str) -> CertifiedKey | None:
        now = self._now()
        cached = self._cache.get(name)
        if cached is not None and self._fresh(cached, now):
            return cached
        if cached is None:
            cached = self._from_disk(name, now)
            if cached is not None:
                self._cache[name] = cached
                return cached
        leaf = self._ca.issue((name,), self._lifetime, now=now)
        self.issued += 1
        metrics.tls_certificates_issued.inc()
        self._cache[name] = leaf
        self._log.info(
            "Issued a certificate for {name} from the internal CA, valid until {not_after}",
            name=name,
            not_after=leaf.not_after.isoformat(),
        )
        self._to_disk(name, leaf)
        return leaf

    def forget(self, keep: frozenset[str]) -> None:
        """Drop cached leaves for names no longer routed (files stay on disk)."""
        for name in list(self._cache):
            if name not in keep:
                del self._cache[name]

    def _fresh(self, leaf: CertifiedKey, now: datetime.datetime) -> bool:
        return leaf.not_after - now > self._renew_before

    def _path(self, name: str) -> str:
        return os.path.join(self._directory, _file_name(name))

    def _from_disk(self, name: str, now: datetime.datetime) -> CertifiedKey | None:
        path = self._path(name)
        if not os.path.exists(path):
            return None
        try:
            leaf = load_bundle(path, now=now)
            check_leaf(self._ca, leaf)
            if name not in leaf.names:
                raise StoreError(f"does not name {name}")
        except StoreError as e:
            self._log.warn(
                "Ignoring cached internal-CA certificate {path}: {reason}", path=path, reason=e
            )
            return None
        return leaf if self._fresh(leaf, now) else None

    def _to_disk(self, name: str, leaf: CertifiedKey) -> None:
        key_pem = leaf.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        chain_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in leaf.chain)
        path = self._path(name)
        temporary = f"{path}.{os.getpid()}.tmp"
        try:
            os.makedirs(self._directory, mode=0o700, exist_ok=True)
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(chain_pem + key_pem)
            os.replace(temporary, path)
        except OSError as e:
            # Serving from memory still works; the next start issues again.
            self._log.warn(
                "Cannot cache the certificate for {name} in {path}: {error}",
                name=name,
                path=path,
                error=e.strerror,
            )
