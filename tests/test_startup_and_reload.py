"""
Point 9: one start-up line saying what listens where and how Docker is.
Point 13: a SIGHUP names every change it could not apply (restart needed).
"""

from __future__ import annotations


import signal
import time

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from edge import config as _config
from edge.discovery.publisher import SnapshotPublisher
from edge.lifecycle import StartupSummary, restart_needed
from edge.listeners import ListenerBoard
from tests.edge_process import Edge, Ports


def _load(text: str) -> _config.Config:
    return _config.parse(__import__("tomllib").loads(text), "edge.toml")


BASE = '[entrypoints.web]\naddress = "tcp:8080"\n[http]\nshutdown_grace = 3.0\n[dns]\nttl = 5\n'


def test_listener_and_other_restart_only_changes_are_named():
    old = _load(BASE)
    new = _load(BASE.replace("tcp:8080", "tcp:9090").replace("shutdown_grace = 3.0", "shutdown_grace = 5.0")
                .replace("ttl = 5", "ttl = 30"))
    assert restart_needed(old, new) == [
        "entrypoints.web.address ('tcp:8080' -> 'tcp:9090')",
        "http.shutdown_grace (3.0 -> 5.0)",
    ]  # dns.ttl is applied by the reload, so it is not listed


def test_added_and_removed_entry_points_are_named_once():
    old = _load(BASE)
    new = _load(BASE + '[entrypoints.websecure]\naddress = "tcp:8443"\ntls = true\n')
    assert restart_needed(old, new) == ["entrypoints.websecure (added)"]
    assert restart_needed(new, old) == ["entrypoints.websecure (removed)"]


def test_sighup_with_a_new_listener_address_says_it_needs_a_restart(tmp_path):
    ports = Ports()
    path = tmp_path / "edge.toml"
    path.write_text(ports.config())
    edge = Edge(path, ports)
    try:
        edge.wait_admin()
        route = '[routes.marker]\nrule = "Host(`marker.test`)"\nbackends = ["http://127.0.0.1:9"]\n'
        path.write_text(ports.config(route).replace(f"tcp:{ports.http}:", f"tcp:{ports.http + 1}:"))
        edge.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30  # bounded wait for the reload (a route that shows when done)
        while time.monotonic() < deadline:
            if any(r["name"] == "marker@file" for r in edge.api("routers")):
                break
            time.sleep(0.2)
    finally:
        out, err = edge.stop()
    lines = [line for line in out.splitlines() if "take effect only on restart" in line]
    assert len(lines) == 1, out
    assert f"entrypoints.web.address ('tcp:{ports.http}:interface=127.0.0.1' -> 'tcp:{ports.http + 1}:" in lines[0]


class SummaryTests(SynchronousTestCase):
    def test_one_line_with_listeners_tls_dns_admin_and_docker(self):
        clock = Clock()
        config = _load(
            '[docker]\nurl = "unix:///run/docker.sock"\ntimeout = 5.0\n'
            '[entrypoints.web]\naddress = "tcp:80"\n[entrypoints.websecure]\naddress = "tcp:443"\ntls = true\n'
        )
        board = ListenerBoard()

        class Port:
            connected = 1

        board.expect("http", "web", "tcp:80", lambda: Port())
        board.expect("https", "websecure", "tcp:443", lambda: None)
        publisher = SnapshotPublisher(clock, debounce=0)
        summary = StartupSummary(config, board, publisher, clock)
        summary.startService()
        clock.advance(1)
        self.assertEqual(summary.line, "")  # still waiting for Docker
        publisher.report_error("docker", "connection refused")
        clock.advance(1)
        self.assertEqual(
            summary.line,
            "web tcp:80 (TLS off); websecure tcp:443 NOT LISTENING (TLS on);"
            " DNS 127.0.0.1 port 5353 UDP+TCP; admin tcp:8081:interface=127.0.0.1;"
            " Docker unix:///run/docker.sock unreachable (connection refused); serving the config file's routes",
        )

    def test_docker_silent_past_its_timeout_is_said(self):
        clock = Clock()
        config = _load('[docker]\nurl = "tcp://10.0.0.9:2375"\ntimeout = 2.0\n')
        summary = StartupSummary(config, ListenerBoard(), SnapshotPublisher(clock, debounce=0), clock)
        summary.startService()
        clock.advance(2.5)
        self.assertIn("Docker tcp://10.0.0.9:2375 no answer within 2s; still trying", summary.line)



