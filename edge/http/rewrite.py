"""
Path and URL rewrites of Traefik's middlewares: replacePath, replacePathRegex,
addPrefix, stripPrefixRegex, redirectRegex.

Traefik works on Go's decoded ``URL.Path`` and re-escapes it; edge's target
arrives normalised (edge.http.target), so each rewrite decodes the path,
changes it and encodes it again the same way, keeping the query as it came.
Regexps are Go's RE2 syntax read by Python's ``re`` (the common subset);
replacements use Go's ``$1``, ``${1}``, ``$name``, ``${name}`` and ``$$``.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote_to_bytes

from edge.http.middlewares import Reply
from edge.snapshot import AddPrefix, RedirectRegex, ReplacePath, ReplacePathRegex, StripPrefixRegex

__all__ = ["go_expand", "replace_path", "replace_path_regex", "add_prefix", "strip_prefix_regex",
           "redirect_regex"]

_TEMPLATE = re.compile(r"\$(\$|\{(\w+)\}|(\w+))")


def go_expand(template: str, match: re.Match) -> str:
    """Go's ``Regexp.Expand``: ``$1``, ``${name}``; an unknown group is empty."""

    def one(m: re.Match) -> str:
        if m.group(1) == "$":
            return "$"
        name = m.group(2) or m.group(3)
        try:
            value = match.group(int(name)) if name.isdigit() else match.group(name)
        except (IndexError, re.error):
            value = None
        return value or ""

    return _TEMPLATE.sub(one, template)



def _split(target: bytes) -> tuple[str, bytes]:
    path, sep, query = target.partition(b"?")
    return unquote_to_bytes(path).decode("utf-8", "surrogateescape"), sep + query


def _join(path: str, query: bytes) -> bytes:
    if not path.startswith("/"):
        path = "/" + path
    raw = path.encode("utf-8", "surrogateescape")
    return quote(raw, safe="/:@!$&'()*+,;=~").encode("ascii") + query


def _raw_path(target: bytes) -> bytes:
    return target.partition(b"?")[0]


def replace_path(mw: ReplacePath):
    def replace(request):
        _path, query = _split(request.target)
        request.headers.append((b"X-Replaced-Path", _raw_path(request.target)))
        request.target = _join(mw.path, query)
        return None

    return replace


def replace_path_regex(mw: ReplacePathRegex):
    regex = re.compile(mw.regex)

    def replace(request):
        path, query = _split(request.target)
        if regex.search(path) is None:
            return None
        request.headers.append((b"X-Replaced-Path", _raw_path(request.target)))
        request.target = _join(regex.sub(lambda m: go_expand(mw.replacement, m), path), query)
        return None

    return replace


def add_prefix(mw: AddPrefix):
    def prefix(request):
        path, query = _split(request.target)
        request.target = _join(mw.prefix + path, query)
        return None

    return prefix


def strip_prefix_regex(mw: StripPrefixRegex):
    regexes = tuple(re.compile(r) for r in mw.regexes)

    def strip(request):
        path, query = _split(request.target)
        for regex in regexes:
            m = regex.search(path)
            if m is None or not m.group(0) or not path.startswith(m.group(0)):
                continue
            prefix = m.group(0)
            request.headers.append((b"X-Forwarded-Prefix", _join(prefix, b"")))
            request.target = _join(path[len(prefix):], query)
            return None
        return None

    return strip


def redirect_regex(mw: RedirectRegex):
    regex = re.compile(mw.regex)

    def redirect(request):
        url = (request.scheme + "://").encode("ascii") + (request.host or b"") + request.target
        text = url.decode("latin-1")
        m = regex.search(text)
        if m is None:
            return None
        location = regex.sub(lambda found: go_expand(mw.replacement, found), text)
        if location == text:
            return None  # the same URL: no redirect loop
        safe = request.method in (b"GET", b"HEAD")
        if mw.permanent:
            status, reason = (301, b"Moved Permanently") if safe else (308, b"Permanent Redirect")
        else:
            status, reason = (302, b"Found") if safe else (307, b"Temporary Redirect")
        return Reply(status, reason, [(b"Location", location.encode("latin-1"))], b"")

    return redirect
