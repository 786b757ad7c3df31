"""
Small helpers around the docker SDK for tests on the real test swarm.

Everything a test creates goes through :class:`Swarm` so it is removed at the
end of the session even when the test fails.
"""

from __future__ import annotations

import contextlib
import time

import docker
from docker.types import EndpointSpec, ServiceMode

IMAGE = "edge-test/busybox:1"
NETWORK = "frontend"


class Swarm:
    def __init__(self, client: docker.DockerClient, url: str):
        self.client = client
        self.url = url
        self._services: list[str] = []
        self._containers: list[str] = []
        self._networks: list[str] = []

    @classmethod
    def connect(cls, url: str) -> "Swarm | None":
        try:
            client = docker.DockerClient(base_url=url, timeout=30)
            info = client.info()
        except Exception:
            return None
        if info.get("Swarm", {}).get("LocalNodeState") != "active":
            return None
        return cls(client, url)

    def create_web_service(
        self,
        name: str,
        labels: dict[str, str] | None = None,
        replicas: int = 1,
        networks: tuple[str, ...] = (NETWORK,),
        publish_host_port: bool = True,
        command: list[str] | None = None,
    ):
        """A busybox httpd service whose page names the task's hostname.

        With ``publish_host_port`` each task publishes port 80 in host mode on
        its own random node port, which edge reaches when running outside the
        overlay (the testbed has no IPVS, so ingress ports are dead).
        """
        endpoint = None
        if publish_host_port:
            endpoint = EndpointSpec(
                ports=[{"Protocol": "tcp", "TargetPort": 80, "PublishMode": "host"}]
            )
        command = command or [
            "/bin/sh",
            "-c",
            "mkdir -p /tmp/www && hostname > /tmp/www/index.html && "
            "exec /bin/httpd -f -p 80 -h /tmp/www",
        ]
        service = self.client.services.create(
            IMAGE,
            command=command,
            name=name,
            labels=labels or {},
            networks=list(networks),
            mode=ServiceMode("replicated", replicas=replicas),
            endpoint_spec=endpoint,
        )
        self._services.append(service.id)
        return service

    def run_container(self, name: str, labels: dict[str, str] | None = None, **kwargs):
        container = self.client.containers.run(
            IMAGE,
            kwargs.pop("command", ["/bin/httpd", "-f", "-p", "80", "-h", "/www"]),
            name=name,
            labels=labels or {},
            detach=True,
            **kwargs,
        )
        self._containers.append(container.id)
        return container

    def running_tasks(self, service_name: str) -> list[dict]:
        service = self.client.services.get(service_name)
        return [
            t
            for t in service.tasks()
            if t["Status"]["State"] == "running" and t["DesiredState"] == "running"
        ]

    def wait_running(self, service_name: str, count: int, timeout: float = 60.0) -> list[dict]:
        return wait_for(
            lambda: (lambda ts: ts if len(ts) == count else None)(
                self.running_tasks(service_name)
            ),
            timeout,
            f"{count} running tasks of {service_name}",
        )

    def remove_service(self, name_or_id: str) -> None:
        try:
            self.client.services.get(name_or_id).remove()
        except docker.errors.NotFound:
            pass

    def cleanup(self) -> None:
        for sid in self._services:
            self.remove_service(sid)
        for cid in self._containers:
            try:
                self.client.containers.get(cid).remove(force=True)
            except docker.errors.NotFound:
                pass
        for nid in self._networks:
            try:
                self.client.networks.get(nid).remove()
            except docker.errors.NotFound:
                pass


def update_service(service, action):
    """Apply ``action`` to a fresh view of ``service``, again if the swarm moved under us."""
    for _ in range(10):
        service.reload()
        try:
            return action(service)
        except docker.errors.APIError as e:
            if "out of sequence" not in str(e):
                raise
    raise AssertionError(f"could not update {service.name}: always out of sequence")


@contextlib.contextmanager
def twistd_edge(config_text: str, workdir):
    """A real ``twistd -n edge`` with this config, stopped (and its log tail printed) on exit."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    workdir = Path(workdir)
    config = workdir / "edge.toml"
    config.write_text(config_text)
    log = open(workdir / "edge.log", "w")
    process = subprocess.Popen(
        [str(root / ".venv/bin/twistd"), "-n", "--pidfile=", "edge", "--config", str(config)],
        cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        print((workdir / "edge.log").read_text()[-3000:])


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``.

    This bounds a wait; it is never the thing a test asserts.
    """
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
        except Exception as e:  # the engine may be restarting
            last_error = e
            result = None
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_error})" if last_error else ""))


class DiscoveryWatch:
    """
    ``python -m edge.discovery --watch`` as a subprocess, its JSON lines
    collected by a thread as they come.

    Documents are ``{"kind": "snapshot", "generation", "snapshot"}`` and
    ``{"kind": "status", "connected", "error", "generation"}``.
    """

    def __init__(self, docker_url: str, workdir: str, config: str | None = None, log_level: str = "info"):
        import os
        import subprocess
        import sys
        import threading

        args = [sys.executable, "-m", "edge.discovery", "--watch", "--docker-url", docker_url,
                "--log-level", log_level]
        if config is not None:
            path = os.path.join(workdir, "discovery.toml")
            with open(path, "w") as f:
                f.write(config)
            args += ["--config", path]
        self.log_path = os.path.join(workdir, "discovery.log")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        self.docs: list[dict] = []
        self.received_at: list[float] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        import json

        for line in self.proc.stdout:
            doc = json.loads(line)
            with self._cond:
                self.docs.append(doc)
                self.received_at.append(time.monotonic())
                self._cond.notify_all()

    def latest_snapshot(self) -> dict | None:
        with self._cond:
            for doc in reversed(self.docs):
                if doc["kind"] == "snapshot":
                    return doc["snapshot"]
        return None

    def wait_snapshot(self, predicate, timeout: float, what: str) -> dict:
        """Wait until the newest snapshot satisfies ``predicate``; return it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                snapshots = [d for d in self.docs if d["kind"] == "snapshot"]
                if snapshots and predicate(snapshots[-1]["snapshot"]):
                    return snapshots[-1]["snapshot"]
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(
                        f"timed out after {timeout}s waiting for {what}; last snapshot:"
                        f" {snapshots[-1]['snapshot'] if snapshots else None}; log: {self.log_tail()}"
                    )
                self._cond.wait(min(left, 0.5))

    def wait_status(self, connected: bool, after: int, timeout: float) -> int:
        """Index of the first status document at or after ``after`` with this ``connected``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(after, len(self.docs)):
                    doc = self.docs[i]
                    if doc["kind"] == "status" and doc["connected"] is connected:
                        return i
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(
                        f"timed out after {timeout}s waiting for connected={connected};"
                        f" log: {self.log_tail()}"
                    )
                self._cond.wait(min(left, 0.5))

    def log_tail(self, lines: int = 15) -> str:
        self._log.flush()
        with open(self.log_path) as f:
            return "".join(f.readlines()[-lines:])

    def stop(self) -> None:
        import signal
        import subprocess

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._thread.join(5)
        self._log.close()


def find_service(snapshot: dict, name: str) -> dict | None:
    """A service of a JSON snapshot by name (``web@docker``)."""
    return next((s for s in snapshot["services"] if s["name"] == name), None)


def target_ids(snapshot: dict, name: str) -> set[str] | None:
    service = find_service(snapshot, name)
    return None if service is None else {t["id"] for t in service["targets"]}
