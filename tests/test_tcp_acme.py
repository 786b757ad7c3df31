"""
ACME certificates for TCP routers whose TLS edge terminates
(``traefik.tcp.routers.<r>.tls.certresolver``), like HTTP routers get them.

The pure part here: labels -> snapshot -> the certificates the ACME service
wants.  The end-to-end part (the real test swarm, real pebble, a real edge
serving the pebble-issued certificate for the HostSNI name and relaying the
plaintext) is ``test_tcp_router_serves_a_pebble_certificate`` below.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import time

import pytest

from edge.acme.names import wanted_certificates
from edge.config import ACMEResolver
from edge.discovery.labels import read_labels
from edge.snapshot import Snapshot

RESOLVERS = {
    "le": ACMEResolver("le"),
    "dns": ACMEResolver("dns", challenge="dns-01", dns_hook="/bin/true"),
}


def _wanted(labels, resolvers=RESOLVERS, http_routers=()):
    read = read_labels("db", labels)
    assert [p.message for p in read.problems if p.level == "error"] == []
    snapshot = Snapshot.build(routers=http_routers, tcp_routers=read.l4.tcp_routers)
    problems: list[str] = []
    found = {(w.resolver, w.names) for w in wanted_certificates(snapshot, resolvers, problems)}
    return found, problems


def _tcp(router="db", **opts):
    labels = {f"traefik.tcp.routers.{router}.{k.replace('__', '.')}": v for k, v in opts.items()}
    labels[f"traefik.tcp.services.{router}.loadbalancer.server.port"] = "5432"
    return labels


def test_a_terminated_tcp_router_with_a_resolver_wants_its_hostsni_names():
    found, problems = _wanted(_tcp(rule="HostSNI(`db.example.com`) || HostSNI(`pg.example.com`)",
                                   tls__certresolver="le"))
    assert found == {("le", ("db.example.com", "pg.example.com"))} and problems == []


def test_tls_domains_replace_the_hostsni_names_main_first():
    labels = _tcp(rule="HostSNI(`db.example.com`)", tls__certresolver="dns")
    labels["traefik.tcp.routers.db.tls.domains[0].main"] = "example.com"
    labels["traefik.tcp.routers.db.tls.domains[0].sans"] = "*.example.com"
    found, problems = _wanted(labels)
    assert found == {("dns", ("example.com", "*.example.com"))} and problems == []


def test_the_same_names_on_an_http_and_a_tcp_router_are_one_certificate():
    from edge.discovery.rule_parser import parse_v2
    from edge.snapshot import Router, RouterTLS

    http = Router(name="web@docker", rule=parse_v2("Host(`db.example.com`)"), rule_text="Host(`db.example.com`)",
                  service="s", tls=RouterTLS(cert_resolver="le"))
    found, _ = _wanted(_tcp(rule="HostSNI(`db.example.com`)", tls__certresolver="le"), http_routers=[http])
    assert found == {("le", ("db.example.com",))}


@pytest.mark.parametrize(
    "opts, why",
    [
        ({"rule": "HostSNI(`db.example.com`)", "tls__certresolver": "le", "tls__passthrough": "true"},
         "tls.passthrough: the backend terminates TLS with its own certificate; nothing is ordered"),
        ({"rule": "HostSNI(`*`)", "tls__certresolver": "le"}, "no HostSNI name or tls.domains"),
        ({"rule": "HostSNI(`db.example.com`)", "tls__certresolver": "nope"}, "no [acme.nope] resolver is configured"),
        ({"rule": "HostSNI(`db.example.com`)", "tls__certresolver": "le", "tls__domains[0]__main": "*.example.com"},
         "only a dns-01 resolver can order it"),
    ],
)
def test_what_cannot_be_ordered_is_reported_and_nothing_ordered(opts, why):
    found, problems = _wanted(_tcp(**opts))
    assert found == set()
    assert any(why in p for p in problems), problems


def test_without_a_resolver_or_with_plain_tls_nothing_is_ordered():
    found, problems = _wanted(_tcp(rule="HostSNI(`db.example.com`)", tls="true"))
    assert found == set() and problems == []


# -- end to end: real swarm, real pebble, real edge --------------------------------------


def _served(port: int, name: str, cafile: str, payload: bytes) -> tuple[object, bytes] | None:
    """(peer certificate, first answer bytes) of a TLS connection verified against ``cafile`` only."""
    from cryptography import x509

    context = ssl.create_default_context(cafile=cafile)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname=name) as tls:
                cert = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
                tls.sendall(payload)
                answer = b""
                while len(answer) < 65536:
                    chunk = tls.recv(4096)
                    if not chunk:
                        break
                    answer += chunk
                return cert, answer
    except (OSError, ssl.SSLError):
        return None


@pytest.mark.swarm
@pytest.mark.skipif(shutil.which("pebble") is None, reason="Debian's pebble is not installed (make system-deps)")
@pytest.mark.parametrize("challenge", ["http-01", "tls-alpn-01"])
def test_tcp_router_serves_a_pebble_certificate(swarm, tmp_path, unique, challenge):
    from tests.acme_harness import EdgePorts, EdgeProcess, Pebble, wait_until

    ports = EdgePorts()
    name = f"tcp-{challenge[:4]}-{unique}"
    host = f"{name}.test"
    pebble = Pebble(str(tmp_path / "pebble"), ports.http, ports.https, f"127.0.0.1:{ports.dns}")
    edge = EdgeProcess(
        str(tmp_path / "edge"), ports,
        f'[tls]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[acme.pebble]\nca = "{pebble.directory_url}"\nca_bundle = "{pebble.listener_ca}"\n'
        f'challenge = "{challenge}"\n',  # pebble finds the HostSNI name through edge's own DNS
        docker=f'url = "{swarm.url}"\nbackend_addressing = "published"\ndebounce = 0.05',
    )
    created = None
    try:
        trust = pebble.trust_file()
        created = swarm.create_web_service(name, labels={
            f"traefik.tcp.routers.{name}.rule": f"HostSNI(`{host}`)",
            f"traefik.tcp.routers.{name}.tls.certresolver": "pebble",
            f"traefik.tcp.services.{name}.loadbalancer.server.port": "80",
        })
        request = f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode()
        started = time.monotonic()
        # Bounded polling until the certificate is issued and the task answers; not a speed assertion.
        result = wait_until(
            lambda: (r := _served(ports.https, host, trust, request)) is not None and r[1].startswith(b"HTTP/") and r,
            150,
        )
        assert result, f"never served a pebble certificate for {host}:\n{edge.log()[-3000:]}\n{pebble.log()[-2000:]}"
        print(f"TCP router ({challenge}): served with a pebble certificate {time.monotonic() - started:.1f} s after"
              " `docker service create` (task start included)")
        cert, answer = result
        from cryptography import x509

        assert "Pebble Intermediate CA" in cert.issuer.rfc4514_string()
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName)
        assert names == [host]
        # The plaintext went through the TCP router to the web task, not to an HTTP router (there is none).
        assert answer.split(b"\r\n", 1)[0].endswith(b"200 OK"), answer[:200]
        log = edge.log()
        assert log.count(f"Ordering a certificate for {host} from ACME resolver pebble") == 1
        assert f"Answered the {challenge.upper()} challenge for {host}" in log
        rows = [r for r in edge.api("/api/certificates")["certificates"] if r["names"] == [host]]
        assert len(rows) == 1 and "Pebble Intermediate CA" in rows[0]["issuer"]
    finally:
        if created is not None:  # other tests watch the same swarm: leave nothing behind
            swarm.remove_service(created.id)
        edge.stop()
        pebble.stop()
