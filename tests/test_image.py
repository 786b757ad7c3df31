"""
The image and the stack, deployed the way a user deploys them.

``make test-image`` builds the image on the test engine (tests/testbed/image.sh)
and sets ``EDGE_IMAGE``; this test deploys ``config/edge-stack.yml`` with
``docker stack deploy`` next to a labelled service on ``frontend`` and checks,
from a client container on that network and from the node through the
published ports, that DNS answers the routed name and HTTP reaches the
service through edge's container.

The stack file is used as written except for what the testbed forces: the
image tag, the Docker socket's path on this node, and the published port
numbers (high free ones, so other tests on the shared engine keep 80/443/53).
"""

from __future__ import annotations

import calendar
import http.client
import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from importlib.metadata import version
from pathlib import Path

import docker
import dns.message
import dns.query
import dns.rdatatype
import pytest

from tests.swarmkit import NETWORK, wait_for

pytestmark = pytest.mark.swarm

REPO = Path(__file__).resolve().parent.parent
IMAGE = os.environ.get("EDGE_IMAGE", "")


def free_port() -> int:
    """A port free for TCP and UDP on every address of this namespace."""
    for _ in range(100):
        port = random.randint(20000, 32000)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t, socket.socket(
                socket.AF_INET, socket.SOCK_DGRAM
            ) as u:
                t.bind(("0.0.0.0", port))
                u.bind(("0.0.0.0", port))
            return port
        except OSError:
            continue
    raise AssertionError("no free port")


def socket_path(url: str) -> str:
    assert url.startswith("unix://"), url
    return url[len("unix://"):]


def render_stack(directory: Path, image: str, ports: dict[int, int], docker_socket: str) -> Path:
    """config/edge-stack.yml with the testbed's image, socket path and ports."""
    text = (REPO / "config" / "edge-stack.yml").read_text()

    def replace(old: str, new: str, count: int) -> None:
        nonlocal text
        assert text.count(old) == count, f"{old!r} appears {text.count(old)} times in the stack file"
        text = text.replace(old, new)

    replace("image: edge:0.1.0", f"image: {image}", 1)
    replace("source: /var/run/docker.sock", f"source: {docker_socket}", 1)
    replace("published: 80,", f"published: {ports[80]},", 1)
    replace("published: 443,", f"published: {ports[443]},", 1)
    replace("published: 53,", f"published: {ports[53]},", 2)
    (directory / "edge-stack.yml").write_text(text)
    shutil.copy(REPO / "config" / "edge-stack.toml", directory / "edge-stack.toml")
    return directory / "edge-stack.yml"


def cli(*args: str, timeout: float = 120) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"docker {' '.join(args)}: {result.stderr}"
    return result.stdout


def http_get(port: int, host: str, path: str = "/", timeout: float = 5) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"Host": host})
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


def dns_a(port: int, name: str, tcp: bool = False) -> list[str]:
    query = dns.message.make_query(name, dns.rdatatype.A)
    send = dns.query.tcp if tcp else dns.query.udp
    answer = send(query, "127.0.0.1", port=port, timeout=3)
    return sorted(r.address for rrset in answer.answer for r in rrset if r.rdtype == dns.rdatatype.A)


def run_in_image(client, image: str, *argv: str) -> str:
    """Run ``argv`` in a throw-away container of ``image`` without network; its output."""
    return client.containers.run(
        image, entrypoint=list(argv[:1]), command=list(argv[1:]), remove=True, network_mode="none"
    ).decode()


def deployed_stack(swarm, image: str):
    """Deploy the stack with ``image`` under a fresh name; yield (name, ports), then remove it."""
    name = f"edgeimg{uuid.uuid4().hex[:8]}"
    ports = {80: free_port(), 443: free_port(), 53: free_port()}
    directory = Path(tempfile.mkdtemp())
    stack_file = render_stack(directory, image, ports, socket_path(swarm.url))
    cli("stack", "deploy", "--prune", "-c", str(stack_file), name)
    yield name, ports
    # Shown by pytest when the test failed.
    for container in swarm.client.containers.list(
        all=True, filters={"label": f"com.docker.stack.namespace={name}"}
    ):
        print(f"--- logs of {container.name}:\n" + container.logs(tail=200).decode(errors="replace"))
    cli("stack", "rm", name)
    client = swarm.client

    def gone():
        return not client.containers.list(all=True, filters={"label": f"com.docker.stack.namespace={name}"})

    wait_for(gone, 60, f"stack {name}'s containers to go")
    for volume in client.volumes.list(filters={"label": f"com.docker.stack.namespace={name}"}):
        try:
            volume.remove(force=True)
        except docker.errors.APIError:
            pass
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def stack(swarm):
    if not IMAGE:
        pytest.skip("no image to test: run `make test-image` (builds it, then runs this test)")
    yield from deployed_stack(swarm, IMAGE)


def routed_web_service(swarm, name: str, host: str, **kwargs) -> str:
    """A one-task web service on ``frontend`` routed by ``Host:host``; the hostname its page names."""
    swarm.create_web_service(
        name,
        labels={"traefik.enable": "true", "traefik.frontend.rule": f"Host:{host}", "traefik.port": "80"},
        publish_host_port=False,
        **kwargs,
    )
    tasks = swarm.wait_running(name, 1)
    return tasks[0]["Status"]["ContainerStatus"]["ContainerID"][:12]


def edge_container(client, stack_name: str):
    running = client.containers.list(filters={"label": f"com.docker.stack.namespace={stack_name}"})
    return running[0] if running else None


def wait_healthy(client, stack_name: str, other_than: str = ""):
    def healthy():
        container = edge_container(client, stack_name)
        if container is None or container.id == other_than:
            return None
        state = container.attrs["State"]
        return container if state.get("Health", {}).get("Status") == "healthy" else None

    return wait_for(healthy, 120, "edge's container to be healthy")


def test_image_is_small_and_labelled(swarm):
    if not IMAGE:
        pytest.skip("no image to test: run `make test-image`")
    image = swarm.client.images.get(IMAGE)
    labels = image.attrs["Config"]["Labels"] or {}
    assert labels.get("org.opencontainers.image.title") == "edge"
    assert labels.get("org.opencontainers.image.version")
    assert image.attrs["Config"]["Healthcheck"]["Test"][-1] == "edge.admin.healthcheck"
    assert image.attrs["Config"]["Entrypoint"][:2] == ["twistd", "--nodaemon"]
    # No compiler and no pip in the final image; the program starts.
    out = run_in_image(
        swarm.client,
        IMAGE,
        "/bin/sh",
        "-c",
        "for t in gcc cc pip; do command -v $t && echo FOUND $t; done; twistd edge --version",
    )
    assert "FOUND" not in out, out
    assert f"edge {version('edge')}" in out
    assert labels["org.opencontainers.image.version"] == version("edge")


def test_stack_routes_dns_and_http_through_edge(swarm, stack, unique):
    stack_name, ports = stack
    client = swarm.client
    host = f"img-{unique}.test"
    backend_hostname = routed_web_service(swarm, f"imgweb-{unique}", host)

    # The image's HEALTHCHECK (python -m edge.admin.healthcheck) passes.
    container = wait_healthy(client, stack_name)

    # From the node, through the host-mode published ports.
    managers = sorted(n.attrs["Status"]["Addr"] for n in client.nodes.list(filters={"role": "manager"}))
    assert wait_for(lambda: dns_a(ports[53], host) or None, 60, "the DNS answer over UDP") == managers
    assert dns_a(ports[53], host, tcp=True) == managers
    status, body = wait_for(
        lambda: (lambda r: r if r[0] == 200 else None)(http_get(ports[80], host)),
        60,
        f"HTTP {host} through edge on :{ports[80]}",
    )
    assert body.strip() == backend_hostname
    status, _ = http_get(ports[80], f"nothing-{unique}.test")
    assert status == 404

    # From a client container on the overlay, to edge's task address there.
    container.reload()
    edge_ip = container.attrs["NetworkSettings"]["Networks"][NETWORK]["IPAddress"]
    probe = swarm.run_container(
        f"imgprobe-{unique}",
        command=[
            "/bin/sh",
            "-c",
            f"busybox nslookup {host} {edge_ip}; echo ---; "
            # stdin stays open a while: busybox nc stops reading at its EOF.
            f"(printf 'GET / HTTP/1.0\\r\\nHost: {host}\\r\\n\\r\\n'; sleep 3) | busybox nc {edge_ip} 80",
        ],
        network=NETWORK,
    )
    result = probe.wait(timeout=60)
    output = probe.logs().decode(errors="replace")
    assert result["StatusCode"] == 0, output
    dns_part, _, http_part = output.partition("---")
    for address in managers:
        assert f"Address: {address}" in dns_part.split(host, 1)[1], output
    assert http_part.strip().startswith("HTTP/1.") and " 200 " in http_part, output
    assert http_part.rstrip().endswith(backend_hostname), output

    # The dashboard inside the container shows the route (admin stays on the
    # container's loopback, as in the stack's config).
    exit_code, api = container.exec_run(
        ["python3", "-c", "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:8081/api/routers').read().decode())"]
    )
    assert exit_code == 0, api
    assert host in api.decode()

    # SIGHUP reaches twistd as the container's PID 1 and re-reads the config.
    container.kill(signal="SIGHUP")
    wait_for(
        lambda: b"Configuration reloaded from /etc/edge/edge.toml" in container.logs(),
        30,
        "the reload log line",
    )
    assert http_get(ports[80], host)[0] == 200


SLOW_CGI = (
    "mkdir -p /tmp/www/cgi-bin && hostname > /tmp/www/index.html && "
    "printf '%s\\n' '#!/bin/sh' 'sleep 6' "
    "\"printf 'Content-Type: text/plain\\\\r\\\\nContent-Length: 10\\\\r\\\\n\\\\r\\\\nslow-done\\\\n'\" "
    "> /tmp/www/cgi-bin/slow && "
    "chmod +x /tmp/www/cgi-bin/slow && exec /bin/httpd -f -p 80 -h /tmp/www"
)


def test_rolling_update_of_edge_finishes_requests_in_flight(swarm, stack, unique):
    """``docker service update --force`` of edge while a slow request is in flight."""
    stack_name, ports = stack
    client = swarm.client
    host = f"slow-{unique}.test"
    routed_web_service(swarm, f"imgslow-{unique}", host, command=["/bin/sh", "-c", SLOW_CGI])
    old = wait_healthy(client, stack_name)
    wait_for(
        lambda: http_get(ports[80], host)[0] == 200, 60, f"{host} routed through edge"
    )

    results: list = []

    finished_at: list[float] = []

    def slow_request():
        try:
            results.append(http_get(ports[80], host, "/cgi-bin/slow", timeout=30))
        except Exception as e:  # reported below
            results.append(e)
        finished_at.append(time.time())

    worker = threading.Thread(target=slow_request)
    worker.start()
    time.sleep(0.5)  # the request is at the backend, which answers after 6 s
    cli("service", "update", "--detach", "--force", f"{stack_name}_edge")

    def old_exited():
        old.reload()
        return old.status == "exited"

    wait_for(old_exited, 60, "the old edge container to exit")
    worker.join(timeout=60)
    assert results and not isinstance(results[0], Exception), results
    assert results[0][0] == 200 and results[0][1].strip() == "slow-done", results

    # The old edge had been told to stop while the request was in flight.
    old.reload()
    lines = old.logs(timestamps=True).decode(errors="replace").splitlines()
    sigterm = [line.split(" ", 1)[0] for line in lines if "Received SIGTERM" in line]
    assert sigterm, "the old edge did not log SIGTERM:\n" + "\n".join(lines[-20:])
    stamp = sigterm[0].rstrip("Z")
    seconds, _, fraction = stamp.partition(".")
    received = calendar.timegm(time.strptime(seconds, "%Y-%m-%dT%H:%M:%S")) + float("0." + (fraction or "0"))
    assert received < finished_at[0], (received, finished_at)
    print(f"edge got SIGTERM {finished_at[0] - received:.2f}s before the in-flight response completed")

    # The new task takes over and routes again.
    new = wait_healthy(client, stack_name, other_than=old.id)
    assert new.id != old.id
    assert wait_for(lambda: http_get(ports[80], host)[0] == 200, 60, "routing by the new edge task")
