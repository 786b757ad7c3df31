"""
Read the server name and ALPN list out of a TLS ClientHello (RFC 8446 4.1.2,
RFC 6066 3, RFC 7301 3.1) without terminating TLS, so a connection can be
routed by name and then passed through byte for byte.

:func:`read_hello` is pure and is called again with the whole buffer as more
bytes arrive; it never reads past ``limit`` bytes, and a ClientHello spread
over several records is reassembled within that bound.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Hello", "MORE", "NOT_TLS", "HelloError", "read_hello", "HELLO_LIMIT"]

HELLO_LIMIT = 65536
"""Bytes edge reads before a ClientHello must be complete (real ones are 0.2-2 KiB)."""

MORE = "more"  # a TLS record started; the ClientHello is not complete yet
NOT_TLS = "not-tls"  # the first byte is not a TLS handshake record

_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16


class HelloError(ValueError):
    """A TLS handshake record that is not a well-formed ClientHello."""


@dataclass(frozen=True)
class Hello:
    sni: str  # lower case; "" when the client sent none
    alpn: tuple[str, ...]


def read_hello(data: bytes, limit: int = HELLO_LIMIT):
    """
    ``NOT_TLS``, ``MORE`` or a :class:`Hello` for the bytes a client sent so
    far; raises :class:`HelloError` for a malformed or oversized one.
    """
    if not data:
        return MORE
    if data[0] != _HANDSHAKE:
        return NOT_TLS
    handshake = bytearray()
    pos = 0
    while True:
        if len(handshake) >= 4:
            _check_head(bytes(handshake), limit)
            need = 4 + int.from_bytes(handshake[1:4], "big")
            if len(handshake) >= need:
                return _parse_body(bytes(handshake[4:need]))
        if pos >= limit:
            raise HelloError(f"no complete ClientHello in the first {limit} bytes")
        if len(data) < pos + 5:
            return MORE
        if data[pos] != _HANDSHAKE:
            raise HelloError("a non-handshake record inside the ClientHello")
        if data[pos + 1] != 3:
            raise HelloError(f"record version {data[pos + 1]}.{data[pos + 2]} is not TLS")
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        if length == 0 or length > 16384 + 2048:
            raise HelloError(f"bad record length {length}")
        if len(data) < pos + 5 + length:
            if pos + 5 + length > limit:
                raise HelloError(f"no complete ClientHello in the first {limit} bytes")
            _check_head(bytes(handshake) + data[pos + 5 :], limit)  # refuse early what cannot fit
            return MORE
        handshake += data[pos + 5 : pos + 5 + length]
        pos += 5 + length


def _check_head(handshake: bytes, limit: int) -> None:
    if len(handshake) >= 4:
        if handshake[0] != _CLIENT_HELLO:
            raise HelloError(f"first handshake message is type {handshake[0]}, not ClientHello")
        need = 4 + int.from_bytes(handshake[1:4], "big")
        if need > limit:
            raise HelloError(f"ClientHello of {need} bytes is over the {limit}-byte limit")


class _Cursor:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise HelloError("ClientHello is truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def number(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, width: int) -> "_Cursor":
        return _Cursor(self.take(self.number(width)))

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def _parse_body(body: bytes) -> Hello:
    c = _Cursor(body)
    c.take(2 + 32)  # legacy_version, random
    c.vector(1)  # legacy_session_id
    c.vector(2)  # cipher_suites
    c.vector(1)  # legacy_compression_methods
    sni, alpn = "", ()
    if c.left == 0:  # no extensions at all (SSL 3-era clients)
        return Hello(sni, alpn)
    extensions = c.vector(2)
    seen = set()
    while extensions.left:
        kind = extensions.number(2)
        data = extensions.vector(2)
        if kind in seen:
            raise HelloError(f"extension {kind} appears twice")  # RFC 8446 4.2
        seen.add(kind)
        if kind == _EXT_SERVER_NAME:
            names = data.vector(2)
            while names.left:
                name_type = names.number(1)
                name = names.vector(2).data
                if name_type == 0 and not sni:
                    try:
                        sni = name.decode("ascii").lower().rstrip(".")
                    except UnicodeDecodeError:
                        raise HelloError("server name is not ASCII") from None
        elif kind == _EXT_ALPN:
            protocols = data.vector(2)
            found = []
            while protocols.left:
                found.append(protocols.vector(1).data.decode("latin-1"))
            alpn = tuple(found)
    return Hello(sni, alpn)
