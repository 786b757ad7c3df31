"""
The real program: ``twistd -n edge`` with a config file, its dashboard
rendered by headless Chromium, and SIGHUP reloads seen from outside.

Chromium loads the page, runs its script against the live API and dumps the
resulting DOM; the test reads the tables a person would look at.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.swarmkit import wait_for
from tests.ports import free_port

TWISTD = str(Path(sys.executable).parent / "twistd")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


CONFIG = """
[docker]
url = "unix:///nonexistent/edge-test-docker.sock"
[entrypoints.http]
address = "tcp:{http}:interface=127.0.0.1"
[entrypoints.https]
address = "tcp:{https}:interface=127.0.0.1"
tls = true
[admin]
address = "tcp:{admin}:interface=127.0.0.1"
{users}
[dns]
port = {dns}
[routes.nas]
rule = "Host(`nas.home.test`)"
backends = ["http://127.0.0.1:9"]
entry_points = ["http"]
[routes.grafana]
rule = "Host(`grafana.home.test`) && PathPrefix(`/`)"
backends = ["http://127.0.0.1:9", "http://127.0.0.1:10"]
tls = true
"""


class EdgeProcess:
    def __init__(self, directory: Path):
        self.directory = directory
        self.ports = {k: free_port() for k in ("http", "https", "admin", "dns")}
        self.config = directory / "edge.toml"
        self.log = directory / "edge.log"
        self.write_config()
        self.process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "edge", "--config", str(self.config)],
            cwd=directory,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        self.base = f"http://127.0.0.1:{self.ports['admin']}"
        wait_for(lambda: self.get("/healthz")[0] == 200, 30, "edge's /healthz")

    def write_config(self, users: str = "", text: str | None = None) -> None:
        self.config.write_text(text if text is not None else CONFIG.format(users=users, **self.ports))

    def get(self, path: str, headers: dict | None = None) -> tuple[int, bytes]:
        if self.process.poll() is not None:
            raise AssertionError(f"edge exited: {self.log.read_text()[-2000:]}")
        request = urllib.request.Request(self.base + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def hangup(self) -> None:
        self.process.send_signal(signal.SIGHUP)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


@pytest.fixture
def edge(tmp_path):
    process = EdgeProcess(tmp_path)
    yield process
    if process.process.poll() is None:
        process.stop()


class Tables(HTMLParser):
    """Rows of every ``<table id=...>`` (cell texts) and the problem list items."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.problems: list[tuple[str, str]] = []
        self.body_attrs: dict[str, str] = {}
        self._table = None
        self._in_body = False
        self._cell: list[str] | None = None
        self._item: list[str] | None = None
        self._item_class = ""

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "body":
            self.body_attrs = attrs
        elif tag == "table":
            self._table = attrs.get("id")
            self.tables[self._table] = []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.tables[self._table].append([])
        elif tag == "td" and self._in_body:
            self._cell = []
        elif tag == "li" and self._table is None:
            self._item = []
            self._item_class = attrs.get("class", "")
        elif tag in ("div", "a", "span", "code", "b") and self._cell is not None:
            self._cell.append(" ")

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "td" and self._cell is not None:
            self.tables[self._table][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "li" and self._item is not None:
            self.problems.append((self._item_class, " ".join("".join(self._item).split())))
            self._item = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._item is not None:
            self._item.append(data)


def render(url: str, *extra: str) -> str:
    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing (make system-deps installs it)")
        pytest.skip("chromium not installed (apt-get install chromium, or make system-deps)")
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url],
            capture_output=True,
            timeout=120,
        )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    return result.stdout.decode()


def test_dashboard_renders_the_live_api_in_chromium(edge):
    api = wait_for(
        lambda: (lambda view: view if len(view["routers"]) == 2 else None)(
            json.loads(edge.get("/api/overview")[1])
        ),
        30,
        "the file provider's routes in the API",
    )

    dom = render(edge.base + "/", "--virtual-time-budget=10000", "--dump-dom")
    page = Tables()
    page.feed(dom)

    # The script ran and rendered the API's answer, not a template.
    assert page.body_attrs.get("data-generation") == str(api["generation"])
    routers = {row[1].split()[0]: row for row in page.tables["routers"]}
    assert set(routers) == {"grafana@file", "nas@file"}
    grafana = routers["grafana@file"]
    assert grafana[2].startswith("Host(`grafana.home.test`) && PathPrefix(`/`)")
    assert "grafana.home.test" in grafana[2]
    assert grafana[3] == "http https"
    assert grafana[4] == "TLS"  # asked for on the route itself
    assert grafana[6] == "grafana@file"
    assert grafana[7] in ("2 unchecked", "0/2 up")  # port 9/10 answer nothing
    nas = routers["nas@file"]
    assert nas[3] == "http"
    assert nas[4] == "plain HTTP"

    services = {row[1].split()[0]: row for row in page.tables["services"]}
    assert "http://127.0.0.1:9" in services["grafana@file"][2]
    assert "http://127.0.0.1:10" in services["grafana@file"][2]

    dns = {row[0]: row for row in page.tables["dns"]}
    # No swarm node and no [dns] advertise: the DNS server has no address to give.
    assert dns["grafana.home.test"][2] == "no records (no address to answer with yet)"
    assert dns["grafana.home.test"][3].startswith("grafana@file")

    # Problems at the top: the unreachable Docker API, as an error.
    assert page.problems, "no problem shown"
    level, text = page.problems[0]
    assert level == "error"
    assert "discovery docker" in text and "not connected" in text

    entrypoints = {row[0]: row for row in page.tables["entrypoints"]}
    assert entrypoints["https"][2] == "TLS"


def test_sighup_takes_a_good_config_and_rejects_a_bad_one(edge):
    # A bad file: logged, and the running configuration (no auth) stays.
    edge.write_config(text=edge.config.read_text() + "\n[admin]\nbogus = 1\n")
    edge.hangup()
    wait_for(lambda: "Configuration reload rejected" in edge.log.read_text(), 30, "the rejection log line")
    line = next(l for l in edge.log.read_text().splitlines() if "Configuration reload rejected" in l)
    assert "keeping the running configuration" in line
    assert "admin" in line
    assert edge.get("/api/overview")[0] == 200

    # A good file with admin users: the API now asks for credentials.
    digest = base64.b64encode(hashlib.sha1(b"pw").digest()).decode()
    edge.write_config(users=f'users = ["ops:{{SHA}}{digest}"]')
    edge.hangup()
    wait_for(lambda: edge.get("/api/overview")[0] == 401, 30, "the API to require auth")
    token = base64.b64encode(b"ops:pw").decode()
    assert edge.get("/api/overview", {"Authorization": f"Basic {token}"})[0] == 200
    assert edge.get("/healthz")[0] == 200
    assert "Configuration reloaded from" in edge.log.read_text()

    # SIGTERM: a clean shutdown (twistd re-raises the signal that stopped it).
    assert edge.stop() in (0, -signal.SIGTERM)
    assert "Server Shut Down." in edge.log.read_text()


def test_container_health_check_command(edge):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "edge.admin.healthcheck", *args],
            capture_output=True, text=True, timeout=30,
            env={**os.environ, "EDGE_HEALTHCHECK_URL": edge.base + "/healthz"},
        )

    ok = run()
    assert ok.returncode == 0, ok.stdout
    assert ok.stdout.startswith("healthy: ")
    # Nothing listens there: unhealthy, with the reason on one line.
    bad = run(f"http://127.0.0.1:{free_port()}/healthz")
    assert bad.returncode == 1
    assert bad.stdout.startswith("unhealthy: ") and "refused" in bad.stdout.lower()
