"""
Discovery, DNS and HTTP on a real multi-node swarm (3 managers + 1 worker,
tests/testbed/cluster.sh), edge as a host process inside one manager's
network namespace with published-port (host-mode) addressing.

Each test asserts outcomes (which targets and addresses edge serves before,
during and after the event); how long things took is measured and printed as
``FIGURE`` lines (and kept in /tmp/<prefix>/figures.jsonl) for
docs/operations.md, never asserted.

Run with ``make test-cluster`` (starts the cluster, runs these, stops it).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

import pytest

from tests.clusterkit import MANAGERS, Cluster, Sampler, record_figure
from tests.swarmkit import DiscoveryWatch, find_service, wait_for
from tests.processes import terminate

pytestmark = [pytest.mark.swarm, pytest.mark.cluster]

TWISTD = str(Path(sys.executable).parent / "twistd")
ZONE = "swarm.test"
DNS_PORT = 5353
HTTP_PORT = 18080

CONFIG = """
[docker]
url = "{docker}"
debounce = 0.1
timeout = 5.0
[entrypoints.http]
address = "tcp:{http}:interface=127.0.0.1"
[entrypoints.https]
address = "tcp:18443:interface=127.0.0.1"
tls = true
[admin]
address = ""
[dns]
port = {dns}
zone = "{zone}"
upstream = ["127.0.0.1:9"]
"""


@pytest.fixture(scope="module")
def cluster():
    import os

    # Opt-in only: these tests stop and start the cluster's engines, so a plain
    # `pytest` (or another engineer's full run) must never touch a cluster
    # that happens to be up.
    if not os.environ.get("EDGE_CLUSTER_REQUIRED"):
        pytest.skip("cluster tests run with EDGE_CLUSTER_REQUIRED=1 (make test-cluster)")
    kit = Cluster()
    if not kit.up():
        pytest.fail("test cluster not up: run tests/testbed/cluster.sh up (make test-cluster)")
    kit.wait_healthy("m1" if kit.leader() is None else kit.leader())
    yield kit
    kit.cleanup()


def home_and_others(cluster: Cluster) -> tuple[str, str, str]:
    """(edge's manager: not the leader, the leader, the third manager)."""
    leader = cluster.leader()
    assert leader is not None
    followers = [m for m in MANAGERS if m != leader]
    return followers[0], leader, followers[1]


class Edge:
    """``twistd -n edge`` inside node ``home``'s namespace, on that engine's socket."""

    def __init__(self, cluster: Cluster, home: str, workdir: Path):
        self.cluster, self.home = cluster, home
        config = workdir / "edge.toml"
        config.write_text(CONFIG.format(docker=cluster.sock(home), http=HTTP_PORT, dns=DNS_PORT, zone=ZONE))
        self.log = workdir / "edge.log"
        self.proc = subprocess.Popen(
            cluster.in_ns(home, TWISTD, "-n", "--pidfile=", "edge", "--config", str(config)),
            cwd=workdir,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        wait_for(lambda: self.proc.poll() is not None or self.a(f"managers.{ZONE}"), 60, "edge's DNS")
        assert self.proc.poll() is None, self.log.read_text()[-3000:]

    def a(self, name: str) -> list[str]:
        out = subprocess.run(
            self.cluster.in_ns(self.home, "dig", "@127.0.0.1", "-p", str(DNS_PORT), name, "A",
                               "+short", "+time=1", "+tries=1"),
            capture_output=True, text=True, timeout=10,
        ).stdout.split()
        return sorted(a for a in out if a[0].isdigit())

    def sampler(self, workdir: Path, names: list[str], hosts: list[str] = (), rate: float = 10.0) -> Sampler:
        args = ["--dns", f"127.0.0.1:{DNS_PORT}", "--rate", str(rate), "--duration", "240"]
        for name in names:
            args += ["--name", name]
        if hosts:
            args += ["--http", f"127.0.0.1:{HTTP_PORT}"]
            for host in hosts:
                args += ["--host", host]
        return Sampler(self.cluster, self.home, *args, log=workdir / f"sample-{uuid.uuid4().hex[:6]}.jsonl")

    def stop(self) -> None:
        terminate(self.proc)


@pytest.fixture
def unique():
    return uuid.uuid4().hex[:6]


def _wall(watch: DiscoveryWatch, index: int) -> float:
    return time.time() - (time.monotonic() - watch.received_at[index])


def _stamp(task: dict) -> float:
    """A task's Status.Timestamp (when it reached its state) as epoch seconds."""
    text = task["Status"]["Timestamp"]
    head, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(head + "+00:00").timestamp() + float("0." + (frac or "0")[:6])


def _first_doc(watch: DiscoveryWatch, after: int, predicate) -> int:
    for i in range(after, len(watch.docs)):
        doc = watch.docs[i]
        if doc["kind"] == "snapshot" and predicate(doc["snapshot"]):
            return i
    raise AssertionError("no such snapshot")


def _targets(snapshot: dict, service: str) -> dict[str, tuple[str, int]]:
    found = find_service(snapshot, service)
    return {} if found is None else {t["id"]: (t["host"], t["port"]) for t in found["targets"]}


def _host_port(task: dict) -> int:
    return next(p["PublishedPort"] for p in task["Status"]["PortStatus"]["Ports"] if p["TargetPort"] == 80)


def test_worker_task_killed_leaves_and_its_replacement_is_routed(cluster, unique, tmp_path):
    home, _leader, _third = home_and_others(cluster)
    name = f"kill-{unique}"
    cluster.create_web(home, name, (home, "w1"), {"traefik.frontend.rule": f"Host:{name}.test", "traefik.port": "80"})
    tasks = wait_for(lambda: (lambda r: r if set(r) == {home, "w1"} else None)(cluster.running(home, name)),
                     90, "tasks on home and w1")
    watch = DiscoveryWatch(cluster.sock(home), str(tmp_path), config="[docker]\ndebounce = 0.1\n")
    try:
        expected = {t["ID"]: (cluster.addr(n), _host_port(t)) for n, t in tasks.items()}
        watch.wait_snapshot(lambda s: _targets(s, f"{name}@docker") == expected, 30, "both targets")
        old = tasks["w1"]
        before = len(watch.docs)
        cluster.client("w1").kill(cluster.task_container("w1", old["ID"]))
        killed = time.time()
        replacement = wait_for(
            lambda: (lambda r: r.get("w1") if r.get("w1", {}).get("ID", old["ID"]) != old["ID"] else None)(
                cluster.running(home, name)),
            60, "the replacement task running",
        )
        new_target = (cluster.addr("w1"), _host_port(replacement))
        snap = watch.wait_snapshot(lambda s: replacement["ID"] in _targets(s, f"{name}@docker"), 30, "replacement routed")
        # Outcome: the dead task is gone, the replacement is routed at its own port, home's task untouched.
        assert _targets(snap, f"{name}@docker") == {tasks[home]["ID"]: expected[tasks[home]["ID"]],
                                                    replacement["ID"]: new_target}
        gone = _first_doc(watch, before, lambda s: old["ID"] not in _targets(s, f"{name}@docker"))
        routed = _first_doc(watch, before, lambda s: replacement["ID"] in _targets(s, f"{name}@docker"))
        assert gone <= routed  # the dead target left before (or with) the replacement's arrival
        failed = next(t for t in cluster.client(home).tasks(filters={"service": name}) if t["ID"] == old["ID"])
        assert failed["Status"]["State"] in ("failed", "shutdown", "complete", "rejected")
        record_figure("task killed -> gone from snapshot", round(_wall(watch, gone) - killed, 2))
        record_figure("task failed (Status.Timestamp) -> gone", round(_wall(watch, gone) - _stamp(failed), 2))
        record_figure("replacement running (Status.Timestamp) -> routed",
                      round(_wall(watch, routed) - _stamp(replacement), 2))
        record_figure("task killed -> replacement routed", round(_wall(watch, routed) - killed, 2))
    finally:
        watch.stop()


class FirstSeen:
    """When ``predicate`` first held, polled every 50 ms by a thread (bounded to 120 s)."""

    def __init__(self, predicate):
        self.at: float | None = None
        self._thread = threading.Thread(target=self._run, args=(predicate,), daemon=True)
        self._thread.start()

    def _run(self, predicate) -> None:
        end = time.monotonic() + 120
        while self.at is None and time.monotonic() < end:
            try:
                if predicate():
                    self.at = time.time()
                    return
            except Exception:
                pass
            time.sleep(0.05)

    def wait(self, timeout: float, what: str) -> float:
        self._thread.join(timeout)
        assert self.at is not None, f"never saw {what}"
        return self.at


def _dns_empty(samples: list[dict]) -> list[dict]:
    return [s for s in samples if s["kind"] == "dns" and (s.get("error") or not s.get("a"))]


def _first_time(samples: list[dict], predicate, after: float) -> float | None:
    ok = [s["t"] for s in samples if s["kind"] == "dns" and s["t"] >= after and predicate(s)]
    return min(ok) if ok else None


def test_stopped_manager_leaves_dns_quickly_and_returns(cluster, unique, tmp_path):
    home, _leader, victim = home_and_others(cluster)
    name = f"mgr-{unique}"
    routed = f"{name}.test"
    cluster.create_web(home, name, (home, "w1"), {"traefik.frontend.rule": f"Host:{routed}", "traefik.port": "80"})
    edge = Edge(cluster, home, tmp_path)
    try:
        everyone = sorted(cluster.addr(m) for m in MANAGERS)
        wait_for(lambda: edge.a(routed) == everyone, 60, f"{routed} to answer every manager")
        assert edge.a(f"managers.{ZONE}") == everyone
        sampler = edge.sampler(tmp_path, [routed, f"managers.{ZONE}"], rate=20)
        time.sleep(1.0)
        seen = FirstSeen(lambda: cluster.nodes(home)[victim]["ManagerStatus"]["Reachability"] == "unreachable")
        down = FirstSeen(lambda: cluster.nodes(home)[victim]["Status"]["State"] == "down")
        stopped_at = time.time()
        cluster.stop(victim)
        exited = time.time()
        unreachable = seen.wait(60, f"{victim} unreachable")
        left = [m for m in everyone if m != cluster.addr(victim)]
        wait_for(lambda: edge.a(routed) == left and edge.a(f"managers.{ZONE}") == left, 30, f"{victim} to leave DNS")
        # Swarm calls the node down only 10-14 s later: edge must not have waited for that.
        down_at = down.wait(60, f"{victim} down")
        cluster.start(victim)
        wait_for(lambda: edge.a(routed) == everyone and edge.a(f"managers.{ZONE}") == everyone, 120,
                 f"{victim} back in DNS")
        samples = sampler.stop()
        assert samples and not _dns_empty(samples), _dns_empty(samples)[:5]
        gone = _first_time(samples, lambda s: cluster.addr(victim) not in s["a"], stopped_at)
        assert gone is not None
        assert gone < down_at, "the stopped manager stayed in DNS until swarm marked it down"
        record_figure("manager stopped -> node down", round(down_at - stopped_at, 2))
        record_figure("manager stopped -> gone from DNS", round(gone - stopped_at, 2))
        record_figure("manager's dockerd SIGTERM -> exited", round(exited - stopped_at, 2))
        record_figure("manager stopped -> Reachability unreachable (50 ms poll)", round(unreachable - stopped_at, 2))
        record_figure("manager unreachable -> gone from DNS", round(gone - unreachable, 2))
        record_figure("DNS samples during manager stop/start", len(samples), "answers")
    finally:
        edge.stop()
        cluster.wait_healthy(home)


def test_drained_manager_leaves_dns_and_returns_when_active(cluster, unique, tmp_path):
    home, _leader, victim = home_and_others(cluster)
    name = f"drn-{unique}"
    cluster.create_web(home, name, (home, "w1"), {"traefik.frontend.rule": f"Host:{name}.test", "traefik.port": "80"})
    edge = Edge(cluster, home, tmp_path)

    def availability(value: str) -> None:
        client = cluster.client(home, 30)
        raw = client.inspect_node(cluster.hostname(victim))
        spec = dict(raw["Spec"], Availability=value)
        client.update_node(raw["ID"], raw["Version"]["Index"], spec)

    try:
        everyone = sorted(cluster.addr(m) for m in MANAGERS)
        left = [a for a in everyone if a != cluster.addr(victim)]
        wait_for(lambda: edge.a(f"{name}.test") == everyone, 60, "every manager answering")
        availability("drain")
        wait_for(lambda: edge.a(f"{name}.test") == left and edge.a(f"managers.{ZONE}") == left, 30, "drained manager gone")
        availability("active")
        wait_for(lambda: edge.a(f"{name}.test") == everyone and edge.a(f"managers.{ZONE}") == everyone, 30,
                 "manager back when active")
    finally:
        try:
            availability("active")
        except Exception:
            pass
        edge.stop()


def test_leader_stopped_dns_never_empty_and_host_mode_routes_keep_answering(cluster, unique, tmp_path):
    home, leader, third = home_and_others(cluster)
    fixed, rand = f"fix-{unique}", f"rnd-{unique}"
    labels = lambda n: {"traefik.frontend.rule": f"Host:{n}.test", "traefik.port": "80"}  # noqa: E731
    cluster.create_web(home, fixed, (home, "w1"), labels(fixed), published=8000)
    cluster.create_web(home, rand, (home, "w1"), labels(rand))
    containers = {}
    for service in (fixed, rand):
        running = wait_for(lambda: (lambda r: r if set(r) == {home, "w1"} else None)(cluster.running(home, service)),
                           90, f"{service} tasks")
        # Each task's page is its hostname: the container's short ID.
        containers[f"{service}.test"] = {t["Status"]["ContainerStatus"]["ContainerID"][:12] for t in running.values()}
    edge = Edge(cluster, home, tmp_path)
    watch = DiscoveryWatch(cluster.sock(home), str(tmp_path), config="[docker]\ndebounce = 0.1\ntimeout = 5.0\n")
    samplers = []
    try:
        everyone = sorted(cluster.addr(m) for m in MANAGERS)
        for service in (fixed, rand):
            wait_for(lambda: edge.a(f"{service}.test") == everyone, 60, f"{service}.test answers")
            watch.wait_snapshot(lambda s: len(_targets(s, f"{service}@docker")) == 2, 30, f"{service} targets")
        hosts = [f"{fixed}.test", f"{rand}.test"]
        samplers = [edge.sampler(tmp_path, [hosts[0], f"managers.{ZONE}"], [hosts[0]], rate=10),
                    edge.sampler(tmp_path, [hosts[1]], [hosts[1]], rate=10)]
        time.sleep(2.0)
        stopped_at = time.time()
        cluster.stop(leader)
        new_leader = wait_for(lambda: (lambda l: l if l not in (None, leader) else None)(cluster.leader(home)),
                              90, "a new leader", 0.2)
        elected = time.time()
        # The election's aftermath: nodes read unknown, then ready again; tasks lose PortStatus.
        wait_for(lambda: all(n["Status"]["State"] != "unknown" for m, n in cluster.nodes(home).items() if m != leader),
                 90, "nodes other than the old leader to leave `unknown`", 0.5)
        settled = time.time()
        no_ports = [t["ID"] for s in (fixed, rand) for t in cluster.running(home, s).values()
                    if not (t["Status"].get("PortStatus") or {}).get("Ports")]
        time.sleep(8.0)
        results = [s.stop() for s in samplers]
        samplers = []
        samples = results[0] + results[1]
        dns = [s for s in samples if s["kind"] == "dns"]
        http = [s for s in samples if s["kind"] == "http"]
        during = [s for s in dns if s["t"] >= stopped_at]
        empties = _dns_empty(during)
        record_figure("leader stopped -> new leader", round(elected - stopped_at, 2))
        record_figure("leader stopped -> nodes definite again", round(settled - stopped_at, 2))
        record_figure("tasks without PortStatus after the election", len(no_ports), "tasks")
        record_figure("DNS answers sampled during the election", len(during), "answers")
        record_figure("empty DNS answers during the election", len(empties), "answers")
        failed = [s for s in http if s["t"] >= stopped_at and s.get("status") != 200]
        record_figure("failed HTTP requests during the election", f"{len(failed)} of "
                      f"{len([s for s in http if s['t'] >= stopped_at])}", "requests")
        # Never empty, never an error: the answer set rides out `unknown` nodes and hung APIs.
        assert during and not empties, empties[:5]
        # The old leader leaves the answers, the others stay.
        last = [s for s in dns if s["t"] >= settled]
        assert last and all(cluster.addr(leader) not in s["a"] for s in last[-5:])
        assert all(set(s["a"]) == {cluster.addr(home), cluster.addr(third)} for s in last[-5:])
        # Host-mode routes keep answering through and after the election, on both tasks.
        after = [s for s in http if s["t"] >= settled]
        assert after and all(s.get("status") == 200 for s in after), [s for s in after if s.get("status") != 200][:5]
        for host in hosts:
            bodies = {s["body"] for s in after if s.get("status") == 200 and s["host"] == host}
            assert bodies == containers[host], (host, bodies, containers[host])
        snap = watch.latest_snapshot()
        for service in (fixed, rand):
            assert len(_targets(snap, f"{service}@docker")) == 2, _targets(snap, f"{service}@docker")
        assert not [p for p in snap["problems"] if "not routed" in p["message"]], snap["problems"]
        print(f"new leader {new_leader}; tasks without PortStatus: {no_ports}")
    finally:
        for s in samplers:
            s.stop()
        watch.stop()
        edge.stop()
        cluster.start(leader)  # a no-op when its engine answers
        cluster.wait_healthy(home)


# -- task IPs: edge in a container on the overlay -------------------------------

CONTAINER_CONFIG = """
[docker]
debounce = 0.1
timeout = 5.0
[entrypoints.http]
address = "tcp:8080"
[entrypoints.https]
address = "tcp:8443"
tls = true
[admin]
address = ""
[dns]
port = 5353
interfaces = ["0.0.0.0"]
zone = "{zone}"
upstream = ["127.0.0.1:9"]
"""


@pytest.fixture(scope="module")
def edge_image(cluster):
    """edge's image on every manager: EDGE_CLUSTER_IMAGE, built by `cluster.sh image`."""
    import os

    tag = os.environ.get("EDGE_CLUSTER_IMAGE", "edge-test/edge:cluster")
    for manager in MANAGERS:
        try:
            cluster.client(manager).inspect_image(tag)
        except Exception:
            if os.environ.get("EDGE_CLUSTER_REQUIRED"):
                pytest.fail(f"{tag} not on {manager}: tests/testbed/cluster.sh image")
            pytest.skip(f"{tag} not on {manager} (tests/testbed/cluster.sh image)")
    return tag


class EdgeContainer:
    """edge in a plain container on ``home``, attached to the overlay, its ports on home's loopback."""

    def __init__(self, cluster: Cluster, home: str, image: str, workdir: Path, name: str):
        self.cluster, self.home = cluster, home
        config = workdir / "edge.toml"
        config.write_text(CONTAINER_CONFIG.format(zone=ZONE))
        client = cluster.client(home, 30)
        host_config = client.create_host_config(
            binds={cluster.sock(home)[len("unix://"):]: {"bind": "/var/run/docker.sock", "mode": "ro"},
                   str(config): {"bind": "/etc/edge/edge.toml", "mode": "ro"}},
            port_bindings={"5353/udp": ("127.0.0.1", DNS_PORT), "8080/tcp": ("127.0.0.1", HTTP_PORT)},
            network_mode="frontend",
        )
        self.id = client.create_container(
            image, command=["--config", "/etc/edge/edge.toml"], name=name, host_config=host_config,
            ports=[(5353, "udp"), 8080],
        )["Id"]
        client.start(self.id)
        wait_for(lambda: Edge.a(self, f"managers.{ZONE}"), 60, "edge's DNS in its container")

    a = Edge.a
    sampler = Edge.sampler

    def logs(self) -> str:
        return self.cluster.client(self.home).logs(self.id, tail=40).decode("utf-8", "replace")

    def stop(self) -> None:
        try:
            self.cluster.client(self.home, 30).remove_container(self.id, force=True)
        except Exception:
            pass


def test_task_ips_edge_in_a_container_through_kill_and_leader_loss(cluster, edge_image, unique, tmp_path):
    home, leader, third = home_and_others(cluster)
    name = f"tip-{unique}"
    host = f"{name}.test"
    # No published port: edge, on the overlay, reaches the tasks by their IPs.
    cluster.create_web(home, name, (home, "w1"), {"traefik.frontend.rule": f"Host:{host}", "traefik.port": "80"},
                       published=-1)
    tasks = wait_for(lambda: (lambda r: r if set(r) == {home, "w1"} else None)(cluster.running(home, name)),
                     90, "tasks on home and w1")
    edge = EdgeContainer(cluster, home, edge_image, tmp_path, f"edge-{unique}")
    sampler = None
    try:
        short = {n: t["Status"]["ContainerStatus"]["ContainerID"][:12] for n, t in tasks.items()}

        def bodies(count=6):
            out = set()
            for _ in range(count):
                r = subprocess.run(cluster.in_ns(home, "curl", "-s", "-m", "3", "-H", f"Host: {host}",
                                                 f"http://127.0.0.1:{HTTP_PORT}/"),
                                   capture_output=True, text=True, timeout=10)
                out.add(r.stdout.strip())
            return out

        wait_for(lambda: bodies() == set(short.values()), 60, "both tasks answering through edge")
        sampler = edge.sampler(tmp_path, [host, f"managers.{ZONE}"], [host], rate=10)
        # 1. The worker's task is killed: its replacement answers.
        killed = time.time()
        cluster.client("w1").kill(cluster.task_container("w1", tasks["w1"]["ID"]))
        replacement = wait_for(
            lambda: (lambda r: r.get("w1") if r.get("w1", {}).get("ID", tasks["w1"]["ID"]) != tasks["w1"]["ID"]
                     else None)(cluster.running(home, name)), 60, "the replacement task running")
        new_short = replacement["Status"]["ContainerStatus"]["ContainerID"][:12]
        wait_for(lambda: new_short in bodies(), 30, "the replacement answering through edge")
        # 2. The leader's engine stops.
        stopped_at = time.time()
        cluster.stop(leader)
        wait_for(lambda: (lambda l: l if l not in (None, leader) else None)(cluster.leader(home)), 90, "a new leader", 0.2)
        wait_for(lambda: all(n["Status"]["State"] != "unknown" for m, n in cluster.nodes(home).items() if m != leader),
                 90, "nodes to leave `unknown`", 0.5)
        settled = time.time()
        time.sleep(5.0)
        samples = sampler.stop()
        sampler = None
        http = [s for s in samples if s["kind"] == "http"]
        dns = [s for s in samples if s["kind"] == "dns"]
        first_new = min(s["t"] for s in http if s.get("body") == new_short)
        record_figure("task IPs: task killed -> replacement answering through edge", round(first_new - killed, 2))
        record_figure("task IPs: replacement running (Status.Timestamp) -> answering",
                      round(first_new - _stamp(replacement), 2))
        record_figure("task IPs: failed HTTP requests, kill until the replacement answers",
                      f"{len([s for s in http if killed <= s['t'] < first_new and s.get('status') != 200])} of "
                      f"{len([s for s in http if killed <= s['t'] < first_new])}", "requests")
        during = [s for s in dns if s["t"] >= stopped_at]
        record_figure("task IPs: empty DNS answers during the election", len(_dns_empty(during)), "answers")
        record_figure("task IPs: failed HTTP requests during the election",
                      f"{len([s for s in http if s['t'] >= stopped_at and s.get('status') != 200])} of "
                      f"{len([s for s in http if s['t'] >= stopped_at])}", "requests")
        assert during and not _dns_empty(during), _dns_empty(during)[:5]
        after = [s for s in http if s["t"] >= settled]
        assert after and all(s.get("status") == 200 for s in after), [s for s in after if s.get("status") != 200][:5]
        assert {s["body"] for s in after} == {short[home], new_short}
        assert all(set(s["a"]) == {cluster.addr(home), cluster.addr(third)} for s in dns[-4:]), dns[-4:]
    except Exception:
        print(edge.logs())
        raise
    finally:
        if sampler is not None:
            sampler.stop()
        edge.stop()
        cluster.start(leader)  # a no-op when its engine answers
        cluster.wait_healthy(home)
