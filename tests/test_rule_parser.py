"""Traefik v1 and v2/v3 rule grammars -> edge.rules values."""

import re

import pytest
from hypothesis import HealthCheck as HC
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.discovery.rule_parser import RuleError, parse_any, parse_v1, parse_v2
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
    compiled,
    hosts_of,
)
from edge.snapshot import StripPrefix

# -- v1 ------------------------------------------------------------------

V1_CASES = [
    ("Host:example.com", Host(("example.com",)), ()),
    ("Host:A.example.com,b.EXAMPLE.com", Host(("a.example.com", "b.example.com")), ()),
    ("host:a.com", Host(("a.com",)), ()),
    ("Host: a.com ; Method: get , post", And((Host(("a.com",)), Method(("GET", "POST")))), ()),
    ("Host:a.com;", Host(("a.com",)), ()),
    ("Path:/x,/y", Path(("/x", "/y")), ()),
    ("PathPrefix:/api", PathPrefix(("/api",)), ()),
    (
        "Host:a.com;PathPrefixStrip:/api,/v1",
        And((Host(("a.com",)), PathPrefix(("/api", "/v1")))),
        (StripPrefix(("/api", "/v1")),),
    ),
    ("PathStrip:/exact", Path(("/exact",)), (StripPrefix(("/exact",)),)),
    ("Headers:X-A,1,X-B,2", And((Header("x-a", "1"), Header("x-b", "2"))), ()),
    ("Headers:Content-Type,application/json", Header("content-type", "application/json"), ()),
    # Go regexps are case-sensitive
    ("HeadersRegexp:X-A,^v[0-9]$", HeaderRegexp("x-a", "(?-i:^v[0-9]$)"), ()),
    ("HeadersRegexp:X-A,^a|b$", HeaderRegexp("x-a", "(?-i:.*(?:^a|b$).*)"), ()),
    # gorilla/mux query pairs: an empty value means "present"
    ("Query:a=1,b=", And((Query("a", "1"), Query("b", None))), ()),
    ("Query:a=", Query("a", None), ()),
    ("Path:/x/{id:[0-9]{1,3}}", PathRegexp("(?-i:/x/(?:[0-9]{1,3}))"), ()),
    ("PathPrefix:/u/{name}", PathRegexp("(?-i:/u/(?:[^/]+).*)"), ()),
]


@pytest.mark.parametrize("text, rule, middlewares", V1_CASES)
def test_v1(text, rule, middlewares):
    assert parse_v1(text) == (rule, middlewares)


def test_v1_host_regexp_template():
    rule, mws = parse_v1("HostRegexp:{sub:[a-z]+}.example.com,{x}.other.org")
    assert mws == ()
    assert isinstance(rule, HostRegexp)
    assert rule.wildcards == ("*.example.com", "*.other.org")
    pattern = compiled(rule.regex)
    assert pattern.fullmatch("abc.example.com")
    # routing lower-cases the request's host; the pattern itself is case-sensitive, as Go's
    assert not pattern.fullmatch("ABC.example.com")
    assert pattern.fullmatch("q.other.org")
    assert not pattern.fullmatch("a1.example.com")  # [a-z]+ only
    assert not pattern.fullmatch("abcXexample.com")  # the dot is literal
    assert not pattern.fullmatch("abc.example.com.evil")


V1_ERRORS = [
    ("", "empty rule"),
    ("   ", "empty rule"),
    ("Host", "expected 'Matcher:value'"),
    (":a.com", "missing matcher name"),
    ("Host:", "no value"),
    ("Host:a,,b", "empty value"),
    (";Host:a", "empty matcher at position 0"),
    ("Host:a;;Path:/", "empty matcher at position 7"),
    ("Hots:a.com", "unknown matcher 'Hots'"),
    ("Path:noslash", "must start with '/'"),
    ("Headers:X-A", "name,value pairs"),
    ("AddPrefix:/x", "AddPrefix"),
    ("ReplacePath:/x", "not supported"),
    ("HostRegexp:{x:[}.a.com", "invalid regular expression"),
    ("Method:G E T", "not an HTTP method"),
    ("Host:a b.com", "not a host name"),
    ("Host:a.com;Path:/x/{", "unbalanced braces"),
]


@pytest.mark.parametrize("text, message", V1_ERRORS)
def test_v1_errors(text, message):
    with pytest.raises(RuleError) as info:
        parse_v1(text)
    assert message in str(info.value)


# -- v2/v3 -----------------------------------------------------------------

V2_CASES = [
    ("Host(`example.com`)", Host(("example.com",))),
    ('Host("Example.COM")', Host(("example.com",))),
    ("Host(`a.com`, `b.com`)", Host(("a.com", "b.com"))),
    ("HostHeader(`a.com`)", Host(("a.com",))),
    ("host(`a.com`)", Host(("a.com",))),
    (
        "Host(`a.com`) && (PathPrefix(`/x`) || !Method(`POST`))",
        And((Host(("a.com",)), Or((PathPrefix(("/x",)), Not(Method(("POST",))))))),
    ),
    # && binds tighter than ||
    (
        "Host(`a`) || Host(`b`) && Path(`/p`)",
        Or((Host(("a",)), And((Host(("b",)), Path(("/p",)))))),
    ),
    (
        "Host(`a`) && Path(`/p`) && Method(`GET`)",
        And((Host(("a",)), Path(("/p",)), Method(("GET",)))),
    ),
    ("!!Host(`a`)", Not(Not(Host(("a",))))),
    ("((Host(`a`)))", Host(("a",))),
    ("Path(`/a`)", Path(("/a",))),
    ("PathPrefix(`/a`, `/b`)", PathPrefix(("/a", "/b"))),
    ("Method(`get`, `Put`)", Method(("GET", "PUT"))),
    ("Header(`X-Api`, `1`)", Header("x-api", "1")),
    ("Headers(`X-Api`, `1`)", Header("x-api", "1")),
    ("HeaderRegexp(`X-Api`, `^v`)", HeaderRegexp("x-api", "(?-i:.*(?:^v).*)")),
    ("HeadersRegexp(`X-Api`, `^v`)", HeaderRegexp("x-api", "(?-i:.*(?:^v).*)")),
    ("Query(`mobile`, `true`)", Query("mobile", "true")),
    ("Query(`debug`)", Query("debug", "")),  # v3: present with an empty value
    ("Query(`a=1`, `b=2`)", And((Query("a", "1"), Query("b", "2")))),
    ("ClientIP(`10.0.0.0/8`, `::1`)", ClientIP(("10.0.0.0/8", "::1"))),
    ("PathRegexp(`^/api/v[0-9]+`)", PathRegexp("(?-i:.*(?:^/api/v[0-9]+).*)")),
    ('Path("/a\\"b")', Path(('/a"b',))),
    ('Header("X-A", "tab\\there")', Header("x-a", "tab\there")),
    ("Host(`a`)&&Path(`/`)", And((Host(("a",)), Path(("/",))))),
    ("Host(`a`)\n  && Path(`/`)", And((Host(("a",)), Path(("/",))))),
]


@pytest.mark.parametrize("text, rule", V2_CASES)
def test_v2(text, rule):
    assert parse_v2(text) == rule


HOST_REGEXP_CASES = [
    # (rule, wildcards, should match, should not match)
    (
        "HostRegexp(`{subdomain:[a-z]+}.example.com`)",
        ("*.example.com",),
        ["app.example.com"],
        ["example.com", "app.example.com.evil", "appXexample.com"],
    ),
    ("HostRegexp(`{name}.lan.home`)", ("*.lan.home",), ["x.lan.home"], ["a.b.lan.home"]),
    (
        r"HostRegexp(`^[a-z0-9-]+\.example\.com$`)",
        ("*.example.com",),
        ["a-1.example.com"],
        ["example.com", "a.example.com.evil"],
    ),
    (r"HostRegexp(`^.+\.svc\.lan$`)", ("*.svc.lan",), ["a.b.svc.lan"], ["svc.lan"]),
    # v3 regexps are searched like Go's, not anchored
    (r"HostRegexp(`example\.org`)", (), ["www.example.org", "example.org.x"], ["example.net"]),
    ("HostRegexp(`.+`)", (), ["anything.at.all"], []),
    # alternation keeps Go's search meaning: (^a)|(b$)
    ("HostRegexp(`^a|b$`)", (), ["ax", "xb", "a"], ["xa", "bx"]),
    ("HostRegexp(`{host:.+}`)", (), ["anything"], []),
    # a wildcard is never made for a whole top-level domain
    (r"HostRegexp(`^[a-z]+\.com$`)", (), ["x.com"], []),
    ("Host(`*.apps.lan`)", ("*.apps.lan",), ["a.apps.lan"], ["apps.lan", "a.b.apps.lan"]),
]


@pytest.mark.parametrize("text, wildcards, good, bad", HOST_REGEXP_CASES)
def test_host_regexp(text, wildcards, good, bad):
    rule = parse_v2(text)
    assert isinstance(rule, HostRegexp)
    assert rule.wildcards == wildcards
    assert hosts_of(rule) == frozenset(wildcards)
    pattern = compiled(rule.regex)
    for host in good:
        assert pattern.fullmatch(host), host
    for host in bad:
        assert not pattern.fullmatch(host), host


def test_path_regexps_are_case_sensitive():
    rule = parse_v2("PathRegexp(`^/API`)")
    assert compiled(rule.regex).fullmatch("/API/x")
    assert not compiled(rule.regex).fullmatch("/api/x")


def test_hosts_of_ignores_negated_hosts():
    rule = parse_v2("Host(`a.com`) && !Host(`b.com`) || Host(`c.com`)")
    assert hosts_of(rule) == frozenset({"a.com", "c.com"})


V2_ERRORS = [
    ("", "empty rule"),
    ("  ", "empty rule"),
    ("Host(`a`", "expected ',' or ')' in Host(...) at position 8, got the end of the rule"),
    ("Host(`a`) &&", "expected a matcher such as Host(`example.com`), '!' or '(' at position 12"),
    ("Host(`a`) & Path(`/`)", "unexpected '&' at position 10; expected '&&' or '||'"),
    ("Host(`a`) Path(`/`)", "expected '&&', '||' or the end of the rule at position 10"),
    ("Host(a)", "expected a quoted value for Host at position 5, got 'a'"),
    ("Host(`a)", "unterminated string starting at position 5"),
    ("Hots(`a`)", "unknown matcher 'Hots' at position 0"),
    ("Host()", "Host needs at least one value"),
    ("Host(``)", "empty value"),
    ("(Host(`a`)", "expected ')' at position 10"),
    ("Host(`a`))", "at position 9"),
    ("Host(`a`) || ", "at position 13"),
    ("HostRegexp(`[`)", "invalid regular expression"),
    ("PathRegexp(`(`)", "invalid regular expression"),
    ("Path(`x`)", "must start with '/'"),
    ("Header(`X`)", "takes a header name and a value"),
    ("ClientIP(`300.1.1.1`)", "not an address or CIDR"),
    ("QueryRegexp(`a`, `b`)", "QueryRegexp at position 0 is not supported"),
    ("HostSNI(`a`)", "TCP matcher"),
    ('Host("a\\qb")', "unknown escape \\q"),
    ('Host("a\\x4")', "bad \\x escape"),
    ("Host(`a`) # comment", "unexpected character '#' at position 10"),
    ("Host:a.com", "position 4 (this looks like Traefik v1 syntax"),
    ("Host(`*.*.a.com`)", "wildcard"),
    ("(" * 100 + "Host(`a`)" + ")" * 100, "nested too deeply"),
    ("!" * 100 + "Host(`a`)", "nested too deeply"),
]


@pytest.mark.parametrize("text, message", V2_ERRORS)
def test_v2_errors(text, message):
    with pytest.raises(RuleError) as info:
        parse_v2(text)
    assert message in str(info.value)


def test_parse_any_takes_either_syntax():
    assert parse_any("Host(`a.com`)") == (Host(("a.com",)), ())
    assert parse_any("Host:a.com;PathPrefixStrip:/x") == (
        And((Host(("a.com",)), PathPrefix(("/x",)))),
        (StripPrefix(("/x",)),),
    )
    with pytest.raises(RuleError):
        parse_any("Host(`a.com`")


# -- no input crashes the parsers ---------------------------------------------

V2_ALPHABET = st.sampled_from(
    ["Host", "HostRegexp", "Path", "PathPrefix", "Method", "Header", "Query", "ClientIP",
     "PathRegexp", "Nope", "(", ")", ",", "&&", "||", "!", "&", "|", " ", "`", '"', "\\",
     "`a.com`", "`/x`", "`{x:[a-z]+}.b.c`", "`[`", "`10.0.0.0/8`", '"a\\"b"', "`k=v`", "{", "}"]
)

V1_ALPHABET = st.sampled_from(
    ["Host", "HostRegexp", "Path", "PathPrefix", "PathPrefixStrip", "PathStrip", "Method",
     "Headers", "HeadersRegexp", "Query", "AddPrefix", ":", ";", ",", " ", "a.com", "/x",
     "{x:[a-z]+}", "{", "}", "[", "(", "=", "GET", "X-A"]
)


def _check_result(rule):
    # Whatever parsed must be usable: every regex compiles.
    for node in _walk(rule):
        regex = getattr(node, "regex", None)
        if regex is not None:
            re.compile(regex)


def _walk(rule):
    yield rule
    if isinstance(rule, (And, Or)):
        for item in rule.items:
            yield from _walk(item)
    elif isinstance(rule, Not):
        yield from _walk(rule.item)


@settings(max_examples=400, deadline=None, suppress_health_check=[HC.too_slow])
@given(st.one_of(st.text(max_size=80), st.lists(V2_ALPHABET, max_size=25).map("".join)))
def test_v2_never_crashes(text):
    try:
        rule = parse_v2(text)
    except RuleError:
        return
    _check_result(rule)
    hosts_of(rule)


@settings(max_examples=400, deadline=None, suppress_health_check=[HC.too_slow])
@given(st.one_of(st.text(max_size=80), st.lists(V1_ALPHABET, max_size=25).map("".join)))
def test_v1_never_crashes(text):
    try:
        rule, middlewares = parse_v1(text)
    except RuleError:
        return
    _check_result(rule)
    assert all(isinstance(m, StripPrefix) for m in middlewares)
