"""
Discovery against a real dockerd in swarm mode: ``python -m edge.discovery
--watch`` runs the real provider (thread pool, event stream, back-off) as a
subprocess and the tests read its JSON lines.

Run inside the test namespace:
``DOCKER_HOST=unix:///tmp/edge-test/docker.sock ip netns exec edge-test
.venv/bin/python -m pytest tests/test_discovery_swarm.py``

The restart test starts a second dockerd of its own (own namespace, data
root and socket) so the shared testbed is never stopped.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import uuid

import docker
import pytest

from tests.swarmkit import DiscoveryWatch, Swarm, find_service, wait_for
from tests.swarmkit import update_service as update

pytestmark = pytest.mark.swarm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT = 90.0
SHARED_ROOT = os.environ.get("EDGE_TEST_ROOT", "/tmp/edge-test")


def host_port(kit: Swarm, task: dict) -> int:
    """
    The host port a task's port 80 answers on at 127.0.0.1, read from its container.

    With IPv6 on, the engine binds 0.0.0.0 and :: separately, and their ephemeral
    ports differ once the two allocators drift apart (an earlier IPv4-only
    binding is enough): the task's PortStatus then lists two published ports for
    one target port, IPv4's first.  The container's own bindings say which is
    which (HostIp), so the expectation does not rely on that order.
    """
    container_id = task["Status"]["ContainerStatus"]["ContainerID"]
    bindings = kit.client.api.inspect_container(container_id)["NetworkSettings"]["Ports"]["80/tcp"]
    (port,) = {int(b["HostPort"]) for b in bindings if b["HostIp"] in ("0.0.0.0", "")}
    return port


def expected_targets(kit: Swarm, service: str, count: int) -> set[tuple[str, str, int]]:
    """(task id, 127.0.0.1, IPv4 host port) for each running task, from the daemon."""
    tasks = kit.wait_running(service, count)
    return {(t["ID"], "127.0.0.1", host_port(kit, t)) for t in tasks}


def snapshot_targets(snapshot: dict, name: str) -> set[tuple[str, str, int]] | None:
    service = find_service(snapshot, name)
    if service is None:
        return None
    return {(t["id"], t["host"], t["port"]) for t in service["targets"]}


def router_rules(snapshot: dict, service: str) -> list[str]:
    return sorted(r["rule"] for r in snapshot["routers"] if r["service"] == service)


@pytest.fixture
def watcher(swarm, tmp_path):
    w = DiscoveryWatch(swarm.url, str(tmp_path))
    yield w
    w.stop()


def wait_targets(watcher: DiscoveryWatch, name: str, expected: set, what: str) -> dict:
    return watcher.wait_snapshot(lambda s: snapshot_targets(s, name) == expected, WAIT, what)


def test_service_lifecycle(swarm, watcher, unique):
    name = f"disc-{unique}"
    key = f"{name}@docker"
    service = swarm.create_web_service(
        name, labels={"traefik.port": "80", "traefik.frontend.rule": f"Host:{name}.test"}
    )
    # Created: the running task appears, reached on its host-mode port.
    expected = expected_targets(swarm, name, 1)
    snap = wait_targets(watcher, key, expected, "the first task")
    assert router_rules(snap, key) == [f"Host:{name}.test"]
    (facts,) = [s for s in snap["swarm_services"] if s["name"] == name]
    assert facts["replicas_running"] == 1 and facts["id"] == service.id
    assert [n["address"] for n in snap["nodes"]] == ["127.0.0.1"]

    # Scale 1 -> 3 -> 1: every running task, then only the survivor.
    update(service, lambda s: s.scale(3))
    expected = expected_targets(swarm, name, 3)
    wait_targets(watcher, key, expected, "three tasks")
    update(service, lambda s: s.scale(1))
    expected = wait_for(
        lambda: (lambda ts: ts if len(ts) == 1 else None)(expected_targets(swarm, name, 1)),
        WAIT,
        "one target left",
    )
    snap = wait_targets(watcher, key, expected, "one task after scaling down")
    assert [s["replicas_running"] for s in snap["swarm_services"] if s["name"] == name] == [1]

    # Forced update: a new task replaces the old one.
    old_ids = {t[0] for t in expected}
    update(service, lambda s: s.force_update())
    new = wait_for(
        lambda: (lambda ts: ts if ts and not ({t[0] for t in ts} & old_ids) else None)(
            expected_targets(swarm, name, 1)
        ),
        WAIT,
        "the replacement task",
    )
    wait_targets(watcher, key, new, "the replacement task in the snapshot")

    # Labels changed: the router follows.
    update(
        service,
        lambda s: s.update(
            labels={"traefik.port": "80", "traefik.frontend.rule": f"Host:{name}-v2.test"}
        ),
    )
    watcher.wait_snapshot(
        lambda s: router_rules(s, key) == [f"Host:{name}-v2.test"], WAIT, "the new rule"
    )

    # Removed: router, service and DNS facts all go.
    swarm.remove_service(name)
    snap = watcher.wait_snapshot(lambda s: find_service(s, key) is None, WAIT, "removal")
    assert router_rules(snap, key) == []
    assert [s for s in snap["swarm_services"] if s["name"] == name] == []


def test_labelled_plain_container(swarm, tmp_path, unique):
    name = f"disc-c-{unique}"
    key = f"{name}@docker"
    w = DiscoveryWatch(swarm.url, str(tmp_path), config="[docker]\ncontainers = \"true\"\n")
    try:
        container = swarm.run_container(
            name,
            labels={"traefik.port": "80", "traefik.frontend.rule": f"Host:{name}.test"},
            network="frontend",
            ports={"80/tcp": None},
        )
        container.reload()
        port = int(container.attrs["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"])
        # edge runs on the node, not on the overlay: the published port.
        wait_targets(w, key, {(container.id, "127.0.0.1", port)}, "the container")
        container.stop(timeout=1)
        w.wait_snapshot(lambda s: find_service(s, key) is None, WAIT, "the stopped container gone")
    finally:
        w.stop()


def test_task_addressing_and_unreachable_problem(swarm, tmp_path, unique):
    reachable, hidden = f"disc-t-{unique}", f"disc-h-{unique}"
    labels = {"traefik.port": "80", "traefik.docker.network": "frontend"}
    swarm.create_web_service(
        reachable, labels={**labels, "traefik.frontend.rule": f"Host:{reachable}.test"}
    )
    swarm.create_web_service(
        hidden,
        labels={**labels, "traefik.frontend.rule": f"Host:{hidden}.test"},
        publish_host_port=False,
    )
    (task,) = swarm.wait_running(reachable, 1)
    (address,) = [
        a["Addresses"][0].split("/")[0]
        for a in task["NetworksAttachments"]
        if a["Network"]["Spec"]["Name"] == "frontend"
    ]
    swarm.wait_running(hidden, 1)

    # Forced task addressing: the task's overlay address on the labelled network.
    (tmp_path / "task").mkdir()
    w = DiscoveryWatch(swarm.url, str(tmp_path / "task"), config='[docker]\nbackend_addressing = "task"\n')
    try:
        wait_targets(w, f"{reachable}@docker", {(task["ID"], address, 80)}, "the task address")
    finally:
        w.stop()

    # auto, edge on the node and not on `frontend`: published ports only, and a
    # service without one is reported, not silently empty.
    (tmp_path / "auto").mkdir()
    w = DiscoveryWatch(swarm.url, str(tmp_path / "auto"))
    try:
        snap = w.wait_snapshot(
            lambda s: any(p["source"] == hidden for p in s["problems"]), WAIT, "the problem"
        )
        (problem,) = [p for p in snap["problems"] if p["source"] == hidden]
        assert problem["level"] == "warning" and "unreachable" in problem["message"]
        assert find_service(snap, f"{hidden}@docker")["targets"] == []
        assert {t[1] for t in snapshot_targets(snap, f"{reachable}@docker")} == {"127.0.0.1"}
    finally:
        w.stop()
        swarm.remove_service(reachable)
        swarm.remove_service(hidden)


def test_host_mode_target_is_the_ipv4_binding_when_ipv4_and_ipv6_ports_differ(swarm, watcher, unique):
    """
    An IPv4-only binding first makes the engine's two ephemeral allocators drift.

    A host-mode task then listens on one port at 0.0.0.0 and another at ::, and
    on 127.0.0.1 the IPv6 one is some other container's port: edge must route
    to the IPv4 binding.
    """
    squatter = swarm.run_container(f"disc-v4-{unique}", ports={"80/tcp": ("0.0.0.0", None)})
    name = f"disc-v6-{unique}"
    key = f"{name}@docker"
    swarm.create_web_service(name, labels={"traefik.port": "80", "traefik.frontend.rule": f"Host:{name}.test"})
    (task,) = swarm.wait_running(name, 1)
    bindings = swarm.client.api.inspect_container(task["Status"]["ContainerStatus"]["ContainerID"])[
        "NetworkSettings"
    ]["Ports"]["80/tcp"]
    by_family = {b["HostIp"]: int(b["HostPort"]) for b in bindings}
    if "::" not in by_family:
        pytest.skip("the test engine binds no IPv6 address, so its ports cannot drift apart")
    if by_family["::"] == by_family["0.0.0.0"]:
        pytest.skip(f"the engine's IPv4 and IPv6 ports happened to line up: {bindings}")
    squatter.reload()
    (squatter_port,) = {int(b["HostPort"]) for b in squatter.attrs["NetworkSettings"]["Ports"]["80/tcp"]}
    published = sorted(p["PublishedPort"] for p in task["Status"]["PortStatus"]["Ports"] if p["TargetPort"] == 80)
    assert published == sorted(by_family.values())  # the engine lists both, without their addresses
    expected = {(task["ID"], "127.0.0.1", by_family["0.0.0.0"])}
    wait_targets(watcher, key, expected, "the task on its IPv4 port")
    # What the other port would have reached on 127.0.0.1: possibly the squatter.
    print(f"bindings {bindings}; squatter on {squatter_port}")
    swarm.remove_service(name)


def test_auto_addressing_follows_edges_own_container(swarm, unique):
    """read_state on the real engine, as if edge ran in a container: on `frontend` -> task IPs."""
    from edge.config import DockerConfig
    from edge.discovery.build import build_snapshot
    from edge.discovery.docker_client import api_client, read_state

    name = f"disc-a-{unique}"
    key = f"{name}@docker"
    swarm.create_web_service(name, labels={"traefik.port": "80", "traefik.frontend.rule": f"Host:{name}.test"})
    (task,) = swarm.wait_running(name, 1)
    (overlay,) = [
        (a["Network"]["ID"], a["Addresses"][0].split("/")[0])
        for a in task["NetworksAttachments"]
        if a["Network"]["Spec"]["Name"] == "frontend"
    ]
    on_frontend = swarm.run_container(f"disc-self-{unique}", network="frontend")
    elsewhere = swarm.run_container(f"disc-other-{unique}", network="bridge")
    config = DockerConfig(url=swarm.url)
    client = api_client(swarm.url, 30)

    state, me = read_state(client, config, container_id=on_frontend.id, in_container=True)
    assert overlay[0] in me.network_ids and me.container_id == on_frontend.id
    assert snapshot_targets_of(build_snapshot(state, config, me), key) == {(task["ID"], overlay[1], 80)}

    state, me = read_state(client, config, container_id=elsewhere.id, in_container=True)
    assert overlay[0] not in me.network_ids
    port = host_port(swarm, task)
    assert snapshot_targets_of(build_snapshot(state, config, me), key) == {(task["ID"], "127.0.0.1", port)}
    swarm.remove_service(name)


def snapshot_targets_of(snapshot, name):
    service = snapshot.service(name)
    return None if service is None else {(t.id, t.host, t.port) for t in service.targets}


# -- the daemon going away ------------------------------------------------------


class OwnDaemon:
    """A second dockerd in swarm mode, ours alone, via tests/testbed/swarm.sh."""

    def __init__(self):
        suffix = uuid.uuid4().hex[:6]
        self.env = dict(
            os.environ,
            EDGE_TEST_NETNS=f"edge-disc-{suffix}",
            EDGE_TEST_ROOT=f"/tmp/edge-disc-{suffix}",
        )
        self.root = self.env["EDGE_TEST_ROOT"]
        self.url = f"unix://{self.root}/docker.sock"

    def _script(self, action: str) -> None:
        command = ["bash", os.path.join(ROOT, "tests/testbed/swarm.sh"), action]
        if not os.path.isdir("/sys/fs/cgroup/devices") and not os.path.exists(
            "/sys/fs/cgroup/cgroup.controllers"
        ):
            # `ip netns exec` remounts /sys without the cgroup mounts dockerd
            # needs: start ours from the mount namespace the shared test
            # daemon runs in (its network namespace stays ours).
            with open(os.path.join(SHARED_ROOT, "docker.pid")) as f:
                pid = int(f.read())
            command = ["nsenter", f"--mount=/proc/{pid}/ns/mnt", "--"] + command
        done = subprocess.run(
            command, env=self.env, timeout=180, capture_output=True, text=True
        )
        if done.returncode:
            log = ""
            try:
                with open(os.path.join(self.root, "dockerd.log")) as f:
                    log = "".join(f.readlines()[-5:])
            except OSError:
                pass
            raise AssertionError(f"swarm.sh {action} failed: {done.stderr}\n{log}")

    def up(self) -> None:
        self._script("up")

    def stop(self) -> None:
        """Stop the daemon only (its namespace and state stay)."""
        with open(os.path.join(self.root, "docker.pid")) as f:
            pid = int(f.read())
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 60, "dockerd to exit")

    def wait_gone(self) -> None:
        """The socket refuses: clients see the daemon gone, not just a closed stream."""
        sock = os.path.join(self.root, "docker.sock")

        def refused():
            try:
                docker.APIClient(base_url=self.url, timeout=2, version="1.41").ping()
            except Exception:
                return True
            return False

        wait_for(refused, 30, f"{sock} to stop answering")

    def destroy(self) -> None:
        try:
            self._script("down")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def own_daemon(swarm):
    # Needs what the shared testbed needs (root, dockerd); `swarm` skips otherwise.
    daemon = OwnDaemon()
    try:
        daemon.up()
        yield daemon
    finally:
        daemon.destroy()


def test_daemon_restart_keeps_routes_then_follows_new_tasks(own_daemon, tmp_path, unique):
    client = docker.DockerClient(base_url=own_daemon.url, timeout=30)
    kit = Swarm(client, own_daemon.url)
    name = f"disc-r-{unique}"
    key = f"{name}@docker"
    kit.create_web_service(name, labels={"traefik.port": "80", "traefik.frontend.rule": f"Host:{name}.test"})
    w = DiscoveryWatch(own_daemon.url, str(tmp_path))
    try:
        before = expected_targets(kit, name, 1)
        wait_targets(w, key, before, "the task before the restart")
        mark = len(w.docs)

        own_daemon.stop()
        down = w.wait_status(False, mark, WAIT)
        # While the daemon is away the last good routes stay published.
        assert snapshot_targets(w.latest_snapshot(), key) == before
        own_daemon.wait_gone()
        assert snapshot_targets(w.latest_snapshot(), key) == before

        own_daemon.up()
        client = docker.DockerClient(base_url=own_daemon.url, timeout=30)
        kit.client = client
        after = wait_for(
            lambda: (lambda ts: ts if ts and ts != before else None)(expected_targets(kit, name, 1)),
            WAIT,
            "the task after the restart",
        )
        up = w.wait_status(True, down, WAIT)
        wait_targets(w, key, after, "the new task after the restart")

        # Nothing published between losing and regaining the daemon dropped the route.
        outage = [d for d in w.docs[down:up] if d["kind"] == "snapshot"]
        assert all(snapshot_targets(d["snapshot"], key) == before for d in outage)
        # The failure was logged once, the recovery too.
        log = open(w.log_path).read()
        assert log.count("keeping the last snapshot") == 1, log
        assert "is back after" in log
    finally:
        w.stop()
        try:
            kit.cleanup()
        except Exception:
            pass
