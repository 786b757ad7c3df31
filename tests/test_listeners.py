"""
Health that does not lie: a configured listener that cannot bind stops
start-up in one line; one that is not listening later fails ``/healthz``.
"""

from __future__ import annotations

import json
import socket

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from edge.admin.service import AdminService
from edge.config import AdminConfig, Config
from edge.discovery.publisher import SnapshotPublisher
from edge.listeners import ListenerBoard
from tests.edge_process import Ports, run_to_exit


def _held(kind: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", port))
    if kind == "tcp":
        sock.listen()
    return sock


@pytest.mark.parametrize(
    "which, kind, words",
    [
        ("http", "tcp", "HTTP entry point web cannot listen on tcp:"),
        ("dns", "udp", "DNS cannot listen on 127.0.0.1 port"),
        ("dns", "tcp", "DNS cannot listen on 127.0.0.1 port"),
        ("admin", "tcp", "admin cannot listen on tcp:"),
    ],
)
def test_a_port_in_use_stops_start_up_in_one_line(tmp_path, which, kind, words):
    ports = Ports()
    path = tmp_path / "edge.toml"
    path.write_text(ports.config())
    held = _held(kind, getattr(ports, which))
    try:
        done = run_to_exit(path)
    finally:
        held.close()
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if "cannot listen" in line]
    assert len(lines) == 1, output
    assert words in lines[0] and "Address already in use" in lines[0], lines


def test_a_dns_interface_this_host_does_not_have_is_one_line(tmp_path):
    ports = Ports()
    path = tmp_path / "edge.toml"
    # 192.0.2.0/24 is TEST-NET-1: no interface here has it.
    path.write_text(ports.config().replace('interfaces = ["127.0.0.1"]', 'interfaces = ["192.0.2.77"]'))
    done = run_to_exit(path)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "Traceback" not in output, output
    assert "DNS cannot listen on 192.0.2.77 port" in output, output
    assert "Cannot assign requested address" in output, output


class _Port:
    """What Twisted's ports expose: ``connected`` is cleared when the port closes."""

    connected = 1


class LaterFailureTests(SynchronousTestCase):
    def setUp(self):
        clock = MemoryReactorClock()
        self.board = ListenerBoard()
        self.port = _Port()
        self.board.expect("http", "web", "tcp:80", lambda: self.port)
        self.board.expect("https", "websecure", "tcp:443", lambda: None, lambda: "wants TLS but no context")
        self.admin = AdminService(Config(admin=AdminConfig(address="tcp:0")),
                                  SnapshotPublisher(clock, debounce=0), clock, self.board)
        self.admin.privilegedStartService()

    def healthz(self):
        request = DummyRequest([b"healthz"])
        body = self.admin.site.resource.getChildWithDefault(b"healthz", request).render(request)
        return request.responseCode or 200, json.loads(body)

    def test_a_listener_that_is_not_listening_fails_healthz_and_is_a_problem(self):
        code, body = self.healthz()
        self.assertEqual(code, 503)
        self.assertEqual(body["status"], "fail")
        self.assertEqual(body["listeners_down"], ["websecure (tcp:443): wants TLS but no context"])
        view = self.admin.overview()
        problems = [p for p in view["problems"] if p["source"] == "listener websecure"]
        self.assertEqual(len(problems), 1)
        self.assertEqual(problems[0]["level"], "error")
        self.assertEqual(
            {l["name"]: l["state"] for l in view["listeners"]},
            {"web": "listening", "websecure": "not listening", "admin": "listening"},
        )
        self.port.connected = 0  # the web port closes
        code, body = self.healthz()
        self.assertEqual(code, 503)
        self.assertEqual(len(body["listeners_down"]), 2)

    def test_all_listening_is_healthy(self):
        board = ListenerBoard()
        board.expect("http", "web", "tcp:80", lambda: self.port)
        self.assertEqual(board.failed(), ())
