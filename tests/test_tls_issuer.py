"""
The built-in CA: leaves that verify against the root, cached and renewed;
issuing only for routed names; one shared CA for several instances.
"""

from __future__ import annotations

import datetime
import os

import pytest
import service_identity
from service_identity.cryptography import verify_certificate_hostname
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from edge.config import ConfigError, Config, TLSConfig
from edge.discovery.publisher import SnapshotPublisher
from edge.rules import Host, HostRegexp
from edge.snapshot import Router, RouterTLS, Snapshot
from edge.tls import __main__ as tls_command
from edge.tls.ca import CA_CERT_FILE, CA_KEY_FILE, CAError, create_ca, load_ca, write_ca
from edge.tls.issuer import ICertificateIssuer, InternalCAIssuer
from edge.tls.service import DEFAULT_NAME, TLSService, make_tls_service, routed_names
from tests.test_tls_store import TestCA, write

UTC = datetime.timezone.utc


def _router(name, rule, tls=None):
    return Router(name=name, rule=rule, rule_text=name, service=name, tls=tls)


def test_leaf_verifies_against_root_and_names_the_host():
    ca = create_ca()
    leaf = ca.issue(("nas.lan",), datetime.timedelta(days=30))
    leaf.leaf.verify_directly_issued_by(ca.certificate)
    verify_certificate_hostname(leaf.leaf, "nas.lan")
    with pytest.raises(service_identity.VerificationError):
        verify_certificate_hostname(leaf.leaf, "other.lan")
    assert ICertificateIssuer.providedBy(InternalCAIssuer(ca, "/nonexistent"))


def test_issuer_caches_in_memory_and_on_disk(tmp_path):
    ca = create_ca()
    issuer = InternalCAIssuer(ca, str(tmp_path / "issued"))
    first = issuer.certificate_for("nas.lan")
    assert issuer.certificate_for("nas.lan") is first
    assert issuer.issued == 1
    files = os.listdir(tmp_path / "issued")
    assert files == ["nas.lan.pem"]
    assert oct(os.stat(tmp_path / "issued" / "nas.lan.pem").st_mode & 0o777) == "0o600"
    # A restarted instance serves the same leaf from disk instead of issuing.
    again = InternalCAIssuer(ca, str(tmp_path / "issued"))
    loaded = again.certificate_for("nas.lan")
    assert again.issued == 0
    assert loaded.leaf == first.leaf


def test_issuer_renews_before_expiry(tmp_path):
    ca = create_ca()
    now = [datetime.datetime.now(UTC)]
    issuer = InternalCAIssuer(
        ca,
        str(tmp_path),
        lifetime=datetime.timedelta(days=30),
        renew_before=datetime.timedelta(days=10),
        now=lambda: now[0],
    )
    first = issuer.certificate_for("tv.lan")
    now[0] += datetime.timedelta(days=19)
    assert issuer.certificate_for("tv.lan") is first
    now[0] += datetime.timedelta(days=2)  # 9 days left: renew
    second = issuer.certificate_for("tv.lan")
    assert second is not first
    assert second.not_after > first.not_after
    assert issuer.issued == 2


def test_cached_leaf_from_another_ca_is_not_served(tmp_path):
    old = InternalCAIssuer(create_ca(), str(tmp_path))
    old.certificate_for("nas.lan")
    new_ca = create_ca()
    fresh = InternalCAIssuer(new_ca, str(tmp_path)).certificate_for("nas.lan")
    fresh.leaf.verify_directly_issued_by(new_ca.certificate)


def test_load_ca_rejects_mismatched_files(tmp_path):
    a, b = create_ca(), create_ca()
    write_ca(a, str(tmp_path / "a.crt"), str(tmp_path / "a.key"))
    write_ca(b, str(tmp_path / "b.crt"), str(tmp_path / "b.key"))
    with pytest.raises(CAError, match="does not belong"):
        load_ca(str(tmp_path / "a.crt"), str(tmp_path / "b.key"))
    with pytest.raises(CAError, match="cannot read"):
        load_ca(str(tmp_path / "missing.crt"), str(tmp_path / "a.key"))
    # A leaf is not a CA.
    leaf_pem, key_pem = TestCA().leaf("x.lan")
    write(tmp_path / "leaf.crt", leaf_pem)
    write(tmp_path / "leaf.key", key_pem)
    with pytest.raises(CAError, match="not a CA"):
        load_ca(str(tmp_path / "leaf.crt"), str(tmp_path / "leaf.key"))


def test_init_ca_command_then_instances_share_the_root(tmp_path, capsys):
    secrets = str(tmp_path / "secrets")
    assert tls_command.main(["init-ca", secrets]) == 0
    assert "ca_certificate" in capsys.readouterr().out
    # A second run must not replace the CA every instance trusts.
    assert tls_command.main(["init-ca", secrets]) == 1
    config = TLSConfig(
        internal_ca=True,
        ca_certificate=os.path.join(secrets, CA_CERT_FILE),
        ca_key=os.path.join(secrets, CA_KEY_FILE),
    )
    leaves = []
    for instance in ("manager1", "manager2"):
        state = TLSConfig(**{**config.__dict__, "state_dir": str(tmp_path / instance)})
        service = make_tls_service(
            Config(tls=state), SnapshotPublisher(Clock(), 0), Clock(), handle_sighup=False
        )
        leaves.append(service.issuer.certificate_for("nas.lan"))
        assert service.root_certificate_pem() == open(config.ca_certificate, "rb").read()
    root = load_ca(config.ca_certificate, config.ca_key).certificate
    for leaf in leaves:
        leaf.leaf.verify_directly_issued_by(root)
    assert leaves[0].leaf != leaves[1].leaf  # issued independently


def test_explicit_ca_files_are_never_created(tmp_path):
    config = TLSConfig(
        internal_ca=True,
        ca_certificate=str(tmp_path / "absent.crt"),
        ca_key=str(tmp_path / "absent.key"),
    )
    with pytest.raises(ConfigError, match="init-ca"):
        make_tls_service(Config(tls=config), SnapshotPublisher(Clock(), 0), Clock())
    assert not os.path.exists(tmp_path / "absent.crt")


def test_default_location_creates_the_ca_once(tmp_path):
    config = Config(tls=TLSConfig(internal_ca=True, state_dir=str(tmp_path)))
    first = make_tls_service(config, SnapshotPublisher(Clock(), 0), Clock())
    second = make_tls_service(config, SnapshotPublisher(Clock(), 0), Clock())
    assert first.root_certificate_pem() == second.root_certificate_pem()
    assert os.path.exists(tmp_path / "ca" / CA_KEY_FILE)


def test_routed_names_include_wildcards_and_tls_domains():
    snapshot = Snapshot.build(
        routers=[
            _router("a", Host(("a.lan", "B.lan"))),
            _router("w", HostRegexp(("{x:[a-z]+}.apps.lan",), r"[a-z]+\.apps\.lan", ("*.apps.lan",))),
            _router("t", Host(("t.lan",)), tls=RouterTLS(domains=("extra.lan",))),
        ]
    )
    assert routed_names(snapshot) == {"a.lan", "b.lan", "*.apps.lan", "t.lan", "extra.lan"}


class SelectionTests(SynchronousTestCase):
    """Which certificate the handshake gets, and that SNI alone never mints one."""

    def setUp(self):
        import tempfile

        self.dir = tempfile.mkdtemp()
        self.addCleanup(__import__("shutil").rmtree, self.dir)
        certs = os.path.join(self.dir, "certs")
        os.mkdir(certs)
        self.test_ca = TestCA()
        write(os.path.join(certs, "files.pem"), self.test_ca.bundle("file.lan"))
        self.clock = Clock()
        self.publisher = SnapshotPublisher(self.clock, debounce=0)
        self.ca = create_ca()
        self.issuer = InternalCAIssuer(self.ca, os.path.join(self.dir, "issued"))
        self.service = TLSService(
            TLSConfig(certificates=certs, internal_ca=True),
            self.publisher,
            self.clock,
            issuer=self.issuer,
            handle_sighup=False,
        )
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.publisher.report(
            "docker",
            Snapshot.build(
                routers=[
                    _router("nas", Host(("nas.lan", "file.lan"))),
                    _router(
                        "apps",
                        HostRegexp(("{x:[a-z]+}.apps.lan",), r"[a-z]+\.apps\.lan", ("*.apps.lan",)),
                    ),
                ]
            ),
        )

    def test_directory_wins_over_issuer(self):
        chosen = self.service.select("file.lan")
        self.assertTrue(chosen.source.endswith("files.pem"))

    def test_routed_name_is_issued_once(self):
        issued_before = self.issuer.issued
        chosen = self.service.select("nas.lan")
        chosen.leaf.verify_directly_issued_by(self.ca.certificate)
        self.assertIs(self.service.select("nas.lan"), chosen)
        self.assertEqual(self.issuer.issued, issued_before + 1)

    def test_wildcard_router_gets_one_wildcard_certificate(self):
        a = self.service.select("one.apps.lan")
        b = self.service.select("two.apps.lan")
        self.assertIs(a, b)
        self.assertEqual(a.names, {"*.apps.lan"})

    def test_unrouted_names_are_never_issued(self):
        issued_before = self.issuer.issued
        for name in ("evil.example", "x.nas.lan", "a.b.apps.lan", DEFAULT_NAME + "x"):
            self.assertIsNone(self.service.select(name))
        self.assertEqual(self.issuer.issued, issued_before)

    def test_name_unrouted_later_is_no_longer_issued(self):
        self.service.select("nas.lan")
        self.publisher.report("docker", Snapshot.build())
        self.assertIsNone(self.service.select("nas.lan"))

    def test_default_is_the_internal_ca_fallback(self):
        default = self.service.creator.default
        self.assertEqual(default.names, {DEFAULT_NAME})
        default.leaf.verify_directly_issued_by(self.ca.certificate)

    def test_file_dropped_in_is_picked_up_by_the_poll(self):
        self.assertIsNone(self.service.index.lookup("new.lan"))
        write(os.path.join(self.service.config.certificates, "new.pem"), self.test_ca.bundle("new.lan"))
        self.clock.advance(2.0)
        self.assertIsNotNone(self.service.index.lookup("new.lan"))

    def test_unreadable_directory_keeps_last_good_index(self):
        certs = self.service.config.certificates
        os.rename(certs, certs + ".gone")
        self.clock.advance(2.0)
        self.assertIsNotNone(self.service.select("file.lan"))
        os.rename(certs + ".gone", certs)
