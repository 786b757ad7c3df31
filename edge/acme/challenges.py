"""
Answers to the CA's HTTP-01 and TLS-ALPN-01 requests.

:class:`ChallengeBoard` holds what is being validated right now: HTTP-01
key authorizations by token and TLS-ALPN-01 certificates by name.  The HTTP
front end calls :meth:`ChallengeBoard.respond` for every plain-HTTP request
before routing; the TLS handshake calls :meth:`ChallengeBoard.alpn_certificate`
when a client offers ``acme-tls/1``.  Both run on the reactor thread; the
worker thread that drives an order changes the board under a lock (never
waiting for the reactor, so shutting down while an order runs cannot
deadlock).
"""

from __future__ import annotations

import datetime
import hashlib
import threading

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.logger import Logger

from edge.http.middlewares import Reply
from edge.tls.store import CertifiedKey

__all__ = ["ChallengeBoard", "tls_alpn_certificate", "ACME_IDENTIFIER_OID"]

# RFC 8737 section 6.1: id-pe-acmeIdentifier.
ACME_IDENTIFIER_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
_PREFIX = b"/.well-known/acme-challenge/"
# Orders are few and sequential; a bound still keeps a bug from growing it.
_MAX_ENTRIES = 1000


def tls_alpn_certificate(name: str, key_authorization: str) -> CertifiedKey:
    """RFC 8737's self-signed certificate for ``name``: SAN and critical acmeIdentifier."""
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge ACME TLS-ALPN-01")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        # The extension's value is a DER OCTET STRING of the SHA-256 digest.
        .add_extension(
            x509.UnrecognizedExtension(ACME_IDENTIFIER_OID, b"\x04\x20" + digest), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return CertifiedKey(chain=(certificate,), key=key, names=frozenset({name}), source="acme-tls/1")


def _host_only(host: bytes) -> str:
    host = host.strip().lower()
    if host.startswith(b"["):
        return host.split(b"]", 1)[0][1:].decode("ascii", "replace")
    return host.rsplit(b":", 1)[0].rstrip(b".").decode("ascii", "replace") if host else ""


class ChallengeBoard:
    """What the CA may ask for right now; safe to change from any thread."""

    _log = Logger()

    def __init__(self):
        self._http: dict[str, tuple[str, bytes]] = {}
        self._alpn: dict[str, CertifiedKey] = {}
        self._lock = threading.Lock()
        self.http_answers = 0
        self.alpn_answers = 0

    # -- written by the ordering side ------------------------------------

    def add_http(self, name: str, token: str, key_authorization: str) -> None:
        with self._lock:
            if len(self._http) >= _MAX_ENTRIES:
                raise RuntimeError("too many HTTP-01 challenges pending")
            self._http[token] = (name, key_authorization.encode("ascii"))

    def remove_http(self, token: str) -> None:
        with self._lock:
            self._http.pop(token, None)

    def add_alpn(self, name: str, certified: CertifiedKey) -> None:
        with self._lock:
            if len(self._alpn) >= _MAX_ENTRIES and name not in self._alpn:
                raise RuntimeError("too many TLS-ALPN-01 challenges pending")
            self._alpn[name] = certified

    def remove_alpn(self, name: str) -> None:
        with self._lock:
            self._alpn.pop(name, None)

    @property
    def pending(self) -> int:
        return len(self._http) + len(self._alpn)

    # -- read by the front ends ------------------------------------------

    def respond(self, host: bytes, path: bytes) -> Reply | None:
        """
        The key authorization for a pending HTTP-01 token asked for by its
        own host name; ``None`` for anything else, which is routed as usual
        (a backend may run its own ACME client).
        """
        if not path.startswith(_PREFIX):
            return None
        token = path[len(_PREFIX) :].split(b"?", 1)[0].decode("ascii", "replace")
        with self._lock:
            found = self._http.get(token)
        if found is None or found[0] != _host_only(host):
            return None
        self.http_answers += 1
        self._log.info("Answered the HTTP-01 challenge for {name}", name=found[0])
        return Reply(200, b"OK", [(b"Content-Type", b"text/plain")], found[1])

    def alpn_certificate(self, name: str) -> CertifiedKey | None:
        """The TLS-ALPN-01 certificate for ``name`` while its challenge is pending."""
        with self._lock:
            found = self._alpn.get(name)
        if found is not None:
            self.alpn_answers += 1
            self._log.info("Answered the TLS-ALPN-01 challenge for {name}", name=name)
        return found
