"""A real ``twistd -n edge`` on loopback ports, for tests of what an admin sees."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from tests.ports import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


@dataclass
class Ports:
    http: int = field(default_factory=free_port)
    admin: int = field(default_factory=free_port)
    dns: int = field(default_factory=free_port)

    def config(self, extra: str = "", docker: str = "unix:///nonexistent/edge-test.sock") -> str:
        """A config on these loopback ports, Docker unreachable unless ``docker`` says otherwise."""
        return (
            f'[docker]\nurl = "{docker}"\n'
            f'[entrypoints.web]\naddress = "tcp:{self.http}:interface=127.0.0.1"\n'
            f'[admin]\naddress = "tcp:{self.admin}:interface=127.0.0.1"\n'
            f'[dns]\nport = {self.dns}\ninterfaces = ["127.0.0.1"]\nupstream = ["127.0.0.1:9"]\n'
            + extra
        )


def run_to_exit(config_path, *flags, timeout: float = 60) -> subprocess.CompletedProcess:
    """Start edge and wait for it to end by itself (start-up failures)."""
    return subprocess.run(
        [TWISTD, "-n", "--pidfile=", "edge", "--config", str(config_path), *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )


class Edge:
    """A running edge; ``stop()`` returns (stdout, stderr)."""

    def __init__(self, config_path, ports: Ports, *flags):
        self.ports = ports
        self.proc = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "edge", "--config", str(config_path), *flags],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def get(self, path: str, port: int | None = None, headers=None, timeout: float = 5):
        """(status, body) of a GET to edge on loopback."""
        url = f"http://127.0.0.1:{port or self.ports.admin}{path}"
        request = urllib.request.Request(url, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def wait_admin(self, deadline: float = 30.0) -> None:
        """Wait (bounded) until the admin port answers."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                raise AssertionError(f"edge exited {self.proc.returncode}: {out}\n{err}")
            try:
                self.get("/healthz", timeout=1)
                return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("edge's admin port never answered")

    def api(self, section: str):
        status, body = self.get(f"/api/{section}")
        assert status == 200, body
        return json.loads(body)

    def stop(self) -> tuple[str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.communicate()
