"""
The PROXY protocol header edge sends first to a backend that asked for it
(``traefik.tcp.services.<s>.loadbalancer.proxyProtocol.version``), so the
backend learns the client's address (haproxy's proxy-protocol.txt, v1 text
and v2 binary).
"""

from __future__ import annotations

import ipaddress

__all__ = ["proxy_header"]

_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def _ip(address: str):
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    return mapped or ip


def proxy_header(version: int, source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """The header for a connection from ``source`` to ``destination`` (host, port)."""
    try:
        src, dst = _ip(source[0]), _ip(destination[0])
    except ValueError:
        src = dst = None
    if src is not None and src.version != dst.version:
        # An IPv4 client on an IPv6 listener: name both in IPv6.
        src, dst = (ipaddress.IPv6Address(f"::ffff:{a}") if a.version == 4 else a for a in (src, dst))
    if version == 1:
        if src is None:
            return b"PROXY UNKNOWN\r\n"
        family = "TCP4" if src.version == 4 else "TCP6"
        return f"PROXY {family} {src} {dst} {source[1]} {destination[1]}\r\n".encode("ascii")
    if version != 2:
        raise ValueError(f"PROXY protocol version {version} does not exist")
    if src is None:
        return _V2_SIGNATURE + bytes([0x20, 0x00]) + (0).to_bytes(2, "big")  # LOCAL
    family = 0x11 if src.version == 4 else 0x21  # AF_INET/AF_INET6, STREAM
    body = src.packed + dst.packed + source[1].to_bytes(2, "big") + destination[1].to_bytes(2, "big")
    return _V2_SIGNATURE + bytes([0x21, family]) + len(body).to_bytes(2, "big") + body

