"""
Real handshakes against edge's TLS layer on a loopback port.

The server is :class:`edge.tls.service.TLSService` wrapping a tiny HTTP
responder (the proxy itself is tested in ``test_tls_proxy.py``); the clients
are Python's ``ssl``, ``openssl s_client`` and ``curl``, run in threads so the
reactor keeps serving.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile

from cryptography import x509
from service_identity.cryptography import verify_certificate_hostname
from twisted.internet import defer, protocol, reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from edge.config import TLSConfig
from edge.discovery.publisher import SnapshotPublisher
from edge.rules import Host
from edge.snapshot import Router, Snapshot
from edge.tls.ca import create_ca
from edge.tls.issuer import InternalCAIssuer
from edge.tls.service import DEFAULT_NAME, TLSService
from tests.test_tls_store import TestCA, write


class _Responder(protocol.Protocol):
    """Answers any request with the ALPN protocol it got, then closes."""

    def dataReceived(self, data):
        body = b"alpn=%s\n" % (self.transport.negotiatedProtocol or b"none")
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (len(body), body)
        )
        self.transport.loseConnection()


def _handshake(port, name, cafile=None, alpn=None, max_version=None, verify=True):
    """(TLS version, ALPN, served leaf) via Python's ssl; raises ssl.SSLError."""
    context = ssl.create_default_context(cafile=cafile)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(alpn)
    if max_version is not None:
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        context.maximum_version = max_version
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=name) as tls:
            leaf = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
            return tls.version(), tls.selected_alpn_protocol(), leaf


def _s_client(port, *args):
    """Run openssl s_client; return (exit code, stdout+stderr)."""
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-showcerts", *args],
        input=b"",
        capture_output=True,
        timeout=20,
    )
    return done.returncode, (done.stdout + done.stderr).decode("utf-8", "replace")


def _first_pem(text):
    match = re.search(
        r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, re.S
    )
    return x509.load_pem_x509_certificate(match.group(0).encode()) if match else None


def _router(name, *hosts):
    return Router(name=name, rule=Host(hosts), rule_text=name, service=name)


class HandshakeTests(TestCase):
    timeout = 60

    def setUp(self):
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp)
        self.certs = os.path.join(self.tmp, "certs")
        os.mkdir(self.certs)
        self.files_ca = TestCA()
        self.files_ca_pem = write(os.path.join(self.tmp, "files-root.pem"), self.files_ca.pem())
        # Two routed hosts with two certificates from the directory ...
        write(os.path.join(self.certs, "alpha.pem"), self.files_ca.bundle("alpha.lan"))
        cert, key = self.files_ca.leaf("beta.lan", "*.beta.lan")
        write(os.path.join(self.certs, "beta.crt"), cert + self.files_ca.pem())
        write(os.path.join(self.certs, "beta.key"), key)
        # ... and a third from the built-in CA.
        self.ca = create_ca()
        self.ca_pem = write(os.path.join(self.tmp, "edge-root.pem"), self.ca.root_pem())
        self.publisher = SnapshotPublisher(reactor, debounce=0)
        self.publisher.report(
            "docker",
            Snapshot.build(
                routers=[
                    _router("alpha", "alpha.lan"),
                    _router("beta", "beta.lan"),
                    _router("gamma", "gamma.lan"),
                ]
            ),
        )

    def listen(self, internal_ca=True, **config):
        issuer = None
        if internal_ca:
            issuer = InternalCAIssuer(self.ca, os.path.join(self.tmp, "issued"))
        service = TLSService(
            TLSConfig(certificates=self.certs, internal_ca=internal_ca, **config),
            self.publisher,
            reactor,
            issuer=issuer,
            poll_interval=0.1,
            handle_sighup=False,
        )
        service.startService()
        self.addCleanup(service.stopService)
        factory = service.wrap(protocol.Factory.forProtocol(_Responder))
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return service, factory, port.getHost().port

    @defer.inlineCallbacks
    def test_each_host_gets_its_certificate_by_sni(self):
        _, _, port = self.listen()
        for name, cafile in (
            ("alpha.lan", self.files_ca_pem),
            ("beta.lan", self.files_ca_pem),
            ("www.beta.lan", self.files_ca_pem),
            ("gamma.lan", self.ca_pem),
        ):
            version, _, leaf = yield deferToThread(_handshake, port, name, cafile)
            verify_certificate_hostname(leaf, name)
            self.assertIn(version, ("TLSv1.2", "TLSv1.3"))
            # openssl s_client -servername, the served leaf checked the same way.
            code, out = yield deferToThread(
                _s_client, port, "-servername", name, "-CAfile", cafile, "-verify_return_error"
            )
            self.assertEqual(code, 0, out)
            self.assertIn("Verify return code: 0 (ok)", out)
            verify_certificate_hostname(_first_pem(out), name)

    @defer.inlineCallbacks
    def test_curl_with_resolve_and_cacert(self):
        _, _, port = self.listen()
        for name, cafile in (("alpha.lan", self.files_ca_pem), ("gamma.lan", self.ca_pem)):
            done = yield deferToThread(
                subprocess.run,
                [
                    "curl", "-sS", "--max-time", "10", "--http1.1",
                    "--resolve", f"{name}:{port}:127.0.0.1",
                    "--cacert", cafile,
                    f"https://{name}:{port}/",
                ],
                capture_output=True,
                timeout=20,
            )
            self.assertEqual(done.returncode, 0, done.stderr)
            # The responder speaks HTTP/1.1 only (curl --http2 through the
            # proxy is in test_tls_proxy.py).
            self.assertEqual(done.stdout, b"alpn=http/1.1\n")

    @defer.inlineCallbacks
    def test_alpn(self):
        _, _, port = self.listen()
        cases = ((["h2", "http/1.1"], "h2"), (["http/1.1"], "http/1.1"), (["spdy/3"], None))
        for offered, expected in cases:
            _, selected, _ = yield deferToThread(
                _handshake, port, "alpha.lan", self.files_ca_pem, offered
            )
            self.assertEqual(selected, expected)

    @defer.inlineCallbacks
    def test_http2_off_offers_only_http11(self):
        _, _, port = self.listen(http2=False)
        _, selected, _ = yield deferToThread(
            _handshake, port, "alpha.lan", self.files_ca_pem, ["h2", "http/1.1"]
        )
        self.assertEqual(selected, "http/1.1")

    @defer.inlineCallbacks
    def test_minimum_version(self):
        _, _, port = self.listen()
        with self.assertRaises(ssl.SSLError):
            yield deferToThread(
                _handshake, port, "alpha.lan", self.files_ca_pem,
                max_version=ssl.TLSVersion.TLSv1_1,
            )
        version, _, _ = yield deferToThread(
            _handshake, port, "alpha.lan", self.files_ca_pem,
            max_version=ssl.TLSVersion.TLSv1_2,
        )
        self.assertEqual(version, "TLSv1.2")
        _, _, port13 = self.listen(min_version="1.3")
        with self.assertRaises(ssl.SSLError):
            yield deferToThread(
                _handshake, port13, "alpha.lan", self.files_ca_pem,
                max_version=ssl.TLSVersion.TLSv1_2,
            )

    @defer.inlineCallbacks
    def test_unknown_name_without_default_fails_cleanly(self):
        _, factory, port = self.listen(internal_ca=False)
        for name in ("unknown.lan", "gamma.lan"):  # gamma is routed, but no CA here
            with self.assertRaises(ssl.SSLError):
                yield deferToThread(_handshake, port, name, verify=False)
        code, out = yield deferToThread(_s_client, port, "-noservername")
        self.assertNotEqual(code, 0)
        self.assertIn("alert handshake failure", out)
        yield self._until(lambda: factory.handshake_failures >= 3)
        # The listener is unharmed.
        _, _, leaf = yield deferToThread(_handshake, port, "alpha.lan", self.files_ca_pem)
        verify_certificate_hostname(leaf, "alpha.lan")

    @defer.inlineCallbacks
    def test_default_certificate_from_the_directory(self):
        _, _, port = self.listen(internal_ca=False, default_certificate="alpha.pem")
        code, out = yield deferToThread(_s_client, port, "-noservername")
        self.assertEqual(code, 0, out)
        self.assertEqual(
            _first_pem(out).subject.rfc4514_string(), "CN=alpha.lan"
        )
        _, _, leaf = yield deferToThread(_handshake, port, "other.lan", verify=False)
        verify_certificate_hostname(leaf, "alpha.lan")

    @defer.inlineCallbacks
    def test_internal_ca_fallback_without_sni(self):
        _, _, port = self.listen()
        code, out = yield deferToThread(_s_client, port, "-noservername")
        self.assertEqual(code, 0, out)
        verify_certificate_hostname(_first_pem(out), DEFAULT_NAME)

    @defer.inlineCallbacks
    def test_garbage_and_stalled_clients_are_dropped(self):
        _, factory, port = self.listen(handshake_timeout=0.5)

        def garbage():
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: alpha.lan\r\n\r\n")
                return s.recv(1024), s.recv(1024)

        def stall(partial: bytes):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                if partial:
                    s.sendall(partial)
                chunks = []
                while True:  # bounded by the socket timeout
                    try:
                        chunk = s.recv(1024)
                    except ConnectionResetError:  # aborted: a reset is a close
                        return b"".join(chunks)
                    if not chunk:
                        return b"".join(chunks)
                    chunks.append(chunk)

        first, second = yield deferToThread(garbage)
        # An alert record (content type 21) or nothing, then the close.
        self.assertIn(first[:1], (b"\x15", b""))
        self.assertEqual(second, b"")
        # Silent after connecting, and stalled after half a ClientHello.
        yield deferToThread(stall, b"")
        yield deferToThread(stall, bytes.fromhex("16030100c8010000c40303") + b"\0" * 10)
        yield self._until(lambda: factory.handshake_failures >= 3)
        _, _, leaf = yield deferToThread(_handshake, port, "alpha.lan", self.files_ca_pem)
        verify_certificate_hostname(leaf, "alpha.lan")

    @defer.inlineCallbacks
    def test_file_dropped_into_the_directory_is_served_without_restart(self):
        service, _, port = self.listen(internal_ca=False)
        with self.assertRaises(ssl.SSLError):
            yield deferToThread(_handshake, port, "delta.lan", self.files_ca_pem)
        # Connections open during the reload are not dropped.
        held = socket.create_connection(("127.0.0.1", port), timeout=10)
        context = ssl.create_default_context(cafile=self.files_ca_pem)
        held_tls = yield deferToThread(context.wrap_socket, held, server_hostname="alpha.lan")
        self.addCleanup(held_tls.close)
        write(os.path.join(self.certs, "delta.pem"), self.files_ca.bundle("delta.lan"))
        yield self._until(lambda: service.index.lookup("delta.lan") is not None)
        _, _, leaf = yield deferToThread(_handshake, port, "delta.lan", self.files_ca_pem)
        verify_certificate_hostname(leaf, "delta.lan")
        held_tls.sendall(b"GET / HTTP/1.1\r\n\r\n")
        reply = yield deferToThread(held_tls.recv, 1024)
        self.assertTrue(reply.startswith(b"HTTP/1.1 200"))

    @defer.inlineCallbacks
    def test_sighup_reloads(self):
        service = TLSService(
            TLSConfig(certificates=self.certs),
            self.publisher,
            reactor,
            poll_interval=0,  # no polling: only SIGHUP can pick the file up
            handle_sighup=True,
        )
        service.startService()
        self.addCleanup(service.stopService)
        write(os.path.join(self.certs, "eps.pem"), self.files_ca.bundle("epsilon.lan"))
        self.assertIsNone(service.index.lookup("epsilon.lan"))
        os.kill(os.getpid(), signal.SIGHUP)
        yield self._until(lambda: service.index.lookup("epsilon.lan") is not None)

    @defer.inlineCallbacks
    def _until(self, predicate, seconds=10.0):
        for _ in range(int(seconds / 0.05)):
            if predicate():
                return
            yield deferLater(reactor, 0.05, lambda: None)
        self.fail("condition not met in time")
