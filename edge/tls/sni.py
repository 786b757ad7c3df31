"""
The TLS handshake: pick a certificate by SNI, negotiate ALPN.

:class:`SNIConnectionCreator` gives every connection one shared base context
whose servername callback asks a *selector* (a callable from name to
:class:`CertifiedKey`) and switches the connection to that certificate's
context, built once and cached (the txsni idea).  When the selector has
nothing and there is no default certificate, the base context has no
certificate and OpenSSL ends the handshake with an alert: no Python error, no
lasting cost.

:class:`TLSServerFactory` wraps a protocol factory in TLS and adds what
Twisted leaves out for a server on the open network: a handshake deadline
and one log line per failed handshake.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Callable

from OpenSSL import SSL
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from edge import metrics
from edge.http import speedups
from edge.tls.store import CertifiedKey, normalize_name

try:
    # pyOpenSSL's cffi binding: the same OpenSSL calls its Connection makes,
    # without an exception per "no data yet" (see _TLSServerProtocol).
    from OpenSSL._util import ffi as _ffi, lib as _lib

    _WANT_READ = _lib.SSL_ERROR_WANT_READ
    _SSL_read, _SSL_write, _SSL_do_handshake = _lib.SSL_read, _lib.SSL_write, _lib.SSL_do_handshake
    _SSL_get_error, _BIO_read, _BIO_write = _lib.SSL_get_error, _lib.BIO_read, _lib.BIO_write
    _buffer_of = _ffi.buffer
    # One scratch buffer for every connection: it is only touched on the
    # reactor thread and its bytes are copied out before anything else runs.
    _SCRATCH_SIZE = 2**16
    _scratch = _ffi.new("char[]", _SCRATCH_SIZE)
except (ImportError, AttributeError):  # pragma: no cover - another pyOpenSSL layout
    _lib = None

__all__ = [
    "TLSSettings",
    "SNIConnectionCreator",
    "TLSServerFactory",
    "CIPHERS_TLS12",
    "make_context",
]

# Mozilla "intermediate" for TLS 1.2, ECDHE only (no DH parameters to manage).
# TLS 1.3 suites are OpenSSL's defaults (all AEAD).
CIPHERS_TLS12 = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)

_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}

Selector = Callable[[str], "CertifiedKey | None"]


@dataclass(frozen=True)
class TLSSettings:
    min_version: str = "1.2"
    http2: bool = True
    ciphers: str = CIPHERS_TLS12

    @property
    def alpn(self) -> tuple[bytes, ...]:
        return (b"h2", b"http/1.1") if self.http2 else (b"http/1.1",)


# RFC 8737: the protocol an ACME CA offers, alone, to validate TLS-ALPN-01.
ACME_TLS_ALPN = b"acme-tls/1"


def make_context(
    settings: TLSSettings, certified: CertifiedKey | None, acme_tls: Selector | None = None
) -> SSL.Context:
    """
    An OpenSSL server context for one certificate (or none), fully configured.

    ``acme_tls(name)`` gives the TLS-ALPN-01 certificate for a name being
    validated: a client offering ``acme-tls/1`` gets it instead of the
    usual one (chosen here, in the ALPN callback, because the SNI callback
    runs before the client's ALPN list is known).
    """
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(_VERSIONS[settings.min_version])
    context.set_options(
        SSL.OP_NO_COMPRESSION
        | SSL.OP_CIPHER_SERVER_PREFERENCE
        | SSL.OP_NO_RENEGOTIATION
        | SSL.OP_SINGLE_ECDH_USE
    )
    context.set_cipher_list(settings.ciphers.encode("ascii"))
    # Needed for server-side session caching to work at all.
    context.set_session_id(b"edge")
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    offered = settings.alpn

    def select(connection, protocols):
        if acme_tls is not None and ACME_TLS_ALPN in protocols:
            raw = connection.get_servername()
            challenge = acme_tls(normalize_name(raw.decode("ascii", "replace"))) if raw else None
            if challenge is None:
                return SSL.NO_OVERLAPPING_PROTOCOLS
            connection.use_certificate(challenge.leaf)
            connection.use_privatekey(challenge.key)
            return ACME_TLS_ALPN
        for protocol in offered:
            if protocol in protocols:
                return protocol
        return SSL.NO_OVERLAPPING_PROTOCOLS

    context.set_alpn_select_callback(select)
    if certified is not None:
        context.use_certificate(certified.leaf)
        for extra in certified.chain[1:]:
            context.add_extra_chain_cert(extra)
        context.use_privatekey(certified.key)
        context.check_privatekey()
    return context


@implementer(IOpenSSLServerConnectionCreator)
class SNIConnectionCreator:
    """
    Serve the certificate ``select(name)`` returns, else ``default``.

    ``select`` runs inside the handshake, on the reactor thread.  Contexts
    are cached per :class:`CertifiedKey` object (weakly: a certificate removed
    from the directory lets its context go once no connection uses it).
    """

    _log = Logger()

    def __init__(
        self,
        select: Selector,
        default: CertifiedKey | None = None,
        settings: TLSSettings = TLSSettings(),
        acme_tls: Selector | None = None,
    ):
        self._select = select
        self._settings = settings
        self._acme_tls = acme_tls
        self._contexts: "weakref.WeakKeyDictionary[CertifiedKey, SSL.Context]" = (
            weakref.WeakKeyDictionary()
        )
        self.unknown_names = 0
        self._reported: set[str] = set()
        self.set_default(default)

    @property
    def settings(self) -> TLSSettings:
        return self._settings

    @property
    def default(self) -> CertifiedKey | None:
        return self._default

    def set_default(self, default: CertifiedKey | None) -> None:
        """Replace the certificate served without SNI or for unknown names."""
        base = make_context(self._settings, default, self._acme_tls)
        base.set_tlsext_servername_callback(self._servername)
        self._default = default
        self._base = base

    def context_for(self, certified: CertifiedKey) -> SSL.Context:
        context = self._contexts.get(certified)
        if context is None:
            context = make_context(self._settings, certified, self._acme_tls)
            self._contexts[certified] = context
        return context

    def serverConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        return SSL.Connection(self._base, None)

    def _servername(self, connection: SSL.Connection) -> None:
        raw = connection.get_servername()
        if not raw:
            return  # no SNI: the base context's default certificate (if any)
        try:
            name = normalize_name(raw.decode("ascii"))
        except UnicodeDecodeError:
            return
        try:
            certified = self._select(name)
        except Exception:
            # A bug in selection must not leak out as an OpenSSL alert
            # without a trace; serve the default and say why.
            self._log.failure("Choosing a certificate for {name} failed", name=name)
            certified = None
        if certified is None:
            self.unknown_names += 1
            if self._default is None and name not in self._reported:
                # Once per name: the operator's "why does this host fail?".
                if len(self._reported) < 1000:
                    self._reported.add(name)
                self._log.info(
                    "No certificate for SNI name {name} and no default certificate;"
                    " the handshake fails",
                    name=name,
                )
            return
        if certified is not self._default:
            connection.set_context(self.context_for(certified))


def _send_now(transport, data: bytes) -> None:
    """
    ``transport.write(data)``, but straight to the socket when nothing is queued.

    Twisted's TCP transport queues every write for the next reactor turn
    (two ``epoll_ctl`` calls and a dispatch); for the few hundred bytes of a
    handshake flight or a small response that is most of what TLS adds per
    request.  Whatever the socket does not take, and every transport that is
    not a plain idle TCP connection, goes through ``write`` as usual, so
    ordering and back-pressure are unchanged.
    """
    sock = getattr(transport, "socket", None)
    if (
        sock is not None
        and transport.connected
        and not transport.disconnecting
        and not getattr(transport, "_writeDisconnected", True)
        and not getattr(transport, "_tempDataBuffer", True)
        and getattr(transport, "offset", -1) == len(getattr(transport, "dataBuffer", b"x"))
    ):
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = 0  # the transport's own write will meet the error
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


class _TLSServerProtocol(TLSMemoryBIOProtocol):
    """
    Twisted's TLS transport with a handshake deadline, failure logging,
    immediate sends, ``TCP_NODELAY``, and OpenSSL called through pyOpenSSL's
    binding on the hot paths (an empty read is an error code, not a raised
    ``WantReadError``; ``tests/test_tls_transport.py`` pins the behaviour).

    Not :class:`~twisted.protocols.tls.BufferingTLSTransport`: its write
    aggregation costs a reactor turn per response, and edge's HTTP/1.1 proxy
    already joins each response into one write.
    """

    _timeout = None
    _failure_counted = False
    # ProtocolWrapper forwards unknown attributes to the TCP transport; code
    # that looks for a raw ``socket`` to write to must not find one here
    # (bytes written there would bypass TLS).
    socket = None

    def makeConnection(self, transport):
        # What TLSMemoryBIOProtocol.makeConnection does, done once: Twisted's
        # version declares the transport's interfaces one call per interface
        # and then again (with the factory registration) in
        # ProtocolWrapper.makeConnection.
        self._tlsConnection = self.factory._creatorCallable(self)
        self._appSendBuffer = []
        # A TLS exchange is several small writes in a row (a response, then
        # close_notify; session tickets after the handshake): with Nagle's
        # algorithm on, the second waits for the client's delayed ACK.
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except OSError:
                pass  # the socket is already gone; connectionLost follows
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        if self._connectWrapped:
            self.wrappedProtocol.makeConnection(self)
        self._checkHandshakeStatus()
        if not self._handshakeDone and self.connected:
            self._timeout = self.factory.reactor.callLater(
                self.factory.handshake_timeout, self._handshake_timed_out
            )

    if _lib is not None:

        def _flushSendBIO(self):
            # Everything OpenSSL has produced, in one write: pyOpenSSL's
            # bio_read raises WantReadError when the BIO is empty and
            # allocates a fresh buffer per call.
            bio = self._tlsConnection._from_ssl
            n = _BIO_read(bio, _scratch, _SCRATCH_SIZE)
            if n <= 0:
                return  # a memory BIO only fails when it is empty
            data = _buffer_of(_scratch, n)[:]
            while n == _SCRATCH_SIZE:
                n = _BIO_read(bio, _scratch, _SCRATCH_SIZE)
                if n <= 0:
                    break
                data += _buffer_of(_scratch, n)[:]
            _send_now(self.transport, data)

        def _checkHandshakeStatus(self):
            if self._aborted:
                return
            connection = self._tlsConnection
            ssl = connection._ssl
            result = _SSL_do_handshake(ssl)
            if result <= 0 and _SSL_get_error(ssl, result) == _WANT_READ:
                self._flushSendBIO()
                return
            try:
                # pyOpenSSL's own mapping: callback failures first, then the
                # OpenSSL error (returns quietly on success).
                connection._raise_ssl_error(ssl, result)
            except SSL.WantReadError:
                self._flushSendBIO()
            except SSL.Error:
                self._tlsShutdownFinished(Failure())
            else:
                self._handshakeDone = True
                if IHandshakeListener.providedBy(self.wrappedProtocol):
                    self.wrappedProtocol.handshakeCompleted()

        def _flushReceiveBIO(self):
            # TLSMemoryBIOProtocol's loop with SSL_read called directly: the
            # final "no more data" is an error code, not a raised
            # WantReadError, and the bytes land in the shared buffer.
            while not self._lostTLSConnection:
                connection = self._tlsConnection
                ssl = connection._ssl
                n = _SSL_read(ssl, _scratch, _SCRATCH_SIZE)
                if n > 0:
                    if not self._aborted:
                        ProtocolWrapper.dataReceived(self, _buffer_of(_scratch, n)[:])
                    continue
                if _SSL_get_error(ssl, n) == _WANT_READ:
                    break
                try:
                    connection._raise_ssl_error(ssl, n)
                except SSL.WantReadError:
                    break
                except SSL.ZeroReturnError:
                    # close_notify from the client: answer it, then close.
                    self._shutdownTLS()
                    self._tlsShutdownFinished(None)
                except SSL.Error:
                    self._tlsShutdownFinished(Failure())
                else:
                    break
            self._flushSendBIO()

        def _write(self, data):
            if self._lostTLSConnection:
                return
            if not isinstance(data, bytes):
                data = bytes(data)
            ssl = self._tlsConnection._ssl
            total = len(data)
            sent = 0
            while sent < total:
                chunk = data[sent : sent + 16384] if sent or total > 16384 else data
                n = _SSL_write(ssl, chunk, len(chunk))
                if n <= 0:
                    try:
                        self._tlsConnection._raise_ssl_error(ssl, n)
                    except SSL.WantReadError:
                        self._bufferedWrite(data[sent:])
                    except SSL.Error:
                        self._tlsShutdownFinished(Failure())
                    else:  # pragma: no cover - OpenSSL reported no error
                        self._bufferedWrite(data[sent:])
                    return
                sent += n
                self._flushSendBIO()

        def dataReceived(self, data):
            _BIO_write(self._tlsConnection._into_ssl, data, len(data))
            if not self._handshakeDone:
                self._checkHandshakeStatus()
                if not self._handshakeDone:
                    return
                if self._timeout is not None:
                    self._timeout.cancel()
                    self._timeout = None
            if self._appSendBuffer:
                self._unbufferPendingWrites()
            self._flushReceiveBIO()

    else:  # pragma: no cover

        def _flushSendBIO(self):
            try:
                data = self._tlsConnection.bio_read(2**17)
            except SSL.WantReadError:
                return
            _send_now(self.transport, data)

        def dataReceived(self, data):
            super().dataReceived(data)
            if self._timeout is not None and self._handshakeDone:
                self._timeout.cancel()
                self._timeout = None

    def _handshake_timed_out(self):
        self._timeout = None
        if not self._handshakeDone:
            self.factory.handshake_failed(self, "timed out", "timeout")
            self.abortConnection()

    def connectionLost(self, reason):
        if self._timeout is not None:
            self._timeout.cancel()
            self._timeout = None
        if self._handshakeDone or self._tlsConnection is None or self._failure_counted:
            pass
        elif self._reason is not None:
            self.factory.handshake_failed(self, _describe(self._reason), "error")
        else:
            self.factory.handshake_failed(self, "client closed during the handshake", "closed")
        super().connectionLost(reason)


class _StockTLSServerProtocol(_TLSServerProtocol):
    """
    The same transport on Twisted's and pyOpenSSL's public code paths only
    (``[http] speedups = false``, see :mod:`edge.http.speedups`): no direct
    OpenSSL calls, no direct socket sends; the handshake deadline, failure
    logging and ``TCP_NODELAY`` stay.
    """

    _flushReceiveBIO = TLSMemoryBIOProtocol._flushReceiveBIO
    _checkHandshakeStatus = TLSMemoryBIOProtocol._checkHandshakeStatus
    _write = TLSMemoryBIOProtocol._write

    def makeConnection(self, transport):
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except OSError:
                pass
        TLSMemoryBIOProtocol.makeConnection(self, transport)
        if not self._handshakeDone and self.connected:
            self._timeout = self.factory.reactor.callLater(
                self.factory.handshake_timeout, self._handshake_timed_out
            )

    def _flushSendBIO(self):
        TLSMemoryBIOProtocol._flushSendBIO(self)

    def dataReceived(self, data):
        TLSMemoryBIOProtocol.dataReceived(self, data)
        if self._timeout is not None and self._handshakeDone:
            self._timeout.cancel()
            self._timeout = None


def _describe(failure) -> str:
    value = failure.value
    if isinstance(value, SSL.Error) and value.args and isinstance(value.args[0], list):
        parts = [str(item[2]) for item in value.args[0] if len(item) > 2]
        if parts:
            return "; ".join(parts)
    return str(value) or type(value).__name__


class TLSServerFactory(TLSMemoryBIOFactory):
    """
    TLS around ``wrapped`` with :class:`SNIConnectionCreator` certificates.

    Handshakes that do not finish within ``handshake_timeout`` seconds are
    aborted; failures are logged at debug level (scanners and old clients
    make many) and counted in ``handshake_failures``.
    """

    protocol = _TLSServerProtocol
    _log = Logger()

    def __init__(
        self,
        creator: IOpenSSLServerConnectionCreator,
        wrapped,
        reactor,
        handshake_timeout: float = 10.0,
    ):
        super().__init__(creator, False, wrapped, clock=reactor)
        if _lib is None or not speedups.enabled("openssl_direct"):
            self.protocol = _StockTLSServerProtocol
        self.reactor = reactor
        self.handshake_timeout = handshake_timeout
        self.handshake_failures = 0

    def handshake_failed(self, protocol: _TLSServerProtocol, reason: str, kind: str) -> None:
        protocol._failure_counted = True
        self.handshake_failures += 1
        metrics.tls_handshake_failures.labels(kind).inc()
        name = None
        connection = protocol._tlsConnection
        if connection is not None:
            raw = connection.get_servername()
            name = raw.decode("ascii", "replace") if raw else None
        peer = protocol.transport.getPeer() if protocol.transport else None
        self._log.debug(
            "TLS handshake with {peer} (SNI {name}) failed: {reason}",
            peer=getattr(peer, "host", peer),
            name=name or "none",
            reason=reason,
        )
