"""The snapshot as JSON: what ``python -m edge.discovery`` prints and the admin API serves."""

import json

from edge.discovery.jsonview import snapshot_to_data, to_data
from edge.rules import And, Host, PathPrefix
from edge.snapshot import (
    BackendService,
    Node,
    Problem,
    PublishedPort,
    RedirectScheme,
    Router,
    RouterTLS,
    Snapshot,
    StickyCookie,
    StripPrefix,
    SwarmService,
    Target,
)


def sample() -> Snapshot:
    return Snapshot.build(
        routers=[
            Router(
                name="web@docker",
                rule=And((Host(("web.test",)), PathPrefix(("/api",)))),
                rule_text="Host(`web.test`) && PathPrefix(`/api`)",
                service="web@docker",
                middlewares=(StripPrefix(("/api",)), RedirectScheme("https", permanent=True)),
                tls=RouterTLS(domains=("web.test",)),
                source="web",
            )
        ],
        services=[
            BackendService(
                "web@docker",
                targets=(Target("t2", "fd00::2", 80, node_id="n1"), Target("t1", "10.0.1.5", 80)),
                sticky=StickyCookie(),
            )
        ],
        nodes=[Node("n1", "m1", "manager", "192.0.2.1", leader=True)],
        swarm_services=[SwarmService("web", "s1", published_ports=(PublishedPort(80, 30001, mode="host"),))],
        problems=[Problem("api", "no port", "error", "port")],
    )


def test_snapshot_to_data():
    data = snapshot_to_data(sample())
    json.dumps(data)  # plain data all the way down
    (router,) = data["routers"]
    assert router["rule"] == "Host(`web.test`) && PathPrefix(`/api`)"
    assert router["priority_effective"] == len(router["rule"])
    assert router["middlewares"] == [
        {"type": "StripPrefix", "prefixes": ["/api"]},
        {"type": "RedirectScheme", "scheme": "https", "port": "", "permanent": True},
    ]
    assert router["tls"] == {"cert_resolver": "", "domains": ["web.test"]}
    (service,) = data["services"]
    assert [(t["id"], t["url"]) for t in service["targets"]] == [
        ("t1", "http://10.0.1.5:80"),
        ("t2", "http://[fd00::2]:80"),
    ]
    assert service["sticky"]["name"] == "_edge_sticky"
    assert data["nodes"][0]["leader"] is True
    assert data["swarm_services"][0]["published_ports"] == [
        {"target_port": 80, "published_port": 30001, "protocol": "tcp", "mode": "host"}
    ]
    assert data["problems"] == [{"source": "api", "message": "no port", "level": "error", "label": "port"}]


def test_private_fields_are_left_out():
    snapshot = sample()
    snapshot.service("web@docker")  # fills the private index
    assert "_service_index" not in to_data(snapshot)
