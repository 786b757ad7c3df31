"""
Forward auth from labels on the real test swarm: a busybox web service with
Traefik v2 and v1 forwardauth labels, the real ``twistd edge`` (discovery
included) in front, and the forward-auth server of
tests/forward_auth_server.py on loopback.  Before issue 14 such routers were
dropped (404); now each request is checked.

Run inside the test namespace (``make test`` does).
"""

from __future__ import annotations

import pytest
import requests

from tests.swarmkit import wait_for
from tests.test_http_swarm import edge  # noqa: F401 -- the fixture: a real twistd edge on the swarm
from tests.test_middlewares_forwardauth import AuthServer

pytestmark = pytest.mark.swarm

WAIT = 90.0


@pytest.fixture
def auth():
    a = AuthServer()
    yield a
    a.stop()


def _get(base: str, host: str, **headers):
    try:
        return requests.get(base + "/", headers={"Host": host, **headers}, timeout=5)
    except requests.RequestException:
        return None


@pytest.mark.parametrize("style", ["v1", "v2"])
def test_forward_auth_labels_on_the_swarm(swarm, edge, auth, unique, style):
    name = f"fa-{style}-{unique}"
    host = f"{name}.swarm.test"
    if style == "v1":
        labels = {
            "traefik.enable": "true",
            "traefik.frontend.rule": f"Host:{host}",
            "traefik.port": "80",
            "traefik.frontend.auth.forward.address": auth.address(),
            "traefik.frontend.auth.forward.authResponseHeaders": "Remote-User",
        }
    else:
        labels = {
            "traefik.enable": "true",
            f"traefik.http.routers.{name}.rule": f"Host(`{host}`)",
            f"traefik.http.routers.{name}.middlewares": f"{name}-auth",
            f"traefik.http.middlewares.{name}-auth.forwardauth.address": auth.address(),
            f"traefik.http.middlewares.{name}-auth.forwardauth.authResponseHeaders": "Remote-User",
            f"traefik.http.services.{name}.loadbalancer.server.port": "80",
        }
    swarm.create_web_service(name, labels=labels, replicas=1)
    tasks = swarm.wait_running(name, 1, WAIT)
    page = tasks[0]["Status"]["ContainerStatus"]["ContainerID"][:12]
    # Served with the check: a 401 from the auth server, never the page, until the token is right.
    last = []

    def checked():
        r = _get(edge, host)
        last[:] = [r.status_code, r.text[:200]] if r is not None else ["no answer"]
        return (r,) if r is not None and r.status_code == 401 else None  # a 401 Response is falsy

    try:
        (denied,) = wait_for(checked, WAIT, f"{host} checked by the auth server")
    except AssertionError as e:
        raise AssertionError(f"{e}; last answer: {last}") from None
    assert denied.text == "denied by auth\n"
    seen = auth.last_headers()
    assert seen["x-forwarded-host"] == [host] and seen["x-forwarded-uri"] == ["/"]
    # The check comes before the targets: wait for the task's address to be in the snapshot too.
    (allowed,) = wait_for(
        lambda: (lambda r: (r,) if r is not None and r.status_code == 200 else None)(
            _get(edge, host, Authorization="Bearer good")),
        WAIT, f"{host} served once the token is right")
    assert allowed.text.strip() == page
