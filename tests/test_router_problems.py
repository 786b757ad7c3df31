"""
Routers that do not serve are shown as errors: an unknown entry point (file
routes: a config error; labels: a router problem) and a router the HTTP
layer cannot compile, in the API, the dashboard's data and ``/metrics``.
Also the config errors of points 11 and 12: ``docker.url`` and static routes.
"""

from __future__ import annotations

import json

import pytest
from edge import config as _config
from edge.rules import Host
from edge.snapshot import BackendService, BasicAuth, Router, Snapshot, Target
from tests.admin_stub import AdminStubCase


def _router(name, **kw) -> Router:
    return Router(name=name, rule=Host((f"{name}.test",)), rule_text=f"Host(`{name}.test`)",
                  service="svc@docker", **kw)


SNAPSHOT = Snapshot.build(
    routers=[
        _router("good@docker"),
        _router("typo@docker", entry_points=("htps",)),
        _router("plain@docker", middlewares=(BasicAuth(users=("bob:secret",)),)),
    ],
    services=[BackendService(name="svc@docker", targets=(Target(id="t", host="192.0.2.1", port=80),))],
)


class AdminRouterErrorTests(AdminStubCase):
    SNAPSHOT = SNAPSHOT

    def test_routers_that_do_not_serve_are_errors_with_the_reason(self):
        routers = {r["name"]: r for r in json.loads(self.get("/api/routers"))}
        self.assertEqual(routers["good@docker"]["status"], "ok")
        self.assertEqual(routers["good@docker"]["error"], "")
        typo = routers["typo@docker"]
        self.assertEqual(typo["status"], "error")
        self.assertIn("unknown entry point 'htps' (known: http, https)", typo["error"])
        plain = routers["plain@docker"]
        self.assertEqual(plain["status"], "error")
        self.assertIn("cannot compile", plain["error"])
        self.assertIn("hash format not supported", plain["error"])
        problems = {p["source"]: p for p in json.loads(self.get("/api/problems"))}
        self.assertEqual(problems["typo@docker"]["level"], "error")
        self.assertIn("htps", problems["typo@docker"]["message"])
        self.assertIn("cannot compile", problems["plain@docker"]["message"])

    def test_metrics_flag_the_router_errors(self):
        text = self.get("/metrics")
        self.assertIn('edge_router_error{router="typo@docker"} 1.0', text)
        self.assertIn('edge_router_error{router="plain@docker"} 1.0', text)
        self.assertIn('edge_router_error{router="good@docker"} 0.0', text)


ROUTE = '[routes.app]\nrule = "Host(`app.home`)"\nbackends = ["http://192.0.2.1:80"]\n'


@pytest.mark.parametrize(
    "extra, key, words",
    [
        ('entry_points = ["htps"]\n', "routes.app.entry_points", "unknown entry point 'htps' (known: http, https)"),
        ('basic_auth = ["bob:secret"]\n', "routes.app.basic_auth", "python -m edge.passwd"),
    ],
)
def test_static_route_mistakes_are_config_errors(tmp_path, extra, key, words):
    path = tmp_path / "edge.toml"
    path.write_text(ROUTE + extra)
    with pytest.raises(_config.ConfigError) as caught:
        _config.load(str(path))
    assert f"{path}: {key}: " in str(caught.value)
    assert words in str(caught.value)


def test_a_bad_static_rule_is_a_config_error(tmp_path):
    path = tmp_path / "edge.toml"
    path.write_text(ROUTE.replace("Host(`app.home`)", "Hots(`app.home`)"))
    with pytest.raises(_config.ConfigError) as caught:
        _config.load(str(path))
    assert "routes.app.rule: bad rule 'Hots(`app.home`)'" in str(caught.value)


@pytest.mark.parametrize("url", ["192.168.1.5:2375", "docker.sock", "unix://", "tcpp://host:2375"])
def test_docker_url_needs_a_scheme(tmp_path, url):
    path = tmp_path / "edge.toml"
    path.write_text(f'[docker]\nurl = "{url}"\n')
    with pytest.raises(_config.ConfigError) as caught:
        _config.load(str(path))
    assert "docker.url: expected unix:///path/docker.sock or tcp://host:port" in str(caught.value)


@pytest.mark.parametrize("url", ["unix:///var/run/docker.sock", "tcp://10.0.0.2:2375", "https://proxy:2376"])
def test_good_docker_urls_pass(tmp_path, url):
    path = tmp_path / "edge.toml"
    path.write_text(f'[docker]\nurl = "{url}"\n')
    assert _config.load(str(path)).docker.url == url
