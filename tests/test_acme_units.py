"""ACME's pure parts: which names, when to order, challenge answers, the [acme] config."""

import datetime
import hashlib

import pytest
from cryptography import x509

from edge.acme.challenges import ACME_IDENTIFIER_OID, ChallengeBoard, tls_alpn_certificate
from edge.acme.dns01 import challenge_fqdn
from edge.acme.names import wanted_certificates
from edge.acme.schedule import Managed, backoff, renewal_time
from edge.config import ACMEResolver, ConfigError, parse
from edge.discovery.rule_parser import parse_v1, parse_v2
from edge.snapshot import Router, RouterTLS, Snapshot
from edge.tls.ca import create_ca

UTC = datetime.timezone.utc


def _v2(name, rule, resolver="", domains=(), tls=True):
    return Router(
        name=name, rule=parse_v2(rule), rule_text=rule, service="s",
        tls=RouterTLS(cert_resolver=resolver, domains=tuple(domains)) if tls else None,
    )


def _v1(name, rule):
    parsed, _ = parse_v1(rule)
    return Router(name=name, rule=parsed, rule_text=rule, service="s")


RESOLVERS = {
    "le": ACMEResolver("le"),
    "dns": ACMEResolver("dns", challenge="dns-01", dns_hook="/bin/true"),
    "v1": ACMEResolver("v1", on_host_rule=True),
}


def _names(snapshot, resolvers=RESOLVERS):
    problems = []
    found = {(w.resolver, w.names) for w in wanted_certificates(snapshot, resolvers, problems)}
    return found, problems


def test_only_routers_with_a_resolver_get_certificates():
    snapshot = Snapshot.build(routers=[
        _v2("a@docker", "Host(`a.example.com`) || Host(`b.example.com`)", "le"),
        _v2("plain@docker", "Host(`plain.example.com`)"),
        _v2("notls@docker", "Host(`notls.example.com`)", tls=False),
    ])
    found, problems = _names(snapshot, {"le": RESOLVERS["le"]})
    assert found == {("le", ("a.example.com", "b.example.com"))}
    assert problems == []


def test_tls_domains_replace_the_rule_hosts_and_wildcards_need_dns01():
    snapshot = Snapshot.build(routers=[
        _v2("w@docker", "Host(`x.example.com`)", "dns", ["example.com", "*.example.com"]),
        _v2("h@docker", "Host(`y.example.com`)", "le", ["*.example.org", "y.example.com"]),
    ])
    found, problems = _names(snapshot)
    assert found == {("dns", ("example.com", "*.example.com")), ("le", ("y.example.com",))}
    assert problems == ["router h@docker: *.example.org is a wildcard; only a dns-01 resolver can order it"]


def test_v1_routers_only_with_on_host_rule_and_same_names_once():
    snapshot = Snapshot.build(routers=[
        _v1("old@docker", "Host:old.example.com"),
        _v2("new@docker", "Host(`new.example.com`)", tls=False),
        _v2("twin@docker", "Host(`old.example.com`)", "v1"),
    ])
    found, _ = _names(snapshot)
    assert found == {("v1", ("old.example.com",))}
    found, _ = _names(snapshot, {"le": RESOLVERS["le"]})
    assert found == set()


def test_unknown_resolver_and_bad_names_are_reported_not_ordered():
    snapshot = Snapshot.build(routers=[
        _v2("a@docker", "Host(`a.example.com`)", "nope"),
        _v2("b@docker", "Host(`localhost`)", "le"),
    ])
    found, problems = _names(snapshot)
    assert found == set()
    assert problems == [
        "router a@docker: no [acme.nope] resolver is configured",
        "router b@docker: 'localhost' cannot be in a certificate",
    ]


def _leaf(days_total=90, days_left=60):
    now = datetime.datetime.now(UTC)
    ca = create_ca()
    issued = ca.issue(("a.example.com",), datetime.timedelta(days=days_total), now=now - datetime.timedelta(days=days_total - days_left))
    return issued


def test_renewal_at_a_third_of_the_lifetime_or_when_ari_says():
    leaf = _leaf()
    lifetime = leaf.not_after - leaf.not_before
    assert renewal_time(leaf, 1 / 3) == leaf.not_after - lifetime / 3
    ari = leaf.not_before + datetime.timedelta(days=10)
    assert renewal_time(leaf, 1 / 3, ari) == ari
    managed = Managed(wanted=None, certified=leaf)
    now = datetime.datetime.now(UTC)
    assert not managed.due(now, 1 / 3)  # 60 of 90 days left
    assert managed.due(leaf.not_after - datetime.timedelta(days=29), 1 / 3)


def test_backoff_doubles_caps_and_honours_retry_after():
    assert [backoff(n, base=60, cap=600) for n in (1, 2, 3, 4, 5, 6)] == [60, 120, 240, 480, 600, 600]
    assert backoff(1, retry_after=3600, base=60, cap=600) == 3600
    assert backoff(3, retry_after=10, base=60, cap=600) == 240
    assert backoff(1, retry_after=10**9, base=60, cap=600) == 7 * 86400


def test_a_failed_attempt_waits_and_never_drops_the_certificate():
    leaf = _leaf(days_left=1)
    now = datetime.datetime.now(UTC)
    managed = Managed(wanted=None, certified=leaf, not_before_attempt=now + datetime.timedelta(minutes=5))
    assert not managed.due(now, 1 / 3)
    assert managed.serving(now) is leaf
    assert managed.due(now + datetime.timedelta(minutes=6), 1 / 3)
    assert managed.serving(leaf.not_after) is None  # expired: never served


def test_http01_answers_only_its_token_on_its_own_host():
    board = ChallengeBoard()
    board.add_http("a.example.com", "tok123", "tok123.thumb")
    reply = board.respond(b"a.example.com:80", b"/.well-known/acme-challenge/tok123")
    assert (reply.status, reply.body) == (200, b"tok123.thumb")
    assert board.respond(b"A.Example.COM", b"/.well-known/acme-challenge/tok123").body == b"tok123.thumb"
    assert board.respond(b"b.example.com", b"/.well-known/acme-challenge/tok123") is None
    assert board.respond(b"a.example.com", b"/.well-known/acme-challenge/other") is None
    assert board.respond(b"a.example.com", b"/tok123") is None
    board.remove_http("tok123")
    assert board.respond(b"a.example.com", b"/.well-known/acme-challenge/tok123") is None


def test_tls_alpn_certificate_carries_the_critical_acme_identifier():
    certified = tls_alpn_certificate("a.example.com", "tok.thumb")
    extension = certified.leaf.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
    assert extension.critical
    assert extension.value.value == b"\x04\x20" + hashlib.sha256(b"tok.thumb").digest()
    san = certified.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["a.example.com"]
    board = ChallengeBoard()
    board.add_alpn("a.example.com", certified)
    assert board.alpn_certificate("a.example.com") is certified
    assert board.alpn_certificate("b.example.com") is None


def test_dns01_record_name_of_a_wildcard_is_its_base():
    assert challenge_fqdn("*.example.com") == "_acme-challenge.example.com."
    assert challenge_fqdn("a.example.com") == "_acme-challenge.a.example.com."


def test_acme_config_sections():
    config = parse({
        "acme": {"le": {"email": "me@example.com", "ca": "letsencrypt-staging", "challenge": "tls-alpn-01"}},
        "routes": {"r": {"rule": "Host(`a.example.com`)", "backends": ["http://127.0.0.1:1"], "cert_resolver": "le"}},
    })
    (resolver,) = config.acme
    assert (resolver.name, resolver.email, resolver.challenge) == ("le", "me@example.com", "tls-alpn-01")
    assert config.routes[0].cert_resolver == "le"


@pytest.mark.parametrize("document, message", [
    ({"acme": {"le": {"key_type": "dsa"}}}, "acme.le.key_type: expected one of ec256"),
    ({"acme": {"le": {"ca": "ftp://x"}}}, "acme.le.ca: expected letsencrypt"),
    ({"acme": {"le": {"challenge": "dns-01"}}}, "acme.le.challenge: dns-01 needs dns_server"),
    ({"acme": {"le": {"dns_server": "127.0.0.1", "challenge": "dns-01"}}}, "acme.le.dns_server: RFC 2136 updates need"),
    ({"acme": {"le": {"eab_kid": "k"}}}, "acme.le.eab_kid: eab_kid and eab_hmac_key go together"),
    ({"acme": {"le": {"emial": "x"}}}, "acme.le.emial: unknown key"),
    ({"routes": {"r": {"rule": "Host(`a.b`)", "backends": ["http://127.0.0.1:1"], "cert_resolver": "x"}}},
     "routes.r.cert_resolver: no [acme.x] resolver is configured"),
])
def test_acme_config_mistakes_are_one_line(document, message):
    with pytest.raises(ConfigError) as caught:
        parse(document, source="edge.toml")
    assert message in str(caught.value)


def test_acme_secrets_stay_out_of_the_restart_message():
    from edge.lifecycle import restart_needed

    old = parse({"acme": {"dns": {"challenge": "dns-01", "dns_server": "127.0.0.1", "tsig_key_name": "k",
                                  "tsig_secret": "c2VjcmV0LXRzaWc=", "eab_kid": "id", "eab_hmac_key": "ZWFiLWtleQ"}}})
    new = parse({"acme": {"dns": {"challenge": "dns-01", "dns_server": "127.0.0.2", "tsig_key_name": "k",
                                  "tsig_secret": "bmV3LXNlY3JldA==", "eab_kid": "id", "eab_hmac_key": "ZWFiLWtleQ"}}})
    changes = restart_needed(old, new)
    assert any("127.0.0.2" in c for c in changes)
    text = " ".join(changes)
    assert "c2VjcmV0LXRzaWc=" not in text and "bmV3LXNlY3JldA==" not in text and "ZWFiLWtleQ" not in text
    assert new.acme[0].tsig_secret == "bmV3LXNlY3JldA=="
