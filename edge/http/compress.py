"""
The ``compress`` middleware: answers encoded with zstd, brotli or gzip.

What Traefik documents (``compress``, v2/v3) is what edge does:

* the encoding is negotiated from ``Accept-Encoding`` (q-values; ``q=0``
  refuses one; ``*`` stands for the others; ties go to the order of
  ``encodings``, default ``zstd, br, gzip``); no ``Accept-Encoding`` means
  no encoding unless ``defaultEncoding`` is set; an empty one means none;
* never a HEAD request, a ``Range`` request, a 1xx/204/206/304 answer, one
  that has a ``Content-Encoding`` already, ``application/grpc``, an
  excluded (or not included) ``Content-Type``, a request whose own
  ``Content-Type`` is excluded, or an answer whose ``Content-Length`` is
  below ``minResponseBodyBytes`` (default 1024).  An answer of unknown
  length (chunked) is compressed whatever its size, as Traefik documents
  ("chunked data ... will ignore this setting", so server-sent events are
  not held back): its head waits only for its first body bytes;
* a compressed answer loses ``Content-Length`` and ``Accept-Ranges``
  (chunked to HTTP/1.1 clients, no length on HTTP/2), a strong ``ETag``
  becomes weak (it names another representation now), and every answer of
  a negotiated request says ``Vary: Accept-Encoding``.

Streaming: each backend read is compressed and flushed (a sync flush) at
the end of that read, so nothing is held longer than the read that brought
it and memory stays bounded by the encoders' windows (gzip 32 KiB, brotli
and zstd capped at 256 KiB / 512 KiB here).  brotli and zstd come from the
``brotli`` and ``zstandard`` packages; without one of them its encoding is
simply never chosen (the label reader warns).
"""

from __future__ import annotations

import zlib

from edge.http.response_filters import Filter, Head
from edge.snapshot import Compress

try:
    import brotli as _brotli
except ImportError:  # pragma: no cover -- a dependency; its absence is reported
    _brotli = None
try:
    import zstandard as _zstd
except ImportError:  # pragma: no cover
    _zstd = None

__all__ = ["AVAILABLE", "negotiate", "media_type", "CompressMiddleware"]

AVAILABLE = frozenset(
    {"gzip"} | ({"br"} if _brotli is not None else set()) | ({"zstd"} if _zstd is not None else set())
)


def negotiate(values, encodings, default: str = "") -> str | None:
    """
    The encoding to use for a request's ``Accept-Encoding`` field values
    (bytes; None when the request has none), or None for none.

    Each of ``encodings`` (by preference) gets the q-value the client gave
    it, else that of ``*``; the highest q above 0 wins, an encoding named
    beats one reached by ``*``, then ``default``, then the order of
    ``encodings``.  A malformed q-value counts as 0.
    """
    if values is None:
        return default or None
    named: dict[str, float] = {}
    star = None
    for value in values:
        for item in value.split(b","):
            name, _, params = item.partition(b";")
            name = name.strip().lower()
            if not name:
                continue
            q = 1.0
            for param in params.split(b";"):
                key, eq, number = param.partition(b"=")
                if eq and key.strip().lower() == b"q":
                    try:
                        q = float(number.strip())
                    except ValueError:
                        q = 0.0
                    if not 0.0 <= q <= 1.0:
                        q = 0.0
            text = name.decode("latin-1")
            if text == "*":
                star = q
            else:
                named[text] = q
    best = None
    best_key = None
    for index, encoding in enumerate(encodings):
        explicit = encoding in named
        q = named[encoding] if explicit else (star if star is not None else 0.0)
        if q <= 0.0:
            continue
        key = (q, explicit, encoding == default, -index)
        if best_key is None or key > best_key:
            best, best_key = encoding, key
    return best


def media_type(value: bytes):
    """(type/subtype lower case, {param: value}) of a Content-Type, or None if it does not parse."""
    text = value.decode("latin-1").strip()
    kind, _, rest = text.partition(";")
    kind = kind.strip().lower()
    top, slash, sub = kind.partition("/")
    if not slash or not top or not sub or any(c in kind for c in ' \t"(),:<>?@[\\]{}='):
        return None
    params = {}
    for part in rest.split(";"):
        if not part.strip():
            continue
        key, eq, val = part.partition("=")
        if not eq or not key.strip():
            return None
        params[key.strip().lower()] = val.strip().strip('"')
    return kind, params


def _matches(pattern, found) -> bool:
    """Traefik's rule: the media types equal, and the pattern's parameters (if any) all equal."""
    kind, params = pattern
    if kind != found[0]:
        return False
    return not params or params == found[1]


class _Gzip:
    __slots__ = ("_z",)

    def __init__(self):
        self._z = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: gzip framing, 32 KiB window

    def compress(self, data: bytes) -> bytes:
        return self._z.compress(data)

    def flush(self) -> bytes:
        return self._z.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._z.flush(zlib.Z_FINISH)


class _Brotli:
    __slots__ = ("_b",)

    def __init__(self):
        self._b = _brotli.Compressor(quality=6, lgwin=18)

    def compress(self, data: bytes) -> bytes:
        return self._b.process(data)

    def flush(self) -> bytes:
        return self._b.flush()

    def finish(self) -> bytes:
        return self._b.finish()


class _Zstd:
    __slots__ = ("_z",)

    def __init__(self):
        params = _zstd.ZstdCompressionParameters.from_level(3, window_log=19, write_content_size=0)
        # One compressor per answer: a compressobj shares its compressor's context.
        self._z = _zstd.ZstdCompressor(compression_params=params).compressobj()

    def compress(self, data: bytes) -> bytes:
        return self._z.compress(data)

    def flush(self) -> bytes:
        return self._z.flush(_zstd.COMPRESSOBJ_FLUSH_BLOCK)

    def finish(self) -> bytes:
        return self._z.flush(_zstd.COMPRESSOBJ_FLUSH_FINISH)


_ENCODERS = {"gzip": _Gzip, "br": _Brotli, "zstd": _Zstd}
_GRPC = ("application/grpc", {})
_NO_BODY = frozenset({204, 206, 304})


class CompressMiddleware:
    """One router's ``compress``, compiled; called per request to make its filter."""

    def __init__(self, mw: Compress):
        self.encodings = tuple(e for e in mw.encodings if e in AVAILABLE)
        self.default = mw.default_encoding if mw.default_encoding in self.encodings else ""
        self.min_bytes = mw.min_response_body_bytes
        self.excluded = (_GRPC,) + tuple(t for t in map(_parse, mw.excluded_content_types) if t)
        self.included = tuple(t for t in map(_parse, mw.included_content_types) if t)

    def __call__(self, out, req):
        if req.method == b"HEAD" or not self.encodings:
            return out
        accept = None
        for name, value in req.headers:
            lower = name.lower()
            if lower == b"accept-encoding":
                accept = (accept or []) + [value]
            elif lower == b"range":
                return out  # a part of the representation: never encoded
            elif lower == b"content-type":
                found = media_type(value)
                if found is not None and any(_matches(p, found) for p in self.excluded):
                    return out  # Traefik also looks at the request's type (text/event-stream)
        encoding = negotiate(accept, self.encodings, self.default)
        if encoding is None:
            return out
        return _CompressFilter(out, req, self, encoding)

    def wants(self, head, pairs) -> bool:
        """Whether this answer is to be encoded (the request already qualified)."""
        status = head.status
        if status < 200 or status in _NO_BODY:
            return False
        kind = None
        for name, value in pairs:
            lower = name.lower()
            if lower == b"content-encoding":
                if value.strip():
                    return False
            elif lower == b"content-type":
                kind = value
        if kind is not None and kind.strip():
            found = media_type(kind)
            if found is None:
                return False  # unparsable: not compressed (Traefik)
            if self.included:
                if not any(_matches(p, found) for p in self.included):
                    return False
            elif any(_matches(p, found) for p in self.excluded):
                return False
        elif self.included:
            return False  # edge never sniffs a type
        cl = head.content_length
        if cl is not None and not head.chunked:
            try:
                if int(cl) < self.min_bytes:
                    return False
            except ValueError:
                return False
        return True


def _parse(text: str):
    return media_type(text.encode("latin-1"))


def _with_vary(pairs: list) -> list:
    """``pairs`` saying ``Vary: Accept-Encoding`` (added to a Vary field, not repeated)."""
    for i, (name, value) in enumerate(pairs):
        if name.lower() == b"vary":
            tokens = [t.strip().lower() for t in value.split(b",")]
            if b"accept-encoding" in tokens or b"*" in tokens:
                return pairs
            pairs = list(pairs)
            pairs[i] = (name, value + b", Accept-Encoding")
            return pairs
    return pairs + [(b"Vary", b"Accept-Encoding")]


class _CompressFilter(Filter):
    """Encodes one answer (or passes it on with ``Vary``), one backend read at a time."""

    def __init__(self, out, req, config: CompressMiddleware, encoding: str):
        super().__init__(out, req)
        self._config = config
        self._encoding = encoding
        self._encoder = None
        self._held = None  # (encoded head, plain head) until the first body bytes
        self._dirty = False  # bytes went into the encoder since its last flush

    def response_head(self, req, head) -> bool:
        pairs = head.relayable()
        if head.status == 101 or not self._config.wants(head, pairs):
            if head.status == 101:
                return self.out.response_head(req, head)
            return self.out.response_head(req, Head(head.status, head.reason, _with_vary(pairs),
                                                   head.content_length, head.chunked))
        encoded = []
        for name, value in pairs:
            lower = name.lower()
            if lower == b"accept-ranges" or lower == b"content-length":
                continue
            if lower == b"etag" and value.startswith(b'"'):
                value = b"W/" + value
            encoded.append((name, value))
        encoded.append((b"Content-Encoding", self._encoding.encode("ascii")))
        encoded = _with_vary(encoded)
        coded = Head(head.status, head.reason, encoded, None, True)
        if head.content_length is not None and not head.chunked:
            self._start(req, coded)
            return False
        # Unknown length: the head waits for the first body bytes (none: sent plain).
        self._held = (coded, Head(head.status, head.reason, _with_vary(pairs), None, head.chunked))
        return False

    def _start(self, req, coded) -> None:
        self._held = None
        self._encoder = _ENCODERS[self._encoding]()
        self.out.response_head(req, coded)

    def response_body(self, req, data: bytes) -> None:
        if not data:
            return
        if self._held is not None:
            self._start(req, self._held[0])
        encoder = self._encoder
        if encoder is None:
            self.out.response_body(req, data)
            return
        self._dirty = True
        out = encoder.compress(data)
        if out:
            self.out.response_body(req, out)

    def flush(self) -> None:
        if self._dirty:
            self._dirty = False
            out = self._encoder.flush()
            if out:
                self.out.response_body(self.req, out)
        self.out.flush()

    def response_end(self, req) -> None:
        if self._held is not None:
            plain = self._held[1]
            self._held = None
            self.out.response_head(req, plain)
        elif self._encoder is not None:
            self._dirty = False
            out = self._encoder.finish()
            self._encoder = None
            if out:
                self.out.response_body(req, out)
        self.out.response_end(req)
