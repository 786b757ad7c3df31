"""
edge's own certificate authority, for LAN names no public CA will sign.

One root (ECDSA P-256, ten years) signs short-lived leaf certificates.  Every
edge instance of a swarm must load the *same* root, so the CA is created once
(:func:`create_ca`, ``python -m edge.tls init-ca DIR``) and its two files are
mounted into each instance (Docker secrets); instances then issue leaves on
their own.  Nothing here touches the reactor.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge.tls.store import CertifiedKey, StoreError, normalize_name

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "CertificateAuthority",
    "CAError",
    "create_ca",
    "load_ca",
    "write_ca",
    "check_leaf",
]

CA_CERT_FILE = "edge-ca.crt"
CA_KEY_FILE = "edge-ca.key"

ROOT_LIFETIME = datetime.timedelta(days=3650)
# Clocks of managers differ a little; a leaf valid from "now" on one manager
# must not be "not yet valid" to a client whose clock runs behind.
BACKDATE = datetime.timedelta(hours=1)


class CAError(Exception):
    """The CA files are missing, unreadable or do not belong together."""


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@dataclass(frozen=True, eq=False)
class CertificateAuthority:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def root_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        names: tuple[str, ...],
        lifetime: datetime.timedelta,
        now: datetime.datetime | None = None,
    ) -> CertifiedKey:
        """A fresh ECDSA P-256 leaf for ``names`` (DNS names, ``*.x`` allowed)."""
        now = now or _utcnow()
        names = tuple(normalize_name(n) for n in names)
        key = ec.generate_private_key(ec.SECP256R1())
        not_after = min(now + lifetime, self.certificate.not_valid_after_utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        leaf = builder.sign(self.key, hashes.SHA256())
        return CertifiedKey(
            chain=(leaf,), key=key, names=frozenset(names), source="internal CA"
        )


def create_ca(
    common_name: str = "edge internal CA", now: datetime.datetime | None = None
) -> CertificateAuthority:
    """A new root: ECDSA P-256, may sign leaves only (path length 0)."""
    now = now or _utcnow()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edge"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + ROOT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(certificate, key)


def write_ca(ca: CertificateAuthority, cert_path: str, key_path: str) -> None:
    """Write the root (0644) and its key (0600); never overwrite existing files."""
    key_pem = ca.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    for path, data, mode in ((key_path, key_pem, 0o600), (cert_path, ca.root_pem(), 0o644)):
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)


def load_ca(cert_path: str, key_path: str) -> CertificateAuthority:
    """Read a root and its key; raises :class:`CAError` with the path on any problem."""
    try:
        with open(cert_path, "rb") as f:
            certificate = x509.load_pem_x509_certificate(f.read())
    except OSError as e:
        raise CAError(f"{cert_path}: cannot read the CA certificate: {e.strerror}") from None
    except ValueError:
        raise CAError(f"{cert_path}: not a PEM certificate") from None
    try:
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except OSError as e:
        raise CAError(f"{key_path}: cannot read the CA key: {e.strerror}") from None
    except (ValueError, TypeError) as e:
        raise CAError(f"{key_path}: not an unencrypted PEM private key ({e})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CAError(f"{key_path}: expected an ECDSA key, got {type(key).__name__}")
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != certificate.public_key().public_bytes(der, spki):
        raise CAError(f"{key_path}: this key does not belong to {cert_path}")
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        is_ca = constraints.value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise CAError(f"{cert_path}: not a CA certificate (basicConstraints CA:FALSE)")
    if certificate.not_valid_after_utc <= _utcnow():
        raise CAError(f"{cert_path}: the CA certificate has expired")
    return CertificateAuthority(certificate, key)


def check_leaf(ca: CertificateAuthority, leaf: CertifiedKey) -> None:
    """Raise :class:`StoreError` unless ``leaf`` was signed by ``ca``'s key."""
    try:
        leaf.leaf.verify_directly_issued_by(ca.certificate)
    except (InvalidSignature, ValueError, TypeError) as e:
        raise StoreError(f"not issued by this CA ({e})") from None
