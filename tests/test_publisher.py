"""The publisher coalesces reports, drops no-op updates and keeps the last good view."""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from edge.discovery.publisher import SnapshotPublisher
from edge.rules import Host
from edge.snapshot import EMPTY, BackendService, Router, Snapshot, Target


def _snapshot(provider: str, name: str, *ports: int) -> Snapshot:
    service = BackendService(
        f"{name}@{provider}",
        tuple(Target(f"{name}-{p}", "127.0.0.1", p) for p in ports),
    )
    router = Router(
        name=f"{name}@{provider}",
        rule=Host((f"{name}.test",)),
        rule_text=f"Host(`{name}.test`)",
        service=service.name,
        provider=provider,
    )
    return Snapshot.build(routers=[router], services=[service])


class PublisherTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.publisher = SnapshotPublisher(self.clock, debounce=0.2)
        self.seen = []
        self.publisher.subscribe(self.seen.append)

    def test_subscriber_gets_current_at_once(self):
        self.assertEqual(self.seen, [EMPTY])

    def test_burst_is_coalesced(self):
        for port in range(8000, 8010):
            self.publisher.report("docker", _snapshot("docker", "web", port))
            self.clock.advance(0.01)
        self.assertEqual(len(self.seen), 1)
        self.clock.advance(0.2)
        self.assertEqual(len(self.seen), 2)
        # Only the newest report of the burst counts.
        (service,) = self.seen[-1].services
        self.assertEqual([t.port for t in service.targets], [8009])

    def test_unchanged_content_is_not_published(self):
        self.publisher.report("docker", _snapshot("docker", "web", 80))
        self.clock.advance(1)
        self.publisher.report("docker", _snapshot("docker", "web", 80))
        self.clock.advance(1)
        self.assertEqual(len(self.seen), 2)
        self.assertEqual(self.publisher.generation, 1)

    def test_providers_are_merged(self):
        self.publisher.report("docker", _snapshot("docker", "web", 80))
        self.publisher.report("file", _snapshot("file", "nas", 5000))
        self.clock.advance(1)
        names = [r.name for r in self.seen[-1].routers]
        self.assertEqual(names, ["nas@file", "web@docker"])

    def test_error_keeps_last_report(self):
        self.publisher.report("docker", _snapshot("docker", "web", 80))
        self.clock.advance(1)
        self.publisher.report_error("docker", "connection refused")
        self.clock.advance(1)
        self.assertEqual(len(self.seen[-1].routers), 1)
        status = self.publisher.status("docker")
        self.assertFalse(status.connected)
        self.assertEqual(status.last_error, "connection refused")
        self.assertEqual(status.errors, 1)

    def test_failing_subscriber_does_not_stop_others(self):
        def broken(snapshot):
            raise RuntimeError("boom")

        later = []
        self.publisher.subscribe(broken)
        self.publisher.subscribe(later.append)
        self.publisher.report("docker", _snapshot("docker", "web", 80))
        self.clock.advance(1)
        self.assertEqual(len(later), 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)


class SnapshotTests(SynchronousTestCase):
    def test_build_is_order_independent(self):
        a = _snapshot("docker", "a", 1).merged(_snapshot("docker", "b", 2))
        b = _snapshot("docker", "b", 2).merged(_snapshot("docker", "a", 1))
        self.assertEqual(a, b)
        self.assertEqual(hash(a), hash(b))

    def test_service_lookup(self):
        snap = _snapshot("docker", "web", 80, 81)
        self.assertEqual(len(snap.service("web@docker").targets), 2)
        self.assertIsNone(snap.service("nope@docker"))

    def test_host_names(self):
        snap = _snapshot("docker", "web", 80)
        self.assertEqual([h for h, _ in snap.host_names()], ["web.test"])
