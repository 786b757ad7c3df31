"""
The names edge answers itself, as one immutable table built per snapshot.

:func:`build_table` turns a :class:`~edge.snapshot.Snapshot`, the ``[dns]``
config and the hosts file into an :class:`AnswerTable`.  Every answer for
the common question types is encoded once, here, into the bytes that follow
the question in a response (see :mod:`edge.dns.wire`), so the server only
glues a header, the client's question and these bytes together.

Who owns a name, highest first: static records and the hosts file, then
routers' host names, then the names generated in the cluster zone.  A name
is owned whole by one source; a clash is reported as a problem.
"""

from __future__ import annotations

import ipaddress
import struct
from functools import lru_cache
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from twisted.names import dns

from edge.config import DNSConfig, DNSRecord
from edge.dns.hosts import HostEntry
from edge.dns.wire import QNAME_POINTER, encode_name, name_text, rdata, reverse_name, rr
from edge.snapshot import Node, Snapshot
from edge.tcp.rules import sni_names

__all__ = ["Entry", "External", "AnswerTable", "build_table", "edge_addresses"]

NOERROR = dns.OK
NXDOMAIN = dns.ENAME
_IN = b"\x00\x01"
_U16 = struct.Struct("!H")
_COUNTS = struct.Struct("!HHHH")
_MAX_ROTATIONS = 8
_MAX_CHAIN = 8
# Types answered from the precomputed dict; anything else is computed per query.
_COMMON_TYPES = (dns.A, dns.AAAA, dns.CNAME, dns.MX, dns.TXT, dns.SRV, dns.PTR, dns.SOA, dns.NS, dns.ALL_RECORDS)
# RFC 8482: ANY gets one RRset, preferring addresses.
_ANY_ORDER = (dns.A, dns.AAAA)


@dataclass(frozen=True)
class External:
    """A CNAME chain that leaves edge's names: the server resolves ``target`` upstream."""

    target: bytes  # wire form, lower case
    chain: bytes  # the encoded CNAME records so far
    count: int


class Entry:
    """
    One answer: rcode, section counts and the encoded sections after the question.

    ``tails`` holds one encoding per rotation of a multi-address RRset;
    :meth:`tail` hands them out in turn so clients spread over the addresses.
    """

    __slots__ = ("rcode", "aa", "counts", "counts_opt", "tails", "external", "_turn", "an")

    def __init__(
        self,
        rcode: int,
        an: int,
        ns: int,
        tails: Sequence[bytes],
        aa: bool = True,
        external: External | None = None,
        ar: int = 0,
    ):
        self.rcode = rcode
        self.aa = aa
        self.an = an
        self.counts = _COUNTS.pack(1, an, ns, ar)
        self.counts_opt = _COUNTS.pack(1, an, ns, ar + 1)
        self.tails = tuple(tails)
        self.external = external
        self._turn = 0

    def tail(self) -> bytes:
        tails = self.tails
        if len(tails) == 1:
            return tails[0]
        self._turn = turn = (self._turn + 1) % len(tails)
        return tails[turn]

    def __repr__(self) -> str:
        return f"<Entry rcode={self.rcode} counts={self.counts.hex()} external={self.external}>"


@dataclass
class _Node:
    """What one owned name holds while the table is built."""

    source: str
    rrsets: dict[int, list[tuple[int, bytes]]] = field(default_factory=dict)
    cname: tuple[bytes, int] | None = None
    apex: bytes = b""  # owner of the SOA sent with negative answers

    def add(self, rtype: int, ttl: int, data: bytes) -> None:
        rrset = self.rrsets.setdefault(rtype, [])
        if all(existing != data for _, existing in rrset):
            rrset.append((ttl, data))


class AnswerTable:
    """
    Immutable after construction (apart from memoised answers and rotation turns).

    ``exact`` maps ``name + qtype + class IN`` (lower-case wire name) to an
    :class:`Entry`; :meth:`lookup` covers the rest: other types, wildcards,
    NXDOMAIN inside the zone, and ``None`` for names edge does not own.
    """

    _MEMO_LIMIT = 4096

    def __init__(
        self,
        nodes: dict[bytes, _Node],
        wildcards: dict[bytes, _Node],
        zone: bytes | None,
        ttl: int,
        serial: int,
    ):
        self._nodes = nodes
        self._wildcards = wildcards
        self.zone = zone
        self.ttl = ttl
        self.serial = serial
        base = name_text(zone) if zone else "invalid"
        self._ns = encode_name(f"ns.{base}")
        self._hostmaster = encode_name(f"hostmaster.{base}")
        self._soa_data: bytes | None = None
        self._memo: dict[tuple[bytes, int], Entry] = {}
        self._foreign: dict[bytes, bool] = {}
        if zone is not None and zone in nodes:
            nodes[zone].rrsets[dns.SOA] = [(ttl, self._soa_rdata())]
        self.exact: dict[bytes, Entry] = {}
        # Names with equal records share one entry (every routed host answers
        # the same edge addresses), and names under one apex share their
        # NODATA: a snapshot of thousands of names builds in milliseconds.
        positive: dict[tuple, Entry] = {}
        nodata: dict[bytes, Entry] = {}
        suffix = {t: _U16.pack(t) + _IN for t in _COMMON_TYPES}
        exact = self.exact
        for name, node in nodes.items():
            if node.cname:
                for qtype in (dns.A, dns.AAAA, dns.CNAME):
                    entry = self._answer(name, qtype, node)
                    if entry is not None:
                        exact[name + suffix[qtype]] = entry
                continue
            rrsets = node.rrsets
            for qtype in set(rrsets) | {dns.A, dns.AAAA}:
                records = rrsets.get(qtype)
                if records:
                    key = (qtype, tuple(records))
                    entry = positive.get(key)
                    if entry is None:
                        entry = positive[key] = self._rrset(b"", 0, QNAME_POINTER, qtype, records)
                else:
                    apex = node.apex or name
                    entry = nodata.get(apex)
                    if entry is None:
                        entry = nodata[apex] = Entry(NOERROR, 0, 1, (self._soa(apex),))
                exact[name + (suffix.get(qtype) or _U16.pack(qtype) + _IN)] = entry

    # -- queries -----------------------------------------------------------

    @property
    def names(self) -> int:
        return len(self._nodes) + len(self._wildcards)

    def owns(self, name: bytes) -> bool:
        return self._classify(name) is not None

    def foreign(self, name: bytes) -> bool:
        """Whether edge does *not* own ``name`` (memoised: asked per cache hit)."""
        known = self._foreign.get(name)
        if known is None:
            known = self._classify(name) is None
            if len(self._foreign) >= 65536:
                self._foreign.clear()
            self._foreign[name] = known
        return known

    def lookup(self, name: bytes, qtype: int, qclass: int = dns.IN) -> Entry | None:
        """The answer for a lower-case wire name, or ``None`` when edge does not own it."""
        found = self._classify(name)
        if found is None:
            return None
        if qclass != dns.IN:
            return Entry(dns.EREFUSED, 0, 0, (b"",))
        memo_key = None
        if isinstance(found, bytes):  # NXDOMAIN below the zone apex `found`
            memo_key = (b"NX" + found, 0)
        elif found[1] is not None and qtype in _COMMON_TYPES:  # wildcard
            memo_key = (b"*" + found[1], qtype)
        elif qtype in _COMMON_TYPES:
            memo_key = (name, qtype)
        if memo_key is not None:
            entry = self._memo.get(memo_key)
            if entry is not None:
                return entry
        entry = self._answer(name, qtype)
        if memo_key is not None:
            if len(self._memo) >= self._MEMO_LIMIT:
                self._memo.clear()
            self._memo[memo_key] = entry
        return entry

    # -- internals ---------------------------------------------------------

    @staticmethod
    def _rrset(chain: bytes, count: int, owner: bytes, rtype: int, records) -> Entry:
        """An answer ending in one RRset, encoded once per rotation of its records."""
        encoded = [rr(owner, rtype, ttl, data) for ttl, data in records]
        tails = []
        for turn in range(min(len(encoded), _MAX_ROTATIONS)):
            tails.append(chain + b"".join(encoded[turn:] + encoded[:turn]))
        return Entry(NOERROR, count + len(encoded), 0, tails)

    def _classify(self, name: bytes):
        """``(node, wildcard suffix or None)``, an apex for NXDOMAIN, or ``None``."""
        node = self._nodes.get(name)
        if node is not None:
            return node, None
        zone = self.zone
        suffix = name
        while suffix[0]:
            suffix = suffix[suffix[0] + 1 :]
            node = self._wildcards.get(suffix)
            if node is not None:
                return node, suffix
            if suffix == zone:
                return zone
        return None

    def _soa(self, apex: bytes) -> bytes:
        if self._soa_data is None:
            self._soa_data = self._soa_rdata()
        return rr(apex, dns.SOA, self.ttl, self._soa_data)

    def _soa_rdata(self) -> bytes:
        soa = dns.Record_SOA(
            mname=name_text(self._ns),
            rname=name_text(self._hostmaster),
            serial=self.serial & 0xFFFFFFFF,
            refresh=3600,
            retry=600,
            expire=86400,
            minimum=self.ttl,
            ttl=self.ttl,
        )
        return rdata(soa)

    def _answer(self, name: bytes, qtype: int, node: _Node | None = None) -> Entry | None:
        """Follow CNAMEs inside edge's names and encode the whole answer."""
        chain = b""
        count = 0
        current = name
        owner = QNAME_POINTER
        seen = set()
        for _ in range(_MAX_CHAIN):
            found = (node, None) if node is not None else self._classify(current)
            node = None
            if found is None:
                if current == name:
                    return None
                return Entry(NOERROR, count, 0, (chain,), external=External(current, chain, count))
            if isinstance(found, bytes):
                return Entry(NXDOMAIN, count, 1, (chain + self._soa(found),))
            here, _wild = found
            if here.cname and qtype in (dns.CNAME, dns.ALL_RECORDS):
                target, ttl = here.cname
                return Entry(NOERROR, count + 1, 0, (chain + rr(owner, dns.CNAME, ttl, target),))
            rrset = None
            if qtype == dns.ALL_RECORDS:
                for rtype in _ANY_ORDER:
                    if rtype in here.rrsets:
                        rrset = (rtype, here.rrsets[rtype])
                        break
                else:
                    if here.rrsets:
                        rtype = min(here.rrsets)
                        rrset = (rtype, here.rrsets[rtype])
            elif qtype in here.rrsets:
                rrset = (qtype, here.rrsets[qtype])
            if rrset is not None:
                return self._rrset(chain, count, owner, *rrset)
            if here.cname:
                target, ttl = here.cname
                chain += rr(owner, dns.CNAME, ttl, target)
                count += 1
                seen.add(current)
                if target in seen:
                    return Entry(dns.ESERVER, 0, 0, (b"",))
                current = target
                owner = target
                continue
            # NODATA: the name exists, the type does not.
            return Entry(NOERROR, count, 1, (chain + self._soa(here.apex or current),))
        return Entry(dns.ESERVER, 0, 0, (b"",))


# -- building ----------------------------------------------------------------


def edge_addresses(snapshot: Snapshot, config: DNSConfig) -> tuple[str, ...]:
    """Where routed names point: ``advertise``, else the ready managers' addresses."""
    if config.advertise:
        return tuple(config.advertise)
    return tuple(_usable([n.address for n in serving_managers(snapshot)]))


def serving_managers(snapshot: Snapshot) -> list[Node]:
    """
    Managers DNS sends clients to: ready, active and reachable ones.

    A stopped manager reads ``unreachable`` within a second but ``down``
    only 10-14 s later, and a drained one should get no new clients.  When no
    manager qualifies because their states are unknown (edge started during a
    leader election), those not known to be gone are used: node states alone
    never empty the answers.
    """
    managers = [n for n in snapshot.nodes if n.role == "manager"]
    serving = [n for n in managers if n.serving]
    if serving:
        return serving
    return [n for n in managers if n.state == "unknown" and n.reachable and n.availability == "active"]


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
        return True
    except ValueError:
        return False


def _usable(addresses: Iterable[str]) -> list[str]:
    out = []
    for address in addresses:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            continue
        if not ip.is_unspecified and str(ip) not in out:
            out.append(str(ip))
    return out


@lru_cache(maxsize=4096)
def _address_record(address: str) -> tuple[int, bytes]:
    ip = ipaddress.ip_address(address)
    if ip.version == 4:
        return dns.A, ip.packed
    return dns.AAAA, ip.packed


class _Builder:
    def __init__(self, config: DNSConfig):
        self.config = config
        self.ttl = config.ttl
        self.nodes: dict[bytes, _Node] = {}
        self.wildcards: dict[bytes, _Node] = {}
        self.problems: list[str] = []
        try:
            self.zone = encode_name(_label(config.zone)) if _label(config.zone) else None
        except ValueError:
            self.zone = None

    def node(self, name: str, source: str, apex: bytes | None = None) -> _Node | None:
        """The node for ``name`` if ``source`` may define it; ``*.x`` gives a wildcard."""
        name = name.strip().lower().rstrip(".")
        wildcard = name.startswith("*.")
        try:
            wire = encode_name(name[2:] if wildcard else name)
        except ValueError as e:
            self.problems.append(f"{source}: skipping name: {e}")
            return None
        if not wildcard and name.startswith("*"):
            self.problems.append(f"{source}: skipping {name!r}: '*' only as a whole first label")
            return None
        table = self.wildcards if wildcard else self.nodes
        existing = table.get(wire)
        if existing is not None:
            if existing.source == source:
                return existing
            if source not in _MERGEABLE.get(existing.source, ()):
                self.problems.append(
                    f"{source}: {name} is already defined by {existing.source}; keeping that"
                )
                return None
            return existing
        if apex is None:
            apex = self.zone if not wildcard and _under(wire, self.zone) else wire
        node = _Node(source, apex=apex)
        table[wire] = node
        return node

    def add_address(self, node: _Node | None, address: str, ttl: int = 0) -> None:
        if node is None:
            return
        rtype, data = _address_record(address)
        node.add(rtype, ttl or self.ttl, data)

    def set_cname(self, node: _Node | None, target: str, ttl: int, source: str) -> None:
        if node is None:
            return
        try:
            wire = encode_name(target.strip().lower().rstrip("."))
        except ValueError as e:
            self.problems.append(f"{source}: CNAME target: {e}")
            return
        node.cname = (wire, ttl or self.ttl)


_MERGEABLE = {"static": ("hosts",), "hosts": ("static",), "zone-ent": ()}


def build_table(
    snapshot: Snapshot,
    config: DNSConfig,
    hosts: Sequence[HostEntry] = (),
    serial: int = 1,
) -> tuple[AnswerTable, list[str]]:
    """The answer table for one snapshot, and the problems met building it."""
    b = _Builder(config)
    _add_static(b, config.records)
    _add_hosts(b, hosts)
    edge = edge_addresses(snapshot, config)
    # A rule may match an address (Host(`192.168.1.5`)): that is no DNS name.
    # TCP routers' HostSNI names too: a client must resolve them to reach edge.
    routed = sorted(
        {host for host, _router in snapshot.host_names() if not _is_address(host)}
        | {name for r in snapshot.tcp_routers for name in sni_names(r.rule) if not _is_address(name)}
    )
    if routed and not edge:
        b.problems.append(
            "no edge addresses: no ready manager has a usable address and dns.advertise"
            " is empty, so routed names answer with no records"
        )
    for host in routed:
        node = b.node(host, "routers")
        if node is not None:
            # Routed names answer even without addresses: they exist (NODATA, not NXDOMAIN).
            for address in edge:
                b.add_address(node, address)
    zone = _add_zone(b, snapshot, config, edge)
    _check_cnames(b)
    return AnswerTable(b.nodes, b.wildcards, zone, config.ttl, serial), b.problems


def _add_static(b: _Builder, records: Sequence[DNSRecord]) -> None:
    for i, record in enumerate(records):
        where = f"dns.records[{i}] ({record.name} {record.type})"
        rtype = record.type.upper()
        value = record.value.strip()
        name = record.name
        if rtype == "PTR":
            try:
                name = reverse_name(name)
            except ValueError:
                pass  # already a name like 4.3.2.1.in-addr.arpa
        node = b.node(name, "static")
        if node is None:
            continue
        ttl = record.ttl or b.ttl
        try:
            if rtype in ("A", "AAAA"):
                ip = ipaddress.ip_address(value)
                if (ip.version == 4) != (rtype == "A"):
                    raise ValueError(f"{value} is not an IPv{4 if rtype == 'A' else 6} address")
                b.add_address(node, value, ttl)
            elif rtype == "CNAME":
                if node.rrsets:
                    raise ValueError("a name with a CNAME can have no other records")
                b.set_cname(node, value, ttl, where)
            elif rtype == "TXT":
                raw = value.encode("utf-8")
                chunks = [raw[j : j + 255] for j in range(0, len(raw), 255)] or [b""]
                node.add(dns.TXT, ttl, rdata(dns.Record_TXT(*chunks)))
            elif rtype == "MX":
                parts = value.split()
                preference, host = (int(parts[0]), parts[1]) if len(parts) == 2 else (10, parts[0])
                encode_name(host)
                node.add(dns.MX, ttl, rdata(dns.Record_MX(preference, host.rstrip("."))))
            elif rtype == "SRV":
                priority, weight, port, target = value.split()
                encode_name(target)
                node.add(
                    dns.SRV,
                    ttl,
                    rdata(dns.Record_SRV(int(priority), int(weight), int(port), target.rstrip("."))),
                )
            elif rtype == "PTR":
                encode_name(value)
                node.add(dns.PTR, ttl, rdata(dns.Record_PTR(value.rstrip("."))))
            else:
                raise ValueError(f"type {rtype} is not supported")
        except (ValueError, IndexError, struct.error) as e:
            b.problems.append(f"{where}: skipping record with value {value!r}: {e}")
        if node.cname and node.rrsets:
            b.problems.append(f"{where}: {record.name} has a CNAME and other records; keeping the CNAME")
            node.rrsets.clear()


def _add_hosts(b: _Builder, hosts: Sequence[HostEntry]) -> None:
    for entry in hosts:
        for name in entry.names:
            b.add_address(b.node(name, "hosts"), entry.address)
        ptr = b.node(reverse_name(entry.address), "hosts")
        if ptr is not None and dns.PTR not in ptr.rrsets and entry.names:
            ptr.add(dns.PTR, b.ttl, rdata(dns.Record_PTR(entry.names[0])))


def _label(text: str) -> str:
    return text.strip().lower().rstrip(".")


def _add_zone(
    b: _Builder, snapshot: Snapshot, config: DNSConfig, edge: Sequence[str]
) -> bytes | None:
    zone = _label(config.zone)
    if not zone:
        return None  # no cluster zone
    try:
        zone_wire = encode_name(zone)
    except ValueError as e:
        b.problems.append(f"dns.zone: {e}; no cluster zone")
        return None
    apex = b.node(zone, "zone-apex", apex=zone_wire)
    if apex is None:
        return zone_wire
    apex.add(dns.NS, b.ttl, rdata(dns.Record_NS(f"ns.{zone}")))
    apex.rrsets[dns.SOA] = []  # the table encodes it with the serial

    def zone_node(name: str) -> _Node | None:
        return b.node(f"{name}.{zone}", "zone", apex=zone_wire)

    ready = [n for n in snapshot.nodes if n.state == "ready"]
    for address in edge:
        b.add_address(zone_node("ns"), address)
    managers = zone_node("managers")
    workers = zone_node("workers")
    for n in serving_managers(snapshot):
        for address in _usable([n.address]):
            b.add_address(managers, address)
    for n in ready:
        if n.role != "manager":
            for address in _usable([n.address]):
                b.add_address(workers, address)

    host_names: dict[str, str] = {}
    for n in snapshot.nodes:
        short = _node_label(n)
        if not short:
            b.problems.append(f"node {n.id}: hostname {n.hostname!r} makes no DNS label")
            continue
        host_names[n.id] = f"{short}.{zone}"
        node = zone_node(short)
        for address in _usable([n.address]):
            b.add_address(node, address)
            ptr = b.node(reverse_name(address), "zone-ptr")
            if ptr is not None:
                ptr.add(dns.PTR, b.ttl, rdata(dns.Record_PTR(f"{short}.{zone}")))

    ready_ids = [n.id for n in ready]
    by_id = {n.id: n for n in snapshot.nodes}
    for service in snapshot.swarm_services:
        name = _label(service.name)
        node = zone_node(name)
        if node is None:
            continue
        if not service.published_ports:
            for address in edge:
                b.add_address(node, address)
            continue
        serving: list[str] = []
        for port in service.published_ports:
            node_ids = ready_ids if port.mode == "ingress" else list(service.node_ids)
            for node_id in node_ids:
                if node_id not in serving:
                    serving.append(node_id)
            if not port.published_port:
                continue
            srv = zone_node(f"_{port.target_port}._{port.protocol.lower()}.{name}")
            if srv is None:
                continue
            for node_id in node_ids:
                if node_id in host_names:
                    srv.add(
                        dns.SRV,
                        b.ttl,
                        rdata(dns.Record_SRV(0, 0, port.published_port, host_names[node_id])),
                    )
        for node_id in serving:
            if node_id in by_id:
                for address in _usable([by_id[node_id].address]):
                    b.add_address(node, address)

    # Empty non-terminals (RFC 8020): `_tcp.web.<zone>` exists when `_80._tcp.web.<zone>` does.
    for wire in list(b.nodes):
        if _under(wire, zone_wire):
            parent = wire[wire[0] + 1 :]
            while parent != zone_wire and len(parent) > len(zone_wire):
                if parent not in b.nodes:
                    b.nodes[parent] = _Node("zone-ent", apex=zone_wire)
                parent = parent[parent[0] + 1 :]
    return zone_wire


def _under(wire: bytes, zone: bytes | None) -> bool:
    """Whether ``wire`` is strictly below ``zone`` (both wire form)."""
    if zone is None:
        return False
    while wire[0]:
        wire = wire[wire[0] + 1 :]
        if wire == zone:
            return True
    return False


def _node_label(node: Node) -> str:
    short = _label(node.hostname).split(".", 1)[0]
    try:
        encode_name(short)
    except ValueError:
        return ""
    return short


def _check_cnames(b: _Builder) -> None:
    for wire, node in b.nodes.items():
        if node.cname and node.cname[0] == wire:
            b.problems.append(f"{name_text(wire)}: CNAME points at itself; dropping it")
            node.cname = None
