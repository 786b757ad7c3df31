"""
The snapshot builder, from small dicts shaped like Engine API 1.41 answers
(shapes captured from the test swarm: ``docker.APIClient().services()``,
``.tasks()``, ``.nodes()``, ``.networks()``, ``.containers()``).
"""

from __future__ import annotations

import random

import pytest

from edge.config import DockerConfig
from edge.discovery.build import (
    DockerState,
    SelfFacts,
    build_snapshot,
    converging,
    node_address,
    published_ports,
    running_tasks,
)
from edge.discovery.labels import LabelConfig, ServiceSpec
from edge.snapshot import PublishedPort, Target

FRONTEND = "ovle8874l8iyww0w8dq3zwz7w"
BACKEND = "b4ck3ndn3tw0rk1d000000000"
INGRESS = "2clej2q9blz7yxhdsal0uuzhb"
PROXY_FRONTEND = "pr0xyfr0nt3nd000000000000"
NODE1 = "node1id0000000000000000000"
NODE2 = "node2id0000000000000000000"

NETWORKS = [
    {"Name": "ingress", "Id": INGRESS, "Driver": "overlay", "Scope": "swarm", "Ingress": True},
    {"Name": "frontend", "Id": FRONTEND, "Driver": "overlay", "Scope": "swarm", "Ingress": False},
    {"Name": "backend", "Id": BACKEND, "Driver": "overlay", "Scope": "swarm", "Ingress": False},
    {"Name": "proxy_frontend", "Id": PROXY_FRONTEND, "Driver": "overlay", "Scope": "swarm"},
    {"Name": "bridge", "Id": "bridgeid", "Driver": "bridge", "Scope": "local"},
]

NODES = [
    {
        "ID": NODE1,
        "Spec": {"Role": "manager", "Availability": "active"},
        "Description": {"Hostname": "m1"},
        "Status": {"State": "ready", "Addr": "0.0.0.0"},
        "ManagerStatus": {"Leader": True, "Reachability": "reachable", "Addr": "192.0.2.1:2377"},
    },
    {
        "ID": NODE2,
        "Spec": {"Role": "worker", "Availability": "active"},
        "Description": {"Hostname": "w1"},
        "Status": {"State": "ready", "Addr": "192.0.2.2"},
    },
]


def service(name, sid, labels=None, networks=(FRONTEND,), ports=(), replicas=1, vips=(), update=None):
    raw = {
        "ID": sid,
        "Spec": {
            "Name": name,
            "Labels": dict(labels or {}),
            "TaskTemplate": {"Networks": [{"Target": n} for n in networks]},
            "Mode": {"Replicated": {"Replicas": replicas}},
            "EndpointSpec": {"Mode": "vip", "Ports": list(ports)},
        },
        "Endpoint": {
            "Ports": list(ports),
            "VirtualIPs": [{"NetworkID": n, "Addr": a} for n, a in vips],
        },
    }
    if update:
        raw["UpdateStatus"] = {"State": update}
    return raw


def task(tid, sid, node, addresses=None, state="running", desired="running", host_ports=()):
    return {
        "ID": tid,
        "ServiceID": sid,
        "NodeID": node,
        "DesiredState": desired,
        "Status": {
            "State": state,
            "PortStatus": {
                "Ports": [
                    {"Protocol": "tcp", "TargetPort": t, "PublishedPort": p, "PublishMode": "host"}
                    for t, p in host_ports
                ]
                * 2  # the engine lists each host-mode port twice (IPv4 and IPv6)
            },
        },
        "NetworksAttachments": [
            {"Network": {"ID": nid, "Spec": {"Name": nid}}, "Addresses": [addr + "/24"]}
            for nid, addr in (addresses or {}).items()
        ],
    }


HOST_80 = {"Protocol": "tcp", "TargetPort": 80, "PublishMode": "host"}
INGRESS_80 = {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8000, "PublishMode": "ingress"}

ON_FRONTEND = SelfFacts(in_container=True, container_id="c" * 64, network_ids=frozenset({FRONTEND}))
ON_HOST = SelfFacts()


def swarm_state(services, tasks, **kw):
    return DockerState(
        info={"Swarm": {"NodeID": NODE1, "LocalNodeState": "active", "ControlAvailable": True}},
        swarm=True,
        services=services,
        tasks=tasks,
        nodes=NODES,
        networks=NETWORKS,
        **kw,
    )


def build(state, me=ON_HOST, **config):
    return build_snapshot(state, DockerConfig(url="unix:///x.sock", **config), me)


def targets(snapshot, name):
    found = snapshot.service(name)
    assert found is not None, f"no service {name} in {[s.name for s in snapshot.services]}"
    return {(t.id, t.host, t.port, t.node_id) for t in found.targets}


def problems(snapshot):
    return [(p.source, p.level, p.message) for p in snapshot.problems]


# -- small readers -------------------------------------------------------------


@pytest.mark.parametrize(
    "node, address",
    [
        (NODES[0], "192.0.2.1"),  # manager: ManagerStatus.Addr without :2377
        (NODES[1], "192.0.2.2"),  # worker: Status.Addr
        ({"Status": {"Addr": "127.0.0.1"}, "ManagerStatus": {"Addr": "[fd00::1]:2377"}}, "fd00::1"),
        ({"Status": {"Addr": "10.0.0.5"}, "ManagerStatus": {"Addr": "0.0.0.0:2377"}}, "10.0.0.5"),
    ],
)
def test_node_address(node, address):
    assert node_address(node) == address


def test_running_tasks_need_state_and_desired_state_running():
    tasks = [
        task("a", "s", NODE1),
        task("b", "s", NODE1, desired="shutdown"),  # being stopped: leaves at once
        task("c", "s", NODE1, state="starting"),
        task("d", "s", NODE1, state="running", desired="ready"),
    ]
    assert [t["ID"] for t in running_tasks(tasks)] == ["a"]


def test_published_ports_from_endpoint_else_spec():
    raw = service("web", "s1", ports=[HOST_80, INGRESS_80])
    assert published_ports(raw) == (
        PublishedPort(80, 0, "tcp", "host"),
        PublishedPort(80, 8000, "tcp", "ingress"),
    )
    del raw["Endpoint"]
    assert len(published_ports(raw)) == 2


# -- swarm services --------------------------------------------------------------


def test_published_host_mode_targets_use_each_tasks_node_and_port():
    state = swarm_state(
        [service("web", "s1", {"traefik.port": "80", "traefik.frontend.rule": "Host:web.test"}, ports=[HOST_80], replicas=2)],
        [
            task("t1", "s1", NODE1, {FRONTEND: "10.0.1.5"}, host_ports=[(80, 30001)]),
            task("t2", "s1", NODE2, {FRONTEND: "10.0.1.6"}, host_ports=[(80, 30002)]),
            task("t0", "s1", NODE2, {FRONTEND: "10.0.1.4"}, desired="shutdown", host_ports=[(80, 30000)]),
        ],
    )
    snap = build(state, ON_HOST)
    assert targets(snap, "web@docker") == {
        ("t1", "192.0.2.1", 30001, NODE1),
        ("t2", "192.0.2.2", 30002, NODE2),
    }
    assert [r.rule_text for r in snap.routers] == ["Host:web.test"]
    assert problems(snap) == []


def test_task_addressing_when_edge_shares_the_network():
    state = swarm_state(
        [service("web", "s1", {"traefik.port": "8080"}, networks=(INGRESS, FRONTEND))],
        [task("t1", "s1", NODE1, {INGRESS: "10.255.0.7", FRONTEND: "10.0.1.5"})],
    )
    snap = build(state, ON_FRONTEND, domain="example.test")
    # Never the ingress address.
    assert targets(snap, "web@docker") == {("t1", "10.0.1.5", 8080, NODE1)}


def test_forced_addressing_modes():
    state = swarm_state(
        [service("web", "s1", {"traefik.port": "80"}, ports=[HOST_80])],
        [task("t1", "s1", NODE1, {FRONTEND: "10.0.1.5"}, host_ports=[(80, 30001)])],
    )
    assert targets(build(state, ON_HOST, backend_addressing="task", domain="d.test"), "web@docker") == {
        ("t1", "10.0.1.5", 80, NODE1)
    }
    assert targets(
        build(state, ON_FRONTEND, backend_addressing="published", domain="d.test"), "web@docker"
    ) == {("t1", "192.0.2.1", 30001, NODE1)}


def test_ingress_mode_port_goes_to_a_node_address():
    state = swarm_state(
        [service("web", "s1", {"traefik.port": "80"}, ports=[INGRESS_80])],
        [task("t1", "s1", NODE2, {FRONTEND: "10.0.1.5"})],
    )
    assert targets(build(state, ON_HOST, domain="d.test"), "web@docker") == {("t1", "192.0.2.2", 8000, NODE2)}


@pytest.mark.parametrize(
    "label, stack, network_id",
    [
        ("frontend", "", FRONTEND),
        (FRONTEND, "", FRONTEND),  # by ID
        (FRONTEND[:12], "", FRONTEND),  # by short ID
        ("frontend", "proxy", PROXY_FRONTEND),  # stack prefix added
        ("proxy_frontend", "proxy", PROXY_FRONTEND),
    ],
)
def test_label_network_matches_id_name_and_stack_prefix(label, stack, network_id):
    labels = {"traefik.port": "80", "traefik.docker.network": label}
    if stack:
        labels["com.docker.stack.namespace"] = stack
    state = swarm_state(
        [service("web", "s1", labels, networks=(BACKEND, network_id))],
        [task("t1", "s1", NODE1, {BACKEND: "10.0.9.9", network_id: "10.0.1.5"})],
    )
    snap = build(state, SelfFacts(True, "c" * 64, frozenset({network_id})), domain="d.test")
    assert targets(snap, "web@docker") == {("t1", "10.0.1.5", 80, NODE1)}


def test_label_network_without_stack_prefix_matches_external_network():
    labels = {"traefik.port": "80", "traefik.docker.network": "proxy_frontend", "com.docker.stack.namespace": "proxy"}
    state = swarm_state(
        [service("web", "s1", labels, networks=(BACKEND, FRONTEND))],
        [task("t1", "s1", NODE1, {BACKEND: "10.0.9.9", FRONTEND: "10.0.1.5"})],
    )
    assert targets(build(state, ON_FRONTEND, domain="d.test"), "web@docker") == {("t1", "10.0.1.5", 80, NODE1)}


def test_ingress_network_label_is_refused():
    state = swarm_state(
        [service("web", "s1", {"traefik.port": "80", "traefik.docker.network": "ingress"}, networks=(INGRESS, FRONTEND))],
        [task("t1", "s1", NODE1, {INGRESS: "10.255.0.7", FRONTEND: "10.0.1.5"})],
    )
    snap = build(state, ON_FRONTEND, domain="d.test")
    assert targets(snap, "web@docker") == set()
    assert [(s, lvl) for s, lvl, m in problems(snap) if "ingress" in m] == [("web", "error")]


def test_unknown_network_label_warns_naming_the_networks_and_falls_back():
    # Traefik: "Could not find network named ... Defaulting to first available network."
    state = swarm_state(
        [service("web", "s1", {"traefik.port": "80", "traefik.docker.network": "nope"})],
        [task("t1", "s1", NODE1, {FRONTEND: "10.0.1.5"})],
    )
    snap = build(state, ON_FRONTEND, domain="d.test")
    assert targets(snap, "web@docker") == {("t1", "10.0.1.5", 80, NODE1)}
    ((source, level, message),) = problems(snap)
    assert (source, level) == ("web", "warning") and "'nope'" in message and "frontend" in message


def test_port_from_the_single_published_target_port():
    state = swarm_state(
        [service("web", "s1", {"traefik.frontend.rule": "Host:web.test"}, ports=[HOST_80])],
        [task("t1", "s1", NODE1, {FRONTEND: "10.0.1.5"}, host_ports=[(80, 30001)])],
    )
    assert targets(build(state, ON_FRONTEND), "web@docker") == {("t1", "10.0.1.5", 80, NODE1)}


@pytest.mark.parametrize(
    "ports, why",
    [
        ([], "publishes no port"),
        ([HOST_80, {"Protocol": "tcp", "TargetPort": 443, "PublishMode": "host"}], "several ports (80, 443)"),
    ],
)
def test_no_port_is_a_problem_saying_why(ports, why):
    state = swarm_state(
        [service("web", "s1", {"traefik.frontend.rule": "Host:web.test"}, ports=ports)],
        [task("t1", "s1", NODE1, {FRONTEND: "10.0.1.5"})],
    )
    snap = build(state, ON_FRONTEND)
    # As in Traefik: no usable port, no router and no service (a 404, not a 503).
    assert snap.routers == () and snap.services == ()
    assert any(why in m and lvl == "error" for _, lvl, m in problems(snap)), problems(snap)


def test_unreachable_service_gets_a_warning_not_a_silent_hole():
    # edge on the host, service not publishing its port: no way in.
    state = swarm_state(
        [service("web", "s1", {"traefik.port": "80"})],
        [task("t1", "s1", NODE1, {FRONTEND: "10.0.1.5"})],
    )
    snap = build(state, ON_HOST, domain="d.test")
    assert targets(snap, "web@docker") == set()
    ((source, level, message),) = problems(snap)
    assert (source, level) == ("web", "warning") and "unreachable" in message


def test_several_networks_and_no_label_in_task_mode():
    state = swarm_state(
        [service("web", "s1", {"traefik.port": "80"}, networks=(FRONTEND, BACKEND))],
        [task("t1", "s1", NODE1, {FRONTEND: "10.0.1.5", BACKEND: "10.0.2.5"})],
    )
    # Edge shares exactly one of them: that one.
    assert targets(build(state, ON_FRONTEND, domain="d.test"), "web@docker") == {("t1", "10.0.1.5", 80, NODE1)}
    # Forced task addressing, edge on neither: say which label to set.
    snap = build(state, ON_HOST, backend_addressing="task", domain="d.test")
    assert targets(snap, "web@docker") == set()
    assert any("several networks" in m for _, _, m in problems(snap))


def test_lb_swarm_uses_the_vip_on_the_network_never_ingress():
    labels = {"traefik.port": "80", "traefik.backend.loadbalancer.swarm": "true"}
    state = swarm_state(
        [service("web", "s1", labels, networks=(INGRESS, FRONTEND), vips=[(INGRESS, "10.255.0.2/16"), (FRONTEND, "10.0.1.2/24")])],
        [task("t1", "s1", NODE1, {INGRESS: "10.255.0.7", FRONTEND: "10.0.1.5"})],
    )
    assert targets(build(state, ON_FRONTEND, domain="d.test"), "web@docker") == {("s1", "10.0.1.2", 80, "")}


def test_disabled_service_has_no_route_but_keeps_its_dns_facts():
    state = swarm_state(
        [
            service(
                "app_db",
                "s2",
                {"traefik.enable": "false", "com.docker.stack.namespace": "app"},
                ports=[INGRESS_80],
                replicas=2,
            )
        ],
        [task("t1", "s2", NODE1), task("t2", "s2", NODE2), task("t3", "s2", NODE2, state="failed")],
    )
    snap = build(state)
    assert snap.routers == () and snap.services == ()
    (facts,) = snap.swarm_services
    assert (facts.name, facts.id, facts.stack, facts.replicas_running, facts.node_ids) == (
        "app_db",
        "s2",
        "app",
        2,
        (NODE1, NODE2),
    )
    assert facts.published_ports == (PublishedPort(80, 8000, "tcp", "ingress"),)


def test_bad_enable_value_is_reported_though_the_service_stays_unrouted():
    state = swarm_state(
        [service("web", "s1", {"traefik.enable": "yes please", "traefik.port": "80"})],
        [task("t1", "s1", NODE1, {FRONTEND: "10.0.1.5"})],
    )
    snap = build(state, ON_FRONTEND)
    assert snap.routers == ()
    assert any(
        source == "web" and level == "error" and "traefik.enable" in message
        for source, level, message in problems(snap)
    ), problems(snap)


def test_nodes_in_snapshot():
    snap = build(swarm_state([], []))
    assert [(n.id, n.hostname, n.role, n.address, n.leader) for n in snap.nodes] == [
        (NODE1, "m1", "manager", "192.0.2.1", True),
        (NODE2, "w1", "worker", "192.0.2.2", False),
    ]


def test_same_service_name_from_two_sources_merges_when_equal_and_drops_when_not():
    # Traefik's provider.Merge: equal definitions share the servers,
    # different ones drop the service.
    def reader(pass_host):
        def read(source, labels, **kw):
            host = pass_host or source == "a"
            return LabelConfig(True, (), (ServiceSpec(name="shared@docker", port=80, pass_host_header=host),), ())

        return read

    state = swarm_state(
        [service("a", "s1", ports=[HOST_80]), service("b", "s2", ports=[HOST_80])],
        [task("t1", "s1", NODE1, host_ports=[(80, 1)]), task("t2", "s2", NODE1, host_ports=[(80, 2)])],
    )
    snap = build_snapshot(state, DockerConfig(), ON_HOST, read_labels=reader(True))
    assert targets(snap, "shared@docker") == {("t1", "192.0.2.1", 1, NODE1), ("t2", "192.0.2.1", 2, NODE1)}
    assert problems(snap) == []
    snap = build_snapshot(state, DockerConfig(), ON_HOST, read_labels=reader(False))
    assert snap.services == ()
    assert [(s, lvl) for s, lvl, _ in problems(snap)] == [("b", "error")]


def test_equal_state_gives_equal_snapshot_whatever_the_order():
    services = [
        service("web", "s1", {"traefik.port": "80", "traefik.frontend.rule": "Host:web.test"}, ports=[HOST_80], replicas=3),
        service("api", "s2", {"traefik.port": "80", "traefik.frontend.rule": "Host:api.test"}, ports=[HOST_80]),
    ]
    tasks = [task(f"t{i}", "s1", NODE1, host_ports=[(80, 30000 + i)]) for i in range(3)]
    tasks.append(task("u1", "s2", NODE2, host_ports=[(80, 31000)]))
    first = build(swarm_state(services, tasks))
    rng = random.Random(4)
    for _ in range(5):
        shuffled = swarm_state(rng.sample(services, 2), rng.sample(tasks, 4))
        assert build(shuffled) == first
    changed = build(swarm_state(services, tasks[:2] + tasks[3:]))
    assert changed != first


@pytest.mark.parametrize(
    "services, tasks, moving",
    [
        ([service("w", "s1", replicas=1)], [task("t1", "s1", NODE1)], False),
        ([service("w", "s1", replicas=3)], [task("t1", "s1", NODE1)], True),  # scaling up
        ([service("w", "s1", replicas=1)], [task("t1", "s1", NODE1, state="starting")], True),
        ([service("w", "s1", update="updating")], [task("t1", "s1", NODE1)], True),
        ([service("w", "s1", update="completed")], [task("t1", "s1", NODE1), task("t0", "s1", NODE1, desired="shutdown")], False),
    ],
)
def test_converging(services, tasks, moving):
    assert converging(swarm_state(services, tasks)) is moving


# -- plain containers -------------------------------------------------------------


def container(cid, name, labels, networks, ports=(), network_mode="default"):
    return {
        "Id": cid,
        "Names": [f"/{name}"],
        "Labels": labels,
        "State": "running",
        "HostConfig": {"NetworkMode": network_mode},
        "Ports": list(ports),
        "NetworkSettings": {
            "Networks": {
                net: {"NetworkID": nid, "IPAddress": ip} for net, (nid, ip) in networks.items()
            }
        },
    }


def containers_state(containers, **kw):
    return DockerState(info={}, containers_read=True, networks=NETWORKS, containers=containers, **kw)


def test_container_on_a_bridge_is_reached_directly_from_the_host():
    c = container("c1", "blog", {"traefik.port": "80"}, {"bridge": ("bridgeid", "172.17.0.2")})
    snap = build(containers_state([c]), ON_HOST, domain="d.test")
    assert targets(snap, "blog@docker") == {("c1", "172.17.0.2", 80, "")}
    assert [s.name for s in snap.swarm_services] == ["blog"]


def test_container_published_port_when_edge_is_elsewhere():
    c = container(
        "c1",
        "blog",
        {"traefik.frontend.rule": "Host:blog.test"},
        {"frontend": (FRONTEND, "10.0.1.9")},
        ports=[
            {"IP": "::", "PrivatePort": 80, "PublicPort": 32768, "Type": "tcp"},
            {"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 32768, "Type": "tcp"},
        ],
    )
    snap = build(containers_state([c], engine_host="192.0.2.9"), SelfFacts(in_container=True))
    assert targets(snap, "blog@docker") == {("c1", "192.0.2.9", 32768, "")}


def test_compose_replicas_share_one_service_and_swarm_tasks_are_skipped():
    labels = {"traefik.port": "80", "com.docker.compose.service": "api", "com.docker.compose.project": "shop"}
    cs = [
        container("c1", "shop-api-1", labels, {"frontend": (FRONTEND, "10.0.1.7")}),
        container("c2", "shop-api-2", labels, {"frontend": (FRONTEND, "10.0.1.8")}),
        container("c3", "web.1.abc", {"traefik.port": "80", "com.docker.swarm.task.id": "t"}, {"frontend": (FRONTEND, "10.0.1.9")}),
    ]
    snap = build(containers_state(cs), ON_FRONTEND, domain="d.test")
    # Traefik's name for a compose container: <service>_<project>, normalized.
    assert targets(snap, "api-shop@docker") == {("c1", "10.0.1.7", 80, ""), ("c2", "10.0.1.8", 80, "")}
    assert [s.name for s in snap.services] == ["api-shop@docker"]
    assert [(s.name, s.stack, s.replicas_running) for s in snap.swarm_services] == [("api_shop", "shop", 2)]


def test_container_in_host_network_mode():
    c = container("c1", "nas", {"traefik.port": "5000"}, {"host": ("hostid", "")}, network_mode="host")
    assert targets(build(containers_state([c]), ON_HOST, domain="d.test"), "nas@docker") == {("c1", "127.0.0.1", 5000, "")}


def test_edge_own_container_is_not_routed():
    me = SelfFacts(True, "c1", frozenset({FRONTEND}))
    c = container("c1", "edge", {"traefik.port": "80"}, {"frontend": (FRONTEND, "10.0.1.9")})
    assert build(containers_state([c]), me, domain="d.test").services == ()


def test_swarm_and_containers_together():
    state = swarm_state(
        [service("web", "s1", {"traefik.port": "80"}, ports=[HOST_80])],
        [task("t1", "s1", NODE1, host_ports=[(80, 30001)])],
        containers_read=True,
        containers=[container("c1", "blog", {"traefik.port": "80"}, {"bridge": ("bridgeid", "172.17.0.2")})],
    )
    snap = build(state, ON_HOST, domain="d.test")
    assert [s.name for s in snap.services] == ["blog@docker", "web@docker"]
    assert snap.service("blog@docker").targets == (Target("c1", "172.17.0.2", 80, node_id=NODE1),)
