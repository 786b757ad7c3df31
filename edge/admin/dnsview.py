"""
The DNS names edge answers, read from the DNS server's own answer table.

The admin service proposes the names (routed hosts, static records, the
cluster zone's names) and asks the live table what it answers for each, so
the dashboard shows the server's real answers rather than a second guess.
Answers are decoded the way a client would: the table's encoded sections
after a question, parsed by twisted.names.
"""

from __future__ import annotations

import socket
import struct

from twisted.names import dns

from edge.config import Config
from edge.snapshot import Snapshot

__all__ = ["candidate_names", "answers"]

_TYPES = (dns.A, dns.AAAA, dns.CNAME, dns.TXT, dns.MX, dns.SRV, dns.PTR)


def _label(text: str) -> str:
    return text.strip().lower().rstrip(".")


def candidate_names(snapshot: Snapshot, config: Config, hosts=()) -> dict[str, str]:
    """Name -> where it comes from, for every name edge should answer (``hosts``: HostEntry)."""
    found: dict[str, str] = {}
    zone = _label(config.dns.zone)
    if zone:
        found[f"managers.{zone}"] = "cluster zone"
        if any(n.role != "manager" for n in snapshot.nodes):
            found[f"workers.{zone}"] = "cluster zone"
        for service in snapshot.swarm_services:
            found[f"{_label(service.name)}.{zone}"] = f"service {service.name}"
    for host, router in snapshot.host_names():
        if host in found and found[host] != router.name:
            found[host] = f"{found[host]}, {router.name}"
        else:
            found.setdefault(host, router.name)
    for record in config.dns.records:
        found.setdefault(_label(record.name), "config")
    for entry in hosts:
        for name in entry.names:
            found.setdefault(_label(name), "hosts file")
    return found


def _decode(name_wire: bytes, qtype: int, entry) -> list[tuple[str, str]]:
    header = struct.pack("!HH", 0, 0x8400) + entry.counts
    question = name_wire + struct.pack("!HH", qtype, dns.IN)
    message = dns.Message()
    message.fromStr(header + question + entry.tails[0])
    rows = []
    for rr in message.answers:
        kind = dns.QUERY_TYPES.get(rr.type, str(rr.type))
        payload = rr.payload
        if rr.type == dns.A:
            value = payload.dottedQuad()
        elif rr.type == dns.AAAA:
            value = socket.inet_ntop(socket.AF_INET6, payload.address)
        elif rr.type in (dns.CNAME, dns.PTR):
            value = payload.name.name.decode("ascii", "replace")
        elif rr.type == dns.SRV:
            value = f"{payload.priority} {payload.weight} {payload.port} {payload.target.name.decode('ascii', 'replace')}"
        elif rr.type == dns.MX:
            value = f"{payload.preference} {payload.name.name.decode('ascii', 'replace')}"
        elif rr.type == dns.TXT:
            value = " ".join(part.decode("utf-8", "replace") for part in payload.data)
        else:
            value = repr(payload)
        rows.append((kind, value))
    return rows


def answers(table, names: dict[str, str]) -> tuple[tuple[str, str, tuple[str, ...], str], ...]:
    """(name, type, values, source) rows for what ``table`` answers for ``names``."""
    from edge.dns.wire import encode_name

    rows = []
    for name in sorted(names):
        try:
            wire = encode_name(name)
        except ValueError:
            continue
        by_type: dict[str, list[str]] = {}
        for qtype in _TYPES:
            entry = table.lookup(wire, qtype)
            if entry is None or entry.rcode != dns.OK or not entry.an or entry.external:
                continue
            for kind, value in _decode(wire, qtype, entry):
                values = by_type.setdefault(kind, [])
                if value not in values:
                    values.append(value)
            if "CNAME" in by_type:
                break
        if not by_type:
            rows.append((name, "-", (), names[name] + " (no answer)"))
        for kind, values in by_type.items():
            rows.append((name, kind, tuple(sorted(values)), names[name]))
    return tuple(rows)
