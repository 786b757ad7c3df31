"""edge.cidr: the one address-in-networks check every allow-list uses."""

from edge.cidr import Networks, parse_address


def test_ipv4_mapped_ipv6_is_checked_as_ipv4():
    nets = Networks(["10.0.0.0/8"])
    assert "10.1.2.3" in nets
    assert "::ffff:10.1.2.3" in nets
    assert "::ffff:11.1.2.3" not in nets
    assert "11.0.0.1" not in nets


def test_ipv6_scope_and_garbage():
    nets = Networks(["fe80::/10", "2001:db8::/32"])
    assert "fe80::1%eth0" in nets
    assert "2001:db8::5" in nets
    assert "10.0.0.1" not in nets
    assert "not an address" not in nets
    assert "" not in nets
    assert not Networks([])
    assert "10.0.0.1" not in Networks([])


def test_parse_address():
    assert str(parse_address("::ffff:192.0.2.1")) == "192.0.2.1"
    assert parse_address("x") is None


def test_ip_allow_middleware_and_client_ip_rule_agree_on_mapped_addresses():
    from edge import rules as R
    from edge.http.middlewares import compile_middlewares
    from edge.http.routing import MatchContext, compile_rule
    from edge.snapshot import IPAllowList

    chain = compile_middlewares((IPAllowList(("10.0.0.0/8",)),))

    class Req:
        client_ip = "::ffff:10.0.0.7"

    assert chain.request[0](Req()) is None
    matcher = compile_rule(R.ClientIP(("10.0.0.0/8",)))
    context = MatchContext("GET", "h", "/", "", [], "::ffff:10.0.0.7")
    assert matcher(context)
