"""
Discovery on a multi-node swarm, as pure logic: what edge remembers across a
leader election, which managers DNS answers with, the cheap task/node poll.
The same cases on a real 3-manager swarm: tests/test_cluster_discovery.py.
"""

from __future__ import annotations

import copy

from edge.config import DNSConfig, DockerConfig
from edge.discovery.build import DockerState, build_snapshot
from edge.discovery.memory import ClusterMemory
from edge.discovery.poll import digest
from edge.dns.table import build_table, edge_addresses, serving_managers
from edge.rules import Host
from edge.snapshot import Node, Router, Snapshot
from tests.test_build import FRONTEND, NETWORKS, NODE1, NODE2, ON_FRONTEND, ON_HOST, service, task
from tests.test_docker_provider import Harness

NODE3 = "node3id0000000000000000000"


def manager(nid, host, address, state="ready", reach="reachable", leader=False, availability="active"):
    return {
        "ID": nid,
        "Spec": {"Role": "manager", "Availability": availability},
        "Description": {"Hostname": host},
        "Status": {"State": state, "Addr": address},
        "ManagerStatus": {"Leader": leader, "Reachability": reach, "Addr": address + ":2377"},
    }


def worker(nid, host, address, state="ready"):
    return {
        "ID": nid,
        "Spec": {"Role": "worker", "Availability": "active"},
        "Description": {"Hostname": host},
        "Status": {"State": state, "Addr": address},
    }


def cluster_nodes(**overrides):
    nodes = {
        NODE1: manager(NODE1, "m1", "192.0.2.1", leader=True),
        NODE3: manager(NODE3, "m3", "192.0.2.3"),
        NODE2: worker(NODE2, "w1", "192.0.2.2"),
    }
    for nid, changes in overrides.items():
        raw = copy.deepcopy(nodes[nid])
        for path, value in changes.items():
            where = raw
            *parents, last = path.split(".")
            for p in parents:
                where = where.setdefault(p, {})
            where[last] = value
        nodes[nid] = raw
    return list(nodes.values())


N1, N2, N3 = NODE1, NODE2, NODE3
LABELS = {"traefik.frontend.rule": "Host:web.test", "traefik.port": "80"}
FIXED_80 = {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "host"}
RANDOM_80 = {"Protocol": "tcp", "TargetPort": 80, "PublishMode": "host"}


def state(tasks, nodes=None, ports=(FIXED_80,)):
    return DockerState(
        info={"Swarm": {"NodeID": NODE1, "LocalNodeState": "active", "ControlAvailable": True}},
        swarm=True,
        services=[service("web", "s1", LABELS, ports=ports, replicas=len(tasks))],
        tasks=tasks,
        nodes=nodes if nodes is not None else cluster_nodes(),
        networks=NETWORKS,
    )


def web_targets(snapshot):
    found = snapshot.service("web@docker")
    return sorted((t.id, t.host, t.port) for t in found.targets) if found else []


def problem_texts(snapshot):
    return [p.message for p in snapshot.problems]


def build(st, me=ON_HOST):
    return build_snapshot(st, DockerConfig(url="unix:///x.sock"), me)


def no_ports(raw):
    raw = copy.deepcopy(raw)
    del raw["Status"]["PortStatus"]
    return raw


# -- host-mode targets across a leader election -------------------------------


def test_tasks_without_port_status_use_the_fixed_published_port():
    before = [task("t1", "s1", N1, host_ports=[(80, 8080)]), task("t2", "s1", N2, host_ports=[(80, 8080)])]
    after = [no_ports(t) for t in before]
    assert web_targets(build(state(before))) == [("t1", "192.0.2.1", 8080), ("t2", "192.0.2.2", 8080)]
    assert web_targets(build(state(after))) == [("t1", "192.0.2.1", 8080), ("t2", "192.0.2.2", 8080)]


def test_random_host_ports_are_remembered_per_task_id():
    memory = ClusterMemory()
    before = [task("t1", "s1", N1, host_ports=[(80, 30001)]), task("t2", "s1", N2, host_ports=[(80, 30002)])]
    first = build(memory.apply(state(before, ports=(RANDOM_80,))))
    assert web_targets(first) == [("t1", "192.0.2.1", 30001), ("t2", "192.0.2.2", 30002)]
    # After the election: same tasks, no PortStatus; and a brand new task t3.
    after = [no_ports(t) for t in before] + [no_ports(task("t3", "s1", N3))]
    second = build(memory.apply(state(after, ports=(RANDOM_80,))))
    assert memory.patched_tasks == 2
    assert web_targets(second) == [("t1", "192.0.2.1", 30001), ("t2", "192.0.2.2", 30002)]
    # t3 never had ports: a reported problem, not a silent drop.
    assert any("t3" in m and "not routed" in m for m in problem_texts(second)), problem_texts(second)


def test_without_memory_a_task_without_ports_is_a_problem_not_a_silent_drop():
    snap = build(state([no_ports(task("t1", "s1", N1))], ports=(RANDOM_80,)))
    assert web_targets(snap) == []
    assert any("t1" in m and "no published port for 80" in m for m in problem_texts(snap))


def test_memory_forgets_tasks_that_are_gone():
    memory = ClusterMemory()
    memory.apply(state([task("t1", "s1", N1, host_ports=[(80, 30001)])]))
    memory.apply(state([]))
    again = memory.apply(state([no_ports(task("t1", "s1", N1))]))
    assert memory.patched_tasks == 0 and "PortStatus" not in again.tasks[0]["Status"]


def test_task_mode_task_without_an_address_is_a_problem():
    tasks = [task("t1", "s1", N1, {FRONTEND: "10.0.1.5"}), task("t2", "s1", N2)]
    snap = build(state(tasks), me=ON_FRONTEND)
    assert [t.host for t in snap.service("web@docker").targets] == ["10.0.1.5"]
    assert any("t2" in m and "no address" in m for m in problem_texts(snap))


# -- node states ---------------------------------------------------------------


def test_unknown_node_states_keep_the_last_definite_ones():
    memory = ClusterMemory()
    memory.apply(state([]))
    unknown = cluster_nodes(
        **{nid: {"Status.State": "unknown", "ManagerStatus.Reachability": "unknown"} for nid in (N1, N3)},
        **{N2: {"Status.State": "unknown"}},
    )
    patched = memory.apply(state([], nodes=unknown))
    assert memory.patched_nodes == 3
    snap = build(patched)
    assert {n.state for n in snap.nodes} == {"ready"}
    assert {n.reachability for n in snap.nodes if n.role == "manager"} == {"reachable"}
    # A definite new state replaces the remembered one.
    down = memory.apply(state([], nodes=cluster_nodes(**{N3: {"Status.State": "down"}})))
    assert {n.id: n.state for n in build(down).nodes}[N3] == "down"


def test_a_node_never_seen_definite_stays_unknown():
    memory = ClusterMemory()
    nodes = cluster_nodes(**{N3: {"Status.State": "unknown"}})
    assert {n.id: n.state for n in build(memory.apply(state([], nodes=nodes))).nodes}[N3] == "unknown"


def test_tasks_on_an_unreachable_manager_are_not_routed():
    tasks = [task("t1", "s1", N1, host_ports=[(80, 8080)]), task("t3", "s1", N3, host_ports=[(80, 8080)])]
    nodes = cluster_nodes(**{N3: {"ManagerStatus.Reachability": "unreachable"}})
    assert web_targets(build(state(tasks, nodes))) == [("t1", "192.0.2.1", 8080)]
    nodes = cluster_nodes(**{N3: {"Status.State": "down"}})
    assert web_targets(build(state(tasks, nodes))) == [("t1", "192.0.2.1", 8080)]


# -- DNS: which managers answer --------------------------------------------------


def dns_snapshot(nodes):
    return Snapshot.build(
        routers=[Router("web@docker", Host(("web.test",)), "Host:web.test", "web@docker")],
        nodes=nodes,
    )


def test_unreachable_drained_and_down_managers_leave_the_answers():
    ready = [Node("a", "m1", "manager", "192.0.2.1", reachability="reachable"),
             Node("b", "m2", "manager", "192.0.2.2", reachability="reachable"),
             Node("c", "m3", "manager", "192.0.2.3", reachability="reachable")]
    cfg = DNSConfig(zone="swarm.test")
    assert edge_addresses(dns_snapshot(ready), cfg) == ("192.0.2.1", "192.0.2.2", "192.0.2.3")
    gone = [ready[0],
            Node("b", "m2", "manager", "192.0.2.2", reachability="unreachable"),
            Node("c", "m3", "manager", "192.0.2.3", availability="drain", reachability="reachable")]
    snap = dns_snapshot(gone)
    assert edge_addresses(snap, cfg) == ("192.0.2.1",)
    assert [n.id for n in serving_managers(snap)] == ["a"]
    table, _ = build_table(snap, cfg)
    managers = table.lookup(b"\x08managers\x05swarm\x04test\x00", 1)
    assert managers.an == 1
    # Back when reachable again.
    assert edge_addresses(dns_snapshot(ready), cfg) == ("192.0.2.1", "192.0.2.2", "192.0.2.3")


def test_managers_of_unknown_state_answer_rather_than_nothing():
    unknown = [Node("a", "m1", "manager", "192.0.2.1", state="unknown"),
               Node("b", "m2", "manager", "192.0.2.2", state="down")]
    assert edge_addresses(dns_snapshot(unknown), DNSConfig()) == ("192.0.2.1",)


# -- the provider: poll, election, storms --------------------------------------


def real_build(st, config, me):
    return build_snapshot(st, config, me)


def poll_harness():
    h = Harness(poll_interval=0.5, build=real_build)
    return h


def test_poll_finds_a_dead_task_and_its_replacement_without_events():
    h = poll_harness()
    t1, t2 = task("t1", "s1", N1, host_ports=[(80, 8080)]), task("t2", "s1", N2, host_ports=[(80, 8080)])
    h.source.state = state([t1, t2])
    h.provider.startService()
    assert [t[0] for t in web_targets(h.publisher.current)] == ["t1", "t2"]
    syncs = h.source.syncs
    # t2's container is killed on the worker: no event; /tasks shows it failed.
    h.source.state = state([t1, task("t2", "s1", N2, state="failed", host_ports=[(80, 8080)])])
    h.clock.advance(0.5)
    assert [t[0] for t in web_targets(h.publisher.current)] == ["t1"]
    h.source.state = state([t1, task("t4", "s1", N2, host_ports=[(80, 8080)])])
    h.clock.advance(0.5)
    assert [t[0] for t in web_targets(h.publisher.current)] == ["t1", "t4"]
    assert h.source.syncs == syncs  # the polls did it, not full syncs


def test_a_poll_that_reads_nothing_new_publishes_nothing():
    h = poll_harness()
    h.source.state = state([task("t1", "s1", N1, host_ports=[(80, 8080)])])
    published = []
    h.provider.startService()
    h.publisher.subscribe(published.append)
    del published[:]  # subscribing delivers the current snapshot
    for _ in range(10):
        h.clock.advance(0.5)
    assert h.source.polls == 10 and published == []


def test_service_update_storm_that_changes_nothing_publishes_nothing():
    h = poll_harness()
    h.source.state = state([task("t1", "s1", N1, host_ports=[(80, 8080)])])
    h.provider.startService()
    published = []
    h.publisher.subscribe(published.append)
    del published[:]  # subscribing delivers the current snapshot
    for _ in range(20):
        h.source.on_event({"Type": "service", "Action": "update", "Actor": {"ID": "s1"}})
        h.clock.advance(0.05)
    h.clock.advance(40)
    assert h.source.syncs > 2 and published == []


def test_election_nodes_unknown_and_ports_missing_keep_the_routes():
    h = poll_harness()
    tasks = [task("t1", "s1", N1, host_ports=[(80, 30001)]), task("t2", "s1", N2, host_ports=[(80, 30002)])]
    h.source.state = state(tasks, ports=(RANDOM_80,))
    h.provider.startService()
    before = h.publisher.current
    # The new leader: every node unknown, tasks re-registered without ports.
    unknown = cluster_nodes(**{nid: {"Status.State": "unknown"} for nid in (N1, N2, N3)})
    h.source.state = state([no_ports(t) for t in tasks], nodes=unknown, ports=(RANDOM_80,))
    h.source.on_event({"Type": "node", "Action": "update"})
    h.clock.advance(0.5)
    now = h.publisher.current
    assert web_targets(now) == web_targets(before) == [("t1", "192.0.2.1", 30001), ("t2", "192.0.2.2", 30002)]
    assert [n.address for n in serving_managers(now)] == ["192.0.2.1", "192.0.2.3"]


def test_after_an_election_polls_that_read_the_same_rebuild_nothing():
    h = poll_harness()
    tasks = [task("t1", "s1", N1, host_ports=[(80, 30001)])]
    h.source.state = state(tasks, ports=(RANDOM_80,))
    builds = []
    h.provider._build = lambda st, config, me: builds.append(1) or real_build(st, config, me)
    h.provider.startService()
    # Re-registered without ports: the full sync sees it, later polls read the same.
    h.source.state = state([no_ports(t) for t in tasks], ports=(RANDOM_80,))
    h.source.on_event({"Type": "node", "Action": "update"})
    built, syncs = len(builds), h.source.syncs
    for _ in range(6):
        h.clock.advance(0.5)
    assert h.source.polls >= 3
    # Only the event's follow-up full syncs built; the polls found nothing new.
    assert len(builds) - built == h.source.syncs - syncs
    assert web_targets(h.publisher.current) == [("t1", "192.0.2.1", 30001)]


def test_a_hung_poll_blocks_nothing_and_keeps_the_snapshot():
    h = poll_harness()
    t1 = task("t1", "s1", N1, host_ports=[(80, 8080)])
    h.source.state = state([t1])
    h.provider.startService()
    h.source.poll_hold = True
    h.clock.advance(0.5)
    assert len(h.source.poll_pending) == 1
    h.clock.advance(5)
    assert len(h.source.poll_pending) == 1  # one in flight, never piled up
    # Full syncs still run and publish.
    h.source.state = state([t1, task("t2", "s1", N2, host_ports=[(80, 8080)])])
    h.source.on_event({"Type": "service", "Action": "update"})
    assert [t[0] for t in web_targets(h.publisher.current)] == ["t1", "t2"]
    # The old poll answers late (with the old tasks): it is stale and ignored.
    h.source.poll_pending.pop().callback(([t1], h.source.state.nodes, digest([t1], h.source.state.nodes)))
    assert [t[0] for t in web_targets(h.publisher.current)] == ["t1", "t2"]


def test_a_failing_poll_keeps_the_snapshot_and_the_connection():
    h = poll_harness()
    h.source.state = state([task("t1", "s1", N1, host_ports=[(80, 8080)])])
    h.provider.startService()
    h.source.poll_down = TimeoutError("read timed out")
    for _ in range(4):
        h.clock.advance(0.5)
    assert h.source.polls == 4 and h.provider.connected
    assert [t[0] for t in web_targets(h.publisher.current)] == ["t1"]


# -- the raw-compare reader ------------------------------------------------------


class FakeResponse:
    def __init__(self, body: bytes, status: int = 200):
        self.content, self.status = body, status

    def raise_for_status(self):
        if self.status >= 400:
            raise RuntimeError(f"HTTP {self.status}")


class FakeClient:
    """The parts of docker.APIClient (a requests.Session) the reader uses."""

    base_url = "http+docker://localhost"
    api_version = "1.41"
    timeout = 5.0

    def __init__(self, tasks, nodes):
        import json

        self.bodies = {"/tasks": json.dumps(tasks).encode(), "/nodes": json.dumps(nodes).encode()}
        self.requests = []

    def get(self, url, params=None, timeout=None):
        path = url.split("/v1.41", 1)[1]
        self.requests.append((path, params, timeout))
        if path not in self.bodies:
            return FakeResponse(b"", 404)
        return FakeResponse(self.bodies[path])


def test_task_reader_decodes_only_when_the_bytes_change():
    from edge.discovery.poll import TaskReader

    t1 = task("t1", "s1", N1, host_ports=[(80, 8080)])
    client = FakeClient([t1], cluster_nodes())
    reader = TaskReader(raw_compare=True)
    first = reader.read(client)
    assert first == ([t1], cluster_nodes(), digest([t1], cluster_nodes()))
    assert reader.read(client) is first and reader.decoded == 1
    assert client.requests[0] == ("/tasks", {"filters": '{"desired-state": ["running"]}'}, 5.0)
    client.bodies = FakeClient([t1, task("t2", "s1", N2)], cluster_nodes()).bodies
    tasks, _, seen = reader.read(client)
    assert [t["ID"] for t in tasks] == ["t1", "t2"] and seen != first[2] and reader.decoded == 2


def test_task_reader_rejects_what_is_not_a_list_and_http_errors():
    import pytest

    from edge.discovery.poll import TaskReader

    client = FakeClient({"message": "oops"}, [])
    with pytest.raises(ValueError):
        TaskReader().read(client)
    del client.bodies["/nodes"]
    client.bodies["/tasks"] = b"[]"
    with pytest.raises(RuntimeError):
        TaskReader().read(client)
