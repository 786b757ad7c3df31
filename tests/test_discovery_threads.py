"""
Files named by labels (usersFile, forwardAuth tls.ca) are read in the
discovery thread pool, never on the reactor thread that builds the snapshot.

The provider runs against a fake Engine API client through the real
:class:`DockerSource` (its real thread pool and events thread); the reactor is
a Clock whose ``callFromThread`` queues calls for this (the test's main)
thread, which plays the reactor thread.  A ``sys.addaudithook`` hook records
which thread opens each file under the test's directory, whoever opens it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import queue
import sys
import threading

import pytest
from twisted.internet.task import Clock

from edge.config import DockerConfig
from edge.discovery.build import DockerState, build_snapshot
from edge.discovery.docker_client import DockerSource
from edge.discovery.docker_provider import DockerProvider
from edge.discovery.publisher import SnapshotPublisher
from edge.snapshot import BasicAuth, ForwardAuth

# (path, thread name) of every open() of a path under _WATCHED[0].
_OPENS: list[tuple[str, str]] = []
_WATCHED: list[str] = []


def _audit(event, args):
    if event == "open" and _WATCHED and isinstance(args[0], str) and args[0].startswith(_WATCHED[0]):
        _OPENS.append((args[0], threading.current_thread().name))


sys.addaudithook(_audit)  # hooks cannot be removed; this one is idle outside these tests


@pytest.fixture
def watched(tmp_path):
    _WATCHED[:] = [str(tmp_path)]
    _OPENS.clear()
    yield tmp_path
    _WATCHED.clear()


class ThreadReactor(Clock):
    """A Clock whose callFromThread hands calls to the thread running ``run_until``."""

    def __init__(self):
        super().__init__()
        self.calls: queue.Queue = queue.Queue()

    def callFromThread(self, f, *args, **kwargs):
        self.calls.put((f, args, kwargs))

    def run_until(self, done, limit=200):
        for _ in range(limit):
            if done():
                return
            f, args, kwargs = self.calls.get(timeout=20)
            f(*args, **kwargs)
        raise AssertionError("condition not reached")


class Stream:
    """An /events stream that sends nothing until closed."""

    def __init__(self):
        self._closed = threading.Event()

    def __iter__(self):
        self._closed.wait(20)
        return iter(())

    def close(self):
        self._closed.set()


class FakeClient:
    """The few Engine API calls a containers-only read makes."""

    def __init__(self, labels):
        self._labels = labels

    def info(self):
        return {"Swarm": {"LocalNodeState": "inactive"}}

    def networks(self):
        return [{"Id": "bridgeid", "Name": "bridge", "Driver": "bridge"}]

    def containers(self, filters=None):
        return [{
            "Id": "c1",
            "Names": ["/web"],
            "Labels": self._labels,
            "State": "running",
            "HostConfig": {"NetworkMode": "default"},
            "Ports": [],
            "NetworkSettings": {"Networks": {"bridge": {"NetworkID": "bridgeid", "IPAddress": "172.17.0.2"}}},
        }]

    def inspect_container(self, cid):
        return {"Id": cid, "NetworkSettings": {"Networks": {}}}

    def events(self, decode=True, filters=None):
        return Stream()


def _files(tmp_path):
    users = tmp_path / "htpasswd"
    digest = base64.b64encode(hashlib.sha1(b"s3cret").digest()).decode()
    users.write_text(f"# team\nalice:{{SHA}}{digest}\n")
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    labels = {
        "traefik.http.routers.r.rule": "Host(`app.test`)",
        "traefik.http.routers.r.middlewares": "auth,fa",
        "traefik.http.middlewares.auth.basicauth.usersfile": str(users),
        "traefik.http.middlewares.fa.forwardauth.address": "https://auth.test/check",
        "traefik.http.middlewares.fa.forwardauth.tls.ca": str(ca),
        "traefik.http.services.s.loadbalancer.server.port": "80",
    }
    return users, ca, labels


def test_label_files_are_read_in_the_discovery_pool_not_the_reactor_thread(watched):
    users, ca, labels = _files(watched)
    _OPENS.clear()  # writing them opened them too
    reactor = ThreadReactor()
    publisher = SnapshotPublisher(reactor, debounce=0)
    config = DockerConfig(url="unix:///nonexistent.sock")
    source = DockerSource(config, reactor, client_factory=lambda: FakeClient(labels))
    provider = DockerProvider(config, publisher, reactor, source=source, poll_interval=0)
    provider.startService()
    try:
        reactor.run_until(lambda: publisher.current.routers)
    finally:
        provider.stopService()

    [router] = publisher.current.routers
    kinds = {type(m) for m in router.middlewares}
    assert kinds == {BasicAuth, ForwardAuth}, publisher.current.problems
    [auth] = [m for m in router.middlewares if isinstance(m, BasicAuth)]
    assert auth.users[0].startswith("alice:")
    [fa] = [m for m in router.middlewares if isinstance(m, ForwardAuth)]
    assert fa.tls_ca.startswith("-----BEGIN CERTIFICATE-----")
    opened = {path for path, _ in _OPENS}
    assert opened == {str(users), str(ca)}
    reactor_thread = threading.current_thread().name
    assert [(p, t) for p, t in _OPENS if t == reactor_thread] == [], _OPENS


def test_a_file_that_vanishes_is_a_problem_and_the_router_is_dropped(watched):
    users, _ca, labels = _files(watched)
    os.unlink(users)
    client = FakeClient(labels)
    state = DockerState(containers_read=True, containers=client.containers(), networks=client.networks())
    snap = build_snapshot(state, DockerConfig())
    assert snap.routers == ()
    assert any("cannot read users file" in p.message for p in snap.problems)


def test_a_fifo_is_refused_without_blocking(watched):
    """A FIFO named as a users file would block its reader until a writer came."""
    _users, _ca, labels = _files(watched)
    fifo = watched / "fifo"
    os.mkfifo(fifo)
    labels["traefik.http.middlewares.auth.basicauth.usersfile"] = str(fifo)
    client = FakeClient(labels)
    state = DockerState(containers_read=True, containers=client.containers(), networks=client.networks())
    built = []
    worker = threading.Thread(target=lambda: built.append(build_snapshot(state, DockerConfig())), daemon=True)
    worker.start()
    worker.join(30)  # a guard against a hang, not a speed limit
    if worker.is_alive():
        with open(fifo, "w"):  # let the blocked reader go
            pass
        worker.join(30)
    assert built and not worker.is_alive(), "reading the FIFO blocked"
    [snap] = built
    assert snap.routers == ()
    assert any("is not a regular file" in p.message for p in snap.problems)
