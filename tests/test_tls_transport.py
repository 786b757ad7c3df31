"""
edge's server-side TLS transport (:class:`edge.tls.sni._TLSServerProtocol`)
byte for byte, in memory.

It calls OpenSSL through pyOpenSSL's binding directly instead of
pyOpenSSL's ``Connection`` methods (no exception per empty read), so these
tests pin the behaviour Twisted's ``TLSMemoryBIOProtocol`` gives: records
split and joined, large writes, ALPN, close_notify both ways, an EOF without
one, writes before the handshake (with producer back-pressure) and a broken
handshake.  The client is Python's ``ssl`` over memory BIOs; the server's TCP
side is a ``StringTransport``.
"""

from __future__ import annotations

import ssl

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import protocol
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from edge.tls.sni import SNIConnectionCreator, TLSServerFactory
from edge.tls.store import CertifiedKey
from tests.test_tls_store import TestCA


class _Recorder(protocol.Protocol):
    def __init__(self):
        self.received = b""
        self.lost = None
        self.producer_events = []
        self.write_early = b""

    def connectionMade(self):
        if self.write_early:
            self.transport.registerProducer(self, True)
            self.transport.write(self.write_early)

    def pauseProducing(self):
        self.producer_events.append("pause")

    def resumeProducing(self):
        self.producer_events.append("resume")

    def stopProducing(self):
        self.producer_events.append("stop")

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost = reason


class TLSTransportTests(TestCase):
    @classmethod
    def setUpClass(cls):
        ca = TestCA()
        cert_pem, key_pem = ca.leaf("shop.lan")
        cls.certified = CertifiedKey(
            chain=(x509.load_pem_x509_certificate(cert_pem), ca.cert),
            key=serialization.load_pem_private_key(key_pem, None),
            names=frozenset({"shop.lan"}),
        )
        cls.ca_pem = ca.pem().decode("ascii")

    def connect(self, alpn=None, write_early=b""):
        self.app = _Recorder()
        self.app.write_early = write_early
        wrapped = protocol.Factory.forProtocol(lambda: self.app)
        creator = SNIConnectionCreator(lambda name: self.certified, self.certified)
        self.factory = TLSServerFactory(creator, wrapped, MemoryReactorClock())
        self.server = self.factory.buildProtocol(None)
        self.tcp = StringTransport()
        self.server.makeConnection(self.tcp)
        context = ssl.create_default_context(cadata=self.ca_pem)
        if alpn:
            context.set_alpn_protocols(alpn)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.client = context.wrap_bio(self.incoming, self.outgoing, server_hostname="shop.lan")

    def pump(self):
        """Move bytes both ways until neither side has anything to say."""
        for _ in range(50):
            moved = False
            out = self.outgoing.read()
            if out:
                self.server.dataReceived(out)
                moved = True
            back = self.tcp.value()
            if back:
                self.tcp.clear()
                self.incoming.write(back)
                moved = True
            if not moved:
                return
        self.fail("the TLS exchange did not settle")

    def handshake(self):
        for _ in range(10):
            try:
                self.client.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.pump()
        self.pump()
        self.assertTrue(self.server._handshakeDone)

    def client_read_all(self):
        data = b""
        for _ in range(1000):
            try:
                chunk = self.client.read(1 << 20)
            except ssl.SSLWantReadError:
                return data
            if not chunk:  # close_notify
                return data
            data += chunk
        self.fail("the client kept reading")

    def test_records_split_and_joined_reach_the_application(self):
        self.connect()
        self.handshake()
        for part in (b"GET / HTTP/1.1\r\n", b"Host: shop.lan\r\n", b"\r\n"):
            self.client.write(part)
        wire = self.outgoing.read()  # three records in one read
        for i in range(0, len(wire), 7):  # ... fed seven bytes at a time
            self.server.dataReceived(wire[i : i + 7])
        self.assertEqual(self.app.received, b"GET / HTTP/1.1\r\nHost: shop.lan\r\n\r\n")

    def test_large_write_arrives_whole(self):
        self.connect()
        self.handshake()
        body = bytes(range(256)) * 1200  # 300 KiB: many records, more than one buffer
        self.server.write(body)
        self.incoming.write(self.tcp.value())
        self.tcp.clear()
        self.assertEqual(self.client_read_all(), body)

    def test_alpn(self):
        self.connect(alpn=["h2", "http/1.1"])
        self.handshake()
        self.assertEqual(self.server.negotiatedProtocol, b"h2")
        self.assertEqual(self.client.selected_alpn_protocol(), "h2")

    def test_client_close_notify_is_answered_and_closes(self):
        self.connect()
        self.handshake()
        self.client.write(b"last words")
        try:
            self.client.unwrap()
        except ssl.SSLWantReadError:
            pass
        self.pump()
        self.assertEqual(self.app.received, b"last words")
        self.assertTrue(self.tcp.disconnecting)
        self.client.unwrap()  # the server's close_notify arrived: no error
        self.server.connectionLost(Failure(ConnectionDone()))
        self.assertIsInstance(self.app.lost.value, ConnectionDone)

    def test_server_close_sends_close_notify(self):
        self.connect()
        self.handshake()
        self.server.write(b"bye")
        self.server.loseConnection()
        self.incoming.write(self.tcp.value())
        self.assertEqual(self.client.read(100), b"bye")
        self.assertEqual(self.client.read(100), b"")  # close_notify: a clean end
        self.client.unwrap()  # needs the server's close_notify, else SSLWantReadError
        self.assertFalse(self.tcp.disconnecting)  # waits for the client's close_notify
        self.server.dataReceived(self.outgoing.read())
        self.assertTrue(self.tcp.disconnecting)

    def test_eof_without_close_notify_is_connection_lost(self):
        self.connect()
        self.handshake()
        self.server.connectionLost(Failure(ConnectionDone()))
        self.assertIsInstance(self.app.lost.value, ConnectionLost)

    def test_write_before_handshake_is_buffered_with_back_pressure(self):
        self.connect(write_early=b"hello early")
        self.assertEqual(self.app.producer_events, ["pause"])
        self.handshake()
        self.assertEqual(self.app.producer_events, ["pause", "resume"])
        self.assertEqual(self.client_read_all(), b"hello early")

    def test_garbage_fails_the_handshake(self):
        self.connect()
        self.server.dataReceived(b"GET / HTTP/1.1\r\n\r\n" * 4)
        self.assertTrue(self.tcp.disconnecting or self.tcp.disconnected)
        self.server.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.factory.handshake_failures, 1)
        self.assertIsNotNone(self.app.lost)
