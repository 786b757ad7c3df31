"""
An HPACK encoder (RFC 7541) for the header blocks edge sends on HTTP/2.

``hpack.Encoder`` looks every field up by scanning its tables, Huffman-codes
every literal in Python and logs each field; for a 100-byte answer it was the
largest single cost of edge's HTTP/2 response.  This one finds a field or its
name in dicts (static table, and the dynamic table by insertion number), sends
literals without Huffman coding (a few bytes more, once per new value: a
repeated field is one index byte either way) and keeps the same dynamic-table
discipline, so any decoder reads it.  It has ``hpack.Encoder``'s interface as
``h2`` uses it (``encode(headers)``, ``header_table_size``), and replaces it on
edge's server connections when ``[http] speedups`` is on (``speedups.h2_hpack``).
"""

from __future__ import annotations

from collections import deque

from hpack.table import HeaderTable

__all__ = ["Encoder"]

_STATIC = HeaderTable.STATIC_TABLE  # ((name, value), ...), index 1 first
_STATIC_FULL = {}
_STATIC_NAME = {}
for _i, (_name, _value) in enumerate(_STATIC, 1):
    _STATIC_FULL.setdefault((_name, _value), _i)
    _STATIC_NAME.setdefault(_name, _i)
_DYNAMIC_BASE = len(_STATIC) + 1  # 62: the newest dynamic entry's index

# Fields kept out of the dynamic table and marked never-indexed (RFC 7541 7.1.3):
# secrets that a compression-ratio attack could probe.
_SENSITIVE = frozenset({b"set-cookie", b"cookie", b"authorization", b"proxy-authorization"})
_INDEXED = tuple(bytes((0x80 | i,)) for i in range(127))


def _int(value: int, prefix: int, first: int = 0) -> bytes:
    """An HPACK integer (RFC 7541 5.1) after ``first``'s high bits."""
    top = (1 << prefix) - 1
    if value < top:
        return bytes((first | value,))
    out = bytearray((first | top,))
    value -= top
    while value >= 128:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class Encoder:
    """One connection's HPACK encoding context (the peer's decoder mirrors its table)."""

    def __init__(self, max_size: int = 4096):
        self._max = max_size  # the table size the peer's decoder uses
        self._size = 0
        self._entries: deque = deque()  # ((name, value), size), oldest first
        self._inserted = 0  # entries added so far: entry number n is at 62 + inserted - 1 - n
        self._oldest = 0  # number of the oldest entry still in the table
        self._full: dict = {}  # (name, value) -> number of its newest entry
        self._names: dict = {}  # name -> number of the newest entry with it
        self._low = None  # the smallest size set since the last block (to signal, RFC 7541 4.2)

    @property
    def header_table_size(self) -> int:
        return self._max

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        # h2 sets the peer's SETTINGS_HEADER_TABLE_SIZE here.
        self._low = value if self._low is None else min(self._low, value)
        self._max = value
        self._evict(0)

    def encode(self, headers, huffman: bool = True) -> bytes:
        out = []
        if self._low is not None:
            if self._low < self._max:
                out.append(_int(self._low, 5, 0x20))
            out.append(_int(self._max, 5, 0x20))
            self._low = None
        full = self._full
        for field in headers:
            name, value = field[0], field[1]
            if name.__class__ is str:
                name = name.encode("utf-8")
            if value.__class__ is str:
                value = value.encode("utf-8")
            key = (name, value)
            index = _STATIC_FULL.get(key)
            if index is not None:
                out.append(_INDEXED[index])
                continue
            number = full.get(key)
            if number is not None:
                index = _DYNAMIC_BASE + self._inserted - 1 - number
                out.append(_INDEXED[index] if index < 127 else _int(index, 7, 0x80))
                continue
            name_index = _STATIC_NAME.get(name)
            if name_index is None:
                number = self._names.get(name)
                if number is not None:
                    name_index = _DYNAMIC_BASE + self._inserted - 1 - number
            size = 32 + len(name) + len(value)
            never = name in _SENSITIVE or getattr(field, "indexable", True) is False
            if never:
                out.append(_int(name_index or 0, 4, 0x10))
            elif size > self._max // 4:  # would push out much of the table for one field
                out.append(_int(name_index or 0, 4, 0x00))
            else:
                out.append(_int(name_index or 0, 6, 0x40))
            if not name_index:
                out.append(_int(len(name), 7, 0))
                out.append(name)
            out.append(_int(len(value), 7, 0))
            out.append(value)
            if not never and size <= self._max // 4:
                self._add(key, size)
        return b"".join(out)

    def _add(self, key, size: int) -> None:
        self._evict(size)
        number = self._inserted
        self._inserted = number + 1
        self._entries.append((key, size))
        self._size += size
        self._full[key] = number
        self._names[key[0]] = number

    def _evict(self, room: int) -> None:
        """Drop the oldest entries until ``room`` more bytes fit."""
        entries = self._entries
        while entries and self._size + room > self._max:
            key, size = entries.popleft()
            number = self._oldest
            self._oldest = number + 1
            self._size -= size
            if self._full.get(key) == number:
                del self._full[key]
            if self._names.get(key[0]) == number:
                del self._names[key[0]]
