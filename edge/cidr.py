"""
Address-in-networks checks, one implementation for every allow-list.

Used by ``ipAllowList`` middlewares, ``ClientIP`` rules, ``trusted_proxies``,
PROXY protocol sources and DNS ``allow_recursion``.  An IPv4-mapped IPv6
address (``::ffff:10.0.0.1``, what a dual-stack socket reports for an IPv4
peer) is checked as the IPv4 address it is; a scope (``fe80::1%eth0``) is
ignored; anything that is not an address is in no network.  Answers are
cached per address string (bounded), since the same few clients come back.
"""

from __future__ import annotations

import ipaddress

__all__ = ["Networks", "parse_address"]

_CACHE_LIMIT = 65536


def parse_address(text: str):
    """The address ``text`` names (IPv4-mapped IPv6 as IPv4), or None."""
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip


class Networks:
    """A set of CIDR ranges; ``address in networks`` for address strings or objects."""

    __slots__ = ("_networks", "_cache")

    def __init__(self, cidrs=()):
        self._networks = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)
        self._cache: dict = {}

    def __bool__(self) -> bool:
        return bool(self._networks)

    def __len__(self) -> int:
        return len(self._networks)

    def __contains__(self, address) -> bool:
        known = self._cache.get(address)
        if known is None:
            ip = parse_address(address) if isinstance(address, str) else address
            if ip is not None and ip.version == 6 and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            known = ip is not None and any(
                ip.version == n.version and ip in n for n in self._networks
            )
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[address] = known
        return known
