"""
Parse Traefik routing rules into :mod:`edge.rules` values.

Two grammars:

- Traefik v1 (``Host:a.example,b.example;PathPrefixStrip:/api``): ``;``
  joins matchers with *and*, ``,`` lists alternatives inside one matcher,
  matcher names are case-insensitive.  The ``...Strip`` matchers also strip
  what they matched, so :func:`parse_v1` returns middlewares beside the rule.
- Traefik v2/v3 (``Host(`a`) && (PathPrefix(`/x`) || !Method(`POST`))``):
  ``&&`` binds tighter than ``||``, ``!`` negates, values are backquoted or
  double-quoted Go strings.

Every regular expression put into the tree is meant for a *full* match
(:func:`edge.rules.compiled` ``.fullmatch``): Traefik's patterns are Go
regexps searched anywhere in the value unless anchored, so unanchored ones
are wrapped in ``.*(?:...).*`` here.  Go regexps are case-sensitive, so every
pattern is made so with an inline ``(?-i:...)`` group; hosts are compared in
lower case (Traefik v3 matches ``HostRegexp`` on the canonized, lower-case
host), so template text and plain host names are lower-cased here.

``parse_v2`` takes the rule syntax Traefik would use (a router's
``rulesyntax`` label): ``"v2"`` (gorilla/mux templates, several values per
matcher, ``Query(`k=v`)``), ``"v3"`` (Go regexps, one value per matcher,
``Query(`k`, `v`)``), or None when the labels do not say: then each form is
read in the syntax it can only belong to, and a form both syntaxes accept
with different meanings gets the narrower one (``HostRegexp(`example.com`)``
is the literal, anchored v2 host, never the v3 search that also matches
``notexample.com``).

Both parsers raise :class:`RuleError` -- and nothing else -- on bad input.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Callable

from edge.rules import (
    And,
    ClientIP,
    Header,
    HeaderRegexp,
    Host,
    HostRegexp,
    Method,
    Not,
    Or,
    Path,
    PathPrefix,
    PathRegexp,
    Query,
    Rule,
)
from edge.snapshot import Middleware, StripPrefix

__all__ = ["RuleError", "parse_v1", "parse_v2", "parse_any", "looks_like_v1"]

# Deeper nesting than this is certainly a mistake (or an attack on the stack).
MAX_DEPTH = 64


class RuleError(ValueError):
    """A rule that cannot be parsed; ``str()`` says where and what was expected."""


# -- shared value translation ---------------------------------------------

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::((?:[^{}]|\{[^{}]*\})*))?\}")
_DNS_SUFFIX = r"((?:[a-z0-9_-]+\.)*[a-z0-9_-]+)"
# v2 template: "{name}.suffix" or "{name:re}.suffix"
_V2_WILDCARD = re.compile(
    r"^\{[A-Za-z_][A-Za-z0-9_]*(?::(?:[^{}]|\{[^{}]*\})*)?\}\." + _DNS_SUFFIX + r"$",
    re.IGNORECASE,
)
# v3 regexp: "^[a-z0-9-]+\.suffix$" and similar one-label shapes.
_V3_LABEL = r"\(?(?:\[[^\]]+\]|\.|\\w)[+*]\)?"
_V3_WILDCARD = re.compile(
    r"^\^?" + _V3_LABEL + r"\\?\.((?:[a-z0-9_-]+\\?\.)*[a-z0-9_-]+)\$?$",
    re.IGNORECASE,
)
_LITERAL_HOST = re.compile(r"^[a-z0-9_*.-]+$")


def _case_sensitive(regex: str) -> str:
    """A Go regexp as a case-sensitive Python one (``compiled`` ignores case)."""
    return f"(?-i:{regex})"


def _ascii(value: str, matcher: str) -> str:
    if not value.isascii():
        raise RuleError(f"{matcher}: {value!r} has non-ASCII characters, which Traefik refuses")
    return value


def _check_regex(regex: str, what: str) -> str:
    try:
        re.compile(regex)
    except (re.error, OverflowError, RecursionError, ValueError) as e:
        raise RuleError(f"{what}: invalid regular expression: {e}") from None
    return regex


def _has_placeholder(value: str) -> bool:
    return _PLACEHOLDER.search(value) is not None


def _template_to_regex(template: str, default: str, lower: bool = False) -> str:
    """
    A gorilla/mux template (Traefik v1 and v2) as a regex: text outside
    ``{name:re}`` is literal (lower-cased for hosts), ``{name}`` alone
    stands for ``default``.
    """
    out = []
    pos = 0
    for m in _PLACEHOLDER.finditer(template):
        text = template[pos : m.start()]
        out.append(re.escape(text.lower() if lower else text))
        inner = m.group(2)
        out.append(f"(?:{inner if inner is not None else default})")
        pos = m.end()
    rest = template[pos:]
    if "{" in rest or "}" in rest:
        raise RuleError(f"unbalanced braces in {template!r}")
    out.append(re.escape(rest.lower() if lower else rest))
    return "".join(out)


def _unanchored(regex: str) -> str:
    """
    A Go-style search pattern as one for a full match.  ``^...$`` without
    alternation already is one, and is kept as written: the ``.*`` wrapper
    costs Python's backtracking engine a pass per start position.
    """
    if (
        regex.startswith("^")
        and regex.endswith("$")
        and not regex.endswith("\\$")
        and "|" not in regex
    ):
        return regex
    return f".*(?:{regex}).*"


_HOST_SHAPED = re.compile(r"^[A-Za-z0-9_.-]+$")


def host_regexp(patterns: tuple[str, ...], *, template: bool | None = None) -> Rule:
    """
    Build a :class:`HostRegexp` from Traefik patterns.

    ``template`` True reads gorilla templates (v1, v2: anchored, text outside
    ``{...}`` literal), False plain Go regexps (v3: searched); None decides
    per pattern: a ``{name...}`` placeholder or a plain host name
    (``example.com``) is a template, anything else a regexp.  A template
    without placeholders is just that host, so it becomes a :class:`Host`.
    """
    if not patterns:
        raise RuleError("HostRegexp needs at least one pattern")
    parts = []
    wildcards = []
    for pattern in patterns:
        if not pattern:
            raise RuleError("HostRegexp: empty pattern")
        _ascii(pattern, "HostRegexp")
        is_template = template
        if is_template is None:
            is_template = _has_placeholder(pattern) or bool(_HOST_SHAPED.match(pattern))
        if is_template and len(patterns) == 1 and _HOST_SHAPED.match(pattern):
            # No placeholder, no '*': exactly this host (and DNS may serve it).
            return Host((pattern.lower().rstrip("."),))
        if is_template:
            regex = _template_to_regex(pattern, "[^.]+", lower=True)
            shape = _V2_WILDCARD.match(pattern)
        else:
            regex = _unanchored(pattern)
            shape = _V3_WILDCARD.match(pattern)
        parts.append(_check_regex(_case_sensitive(regex), f"HostRegexp({pattern!r})"))
        if shape:
            suffix = shape.group(1).replace("\\", "").lower()
            if "." in suffix:  # never a wildcard for a whole top-level domain
                wildcards.append(f"*.{suffix}")
    regex = parts[0] if len(parts) == 1 else "|".join(f"(?:{p})" for p in parts)
    return HostRegexp(
        patterns=tuple(patterns),
        regex=regex,
        wildcards=tuple(dict.fromkeys(wildcards)),
    )


def _host(names: tuple[str, ...], catch_all: bool = False) -> Rule:
    """
    Literal names, with ``*.suffix`` entries turned into host regexps;
    ``catch_all`` accepts Traefik v3.7's ``Host(`*`)``, any host.
    """
    literal, wild = [], []
    for name in names:
        _ascii(name, "Host")
        if catch_all and name.strip() == "*":
            if len(names) != 1:
                raise RuleError("Host(`*`) takes no other host")
            return HostRegexp(patterns=("*",), regex=".*")
        name = name.strip().lower().rstrip(".")
        if not name:
            raise RuleError("Host: empty host name")
        if not _LITERAL_HOST.match(name) and not _is_ip_literal(name):
            raise RuleError(f"Host: {name!r} is not a host name")
        if "*" in name:
            if not name.startswith("*.") or "*" in name[2:] or "." not in name[2:]:
                raise RuleError(f"Host: wildcard {name!r} must look like *.example.com")
            wild.append(name)
        else:
            literal.append(name)
    items: list[Rule] = []
    if literal:
        items.append(Host(tuple(dict.fromkeys(literal))))
    for name in wild:
        items.append(
            HostRegexp(
                patterns=(name,),
                regex=_case_sensitive(r"[^.]+\." + re.escape(name[2:])),
                wildcards=(name,),
            )
        )
    return items[0] if len(items) == 1 else Or(tuple(items))


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


def _paths(values: tuple[str, ...], matcher: str, *, prefix: bool, templates: bool = True) -> Rule:
    literal, regexes = [], []
    for value in values:
        if not value.startswith("/"):
            raise RuleError(f"{matcher}: path {value!r} must start with '/'")
        if templates and ("{" in value or "}" in value):
            regex = _template_to_regex(value, "[^/]+")
            if prefix:
                regex += ".*"
            regexes.append(_check_regex(f"(?-i:{regex})", f"{matcher}({value!r})"))
        else:
            literal.append(value)
    items: list[Rule] = []
    if literal:
        items.append(PathPrefix(tuple(literal)) if prefix else Path(tuple(literal)))
    items.extend(PathRegexp(r) for r in regexes)
    return items[0] if len(items) == 1 else Or(tuple(items))


def _client_ip(values: tuple[str, ...]) -> ClientIP:
    for value in values:
        try:
            ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            raise RuleError(f"ClientIP: {value!r} is not an address or CIDR") from None
    return ClientIP(tuple(v.strip() for v in values))


def _methods(values: tuple[str, ...], matcher: str) -> Method:
    methods = []
    for value in values:
        value = value.strip().upper()
        if not value or not value.isalpha():
            raise RuleError(f"{matcher}: {value!r} is not an HTTP method")
        methods.append(value)
    return Method(tuple(dict.fromkeys(methods)))


def _header_name(name: str, matcher: str) -> str:
    name = name.strip()
    if not name or any(c in name for c in " \t:\r\n"):
        raise RuleError(f"{matcher}: {name!r} is not a header name")
    return name.lower()


def _mux_queries(values, matcher: str) -> Rule:
    """
    Traefik v1/v2 ``Query``: every value split on ``=``, the pieces taken as
    gorilla/mux name, value pairs (an odd count is refused); an empty value
    means "present with any value".
    """
    pieces = [piece for value in values for piece in value.split("=")]
    if len(pieces) % 2:
        raise RuleError(f"{matcher}: expected name=value pairs, got {', '.join(values)!r}")
    items: list[Rule] = []
    for key, value in zip(pieces[::2], pieces[1::2]):
        if not key:
            raise RuleError(f"{matcher}: a pair has no parameter name")
        items.append(Query(key, value if value else None))
    return _all(items)


def _all(items: list[Rule]) -> Rule:
    return items[0] if len(items) == 1 else And(tuple(items))


def _any(items: list[Rule]) -> Rule:
    return items[0] if len(items) == 1 else Or(tuple(items))


# -- Traefik v1 ------------------------------------------------------------


def _split_v1_values(text: str) -> list[str]:
    """Split on commas outside ``{...}`` so ``{x:[a-z]{1,3}}`` stays whole."""
    values, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c == "{":
            depth += 1
        elif c == "}":
            depth = max(0, depth - 1)
        elif c == "," and depth == 0:
            values.append(text[start:i])
            start = i + 1
    values.append(text[start:])
    return [v.strip() for v in values]


def _split_v1_matchers(text: str) -> list[tuple[int, str]]:
    """Split on ``;`` outside braces, keeping each part's offset."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c == "{":
            depth += 1
        elif c == "}":
            depth = max(0, depth - 1)
        elif c == ";" and depth == 0:
            parts.append((start, text[start:i]))
            start = i + 1
    parts.append((start, text[start:]))
    return parts


def _v1_pairs(values: list[str], matcher: str) -> list[tuple[str, str]]:
    if len(values) % 2:
        raise RuleError(f"{matcher}: expected name,value pairs, got {len(values)} values")
    return [(values[i], values[i + 1]) for i in range(0, len(values), 2)]


_V1_UNSUPPORTED = {
    "pathstripregex": "PathStripRegex",
    "pathprefixstripregex": "PathPrefixStripRegex",
    "addprefix": "AddPrefix",
    "replacepath": "ReplacePath",
    "replacepathregex": "ReplacePathRegex",
}


def parse_v1(text: str) -> tuple[Rule, tuple[Middleware, ...]]:
    """
    Parse a Traefik v1 frontend rule.

    Returns the rule and the middlewares the ``PathStrip`` and
    ``PathPrefixStrip`` matchers imply (a :class:`StripPrefix`).
    """
    if not isinstance(text, str):
        raise RuleError("rule must be a string")
    if not text.strip():
        raise RuleError("empty rule")
    items: list[Rule] = []
    strip: list[str] = []
    parts = _split_v1_matchers(text)
    for index, (offset, part) in enumerate(parts):
        if not part.strip():
            if index and index == len(parts) - 1:
                continue  # a trailing ';'
            raise RuleError(f"empty matcher at position {offset}")
        name, sep, raw = part.partition(":")
        where = f"at position {offset + len(part) - len(part.lstrip())}"
        name = name.strip()
        if not sep:
            raise RuleError(f"expected 'Matcher:value' {where}, got {part.strip()!r}")
        if not name:
            raise RuleError(f"missing matcher name {where}")
        key = name.lower()
        if key in _V1_UNSUPPORTED:
            raise RuleError(f"{_V1_UNSUPPORTED[key]} {where} is not supported by edge")
        values = _split_v1_values(raw)
        if not any(values):
            raise RuleError(f"{name} {where}: no value")
        if any(not v for v in values):
            raise RuleError(f"{name} {where}: empty value in {raw.strip()!r}")
        vals = tuple(values)
        try:
            if key == "host":
                items.append(_host(vals))
            elif key == "hostregexp":
                items.append(host_regexp(vals, template=True))
            elif key == "path":
                items.append(_paths(vals, name, prefix=False))
            elif key == "pathstrip":
                items.append(_paths(vals, name, prefix=False))
                strip.extend(v for v in vals if not _has_placeholder(v))
                if any(_has_placeholder(v) for v in vals):
                    raise RuleError("PathStrip with {placeholders} is not supported by edge")
            elif key == "pathprefix":
                items.append(_paths(vals, name, prefix=True))
            elif key == "pathprefixstrip":
                if any(_has_placeholder(v) for v in vals):
                    raise RuleError(
                        "PathPrefixStrip with {placeholders} is not supported by edge"
                    )
                items.append(_paths(vals, name, prefix=True))
                strip.extend(vals)
            elif key == "method":
                items.append(_methods(vals, name))
            elif key == "headers":
                items.append(
                    _all([Header(_header_name(k, name), v) for k, v in _v1_pairs(values, name)])
                )
            elif key == "headersregexp":
                items.append(
                    _all(
                        [
                            HeaderRegexp(
                                _header_name(k, name),
                                _check_regex(_case_sensitive(_unanchored(v)), f"{name}({v!r})"),
                            )
                            for k, v in _v1_pairs(values, name)
                        ]
                    )
                )
            elif key == "query":
                items.append(_mux_queries(vals, name))
            else:
                raise RuleError(
                    f"unknown matcher {name!r}; expected Host, HostRegexp, Path,"
                    " PathPrefix, PathStrip, PathPrefixStrip, Method, Headers,"
                    " HeadersRegexp or Query"
                )
        except RuleError as e:
            message = str(e)
            if where not in message:
                message = f"{message} ({where})"
            raise RuleError(message) from None
    if not items:
        raise RuleError("empty rule")
    middlewares: tuple[Middleware, ...] = ()
    if strip:
        middlewares = (StripPrefix(tuple(dict.fromkeys(strip))),)
    return _all(items), middlewares


# -- Traefik v2/v3 -------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<and>&&)
  | (?P<or>\|\|)
  | (?P<not>!)
  | (?P<lparen>\()
  | (?P<rparen>\))
  | (?P<comma>,)
  | (?P<ident>[A-Za-z][A-Za-z0-9]*)
  | (?P<raw>`[^`]*`)
  | (?P<quoted>"(?:[^"\\\n]|\\.)*")
    """,
    re.VERBOSE | re.DOTALL,
)

_ESCAPES = {
    "n": "\n",
    "t": "\t",
    "r": "\r",
    "\\": "\\",
    '"': '"',
    "'": "'",
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "v": "\v",
}


def _unquote(text: str, pos: int) -> str:
    """A Go interpreted string literal's value (the common escapes)."""
    body = text[1:-1]
    out = []
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        nxt = body[i + 1] if i + 1 < len(body) else ""
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[nxt]
            digits = body[i + 2 : i + 2 + width]
            try:
                if len(digits) != width:
                    raise ValueError
                out.append(chr(int(digits, 16)))
            except (ValueError, OverflowError):
                raise RuleError(f"bad \\{nxt} escape at position {pos + 1 + i}") from None
            i += 2 + width
        else:
            raise RuleError(
                f"unknown escape \\{nxt} at position {pos + 1 + i}"
                " (use backquotes for regular expressions)"
            )
    return "".join(out)


def _tokens(text: str) -> list[tuple[str, str, int]]:
    tokens = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            c = text[pos]
            if c in "`\"":
                raise RuleError(f"unterminated string starting at position {pos}")
            if c in "&|":
                raise RuleError(
                    f"unexpected {c!r} at position {pos}; expected '&&' or '||'"
                )
            raise RuleError(f"unexpected character {c!r} at position {pos}")
        kind = m.lastgroup
        assert kind is not None
        if kind != "space":
            value = m.group()
            if kind == "raw":
                kind, value = "string", value[1:-1]
            elif kind == "quoted":
                kind, value = "string", _unquote(value, pos)
            tokens.append((kind, value, pos))
        pos = m.end()
    tokens.append(("end", "", len(text)))
    return tokens


_DESCRIBE = {
    "and": "'&&'",
    "or": "'||'",
    "not": "'!'",
    "lparen": "'('",
    "rparen": "')'",
    "comma": "','",
    "end": "the end of the rule",
}


def _describe(token: tuple[str, str, int]) -> str:
    kind, value, _ = token
    if kind == "ident":
        return f"{value!r}"
    if kind == "string":
        return f"the string {value!r}"
    return _DESCRIBE[kind]


def _one(args: tuple[str, ...], matcher: str, syntax: str | None) -> None:
    """v3 matchers take exactly one value (Traefik v3 expectNParameters)."""
    if syntax == "v3" and len(args) != 1:
        raise RuleError(f"{matcher} takes one value in the v3 syntax, got {len(args)}")


def _v2_host(args, syntax):
    _one(args, "Host", syntax)
    return _host(args, catch_all=syntax != "v2")


def _v2_host_regexp(args, syntax):
    _one(args, "HostRegexp", syntax)
    return host_regexp(args, template={"v2": True, "v3": False}.get(syntax or ""))


def _v2_path(args, syntax, prefix: bool, name: str):
    _one(args, name, syntax)
    return _paths(args, name, prefix=prefix, templates=syntax != "v3")


def _v2_path_regexp(args, syntax):
    if syntax == "v2":
        raise RuleError("PathRegexp is a v3 matcher; v2 writes Path(`/{name:regexp}`)")
    if len(args) != 1:
        raise RuleError("PathRegexp takes one regular expression")
    regex = _case_sensitive(_unanchored(args[0]))
    return PathRegexp(_check_regex(regex, f"PathRegexp({args[0]!r})"))


def _v2_methods(args, syntax):
    _one(args, "Method", syntax)
    return _methods(args, "Method")


def _v2_header(args, syntax, matcher: str):
    if syntax == "v3" and matcher == "Headers":
        raise RuleError("Headers is the v2 name; v3 writes Header(`name`, `value`)")
    if syntax == "v2" and matcher == "Header":
        raise RuleError("Header is the v3 name; v2 writes Headers(`name`, `value`)")
    if len(args) != 2:
        raise RuleError(f"{matcher} takes a header name and a value")
    return Header(_header_name(args[0], matcher), args[1])


def _v2_header_regexp(args, syntax, matcher: str):
    if syntax == "v3" and matcher == "HeadersRegexp":
        raise RuleError("HeadersRegexp is the v2 name; v3 writes HeaderRegexp(`name`, `regexp`)")
    if syntax == "v2" and matcher == "HeaderRegexp":
        raise RuleError("HeaderRegexp is the v3 name; v2 writes HeadersRegexp(`name`, `regexp`)")
    if len(args) != 2:
        raise RuleError(f"{matcher} takes a header name and a regular expression")
    regex = _check_regex(_case_sensitive(_unanchored(args[1])), f"{matcher}({args[1]!r})")
    return HeaderRegexp(_header_name(args[0], matcher), regex)


def _v2_query(args, syntax):
    """
    v3: ``Query(`key`, `value`)``, and ``Query(`key`)`` for a key present
    with an empty value.  v2: ``Query(`k=v`, ...)`` as gorilla/mux pairs.
    Undeclared: v3 when no value holds ``=`` (v2 refuses those), else v2.
    """
    if syntax == "v3" or (syntax is None and not any("=" in a for a in args)):
        if len(args) not in (1, 2):
            raise RuleError(f"Query takes a name and a value, got {len(args)} values")
        return Query(args[0], args[1] if len(args) == 2 else "")
    return _mux_queries(args, "Query")


def _v2_client_ip(args, syntax):
    _one(args, "ClientIP", syntax)
    return _client_ip(args)


# Traefik v2 and v3 refuse a matcher with no values or an empty one
# ("no args" / "empty args for matcher"), whatever the matcher.
_V2_MATCHERS: dict[str, tuple[str, Callable[[tuple[str, ...], str | None], Rule]]] = {
    "host": ("Host", _v2_host),
    "hostheader": ("HostHeader", _v2_host),
    "hostregexp": ("HostRegexp", _v2_host_regexp),
    "path": ("Path", lambda a, s: _v2_path(a, s, False, "Path")),
    "pathprefix": ("PathPrefix", lambda a, s: _v2_path(a, s, True, "PathPrefix")),
    "pathregexp": ("PathRegexp", _v2_path_regexp),
    "method": ("Method", _v2_methods),
    "header": ("Header", lambda a, s: _v2_header(a, s, "Header")),
    "headers": ("Headers", lambda a, s: _v2_header(a, s, "Headers")),
    "headerregexp": ("HeaderRegexp", lambda a, s: _v2_header_regexp(a, s, "HeaderRegexp")),
    "headersregexp": ("HeadersRegexp", lambda a, s: _v2_header_regexp(a, s, "HeadersRegexp")),
    "query": ("Query", _v2_query),
    "clientip": ("ClientIP", _v2_client_ip),
}

_V2_KNOWN_UNSUPPORTED = {
    "queryregexp": "QueryRegexp",
    "hostsni": "HostSNI (a TCP matcher)",
    "hostsniregexp": "HostSNIRegexp (a TCP matcher)",
    "alpn": "ALPN (a TCP matcher)",
}


class _V2Parser:
    def __init__(self, text: str, syntax: str | None = None):
        self.text = text
        self.syntax = syntax
        self.tokens = _tokens(text)
        self.i = 0

    def peek(self) -> tuple[str, str, int]:
        return self.tokens[self.i]

    def take(self, kind: str, expected: str) -> tuple[str, str, int]:
        token = self.tokens[self.i]
        if token[0] != kind:
            raise RuleError(
                f"expected {expected} at position {token[2]}, got {_describe(token)}"
            )
        self.i += 1
        return token

    def parse(self) -> Rule:
        if self.peek()[0] == "end":
            raise RuleError("empty rule")
        rule = self.or_expr(0)
        token = self.peek()
        if token[0] != "end":
            raise RuleError(
                f"expected '&&', '||' or the end of the rule at position {token[2]},"
                f" got {_describe(token)}"
            )
        return rule

    def or_expr(self, depth: int) -> Rule:
        items = [self.and_expr(depth)]
        while self.peek()[0] == "or":
            self.i += 1
            items.append(self.and_expr(depth))
        return _flatten(Or, items)

    def and_expr(self, depth: int) -> Rule:
        items = [self.unary(depth)]
        while self.peek()[0] == "and":
            self.i += 1
            items.append(self.unary(depth))
        return _flatten(And, items)

    def unary(self, depth: int) -> Rule:
        if depth > MAX_DEPTH:
            raise RuleError(
                f"rule nested too deeply at position {self.peek()[2]}"
                f" (more than {MAX_DEPTH} levels)"
            )
        kind, _value, _pos = self.peek()
        if kind == "not":
            self.i += 1
            return Not(self.unary(depth + 1))
        if kind == "lparen":
            self.i += 1
            rule = self.or_expr(depth + 1)
            self.take("rparen", "')'")
            return rule
        if kind == "ident":
            return self.matcher()
        raise RuleError(
            f"expected a matcher such as Host(`example.com`), '!' or '(' at position"
            f" {self.peek()[2]}, got {_describe(self.peek())}"
        )

    def matcher(self) -> Rule:
        _kind, name, pos = self.take("ident", "a matcher")
        key = name.lower()
        if key in _V2_KNOWN_UNSUPPORTED:
            raise RuleError(f"{_V2_KNOWN_UNSUPPORTED[key]} at position {pos} is not supported by edge")
        if key not in _V2_MATCHERS:
            raise RuleError(
                f"unknown matcher {name!r} at position {pos}; expected one of"
                " Host, HostHeader, HostRegexp, Path, PathPrefix, PathRegexp, Method,"
                " Header, HeaderRegexp, Query, ClientIP"
            )
        canonical, build = _V2_MATCHERS[key]
        self.take("lparen", f"'(' after {name}")
        args: list[str] = []
        if self.peek()[0] != "rparen":
            args.append(self.take("string", f"a quoted value for {name}")[1])
            while self.peek()[0] == "comma":
                self.i += 1
                args.append(self.take("string", f"a quoted value for {name}")[1])
        self.take("rparen", f"',' or ')' in {name}(...)")
        try:
            if not args:
                raise RuleError(f"{canonical} needs at least one value")
            if any(not a for a in args):
                raise RuleError(f"{canonical}: empty value, which Traefik refuses")
            return build(tuple(args), self.syntax)
        except RuleError as e:
            raise RuleError(f"{e} (in {canonical} at position {pos})") from None


def _flatten(cls, items: list[Rule]) -> Rule:
    if len(items) == 1:
        return items[0]
    flat: list[Rule] = []
    for item in items:
        if isinstance(item, cls):
            flat.extend(item.items)
        else:
            flat.append(item)
    return cls(tuple(flat))


def parse_v2(text: str, syntax: str | None = None) -> Rule:
    """
    Parse a Traefik v2/v3 router rule in ``syntax`` ("v2", "v3" or None for
    "not declared"; see the module docstring).
    """
    if not isinstance(text, str):
        raise RuleError("rule must be a string")
    if syntax not in (None, "v2", "v3"):
        raise ValueError(f"unknown rule syntax {syntax!r}")
    try:
        return _V2Parser(text, syntax).parse()
    except RuleError as e:
        if looks_like_v1(text):
            raise RuleError(
                f"{e} (this looks like Traefik v1 syntax; v2 writes Host(`example.com`))"
            ) from None
        raise


_V1_SHAPE = re.compile(
    r"^\s*(host|hostregexp|path|pathprefix|pathstrip|pathprefixstrip|method|headers|"
    r"headersregexp|query|pathstripregex|pathprefixstripregex|addprefix|replacepath|"
    r"replacepathregex)\s*:",
    re.IGNORECASE,
)


def looks_like_v1(text: str) -> bool:
    """True when ``text`` starts like a v1 rule (``Host:...``)."""
    return bool(_V1_SHAPE.match(text))


def parse_any(text: str) -> tuple[Rule, tuple[Middleware, ...]]:
    """A v2/v3 rule, or a v1 one when it is written in that syntax."""
    if looks_like_v1(text):
        return parse_v1(text)
    return parse_v2(text), ()
