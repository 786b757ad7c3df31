"""
TCP and UDP routers through a real ``twistd edge`` reading labelled
containers from the test engine (discovery included).

The containers run in the host network namespace (``network_mode=host``),
so their targets are loopback ports where this test's own backends listen:
a TLS server with its own CA (passthrough: the client verifies *that*
certificate, so edge did not terminate), a TCP echo server (TLS terminated
by edge; ``HostSNI(`*`)`` with a PROXY v2 header), a UDP echo server.  Run
inside the test namespace (``make test NETNS=...``).
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import urllib.request
import uuid

import pytest

from tests.ports import free_port
from tests.swarmkit import twistd_edge, wait_for
from tests.test_tcp_harness import EchoServer, TLSServer, UDPEcho, exchange, make_tls_files, tls_exchange

pytestmark = pytest.mark.swarm

SLEEP = ["/bin/sleep", "600"]


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    ca, cert, key = make_tls_files(str(tmp_path_factory.mktemp("backends")), "pass.test")
    tls = TLSServer(cert, key)
    echo = EchoServer()
    proxied = EchoServer()
    udp = UDPEcho()
    yield {"ca": ca, "tls": tls, "echo": echo, "proxied": proxied, "udp": udp}
    for server in (tls, echo, proxied, udp):
        server.close()


@pytest.fixture(scope="module")
def edge(swarm, tmp_path_factory, backends):
    """One edge and one set of labelled containers for the module (removed at its end)."""
    tmp_path = tmp_path_factory.mktemp("edge")
    unique = uuid.uuid4().hex[:8]
    ports = {name: free_port() for name in ("https", "raw", "few", "udp", "admin", "web")}
    b = backends
    labels = {
        # TLS passthrough by SNI to the TLS backend.
        "traefik.tcp.routers.pass.rule": "HostSNI(`pass.test`)",
        "traefik.tcp.routers.pass.entrypoints": "websecure",
        "traefik.tcp.routers.pass.tls.passthrough": "true",
        "traefik.tcp.routers.pass.service": "tlsback",
        "traefik.tcp.services.tlsback.loadbalancer.server.port": str(b["tls"].port),
        # TLS terminated by edge, plaintext to the echo backend.
        "traefik.tcp.routers.term.rule": "HostSNI(`term.test`)",
        "traefik.tcp.routers.term.entrypoints": "websecure",
        "traefik.tcp.routers.term.tls": "true",
        "traefik.tcp.routers.term.service": "echo",
        "traefik.tcp.services.echo.loadbalancer.server.port": str(b["echo"].port),
        # Refused by its allow list (loopback is not in it).
        "traefik.tcp.routers.closed.rule": "HostSNI(`closed.test`)",
        "traefik.tcp.routers.closed.entrypoints": "websecure",
        "traefik.tcp.routers.closed.tls.passthrough": "true",
        "traefik.tcp.routers.closed.service": "tlsback",
        "traefik.tcp.routers.closed.middlewares": "lan",
        "traefik.tcp.middlewares.lan.ipallowlist.sourcerange": "192.0.2.0/24",
        # Every connection of the plain TCP entry point, with a PROXY v2 header.
        "traefik.tcp.routers.raw.rule": "HostSNI(`*`)",
        "traefik.tcp.routers.raw.entrypoints": "raw",
        "traefik.tcp.routers.raw.service": "proxied",
        "traefik.tcp.services.proxied.loadbalancer.server.port": str(b["proxied"].port),
        "traefik.tcp.services.proxied.loadbalancer.proxyprotocol.version": "2",
        # One connection at a time per client IP.
        "traefik.tcp.routers.few.rule": "HostSNI(`*`)",
        "traefik.tcp.routers.few.entrypoints": "few",
        "traefik.tcp.routers.few.service": "echo",
        "traefik.tcp.routers.few.middlewares": "one",
        "traefik.tcp.middlewares.one.inflightconn.amount": "1",
        # UDP.
        "traefik.udp.routers.game.entrypoints": "game",
        "traefik.udp.routers.game.service": "game",
        "traefik.udp.services.game.loadbalancer.server.port": str(b["udp"].port),
    }
    containers = [swarm.run_container(f"tcp-{unique}", labels, command=SLEEP, network_mode="host")]
    # An HTTPS router on the same TLS port keeps working beside the TCP routers.
    containers.append(swarm.run_container(
        f"web-{unique}",
        {"traefik.http.routers.web.rule": "Host(`web.test`)", "traefik.http.routers.web.tls": "true",
         "traefik.http.services.web.loadbalancer.server.port": str(ports["web"])},
        command=["/bin/httpd", "-f", "-p", f"127.0.0.1:{ports['web']}", "-h", "/www"],
        network_mode="host",
    ))
    state = tmp_path / "state"
    config = (
        f'[docker]\nurl = "{swarm.url}"\nswarm = "false"\ncontainers = "true"\ndebounce = 0.05\n'
        f'[entrypoints.websecure]\naddress = "tcp:{ports["https"]}:interface=127.0.0.1"\ntls = true\n'
        f'[entrypoints.raw]\naddress = "tcp:{ports["raw"]}:interface=127.0.0.1"\nprotocol = "tcp"\n'
        f'[entrypoints.few]\naddress = "tcp:{ports["few"]}:interface=127.0.0.1"\nprotocol = "tcp"\n'
        f'[entrypoints.game]\naddress = "udp:{ports["udp"]}:interface=127.0.0.1"\n'
        f'[admin]\naddress = "tcp:{ports["admin"]}:interface=127.0.0.1"\n'
        '[dns]\nenabled = false\n'
        f'[tls]\ninternal_ca = true\nstate_dir = "{state}"\n'
    )
    with twistd_edge(config, tmp_path):
        admin = f"http://127.0.0.1:{ports['admin']}"
        wait_for(lambda: len(_api(admin, "tcp")["routers"]) == 5, 60, "edge's TCP routers")
        yield {"ports": ports, "admin": admin, "edge_ca": str(state / "ca" / "edge-ca.crt")}
    for container in containers:
        container.remove(force=True)


def _api(admin: str, section: str):
    with urllib.request.urlopen(f"{admin}/api/{section}", timeout=5) as response:
        return json.loads(response.read())


def test_passthrough_by_sni_reaches_the_backend_tls_unterminated(edge, backends):
    answer, name = tls_exchange(edge["ports"]["https"], "pass.test", backends["ca"], b"hello")
    # The certificate verified is the backend's own (its CA is not edge's): edge passed TLS through.
    assert (answer, name) == (b"tls-backend:hello", "pass.test")
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_exchange(edge["ports"]["https"], "pass.test", edge["edge_ca"], b"x")


def test_tls_terminated_by_edge_to_a_plain_backend(edge, backends):
    answer, name = tls_exchange(edge["ports"]["https"], "term.test", edge["edge_ca"], b"plain please")
    assert answer == b"echo:plain please"
    assert name == "term.test"
    assert backends["echo"].received[-1] == b"plain please"  # the backend saw plaintext


def test_https_router_on_the_same_port_still_answers(edge):
    request = b"GET / HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n"
    answer, name = tls_exchange(edge["ports"]["https"], "web.test", edge["edge_ca"], request)
    # No TCP router matches web.test: the HTTP side terminated TLS (edge's certificate) and routed it.
    assert name == "web.test"
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


def test_https_router_on_the_same_port_speaks_http2_through_the_peek(edge):
    port = edge["ports"]["https"]
    result = subprocess.run(
        ["curl", "-s", "--http2", "--cacert", edge["edge_ca"], "--resolve", f"web.test:{port}:127.0.0.1",
         "-o", "/dev/null", "-w", "%{http_version} %{http_code}", f"https://web.test:{port}/"],
        capture_output=True, text=True, timeout=20,
    )
    assert result.stdout == "2 200", (result.stdout, result.stderr)


def test_allow_list_refuses_a_client_outside_it(edge, backends):
    before = len(backends["tls"].received)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        tls_exchange(edge["ports"]["https"], "closed.test", backends["ca"], b"let me in")
    assert len(backends["tls"].received) == before


def test_plain_tcp_entry_point_sends_every_connection_with_a_proxy_header(edge, backends):
    with socket.create_connection(("127.0.0.1", edge["ports"]["raw"]), timeout=5) as sock:
        sock.sendall(b"ping")
        answer = b""
        while not answer.endswith(b"ping"):  # the header and the data may come as one chunk or two
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
    got = bytes(backends["proxied"].received[-1])
    signature = b"\r\n\r\n\x00\r\nQUIT\n"
    assert got[:12] == signature
    assert got[12:14] == b"\x21\x11"  # v2 PROXY command, TCP over IPv4
    assert int.from_bytes(got[14:16], "big") == 12
    assert socket.inet_ntoa(got[16:20]) == socket.inet_ntoa(got[20:24]) == "127.0.0.1"
    assert int.from_bytes(got[26:28], "big") == edge["ports"]["raw"]  # destination: edge's entry point
    assert got[28:] == b"ping"


def test_in_flight_connections_per_client_ip_are_capped(edge):
    port = edge["ports"]["few"]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as first:
        first.sendall(b"one")
        assert first.recv(100) == b"echo:one"
        # The second connection while the first is open: closed by edge before any backend.
        assert exchange(port, b"two") == b""
    wait_for(lambda: exchange(port, b"three") == b"echo:three", 10, "the slot freed")


def test_udp_route_echoes_per_client(edge, backends):
    answers = []
    for i in range(2):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            client.sendto(f"hello {i}".encode(), ("127.0.0.1", edge["ports"]["udp"]))
            answers.append(client.recvfrom(65536)[0])
    assert answers == [b"udp:hello 0", b"udp:hello 1"]
    assert len(set(backends["udp"].peers[-2:])) == 2  # one backend session per client address


def test_api_and_metrics_show_tcp_and_udp(edge):
    tcp = _api(edge["admin"], "tcp")
    assert {r["name"] for r in tcp["routers"]} >= {"pass@docker", "term@docker", "raw@docker", "closed@docker"}
    udp = _api(edge["admin"], "udp")
    assert [r["name"] for r in udp["routers"]] == ["game@docker"]
    exchange(edge["ports"]["raw"], b"count me")
    with urllib.request.urlopen(f"{edge['admin']}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert 'edge_tcp_connections_total{entrypoint="raw",router="raw@docker"}' in text
