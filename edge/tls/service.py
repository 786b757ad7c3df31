"""
The TLS service: certificates from the directory and the built-in CA, kept
current while edge runs.

The directory is polled (a ``stat`` of each file every ``poll_interval``
seconds, cheap) and re-read when anything changed, or at once on SIGHUP
(read in a pool thread by :meth:`TLSService.read_reload`, taken on the
reactor thread by :meth:`TLSService.apply_reload`) or :meth:`TLSService.reload`.
A re-read builds a new index and swaps it in one assignment: handshakes in
progress and open connections keep the context they
started with.  If the directory cannot be listed, the last good index stays.

The built-in CA issues only for names the current snapshot routes, so a
client cannot make edge mint certificates for arbitrary SNI names.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import signal
import threading
from typing import Callable

from twisted.application.service import Service
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from edge.config import ConfigError, TLSConfig
from edge.snapshot import Snapshot
from edge.tls.ca import CA_CERT_FILE, CA_KEY_FILE, CAError, create_ca, load_ca, write_ca
from edge.tls.issuer import ICertificateIssuer, InternalCAIssuer
from edge.tls.sni import SNIConnectionCreator, TLSServerFactory, TLSSettings
from edge.tls.store import (
    CertificateIndex,
    CertifiedKey,
    FileProblem,
    StoreError,
    directory_state,
    load_bundle,
    normalize_name,
    scan,
)

__all__ = ["CertificateRead", "TLSService", "make_tls_service", "routed_names", "DEFAULT_NAME"]

# The name on the internal CA's fallback certificate (RFC 2606: never real).
DEFAULT_NAME = "edge-default.invalid"


# Read once at start: the CA, and settings baked into the OpenSSL contexts.
_RESTART_KEYS = ("internal_ca", "state_dir", "ca_certificate", "ca_key", "min_version", "http2")


def routed_names(snapshot: Snapshot) -> frozenset[str]:
    """Every host name (``*.x`` included) routers match or list as TLS domains."""
    names = set()
    for router in snapshot.routers:
        names.update(router.hosts)
        if router.tls is not None:
            names.update(router.tls.domains)
    from edge.tcp.rules import sni_names

    for tcp in snapshot.tcp_routers:  # TCP routers whose TLS edge terminates
        if tcp.tls is not None and not tcp.tls.passthrough:
            names.update(sni_names(tcp.rule) | set(tcp.tls.domains))
    return frozenset(normalize_name(n) for n in names if n)


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@implementer(IOpenSSLServerConnectionCreator)
class TLSService(Service):
    """
    Owns the certificate index, the issuer and the connection creator.

    Usable directly as a Twisted server connection creator; :meth:`wrap`
    adds the handshake deadline and failure logging on top.
    """

    _log = Logger()
    name = "tls"

    def __init__(
        self,
        config: TLSConfig,
        publisher,
        reactor,
        issuer: ICertificateIssuer | None = None,
        acme=None,
        poll_interval: float = 2.0,
        handle_sighup: bool = False,
        now: Callable[[], datetime.datetime] = _utcnow,
    ):
        self.config = config
        self._publisher = publisher
        self._reactor = reactor
        self.issuer = issuer
        # edge.acme.service.ACMEService: lookup(name), board.alpn_certificate(name).
        self.acme = acme
        self._poll_interval = poll_interval
        self._handle_sighup = handle_sighup
        self._now = now
        self.index = CertificateIndex()
        self.problems: list[FileProblem] = []
        self.allowed: frozenset[str] = frozenset()
        self._cache: dict = {}
        self._state = None
        self._unsubscribe = None
        self._poll = None
        self._previous_handler = None
        self._sighup_reads = None
        self.reloads = 0
        self.creator = SNIConnectionCreator(
            self.select,
            None,
            TLSSettings(min_version=config.min_version, http2=config.http2),
            acme_tls=acme.board.alpn_certificate if acme is not None else None,
        )
        self._rescan(force=True)

    # -- what other parts use -------------------------------------------

    def wrap(self, factory) -> TLSServerFactory:
        """``factory`` behind TLS with this service's certificates."""
        return TLSServerFactory(
            self.creator, factory, self._reactor, self.config.handshake_timeout
        )

    def serverConnectionForTLS(self, tlsProtocol):
        return self.creator.serverConnectionForTLS(tlsProtocol)

    def root_certificate_pem(self) -> bytes | None:
        """The built-in CA's root (PEM) for users to trust, or ``None`` when it is off."""
        return self.issuer.root_certificate_pem() if self.issuer is not None else None

    def select(self, name: str) -> CertifiedKey | None:
        """The certificate for SNI ``name``: directory first, then ACME, then the issuer."""
        found = self.index.lookup(name)
        if found is None and self.acme is not None:
            found = self.acme.lookup(name)
        if found is not None or self.issuer is None:
            return found
        if name in self.allowed:
            return self.issuer.certificate_for(name)
        _, dot, parent = name.partition(".")
        if dot and f"*.{parent}" in self.allowed:
            return self.issuer.certificate_for(f"*.{parent}")
        return None

    def reload(self, config=None) -> None:
        """
        Re-read the directory now, on the calling thread (edge's SIGHUP
        handler instead calls :meth:`read_reload` in a pool thread and
        :meth:`apply_reload` on the reactor thread).  The certificate
        directory and default certificate change at once; CA and protocol
        settings need a restart.
        """
        self.apply_reload(self.read_reload(config))

    def read_reload(self, config=None) -> "CertificateRead":
        """
        Read what a reload takes (the directory's files, a default
        certificate file) and change nothing: safe in a pool thread.
        ``config`` is the whole re-read :class:`edge.config.Config`, or None
        to re-read with the running settings.
        """
        tls, fixed = self.config, ()
        if config is not None and config.tls != self.config:
            fixed = tuple(k for k in _RESTART_KEYS if getattr(config.tls, k) != getattr(self.config, k))
            tls = dataclasses.replace(config.tls, **{k: getattr(self.config, k) for k in fixed})
        directory = tls.certificates
        state = scanned = None
        if directory:
            try:
                state = directory_state(directory)
                scanned = scan(directory, self._now(), self._cache)
            except OSError as e:
                return CertificateRead(tls, fixed, error=e.strerror or str(e))
        path = _default_file(tls)
        default, problem = None, ""
        if path is not None and not any(e.source == path for e in (scanned[0].entries if scanned else ())):
            current = self.creator.default
            if current is None or current.source != path or current.not_after <= self._now():
                try:
                    default = load_bundle(path, now=self._now())
                except StoreError as e:
                    problem = str(e)
        return CertificateRead(tls, fixed, state, "", scanned, path, default, problem)

    def apply_reload(self, read: "CertificateRead") -> None:
        """Take what :meth:`read_reload` read; on the reactor thread."""
        if read.restart_keys:
            self._log.warn(
                "TLS settings {keys} take effect on restart", keys=", ".join(sorted(read.restart_keys))
            )
        if read.config != self.config:
            self.config = read.config
            self._state = None
            if self.running:
                self._start_poll()
        self._log.info("Reloading TLS certificates")
        if read.error:
            self._log.error(
                "Cannot read the certificate directory {directory}: {error};"
                " keeping the {count} certificates loaded before",
                directory=read.config.certificates,
                error=read.error,
                count=len(self.index),
            )
            self._state = "error"
            return
        if read.scanned is not None:
            # A poll that loaded in between is redone by the next poll: the
            # state kept here is the one this read saw.
            self._state = read.state
            self._take(read.config.certificates, *read.scanned)
        self._update_default(read)

    # -- service ----------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._unsubscribe = self._publisher.subscribe(self._snapshot)
        self._start_poll()
        if self._handle_sighup and threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.getsignal(signal.SIGHUP)
            signal.signal(signal.SIGHUP, self._sighup)

    def _start_poll(self) -> None:
        wanted = bool(self.config.certificates or self.issuer) and self._poll_interval > 0
        if wanted and self._poll is None:
            self._poll = LoopingCall(self._rescan)
            self._poll.clock = self._reactor
            self._poll.start(self._poll_interval, now=False)

    def stopService(self):
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        self._poll = None
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._previous_handler is not None:
            signal.signal(signal.SIGHUP, self._previous_handler)
            self._previous_handler = None
        return super().stopService()

    def _sighup(self, signum, frame) -> None:
        self._reactor.callFromThread(self._reload_in_thread)
        previous = self._previous_handler
        if callable(previous):
            previous(signum, frame)

    def _reload_in_thread(self) -> None:
        # This service's own SIGHUP (handle_sighup, without edge's ReloadService):
        # the files are read in the reactor's pool, one reload at a time.
        if self._sighup_reads is None:
            from edge.lifecycle import LatestRead

            self._sighup_reads = LatestRead(
                self._reactor, self._reactor.getThreadPool(), self.read_reload, self.apply_reload,
                lambda failure: self._log.failure("Reloading TLS certificates failed", failure),
            )
        self._sighup_reads.request()

    # -- internals --------------------------------------------------------

    def _snapshot(self, snapshot: Snapshot) -> None:
        self.allowed = routed_names(snapshot)
        if isinstance(self.issuer, InternalCAIssuer):
            self.issuer.forget(self.allowed)

    def _rescan(self, force: bool = False) -> None:
        directory = self.config.certificates
        if directory:
            try:
                state = directory_state(directory)
            except OSError as e:
                if force or self._state != "error":
                    self._log.error(
                        "Cannot read the certificate directory {directory}: {error};"
                        " keeping the {count} certificates loaded before",
                        directory=directory,
                        error=e.strerror,
                        count=len(self.index),
                    )
                self._state = "error"
                return
            expired = any(e.not_after <= self._now() for e in self.index.entries)
            if state != self._state or force or expired:
                self._state = state
                self._load(directory)
        if force or (self.issuer is not None and not self.config.default_certificate):
            # The internal CA's fallback leaf renews itself here.
            self._update_default()

    def _load(self, directory: str) -> None:
        try:
            scanned = scan(directory, self._now(), self._cache)
        except OSError as e:
            self._log.error(
                "Cannot read the certificate directory {directory}: {error}",
                directory=directory,
                error=e.strerror,
            )
            return
        self._take(directory, *scanned)
        self._update_default()

    def _take(self, directory: str, index: CertificateIndex, problems: list[FileProblem], cache: dict) -> None:
        self.index, self.problems, self._cache = index, problems, cache
        self.reloads += 1
        for problem in problems:
            self._log.warn(
                "Skipping certificate file {path}: {problem}",
                path=problem.path,
                problem=problem.message,
            )
        self._log.info(
            "Serving {count} certificates from {directory} ({names} names, {problems} files skipped)",
            count=len(index),
            directory=directory,
            names=len(index.exact) + len(index.wildcard),
            problems=len(problems),
        )

    def _update_default(self, read: "CertificateRead | None" = None) -> None:
        default = self._default_certificate(read)
        if default is not self.creator.default:
            self.creator.set_default(default)

    def _default_certificate(self, read: "CertificateRead | None" = None) -> CertifiedKey | None:
        """With ``read``, a default certificate file was looked at (and read) in its thread."""
        wanted = self.config.default_certificate
        if wanted:
            path = read.default_path if read is not None else _default_file(self.config)
            if path is not None:
                current = self.creator.default
                if current is not None and current.source == path and current.not_after > self._now():
                    return current
                for entry in self.index.entries:
                    if entry.source == path:
                        return entry
                try:
                    if read is not None:
                        if read.default_error:
                            raise StoreError(read.default_error)
                        if read.default is not None:
                            return read.default
                    return load_bundle(path, now=self._now())
                except StoreError as e:
                    self._log.error(
                        "The default certificate {path} cannot be used: {problem}",
                        path=path,
                        problem=e,
                    )
                    return None
            found = self.index.lookup(normalize_name(wanted))
            if found is None:
                self._log.warn(
                    "tls.default_certificate {wanted!r} is neither a file nor a name"
                    " in the certificate directory; no default certificate",
                    wanted=wanted,
                )
            return found
        if self.issuer is not None:
            return self.issuer.certificate_for(DEFAULT_NAME)
        return None


def _default_file(config: TLSConfig) -> str | None:
    """The file ``tls.default_certificate`` names (relative to the directory first), if it exists."""
    wanted = config.default_certificate
    if not wanted:
        return None
    path = wanted
    if not os.path.isabs(path) and config.certificates:
        candidate = os.path.join(config.certificates, path)
        if os.path.exists(candidate):
            path = candidate
    return path if os.path.exists(path) else None


@dataclasses.dataclass(frozen=True)
class CertificateRead:
    """What :meth:`TLSService.read_reload` read, for :meth:`TLSService.apply_reload`."""

    config: TLSConfig  # the settings to run with (restart-only keys kept)
    restart_keys: tuple[str, ...] = ()
    state: object = None  # the directory's state as read
    error: str = ""  # why the directory could not be read
    scanned: tuple | None = None  # scan()'s (index, problems, cache)
    default_path: str | None = None
    default: CertifiedKey | None = None  # the default certificate file, when read
    default_error: str = ""


def _load_or_create_ca(config: TLSConfig):
    cert_path = config.ca_certificate or os.path.join(config.state_dir, "ca", CA_CERT_FILE)
    key_path = config.ca_key or os.path.join(config.state_dir, "ca", CA_KEY_FILE)
    explicit = bool(config.ca_certificate or config.ca_key)
    if not (os.path.exists(cert_path) or os.path.exists(key_path)):
        if explicit:
            # Never make up a CA when the user pointed at a shared one: every
            # instance would then sign with a different root.
            raise ConfigError(
                f"tls.ca_certificate/tls.ca_key: {cert_path} and {key_path} do not exist"
                " (create them once with `python -m edge.tls init-ca DIR`)"
            )
        ca = create_ca()
        write_ca(ca, cert_path, key_path)
        TLSService._log.warn(
            "Created a new internal CA in {path}. If several edge instances serve the"
            " same names, create the CA once with `python -m edge.tls init-ca` and"
            " give every instance the same files (tls.ca_certificate, tls.ca_key).",
            path=os.path.dirname(cert_path),
        )
        return ca
    try:
        return load_ca(cert_path, key_path)
    except CAError as e:
        raise ConfigError(f"tls: {e}") from None


def make_tls_service(config, publisher, reactor, **kwargs) -> TLSService:
    """The TLS service for ``config`` (a whole :class:`edge.config.Config`)."""
    tls: TLSConfig = config.tls
    issuer = None
    if tls.internal_ca:
        ca = _load_or_create_ca(tls)
        issuer = InternalCAIssuer(ca, os.path.join(tls.state_dir, "issued"))
    if tls.certificates and not os.path.isdir(tls.certificates):
        TLSService._log.error(
            "tls.certificates {path} is not a directory (yet); it is polled and read"
            " once it appears",
            path=tls.certificates,
        )
    if not (tls.certificates or tls.internal_ca or tls.default_certificate or kwargs.get("acme")):
        TLSService._log.warn(
            "TLS entry points are configured but there are no certificates"
            " (set tls.certificates or tls.internal_ca): every handshake will fail"
        )
    return TLSService(tls, publisher, reactor, issuer=issuer, **kwargs)
