"""
Logs that work with the usual tools: flat JSON lines (``jq`` reads every
one), access-log lines as their own objects, no ``[stdout#info]`` prefix in
text mode, and none of Twisted's per-port/per-query chatter at ``info``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from edge.logs import demote_noise, event_as_json
from tests.edge_process import Edge, Ports
from tests.ports import free_port

NOISE = ("starting on", "Port", "Starting protocol", "Stopping protocol", "Starting factory")


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def backend():
    server = HTTPServer(("127.0.0.1", free_port()), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _run(tmp_path, backend, log_format, access_format="json"):
    ports = Ports()
    extra = (
        f'[log]\nformat = "{log_format}"\n'
        f'[http]\naccess_log = "-"\naccess_log_format = "{access_format}"\n'
        f'[routes.hello]\nrule = "Host(`hello.test`)"\nbackends = ["http://127.0.0.1:{backend}"]\n'
    )
    path = tmp_path / "edge.toml"
    path.write_text(ports.config(extra))
    edge = Edge(path, ports)
    try:
        edge.wait_admin()
        status, body = edge.get("/", port=ports.http, headers={"Host": "hello.test"})
        assert (status, body) == (200, "hello\n")
        # A forwarded DNS query (upstream 127.0.0.1:9 answers nothing): Twisted
        # would log three lines per query at info.
        if shutil.which("dig"):
            subprocess.run(
                ["dig", "@127.0.0.1", "-p", str(ports.dns), "+tries=1", "+time=3", "example.org"],
                capture_output=True, timeout=20,
            )
        # The access log is flushed once a second; wait for the admin to answer twice.
        edge.get("/healthz")
    finally:
        out, err = edge.stop()
    return out, err


def test_json_logs_are_flat_objects_and_access_lines_their_own(tmp_path, backend):
    out, err = _run(tmp_path, backend, "json")
    lines = [line for line in out.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    access = [r for r in records if "status" in r and "router" in r]
    assert len(access) == 1, out
    assert access[0]["host"] == "hello.test" and access[0]["status"] == 200
    logs = [r for r in records if r not in access]
    assert logs
    for record in logs:
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", record["time"]), record
        assert record["level"] in ("debug", "info", "warn", "error", "critical"), record
        assert isinstance(record["namespace"], str) and isinstance(record["message"], str)
        assert "log_level" not in record and "unpersistable" not in json.dumps(record)
    published = [r for r in logs if r["message"].startswith("Published snapshot")]
    assert published and published[0]["routers"] == 1  # the event's own fields
    assert not [r for r in logs if any(n in r["message"] for n in NOISE)], out
    if shutil.which("jq"):
        done = subprocess.run(["jq", "-c", "select(.level == \"info\") | .message"],
                              input=out, capture_output=True, text=True, timeout=20)
        assert done.returncode == 0, done.stderr
        assert any("Published snapshot" in line for line in done.stdout.splitlines())


def test_json_logs_keep_standard_output_json_whatever_the_access_format(tmp_path, backend):
    out, err = _run(tmp_path, backend, "json", access_format="common")
    records = [json.loads(line) for line in out.splitlines() if line.strip()]  # jq reads every line
    assert [r["status"] for r in records if "router" in r and "status" in r] == [200]
    assert any("writing it as JSON lines" in r.get("message", "") for r in records)


def test_text_logs_carry_no_stdout_prefix_and_no_twisted_chatter(tmp_path, backend):
    out, err = _run(tmp_path, backend, "text")
    assert "[stdout#info]" not in out, out
    access = [line for line in out.splitlines() if line.startswith("{")]
    assert len(access) == 1 and json.loads(access[0])["status"] == 200, out
    chatter = [line for line in out.splitlines() if any(n in line for n in NOISE)]
    assert chatter == [], chatter


def test_a_failure_becomes_a_traceback_string():
    log = Logger(namespace="edge.test")
    events = []
    log.observer = events.append
    try:
        1 / 0
    except ZeroDivisionError:
        log.failure("Sum failed for {who}", Failure(), who="bob")
    record = json.loads(event_as_json(events[0]))
    assert record["level"] == "critical" and record["namespace"] == "edge.test"
    assert record["message"] == "Sum failed for bob" and record["who"] == "bob"
    assert "ZeroDivisionError" in record["traceback"] and isinstance(record["traceback"], str)


@pytest.mark.parametrize(
    "message",
    ["ProxyFactory starting on 80", "ProxyFactory (TLS) starting on 8443", "(UDP Port 43121 Closed)", "Starting protocol <x>", "Stopping factory <y>"],
)
def test_twisted_chatter_is_demoted_to_debug(message):
    event = {"log_level": LogLevel.info, "log_format": "{log_text}", "log_text": message}
    assert demote_noise(event)["log_level"] is LogLevel.debug
    kept = {"log_level": LogLevel.info, "log_format": "DNS listening on 127.0.0.1 port 53"}
    assert demote_noise(kept)["log_level"] is LogLevel.info
