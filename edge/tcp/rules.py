"""
TCP router rules (Traefik's ``HostSNI``, ``HostSNIRegexp``, ``ClientIP``,
``ALPN``, joined by ``&&``, ``||``, ``!`` and parentheses) as immutable values.

The grammar is the HTTP one (:mod:`edge.discovery.rule_parser`: same
tokens, precedence and error messages); only the matchers differ.  A rule is
matched against what the connection showed before any byte went to a
backend: the client's address and, for TLS, the ClientHello's server name
and ALPN list (:mod:`edge.tcp.hello`).  Names compare in lower case, as
Traefik does.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache
from typing import Union

from edge.discovery.rule_parser import RuleError, _V2Parser, _client_ip, host_regexp
from edge.rules import And, ClientIP, Host, Not, Or, compiled

__all__ = ["HostSNI", "HostSNIRegexp", "ALPN", "TCPRule", "parse_tcp_rule", "matches",
           "needs_tls", "catch_all", "sni_names", "RuleError"]


@dataclass(frozen=True)
class HostSNI:
    """The ClientHello's server name is one of ``names``; ``("*",)`` matches every connection."""

    names: tuple[str, ...]


@dataclass(frozen=True)
class HostSNIRegexp:
    patterns: tuple[str, ...]
    regex: str  # for a full, case-insensitive match (edge.rules.compiled)


@dataclass(frozen=True)
class ALPN:
    """The client offered this protocol in its ClientHello."""

    protocol: str


TCPRule = Union[HostSNI, HostSNIRegexp, ALPN, ClientIP, And, Or, Not]


def _host_sni(args: tuple[str, ...]) -> TCPRule:
    if "*" in args:
        if len(args) != 1:
            raise RuleError("HostSNI(`*`) takes no other name")
        return HostSNI(("*",))
    names = []
    for name in args:
        name = name.strip().lower().rstrip(".")
        if not name or not all(c.isalnum() or c in "-._" for c in name) or not name.isascii():
            raise RuleError(f"HostSNI: {name!r} is not a host name")
        names.append(name)
    return HostSNI(tuple(dict.fromkeys(names)))


def _host_sni_regexp(args: tuple[str, ...]) -> TCPRule:
    built = host_regexp(args)
    if isinstance(built, Host):  # a template without placeholders: that name
        return HostSNI(built.names)
    return HostSNIRegexp(patterns=built.patterns, regex=built.regex)


def _alpn(args: tuple[str, ...]) -> TCPRule:
    if len(args) != 1:
        raise RuleError("ALPN takes one protocol")
    if args[0] == "acme-tls/1":
        raise RuleError("ALPN(`acme-tls/1`) is reserved for ACME, as in Traefik")
    return ALPN(args[0])


_MATCHERS = {
    "hostsni": ("HostSNI", _host_sni),
    "hostsniregexp": ("HostSNIRegexp", _host_sni_regexp),
    "alpn": ("ALPN", _alpn),
    "clientip": ("ClientIP", _client_ip),
}


class _TCPParser(_V2Parser):
    """The HTTP rule grammar with the TCP matchers."""

    def matcher(self) -> TCPRule:
        _kind, name, pos = self.take("ident", "a matcher")
        if name.lower() not in _MATCHERS:
            raise RuleError(
                f"unknown TCP matcher {name!r} at position {pos}; expected one of"
                " HostSNI, HostSNIRegexp, ClientIP, ALPN"
            )
        canonical, build = _MATCHERS[name.lower()]
        self.take("lparen", f"'(' after {name}")
        args: list[str] = []
        while self.peek()[0] != "rparen":
            if args:
                self.take("comma", f"',' or ')' in {name}(...)")
            args.append(self.take("string", f"a quoted value for {name}")[1])
        self.take("rparen", f"')' after {name}(...)")
        if not args or any(not a for a in args):
            raise RuleError(f"{canonical} needs non-empty values (at position {pos})")
        try:
            return build(tuple(args))
        except RuleError as e:
            raise RuleError(f"{e} (in {canonical} at position {pos})") from None


def parse_tcp_rule(text: str) -> TCPRule:
    """A TCP router rule; raises :class:`RuleError` (only) on bad input."""
    if not isinstance(text, str):
        raise RuleError("rule must be a string")
    return _TCPParser(text).parse()


@lru_cache(maxsize=1024)
def _networks(ranges: tuple[str, ...]):
    return tuple(ipaddress.ip_network(r, strict=False) for r in ranges)


def _ip(address: str):
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    return mapped or ip


def matches(rule: TCPRule, sni: str | None, alpn: tuple[str, ...], client: str) -> bool:
    """
    Whether a connection matches: ``sni`` is the ClientHello's server name
    (``None`` for a connection that is not TLS, ``""`` for TLS without SNI).
    """
    if isinstance(rule, HostSNI):
        if rule.names == ("*",):
            return True
        return sni is not None and sni.lower() in rule.names
    if isinstance(rule, HostSNIRegexp):
        return bool(sni) and compiled(rule.regex).fullmatch(sni.lower()) is not None
    if isinstance(rule, ALPN):
        return rule.protocol in alpn
    if isinstance(rule, ClientIP):
        ip = _ip(client)
        return ip is not None and any(ip in net for net in _networks(rule.ranges))
    if isinstance(rule, And):
        return all(matches(item, sni, alpn, client) for item in rule.items)
    if isinstance(rule, Or):
        return any(matches(item, sni, alpn, client) for item in rule.items)
    if isinstance(rule, Not):
        return not matches(rule.item, sni, alpn, client)
    return False


def needs_tls(rule: TCPRule) -> bool:
    """The rule looks at the ClientHello (a server name other than ``*``, or ALPN)."""
    if isinstance(rule, HostSNI):
        return rule.names != ("*",)
    if isinstance(rule, (HostSNIRegexp, ALPN)):
        return True
    if isinstance(rule, (And, Or)):
        return any(needs_tls(item) for item in rule.items)
    if isinstance(rule, Not):
        return needs_tls(rule.item)
    return False


def catch_all(rule: TCPRule) -> bool:
    """``HostSNI(`*`)`` somewhere in a positive position: the rule can match a non-TLS connection."""
    if isinstance(rule, HostSNI):
        return rule.names == ("*",)
    if isinstance(rule, And):
        return any(catch_all(i) for i in rule.items) and not any(needs_tls(i) for i in rule.items)
    if isinstance(rule, Or):
        return any(catch_all(i) for i in rule.items)
    return False


def sni_names(rule: TCPRule) -> frozenset[str]:
    """Literal server names in positive positions (certificates for terminated routers)."""
    if isinstance(rule, HostSNI) and rule.names != ("*",):
        return frozenset(rule.names)
    if isinstance(rule, (And, Or)):
        return frozenset().union(*(sni_names(i) for i in rule.items))
    return frozenset()
