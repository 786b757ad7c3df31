"""
The DNS server: one :class:`Responder` behind UDP and TCP listeners.

The responder turns query bytes into response bytes.  Its fast path parses
only the header and question (:func:`edge.dns.wire.parse_query`), finds a
pre-encoded answer in the snapshot's :class:`~edge.dns.table.AnswerTable` or
the forwarding cache, and glues header, question and answer together.
Anything unusual goes through twisted.names' message parser, and names edge
does not own go upstream through :class:`~edge.dns.forward.Forwarder`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import struct

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol, Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.names import dns
from twisted.protocols.basic import Int16StringReceiver
from twisted.protocols.policies import TimeoutMixin

from edge import metrics
from edge.cidr import Networks
from edge.config import LISTEN_BACKLOG, DNSConfig
from edge.dns.forward import SERVFAIL, Cache, Forwarder, parse_upstream, resolv_conf_servers
from edge.dns.hosts import HostEntry, parse_hosts
from edge.dns.table import AnswerTable, Entry, build_table
from edge.dns.wire import (
    MAX_UDP,
    BadPacket,
    BadVersion,
    NotImplementedOpcode,
    Query,
    name_bytes,
    opt_record,
    parse_query,
    parse_slow,
)
from edge.snapshot import EMPTY, Snapshot

__all__ = [
    "Responder",
    "DNSDatagramServer",
    "DNSStreamFactory",
    "DNSService",
    "make_dns_service",
    "ThrottledWarning",
]

_ONE_QUESTION = b"\x00\x01\x00\x00\x00\x00"
_OPT = opt_record(False)
_OPT_DO = opt_record(True)
_TRUNCATED_COUNTS = b"\x00\x01\x00\x00\x00\x00\x00\x00"
_TRUNCATED_COUNTS_OPT = b"\x00\x01\x00\x00\x00\x00\x00\x01"
_REFUSED = Entry(dns.EREFUSED, 0, 0, (b"",), aa=False)
# Zone transfers: edge's names are not a zone file to copy, and forwarding one makes no sense.
_NO_TRANSFER = frozenset((dns.AXFR, dns.IXFR))
_DOCKER_EMBEDDED_DNS = ipaddress.ip_address("127.0.0.11")
_RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
_QTYPES = {
    t: dns.QUERY_TYPES.get(t) or dns.EXT_QUERIES.get(t)
    for t in (1, 2, 5, 6, 12, 15, 16, 28, 33, 35, 43, 46, 48, 64, 65, 255)
}


def _empty_table() -> AnswerTable:
    return AnswerTable({}, {}, None, 5, 0)


_TAILSCALE = ipaddress.ip_network("100.64.0.0/10")


def refusal_hint(host: str) -> str:
    """Why a client an admin expects to be allowed may not be, in the default policy."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return ""
    if ip.version == 4 and ip in _TAILSCALE:
        return " (a Tailscale/CGNAT 100.64.0.0/10 address: add it to dns.allow_recursion)"
    if ip.version == 6 and ip.is_global:
        return " (a global IPv6 address: add your prefix to dns.allow_recursion)"
    return ""


class ThrottledWarning:
    """
    One warning per ``interval`` for events a client can repeat at will.

    The first occurrence is logged at once, later ones as a count in the next
    line after ``interval`` seconds, so a flood costs a log line per
    interval rather than one per packet or connection.
    """

    def __init__(self, log: Logger, clock, interval: float, format: str):
        self._log = log
        self._clock = clock
        self.interval = interval
        self._format = format + " ({count} since the last report, {total} in all)"
        self.total = 0
        self._unlogged = 0
        self._logged_at: float | None = None

    def __call__(self, **fields) -> None:
        self.total += 1
        self._unlogged += 1
        now = self._clock.seconds()
        if self._logged_at is None or now - self._logged_at >= self.interval:
            self._log.warn(self._format, count=self._unlogged, total=self.total, **fields)
            self._unlogged = 0
            self._logged_at = now


class Responder:
    """
    Query bytes in, response bytes (or a Deferred of them, or ``None``) out.

    Holds the current table (swapped whole per snapshot), the forwarding
    cache and the recursion policy; counts what it answers.
    """

    _log = Logger()
    BAD_LOG_INTERVAL = 10.0
    REFUSED_LOG_INTERVAL = 60.0

    def __init__(self, config: DNSConfig, reactor, forwarder: Forwarder):
        self._reactor = reactor
        self.table: AnswerTable = _empty_table()
        self.forwarder = forwarder
        self.cache: Cache = forwarder.cache
        self._networks = Networks()
        self._allowed: dict[str, bool] = {}
        self.set_allow_recursion(config.allow_recursion)
        self._counts: dict[tuple[int, int, str], int] = {}
        self._cache_hits = 0
        self._bad_warning = ThrottledWarning(
            self._log, reactor, self.BAD_LOG_INTERVAL, "Malformed DNS packet from {client}: {reason}"
        )
        self._refused_warning = ThrottledWarning(
            self._log, reactor, self.REFUSED_LOG_INTERVAL,
            "Refused to forward {name} for {client}: not in dns.allow_recursion{hint}",
        )

    def set_allow_recursion(self, cidrs) -> None:
        self._networks = Networks(cidrs)
        self._allowed = {}

    def set_forwarder(self, forwarder: Forwarder) -> None:
        self.forwarder = forwarder
        self.cache = forwarder.cache

    # -- the query path ----------------------------------------------------

    def handle(self, data: bytes, host: str, tcp: bool = False):
        """The response to ``data`` from ``host``: bytes, a Deferred of bytes, or ``None``."""
        # Fast path: a plain query (one question, maybe a bare OPT) whose answer
        # is in the table or the cache.  The name is taken up to the first zero
        # byte without walking its labels: a hit proves it well formed, since
        # every key was made from a valid name; a miss takes the full parse.
        if data[4:10] == _ONE_QUESTION and not data[2] & 0xF8:
            end = data.find(b"\x00", 12) + 1
            if end:
                rest = end + 4
                size = len(data)
                ar = data[10:12]
                if ar == b"\x00\x00" and rest == size:
                    opt = None
                elif (
                    ar == b"\x00\x01"
                    and size >= rest + 11
                    and data[rest : rest + 3] == b"\x00\x00\x29"
                    and data[rest + 6] == 0
                    and size == rest + 11 + (data[rest + 9] << 8 | data[rest + 10])
                ):
                    # EDNS options (cookies, padding...) are ignored, as RFC 6891 allows.
                    opt = _OPT_DO if data[rest + 7] & 0x80 else _OPT
                else:
                    opt = False  # not fast-path material
                if opt is not False:
                    key = data[12:end].lower() + data[end:rest]
                    entry = self.table.exact.get(key)
                    if entry is not None and entry.external is None:
                        source = "auth"
                        tail = entry.tail()
                        ra = self._allowed.get(host)
                        if ra is None:
                            ra = self._recursion(host)
                    else:
                        # Cache keys were made from valid names, so a hit proves
                        # this one valid before the table is asked about it.
                        entry = self.cache.get(key) if self._allowed.get(host) else None
                        if entry is not None and self.table.foreign(key[:-4]):
                            source = "cache"
                            ra = True
                            tail = entry.tails[0]
                        else:
                            entry = None
                    if entry is not None:
                        flags = bytes(
                            (
                                (0x84 if entry.aa else 0x80) | (data[2] & 0x01),
                                (0x80 if ra else 0) | (data[3] & 0x10) | entry.rcode,
                            )
                        )
                        if opt is None:
                            out = data[0:2] + flags + entry.counts + data[12:rest] + tail
                            limit = 512
                        else:
                            out = data[0:2] + flags + entry.counts_opt + data[12:rest] + tail + opt
                            limit = data[rest + 3] << 8 | data[rest + 4]
                            limit = MAX_UDP if limit > MAX_UDP else 512 if limit < 512 else limit
                        if tcp or len(out) <= limit:
                            ck = (data[end] << 8 | data[end + 1], entry.rcode, source)
                            counts = self._counts
                            counts[ck] = counts.get(ck, 0) + 1
                            if source == "cache":
                                self._cache_hits += 1
                            return out
        return self._handle(data, host, tcp)

    def _handle(self, data: bytes, host: str, tcp: bool):
        q = parse_query(data)
        if q is None:
            try:
                q = parse_slow(data)
            except NotImplementedOpcode:
                return self._header_only(data, dns.ENOTIMP)
            except BadVersion:
                return self._badvers(data)
            except BadPacket as e:
                self._bad(host, str(e))
                return self._header_only(data, dns.EFORMAT) if e.formerr else None
        if q.qtype in _NO_TRANSFER:
            self._count(q.qtype, dns.EREFUSED, "refused")
            return self._build(q, _REFUSED, b"", self._recursion(host), tcp)
        entry = self.table.exact.get(q.key)
        if entry is None:
            entry = self.table.lookup(q.name, q.qtype, q.qclass)
            if entry is None:
                return self._forward(q, host, tcp)
        if entry.external is not None:
            return self._external(q, entry, host, tcp)
        self._count(q.qtype, entry.rcode, "auth")
        return self._build(q, entry, entry.tail(), self._recursion(host), tcp)

    def _build(self, q: Query, entry: Entry, tail: bytes, ra: bool, tcp: bool) -> bytes:
        flags = bytes(
            (
                (0x84 if entry.aa else 0x80) | (q.flags[0] & 0x01),
                (0x80 if ra else 0) | (q.flags[1] & 0x10) | entry.rcode,
            )
        )
        edns = q.edns
        if edns is None:
            out = q.ident + flags + entry.counts + q.question + tail
            if tcp or len(out) <= 512:
                return out
            return q.ident + bytes((flags[0] | 0x02, flags[1])) + _TRUNCATED_COUNTS + q.question
        opt = _OPT_DO if edns[1] else _OPT
        out = q.ident + flags + entry.counts_opt + q.question + tail + opt
        if tcp or len(out) <= max(512, min(edns[0], MAX_UDP)):
            return out
        return q.ident + bytes((flags[0] | 0x02, flags[1])) + _TRUNCATED_COUNTS_OPT + q.question + opt

    def _forward(self, q: Query, host: str, tcp: bool):
        if not self._recursion(host):
            self._count(q.qtype, dns.EREFUSED, "refused")
            self._refused_warning(
                client=host, name=name_bytes(q.name).decode("ascii", "replace"), hint=refusal_hint(host)
            )
            return self._build(q, _REFUSED, b"", False, tcp)
        entry = self.cache.get(q.key)
        if entry is not None:
            self._cache_hits += 1
            self._count(q.qtype, entry.rcode, "cache")
            return self._build(q, entry, entry.tails[0], True, tcp)
        d = self.forwarder.lookup(q.key, q.name, q.qtype, q.qclass)
        d.addCallback(self._forwarded, q, tcp)
        return d

    def _forwarded(self, item, q: Query, tcp: bool) -> bytes:
        entry = SERVFAIL if item is None else item.current(self._reactor.seconds())
        self._count(q.qtype, entry.rcode, "upstream")
        return self._build(q, entry, entry.tails[0], True, tcp)

    def _external(self, q: Query, entry: Entry, host: str, tcp: bool):
        """A CNAME out of edge's names: resolve its target upstream and answer whole."""
        if not self._recursion(host):
            self._count(q.qtype, entry.rcode, "auth")
            return self._build(q, entry, entry.tail(), False, tcp)
        ext = entry.external
        key = ext.target + q.key[len(q.name) :]
        d = self.forwarder.lookup(key, ext.target, q.qtype, q.qclass)

        def combine(item) -> bytes:
            if item is None:
                combined = Entry(dns.ESERVER, ext.count, 0, (ext.chain,))
            else:
                rest = item.full(self._reactor.seconds())
                an, ns, ar = struct.unpack("!HHH", rest.counts[2:8])
                combined = Entry(item.rcode, ext.count + an, ns, (ext.chain + rest.tails[0],), ar=ar)
            self._count(q.qtype, combined.rcode, "auth")
            return self._build(q, combined, combined.tails[0], True, tcp)

        return d.addCallback(combine)

    # -- errors --------------------------------------------------------------

    def _header_only(self, data: bytes, rcode: int) -> bytes | None:
        """FORMERR/NOTIMP: the query's ID and opcode back, no sections."""
        if len(data) < 12 or data[2] & 0x80:
            return None
        self._count(0, rcode, "error")
        return data[0:2] + bytes((0x80 | (data[2] & 0x79), rcode)) + b"\x00" * 8

    def _badvers(self, data: bytes) -> bytes | None:
        """RFC 6891: an unknown EDNS version gets BADVERS (extended rcode 1) and our OPT."""
        self._count(0, 16, "error")
        return (
            data[0:2] + bytes((0x80 | (data[2] & 0x79), 0)) + b"\x00\x00\x00\x00\x00\x00\x00\x01"
            + opt_record(False, ext_rcode=1)
        )

    @property
    def bad_packets(self) -> int:
        return self._bad_warning.total

    def _bad(self, host: str, reason: str) -> None:
        """Count a malformed packet; log the first and then one summary line per interval."""
        metrics.dns_bad_packets.inc()
        self._bad_warning(client=host, reason=reason)

    # -- policy and counting ------------------------------------------------

    def _recursion(self, host: str) -> bool:
        allowed = self._allowed.get(host)
        if allowed is None:
            allowed = host in self._networks
            if len(self._allowed) >= 65536:
                self._allowed.clear()
            self._allowed[host] = allowed
        return allowed

    def _count(self, qtype: int, rcode: int, source: str) -> None:
        key = (qtype, rcode, source)
        self._counts[key] = self._counts.get(key, 0) + 1

    def flush_metrics(self) -> None:
        """Move the batched counts into the Prometheus counters (once a second)."""
        counts, self._counts = self._counts, {}
        for (qtype, rcode, source), n in counts.items():
            metrics.dns_queries.labels(
                _QTYPES.get(qtype) or "other", _RCODES.get(rcode, str(rcode)), source
            ).inc(n)
        if self._cache_hits:
            metrics.dns_cache_hits.inc(self._cache_hits)
            self._cache_hits = 0


class DNSDatagramServer(DatagramProtocol):
    """
    Answers on one UDP port.

    Replies go straight to the socket's ``sendto``: ``Port.write`` checks the
    address is an IP literal several times per datagram, which costs more
    than answering the query.  Test transports without a socket get ``write``.
    """

    _log = Logger()
    noisy = False

    def __init__(self, responder: Responder):
        self.responder = responder
        self._sendto = None
        self.send_errors = 0

    def startProtocol(self) -> None:
        sock = getattr(self.transport, "socket", None)
        self._sendto = sock.sendto if sock is not None else self.transport.write

    def stopProtocol(self) -> None:
        self._sendto = None

    def datagramReceived(self, data: bytes, addr) -> None:
        try:
            out = self.responder.handle(data, addr[0])
        except Exception:
            self._log.failure("DNS query from {client} failed", client=addr[0])
            return
        if out is None:
            return
        if type(out) is bytes:
            self._send(out, addr)
        else:
            out.addCallback(self._send, addr).addErrback(
                lambda f: self._log.failure("DNS answer to {client} failed", f, client=addr[0])
            )

    def _send(self, out: bytes | None, addr) -> None:
        if out is None or self._sendto is None:
            return
        try:
            self._sendto(out, addr)
        except OSError as e:
            # A full socket buffer or a vanished client: the client retries.
            self.send_errors += 1
            if self.send_errors == 1 or self.send_errors % 1000 == 0:
                self._log.warn(
                    "Cannot send DNS answer to {client}: {error} ({count} so far)",
                    client=addr[0],
                    error=e,
                    count=self.send_errors,
                )


class DNSStreamProtocol(Int16StringReceiver, TimeoutMixin):
    """
    DNS over TCP (RFC 7766): length-prefixed messages, answered as they complete.

    Back-pressure: the protocol is its transport's streaming producer, so once
    the answers a client has not read fill the transport's buffer, edge stops
    reading that connection and stops answering the queries already read
    (``Int16StringReceiver`` holds them while ``paused``) until the client
    catches up; forwarded questions in flight are capped the same way.  A
    client that never reads is closed by the idle timeout.  Output per
    connection stays near the transport's buffer size plus what is in flight.
    """

    _log = Logger()
    _counted = False
    _write_full = False
    _in_flight = 0
    _receiving = False

    def connectionMade(self) -> None:
        factory = self.factory
        if factory.open >= factory.max_connections:
            metrics.dns_tcp_refused.inc()
            factory.refused(client=self.transport.getPeer().host, open=factory.open)
            self.transport.abortConnection()
            return
        factory.open += 1
        self._counted = True
        self._host = self.transport.getPeer().host
        self.transport.registerProducer(self, True)
        self.setTimeout(factory.idle_timeout)

    def stringReceived(self, data: bytes) -> None:
        self.resetTimeout()
        try:
            out = self.factory.responder.handle(data, self._host, tcp=True)
        except Exception:
            self._log.failure("DNS query from {client} failed", client=self._host)
            self.transport.loseConnection()
            return
        if out is None:
            # Not even a header: nothing sensible follows on this stream.
            self.transport.loseConnection()
        elif type(out) is bytes:
            self.sendString(out)
        else:
            self._in_flight += 1
            out.addCallback(self._send)
            self._reading()

    def dataReceived(self, data: bytes) -> None:
        self._receiving = True
        try:
            super().dataReceived(data)
        finally:
            self._receiving = False

    def _send(self, out: bytes | None) -> None:
        self._in_flight -= 1
        if out is not None and self.transport.connected:
            self.sendString(out)
        self._reading()

    # -- back-pressure: IPushProducer for the transport -------------------------

    def pauseProducing(self) -> None:
        """The transport's write buffer is full: the client is not reading."""
        self._write_full = True
        self._reading()

    def resumeProducing(self) -> None:
        self._write_full = False
        self._reading()

    def stopProducing(self) -> None:
        self._write_full = True

    def _reading(self) -> None:
        """Read and answer only while the client keeps up."""
        stop = self._write_full or self._in_flight >= self.factory.max_in_flight
        if stop and not self.paused:
            self.paused = True
            metrics.dns_tcp_paused.inc()
            self.factory.paused(client=self._host)
            if self.transport.connected:
                self.transport.pauseProducing()
        elif not stop and self.paused:
            self.paused = False
            if self.transport.connected:
                self.transport.resumeProducing()
                if not self._receiving:  # else the frame loop on the stack goes on
                    self.dataReceived(b"")  # the queries read before the pause

    def timeoutConnection(self) -> None:
        self.transport.abortConnection()

    def connectionLost(self, reason=None) -> None:
        self.setTimeout(None)
        if self._counted:
            self.factory.open -= 1
            self._counted = False


class DNSStreamFactory(Factory):
    protocol = DNSStreamProtocol
    noisy = False
    _log = Logger()
    LOG_INTERVAL = 10.0

    def __init__(
        self,
        responder: Responder,
        reactor,
        max_connections: int = 256,
        idle_timeout: float = 10.0,
        max_in_flight: int = 32,
    ):
        self.responder = responder
        self.reactor = reactor
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        # Forwarded questions one connection may have waiting upstream.
        self.max_in_flight = max_in_flight
        self.open = 0
        self.refused = ThrottledWarning(
            self._log, reactor, self.LOG_INTERVAL,
            "Refusing DNS TCP connection from {client}: {open} already open",
        )
        self.paused = ThrottledWarning(
            self._log, reactor, self.LOG_INTERVAL,
            "DNS TCP client {client} is not reading its answers; not reading its queries until it does",
        )

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        protocol.callLater = self.reactor.callLater  # TimeoutMixin's clock
        return protocol


class DNSService(MultiService):
    """
    Listeners on every ``dns.interfaces`` address (UDP and TCP), the table
    rebuilt per snapshot, the hosts file watched, metrics flushed.
    """

    _log = Logger()
    HOSTS_POLL = 2.0

    def __init__(self, config: DNSConfig, publisher, reactor, resolv_conf: str = "/etc/resolv.conf"):
        super().__init__()
        self.config = config
        self._publisher = publisher
        self._reactor = reactor
        self._resolv_conf = resolv_conf
        servers = self._upstreams(config, resolv_conf)
        cache = Cache(config.cache_size, reactor)
        self.forwarder = Forwarder(servers, config.upstream_timeout, reactor, cache)
        self.responder = Responder(config, reactor, self.forwarder)
        self._snapshot: Snapshot = EMPTY
        self._hosts: list[HostEntry] = []
        self._hosts_stamp = None
        self._problems: set[str] = set()
        self._serial = 0
        self._ports: list = []
        # (protocol, interface) -> port, for edge.listeners.ListenerBoard.
        self.listening_ports: dict[tuple[str, str], object] = {}
        self._unsubscribe = None
        self._loops: list[LoopingCall] = []

    def hosts_entries(self) -> tuple[HostEntry, ...]:
        """The hosts file's entries as last read (the admin API lists their names)."""
        return tuple(self._hosts)

    # -- configuration -------------------------------------------------------

    def reload(self, config) -> None:
        """
        SIGHUP: take a new ``[dns]`` section without dropping a query.

        Records, zone, TTL, advertise, the hosts file, recursion policy and
        upstreams apply at once; the cache is kept unless the upstreams or
        its size changed.  Listening addresses need a restart.
        """
        new = config.dns
        old = self.config
        if (new.port, new.interfaces, new.enabled) != (old.port, old.interfaces, old.enabled):
            self._log.warn(
                "DNS: changes to dns.port, dns.interfaces and dns.enabled take effect on restart"
            )
            new = dataclasses.replace(new, port=old.port, interfaces=old.interfaces, enabled=old.enabled)
        self.config = new
        if (new.upstream, new.upstream_timeout, new.cache_size) != (
            old.upstream,
            old.upstream_timeout,
            old.cache_size,
        ):
            servers = self._upstreams(new, self._resolv_conf)
            cache = Cache(new.cache_size, self._reactor)
            self.forwarder = Forwarder(servers, new.upstream_timeout, self._reactor, cache)
            self.responder.set_forwarder(self.forwarder)
        self.responder.set_allow_recursion(new.allow_recursion)
        if new.hosts_file != old.hosts_file:
            self._hosts = []
            self._hosts_stamp = None
            self._check_hosts()
        self._rebuild()
        self._log.info("DNS configuration reloaded")

    def _upstreams(self, config: DNSConfig, resolv_conf: str) -> list[tuple[str, int]]:
        if config.upstream:
            servers = [parse_upstream(u) for u in config.upstream]
            origin = "dns.upstream"
        else:
            try:
                with open(resolv_conf) as f:
                    servers = resolv_conf_servers(f.read())
            except OSError as e:
                self._log.warn("Cannot read {path}: {error}", path=resolv_conf, error=e.strerror)
                servers = []
            origin = resolv_conf
        kept = [s for s in servers if not self._is_self(s, config)]
        for s in servers:
            if s not in kept:
                self._log.warn("Not forwarding to {server}: that is edge itself", server=f"{s[0]}:{s[1]}")
        if kept:
            self._log.info(
                "DNS forwards to {servers} (from {origin})",
                servers=", ".join(f"{h}:{p}" for h, p in kept),
                origin=origin,
            )
        else:
            self._log.warn("DNS has no upstream server: names edge does not own get SERVFAIL")
        return kept

    @staticmethod
    def _is_self(server: tuple[str, int], config: DNSConfig) -> bool:
        host, port = server
        if port != config.port:
            return False
        ip = ipaddress.ip_address(host)
        if ip == _DOCKER_EMBEDDED_DNS:
            # Inside a container on a user-defined network, resolv.conf names
            # Docker's embedded resolver; Docker's own NAT rules send that to
            # dockerd, never to a process listening on port 53 in the container.
            return False
        for interface in config.interfaces:
            try:
                listen = ipaddress.ip_address(interface)
            except ValueError:  # not an address: listenUDP says so at start
                continue
            if listen == ip or (listen.is_unspecified and ip.is_loopback):
                return True
        return False

    # -- the table -----------------------------------------------------------

    def _on_snapshot(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self._rebuild()

    def _rebuild(self) -> None:
        self._serial = max(self._serial + 1, int(self._reactor.seconds()))
        table, problems = build_table(self._snapshot, self.config, self._hosts, self._serial)
        self.responder.table = table
        fresh = set(problems)
        for problem in sorted(fresh - self._problems):
            self._log.warn("DNS: {problem}", problem=problem)
        self._problems = fresh
        self._log.debug("DNS table rebuilt: {names} names, serial {serial}", names=table.names, serial=self._serial)

    def _check_hosts(self) -> None:
        path = self.config.hosts_file
        if not path:
            return
        try:
            st = os.stat(path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp == self._hosts_stamp:
                return
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError as e:
            if self._hosts_stamp != "error":
                self._log.error(
                    "Cannot read hosts file {path}: {error}; keeping its last good contents",
                    path=path,
                    error=e.strerror,
                )
                self._hosts_stamp = "error"
            return
        self._hosts_stamp = stamp
        entries, problems = parse_hosts(text, path)
        for problem in problems:
            self._log.warn("DNS hosts file: {problem}", problem=problem)
        self._hosts = entries
        self._log.info("Read {count} entries from hosts file {path}", count=len(entries), path=path)
        if self._unsubscribe is not None:
            self._rebuild()

    # -- service -------------------------------------------------------------

    def privilegedStartService(self) -> None:
        self._check_hosts()
        self._unsubscribe = self._publisher.subscribe(self._on_snapshot)
        tcp = DNSStreamFactory(self.responder, self._reactor)
        for interface in self.config.interfaces:
            protocol = "UDP"
            try:
                udp = DNSDatagramServer(self.responder)
                self._ports.append(self._reactor.listenUDP(self.config.port, udp, interface=interface))
                self.listening_ports[("udp", interface)] = self._ports[-1]
                protocol = "TCP"
                self._ports.append(self._reactor.listenTCP(
                    self.config.port, tcp, interface=interface, backlog=LISTEN_BACKLOG
                ))
                self.listening_ports[("tcp", interface)] = self._ports[-1]
            except Exception as e:
                for port in self._ports:
                    port.stopListening()
                self._ports = []
                self.listening_ports = {}
                from edge.listeners import ListenError, describe_error

                raise ListenError(
                    f"DNS cannot listen on {interface} port {self.config.port} ({protocol}):"
                    f" {describe_error(e)}"
                ) from None
            self._log.info(
                "DNS listening on {interface} port {port} (UDP and TCP)",
                interface=interface,
                port=self.config.port,
            )
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        for call, interval in ((self.responder.flush_metrics, 1.0), (self._check_hosts, self.HOSTS_POLL)):
            loop = LoopingCall(call)
            loop.clock = self._reactor
            loop.start(interval, now=False)
            self._loops.append(loop)

    def stopService(self):
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.responder.flush_metrics()
        ports, self._ports = self._ports, []
        self.listening_ports = {}
        stops = [defer.maybeDeferred(p.stopListening) for p in ports]
        return defer.gatherResults(stops).addCallback(lambda _: super(DNSService, self).stopService())


def make_dns_service(config, publisher, reactor) -> DNSService:
    """edge's DNS server for ``config.dns``, fed by ``publisher``'s snapshots."""
    return DNSService(config.dns, publisher, reactor)
