"""
A fast path of ``hpack.Decoder`` for the header blocks clients repeat.

After its first request a client such as h2load or a browser sends the same
fields again, and HPACK (RFC 7541 6.1) makes each one an index of one byte
(``0x81``-``0xfe``: static or dynamic table entry 1-126).  ``hpack.Decoder``
decodes such a block field by field in Python (a memoryview slice, an integer
decode, a tuple built twice and a debug log call per field); for a small
HTTP/2 request that was about a tenth of edge's work.  :class:`Decoder` looks
such a block's entries up in the same table, with the same errors (an index
past the table, a header list over ``max_header_list_size``, a table size
over the allowed one), and hands every other block (a literal, a table-size
update, a longer index) to ``hpack.Decoder.decode`` unchanged.  Indexed
fields never change the table, so both paths leave it the same; the last
such block (up to 128 bytes) and its fields are kept, for a client that
repeats a request byte for byte, until hpack's path or a size change might
have changed the table.  Used on
edge's server connections when ``[http] speedups`` is on
(``speedups.h2_hpack``).
"""

from __future__ import annotations

import hpack
from hpack.exceptions import OversizedHeaderListError
from hpack.struct import HeaderTuple

__all__ = ["Decoder"]

_new = tuple.__new__


_CACHED = 128  # the longest block kept as the last one (bytes; one per connection)


class Decoder(hpack.Decoder):
    """``hpack.Decoder`` with a fast path for blocks of one-byte indexed fields."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The last fast-path block and its fields: a client repeating a request
        # sends the very same bytes.  Valid while the table is unchanged, which
        # only hpack's path (a literal, a size update) or a size change can do.
        self._last = None
        self._last_fields = ()
        self._last_size = 0

    @property
    def header_table_size(self) -> int:
        return self.header_table.maxsize

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self._last = None
        self.header_table.maxsize = value

    def decode(self, data, raw: bool = False):
        if data == self._last and raw and self._last_size <= self.max_header_list_size:
            self._assert_valid_table_size()
            return list(self._last_fields)
        # Every byte 0x81-0xfe: each field is one indexed representation of index 1-126
        # (0x80 is index 0, an error; 0xff starts a longer index): hpack's own path for those.
        if not raw or not data or min(data) <= 0x80 or max(data) == 0xFF:
            self._last = None
            return super().decode(data, raw)
        get = self.header_table.get_by_index  # raises InvalidTableIndex past the table
        limit = self.max_header_list_size
        size = 0
        headers = []
        for byte in data:
            entry = get(byte & 0x7F)
            size += 32 + len(entry[0]) + len(entry[1])  # hpack.table.table_entry_size
            if size > limit:
                raise OversizedHeaderListError(f"A header list larger than {limit} has been received")
            headers.append(_new(HeaderTuple, entry))
        self._assert_valid_table_size()
        if len(data) <= _CACHED:
            self._last, self._last_fields, self._last_size = bytes(data), tuple(headers), size
        return headers
