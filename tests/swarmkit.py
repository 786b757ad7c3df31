"""
Small helpers around the docker SDK for tests on the real test swarm.

Everything a test creates goes through :class:`Swarm` so it is removed at the
end of the session even when the test fails.
"""

from __future__ import annotations

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
