"""
Read Traefik v1, Traefik v2/v3 and edge's own ``edge.*`` labels into routers
and services.

One Docker service (or container) at a time: :func:`read_labels` turns its
labels into :class:`~edge.snapshot.Router` values and :class:`ServiceSpec`
descriptions (the Docker provider adds the targets).  Nothing here raises on
bad labels: each mistake becomes a :class:`~edge.snapshot.Problem` naming the
label, and only the router it breaks is dropped.  A router whose
authentication or allow-list middleware cannot be built is always dropped,
never served unprotected.

Which labels are read:

- ``edge.*`` routing labels (the v2 grammar under the ``edge.`` prefix), when
  present, win: the service's ``traefik.*`` labels are then ignored, so one
  service can carry both during a migration.
- Otherwise Traefik v2/v3 labels (``traefik.http.*``, ``traefik.swarm.*``).
- Otherwise Traefik v1 labels (``traefik.frontend.*``, ``traefik.port``...,
  segments ``traefik.<segment>.frontend.*``).

``docs/labels.md`` lists every label and what edge does with it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import stat
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Mapping
from urllib.parse import urlsplit

from twisted.logger import Logger

from edge.discovery import resilience_labels
from edge.discovery.l4labels import L4Labels, read_l4_labels
from edge.discovery.rule_parser import RuleError, parse_v1, parse_v2
from edge.rules import Rule
from edge.snapshot import (
    AddPrefix,
    BasicAuth,
    ForwardAuth,
    HealthCheck,
    InFlightReq,
    RateLimit,
    RedirectRegex,
    ReplacePath,
    ReplacePathRegex,
    SourceCriterion,
    StripPrefixRegex,
    Headers,
    IPAllowList,
    Middleware,
    Problem,
    RedirectScheme,
    Router,
    RouterTLS,
    StickyCookie,
    StripPrefix,
)

__all__ = [
    "ServiceSpec",
    "LabelConfig",
    "read_labels",
    "read_middlewares",
    "normalize_name",
    "default_host",
    "compose_source",
    "CONFLICT",
    "LabelFiles",
    "label_file_paths",
    "read_label_files",
    "PROVIDERS",
    "build_file_middleware",
    "resolve_references",
]

_log = Logger()


@dataclass(frozen=True)
class ServiceSpec:
    """What labels say about one load-balanced service; targets come from Docker."""

    name: str  # qualified: "web@docker"
    port: int | None = None  # container port; None = the labels gave none
    scheme: str = "http"
    weight: int = 1
    network: str = ""
    lb_swarm: bool = False  # use the service's virtual IP, not task addresses
    pass_host_header: bool = True
    sticky: StickyCookie | None = None
    health_check: HealthCheck | None = None


@dataclass(frozen=True)
class LabelConfig:
    enabled: bool
    routers: tuple[Router, ...]
    services: tuple[ServiceSpec, ...]
    problems: tuple[Problem, ...]
    l4: L4Labels = L4Labels()  # traefik.tcp.* / traefik.udp.* (edge.discovery.l4labels)


def normalize_name(source: str) -> str:
    """A Docker service name as a DNS label: ``proxy_jenkins`` -> ``proxy-jenkins``."""
    return source.replace("_", "-").replace("/", "-").strip("-").lower()


def default_host(source: str, domain: str) -> str:
    """The host of Traefik's default rule, ``<service>.<domain>`` ("" without a domain)."""
    domain = domain.strip().strip(".").lower()
    name = normalize_name(source)
    if not domain or not name:
        return ""
    return f"{name}.{domain}"


# -- value readers ---------------------------------------------------------

_TRUE = {"1", "t", "true", "yes", "on"}
_FALSE = {"0", "f", "false", "no", "off"}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}

# Providers a router's ``middlewares=name@provider`` may name.
PROVIDERS = ("docker", "file")

# Middleware kinds whose absence would expose a route unprotected.
_GUARDS = frozenset({"basicauth", "digestauth", "forwardauth", "ipwhitelist", "ipallowlist", "chain", "plugin"})


class _Broken:
    """A middleware that could not be built; ``guard`` means routers must drop it."""

    def __init__(self, reason: str, guard: bool):
        self.reason = reason
        self.guard = guard


_SKIP = object()  # a middleware edge does not implement but that is safe to leave out
_NOTHING_TO_DO = object()  # a middleware that changes nothing in edge (rateLimit average 0, contentType without auto-detection)

# In ``shared_middlewares``: a name several services define differently.
# Traefik drops such a middleware, so routers using it are dropped too, even
# when their own service defines one by that name.
CONFLICT = _Broken("several services define it differently", True)


class _Reader:
    """Collects problems for one service while its labels are read."""

    def __init__(self, source: str, provider: str, files: "LabelFiles | None" = None):
        self.source = source
        self.provider = provider
        self.files = files if files is not None else LabelFiles()
        self.problems: list[Problem] = []
        self._warned: set[str] = set()

    def warn(self, label: str, message: str) -> None:
        if label in self._warned:
            return
        self._warned.add(label)
        self.problems.append(Problem(self.source, message, "warning", label))

    def error(self, label: str, message: str) -> None:
        self.problems.append(Problem(self.source, message, "error", label))

    def unsupported(self, label: str, what: str = "") -> None:
        extra = f" ({what})" if what else ""
        self.warn(label, f"label {label} is not supported by edge and is ignored{extra}")

    def unknown(self, label: str) -> None:
        self.warn(label, f"unknown label {label} is ignored")

    # values

    def boolean(self, label: str, value: str, default: bool) -> bool:
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        self.error(label, f"label {label}: expected true or false, got {value!r}; using {str(default).lower()}")
        return default

    def integer(self, label: str, value: str, default, minimum: int, maximum: int):
        text = value.strip()
        try:
            number = int(text, 10)
        except ValueError:
            number = None
        if number is None or not minimum <= number <= maximum:
            self.error(
                label,
                f"label {label}: expected a whole number from {minimum} to {maximum},"
                f" got {value!r}; using {default if default is not None else 'none'}",
            )
            return default
        return number

    def port(self, label: str, value: str) -> int | None:
        return self.integer(label, value, None, 1, 65535)

    def duration(self, label: str, value: str, default: float) -> float:
        text = value.strip()
        try:
            seconds = float(text)  # Traefik takes a bare number as seconds
        except ValueError:
            seconds = None
        if seconds is None and text:
            pos, total = 0, 0.0
            for m in _DURATION.finditer(text):
                if m.start() != pos:
                    break
                total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
                pos = m.end()
            if pos == len(text):
                seconds = total
        if seconds is None or not (0 < seconds < 86400 * 365):
            self.error(
                label,
                f"label {label}: expected a duration like 10s or 1m30s, got {value!r};"
                f" using {default:g}s",
            )
            return default
        return seconds

    def scheme(self, label: str, value: str, h2c: bool = True) -> str:
        """A backend scheme; ``h2c`` (HTTP/2 in clear text, edge.http.backend_h2) where it may be one."""
        lowered = value.strip().lower()
        if lowered in ("http", "https") or lowered == "h2c" and h2c:
            return lowered
        if lowered == "h2c":
            self.warn(label, f"label {label}: health checks are made over HTTP/1.1; using http")
            return "http"
        self.error(label, f"label {label}: expected http, https or h2c, got {value!r}; using http")
        return "http"


def _list(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _split_labels(labels: Mapping[str, str]) -> list[tuple[str, list[str], list[str], str]]:
    """(label, parts as written, parts lower-cased, value) for traefik.*/edge.* labels."""
    out = []
    try:
        items = list(labels.items())
    except Exception:  # not a mapping after all; read nothing
        return out
    for key, value in items:
        if not isinstance(key, str):
            continue
        if not isinstance(value, str):
            value = "" if value is None else str(value)
        lowered = key.lower()
        if not (lowered.startswith("traefik.") or lowered.startswith("edge.")):
            continue
        parts = key.split(".")
        out.append((key, parts, [p.lower() for p in parts], value))
    out.sort(key=lambda item: item[0])
    return out


# -- middlewares (v2 grammar) ----------------------------------------------


def _build_middleware(
    reader: _Reader, name: str, kinds: dict[str, dict[str, tuple[str, str, str]]]
):
    """
    One middleware from its labels: a Middleware value, ``_SKIP`` or a
    :class:`_Broken`.  ``kinds`` maps the kind (``basicauth``) to its options,
    each ``option -> (label, option as written, value)``.
    """
    if len(kinds) != 1:
        listed = ", ".join(sorted(kinds))
        for opts in kinds.values():
            for label, _written, _value in opts.values():
                reader.error(label, f"middleware {name} mixes several kinds ({listed}); it is not built")
        return _Broken(f"it mixes several kinds ({listed})", bool(_GUARDS & set(kinds)))
    ((kind, opts),) = kinds.items()

    if kind == "redirectscheme":
        scheme, port, permanent = "https", "", False
        for opt, (label, _w, value) in opts.items():
            if opt == "scheme":
                scheme = value.strip().lower() or "https"
                if scheme not in ("http", "https"):
                    reader.error(label, f"label {label}: expected http or https, got {value!r}; using https")
                    scheme = "https"
            elif opt == "port":
                number = reader.port(label, value)
                port = str(number) if number else ""
            elif opt == "permanent":
                permanent = reader.boolean(label, value, False)
            else:
                reader.unknown(label)
        return RedirectScheme(scheme=scheme, port=port, permanent=permanent)

    if kind == "stripprefix":
        prefixes: tuple[str, ...] = ()
        for opt, (label, _w, value) in opts.items():
            if opt == "prefixes":
                prefixes = _list(value)
                bad = [p for p in prefixes if not p.startswith("/")]
                if bad:
                    reader.error(label, f"label {label}: prefixes must start with '/', got {bad[0]!r}")
                    prefixes = tuple(p for p in prefixes if p.startswith("/"))
            elif opt == "forceslash":
                pass  # deprecated in Traefik; edge always keeps a leading '/'
            else:
                reader.unknown(label)
        if not prefixes:
            return _Broken("it has no prefixes", False)
        return StripPrefix(prefixes)

    if kind == "basicauth":
        users: tuple[str, ...] = ()
        file_users: tuple[str, ...] = ()
        realm, remove, header_field = "", False, ""
        users_label = ""
        for opt, (label, _w, value) in opts.items():
            if opt == "users":
                users, users_label = _list(value), label
            elif opt == "realm":
                realm = value.strip()
            elif opt == "removeheader":
                remove = reader.boolean(label, value, False)
            elif opt == "headerfield":
                header_field = value.strip()
                if header_field and not _valid_header_name(header_field):
                    reader.error(label, f"label {label}: {header_field!r} is not a header name")
                    return _Broken("its headerField is not a header name", True)
            elif opt == "usersfile":
                from_file = _users_file(reader, label, value)
                if from_file is None:
                    return _Broken("its users file cannot be read", True)
                file_users = from_file
            else:
                reader.unknown(label)
        users = users + file_users
        bad = [u for u in users if ":" not in u or u.startswith(":")]
        if bad:
            reader.error(users_label, f"label {users_label}: expected user:hash entries, got {bad[0]!r}")
            return _Broken("its users are not user:hash entries", True)
        if not users:
            return _Broken("it lists no users", True)
        if realm:
            return BasicAuth(users=users, realm=realm, remove_header=remove, header_field=header_field)
        return BasicAuth(users=users, remove_header=remove, header_field=header_field)

    if kind == "headers":
        return _headers_v2(reader, opts)

    if kind in ("ipwhitelist", "ipallowlist"):
        ranges: tuple[str, ...] = ()
        strategy: dict = {}
        for opt, (label, _w, value) in opts.items():
            if opt == "sourcerange":
                checked = _cidrs(reader, label, value)
                if checked is None:
                    return _Broken("its source range is invalid", True)
                ranges = checked
            elif opt == "ipstrategy.depth":
                strategy["ip_depth"] = reader.integer(label, value, 0, 0, 64)
            elif opt == "ipstrategy.excludedips":
                excluded = _cidrs(reader, label, value)
                if excluded is None:
                    return _Broken("its ipStrategy.excludedIPs is invalid", True)
                strategy["excluded_ips"] = excluded
            elif opt.startswith("ipstrategy"):
                reader.unsupported(label, "this ipStrategy option")
            elif opt == "rejectstatuscode":
                reader.unsupported(label, "edge answers 403")
            else:
                reader.unknown(label)
        if not ranges:
            return _Broken("it has no source range", True)
        return IPAllowList(ranges, **strategy)

    if kind == "forwardauth":
        return _forward_auth(reader, {opt: (label, value) for opt, (label, _w, value) in opts.items()})

    if kind in ("compress", "errors"):
        from edge.discovery.response_labels import response_middleware

        built = response_middleware(reader, kind, {opt: (label, value) for opt, (label, _w, value) in opts.items()})
        if isinstance(built, str):
            return _Broken(built, False)
        return _NOTHING_TO_DO if built is None else built

    if kind in _REQUEST_KINDS:
        return _request_middleware(reader, kind, {opt: (label, value) for opt, (label, _w, value) in opts.items()})

    if kind == "contenttype":
        # Traefik v2 sniffs a missing Content-Type unless autoDetect=false; v3
        # sniffs only with this middleware. edge never sniffs: "false" is what
        # it does anyway, anything else is not implemented.
        auto = True
        for opt, (label, _w, value) in opts.items():
            if opt == "autodetect":
                auto = reader.boolean(label, value, True)
            elif opt:  # v3 writes the empty middleware as contenttype=true
                reader.unknown(label)
        if auto:
            for label, _w, _v in opts.values() or [(f"middleware {name}", "", "")]:
                reader.unsupported(label, "edge never guesses a Content-Type")
            return _SKIP
        return _NOTHING_TO_DO

    if kind == "chain":
        refs: tuple[str, ...] = ()
        for opt, (label, _w, value) in opts.items():
            if opt == "middlewares":
                refs = _list(value)
            else:
                reader.unknown(label)
        if not refs:
            return _Broken("the chain names no middlewares", True)
        return _ChainRef(refs)

    if kind in resilience_labels.KINDS:
        built = resilience_labels.build(reader, kind, {o: (la, v) for o, (la, _w, v) in opts.items()})
        return _Broken(built, True) if isinstance(built, str) else built

    # A kind edge does not implement: warn once per label.
    for opt, (label, _w, _value) in opts.items():
        reader.unsupported(label, f"the {kind} middleware")
    if kind in _GUARDS:
        return _Broken(f"edge does not implement the {kind} middleware", True)
    return _SKIP


_FORWARD_BOOLS = {
    "trustforwardheader": "trust_forward_header",
    "preserverequestmethod": "preserve_request_method",
    "preservelocationheader": "preserve_location_header",
    "tls.insecureskipverify": "tls_insecure_skip_verify",
}
_FORWARD_LISTS = {
    "authresponseheaders": "auth_response_headers",
    "authrequestheaders": "auth_request_headers",
    "addauthcookiestoresponse": "add_auth_cookies_to_response",
}


# -- files named by labels -------------------------------------------------
#
# usersFile and forwardAuth's tls.ca/cert/key name files on edge's host.  They
# are read by :func:`read_label_files` where the Engine API is read (the
# discovery thread pool), never while labels are parsed on the reactor thread.

# Label suffixes (lower case) whose value is a file; the TLS ones may hold PEM text itself.
_USERS_FILE_OPTIONS = ("basicauth.usersfile", "auth.basic.usersfile")
_PEM_FILE_OPTIONS = tuple(
    f"{kind}.tls.{opt}" for kind in ("forwardauth", "auth.forward") for opt in ("ca", "cert", "key")
)
USERS_FILE_LIMIT = 4 * 1024 * 1024
PEM_FILE_LIMIT = 1024 * 1024
# What one read of every label's files may hold in memory in all.
LABEL_FILES_LIMIT = 16 * 1024 * 1024


@dataclass(frozen=True)
class LabelFiles:
    """
    The files labels name, read beforehand: ``(path, content or None, why not)``.

    Immutable and hashable, so it is part of :func:`read_labels`' memo key: a
    changed file is seen at the next full read of the Engine API.
    """

    entries: tuple[tuple[str, bytes | None, str], ...] = ()

    def get(self, path: str) -> tuple[bytes | None, str]:
        for name, content, error in self.entries:
            if name == path:
                return content, error
        return None, "it was not read ahead (edge bug: report it)"


def label_file_paths(labels: Mapping[str, str]) -> set[str]:
    """The file paths a service's labels name (inline PEM text is no path)."""
    paths = set()
    try:
        items = list(labels.items())
    except Exception:
        return paths
    for key, value in items:
        if not isinstance(key, str) or not isinstance(value, str):
            continue
        lowered = key.lower()
        if not lowered.startswith(("traefik.", "edge.")):
            continue
        path = value.strip()
        if not path:
            continue
        if lowered.endswith(_USERS_FILE_OPTIONS) or (
            lowered.endswith(_PEM_FILE_OPTIONS) and not path.startswith("-----BEGIN")
        ):
            paths.add(path)
    return paths


def _read_file(path: str, limit: int) -> bytes:
    """Up to ``limit`` bytes of a regular file (a FIFO or device would block or never end)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path!r} is not a regular file")
        chunks, size = [], 0
        while size < limit:
            chunk = os.read(fd, min(1 << 16, limit - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_label_files(label_sets) -> LabelFiles:
    """
    Read every file the given label mappings name (blocking: call it off the
    reactor thread).  Each read stops one byte past the largest size a label
    file may have; past :data:`LABEL_FILES_LIMIT` in all, further files are
    refused (their routers are dropped, as for an unreadable file).
    """
    paths: set[str] = set()
    for labels in label_sets:
        paths |= label_file_paths(labels)
    entries, total = [], 0
    for path in sorted(paths):
        if total >= LABEL_FILES_LIMIT:
            entries.append((path, None, f"edge read {LABEL_FILES_LIMIT >> 20} MiB of label files already"))
            continue
        try:
            content = _read_file(path, USERS_FILE_LIMIT + 1)
        except (OSError, ValueError) as e:
            entries.append((path, None, str(e)))
            continue
        total += len(content)
        entries.append((path, content, ""))
    return LabelFiles(tuple(entries))


def _file_text(reader: _Reader, label: str, path: str, encoding: str, what: str) -> str | None:
    content, error = reader.files.get(path)
    if content is not None:
        try:
            return content.decode(encoding)
        except ValueError as e:
            error = str(e)
    reader.error(label, f"label {label}: cannot read {what}{path!r}: {error}")
    return None


def _users_file(reader: _Reader, label: str, value: str) -> tuple[str, ...] | None:
    """
    An htpasswd file's ``user:hash`` lines (Traefik ``usersFile``; ``#`` comments
    and blank lines skipped), as read ahead into ``reader.files``.  A file that
    could not be read, or holds a line that is no entry, is None.
    """
    path = value.strip()
    text = _file_text(reader, label, path, "utf-8", "users file ")
    if text is None:
        return None
    if len(text.encode("utf-8")) > USERS_FILE_LIMIT:
        reader.error(label, f"label {label}: users file {path!r} is over 4 MiB")
        return None
    users = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if ":" not in line or line.startswith(":"):
            reader.error(label, f"label {label}: line {number} of {path!r} is not a user:hash entry")
            return None
        users.append(line)
    if not users:
        reader.error(label, f"label {label}: users file {path!r} lists no users")
        return None
    return tuple(users)


def _pem(reader: _Reader, label: str, value: str) -> str | None:
    """Traefik's FileOrContent: PEM text itself, or the path of a file holding it (read ahead)."""
    text = value.strip()
    if text.startswith("-----BEGIN"):
        return text
    content = _file_text(reader, label, text, "ascii", "")
    if content is None:
        return None
    if len(content) > PEM_FILE_LIMIT:
        reader.error(label, f"label {label}: {text!r} is over 1 MiB")
        return None
    if "-----BEGIN" not in content:
        reader.error(label, f"label {label}: {text!r} holds no PEM data")
        return None
    return content


@dataclass(frozen=True)
class _ChainRef:
    """A ``chain`` middleware: names resolved, in order, where a router uses it."""

    refs: tuple[str, ...]


_REQUEST_KINDS = frozenset({
    "replacepath", "replacepathregex", "addprefix", "stripprefixregex", "redirectregex",
    "ratelimit", "inflightreq",
})


def _regex(reader: _Reader, label: str, value: str) -> bool:
    try:
        re.compile(value)
    except re.error as e:
        reader.error(label, f"label {label}: {value!r} is not a regular expression: {e}")
        return False
    return True


def _cidrs(reader: _Reader, label: str, value: str) -> tuple[str, ...] | None:
    """A comma list of addresses/CIDRs, or None (an error said which item is not one)."""
    items = _list(value)
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            reader.error(label, f"label {label}: {item!r} is not an address or CIDR")
            return None
    return items


def _source_criterion(reader: _Reader, opts: dict[str, tuple[str, str]]) -> SourceCriterion | None:
    values: dict = {}
    for opt, (label, value) in opts.items():
        if opt == "requestheadername":
            name = value.strip()
            if name and not _valid_header_name(name):
                reader.error(label, f"label {label}: {name!r} is not a header name")
                return None
            values["request_header_name"] = name
        elif opt == "requesthost":
            values["request_host"] = reader.boolean(label, value, False)
        elif opt == "ipstrategy.depth":
            values["ip_depth"] = reader.integer(label, value, 0, 0, 64)
        elif opt == "ipstrategy.excludedips":
            ips = _cidrs(reader, label, value)
            if ips is None:
                return None
            values["excluded_ips"] = ips
        elif opt == "ipstrategy.ipv6subnet":
            reader.unsupported(label, "this sourceCriterion option")
        else:
            reader.unknown(label)
    return SourceCriterion(**values)


def _request_middleware(reader: _Reader, kind: str, opts: dict[str, tuple[str, str]]):
    """replacePath(Regex), addPrefix, stripPrefixRegex, redirectRegex, rateLimit, inFlightReq."""
    values: dict = {}
    source: dict[str, tuple[str, str]] = {}
    for opt, (label, value) in opts.items():
        if opt.startswith("sourcecriterion.") and kind in ("ratelimit", "inflightreq"):
            source[opt[len("sourcecriterion."):]] = (label, value)
        elif opt == "regex":
            if kind == "stripprefixregex":
                items = _list(value)
                if not all(_regex(reader, label, item) for item in items):
                    return _Broken("a regexp in it is invalid", True)
                values["regexes"] = items
            else:
                if not _regex(reader, label, value):
                    return _Broken("its regexp is invalid", True)
                values["regex"] = value
        elif opt == "replacement" and kind in ("replacepathregex", "redirectregex"):
            values["replacement"] = value
        elif opt == "permanent" and kind == "redirectregex":
            values["permanent"] = reader.boolean(label, value, False)
        elif opt == "path" and kind == "replacepath":
            values["path"] = value.strip()
        elif opt == "prefix" and kind == "addprefix":
            values["prefix"] = value.strip()
        elif opt in ("average", "burst") and kind == "ratelimit":
            values[opt] = reader.integer(label, value, None, 0, 2**31 - 1)
            if values[opt] is None:
                return _Broken(f"its {opt} is not a number", True)
        elif opt == "period" and kind == "ratelimit":
            values["period"] = reader.duration(label, value, 1.0)
        elif opt == "amount" and kind == "inflightreq":
            values["amount"] = reader.integer(label, value, None, 1, 2**31 - 1)
            if values["amount"] is None:
                return _Broken("its amount is not a positive number", True)
        elif kind == "ratelimit" and opt.startswith("redis"):
            reader.unsupported(label, "edge keeps rate limits in memory")
        else:
            reader.unknown(label)
    if kind in ("ratelimit", "inflightreq"):
        criterion = _source_criterion(reader, source)
        if criterion is None:
            return _Broken("its sourceCriterion is invalid", True)
        values["source"] = criterion
    needed = {
        "replacepath": ("path",), "replacepathregex": ("regex", "replacement"), "addprefix": ("prefix",),
        "stripprefixregex": ("regexes",), "redirectregex": ("regex", "replacement"),
        "ratelimit": (), "inflightreq": ("amount",),
    }[kind]
    missing = [n for n in needed if n not in values]
    if missing:
        return _Broken(f"it has no {missing[0]}", True)
    if kind == "ratelimit":
        if not values.get("average"):
            return _NOTHING_TO_DO  # Traefik: average 0 means no limit
        return RateLimit(**values)
    return {
        "replacepath": ReplacePath, "replacepathregex": ReplacePathRegex, "addprefix": AddPrefix,
        "stripprefixregex": StripPrefixRegex, "redirectregex": RedirectRegex, "inflightreq": InFlightReq,
    }[kind](**values)


def _forward_auth(reader: _Reader, opts: dict[str, tuple[str, str]]):
    """A ForwardAuth (v2/v3 ``forwardauth.*``, v1 ``auth.forward.*`` with the prefix removed)."""
    values: dict = {}
    address_label = ""
    for opt, (label, value) in opts.items():
        if opt == "address":
            values["address"], address_label = value.strip(), label
        elif opt in _FORWARD_BOOLS:
            values[_FORWARD_BOOLS[opt]] = reader.boolean(label, value, False)
        elif opt in _FORWARD_LISTS:
            items = _list(value)
            bad = [h for h in items if not _valid_header_name(h)]
            if bad and opt != "addauthcookiestoresponse":
                reader.error(label, f"label {label}: {bad[0]!r} is not a header name")
                return _Broken("a header name in it is invalid", True)
            values[_FORWARD_LISTS[opt]] = items
        elif opt == "authresponseheadersregex":
            try:
                re.compile(value)
            except re.error as e:
                reader.error(label, f"label {label}: {value!r} is not a regular expression: {e}")
                return _Broken("its authResponseHeadersRegex is invalid", True)
            values["auth_response_headers_regex"] = value
        elif opt in ("tls.ca", "tls.cert", "tls.key"):
            pem = _pem(reader, label, value)
            if pem is None:
                return _Broken(f"its {opt} cannot be read", True)
            values["tls_" + opt[4:]] = pem
        elif opt == "tls.caoptional":
            reader.unsupported(label, "deprecated in Traefik; the CA is always required when given")
        elif opt == "forwardbody":
            if reader.boolean(label, value, False):
                reader.error(label, f"label {label}: edge does not send request bodies to the auth server")
                return _Broken("it asks for the request body to be forwarded", True)
        elif opt in ("maxbodysize", "headerfield"):
            reader.unsupported(label, "this forwardAuth option")
        else:
            reader.unknown(label)
    address = values.get("address", "")
    if not address:
        return _Broken("it has no address", True)
    try:
        parsed = urlsplit(address)
        ok = parsed.scheme in ("http", "https") and bool(parsed.hostname) and address.isascii()
        parsed.port  # noqa: B018 -- raises on a bad port
    except ValueError:
        ok = False
    if not ok:
        reader.error(address_label, f"label {address_label}: expected an http:// or https:// URL, got {address!r}")
        return _Broken("its address is not an http(s) URL", True)
    if bool(values.get("tls_cert")) != bool(values.get("tls_key")):
        reader.error(address_label, f"forward auth {address}: tls.cert and tls.key go together")
        return _Broken("it has a TLS certificate without its key (or the reverse)", True)
    return ForwardAuth(**values)


_HEADER_BOOLS = {
    "stsincludesubdomains": "sts_include_subdomains",
    "stspreload": "sts_preload",
    "forcestsheader": "force_sts_header",
    "sslredirect": "ssl_redirect",
    "framedeny": "frame_deny",
    "contenttypenosniff": "content_type_nosniff",
    "browserxssfilter": "browser_xss_filter",
    "isdevelopment": "is_development",
    "accesscontrolallowcredentials": "access_control_allow_credentials",
    "addvaryheader": "add_vary_header",
}
_HEADER_STRINGS = {
    "customframeoptionsvalue": "custom_frame_options_value",
    "custombrowserxssvalue": "custom_browser_xss_value",
    "contentsecuritypolicy": "content_security_policy",
    "contentsecuritypolicyreportonly": "content_security_policy_report_only",
    "referrerpolicy": "referrer_policy",
    "permissionspolicy": "permissions_policy",
    "featurepolicy": "feature_policy",
}
_HEADER_LISTS = {
    "allowedhosts": "allowed_hosts",
    "hostsproxyheaders": "hosts_proxy_headers",
    "accesscontrolalloworiginlist": "access_control_allow_origin_list",
    "accesscontrolalloworiginlistregex": "access_control_allow_origin_list_regex",
    "accesscontrolallowmethods": "access_control_allow_methods",
    "accesscontrolallowheaders": "access_control_allow_headers",
    "accesscontrolexposeheaders": "access_control_expose_headers",
}


def _header_option(reader: _Reader, opt: str, label: str, value: str, values: dict) -> bool:
    """One of the security/CORS options shared by v1 and v2 ``headers``; False if ``opt`` is none."""
    if opt in _HEADER_STRINGS:
        if "\r" in value or "\n" in value:
            reader.error(label, f"label {label}: a header value cannot hold a line break")
        else:
            values[_HEADER_STRINGS[opt]] = value.strip()
    elif opt in _HEADER_LISTS:
        items = _list(value)
        if opt == "accesscontrolalloworiginlistregex":
            items = tuple(i for i in items if _regex(reader, label, i))
        elif opt == "hostsproxyheaders" and not all(_valid_header_name(i) for i in items):
            reader.error(label, f"label {label}: expected header names, got {value!r}")
            return True
        values[_HEADER_LISTS[opt]] = items
    elif opt == "accesscontrolmaxage":
        values["access_control_max_age"] = reader.integer(label, value, 0, 0, 2**31 - 1)
    else:
        return False
    return True


def _headers_v2(reader: _Reader, opts: dict[str, tuple[str, str, str]]) -> Headers:
    request: list[tuple[str, str]] = []
    response: list[tuple[str, str]] = []
    ssl_proxy: list[tuple[str, str]] = []
    values: dict = {}
    for opt, (label, written, value) in opts.items():
        head, _, rest = opt.partition(".")
        if head in ("customrequestheaders", "customresponseheaders") and rest:
            header = written.split(".", 1)[1]
            if not _valid_header_name(header):
                reader.error(label, f"label {label}: {header!r} is not a header name")
                continue
            (request if head == "customrequestheaders" else response).append((header, value))
        elif opt == "stsseconds":
            values["sts_seconds"] = reader.integer(label, value, 0, 0, 2**31 - 1)
        elif opt in _HEADER_BOOLS:
            values[_HEADER_BOOLS[opt]] = reader.boolean(label, value, False)
        elif head == "sslproxyheaders" and rest:
            header = written.split(".", 1)[1]
            if not _valid_header_name(header):
                reader.error(label, f"label {label}: {header!r} is not a header name")
                continue
            ssl_proxy.append((header, value.strip()))
        elif _header_option(reader, opt, label, value, values):
            pass
        else:
            reader.unsupported(label, "this headers option")
    if ssl_proxy:
        values["ssl_proxy_headers"] = tuple(ssl_proxy)
    return Headers(custom_request=tuple(request), custom_response=tuple(response), **values)


_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def _same_site(reader: "_Reader", label: str, value: str, opts: dict) -> None:
    same = value.strip().lower()
    if same not in ("", "none", "lax", "strict"):
        reader.error(label, f"label {label}: expected none, lax or strict, got {value!r}")
    else:
        opts["same_site"] = same


def _sticky_cookie(service: str, opts: dict) -> StickyCookie:
    """
    The sticky cookie as Traefik sets it: no HttpOnly, Secure or SameSite
    unless the labels ask (v1.7, v2, v3 defaults), and without a name one
    derived from the service, so two services behind one host never share
    (and overwrite) one cookie.
    """
    if not opts.get("name"):
        opts = {**opts, "name": "_" + hashlib.sha1(service.encode("utf-8")).hexdigest()[:6]}
    return StickyCookie(**{"http_only": False, **opts})


def _health_option(reader: "_Reader", label: str, key: str, value: str, health: dict) -> bool:
    """Read one health-check option both label generations share; False if not one of them."""
    if key == "path":
        health["path"] = value.strip()
    elif key == "interval":
        health["interval"] = reader.duration(label, value, 30.0)
    elif key == "timeout":
        health["timeout"] = reader.duration(label, value, 5.0)
    elif key == "port":
        health["port"] = reader.port(label, value) or 0
    elif key == "scheme":
        health["scheme"] = reader.scheme(label, value, h2c=False)
    elif key == "hostname":
        health["hostname"] = value.strip()
    else:
        return False
    return True


def _valid_header_name(name: str) -> bool:
    return bool(_HEADER_NAME.match(name))


# -- the v2/v3 grammar -------------------------------------------------------


@dataclass
class _V2Labels:
    routers: dict[str, dict[str, tuple[str, str, str]]] = field(default_factory=dict)
    services: dict[str, dict[str, tuple[str, str, str]]] = field(default_factory=dict)
    middlewares: dict[str, dict[str, dict[str, tuple[str, str, str]]]] = field(default_factory=dict)
    network: tuple[str, str] | None = None
    lb_swarm: tuple[str, str] | None = None
    tcp_or_udp: bool = False  # traefik.tcp/udp routers or services are defined
    malformed: str = ""  # a label Traefik's decoder refuses, which disables the container


def _collect_v2(reader: _Reader, entries, prefix: str) -> _V2Labels:
    found = _V2Labels()
    for label, parts, lower, value in entries:
        if lower[0] != prefix or lower[1:2] == ["enable"]:
            continue
        rest, rest_written = lower[1:], parts[1:]
        if rest[:1] in (["docker"], ["swarm"]) and len(rest) == 2:
            if rest[1] == "network":
                found.network = (label, value)
                continue
            if rest[1] == "lbswarm":
                found.lb_swarm = (label, value)
                continue
        if rest[:1] == ["http"] and (len(rest) < 4 or not rest_written[2]) and not found.malformed:
            # traefik.http.services.x=... gives a value to a section.
            found.malformed = label
            continue
        if rest[:1] == ["http"] and len(rest) >= 4 and rest_written[2]:
            section, name = rest[1], rest_written[2]
            opt = ".".join(rest[3:])
            written = ".".join(rest_written[3:])
            if section == "routers":
                found.routers.setdefault(name, {})[opt] = (label, written, value)
                continue
            if section == "services":
                found.services.setdefault(name, {})[opt] = (label, written, value)
                continue
            if section == "middlewares":
                kind = rest[3]
                opt = ".".join(rest[4:])
                written = ".".join(rest_written[4:])
                found.middlewares.setdefault(name, {}).setdefault(kind, {})[opt] = (label, written, value)
                continue
            if section == "serverstransports":
                reader.unsupported(label, "servers transports")
                continue
        if rest[:1] in (["tcp"], ["udp"]):  # read by edge.discovery.l4labels
            found.tcp_or_udp = found.tcp_or_udp or rest[1:2] in (["routers"], ["services"])
            continue
        reader.unknown(label)
    return found


def _v2_middlewares(reader: _Reader, found: _V2Labels) -> dict[str, object]:
    return {name: _build_middleware(reader, name, kinds) for name, kinds in found.middlewares.items()}


def _service_spec(
    reader: _Reader, name: str, opts: dict[str, tuple[str, str, str]], network: str, lb_swarm: bool
) -> ServiceSpec:
    port: int | None = None
    scheme, weight, pass_host = "http", 1, True
    sticky: StickyCookie | None = None
    sticky_opts: dict = {}
    sticky_on = sticky_off = False
    health: dict = {}
    health_headers: list[tuple[str, str]] = []
    health_label = ""
    for opt, (label, written, value) in opts.items():
        if not opt.startswith("loadbalancer."):
            reader.unsupported(label, "only loadbalancer services are supported")
            continue
        opt = opt[len("loadbalancer.") :]
        written = written.split(".", 1)[1] if "." in written else written
        if opt == "server.port":
            port = reader.port(label, value)
        elif opt == "server.scheme":
            scheme = reader.scheme(label, value)
        elif opt == "server.weight":
            weight = reader.integer(label, value, 1, 0, 1_000_000)
        elif opt == "passhostheader":
            pass_host = reader.boolean(label, value, True)
        elif opt in ("sticky", "sticky.cookie"):  # "sticky": Traefik 2.0's spelling
            if reader.boolean(label, value, opt == "sticky.cookie"):
                sticky_on = True
            else:
                sticky_off = True  # an explicit false wins over cookie options
        elif opt == "sticky.cookie.name":
            sticky_on = True
            if value.strip():
                sticky_opts["name"] = value.strip()
        elif opt == "sticky.cookie.secure":
            sticky_on = True
            sticky_opts["secure"] = reader.boolean(label, value, False)
        elif opt == "sticky.cookie.httponly":
            sticky_on = True
            sticky_opts["http_only"] = reader.boolean(label, value, False)
        elif opt == "sticky.cookie.samesite":
            sticky_on = True
            _same_site(reader, label, value, sticky_opts)
        elif opt.startswith("healthcheck."):
            health_label = health_label or label
            key = opt[len("healthcheck.") :]
            if _health_option(reader, label, key, value, health):
                pass
            elif key.startswith("headers.") and len(key) > len("headers."):
                header = written.split(".", 2)[2]
                if _valid_header_name(header):
                    health_headers.append((header, value))
                else:
                    reader.error(label, f"label {label}: {header!r} is not a header name")
            else:
                reader.unsupported(label, "this health check option")
        else:
            reader.unsupported(label)
    if sticky_on and not sticky_off:
        sticky = _sticky_cookie(f"{name}@{reader.provider}", sticky_opts)
    check = None
    if health:
        path = health.pop("path", "")
        if not path.startswith("/"):
            reader.error(
                health_label,
                f"service {name}: a health check needs a path starting with '/'"
                f" (...healthcheck.path); health check ignored",
            )
        else:
            check = HealthCheck(path=path, headers=tuple(health_headers), **health)
            if scheme == "h2c" and not check.scheme:
                # Probes are HTTP/1.1: a gRPC-only target fails them and is taken out of service.
                reader.warn(health_label, f"service {name}: health checks are made over HTTP/1.1,"
                            " which an h2c target may not answer (a failed check takes it out of"
                            " service); point healthcheck.scheme/port at an HTTP/1.1 endpoint")
    return ServiceSpec(
        name=f"{name}@{reader.provider}",
        port=port,
        scheme=scheme,
        weight=weight,
        network=network,
        lb_swarm=lb_swarm,
        pass_host_header=pass_host,
        sticky=sticky,
        health_check=check,
    )


_TLS_DOMAIN = re.compile(r"^tls\.domains\[(\d+)\]\.(main|sans)$")


def _resolve_middlewares(
    reader: _Reader,
    router: str,
    label: str,
    value: str,
    local: Mapping[str, object],
    shared: Mapping[str, Middleware],
) -> tuple[tuple[Middleware, ...], bool]:
    """The router's middlewares in order, and False when the router must be dropped."""
    resolved: list[Middleware] = []
    keep = True
    pending = [(ref, ()) for ref in _list(value)]
    while pending:
        ref, within = pending.pop(0)
        name, _, provider = ref.partition("@")
        # Traefik's rule: a plain name is the router's own provider's.
        owner = provider.strip().lower() or reader.provider
        qualified = f"{name}@{owner}"
        where = f" (in chain {within[-1]!r})" if within else ""
        if owner not in PROVIDERS:
            reader.error(
                label,
                f"router {router}: middleware {ref!r}{where} names provider {owner!r}, which edge does not"
                f" have (its providers: {', '.join(PROVIDERS)}); router dropped so it is not served without it",
            )
            keep = False
            continue
        found: object = None
        if shared.get(qualified) is CONFLICT:
            found = CONFLICT
        elif owner == reader.provider:
            found = local.get(name)
        if found is None:
            found = shared.get(qualified)
        if found is None:
            reader.error(
                label,
                f"router {router}: middleware {ref!r}{where} is not defined {_defined_where(owner, reader.provider)};"
                " router dropped so it is not served without it",
            )
            keep = False
        elif isinstance(found, _Broken):
            if found.guard:
                reader.error(
                    label,
                    f"router {router}: middleware {ref!r} cannot be used ({found.reason});"
                    " router dropped so it is not served unprotected",
                )
                keep = False
            else:
                reader.warn(label, f"router {router}: middleware {ref!r} is left out ({found.reason})")
        elif found is _SKIP:
            reader.warn(label, f"router {router}: middleware {ref!r} is not supported by edge and is left out")
        elif found is _NOTHING_TO_DO:
            pass
        elif isinstance(found, _ChainRef):
            if qualified in within or len(within) >= 16:
                reader.error(
                    label,
                    f"router {router}: chain {ref!r} includes itself (or nests too deep);"
                    " router dropped so it is not served without it",
                )
                keep = False
                continue
            # The chain's members take its place, in order, resolved as the router's own.
            pending[0:0] = [(member, within + (qualified,)) for member in found.refs]
        else:
            resolved.append(found)  # type: ignore[arg-type]
    return tuple(resolved), keep


def _defined_where(owner: str, provider: str) -> str:
    """Where a middleware of ``owner`` would have to be defined, for a router of ``provider``."""
    if owner == "file":
        return "in the config file's [middlewares]" if provider != "file" else "in [middlewares]"
    if provider == "file":
        return "here: routes of the config file use only its own [middlewares]"
    return "in this service's labels or another service's"


def _read_v2(
    reader: _Reader,
    source: str,
    entries,
    prefix: str,
    domain: str,
    shared: Mapping[str, Middleware],
) -> tuple[list[Router], list[ServiceSpec]]:
    provider = reader.provider
    found = _collect_v2(reader, entries, prefix)
    if found.malformed:
        reader.error(
            found.malformed,
            f"label {found.malformed} gives a value to a section, which Traefik refuses;"
            f" {source} is not routed",
        )
        return [], []
    if found.tcp_or_udp and not (found.routers or found.services or found.middlewares):
        # Traefik makes no HTTP router for a container with only TCP/UDP labels.
        return [], []
    network = found.network[1].strip() if found.network else ""
    lb_swarm = reader.boolean(found.lb_swarm[0], found.lb_swarm[1], False) if found.lb_swarm else False
    local = _v2_middlewares(reader, found)

    default_name = normalize_name(source) or "service"
    services = []
    for name, opts in found.services.items():
        if any(opt.startswith("loadbalancer.") for opt in opts):
            services.append(_service_spec(reader, name, opts, network, lb_swarm))
        else:  # weighted/mirroring/failover: warned about, nothing to build
            for label, _written, _value in opts.values():
                reader.unsupported(label, "only loadbalancer services are supported")
    if not services and not found.services:
        services = [ServiceSpec(name=f"{default_name}@{provider}", network=network, lb_swarm=lb_swarm)]

    router_opts = dict(found.routers)
    if not router_opts:
        if len(services) > 1:
            reader.error(
                "",
                f"{source}: several services and no router; add"
                f" {prefix}.http.routers.<name>.rule and .service labels",
            )
            return [], services
        router_opts = {default_name: {}}

    routers = []
    for name, opts in router_opts.items():
        router = _router_v2(reader, source, name, opts, services, local, shared, prefix, domain)
        if router is not None:
            routers.append(router)
    return routers, services


def _router_v2(
    reader: _Reader,
    source: str,
    name: str,
    opts: dict[str, tuple[str, str, str]],
    services: list[ServiceSpec],
    local: Mapping[str, object],
    shared: Mapping[str, Middleware],
    prefix: str,
    domain: str,
) -> Router | None:
    provider = reader.provider
    rule: Rule | None = None
    rule_text = ""
    entry_points: tuple[str, ...] = ()
    priority = 0
    middlewares: tuple[Middleware, ...] = ()
    keep = True
    service = ""
    tls_on: bool | None = None
    resolver = ""
    domains: dict[int, dict[str, tuple[str, ...]]] = {}
    rule_label = ""
    syntax: str | None = None  # the rule syntax Traefik would use, when the labels say
    for opt, (label, _written, value) in opts.items():
        if opt == "rule":
            rule_label = label
            rule_text = value.strip()
        elif opt == "rulesyntax":
            if value.strip().lower() in ("v2", "v3"):
                syntax = value.strip().lower()
            else:
                reader.warn(label, f"label {label}: expected v2 or v3, got {value!r}; edge reads both")
        elif opt == "entrypoints":
            entry_points = _list(value)
        elif opt == "priority":
            priority = reader.integer(label, value, 0, 0, 2**31 - 1)
        elif opt == "middlewares":
            middlewares, keep = _resolve_middlewares(reader, name, label, value, local, shared)
        elif opt == "service":
            service = value.strip()
            if not service:
                reader.error(label, f"label {label}: empty service name")
        elif opt == "tls":
            tls_on = reader.boolean(label, value, True)
        elif opt == "tls.certresolver":
            resolver = value.strip()
        elif opt == "tls.options":
            reader.unsupported(label, "TLS options come from edge's [tls] section")
        elif _TLS_DOMAIN.match(opt):
            m = _TLS_DOMAIN.match(opt)
            assert m is not None
            names = _list(value.lower())
            domains.setdefault(int(m.group(1)), {})[m.group(2)] = names
        elif opt.startswith("observability"):
            reader.unsupported(label, "edge's access log and metrics cover every router")
        else:
            reader.unknown(label)

    if not rule_text:
        host = default_host(source, domain)
        if not host:
            if opts:
                reader.warn(
                    f"{prefix}.http.routers.{name}.rule",
                    f"router {name} has no rule and no default domain is set"
                    f" ([docker] domain); add {prefix}.http.routers.{name}.rule",
                )
            else:
                reader.warn(
                    "",
                    f"{source} has no routing rule and no default domain is set"
                    f" ([docker] domain); add {prefix}.http.routers.{name}.rule=Host(`...`)",
                )
            return None
        rule_text = f"Host(`{host}`)"
    try:
        rule = parse_v2(rule_text, syntax)
    except RuleError as e:
        reader.error(rule_label, f"router {name}: bad rule in {rule_label}: {e}; router dropped")
        return None
    if not keep:
        return None

    if service:
        if "@" in service:
            if service.endswith("@internal"):
                reader.warn(
                    opts.get("service", ("",))[0],
                    f"router {name}: service {service} is Traefik's own; edge has no such service",
                )
            qualified = service
        else:
            qualified = f"{service}@{provider}"
    elif len(services) == 1:
        qualified = services[0].name
    else:
        reader.error(
            rule_label or f"{prefix}.http.routers.{name}",
            f"router {name} names no service and this service defines"
            f" {'several' if services else 'no usable one'};"
            f" add {prefix}.http.routers.{name}.service; router dropped",
        )
        return None

    tls = None
    if tls_on is not False and (tls_on or resolver or domains):
        names: list[str] = []
        for index in sorted(domains):
            names.extend(domains[index].get("main", ()))
            names.extend(domains[index].get("sans", ()))
        tls = RouterTLS(cert_resolver=resolver, domains=tuple(dict.fromkeys(names)))

    return Router(
        name=f"{name}@{provider}",
        rule=rule,
        rule_text=rule_text,
        service=qualified,
        entry_points=entry_points,
        priority=priority,
        middlewares=middlewares,
        tls=tls,
        provider=provider,
        source=source,
    )


# -- Traefik v1 ----------------------------------------------------------------

_V1_ROOT = frozenset({"frontend", "port", "protocol", "weight", "backend", "domain", "tags", "docker", "enable"})
_V1_SEGMENT_KEYS = frozenset({"frontend", "port", "protocol", "weight", "backend", "domain"})
_V2_ROOT = frozenset({"http", "tcp", "udp", "swarm"})


def _is_v1(lower: list[str]) -> bool:
    if len(lower) < 2 or lower[0] != "traefik":
        return False
    if lower[1] in ("frontend", "port", "protocol", "weight", "backend", "domain", "tags"):
        return True
    return len(lower) >= 3 and lower[1] not in _V1_ROOT | _V2_ROOT and lower[2] in _V1_SEGMENT_KEYS


def _is_v2(lower: list[str]) -> bool:
    if len(lower) < 2 or lower[0] != "traefik":
        return False
    return lower[1] in _V2_ROOT or lower[1:] == ["docker", "lbswarm"]


def _v1_header_pairs(reader: _Reader, label: str, value: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in value.split("||"):
        if not item.strip():
            continue
        name, sep, val = item.partition(":")
        name = name.strip()
        if not sep or not _valid_header_name(name):
            reader.error(label, f"label {label}: expected Name:value||Name2:value2, got {item.strip()!r}")
            continue
        pairs.append((name, val.strip()))
    return tuple(pairs)


def _v1_frontend(
    reader: _Reader, name: str, opts: dict[str, tuple[str, str]]
) -> tuple[dict, list[Middleware], bool]:
    """Frontend options of one v1 segment: (fields, middlewares, keep)."""
    fields: dict = {}
    allow: list[Middleware] = []
    use_forwarded_for = False
    redirect: list[Middleware] = []
    auth: list[Middleware] = []
    headers: dict = {}
    keep = True
    redirect_permanent = False
    redirect_scheme = ""
    users: tuple[str, ...] = ()
    remove_header = False
    header_field = ""
    forward: dict[str, tuple[str, str]] = {}
    error_pages: dict[str, dict[str, tuple[str, str]]] = {}
    redirect_regex: dict[str, tuple[str, str]] = {}
    rate_limit: dict[str, tuple[str, str]] = {}
    file_users: tuple[str, ...] = ()
    for opt, (label, value) in opts.items():
        if opt == "rule":
            fields["rule"] = (label, value.strip())
        elif opt == "entrypoints":
            fields["entry_points"] = _list(value)
        elif opt == "priority":
            fields["priority"] = reader.integer(label, value, 0, 0, 2**31 - 1)
        elif opt == "passhostheader":
            fields["pass_host_header"] = reader.boolean(label, value, True)
        elif opt == "redirect.entrypoint":
            target = value.strip()
            if target.lower() == "http":
                redirect_scheme = "http"
            else:
                redirect_scheme = "https"
                if target.lower() != "https":
                    reader.warn(
                        label,
                        f"label {label}: entry point {target!r} taken to be HTTPS;"
                        " edge redirects to https",
                    )
        elif opt == "redirect.permanent":
            redirect_permanent = reader.boolean(label, value, False)
        elif opt.startswith("ratelimit."):
            rate_limit[opt[len("ratelimit."):]] = (label, value)
        elif opt == "redirect.regex":
            redirect_regex["regex"] = (label, value)
        elif opt == "redirect.replacement":
            redirect_regex["replacement"] = (label, value)
        elif opt in ("auth.basic", "auth.basic.users"):
            users = _list(value)
            bad = [u for u in users if ":" not in u or u.startswith(":")]
            if bad or not users:
                reader.error(
                    label,
                    f"label {label}: expected user:hash entries, got {value!r};"
                    " frontend dropped so it is not served unprotected",
                )
                keep = False
        elif opt == "auth.basic.removeheader":
            remove_header = reader.boolean(label, value, False)
        elif opt.startswith("auth.forward."):
            forward[opt[len("auth.forward."):]] = (label, value)
        elif opt.startswith("errors.") and opt.count(".") >= 2:
            _, page, key = opt.split(".", 2)
            error_pages.setdefault(page, {})[key] = (label, value)
        elif opt == "auth.basic.usersfile":
            from_file = _users_file(reader, label, value)
            if from_file is None:
                reader.error(label, f"frontend {name}: frontend dropped so it is not served unprotected")
                keep = False
            else:
                file_users = from_file
        elif opt in ("auth.digest", "auth.digest.users", "auth.digest.usersfile") or opt.startswith("auth.forward"):
            reader.unsupported(label)
            reader.error(
                label,
                f"frontend {name}: {label} asks for authentication edge cannot do;"
                " frontend dropped so it is not served unprotected",
            )
            keep = False
        elif opt == "auth.headerfield":
            header_field = value.strip()
            if header_field and not _valid_header_name(header_field):
                reader.error(label, f"label {label}: {header_field!r} is not a header name;"
                             " frontend dropped so it is not served unprotected")
                keep = False
        elif opt in ("whitelist.sourcerange", "whitelistsourcerange"):
            ranges = _list(value)
            for item in ranges:
                try:
                    ipaddress.ip_network(item, strict=False)
                except ValueError:
                    reader.error(
                        label,
                        f"label {label}: {item!r} is not an address or CIDR;"
                        " frontend dropped so it is not served unprotected",
                    )
                    keep = False
            if ranges:
                allow.append(IPAllowList(ranges))
        elif opt == "whitelist.usexforwardedfor":
            use_forwarded_for = reader.boolean(label, value, False)
        elif opt == "headers.customrequestheaders":
            headers["custom_request"] = _v1_header_pairs(reader, label, value)
        elif opt == "headers.customresponseheaders":
            headers["custom_response"] = _v1_header_pairs(reader, label, value)
        elif opt == "headers.stsseconds":
            headers["sts_seconds"] = reader.integer(label, value, 0, 0, 2**31 - 1)
        elif opt.startswith("headers.") and opt[len("headers.") :] in _HEADER_BOOLS:
            headers[_HEADER_BOOLS[opt[len("headers.") :]]] = reader.boolean(label, value, False)
        elif opt == "headers.sslproxyheaders":
            headers["ssl_proxy_headers"] = _v1_header_pairs(reader, label, value)
        elif opt.startswith("headers.") and _header_option(reader, opt[len("headers."):], label, value, headers):
            pass
        elif opt.startswith("headers."):
            reader.unsupported(label, "this headers option")
        else:
            reader.unsupported(label)
    if redirect_scheme:
        redirect.append(RedirectScheme(scheme=redirect_scheme, permanent=redirect_permanent))
    elif redirect_regex:
        # Traefik 1.7: redirect.regex with redirect.replacement (entryPoint wins when both are set).
        built = _request_middleware(reader, "redirectregex", redirect_regex)
        if isinstance(built, _Broken):
            reader.error(next(iter(redirect_regex.values()))[0],
                         f"frontend {name}: redirect regex cannot be used ({built.reason})")
        else:
            redirect.append(RedirectRegex(built.regex, built.replacement, redirect_permanent))
    users = users + file_users
    if users and keep:
        auth.append(BasicAuth(users=users, remove_header=remove_header, header_field=header_field))
    if forward:
        built = _forward_auth(reader, forward)
        if isinstance(built, _Broken):
            reader.error(
                next(iter(forward.values()))[0],
                f"frontend {name}: forward auth cannot be used ({built.reason});"
                " frontend dropped so it is not served unprotected",
            )
            keep = False
        else:
            auth.append(built)
    extra: list[Middleware] = []
    if headers:
        extra.append(Headers(**headers))
    if error_pages:
        from edge.discovery.response_labels import v1_errors

        extra.extend(v1_errors(reader, error_pages))
    limits, ok = _v1_rate_limits(reader, name, rate_limit) if rate_limit else ([], True)
    keep = keep and ok
    if use_forwarded_for:
        allow = [IPAllowList(a.source_ranges, use_forwarded_for=True) for a in allow]
    return fields, allow + limits + redirect + auth + extra, keep


def _v1_extractor(reader: _Reader, label: str, value: str, dropped: str = "the frontends") -> SourceCriterion | None:
    """Traefik 1.7's ``extractorFunc`` (rate limits, maxconn) as a SourceCriterion, or None."""
    func = value.strip()
    if func.lower() == "client.ip":
        return SourceCriterion()
    if func.lower() == "request.host":
        return SourceCriterion(request_host=True)
    if func.lower().startswith("request.header.") and _valid_header_name(func[len("request.header."):]):
        return SourceCriterion(request_header_name=func[len("request.header."):])
    reader.error(label, f"label {label}: expected client.ip, request.host or request.header.<Name>,"
                        f" got {value!r}; {dropped} dropped")
    return None


def _v1_rate_limits(reader: _Reader, name: str, opts: dict[str, tuple[str, str]]):
    """Traefik 1.7 ``frontend.rateLimit``: one limiter per rate set, all must pass."""
    criterion = SourceCriterion()
    sets: dict[str, dict[str, tuple[str, str]]] = {}
    for opt, (label, value) in opts.items():
        if opt == "extractorfunc":
            criterion = _v1_extractor(reader, label, value, f"frontend {name}")
            if criterion is None:
                return [], False
        elif opt.startswith("rateset.") and opt.count(".") == 2:
            _, set_name, key = opt.split(".")
            sets.setdefault(set_name, {})[key] = (label, value)
        else:
            reader.unknown(label)
    limits = []
    for set_name, values in sorted(sets.items()):
        built = _request_middleware(reader, "ratelimit", values)
        if isinstance(built, _Broken):
            reader.error(next(iter(values.values()))[0],
                         f"frontend {name}: rate set {set_name} cannot be used ({built.reason}); frontend dropped")
            return [], False
        if isinstance(built, RateLimit):
            limits.append(RateLimit(built.average, built.period, built.burst, criterion))
    return limits, True


def _v1_backend(reader: _Reader, opts: dict[str, tuple[str, str]]) -> dict:
    """Container-wide traefik.backend.* options, as ServiceSpec fields."""
    out: dict = {}
    sticky_on = False
    sticky_opts: dict = {}
    cookie = ""
    health: dict = {}
    health_label = ""
    resilience: dict[str, tuple[str, str]] = {}
    for opt, (label, value) in opts.items():
        if opt == "":
            continue  # traefik.backend=<name>: edge groups by Docker service
        if opt in ("loadbalancer.stickiness", "loadbalancer.sticky"):
            sticky_on = reader.boolean(label, value, False)
        elif opt == "loadbalancer.stickiness.cookiename":
            cookie = value.strip()
        elif opt == "loadbalancer.stickiness.secure":
            sticky_opts["secure"] = reader.boolean(label, value, False)
        elif opt == "loadbalancer.stickiness.httponly":
            sticky_opts["http_only"] = reader.boolean(label, value, False)
        elif opt == "loadbalancer.stickiness.samesite":
            _same_site(reader, label, value, sticky_opts)
        elif opt == "loadbalancer.swarm":
            out["lb_swarm"] = reader.boolean(label, value, False)
        elif opt == "loadbalancer.method":
            reader.unsupported(label, "edge balances round-robin by weight")
        elif opt.startswith("healthcheck."):
            health_label = health_label or label
            key = opt[len("healthcheck.") :]
            if _health_option(reader, label, key, value, health):
                pass
            elif key == "headers":
                health["headers"] = _v1_header_pairs(reader, label, value)
            else:
                reader.unsupported(label, "this health check option")
        elif resilience_labels.is_v1_backend(opt):
            resilience[opt] = (label, value)
        else:
            reader.unsupported(label)
    if resilience:
        # Routers of the service carry them; one that cannot be built drops them all.
        out["middlewares"], out["keep"] = resilience_labels.v1_backend(reader, resilience, _v1_extractor)
    if sticky_on:
        # Traefik 1.7: only traefik.backend.loadbalancer.stickiness=true turns it on.
        out["sticky"] = dict(sticky_opts, name=cookie) if cookie else dict(sticky_opts)
    if health:
        path = health.pop("path", "")
        if path.startswith("/"):
            out["health_check"] = HealthCheck(path=path, **health)
        else:
            reader.error(
                health_label,
                "a health check needs a path starting with '/'"
                " (traefik.backend.healthcheck.path); health check ignored",
            )
    return out


def _read_v1(
    reader: _Reader, source: str, entries, domain: str, compose: tuple[str, str] | None = None
) -> tuple[list[Router], list[ServiceSpec]]:
    provider = reader.provider
    base = normalize_name(source) or "service"
    segments: dict[str, dict[str, tuple[str, str]]] = {}
    frontends: dict[str, dict[str, tuple[str, str]]] = {}
    backend: dict[str, tuple[str, str]] = {}
    network = ""
    for label, parts, lower, value in entries:
        if lower[0] != "traefik" or lower[1:2] == ["enable"]:
            continue
        if lower[1] == "docker" and lower[2:] == ["network"]:
            network = value.strip()
            continue
        if lower[1] == "domain" and len(lower) == 2:
            domain = value.strip()
            continue
        if lower[1] == "tags" and len(lower) == 2:
            reader.unsupported(label, "constraints")
            continue
        if lower[1] == "backend":
            backend[".".join(lower[2:])] = (label, value)
            continue
        if lower[1] in _V1_SEGMENT_KEYS:
            segment, rest = "", lower[1:]
        elif len(lower) >= 3 and lower[2] in _V1_SEGMENT_KEYS and lower[1] not in _V1_ROOT | _V2_ROOT:
            segment, rest = parts[1], lower[2:]
        else:
            reader.unknown(label)
            continue
        if rest[0] == "frontend" and len(rest) > 1:
            frontends.setdefault(segment, {})[".".join(rest[1:])] = (label, value)
        elif len(rest) == 1 and rest[0] in ("port", "protocol", "weight", "backend", "domain"):
            segments.setdefault(segment, {})[rest[0]] = (label, value)
        else:
            reader.unknown(label)

    backend_fields = _v1_backend(reader, backend)
    backend_middlewares = backend_fields.pop("middlewares", ())
    backend_keep = backend_fields.pop("keep", True)
    named = sorted(n for n in set(segments) | set(frontends) if n)
    # Traefik 1.7 (provider/label/segment.go): root labels are defaults copied
    # into every segment that does not set the same option, and with segments
    # there is no root frontend of its own.  So root auth, allow lists,
    # entry points and ports protect and place every segment.
    if named:
        groups = [
            (
                segment,
                {**segments.get("", {}), **segments.get(segment, {})},
                _v1_inherit(frontends.get("", {}), frontends.get(segment, {})),
            )
            for segment in named
        ]
    else:
        groups = [("", segments.get("", {}), frontends.get("", {}))]

    routers: list[Router] = []
    services: list[ServiceSpec] = []
    missing_rule = False
    for segment, seg_opts, front_opts in groups:
        name = base if not segment else f"{base}-{segment.lower()}"
        seg_domain = domain
        spec_fields: dict = dict(backend_fields)
        for key, (label, value) in seg_opts.items():
            if key == "port":
                spec_fields["port"] = reader.port(label, value)
            elif key == "protocol":
                spec_fields["scheme"] = reader.scheme(label, value)
            elif key == "weight":
                spec_fields["weight"] = reader.integer(label, value, 1, 0, 1_000_000)
            elif key == "domain":
                seg_domain = value.strip()
            # "backend" names the backend; edge groups by Docker service.
        fields, middlewares, keep = _v1_frontend(reader, name, front_opts)
        if "pass_host_header" in fields:
            spec_fields["pass_host_header"] = fields["pass_host_header"]
        if "sticky" in spec_fields:
            spec_fields["sticky"] = _sticky_cookie(f"{name}@{provider}", spec_fields["sticky"])
        spec = ServiceSpec(name=f"{name}@{provider}", network=network, **spec_fields)
        services.append(spec)

        rule_label, rule_text = fields.get("rule", ("", ""))
        if not rule_text:
            host = _v1_default_host(source, compose, seg_domain)
            if not host:
                where = f"traefik.{segment}.frontend.rule" if segment else "traefik.frontend.rule"
                reader.warn(
                    where,
                    f"{source}: no rule for {'segment ' + segment if segment else 'the service'}"
                    f" and no default domain; add {where}",
                )
                missing_rule = True
                continue
            rule_text = f"Host:{host}"
        try:
            rule, strip = parse_v1(rule_text)
        except RuleError as e:
            reader.error(rule_label, f"frontend {name}: bad rule in {rule_label}: {e}; frontend dropped")
            continue
        if not keep or not backend_keep:
            continue
        routers.append(
            Router(
                name=f"{name}@{provider}",
                rule=rule,
                rule_text=rule_text,
                service=spec.name,
                entry_points=fields.get("entry_points", ()),
                priority=fields.get("priority", 0),
                middlewares=tuple(middlewares) + strip + backend_middlewares,
                provider=provider,
                source=source,
            )
        )
    if missing_rule and routers:
        # Traefik 1.7 filters the whole container when one segment has no rule.
        reader.error(
            "traefik.frontend.rule",
            f"{source}: a segment has no rule, so no frontend of this service is served"
            " (as in Traefik 1.7)",
        )
        routers = []
    return routers, services


# Options that are one setting under two spellings: a segment that sets either
# replaces the root's value of both.
_V1_ALIASES = (
    frozenset({"auth.basic", "auth.basic.users"}),
    frozenset({"whitelist.sourcerange", "whitelistsourcerange"}),
    frozenset({"passtlscert", "passtlsclientcert"}),
)


def _v1_inherit(root: dict, own: dict) -> dict:
    """A segment's frontend options: the root's, overridden by its own."""
    merged = dict(root)
    for key in own:
        for group in _V1_ALIASES:
            if key in group:
                for alias in group:
                    merged.pop(alias, None)
    merged.update(own)
    return merged


def _v1_default_host(source: str, compose: tuple[str, str] | None, domain: str) -> str:
    """
    Traefik 1.7's default rule host: ``<service>.<project>.<domain>`` for a
    compose container, ``<service>.<domain>`` otherwise.
    """
    if compose is None:
        return default_host(source, domain)
    service, project = (normalize_name(part) for part in compose)
    domain = domain.strip().strip(".").lower()
    if not (service and project and domain):
        return ""
    return f"{service}.{project}.{domain}"


# -- the entry point -----------------------------------------------------------


def _enabled(reader: _Reader, entries, exposed_by_default: bool) -> bool:
    enabled = exposed_by_default
    found = {lower[0]: (label, value) for label, _p, lower, value in entries if lower[1:] == ["enable"] and len(lower) == 2}
    for prefix in ("traefik", "edge"):  # edge.enable wins
        if prefix in found:
            label, value = found[prefix]
            enabled = reader.boolean(label, value, False)
    return enabled


COMPOSE_PROJECT_LABEL = "com.docker.compose.project"
COMPOSE_SERVICE_LABEL = "com.docker.compose.service"


def _compose(labels: Mapping[str, str]) -> tuple[str, str] | None:
    """(service, project) of a compose container, when both labels are set."""
    service = labels.get(COMPOSE_SERVICE_LABEL)
    project = labels.get(COMPOSE_PROJECT_LABEL)
    if isinstance(service, str) and isinstance(project, str) and service and project:
        return service, project
    return None


def compose_source(labels: Mapping[str, str], fallback: str) -> str:
    """
    The name Traefik gives a container: ``<service>_<project>`` for compose
    containers (so ``web-shop`` after :func:`normalize_name`), else ``fallback``.
    Two projects that both have a ``web`` service stay two services.
    """
    found = _compose(labels)
    return f"{found[0]}_{found[1]}" if found else fallback


def read_labels(
    source: str,
    labels: Mapping[str, str],
    *,
    provider: str = "docker",
    domain: str = "",
    exposed_by_default: bool = True,
    shared_middlewares: Mapping[str, Middleware] | None = None,
    files: LabelFiles | None = None,
) -> LabelConfig:
    """
    Routers and services for the Docker service ``source`` from its labels.

    ``shared_middlewares`` (qualified names such as ``auth@docker``) lets a
    caller resolve middlewares defined on other services; see
    :func:`read_middlewares`.

    ``files`` holds the files the labels name (:func:`read_label_files`, run
    off the reactor thread); without it they are read here, by the caller.

    Results are immutable and memoized: every resync reads the same labels
    again, and most of them have not changed.
    """
    if files is None:
        files = read_label_files([labels])
    try:
        key = (
            source,
            frozenset(labels.items()),
            provider,
            domain,
            exposed_by_default,
            frozenset((shared_middlewares or {}).items()),
            files,
        )
        hash(key)
    except Exception:  # unhashable odd input: read it without the cache
        return _read_labels(source, labels, provider, domain, exposed_by_default, shared_middlewares or {}, files)
    return _read_labels_cached(key)


@lru_cache(maxsize=2048)
def _read_labels_cached(key) -> LabelConfig:
    source, items, provider, domain, exposed_by_default, shared, files = key
    return _read_labels(source, dict(items), provider, domain, exposed_by_default, dict(shared), files)


def _read_labels(
    source: str,
    labels: Mapping[str, str],
    provider: str,
    domain: str,
    exposed_by_default: bool,
    shared: Mapping[str, Middleware],
    files: LabelFiles,
) -> LabelConfig:
    reader = _Reader(source, provider, files)
    try:
        entries = _split_labels(labels)
        enabled = _enabled(reader, entries, exposed_by_default)
        if not enabled:
            return LabelConfig(False, (), (), tuple(reader.problems))
        edge_routing = [e for e in entries if e[2][0] == "edge" and e[2][1:] != ["enable"]]
        l4 = read_l4_labels(reader, source, entries, "edge" if edge_routing else "traefik",
                            normalize_name(source) or "service")
        if edge_routing:
            routers, services = _read_v2(reader, source, entries, "edge", domain, shared)
        else:
            v1 = [e for e in entries if _is_v1(e[2])]
            v2 = [e for e in entries if _is_v2(e[2])]
            if v2:
                if v1:
                    reader.warn(
                        v1[0][0],
                        f"{source}: Traefik v1 labels ({v1[0][0]}...) are ignored"
                        " because v2 labels are present",
                    )
                    entries = [e for e in entries if not _is_v1(e[2])]
                routers, services = _read_v2(reader, source, entries, "traefik", domain, shared)
            elif v1:
                routers, services = _read_v1(reader, source, entries, domain, _compose(labels))
            elif entries or domain:
                # Only enable/network labels, or none with a default domain:
                # Traefik's default router and service.
                routers, services = _read_v2(reader, source, entries, "traefik", domain, shared)
            else:
                # No labels and no default domain: nothing to route, nothing to say.
                return LabelConfig(True, (), (), (), l4)
        return LabelConfig(
            enabled=True,
            routers=tuple(sorted(routers, key=lambda r: r.name)),
            services=tuple(sorted(services, key=lambda s: s.name)),
            problems=tuple(reader.problems),
            l4=l4,
        )
    except Exception as e:  # a bug here must not stop discovery of other services
        _log.failure("Reading labels of {source} failed", source=source)
        return LabelConfig(
            enabled=False,
            routers=(),
            services=(),
            problems=tuple(reader.problems)
            + (Problem(source, f"internal error reading labels: {e!r}", "error"),),
        )


def read_middlewares(
    source: str, labels: Mapping[str, str], *, provider: str = "docker", files: LabelFiles | None = None
) -> dict[str, Middleware]:
    """
    The usable middlewares a service defines (v2 or ``edge.*`` grammar),
    by qualified name, for other services' routers to reference.  Problems
    are reported by :func:`read_labels` for the defining service; ``files``
    as there.
    """
    reader = _Reader(source, provider, files if files is not None else read_label_files([labels]))
    try:
        entries = _split_labels(labels)
        prefix = "edge" if any(e[2][0] == "edge" and e[2][1:] != ["enable"] for e in entries) else "traefik"
        found = _collect_v2(reader, entries, prefix)
        out: dict[str, Middleware] = {}
        for name, built in _v2_middlewares(reader, found).items():
            if not isinstance(built, _Broken) and built is not _SKIP:
                out[f"{name}@{provider}"] = built  # type: ignore[assignment]
        return out
    except Exception:
        _log.failure("Reading middlewares of {source} failed", source=source)
        return {}


# -- the config file's [middlewares] (edge.discovery.references) -------------


def build_file_middleware(
    source: str, name: str, kinds: dict[str, dict[str, tuple[str, str, str]]], files: "LabelFiles | None" = None
) -> tuple[object | None, tuple[Problem, ...]]:
    """
    One middleware of the config file from its options in label form
    (``kind -> option -> (key, option as written, value)``), built by the
    labels' own builder so every kind works from the file.  None when it
    cannot be used; a chain's members become ``name@file`` references.
    ``files`` holds the files its options name, read with the config file.
    """
    reader = _Reader(source, "file", files)
    built = _build_middleware(reader, name, kinds)
    if isinstance(built, _Broken) or built is _SKIP:
        if not any(p.level == "error" for p in reader.problems):
            reason = built.reason if isinstance(built, _Broken) else "edge does not implement it"
            reader.error(f"middlewares.{name}", f"middleware {name} cannot be used: {reason}")
        return None, tuple(reader.problems)
    if isinstance(built, _ChainRef):
        members = []
        for ref in built.refs:
            member, _, provider = ref.partition("@")
            if provider and provider.strip().lower() != "file":
                reader.error(
                    f"middlewares.{name}.chain.middlewares",
                    f"chain {name}: {ref!r} is not a middleware of the config file; a chain here"
                    " names only [middlewares] of this file",
                )
                return None, tuple(reader.problems)
            members.append(f"{member}@file")
        built = _ChainRef(tuple(members))
    return built, tuple(reader.problems)


def resolve_references(
    source: str,
    provider: str,
    router: str,
    key: str,
    refs: tuple[str, ...],
    local: Mapping[str, object],
    shared: Mapping[str, object],
) -> tuple[tuple[Middleware, ...], bool, tuple[Problem, ...]]:
    """
    ``refs`` resolved as a ``provider`` router's ``middlewares`` are: the
    middlewares in order, False when the router must be dropped, the problems.
    """
    reader = _Reader(source, provider)
    resolved, keep = _resolve_middlewares(reader, router, key, ",".join(refs), local, shared)
    return resolved, keep, tuple(reader.problems)
