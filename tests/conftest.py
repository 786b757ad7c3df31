"""
Shared fixtures.

Tests marked ``swarm`` use the real dockerd in swarm mode that
``tests/testbed/swarm.sh up`` starts in its own network namespace (``make
test`` does this and runs pytest inside that namespace).  When the engine is
not reachable those tests are skipped locally but fail under CI, so a broken
testbed cannot pass silently.
"""

import os
import uuid

import pytest

from tests.swarmkit import Swarm


@pytest.fixture(scope="session")
def swarm():
    """A :class:`tests.swarmkit.Swarm` on the test engine."""
    url = os.environ.get("DOCKER_HOST", "unix:///tmp/edge-test/docker.sock")
    kit = Swarm.connect(url)
    if kit is None:
        if os.environ.get("CI"):
            pytest.fail(f"test dockerd not reachable at {url}: run tests/testbed/swarm.sh up")
        pytest.skip(f"test dockerd not reachable at {url} (make testbed-up)")
    yield kit
    kit.cleanup()


@pytest.fixture
def unique():
    """A short unique suffix for names of services, networks, containers."""
    return uuid.uuid4().hex[:8]
