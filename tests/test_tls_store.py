"""
The certificate directory: indexing by SAN, pairs, and broken files skipped.

The helpers at the top make certificates with ``cryptography``; the other
TLS test modules import them.
"""

from __future__ import annotations

import datetime
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge.tls.store import CertificateIndex, StoreError, parse_bundle, scan

NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.timezone.utc)


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class TestCA:
    """A throwaway root that signs leaves for the tests."""

    __test__ = False

    def __init__(self, name: str = "edge tests root"):
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = utcnow()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def leaf(
        self,
        *names: str,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ):
        """(certificate PEM, key PEM) for ``names``."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = utcnow()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - datetime.timedelta(days=1))
            .not_valid_after(not_after or now + datetime.timedelta(days=90))
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem

    def bundle(self, *names: str, **kwargs) -> bytes:
        """Leaf, then root as its chain, then the key: one PEM file."""
        cert, key = self.leaf(*names, **kwargs)
        return cert + self.pem() + key


def write(path, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


@pytest.fixture(scope="module")
def ca():
    return TestCA()


def test_bundle_indexed_by_every_san_and_wildcard(ca, tmp_path):
    write(tmp_path / "site.pem", ca.bundle("a.lan", "www.a.lan", "*.apps.lan"))
    index, problems, _ = scan(str(tmp_path))
    assert problems == []
    entry = index.lookup("a.lan")
    assert entry is not None and entry is index.lookup("www.a.lan")
    assert index.lookup("x.apps.lan") is entry
    # A wildcard covers exactly one label (RFC 6125 6.4.3).
    assert index.lookup("a.b.apps.lan") is None
    assert index.lookup("apps.lan") is None
    assert index.lookup("b.lan") is None
    # The chain is served leaf first, then the root from the file.
    assert len(entry.chain) == 2
    assert entry.chain[1] == ca.cert


def test_exact_name_beats_wildcard(ca, tmp_path):
    write(tmp_path / "wild.pem", ca.bundle("*.lan"))
    write(tmp_path / "nas.pem", ca.bundle("nas.lan"))
    index, _, _ = scan(str(tmp_path))
    assert index.lookup("nas.lan").source.endswith("nas.pem")
    assert index.lookup("tv.lan").source.endswith("wild.pem")


def test_crt_and_key_pair(ca, tmp_path):
    cert, key = ca.leaf("pair.lan")
    write(tmp_path / "pair.crt", cert + ca.pem())
    write(tmp_path / "pair.key", key)
    index, problems, _ = scan(str(tmp_path))
    assert problems == []
    assert index.lookup("pair.lan").source.endswith("pair.crt")


def test_broken_files_are_skipped_with_their_path(ca, tmp_path):
    good = write(tmp_path / "good.pem", ca.bundle("good.lan"))
    cert_a, _ = ca.leaf("mismatch.lan")
    _, key_b = ca.leaf("other.lan")
    mismatch = write(tmp_path / "mismatch.pem", cert_a + key_b)
    expired = write(
        tmp_path / "expired.pem",
        ca.bundle(
            "expired.lan",
            not_before=utcnow() - datetime.timedelta(days=10),
            not_after=utcnow() - datetime.timedelta(days=1),
        ),
    )
    garbage = write(tmp_path / "garbage.crt", b"this is not PEM\n")
    cert_only, _ = ca.leaf("nokey.lan")
    nokey = write(tmp_path / "nokey.pem", cert_only)
    orphan = write(tmp_path / "orphan.key", key_b)
    truncated = write(tmp_path / "truncated.pem", ca.bundle("cut.lan")[:300])
    write(tmp_path / "README.txt", b"ignored: not a certificate suffix")

    index, problems, _ = scan(str(tmp_path))
    by_path = {p.path: p.message for p in problems}
    assert set(by_path) == {mismatch, expired, garbage, nokey, orphan, truncated}
    assert "matches none" in by_path[mismatch]
    assert "expired" in by_path[expired]
    assert "no PEM certificate" in by_path[garbage]
    assert "no private key" in by_path[nokey]
    assert "without a certificate" in by_path[orphan]
    # The good file is still served.
    assert index.lookup("good.lan").source == good
    assert len(index) == 1


def test_unchanged_files_keep_their_entry_across_scans(ca, tmp_path):
    write(tmp_path / "one.pem", ca.bundle("one.lan"))
    path_two = write(tmp_path / "two.pem", ca.bundle("two.lan"))
    index, _, cache = scan(str(tmp_path))
    one, two = index.lookup("one.lan"), index.lookup("two.lan")
    write(path_two, ca.bundle("two.lan", "deux.lan"))
    os.utime(path_two, ns=(1, 1))  # a different mtime even on coarse clocks
    index2, _, _ = scan(str(tmp_path), previous=cache)
    assert index2.lookup("one.lan") is one
    assert index2.lookup("two.lan") is not two
    assert index2.lookup("deux.lan") is index2.lookup("two.lan")


def test_longest_lived_certificate_wins_a_shared_name(ca, tmp_path):
    write(
        tmp_path / "old.pem",
        ca.bundle("dup.lan", not_after=utcnow() + datetime.timedelta(days=5)),
    )
    write(
        tmp_path / "new.pem",
        ca.bundle("dup.lan", not_after=utcnow() + datetime.timedelta(days=80)),
    )
    index, _, _ = scan(str(tmp_path))
    assert index.lookup("dup.lan").source.endswith("new.pem")


def test_encrypted_key_is_a_clear_problem(ca):
    cert, _ = ca.leaf("enc.lan")
    key = ec.generate_private_key(ec.SECP256R1())
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(StoreError, match="encrypted"):
        parse_bundle(cert + encrypted)


def test_names_are_normalized(ca):
    entry = parse_bundle(ca.bundle("MiXeD.Lan"))
    index = CertificateIndex.build([entry])
    assert index.lookup("mixed.lan") is entry


def test_missing_directory_raises_oserror(tmp_path):
    with pytest.raises(OSError):
        scan(str(tmp_path / "absent"))
