"""
Names edge does not own: forwarded upstream through twisted.names, cached here.

:class:`Forwarder` asks the upstream servers with
:class:`twisted.names.client.Resolver` (UDP, each server in turn on
timeout, TCP when the answer comes back truncated) and keeps the whole
response — rcode and authority section too, which twisted's own
``CacheResolver`` drops — in a bounded :class:`Cache` that honours TTLs and
caches negative answers by the SOA's minimum (RFC 2308).

Cached answers are kept encoded like the table's (:mod:`edge.dns.wire`) so
a cache hit costs the server a dict lookup; the TTLs in them are counted
down by re-encoding at most once a second per entry.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import OrderedDict

from twisted.internet import defer
from twisted.logger import Logger
from twisted.names import client, dns
from twisted.names.error import DNSQueryTimeoutError

from edge.dns.table import Entry
from edge.dns.wire import QNAME_POINTER, encode_name, name_bytes, rdata, rr

__all__ = ["Cache", "CachedAnswer", "Forwarder", "parse_upstream", "resolv_conf_servers"]

MAX_TTL = 86400
_TTL = struct.Struct("!I")
SERVFAIL = Entry(dns.ESERVER, 0, 0, (b"",), aa=False)


def parse_upstream(text: str) -> tuple[str, int]:
    """``ADDR``, ``ADDR:PORT``, ``[V6]:PORT`` or a bare IPv6 address → ``(host, port)``."""
    text = text.strip()
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad upstream {text!r}")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = int(p)
    host = str(ipaddress.ip_address(host))
    if not 0 < port < 65536:
        raise ValueError(f"bad port in upstream {text!r}")
    return host, port


def resolv_conf_servers(text: str) -> list[tuple[str, int]]:
    servers = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                servers.append(parse_upstream(fields[1].split("%", 1)[0]))
            except ValueError:
                continue
    return servers


class CachedAnswer:
    """
    One upstream response, kept with the time it arrived.

    The sections are encoded once; counting the TTLs down patches the TTL
    fields of a copy, at most once a second.
    """

    __slots__ = ("qname", "rcode", "sections", "stored", "expires", "entry", "elapsed", "_base", "_ttls")

    def __init__(self, qname: bytes, message: dns.Message, stored: float, ttl: int):
        self.qname = qname
        self.rcode = message.rCode
        self.sections = tuple(
            [r for r in section if r.type != dns.OPT]
            for section in (message.answers, message.authority, message.additional)
        )
        self.stored = stored
        self.expires = stored + ttl
        self.elapsed = 0
        self._base, self._ttls = self._encode(pointer=True)
        an, ns, ar = (len(s) for s in self.sections)
        self.entry = Entry(self.rcode, an, ns, (self._base,), aa=False, ar=ar)

    def _encode(self, pointer: bool) -> tuple[bytes, list[tuple[int, int]]]:
        out = bytearray()
        ttls = []
        for section in self.sections:
            for record in section:
                wire = encode_name(record.name.name.lower())
                owner = QNAME_POINTER if pointer and wire == self.qname else wire
                ttls.append((len(out) + len(owner) + 4, max(0, record.ttl)))
                out += rr(owner, record.type, record.ttl, rdata(record.payload), record.cls)
        return bytes(out), ttls

    @staticmethod
    def _aged(base: bytes, ttls: list[tuple[int, int]], elapsed: int) -> bytes:
        buf = bytearray(base)
        for offset, ttl in ttls:
            _TTL.pack_into(buf, offset, ttl - elapsed if ttl > elapsed else 0)
        return bytes(buf)

    def current(self, now: float) -> Entry:
        """The entry with TTLs counted down to ``now``."""
        elapsed = int(now - self.stored)
        if elapsed != self.elapsed:
            self.elapsed = elapsed
            self.entry.tails = (self._aged(self._base, self._ttls, elapsed),)
        return self.entry

    def full(self, now: float) -> Entry:
        """Encoded with every owner written out, to follow another name's CNAME."""
        base, ttls = self._encode(pointer=False)
        an, ns, ar = (len(s) for s in self.sections)
        tail = self._aged(base, ttls, int(now - self.stored))
        return Entry(self.rcode, an, ns, (tail,), aa=False, ar=ar)


def cache_ttl(message: dns.Message) -> int:
    """How long a response may be cached: RFC 2181 minimum TTL, RFC 2308 for negatives."""
    if message.rCode not in (dns.OK, dns.ENAME) or message.trunc:
        return 0
    ttls = [r.ttl for r in message.answers]
    if message.rCode == dns.ENAME or not message.answers:
        soas = [r for r in message.authority if r.type == dns.SOA]
        if not soas:
            return 0
        ttls += [min(r.ttl, r.payload.minimum) for r in soas]
    return max(0, min(min(ttls), MAX_TTL)) if ttls else 0


class Cache:
    """A bounded LRU of :class:`CachedAnswer` keyed like the answer table."""

    def __init__(self, size: int, clock):
        self._size = max(0, size)
        self._clock = clock
        self._items: OrderedDict[bytes, CachedAnswer] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: bytes) -> Entry | None:
        item = self._items.get(key)
        if item is None:
            return None
        now = self._clock.seconds()
        if now >= item.expires:
            del self._items[key]
            return None
        self._items.move_to_end(key)
        if int(now - item.stored) != item.elapsed:
            return item.current(now)
        return item.entry

    def item(self, key: bytes) -> CachedAnswer | None:
        item = self._items.get(key)
        if item is not None and self._clock.seconds() >= item.expires:
            del self._items[key]
            return None
        return item

    def put(self, key: bytes, qname: bytes, message: dns.Message) -> CachedAnswer:
        now = self._clock.seconds()
        ttl = cache_ttl(message)
        item = CachedAnswer(qname, message, now, ttl)
        if ttl > 0 and self._size:
            self._items[key] = item
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return item

    def clear(self) -> None:
        self._items.clear()


class UpstreamRefused(Exception):
    """Every upstream refused the question."""


class Forwarder:
    """
    Ask the upstream servers, one query in flight per question.

    ``max_pending`` bounds the questions waiting for upstream at once: each
    one holds a UDP socket, and a flood of random names must not exhaust
    file descriptors.  Past the bound the answer is SERVFAIL at once.
    """

    _log = Logger()

    def __init__(self, servers, timeout: float, reactor, cache: Cache, max_pending: int = 1000):
        self.servers = list(servers)
        self._timeout = timeout
        self._reactor = reactor
        self.cache = cache
        self._max_pending = max_pending
        self._pending: dict[bytes, list[defer.Deferred]] = {}
        # One twisted.names resolver per upstream, so edge decides the order,
        # moves on after SERVFAIL/REFUSED too, and retries over TCP with the
        # server that truncated.
        self._resolvers = [
            client.Resolver(servers=[server], timeout=(timeout,), reactor=reactor)
            for server in self.servers
        ]
        self.failures = 0

    def lookup(self, key: bytes, qname: bytes, qtype: int, qclass: int) -> defer.Deferred:
        """Fire with a :class:`CachedAnswer`, or ``None`` when every upstream failed."""
        item = self.cache.item(key)
        if item is not None:
            return defer.succeed(item)
        waiting = self._pending.get(key)
        if waiting is not None:
            d = defer.Deferred()
            waiting.append(d)
            return d
        if not self._resolvers or len(self._pending) >= self._max_pending:
            return defer.succeed(None)
        self._pending[key] = []
        query = dns.Query(name_bytes(qname), qtype, qclass)
        d = self._ask(query)
        d.addCallback(lambda message: self.cache.put(key, qname, message))
        d.addErrback(self._failed, query)
        d.addBoth(self._release, key)
        return d

    @defer.inlineCallbacks
    def _ask(self, query: dns.Query):
        """Each upstream in order until one answers with something other than a failure."""
        error: Exception | None = None
        refusal = None
        for resolver in self._resolvers:
            try:
                message = yield resolver.queryUDP([query], (self._timeout,))
                if message.trunc:
                    message = yield resolver.queryTCP([query], self._timeout)
            except Exception as e:  # timeouts, refused connections, bad replies
                error = e
                continue
            if message.rCode in (dns.ESERVER, dns.EREFUSED):
                refusal = message
                continue
            return message
        if refusal is not None and refusal.rCode == dns.ESERVER:
            return refusal
        if refusal is not None:
            # An upstream's REFUSED is about edge, not about the name: the
            # client gets SERVFAIL (as from dnsmasq), so it tries its next server.
            raise UpstreamRefused("every upstream answered REFUSED")
        raise error or OSError("no upstream")

    def _failed(self, failure, query: dns.Query):
        self.failures += 1
        if failure.check(DNSQueryTimeoutError, defer.TimeoutError):
            reason = f"no answer within {self._timeout:g}s"
        else:
            reason = failure.getErrorMessage() or failure.type.__name__
        self._log.warn(
            "No upstream answered {name} {type}: {error}; the client gets SERVFAIL",
            name=query.name.name.decode("ascii", "replace"),
            type=dns.QUERY_TYPES.get(query.type, query.type),
            error=reason,
        )
        return None

    def _release(self, result, key: bytes):
        for d in self._pending.pop(key, ()):
            d.callback(result)
        return result
