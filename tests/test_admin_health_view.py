"""
Point 4: the dashboard's data says what is known about each target (checked
up, checked down, refusing connections with no check, unchecked), lists the
hosts file's names, and links hosts with the entry point's port.
"""

from __future__ import annotations

from twisted.application.service import MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from edge.admin.service import AdminService
from edge.admin.view import Facts, overview
from edge.config import Config, DNSConfig, EntryPoint
from edge.discovery.publisher import SnapshotPublisher
from edge.dns.server import DNSService
from edge.rules import Host
from edge.snapshot import BackendService, HealthCheck, Router, Snapshot, Target

CONFIG = Config(entrypoints=(EntryPoint("web", "tcp:8080"), EntryPoint("websecure", "tcp:443", tls=True)))


def _target(tid):
    return Target(id=tid, host="192.0.2.1", port=80)


SNAPSHOT = Snapshot.build(
    routers=[
        Router(name="app@docker", rule=Host(("app.test",)), rule_text="Host(`app.test`)", service="app@docker"),
        Router(name="dead@docker", rule=Host(("dead.test",)), rule_text="Host(`dead.test`)", service="dead@docker"),
    ],
    services=[
        BackendService(name="app@docker", targets=(_target("a1"), _target("a2"), _target("a3"), _target("a4")),
                       health_check=HealthCheck(path="/health")),
        BackendService(name="dead@docker", targets=(_target("d1"), _target("d2"))),
    ],
)
HEALTH = {("app@docker", "a1"): True, ("app@docker", "a2"): False, ("app@docker", "a3"): "failing",
          ("dead@docker", "d1"): "failing", ("dead@docker", "d2"): "failing"}


class HealthViewTests(SynchronousTestCase):
    def setUp(self):
        facts = Facts(health=lambda service, t: HEALTH.get((service, t.id)))
        self.view = overview(SNAPSHOT, CONFIG, facts)
        self.services = {s["name"]: s for s in self.view["services"]}

    def test_each_target_says_what_is_known(self):
        app = self.services["app@docker"]
        self.assertEqual([t["health"] for t in app["targets"]], ["up", "down", "failing", "unknown"])
        self.assertEqual(
            (app["targets_up"], app["targets_checked_down"], app["targets_failing"], app["targets_unchecked"]),
            (1, 1, 1, 1),
        )
        summary = self.view["summary"]
        self.assertEqual((summary["targets"], summary["targets_up"], summary["targets_down"],
                          summary["targets_unchecked"]), (6, 1, 4, 1))

    def test_a_dead_backend_without_a_check_is_not_said_to_fail_a_check(self):
        problems = {p["source"]: p["message"] for p in self.view["problems"]}
        self.assertEqual(problems["dead@docker"],
                         "every target is down: 2 refusing connections (no health check configured)")
        self.assertNotIn("health check", problems["dead@docker"].replace("no health check configured", ""))
        self.assertEqual(problems["app@docker"],
                         "2 of 4 targets down: 1 failing the health check, 1 refusing connections")

    def test_host_links_keep_the_entry_points_port(self):
        app = next(r for r in self.view["routers"] if r["name"] == "app@docker")
        self.assertEqual(app["urls"], ["http://app.test:8080/", "https://app.test/"])


class HostsFileNamesTests(SynchronousTestCase):
    def test_the_hosts_files_names_are_in_the_dns_table(self):
        import os
        import tempfile

        directory = tempfile.mkdtemp()
        self.addCleanup(__import__("shutil").rmtree, directory)
        path = os.path.join(directory, "hosts")
        with open(path, "w") as f:
            f.write("192.168.1.5 nas.home nas\n")
        reactor = MemoryReactorClock()
        # No interfaces: nothing to bind, the rest of the DNS service runs as in edge.
        config = Config(dns=DNSConfig(hosts_file=path, upstream=("127.0.0.1:9",), zone="", interfaces=()))
        publisher = SnapshotPublisher(reactor, debounce=0)
        root = MultiService()
        admin = AdminService(config, publisher, reactor)
        admin.setServiceParent(root)
        dns = DNSService(config.dns, publisher, reactor)
        dns.setServiceParent(root)
        admin.front_ends.dns = dns
        dns.privilegedStartService()  # reads the hosts file and builds the table
        names = {n["name"]: n for n in admin.overview()["dns"]["names"]}
        self.assertEqual(names["nas.home"]["values"], ["192.168.1.5"])
        self.assertEqual(names["nas.home"]["source"], "hosts file")
        self.assertIn("nas", names)
