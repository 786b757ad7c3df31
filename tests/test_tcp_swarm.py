"""
TCP passthrough by SNI and a UDP route to swarm services on the real test
swarm, through a real ``twistd edge`` discovering them by their labels.

The backends are Python programs in swarm tasks (the test busybox image
with the node's own ``/usr`` mounted read-only, so no image needs building):
a TLS server with a certificate from a CA only the test knows, and a UDP
echo.  Edge reaches them on their host-mode published ports (the test
swarm has no routing mesh).  Run inside the test namespace.
"""

from __future__ import annotations

import socket
import ssl

import pytest
from docker.types import EndpointSpec, Mount

from tests.ports import free_port
from tests.swarmkit import IMAGE, NETWORK, twistd_edge, wait_for
from tests.test_tcp_harness import make_tls_files, tls_exchange

pytestmark = pytest.mark.swarm

# The node's Python and OpenSSL, read-only, in the busybox image (Debian's merged /usr).
HOST_PYTHON = [Mount(target, source, type="bind", read_only=True)
               for target, source in (("/usr", "/usr"), ("/lib", "/usr/lib"), ("/lib64", "/usr/lib64"))]

TLS_SERVER = """
import os, socket, ssl
open('/c.pem', 'w').write(os.environ['CERT']); open('/k.pem', 'w').write(os.environ['KEY'])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain('/c.pem', '/k.pem')
srv = socket.create_server(('', 8443))
for _ in range(1000):
    conn, _ = srv.accept()
    conn.settimeout(10)
    try:
        with ctx.wrap_socket(conn, server_side=True) as tls:
            tls.sendall(b'swarm-tls:' + socket.gethostname().encode() + b':' + tls.recv(1024))
    except (OSError, ssl.SSLError):
        pass
"""

UDP_ECHO = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('', 5000))
for _ in range(10000):
    data, peer = s.recvfrom(65536)
    s.sendto(b'swarm-udp:' + data, peer)
"""


def _service(swarm, name, script, port, protocol, labels, env=None):
    service = swarm.client.services.create(
        IMAGE, command=["/usr/bin/python3", "-c", script], name=name, labels=labels, env=env or [],
        networks=[NETWORK], mounts=HOST_PYTHON,
        endpoint_spec=EndpointSpec(ports=[{"Protocol": protocol, "TargetPort": port, "PublishMode": "host"}]),
    )
    swarm._services.append(service.id)
    return service


def test_passthrough_by_sni_and_a_udp_route_to_swarm_services(swarm, tmp_path, unique):
    ca, cert, key = make_tls_files(str(tmp_path), "db.swarm.test")
    https, udp = free_port(), free_port()
    _service(swarm, f"tls-{unique}", TLS_SERVER, 8443, "tcp", {
        "traefik.tcp.routers.db.rule": "HostSNI(`db.swarm.test`)",
        "traefik.tcp.routers.db.tls.passthrough": "true",
        "traefik.tcp.services.db.loadbalancer.server.port": "8443",
    }, env=[f"CERT={open(cert).read()}", f"KEY={open(key).read()}"])
    _service(swarm, f"udp-{unique}", UDP_ECHO, 5000, "udp", {
        "traefik.udp.routers.echo.entrypoints": "udp",
        "traefik.udp.services.echo.loadbalancer.server.port": "5000",
    })
    swarm.wait_running(f"tls-{unique}", 1, timeout=90)
    swarm.wait_running(f"udp-{unique}", 1, timeout=90)
    config = (
        f'[entrypoints.websecure]\naddress = "tcp:{https}:interface=127.0.0.1"\ntls = true\n'
        f'[entrypoints.udp]\naddress = "udp:{udp}:interface=127.0.0.1"\n'
        '[dns]\nenabled = false\n[admin]\naddress = ""\n'
        f'[tls]\ninternal_ca = true\nstate_dir = "{tmp_path / "state"}"\n'
        f'[docker]\nurl = "{swarm.url}"\nbackend_addressing = "published"\ndebounce = 0.05\n'
    )

    def tls_answer():
        try:
            return tls_exchange(https, "db.swarm.test", ca, b"hello", timeout=3)
        except (OSError, ssl.SSLError):
            return None

    def udp_answer():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(1)
            client.sendto(b"ping", ("127.0.0.1", udp))
            try:
                return client.recvfrom(65536)[0]
            except OSError:
                return None

    with twistd_edge(config, tmp_path):
        answer, name = wait_for(tls_answer, 60, "the swarm TLS backend through edge")
        # The client verified the task's own certificate (a CA edge never saw): TLS went through untouched.
        assert name == "db.swarm.test"
        assert answer.startswith(b"swarm-tls:") and answer.endswith(b":hello")
        assert wait_for(udp_answer, 60, "the swarm UDP echo through edge") == b"swarm-udp:ping"
