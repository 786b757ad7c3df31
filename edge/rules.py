"""
Routing rules as immutable values.

A rule is a small tree of matchers joined by :class:`And`, :class:`Or` and
:class:`Not`.  Traefik v1 (``Host:a.b;PathPrefix:/x``) and v2/v3
(``Host(`a.b`) && PathPrefix(`/x`)``) syntaxes both parse into this one form
(see :mod:`edge.discovery.rule_parser`); the HTTP router compiles it once per
snapshot and the DNS server reads the host names out of it.

Host names are kept lower case.  A :class:`HostRegexp` carries the regular
expression it matches with (already translated from Traefik's ``{name:re}``
form) and, where the pattern is a plain ``<something>.suffix``, the
``*.suffix`` wildcard the DNS server can answer for.

Every ``regex`` here is meant for a *full* match (``compiled(r).fullmatch``):
the parser wraps Traefik's unanchored Go-style patterns in ``.*(?:...).*``
and makes path patterns case-sensitive with ``(?-i:...)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Union

__all__ = [
    "Host",
    "HostRegexp",
    "Path",
    "PathPrefix",
    "PathRegexp",
    "Method",
    "Header",
    "HeaderRegexp",
    "Query",
    "ClientIP",
    "And",
    "Or",
    "Not",
    "Rule",
    "hosts_of",
    "compiled",
]


@dataclass(frozen=True)
class Host:
    """Matches when the request's host (port stripped, lower case) is one of ``names``."""

    names: tuple[str, ...]


@dataclass(frozen=True)
class HostRegexp:
    """
    Matches the host against ``regex`` (full match, case-insensitive).

    ``patterns`` keeps what the label said; ``wildcards`` holds ``*.suffix``
    forms for DNS, empty when the pattern is not of that simple shape.
    """

    patterns: tuple[str, ...]
    regex: str
    wildcards: tuple[str, ...] = ()


@dataclass(frozen=True)
class Path:
    paths: tuple[str, ...]


@dataclass(frozen=True)
class PathPrefix:
    prefixes: tuple[str, ...]


@dataclass(frozen=True)
class PathRegexp:
    regex: str


@dataclass(frozen=True)
class Method:
    methods: tuple[str, ...]  # upper case


@dataclass(frozen=True)
class Header:
    name: str  # lower case
    value: str


@dataclass(frozen=True)
class HeaderRegexp:
    name: str  # lower case
    regex: str


@dataclass(frozen=True)
class Query:
    name: str
    value: str | None = None


@dataclass(frozen=True)
class ClientIP:
    ranges: tuple[str, ...]


@dataclass(frozen=True)
class And:
    items: tuple["Rule", ...]


@dataclass(frozen=True)
class Or:
    items: tuple["Rule", ...]


@dataclass(frozen=True)
class Not:
    item: "Rule"


Rule = Union[
    Host,
    HostRegexp,
    Path,
    PathPrefix,
    PathRegexp,
    Method,
    Header,
    HeaderRegexp,
    Query,
    ClientIP,
    And,
    Or,
    Not,
]


def hosts_of(rule: Rule) -> frozenset[str]:
    """
    The host names a request must carry for ``rule`` to match it.

    Only names in positive positions count: ``!Host(`x`)`` names nothing.
    Wildcards from simple host regexps appear as ``*.suffix``.
    """
    return frozenset(_hosts(rule, positive=True))


def _hosts(rule: Rule, positive: bool):
    if isinstance(rule, Host):
        if positive:
            yield from rule.names
    elif isinstance(rule, HostRegexp):
        if positive:
            yield from rule.wildcards
    elif isinstance(rule, (And, Or)):
        for item in rule.items:
            yield from _hosts(item, positive)
    elif isinstance(rule, Not):
        yield from _hosts(rule.item, not positive)


@lru_cache(maxsize=4096)
def compiled(regex: str) -> re.Pattern:
    """A compiled, cached, case-insensitive pattern for full matches."""
    return re.compile(regex, re.IGNORECASE)
