"""
Issue 11's security points end to end: a real ``twistd edge`` (discovery
included) in front of a real swarm service and real compose-labelled
containers on the test engine.

- Point 1: a Traefik 1.7 service with root basic auth, root entry point and
  root port and two segments: both segments ask for the password, only on
  the root's entry point, and reach the root's port.
- Point 3: two compose projects that both have a ``web`` service stay two
  services: each host reaches its own project's container only.

Run inside the test namespace (``make test NETNS=... PYTEST_ARGS=tests/test_traefik_compat_swarm.py``).
"""

from __future__ import annotations

import base64
import hashlib

import pytest
import requests
from docker.types import EndpointSpec, ServiceMode

from tests.ports import free_port
from tests.swarmkit import IMAGE, NETWORK, twistd_edge, wait_for

pytestmark = pytest.mark.swarm

WAIT = 90.0
PASSWORD = "s3cret-h3"
USERS = "ops:{SHA}" + base64.b64encode(hashlib.sha1(PASSWORD.encode()).digest()).decode()


@pytest.fixture
def edge(swarm, tmp_path):
    web, other = free_port(), free_port()
    config = (
        f'[entrypoints.web]\naddress = "tcp:{web}:interface=127.0.0.1"\n'
        f'[entrypoints.other]\naddress = "tcp:{other}:interface=127.0.0.1"\n'
        '[dns]\nenabled = false\n[admin]\naddress = ""\n'
        f'[docker]\nurl = "{swarm.url}"\nbackend_addressing = "auto"\ncontainers = "true"\n'
        'domain = "compose.test"\ndebounce = 0.05\nresync_interval = 30.0\n'
    )
    with twistd_edge(config, tmp_path):
        bases = {"web": f"http://127.0.0.1:{web}", "other": f"http://127.0.0.1:{other}"}
        wait_for(lambda: _get(bases["web"], "nothing.test") == (404, ""), 30, "edge listening")
        yield bases


def _get(base: str, host: str, auth=None):
    try:
        r = requests.get(base + "/", headers={"Host": host}, auth=auth, timeout=5)
    except requests.RequestException:
        return None
    return r.status_code, (r.text.strip() if r.status_code == 200 else "")


def test_v1_segments_inherit_root_auth_entry_point_and_port(swarm, edge, unique):
    name = f"seg-{unique}"
    a, b = f"a-{unique}.swarm.test", f"b-{unique}.swarm.test"
    labels = {
        "traefik.frontend.auth.basic.users": USERS,
        "traefik.frontend.entryPoints": "web",
        "traefik.port": "8080",
        "traefik.a.frontend.rule": f"Host:{a}",
        "traefik.b.frontend.rule": f"Host:{b}",
    }
    # Two listeners with different pages: the root's traefik.port (8080) must be used.
    command = [
        "/bin/sh", "-c",
        "mkdir -p /tmp/p80 /tmp/p8080 && echo port80 > /tmp/p80/index.html &&"
        " echo port8080 > /tmp/p8080/index.html && httpd -p 8080 -h /tmp/p8080 &&"
        " exec httpd -f -p 80 -h /tmp/p80",
    ]
    swarm.client.services.create(
        IMAGE, command=command, name=name, labels=labels, networks=[NETWORK],
        mode=ServiceMode("replicated", replicas=1),
        endpoint_spec=EndpointSpec(ports=[
            {"Protocol": "tcp", "TargetPort": 80, "PublishMode": "host"},
            {"Protocol": "tcp", "TargetPort": 8080, "PublishMode": "host"},
        ]),
    )
    swarm._services.append(name)
    swarm.wait_running(name, 1, WAIT)
    good = ("ops", PASSWORD)
    for host in (a, b):
        wait_for(lambda: _get(edge["web"], host, good) == (200, "port8080"), WAIT, f"{host} with the password")
    for host in (a, b):
        assert _get(edge["web"], host) == (401, ""), host
        assert _get(edge["web"], host, ("ops", "wrong")) == (401, ""), host
        # the root's entry point list binds every segment: nothing on "other"
        assert _get(edge["other"], host, good) == (404, ""), host


@pytest.mark.parametrize("style", ["v2", "v1"])
def test_two_compose_projects_with_a_web_service_stay_apart(swarm, edge, unique, style):
    # No router or service names in the labels: Traefik's names
    # <service>-<project> (v2/v3) and its default rule
    # Host:<service>.<project>.<domain> (v1) keep the two projects apart.
    hosts = {}
    for project in (f"shop{unique}{style}", f"blog{unique}{style}"):
        command = ["/bin/sh", "-c", f"mkdir -p /tmp/w && echo {project} > /tmp/w/index.html && exec httpd -f -p 80 -h /tmp/w"]
        labels = {"com.docker.compose.project": project, "com.docker.compose.service": "web"}
        if style == "v2":
            labels["traefik.enable"] = "true"
            hosts[project] = f"web-{project}.compose.test"
        else:
            labels["traefik.port"] = "80"
            hosts[project] = f"web.{project}.compose.test"
        # The published port makes 80 the container's only exposed port.
        swarm.run_container(f"{project}-web-1", labels=labels, command=command, ports={"80/tcp": None})
    for project, host in hosts.items():
        wait_for(lambda: _get(edge["web"], host) == (200, project), WAIT, f"{host} routed")
    # Each host answers with its own project only (a merged balancer would alternate).
    for project, host in hosts.items():
        assert {_get(edge["web"], host) for _ in range(10)} == {(200, project)}
