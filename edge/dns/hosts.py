"""
The hosts file (``dns.hosts_file`` / ``--dns-hosts``), read like dnsmasq's.

Pure parsing: text in, entries and problems out.  The server re-reads the
file when its modification time changes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

__all__ = ["HostEntry", "parse_hosts"]


@dataclass(frozen=True)
class HostEntry:
    """One line: an address and the names (first one canonical) it answers for."""

    address: str
    names: tuple[str, ...]


def parse_hosts(text: str, source: str = "hosts") -> tuple[list[HostEntry], list[str]]:
    """
    ``address name [alias...]`` lines; ``#`` starts a comment.

    A bad line is skipped with a problem naming the file and line number,
    never fatal: one typo must not take every other name away.
    """
    entries: list[HostEntry] = []
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) < 2:
            problems.append(f"{source}:{number}: expected 'address name...', got {line!r}")
            continue
        address = fields[0]
        if "%" in address:  # fe80::1%eth0: a zone index means nothing to clients
            address = address.split("%", 1)[0]
        try:
            address = str(ipaddress.ip_address(address))
        except ValueError:
            problems.append(f"{source}:{number}: {fields[0]!r} is not an IP address")
            continue
        entries.append(HostEntry(address, tuple(name.lower().rstrip(".") for name in fields[1:])))
    return entries, problems
