"""An admin site over an in-memory client, fed one snapshot: for tests of what the API shows."""

from __future__ import annotations

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from edge.admin.service import AdminService
from edge.config import Config
from edge.discovery.publisher import SnapshotPublisher


class AdminStubCase(SynchronousTestCase):
    """``self.get(path)`` is the body an admin site serving ``SNAPSHOT`` answers."""

    SNAPSHOT = None

    def setUp(self):
        clock = Clock()
        publisher = SnapshotPublisher(clock, debounce=0)
        publisher.report("docker", self.SNAPSHOT)
        self.admin = AdminService(Config(), publisher, clock)
        self.client = StubTreq(self.admin.site.resource)

    def get(self, path: str) -> str:
        pending = self.client.get(f"http://admin.invalid{path}")
        self.client.flush()
        response = self.successResultOf(pending)
        pending = response.content()
        self.client.flush()
        return self.successResultOf(pending).decode()
