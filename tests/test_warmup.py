"""
Point 5: no 404 at start-up for routes edge already knows. The config file's
routes answer from the first request; an unknown host gets 503 with
Retry-After until the first Docker sync is published or docker.timeout passed.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from edge.discovery.publisher import SnapshotPublisher
from edge.lifecycle import DockerWarmUp
from edge.rules import Host
from edge.snapshot import Router, Snapshot
from tests.edge_process import Edge, Ports


DOCKER = Snapshot.build(routers=[Router(name="app@docker", rule=Host(("app.test",)),
                                         rule_text="Host(`app.test`)", service="app@docker")])


class _Proxy:
    not_found = "the 404 reply"


class WarmUpTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.publisher = SnapshotPublisher(self.clock, debounce=0.2)
        self.proxy = _Proxy()
        self.warmup = DockerWarmUp(self.publisher, self.clock, 10.0, self.proxy)
        self.warmup.startService()

    def test_unknown_hosts_get_503_until_docker_routes_are_published(self):
        reply = self.proxy.not_found
        self.assertEqual(reply.status, 503)
        self.assertIn((b"Retry-After", b"2"), reply.headers)
        self.publisher.report("file", Snapshot())
        self.clock.advance(0.2)
        self.assertEqual(self.proxy.not_found.status, 503)  # the file's routes are not Docker's
        self.publisher.report("docker", DOCKER)
        self.clock.advance(0.1)
        self.assertEqual(self.proxy.not_found.status, 503)  # reported, not yet published
        self.clock.advance(0.1)
        self.assertEqual(self.proxy.not_found, "the 404 reply")

    def test_a_docker_sync_that_changes_nothing_ends_the_wait_too(self):
        self.publisher.report("docker", Snapshot())  # no routers: nothing new to publish
        self.clock.advance(0.1)
        self.assertEqual(self.proxy.not_found.status, 503)
        self.clock.advance(0.2)
        self.assertEqual(self.proxy.not_found, "the 404 reply")

    def test_docker_timeout_ends_the_wait(self):
        self.clock.advance(9.9)
        self.assertEqual(self.proxy.not_found.status, 503)
        self.clock.advance(0.1)
        self.assertEqual(self.proxy.not_found, "the 404 reply")


def test_a_real_edge_serves_file_routes_at_once_and_holds_unknown_hosts(tmp_path):
    ports = Ports()
    path = tmp_path / "edge.toml"
    route = '[routes.known]\nrule = "Host(`known.test`)"\nbackends = ["http://127.0.0.1:9"]\n'
    # Docker never answers here; a short docker.timeout ends the wait.
    path.write_text(ports.config(route).replace("[docker]\n", "[docker]\ntimeout = 3.0\n"))
    edge = Edge(path, ports)
    try:
        edge.wait_admin()
        status, _ = edge.get("/", port=ports.http, headers={"Host": "known.test"})
        assert status == 502  # routed (the backend at port 9 refuses): not a 404
        request = urllib.request.Request(f"http://127.0.0.1:{ports.http}/", headers={"Host": "later.test"})
        try:
            urllib.request.urlopen(request, timeout=5)
            raise AssertionError("expected 503")
        except urllib.error.HTTPError as e:
            assert e.code == 503 and e.headers["Retry-After"] == "2"
        deadline = time.monotonic() + 30  # bounded: docker.timeout is 3 s
        status = 503
        while status == 503 and time.monotonic() < deadline:
            time.sleep(0.3)
            status, _ = edge.get("/", port=ports.http, headers={"Host": "later.test"})
        assert status == 404
    finally:
        out, _ = edge.stop()
    assert "No Docker routes after 3.0s (docker.timeout)" in out
