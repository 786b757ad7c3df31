"""
The request target as edge routes and forwards it.

A path rule is only as good as the path it is matched against.  Before any
router sees a request, its origin-form path goes through the three steps
Traefik v3 documents for its entry points (docs/http.md, "Request paths"):

1. Encoded characters that mean something to a path or to a backend's
   parser -- ``%2F`` (/), ``%5C`` (\\), ``%00``, ``%3B`` (;), ``%25`` (%),
   ``%3F`` (?), ``%23`` (#) -- are refused with 400 unless the operator
   allows them (``http.allowed_encoded_characters``).  Malformed escapes are
   refused too.
2. Normalisation: percent-encoded unreserved characters are decoded (RFC 3986
   §2.3: ``%61`` is ``a``, ``%2E`` is ``.``), other escapes are upper-cased
   (§6.2.2.1).
3. Sanitisation: ``.`` and ``..`` segments are removed (§5.2.4) and runs of
   slashes are merged, so ``/api/../admin`` and ``/api/%2e%2e/admin`` are
   ``/admin``.

The result is what the backend receives, and its fully decoded form is what
``Path``/``PathPrefix``/``PathRegexp`` rules match, so a rule and the backend
always look at the same path.  The query is forwarded untouched.

Before all that, a target holding a byte that no request-target may hold --
outside printable ASCII: controls, space, DEL and every byte from 0x80 (RFC
3986 §2: a URI is ASCII; other octets travel percent-encoded) -- is refused
with 400 (RFC 9112 §3.2), whatever framing brought it.  llhttp refuses them
on HTTP/1.1 already; over HTTP/2 ``:path`` is an HPACK string that may carry
any of them, and forwarding them raw would hand a backend a path edge's
rules never matched as it will read it.  Printable characters RFC 3986 does
not list (``"<>\\^`{|}``) are let through: browsers send some of them raw,
nghttp2 and Go's server accept them, and they split nothing.
"""

from __future__ import annotations

import re

__all__ = ["BadTarget", "ENCODED_CHARACTERS", "normalize_path", "decode_path", "encoded_allowance", "split_target"]


class BadTarget(ValueError):
    """A request target edge refuses (answered with 400)."""


# Option names (as in ``http.allowed_encoded_characters``) -> the byte they encode.
ENCODED_CHARACTERS = {
    "slash": 0x2F,
    "backslash": 0x5C,
    "null": 0x00,
    "semicolon": 0x3B,
    "percent": 0x25,
    "question_mark": 0x3F,
    "hash": 0x23,
}
_REFUSED = frozenset(ENCODED_CHARACTERS.values())
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_NOT_PRINTABLE_ASCII = re.compile(rb"[^\x21-\x7e]")


def encoded_allowance(names) -> frozenset[int]:
    """The bytes whose escapes are let through, from option names."""
    return frozenset(ENCODED_CHARACTERS[n] for n in names)


def normalize_path(path: bytes, allowed: frozenset[int] = frozenset()) -> bytes:
    """
    ``path`` (origin-form, no query) normalised and sanitised, or :class:`BadTarget`.

    Cheap when there is nothing to do: most paths have no ``%``, no dot
    segment and no doubled slash, and come back as they are.
    """
    if b"%" not in path and b"/." not in path and b"//" not in path:
        return path
    if b"%" in path:
        path = _normalize_escapes(path, allowed)
    return _remove_dot_segments(path)


def _normalize_escapes(path: bytes, allowed: frozenset[int]) -> bytes:
    out = bytearray()
    i = 0
    n = len(path)
    while i < n:
        c = path[i]
        if c != 0x25:
            out.append(c)
            i += 1
            continue
        if i + 2 >= n:
            raise BadTarget("malformed percent-encoding in path")
        hi, lo = path[i + 1], path[i + 2]
        if hi not in _HEX or lo not in _HEX:
            raise BadTarget("malformed percent-encoding in path")
        value = int(path[i + 1 : i + 3], 16)
        if value in _UNRESERVED:
            out.append(value)
        elif value in _REFUSED and value not in allowed:
            raise BadTarget(f"encoded {chr(value)!r} in path" if value else "encoded NUL in path")
        else:
            out += b"%%%02X" % value
        i += 3
    return bytes(out)


def _remove_dot_segments(path: bytes) -> bytes:
    """RFC 3986 §5.2.4 on an absolute path, with empty segments merged away."""
    segments = path.split(b"/")
    # segments[0] is b"" (the path starts with "/").
    kept: list[bytes] = []
    last = len(segments) - 1
    trailing = False
    for index, segment in enumerate(segments[1:], 1):
        if segment == b"..":
            if kept:
                kept.pop()
            trailing = index == last
        elif segment == b".":
            trailing = index == last
        elif segment == b"":
            trailing = index == last
        else:
            kept.append(segment)
            trailing = False
    result = b"/" + b"/".join(kept)
    if trailing and kept:
        result += b"/"
    return result


def decode_path(path: bytes) -> str:
    """
    The path a rule matches: a normalised path with its escapes decoded.

    Bytes that are not UTF-8 stay distinct (surrogate escapes), so they can
    never compare equal to a rule's text.
    """
    if b"%" in path:
        from urllib.parse import unquote_to_bytes

        path = unquote_to_bytes(path)
    return path.decode("utf-8", "surrogateescape")


def split_target(method: bytes, target: bytes, allowed: frozenset[int] = frozenset(),
                 absolute_form: bool = True) -> tuple[bytes | None, bytes]:
    """
    ``(authority, target)``: the request target in origin-form, normalised.

    ``authority`` is the host of an absolute-form target (RFC 9112 §3.2.2:
    it replaces the Host header), else None.  An absolute-form target needs
    an ``http``/``https`` scheme (any case) and a non-empty authority without
    userinfo (RFC 9110 §4.2.4); asterisk-form is for OPTIONS only.  HTTP/2
    passes ``absolute_form=False``: ``:path`` is origin-form or ``*`` (RFC
    9113 §8.3.1), the authority is ``:authority`` alone.
    """
    if _NOT_PRINTABLE_ASCII.search(target) is not None:
        raise BadTarget("a byte outside printable ASCII in the request target")
    if target[:1] == b"/":
        authority = None
        rest = target
    elif target == b"*":
        if method != b"OPTIONS":
            raise BadTarget("asterisk-form target is only for OPTIONS")
        return None, target
    elif not absolute_form:
        raise BadTarget("request target not in origin-form")
    else:
        scheme, sep, rest = target.partition(b"://")
        if not sep or scheme.lower() not in (b"http", b"https"):
            raise BadTarget("invalid request target")
        end = len(rest)
        for delimiter in (b"/", b"?", b"#"):
            at = rest.find(delimiter)
            if at != -1 and at < end:
                end = at
        authority, rest = rest[:end], rest[end:]
        if not authority or b"@" in authority:
            raise BadTarget("absolute-form target without a valid host")
        if not rest.startswith(b"/"):
            rest = b"/" + rest
    path, question, query = rest.partition(b"?")
    if b"#" in path:
        raise BadTarget("fragment in request target")
    path = normalize_path(path, allowed)
    return authority, path + question + query
