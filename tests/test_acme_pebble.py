"""
ACME end to end: real pebble (Let's Encrypt's test CA) validating against a
real ``twistd edge`` on loopback, resolving the test names through edge's own
DNS server; curl checks the chain edge serves against pebble's roots only.
"""

import os
import shutil
import ssl
import socket
import time

import pytest
from cryptography import x509

from tests.acme_harness import Backend, ChallTestServer, EdgePorts, EdgeProcess, Named, Pebble, curl, wait_until

pytestmark = pytest.mark.skipif(shutil.which("pebble") is None, reason="Debian's pebble is not installed (make system-deps)")

ISSUE_DEADLINE = 90.0  # bounded polling, not a speed assertion


def _route(name, rule, backend, resolver="pebble"):
    return (
        f'[routes.{name}]\nrule = "{rule}"\nbackends = ["http://127.0.0.1:{backend.port}"]\n'
        f'cert_resolver = "{resolver}"\n'
    )


def _resolver(pebble, challenge, extra=""):
    return (
        f'[acme.pebble]\nca = "{pebble.directory_url}"\nca_bundle = "{pebble.listener_ca}"\n'
        f'challenge = "{challenge}"\nemail = "ops@example.com"\n{extra}'
    )


def _served_certificate(port, name):
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=name) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


@pytest.fixture
def lab(tmp_path):
    """Start pebble/edge/backends on demand; stop them all afterwards."""
    started = []

    class Lab:
        backend = Backend()
        ports = EdgePorts()

        def pebble(self, dns=None, **kwargs):
            pebble = Pebble(str(tmp_path / f"pebble{len(started)}"), self.ports.http, self.ports.https,
                            dns or f"127.0.0.1:{self.ports.dns}", **kwargs)
            started.append(pebble)
            return pebble

        def edge(self, text, name="edge", **kwargs):
            edge = EdgeProcess(str(tmp_path / name), self.ports,
                               f'[tls]\nstate_dir = "{tmp_path / "state"}"\n' + text, **kwargs)
            started.append(edge)
            return edge

        def named(self, zone):
            named = Named(str(tmp_path / "named"), zone)
            started.append(named)
            return named

        def challtestsrv(self):
            server = ChallTestServer(str(tmp_path / "challtestsrv"))
            started.append(server)
            return server

    lab = Lab()
    started.append(lab.backend)
    yield lab
    for thing in reversed(started):
        thing.stop()


def _wait_served(lab, pebble, edge, host, deadline=ISSUE_DEADLINE):
    trust = pebble.trust_file()
    url = f"https://{host}:{lab.ports.https}/"
    result = wait_until(lambda: (r := curl(url, host, lab.ports.https, trust)).returncode == 0 and r, deadline)
    assert result, f"never served a pebble certificate for {host}:\n{edge.log()[-3000:]}\n{pebble.log()[-2000:]}"
    return result


@pytest.mark.parametrize("challenge", ["tls-alpn-01", "http-01"])
def test_issue_and_serve_by_sni(lab, challenge):
    pebble = lab.pebble()
    edge = lab.edge(_resolver(pebble, challenge) + _route("app", "Host(`app.test`)", lab.backend))
    result = _wait_served(lab, pebble, edge, "app.test")
    assert result.stdout == "hello from the backend\n"
    served = _served_certificate(lab.ports.https, "app.test")
    assert "Pebble Intermediate CA" in served.issuer.rfc4514_string()
    assert pebble.orders() == 1
    log = edge.log()
    assert f"Answered the {challenge.upper()} challenge for app.test" in log
    (row,) = edge.api("/api/certificates")["certificates"]
    assert row["names"] == ["app.test"] and row["resolver"] == "pebble" and row["challenge"] == challenge
    assert "Pebble Intermediate CA" in row["issuer"] and row["not_after"] and row["last_error"] == ""
    if challenge == "http-01":
        # The dashboard a person opens shows the same certificate.
        from tests.test_admin_browser import Tables, render

        page = Tables()
        page.feed(render(f"http://127.0.0.1:{edge.ports.admin}/", "--virtual-time-budget=10000", "--dump-dom"))
        (shown,) = page.tables["certificates"]
        assert shown[0] == "issued" and shown[1] == "app.test" and shown[2] == "pebble (http-01)"
        assert "Pebble Intermediate CA" in shown[3] and shown[4] == row["not_after"]



def test_dns01_wildcard_through_rfc2136_to_named(lab):
    if shutil.which("named") is None:
        pytest.skip("Debian's bind9 is not installed (make system-deps)")
    named = lab.named("dns01.test")
    # A CA checks DNS-01 at the zone's authoritative servers, never at edge
    # (edge answers *.wild.dns01.test itself, which covers the TXT owner).
    pebble = lab.pebble(dns=named.address)
    extra = (
        f'dns_server = "{named.address}"\ntsig_key_name = "{named.KEY_NAME}"\ntsig_secret = "{named.secret}"\n'
    )
    rule = "Host(`wild.dns01.test`) || HostRegexp(`{sub:[a-z0-9-]+}.wild.dns01.test`)"
    # edge forwards the names it does not own (the TXT records) to named.
    edge = lab.edge(_resolver(pebble, "dns-01", extra) + _route("wild", rule, lab.backend), upstream=named.address)
    result = _wait_served(lab, pebble, edge, "any.wild.dns01.test")
    assert result.stdout == "hello from the backend\n"
    served = _served_certificate(lab.ports.https, "any.wild.dns01.test")
    names = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert sorted(names) == ["*.wild.dns01.test", "wild.dns01.test"]
    assert "updating zone 'dns01.test/IN': adding an RR at '_acme-challenge.wild.dns01.test' TXT" in named.log()
    assert "deleting an RR at _acme-challenge.wild.dns01.test TXT" in named.log()


def test_renewal_replaces_a_short_lived_certificate(lab):
    pebble = lab.pebble(validity=30)  # seconds: renewal falls due after 20
    edge = lab.edge(_resolver(pebble, "tls-alpn-01") + _route("app", "Host(`app.test`)", lab.backend))
    _wait_served(lab, pebble, edge, "app.test")
    first = _served_certificate(lab.ports.https, "app.test").serial_number
    renewed = wait_until(lambda: _served_certificate(lab.ports.https, "app.test").serial_number != first, 60)
    assert renewed, edge.log()[-3000:]
    assert pebble.orders() == 2
    assert "Ordering a certificate for app.test from ACME resolver pebble (renewal)" in edge.log()


def test_ca_down_serves_the_internal_ca_and_reports_the_error(lab, tmp_path):
    from tests.ports import free_port

    closed = free_port()
    edge = lab.edge(
        'internal_ca = true\n'
        f'[acme.pebble]\nca = "https://127.0.0.1:{closed}/dir"\nchallenge = "tls-alpn-01"\n'
        + _route("app", "Host(`app.test`)", lab.backend)
    )
    rows = wait_until(lambda: [r for r in edge.api("/api/certificates")["certificates"] if r["last_error"]], 30)
    assert rows, edge.log()[-2000:]
    assert "Connection refused" in rows[0]["last_error"] or "ConnectionError" in rows[0]["last_error"]
    assert rows[0]["not_after"] is None and rows[0]["next_attempt"]
    ca = tmp_path / "state" / "ca" / "edge-ca.crt"
    result = curl(f"https://app.test:{lab.ports.https}/", "app.test", lab.ports.https, str(ca))
    assert result.returncode == 0 and result.stdout == "hello from the backend\n", result.stderr


def test_an_account_the_ca_no_longer_knows_is_replaced(lab):
    pebble = lab.pebble()
    edge = lab.edge(_resolver(pebble, "tls-alpn-01") + _route("app", "Host(`app.test`)", lab.backend))
    _wait_served(lab, pebble, edge, "app.test")
    edge.stop()
    pebble.stop()
    # A new pebble at the same URL forgets every account: the saved one is now unknown to the CA.
    fresh = lab.pebble(ports=(pebble.port, pebble.management))
    edge = lab.edge(
        _resolver(fresh, "tls-alpn-01")
        + _route("app", "Host(`app.test`)", lab.backend) + _route("two", "Host(`two.test`)", lab.backend),
        name="edge2",
    )
    _wait_served(lab, fresh, edge, "two.test")
    assert fresh.orders() == 1  # app.test's saved certificate was reused, not ordered again
    assert "The ACME account of resolver pebble is no longer valid" in edge.log()


def test_dns01_wildcard_through_an_exec_hook(lab, tmp_path):
    if shutil.which("pebble-challtestsrv") is None:
        pytest.skip("pebble-challtestsrv is not installed")
    dns = lab.challtestsrv()
    pebble = lab.pebble(dns=dns.dns)
    calls = tmp_path / "hook-calls"
    hook = tmp_path / "dns-hook"
    # Any DNS provider's API would do; this one is challtestsrv's.
    hook.write_text(
        "#!/bin/sh\n"
        f'echo "$1 $2 $3" >> {calls}\n'
        'case "$1" in\n'
        f'  present) body="{{\\"host\\":\\"$2\\",\\"value\\":\\"$3\\"}}"; path=set-txt;;\n'
        f'  cleanup) body="{{\\"host\\":\\"$2\\"}}"; path=clear-txt;;\n'
        "esac\n"
        f'exec curl -sS --fail -d "$body" http://127.0.0.1:{dns.management}/$path\n'
    )
    hook.chmod(0o755)
    rule = "HostRegexp(`{sub:[a-z0-9-]+}.hook.test`)"
    edge = lab.edge(_resolver(pebble, "dns-01", f'dns_hook = "{hook}"\n') + _route("hooked", rule, lab.backend))
    result = _wait_served(lab, pebble, edge, "x.hook.test")
    assert result.stdout == "hello from the backend\n"
    lines = calls.read_text().splitlines()
    assert [l.split()[:2] for l in lines] == [["present", "_acme-challenge.hook.test."], ["cleanup", "_acme-challenge.hook.test."]]
    assert lines[0].split()[2] == lines[1].split()[2] and len(lines[0].split()[2]) == 43  # base64url SHA-256


def test_external_account_binding(lab):
    kid, key = "kid-edge", "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"
    pebble = lab.pebble(extra={"externalAccountBindingRequired": True, "externalAccountMACKeys": {kid: key}})
    edge = lab.edge(
        _resolver(pebble, "tls-alpn-01", f'eab_kid = "{kid}"\neab_hmac_key = "{key}"\n')
        + _route("app", "Host(`app.test`)", lab.backend)
    )
    _wait_served(lab, pebble, edge, "app.test")


def test_external_account_binding_missing_is_reported(lab):
    pebble = lab.pebble(extra={"externalAccountBindingRequired": True, "externalAccountMACKeys": {"k": "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"}})
    edge = lab.edge(_resolver(pebble, "tls-alpn-01") + _route("app", "Host(`app.test`)", lab.backend))
    rows = wait_until(lambda: [r for r in edge.api("/api/certificates")["certificates"] if r["last_error"]], 30)
    assert rows and "externalAccountRequired" in rows[0]["last_error"], edge.log()[-2000:]
    assert pebble.orders() == 0
