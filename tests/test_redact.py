"""Secrets stay inside edge: snapshot JSON, the admin API, problems and logs show ``<hidden>``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from twisted.logger import LogLevel

from edge.logs import event_as_json, make_observer
from edge.redact import redact_text
from edge.rules import Host
from edge.snapshot import BackendService, BasicAuth, Headers, Problem, Router, Snapshot, Target
from tests.admin_stub import AdminStubCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BCRYPT = "$2b$05$FaLE6wPbdi88nFtcIFBXCe01V6q87AUkvGkbtXu..JK50WLE1VvGa"
APR1 = "$apr1$abcdefgh$82JubPF2dQkt1tVfvLnXS."
SHA = "{SHA}EfatjsUqKYSrqv18O1FlA3hcIHI="

SNAPSHOT = Snapshot.build(
    routers=[
        Router(
            name="app@docker", rule=Host(("app.test",)), rule_text="Host(`app.test`)", service="app@docker",
            middlewares=(
                BasicAuth(users=(f"alice:{BCRYPT}", f"bob:{APR1}")),
                Headers(custom_request=(("Authorization", "Bearer s3cr3t-token"), ("X-Team", "ops"))),
            ),
        )
    ],
    services=[BackendService(name="app@docker", targets=(Target(id="t", host="192.0.2.1", port=80),))],
    problems=[Problem("docker", "label traefik.x.users: expected user:hash entries, got 'hunter2'", "error", "x")],
)


class AdminRedactionTests(AdminStubCase):
    SNAPSHOT = SNAPSHOT

    def test_no_secret_in_any_api_section(self):
        for path in ("/api/snapshot", "/api/overview", "/api/problems", "/api/routers"):
            body = self.get(path)
            for secret in (BCRYPT, APR1, "s3cr3t-token", "hunter2"):
                self.assertNotIn(secret, body, path)
        data = json.loads(self.get("/api/snapshot"))
        middlewares = data["routers"][0]["middlewares"]
        self.assertEqual(middlewares[0]["users"], ["alice:<hidden>", "bob:<hidden>"])
        self.assertEqual(middlewares[1]["custom_request"], [["Authorization", "<hidden>"], ["X-Team", "ops"]])


def test_log_lines_hide_hashes_in_both_formats():
    event = {"log_level": LogLevel.warn, "log_namespace": "t", "log_time": 0.0,
             "log_format": "bad entry {entry}", "entry": f"carol:{SHA}"}
    line = event_as_json(event)
    assert SHA not in line and "carol:<hidden>" in line
    lines = []

    class Stream:
        def write(self, text):
            lines.append(text)

        def flush(self):
            pass

    make_observer("text", "info", stream=Stream())(dict(event))
    assert lines and SHA not in "".join(lines)


def test_redact_text_leaves_ordinary_text_alone():
    text = "Published snapshot 3: 2 routers, cost $5"
    assert redact_text(text) == text


def test_python_m_edge_discovery_prints_no_hash(tmp_path):
    path = tmp_path / "edge.toml"
    path.write_text(
        '[routes.nas]\nrule = "Host(`nas.home`)"\nbackends = ["http://192.0.2.9:5000"]\n'
        f"basic_auth = ['alice:{BCRYPT}']\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "edge.discovery", "--config", str(path),
         "--docker-url", "unix:///nonexistent/edge-test.sock", "--timeout", "5"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert done.stdout.strip(), done.stderr
    assert BCRYPT not in done.stdout + done.stderr
    router = json.loads(done.stdout)["routers"][0]
    assert router["middlewares"][0]["users"] == ["alice:<hidden>"]
