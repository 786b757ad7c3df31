"""
edge (the real ``twistd edge``, discovery included) in front of services on
the test swarm: Traefik-labelled services are reachable by host name,
balanced over their replicas, gone soon after removal, and rolling updates
and scale-downs lose no request.

Run inside the test namespace (``make test`` does):
``DOCKER_HOST=unix:///tmp/edge-test/docker.sock ip netns exec edge-test
.venv/bin/python -m pytest tests/test_http_swarm.py``
"""

from __future__ import annotations

import threading
import time

import pytest
import requests

from tests.swarmkit import twistd_edge, wait_for
from tests.ports import free_port
from tests.swarmkit import update_service as update

pytestmark = pytest.mark.swarm

WAIT = 90.0


@pytest.fixture
def edge(swarm, tmp_path):
    port = free_port()
    config = (
        f'[entrypoints.http]\naddress = "tcp:{port}:interface=127.0.0.1"\n'
        '[dns]\nenabled = false\n[admin]\naddress = ""\n'
        f'[docker]\nurl = "{swarm.url}"\nbackend_addressing = "published"\ndebounce = 0.05\n'
        'resync_interval = 30.0\n'
    )
    with twistd_edge(config, tmp_path):
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _status(base, "nothing.test") == 404, 30, "edge listening")
        yield base


def _status(base: str, host: str) -> int | None:
    try:
        return requests.get(base + "/", headers={"Host": host}, timeout=5).status_code
    except requests.RequestException:
        return None


def _page(base: str, host: str) -> str | None:
    r = requests.get(base + "/", headers={"Host": host}, timeout=5)
    return r.text.strip() if r.status_code == 200 else None


class Load:
    """A bounded request loop in a thread, counting failures."""

    def __init__(self, base: str, host: str, limit: int = 20000, seconds: float = 240.0):
        self.base, self.host = base, host
        self.limit, self.seconds = limit, seconds
        self.ok = 0
        self.failures: list[str] = []
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        deadline = time.monotonic() + self.seconds
        with requests.Session() as s:
            for _ in range(self.limit):
                if self._stop.is_set() or time.monotonic() > deadline:
                    break
                try:
                    r = s.get(self.base + "/", headers={"Host": self.host}, timeout=10)
                    if r.status_code == 200:
                        self.ok += 1
                        self.seen.add(r.text.strip())
                    else:
                        self.failures.append(f"{r.status_code} {r.text[:80]!r}")
                except requests.RequestException as e:
                    self.failures.append(repr(e))
                time.sleep(0.005)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(30)


@pytest.mark.parametrize("style", ["v1", "v2"])
def test_labelled_service_reachable_balanced_and_gone(swarm, edge, unique, style):
    name = f"http-{style}-{unique}"
    host = f"{name}.swarm.test"
    if style == "v1":
        labels = {
            "traefik.enable": "true",
            "traefik.frontend.rule": f"Host:{host}",
            "traefik.port": "80",
            "traefik.docker.network": "frontend",
        }
    else:
        labels = {
            "traefik.enable": "true",
            f"traefik.http.routers.{name}.rule": f"Host(`{host}`)",
            f"traefik.http.services.{name}.loadbalancer.server.port": "80",
        }
    service = swarm.create_web_service(name, labels=labels, replicas=2)
    tasks = swarm.wait_running(name, 2, WAIT)
    hostnames = {t["Status"]["ContainerStatus"]["ContainerID"][:12] for t in tasks}
    wait_for(lambda: _status(edge, host) == 200, WAIT, f"{host} through edge")
    # Both replicas answer (each page holds its task's hostname).
    pages = wait_for(
        lambda: (lambda seen: seen if len(seen) == 2 else None)({_page(edge, host) for _ in range(10)}),
        30, "both replicas",
    )
    # Each page is its container's hostname: the short container ID.
    assert pages == hostnames
    service.remove()
    removed = time.monotonic()
    wait_for(lambda: _status(edge, host) == 404, 30, f"{host} gone")
    print(f"{style}: 404 {time.monotonic() - removed:.2f}s after the service was removed")


def test_rolling_update_and_scale_down_lose_no_request(swarm, edge, unique):
    name = f"http-roll-{unique}"
    host = f"{name}.swarm.test"
    labels = {"traefik.frontend.rule": f"Host:{host}", "traefik.port": "80"}
    service = swarm.create_web_service(name, labels=labels, replicas=2)
    before = {t["ID"] for t in swarm.wait_running(name, 2, WAIT)}
    wait_for(lambda: len({_page(edge, host) for _ in range(10)} - {None}) == 2, WAIT, "two replicas routed")

    with Load(edge, host) as load:
        time.sleep(1)
        update(service, lambda s: s.force_update())
        wait_for(
            lambda: (lambda ts: len(ts) == 2 and not ({t["ID"] for t in ts} & before))(swarm.running_tasks(name)),
            WAIT, "both tasks replaced",
        )
        # Until the new tasks are routed too.
        new_pages = wait_for(
            lambda: (lambda seen: seen if len(seen) == 2 else None)({_page(edge, host) for _ in range(10)} - {None}),
            WAIT, "new replicas routed",
        )
        time.sleep(1)
    print(f"force update: {load.ok} requests ok, {len(load.failures)} failed, pages seen {sorted(load.seen)}")
    assert load.ok > 50
    assert load.failures == []
    assert len(new_pages) == 2

    update(service, lambda s: s.scale(3))
    swarm.wait_running(name, 3, WAIT)
    wait_for(lambda: len({_page(edge, host) for _ in range(15)} - {None}) == 3, WAIT, "three replicas routed")
    with Load(edge, host) as load:
        time.sleep(1)
        update(service, lambda s: s.scale(1))
        swarm.wait_running(name, 1, WAIT)
        wait_for(lambda: len({_page(edge, host) for _ in range(10)} - {None}) == 1, WAIT, "one replica routed")
        time.sleep(3)
    print(f"scale 3->1: {load.ok} requests ok, {len(load.failures)} failed")
    assert load.ok > 50
    assert load.failures == []
