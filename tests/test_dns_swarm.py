"""
The issue's "done when", on the real test swarm: ``twistd -n edge`` runs
discovery and DNS against the test dockerd; ``dig`` asks it.

Run inside the test namespace (``make test`` does):
``DOCKER_HOST=unix:///tmp/edge-test/docker.sock ip netns exec edge-test
.venv/bin/python -m pytest tests/test_dns_swarm.py``
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.swarmkit import wait_for
from tests.test_dns_server import Dnsmasq, dig, free_port

pytestmark = pytest.mark.swarm

TWISTD = str(Path(sys.executable).parent / "twistd")

CONFIG = """
[docker]
url = "{docker}"
debounce = 0.1
[entrypoints.http]
address = "tcp:{http}:interface=127.0.0.1"
[entrypoints.https]
address = "tcp:{https}:interface=127.0.0.1"
tls = true
[admin]
address = "tcp:{admin}:interface=127.0.0.1"
[dns]
port = {dns}
zone = "swarm.test"
upstream = ["127.0.0.1:{upstream}"]
records = [{{ name = "jenkins-alias.athome.ga", type = "CNAME", value = "managers.swarm.test" }}]
"""


@pytest.fixture
def upstream(tmp_path):
    server = Dnsmasq(tmp_path, "--host-record=fwd.up.test,10.9.9.9", "--address=/athome.ga/")
    yield server
    server.stop()


@pytest.fixture
def edge(swarm, tmp_path, upstream):
    ports = {k: free_port() for k in ("http", "https", "admin", "dns")}
    config = tmp_path / "edge.toml"
    config.write_text(CONFIG.format(docker=swarm.url, upstream=upstream.port, **ports))
    log = tmp_path / "edge.log"
    process = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "edge", "--config", str(config)],
        cwd=tmp_path,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    process.port = ports["dns"]
    process.log = log
    wait_for(
        lambda: process.poll() is not None or short(process, "managers.swarm.test"),
        60,
        "edge's DNS to answer managers.swarm.test",
    )
    assert process.poll() is None, log.read_text()[-3000:]
    yield process
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def short(process, name: str, *extra: str) -> list[str]:
    return dig("@127.0.0.1", "-p", str(process.port), name, "+short", "+time=2", "+tries=1", *extra).split()


def status(process, name: str) -> str:
    out = dig("@127.0.0.1", "-p", str(process.port), name, "+time=2", "+tries=1")
    return out.split("status: ", 1)[1].split(",", 1)[0]


def test_done_when(swarm, unique, edge, upstream):
    manager = "127.0.0.1"  # the test swarm's only node advertises loopback
    assert short(edge, "managers.swarm.test") == [manager]
    assert short(edge, "jenkins-alias.athome.ga") == ["managers.swarm.test.", manager]

    host = f"jenkins-{unique}.athome.ga"
    service = f"dns-{unique}"
    swarm.create_web_service(
        service,
        labels={"traefik.frontend.rule": f"Host:{host}", "traefik.port": "80"},
    )
    wait_for(lambda: short(edge, host) == [manager], 90, f"{host} to answer {manager}")
    answer = dig("@127.0.0.1", "-p", str(edge.port), host, "+noall", "+answer", "+comments")
    assert "status: NOERROR" in answer and " aa" in answer
    # The service's own name in the zone: the node running its host-mode task.
    wait_for(lambda: short(edge, f"{service}.swarm.test") == [manager], 30, f"{service}.swarm.test")

    swarm.remove_service(service)
    removed = time.monotonic()
    wait_for(lambda: status(edge, f"{service}.swarm.test") == "NXDOMAIN", 10, "the zone name to go")
    wait_for(lambda: status(edge, host) == "NXDOMAIN", 10, f"{host} to go NXDOMAIN")
    print(f"removed service's names went NXDOMAIN after {time.monotonic() - removed:.2f}s")

    # Forwarding: the upstream answers once, the second lookup is edge's cache.
    assert short(edge, "fwd.up.test") == ["10.9.9.9"]
    assert short(edge, "fwd.up.test") == ["10.9.9.9"]
    assert upstream.queries("fwd.up.test", "A") == 1
