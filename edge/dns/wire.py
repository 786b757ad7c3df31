"""
Byte-level helpers for the DNS fast path.

edge answers its own names from pre-encoded response sections (see
:mod:`edge.dns.table`) and parses only the header and question of a query by
hand (:func:`parse_query`).  Every answer section is encoded so it stays
valid behind *any* question of the same name: owners equal to the question
name are a compression pointer to offset 12, everything else is written out
in full.  That lets one encoded section serve every case spelling of a name
and every name a wildcard matches.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from io import BytesIO

from twisted.names import dns

__all__ = [
    "QNAME_POINTER",
    "MAX_UDP",
    "Query",
    "parse_query",
    "parse_slow",
    "encode_name",
    "name_text",
    "name_bytes",
    "rdata",
    "rr",
    "opt_record",
    "reverse_name",
    "BadPacket",
]

QNAME_POINTER = b"\xc0\x0c"
"""A compression pointer to the question name, which always sits at offset 12."""

MAX_UDP = 1232
"""The UDP payload size edge advertises and caps EDNS answers at (DNS flag day 2020)."""

_HEADER_ONE_QUESTION = b"\x00\x01\x00\x00\x00\x00"
_U16 = struct.Struct("!H")
_RR_FIXED = struct.Struct("!HHIH")
_COUNTS = struct.Struct("!4H")


class BadPacket(ValueError):
    """A query edge cannot answer; ``formerr`` says whether a FORMERR reply is possible."""

    def __init__(self, reason: str, formerr: bool = True):
        super().__init__(reason)
        self.formerr = formerr


@dataclass(slots=True)
class Query:
    """
    What edge needs from a query.

    ``question`` is the question section as the client sent it (its case is
    echoed back); ``name`` is the lower-cased wire-form name used for lookups;
    ``key`` is ``name`` + type + class, the key of the answer tables.
    ``edns`` is ``None`` without an OPT record, else ``(payload size, DO bit)``.
    """

    ident: bytes
    flags: bytes
    question: bytes
    name: bytes
    qtype: int
    qclass: int
    key: bytes
    edns: tuple[int, bool] | None


def parse_query(data: bytes) -> Query | None:
    """
    Parse a plain query: one question, no answer/authority, at most an OPT.

    Returns ``None`` for anything unusual (compressed question, EDNS
    options we would have to think about, other opcodes), which then takes
    :func:`parse_slow`.  Never raises.
    """
    if len(data) < 17 or data[4:10] != _HEADER_ONE_QUESTION or data[2] & 0xF8:
        return None
    i = 12
    n = len(data)
    while True:
        length = data[i]
        if length == 0:
            break
        if length > 63:
            return None
        i += length + 1
        if i >= n:
            return None
    end = i + 1
    if end - 12 > 255 or end + 4 > n:
        return None
    qtype = (data[end] << 8) | data[end + 1]
    qclass = (data[end + 2] << 8) | data[end + 3]
    rest = end + 4
    ar = data[10:12]
    if ar == b"\x00\x00":
        if rest != n:
            return None
        edns = None
    elif ar == b"\x00\x01":
        # OPT: root name, type 41, class = payload, ttl = ext-rcode/version/flags, rdlen.
        if n - rest < 11 or data[rest] != 0 or data[rest + 1 : rest + 3] != b"\x00\x29":
            return None
        if data[rest + 6] != 0:  # EDNS version other than 0: BADVERS, slow path
            return None
        rdlen = (data[rest + 9] << 8) | data[rest + 10]
        if rest + 11 + rdlen != n:
            return None
        edns = ((data[rest + 3] << 8) | data[rest + 4], bool(data[rest + 7] & 0x80))
    else:
        return None
    name = data[12:end].lower()
    return Query(
        data[0:2], data[2:4], data[12:rest], name, qtype, qclass, name + data[end:rest], edns
    )


def parse_slow(data: bytes) -> Query:
    """
    Parse any query with twisted.names; raise :class:`BadPacket` when it is not one.

    ``BadPacket.formerr`` is false when not even a header could be read, or
    when the packet is a response (answering responses invites loops).
    """
    if len(data) < 12:
        raise BadPacket(f"{len(data)} bytes is shorter than a DNS header", formerr=False)
    if data[2] & 0x80:
        raise BadPacket("a response, not a query", formerr=False)
    opcode = (data[2] >> 3) & 0x0F
    if opcode != dns.OP_QUERY:
        raise NotImplementedOpcode(opcode)
    plain = dns.Message()
    try:
        plain.fromStr(data)
    except Exception as e:
        raise BadPacket(f"cannot parse: {type(e).__name__}: {e}") from None
    # twisted.names stops quietly where the packet ends, so a header that
    # claims more records than the packet holds would still be answered.
    claimed = _COUNTS.unpack_from(data, 4)
    found = (len(plain.queries), len(plain.answers), len(plain.authority), len(plain.additional))
    if claimed != found:
        raise BadPacket(
            "header counts {}/{}/{}/{} records, the packet holds {}/{}/{}/{}".format(*claimed, *found)
        )
    try:
        message = dns._EDNSMessage._fromMessage(plain)
    except Exception as e:
        raise BadPacket(f"cannot parse: {type(e).__name__}: {e}") from None
    if len(message.queries) != 1:
        raise BadPacket(f"{len(message.queries)} questions")
    if message.ednsVersion not in (None, 0):
        raise BadVersion(message.ednsVersion, message.maxSize)
    q = message.queries[0]
    try:
        wire = encode_name(q.name.name)
    except ValueError as e:
        raise BadPacket(str(e)) from None
    tail = _U16.pack(q.type) + _U16.pack(q.cls)
    edns = None
    if message.ednsVersion is not None:
        edns = (message.maxSize, bool(message.dnssecOK))
    name = wire.lower()
    return Query(data[0:2], data[2:4], wire + tail, name, q.type, q.cls, name + tail, edns)


class NotImplementedOpcode(BadPacket):
    def __init__(self, opcode: int):
        super().__init__(f"opcode {opcode} not implemented")
        self.opcode = opcode


class BadVersion(BadPacket):
    def __init__(self, version: int, payload: int):
        super().__init__(f"EDNS version {version}")
        self.payload = payload


def encode_name(name: str | bytes) -> bytes:
    """Wire form of a dotted name (no compression); ``ValueError`` if it cannot be one."""
    if isinstance(name, str):
        try:
            name = name.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError(f"{name!r} is not an ASCII (punycode) name") from None
    name = name.rstrip(b".")
    out = bytearray()
    if name:
        for label in name.split(b"."):
            if not label:
                raise ValueError(f"{name.decode('ascii', 'replace')!r} has an empty label")
            if len(label) > 63:
                raise ValueError(f"{name.decode('ascii', 'replace')!r} has a label over 63 bytes")
            out.append(len(label))
            out += label
    out.append(0)
    if len(out) > 255:
        raise ValueError(f"{name.decode('ascii', 'replace')!r} is longer than 255 bytes")
    return bytes(out)


def name_text(wire: bytes) -> str:
    """Dotted text of a wire-form name (for logs and the forwarder)."""
    labels = []
    i = 0
    while wire[i]:
        labels.append(wire[i + 1 : i + 1 + wire[i]].decode("ascii", "replace"))
        i += wire[i] + 1
    return ".".join(labels) or "."


def name_bytes(wire: bytes) -> bytes:
    """Dotted bytes of a wire-form name, as twisted.names' ``Name`` takes them."""
    labels = []
    i = 0
    while wire[i]:
        labels.append(wire[i + 1 : i + 1 + wire[i]])
        i += wire[i] + 1
    return b".".join(labels) or b"."


def rdata(record) -> bytes:
    """Encode a twisted.names record's RDATA without name compression."""
    out = BytesIO()
    record.encode(out, None)
    return out.getvalue()


def rr(owner: bytes, rtype: int, ttl: int, data: bytes, cls: int = dns.IN) -> bytes:
    """One resource record; ``owner`` is wire form or :data:`QNAME_POINTER`."""
    return owner + _RR_FIXED.pack(rtype, cls, max(0, min(ttl, 0x7FFFFFFF)), len(data)) + data


def opt_record(do: bool, ext_rcode: int = 0) -> bytes:
    """The OPT record edge sends back: its own payload size, the client's DO bit."""
    return (
        b"\x00\x00\x29"
        + _U16.pack(MAX_UDP)
        + bytes((ext_rcode, 0, 0x80 if do else 0, 0))
        + b"\x00\x00"
    )


def reverse_name(address: str) -> str:
    """``1.2.3.4`` → ``4.3.2.1.in-addr.arpa`` (and the nibble form for IPv6)."""
    return ipaddress.ip_address(address).reverse_pointer
