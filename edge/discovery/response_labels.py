"""
Labels of the response-side middlewares: ``compress`` and ``errors``.

Called by :mod:`edge.discovery.labels` with one middleware's options
(``option -> (label, value)``, options lower-cased).  Each reader returns
the snapshot value, None when the middleware changes nothing, or a string
saying why it cannot be built (the router then leaves it out with a
warning: neither middleware protects anything).
"""

from __future__ import annotations

import re

from edge.snapshot import Compress, Errors

__all__ = ["response_middleware", "v1_errors", "ENCODINGS"]

ENCODINGS = ("zstd", "br", "gzip")
# A query must be a path edge can put in a request line as it is.
_QUERY = re.compile(r"[!-~]*\Z")


def _list(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def response_middleware(reader, kind: str, opts: dict[str, tuple[str, str]]):
    if kind == "compress":
        return _compress(reader, opts)
    return _errors(reader, opts, reader.provider)


def _compress(reader, opts):
    from edge.http.compress import AVAILABLE, media_type

    values: dict = {}
    for opt, (label, value) in opts.items():
        if opt == "":
            # compress=true: the middleware with its defaults.
            if not reader.boolean(label, value, True):
                return None
        elif opt in ("excludedcontenttypes", "includedcontenttypes"):
            types = _list(value)
            for item in types:
                if media_type(item.encode("latin-1")) is None:
                    reader.error(label, f"label {label}: {item!r} is not a media type")
                    return f"its {opt} has a bad media type"
            values["excluded_content_types" if opt.startswith("ex") else "included_content_types"] = types
        elif opt == "minresponsebodybytes":
            number = reader.integer(label, value, 1024, 0, 2**31 - 1)
            values["min_response_body_bytes"] = number or 1024  # Traefik: 0 is the default
        elif opt == "encodings":
            items = tuple(e.lower() for e in _list(value))
            bad = [e for e in items if e not in ENCODINGS]
            if bad or not items:
                reader.error(label, f"label {label}: expected some of zstd, br, gzip, got {value!r}")
                return "its encodings are not zstd, br or gzip"
            missing = [e for e in items if e not in AVAILABLE]
            if missing:
                reader.warn(label, f"label {label}: {', '.join(missing)} is not available in this"
                                   " edge (Python package missing); not used")
            values["encodings"] = tuple(dict.fromkeys(items))
        elif opt == "defaultencoding":
            values["default_encoding"] = value.strip().lower()
        else:
            reader.unknown(label)
    if values.get("excluded_content_types") and values.get("included_content_types"):
        label = opts["includedcontenttypes"][0]
        reader.error(label, f"label {label}: excludedContentTypes and includedContentTypes"
                            " cannot both be set (Traefik refuses it)")
        return "it sets both excludedContentTypes and includedContentTypes"
    default = values.get("default_encoding", "")
    if default and default not in values.get("encodings", ENCODINGS):
        label = opts["defaultencoding"][0]
        reader.error(label, f"label {label}: {default!r} is not one of its encodings")
        return "its defaultEncoding is not one of its encodings"
    return Compress(**values)


def _ranges(reader, label: str, value: str):
    """``500-599,404`` as ((500, 599), (404, 404)), or None (an error said why)."""
    out = []
    for item in _list(value):
        low, dash, high = item.partition("-")
        try:
            lo = int(low.strip(), 10)
            hi = int(high.strip(), 10) if dash else lo
        except ValueError:
            lo = hi = -1
        if not (100 <= lo <= hi <= 999):
            reader.error(label, f"label {label}: {item!r} is not a status code or a range like 500-599")
            return None
        out.append((lo, hi))
    return tuple(out)


def _errors(reader, opts, provider: str):
    status: tuple = ()
    service = ""
    query = ""
    rewrites = []
    for opt, (label, value) in opts.items():
        if opt == "status":
            found = _ranges(reader, label, value)
            if found is None:
                return "its status is not a list of codes and ranges"
            status = found
        elif opt == "service":
            service = value.strip()
        elif opt == "query":
            query = value.strip()
            if not _QUERY.match(query):
                reader.error(label, f"label {label}: {value!r} is not a path (no spaces or control characters)")
                return "its query is not a path"
        elif opt.startswith("statusrewrites.") and len(opt) > len("statusrewrites."):
            found = _ranges(reader, label, opt[len("statusrewrites."):])
            new = reader.integer(label, value, None, 100, 999)
            if found is None or new is None:
                return "a statusRewrites entry is not a code (range) and a code"
            rewrites += [(lo, hi, new) for lo, hi in found]
        else:
            reader.unknown(label)
    if not service:
        return "it names no service"
    if not status:
        return "it lists no status"
    if "@" not in service:
        service = f"{service}@{provider}"
    return Errors(status=status, service=service, query=query, status_rewrites=tuple(rewrites))


def v1_errors(reader, pages: dict[str, dict[str, tuple[str, str]]]):
    """
    Traefik 1.7 ``frontend.errors.<name>.status/backend/query``, one
    :class:`Errors` per name (in name order).  ``backend`` names the Docker
    service edge made the backend for (its name as edge writes it).
    """
    from edge.discovery.labels import normalize_name

    out = []
    for name in sorted(pages):
        opts = dict(pages[name])
        if "backend" in opts:
            label, value = opts.pop("backend")
            opts["service"] = (label, normalize_name(value.strip()) if value.strip() else "")
        built = _errors(reader, opts, reader.provider)
        if isinstance(built, str):
            where = next(iter(pages[name].values()))[0]
            reader.warn(where, f"error pages {name!r} left out: {built}")
            continue
        out.append(built)
    return out
