"""
The certificate directory, read into an index by host name.

Pure apart from reading files: :func:`scan` turns a directory into a
:class:`CertificateIndex` plus a list of :class:`FileProblem`; a broken file
(unreadable, no key, key that does not match, expired) becomes a problem naming
its path and is left out, so one bad file never takes the others down.

Files are PEM.  A file holding certificates and a key is one bundle; a
certificate file (``name.crt``, ``name.pem``, ``name.cert``) without a key is
paired with ``name.key`` beside it.  The leaf is the certificate whose public
key matches the key; the others are sent after it as the chain.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

__all__ = [
    "CertifiedKey",
    "FileProblem",
    "CertificateIndex",
    "StoreError",
    "DirectoryState",
    "scan",
    "directory_state",
    "load_bundle",
    "parse_bundle",
    "names_of",
    "normalize_name",
]

_CERT_SUFFIXES = (".pem", ".crt", ".cert", ".cer")
_KEY_SUFFIX = ".key"
_MAX_FILE_BYTES = 1 << 20


class StoreError(Exception):
    """Why one file cannot be served; ``str()`` is the reason without the path."""


@dataclass(frozen=True, eq=False)
class CertifiedKey:
    """
    A leaf certificate, its chain and its private key, ready to serve.

    Compared by identity: the TLS layer caches one OpenSSL context per
    object, and an unchanged file keeps its object across re-scans.
    """

    chain: tuple[x509.Certificate, ...]  # leaf first
    key: object  # a cryptography private key
    names: frozenset[str]
    source: str = ""

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def not_after(self) -> datetime.datetime:
        return self.leaf.not_valid_after_utc

    @property
    def not_before(self) -> datetime.datetime:
        return self.leaf.not_valid_before_utc


@dataclass(frozen=True)
class FileProblem:
    path: str
    message: str


def normalize_name(name: str) -> str:
    """Lower case, no trailing dot, IDNA (punycode) form."""
    name = name.strip().rstrip(".").lower()
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            pass
    return name


def names_of(certificate: x509.Certificate) -> frozenset[str]:
    """DNS names in the subject alternative names; the CN only when there are none."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        dns = san.value.get_values_for_type(x509.DNSName)
        return frozenset(normalize_name(n) for n in dns if n)
    except x509.ExtensionNotFound:
        cns = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return frozenset(
            normalize_name(str(cn.value)) for cn in cns if "." in str(cn.value)
        )


def _public_bytes(key) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def parse_bundle(
    data: bytes,
    key_data: bytes | None = None,
    now: datetime.datetime | None = None,
    source: str = "",
) -> CertifiedKey:
    """
    A :class:`CertifiedKey` from PEM text; raises :class:`StoreError`.

    ``key_data`` is a separate key file's content, used when ``data`` has none.
    """
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        if b"-----BEGIN" in data and b"CERTIFICATE-----" in data:
            raise StoreError("a certificate in it is not valid PEM") from None
        raise StoreError("holds no PEM certificate") from None
    key = None
    for blob in (data, key_data):
        if blob is None or b"PRIVATE KEY-----" not in blob:
            continue
        start = blob.rfind(b"-----BEGIN", 0, blob.index(b"PRIVATE KEY-----") + 1)
        end = blob.index(b"-----END", start)
        end = blob.index(b"-----", end + 8) + 5
        try:
            key = serialization.load_pem_private_key(blob[start:end], password=None)
        except TypeError:
            raise StoreError("the private key is encrypted (edge needs it unencrypted)") from None
        except ValueError as e:
            raise StoreError(f"the private key cannot be read ({e})") from None
        break
    if key is None:
        raise StoreError("no private key in the file and no matching .key file")
    if not isinstance(
        key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)
    ):
        raise StoreError(f"unsupported key type {type(key).__name__}")
    wanted = _public_bytes(key.public_key())
    leaf = next((c for c in certificates if _public_bytes(c.public_key()) == wanted), None)
    if leaf is None:
        raise StoreError("the private key matches none of the certificates")
    chain = (leaf,) + tuple(c for c in certificates if c is not leaf)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if leaf.not_valid_after_utc <= now:
        raise StoreError(f"expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if leaf.not_valid_before_utc > now + datetime.timedelta(minutes=5):
        raise StoreError(f"not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    names = names_of(leaf)
    if not names:
        raise StoreError("the certificate names no DNS host (no subjectAltName)")
    return CertifiedKey(chain=chain, key=key, names=names, source=source)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_FILE_BYTES + 1)
    except OSError as e:
        raise StoreError(f"cannot read: {e.strerror}") from None
    if len(data) > _MAX_FILE_BYTES:
        raise StoreError("larger than 1 MiB; not a certificate file")
    return data


def load_bundle(path: str, now: datetime.datetime | None = None) -> CertifiedKey:
    """One certificate file (with ``stem.key`` beside it if it has no key)."""
    data = _read(path)
    key_data = None
    if b"PRIVATE KEY-----" not in data:
        stem, _ = os.path.splitext(path)
        if os.path.exists(stem + _KEY_SUFFIX):
            key_data = _read(stem + _KEY_SUFFIX)
    return parse_bundle(data, key_data, now=now, source=path)


@dataclass(frozen=True)
class CertificateIndex:
    """Certificates by exact name and by wildcard suffix (``*.a.b`` under ``a.b``)."""

    exact: dict[str, CertifiedKey] = field(default_factory=dict)
    wildcard: dict[str, CertifiedKey] = field(default_factory=dict)
    entries: tuple[CertifiedKey, ...] = ()

    @classmethod
    def build(cls, entries: Iterable[CertifiedKey]) -> "CertificateIndex":
        """Index ``entries``; where two cover a name, the one valid longest wins."""
        entries = tuple(sorted(entries, key=lambda e: (e.not_after, e.source)))
        exact: dict[str, CertifiedKey] = {}
        wildcard: dict[str, CertifiedKey] = {}
        for entry in entries:  # later (longer-lived) entries overwrite earlier
            for name in entry.names:
                if name.startswith("*."):
                    wildcard[name[2:]] = entry
                else:
                    exact[name] = entry
        return cls(exact=exact, wildcard=wildcard, entries=entries)

    def lookup(self, name: str) -> CertifiedKey | None:
        """The certificate for ``name``: exact first, then a one-label wildcard."""
        found = self.exact.get(name)
        if found is not None:
            return found
        _, dot, parent = name.partition(".")
        if dot and parent:
            return self.wildcard.get(parent)
        return None

    def __len__(self) -> int:
        return len(self.entries)


DirectoryState = tuple[tuple[str, int, int], ...]


def directory_state(directory: str) -> DirectoryState:
    """(name, mtime_ns, size) of each file: cheap to poll, changes with any edit."""
    state = []
    with os.scandir(directory) as it:
        for entry in it:
            if entry.name.startswith("."):
                continue
            try:
                st = entry.stat()
            except OSError:
                continue
            state.append((entry.name, st.st_mtime_ns, st.st_size))
    return tuple(sorted(state))


def scan(
    directory: str,
    now: datetime.datetime | None = None,
    previous: dict[tuple, CertifiedKey] | None = None,
) -> tuple[CertificateIndex, list[FileProblem], dict[tuple, CertifiedKey]]:
    """
    Read every certificate file in ``directory``.

    Returns the index, the problems, and a cache keyed by each file's
    (name, mtime, size) to pass back as ``previous`` next time, so unchanged
    files keep their :class:`CertifiedKey` object (and its OpenSSL context).
    Raises ``OSError`` when the directory itself cannot be listed.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    previous = previous or {}
    state = directory_state(directory)
    names = {name for name, _, _ in state}
    entries: list[CertifiedKey] = []
    problems: list[FileProblem] = []
    cache: dict[tuple, CertifiedKey] = {}
    for file_state in state:
        name = file_state[0]
        path = os.path.join(directory, name)
        stem, suffix = os.path.splitext(name)
        if not os.path.isfile(path):
            continue
        if suffix.lower() == _KEY_SUFFIX:
            if not any(stem + s in names for s in _CERT_SUFFIXES):
                data = None
                try:
                    data = _read(path)
                except StoreError:
                    pass
                if data is None or b"CERTIFICATE-----" not in data:
                    problems.append(
                        FileProblem(path, "a key without a certificate file of the same name")
                    )
                    continue
            else:
                continue
        elif suffix.lower() not in _CERT_SUFFIXES:
            continue
        # A pair's key file changing must re-read the certificate too.
        key_state = next(
            (s for s in state if s[0] == stem + _KEY_SUFFIX and suffix.lower() != _KEY_SUFFIX),
            None,
        )
        cache_key = file_state + (key_state or ("", 0, 0))
        entry = previous.get(cache_key)
        if entry is None or entry.not_after <= now:
            try:
                entry = load_bundle(path, now=now)
            except StoreError as e:
                problems.append(FileProblem(path, str(e)))
                continue
        cache[cache_key] = entry
        entries.append(entry)
    return CertificateIndex.build(entries), problems, cache
