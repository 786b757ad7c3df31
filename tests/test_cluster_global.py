"""
edge as it is deployed: ``config/edge-stack.yml`` (global on the managers,
host-mode ports 80/443/53, each task on its own engine's socket) with edge's
image, on the 3-manager test cluster.  A client on the worker that knows the
three manager addresses (and retries the next one when one fails) keeps
asking for a routed name over DNS and HTTP while edge itself is rolled, a
manager is lost and the leader is lost.

Asserted: every manager answers DNS with all three manager addresses,
proxies to the tasks on every node, and serves HTTPS with certificates from
one shared CA (docs/tls.md's set-up: ``init-ca`` once, two swarm secrets);
after each event the surviving managers serve again.  Measured (FIGURE lines): the retrying client's failed requests.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.clusterkit import MANAGERS, NODES, ROOT, Cluster, Sampler, record_figure
from tests.swarmkit import wait_for
from tests.test_cluster_discovery import cluster, edge_image, home_and_others, unique  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.swarm, pytest.mark.cluster]

OVERRIDE = """
version: "3.8"
services:
  edge:
    image: {image}
    volumes:
      - type: bind
        source: "/run/{prefix}/{{{{.Node.Hostname}}}}/docker.sock"
        target: /var/run/docker.sock
        read_only: true
    healthcheck:
      interval: 2s
      start_period: 20s
    deploy:
      update_config:
        delay: 2s
        monitor: 5s
    secrets:
      - edge-ca.crt
      - edge-ca.key
configs:
  edge-toml-v1:
    file: {toml}
secrets:
  edge-ca.crt:
    file: {ca_dir}/edge-ca.crt
  edge-ca.key:
    file: {ca_dir}/edge-ca.key
"""


def _shared_ca_stack(tmp_path: Path, image: str, prefix: str) -> Path:
    """
    The stack file's set-up with one CA for every manager, as docs/tls.md
    tells a user: ``python -m edge.tls init-ca`` once, both files as swarm
    secrets, ``[tls] ca_certificate``/``ca_key`` pointing at them.
    """
    ca_dir = tmp_path / "ca"
    subprocess.run([sys.executable, "-m", "edge.tls", "init-ca", str(ca_dir)], check=True,
                   capture_output=True, timeout=60, cwd=ROOT)
    toml = (ROOT / "config" / "edge-stack.toml").read_text()
    toml = toml.replace('# ca_certificate = "/run/secrets/edge-ca.crt"', 'ca_certificate = "/run/secrets/edge-ca.crt"')
    toml = toml.replace('# ca_key = "/run/secrets/edge-ca.key"', 'ca_key = "/run/secrets/edge-ca.key"')
    assert 'ca_key = "/run/secrets/edge-ca.key"' in toml.splitlines()
    (tmp_path / "edge-stack.toml").write_text(toml)
    override = tmp_path / "override.yml"
    override.write_text(OVERRIDE.format(image=image, prefix=prefix, toml=tmp_path / "edge-stack.toml",
                                        ca_dir=ca_dir))
    return ca_dir / "edge-ca.crt"


def _https_body(cluster: Cluster, manager: str, host: str, root: Path) -> str:
    """A request over HTTPS through ``manager``, verified against ``root`` alone."""
    r = subprocess.run(cluster.in_ns("w1", "curl", "-sS", "-m", "5", "--cacert", str(root),
                                     "--resolve", f"{host}:443:{cluster.addr(manager)}", f"https://{host}/"),
                       capture_output=True, text=True, timeout=15)
    return r.stdout.strip() if r.returncode == 0 else f"curl {r.returncode}: {r.stderr.strip()}"


def _docker(cluster: Cluster, via: str, *args: str, cwd: Path | None = None) -> str:
    return subprocess.run(
        ["docker", *args], env={"DOCKER_HOST": cluster.sock(via), "PATH": "/usr/local/bin:/usr/bin:/bin"},
        capture_output=True, text=True, timeout=120, check=True, cwd=cwd,
    ).stdout


def _dig(cluster: Cluster, manager: str, name: str) -> list[str]:
    out = subprocess.run(cluster.in_ns("w1", "dig", f"@{cluster.addr(manager)}", name, "A", "+short",
                                       "+time=1", "+tries=1"),
                         capture_output=True, text=True, timeout=10).stdout.split()
    return sorted(a for a in out if a[0].isdigit())


def _bodies(cluster: Cluster, manager: str, host: str, count: int = 12) -> set[str]:
    out = set()
    for _ in range(count):
        r = subprocess.run(cluster.in_ns("w1", "curl", "-s", "-m", "2", "-H", f"Host: {host}",
                                         f"http://{cluster.addr(manager)}/"),
                           capture_output=True, text=True, timeout=10)
        out.add(r.stdout.strip())
    return out


def _serving(cluster: Cluster, managers, host: str, tasks: set[str]) -> bool:
    addresses = sorted(cluster.addr(m) for m in managers)
    return all(_dig(cluster, m, host) == addresses and _bodies(cluster, m, host) == tasks for m in managers)


def _failed(samples, kind, start, end):
    window = [s for s in samples if s["kind"] == kind and start <= s["t"] < end]
    return len([s for s in window if not s["ok"]]), len(window), len([s for s in window if s["tries"] > 1])


def test_edge_global_on_every_manager_survives_its_update_and_manager_losses(cluster, edge_image, unique, tmp_path):
    stack = f"edge{unique}"
    host = f"g{unique}.test"
    home, leader, other = home_and_others(cluster)
    root = _shared_ca_stack(tmp_path, edge_image, cluster.prefix)
    override = tmp_path / "override.yml"
    _docker(cluster, home, "stack", "deploy", "-c", str(ROOT / "config" / "edge-stack.yml"),
            "-c", str(override), stack)
    web = f"gweb-{unique}"
    cluster.create_web(home, web, NODES, {"traefik.frontend.rule": f"Host:{host}", "traefik.port": "80"},
                       published=-1)
    sampler = None
    try:
        tasks = wait_for(lambda: (lambda r: r if set(r) == set(NODES) else None)(cluster.running(home, web)),
                         90, "a web task on every node")
        containers = {t["Status"]["ContainerStatus"]["ContainerID"][:12] for t in tasks.values()}
        # Every manager: DNS answers all three managers; HTTP reaches the tasks on every node.
        wait_for(lambda: _serving(cluster, MANAGERS, host, containers), 120, "edge serving on every manager", 1.0)
        # Every manager serves HTTPS with a leaf it issued itself from the one
        # shared CA: a client that trusts that root alone is served by each.
        for m in MANAGERS:
            assert wait_for(lambda: (lambda b: b if b in containers else None)(_https_body(cluster, m, host, root)),
                            30, f"HTTPS through {m} verified against the shared root", 1.0)

        args = ["--host", host, "--rate", "10", "--duration", "400"]
        for m in MANAGERS:
            args += ["--manager", cluster.addr(m)]
        sampler = Sampler(cluster, "w1", *args, log=tmp_path / "retry.jsonl", mode="sample-retry")
        time.sleep(2.0)
        phases = {}

        # 1. edge's own rolling update (stop-first, one manager at a time).
        start = time.time()
        _docker(cluster, home, "service", "update", "--detach", "--force", f"{stack}_edge")
        wait_for(lambda: (cluster.client(home).inspect_service(f"{stack}_edge").get("UpdateStatus") or {})
                 .get("State") == "completed", 180, "edge's rolling update to complete", 1.0)
        wait_for(lambda: _serving(cluster, MANAGERS, host, containers), 60, "every manager serving after the update")
        phases["rolling update of edge"] = (start, time.time())

        # 2. A non-leader manager is lost (its engine, with its edge, stops).
        start = time.time()
        cluster.stop(other)
        survivors = [m for m in MANAGERS if m != other]
        wait_for(lambda: _serving(cluster, survivors, host, containers - {
            tasks[other]["Status"]["ContainerStatus"]["ContainerID"][:12]}), 60, "the others serving without it")
        phases["loss of a manager"] = (start, time.time())
        cluster.start(other)
        cluster.wait_healthy(home)
        tasks = wait_for(lambda: (lambda r: r if set(r) == set(NODES) else None)(cluster.running(home, web)),
                         90, "a web task on every node again")
        containers = {t["Status"]["ContainerStatus"]["ContainerID"][:12] for t in tasks.values()}
        wait_for(lambda: _serving(cluster, MANAGERS, host, containers), 120, "every manager serving again", 1.0)

        # 3. The leader is lost.
        leader = cluster.leader(home)
        start = time.time()
        cluster.stop(leader)
        survivors = [m for m in MANAGERS if m != leader]
        wait_for(lambda: (lambda l: l not in (None, leader))(cluster.leader(home)), 90, "a new leader", 0.5)
        wait_for(lambda: _serving(cluster, survivors, host, containers - {
            tasks[leader]["Status"]["ContainerStatus"]["ContainerID"][:12]}), 90, "the others serving after the election")
        phases["loss of the leader"] = (start, time.time())
        samples = sampler.stop()
        sampler = None
        for phase, (a, b) in phases.items():
            for kind in ("http", "dns"):
                failed, total, retried = _failed(samples, kind, a, b)
                record_figure(f"edge global, {phase}: {kind} requests failed for a retrying client",
                              f"{failed} of {total} ({retried} needed a retry; {b - a:.0f} s)", "requests")
        # After everything, every request found a manager that answered.
        tail = [s for s in samples if s["t"] >= phases["loss of the leader"][1] - 3]
        assert samples and all(s["ok"] for s in tail[-10:]), tail[-10:]
    finally:
        if sampler is not None:
            sampler.stop()
        for m in MANAGERS:
            cluster.start(m)  # a no-op when its engine answers
        cluster.wait_healthy(home)
        try:
            _docker(cluster, home, "stack", "rm", stack)
        except subprocess.CalledProcessError:
            pass
