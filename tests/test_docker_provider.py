"""
The Docker provider's state machine with a fake source and ``task.Clock``;
back-off arithmetic.  The real source against a real daemon is exercised in
tests/test_discovery_swarm.py.
"""

from __future__ import annotations

import pytest
from twisted.internet import task
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger

from edge.config import DockerConfig
from edge.discovery.backoff import Backoff
from edge.discovery.build import DockerState, SelfFacts
from edge.discovery.docker_provider import DockerProvider
from edge.discovery.publisher import SnapshotPublisher
from edge.snapshot import BackendService, Snapshot, Target


# -- back-off -----------------------------------------------------------------


def test_backoff_grows_caps_and_resets():
    b = Backoff(initial=0.5, maximum=4.0, factor=2.0, jitter=0.0)
    assert [b.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    b.reset()
    assert b.next() == 0.5


def test_backoff_jitter_stays_within_half_to_full_step():
    values = iter([0.0, 1.0, 0.5])
    b = Backoff(initial=2.0, maximum=2.0, jitter=0.5, random=lambda: next(values))
    assert [b.next(), b.next(), b.next()] == [2.0, 1.0, 1.5]


def test_backoff_rejects_nonsense():
    with pytest.raises(ValueError):
        Backoff(initial=0)
    with pytest.raises(ValueError):
        Backoff(initial=5, maximum=1)


# -- a fake source --------------------------------------------------------------


class FakeWatch:
    def __init__(self):
        self.ended = Deferred()
        self.closed = False

    def close(self):
        self.closed = True


class FakeSource:
    """Answers syncs from ``self.state``; ``self.down`` makes everything fail."""

    def __init__(self):
        self.state = DockerState()
        self.down: Exception | None = None
        self.syncs = 0
        self.watches: list[FakeWatch] = []
        self.on_event = None
        self.pending: list[Deferred] = []
        self.hold = False
        self.started = self.stopped = False
        self.polls = 0
        self.poll_down: Exception | None = None
        self.poll_hold = False
        self.poll_pending: list[Deferred] = []

    def start(self):
        self.started = True

    def stop(self):
        self.stopped = True

    def sync(self):
        self.syncs += 1
        if self.down:
            return fail(self.down)
        if self.hold:
            d = Deferred()
            self.pending.append(d)
            return d
        return succeed((self.state, SelfFacts()))

    def poll(self):
        from edge.discovery.poll import digest

        self.polls += 1
        if self.down or self.poll_down:
            return fail(self.down or self.poll_down)
        if self.poll_hold:
            d = Deferred()
            self.poll_pending.append(d)
            return d
        return succeed((self.state.tasks, self.state.nodes, digest(self.state.tasks, self.state.nodes)))

    def release(self):
        d = self.pending.pop(0)
        d.callback((self.state, SelfFacts()))

    def watch(self, on_event):
        if self.down:
            return fail(self.down)
        self.on_event = on_event
        w = FakeWatch()
        self.watches.append(w)
        return succeed(w)


def snapshot_of(state):
    """Stand-in builder: one service whose targets are the state's task IDs."""
    return Snapshot.build(
        services=[
            BackendService("web@docker", tuple(Target(t["ID"], "127.0.0.1", 80) for t in state.tasks))
        ]
    )


def fake_build(state, config, me):
    return snapshot_of(state)


def tasks(*ids, moving=False):
    state = DockerState(
        swarm=True,
        services=[{"ID": "s", "Spec": {"Mode": {"Replicated": {"Replicas": len(ids) + (1 if moving else 0)}}}}],
        tasks=[{"ID": i, "ServiceID": "s", "DesiredState": "running", "Status": {"State": "running"}} for i in ids],
    )
    return state


class Harness:
    def __init__(self, min_interval=0.0, poll_interval=0.0, build=fake_build, **config):
        self.clock = task.Clock()
        self.source = FakeSource()
        self.publisher = SnapshotPublisher(self.clock, debounce=0)
        self.logged: list[dict] = []
        self.provider = DockerProvider(
            DockerConfig(url="unix:///fake.sock", resync_interval=60.0, max_backoff=8.0, **config),
            self.publisher,
            self.clock,
            source=self.source,
            backoff=Backoff(initial=0.5, maximum=8.0, jitter=0.0),
            burst=(0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0),
            min_interval=min_interval,
            build=build,
            poll_interval=poll_interval,
        )
        self.provider._log = Logger(observer=self.logged.append)

    def targets(self):
        service = self.publisher.current.service("web@docker")
        return sorted(t.id for t in service.targets) if service else None

    def levels(self):
        return [e["log_level"].name for e in self.logged]


@pytest.fixture
def h():
    return Harness()


def test_start_opens_events_then_syncs_and_reports(h):
    h.source.state = tasks("t1")
    h.provider.startService()
    assert h.source.started and len(h.source.watches) == 1 and h.source.syncs == 1
    assert h.targets() == ["t1"]
    assert h.publisher.status("docker").connected


def test_event_syncs_and_burst_follows_until_settled(h):
    h.provider.startService()
    h.source.state = tasks("t1", moving=True)  # a task is still starting
    h.source.on_event({"Type": "service", "Action": "update", "Actor": {"ID": "s"}})
    assert h.source.syncs == 2 and h.provider.converging
    for _ in range(4):  # ticks at 0.5, 1, 2, 5 s
        h.clock.advance(h.clock.getDelayedCalls()[0].getTime() - h.clock.seconds())
    assert h.source.syncs == 6
    # The task reaches running; no event says so, the burst finds it.
    h.source.state = tasks("t1", "t2")
    h.clock.advance(5)  # the 10 s tick
    assert h.targets() == ["t1", "t2"] and not h.provider.converging
    syncs = h.source.syncs
    h.clock.advance(20.5)  # 20 and 30 s ticks: settled, skipped
    assert h.source.syncs == syncs


def test_early_burst_ticks_run_even_when_settled(h):
    h.provider.startService()
    h.source.on_event({"Type": "service", "Action": "update"})
    assert not h.provider.converging
    h.clock.advance(2.0)  # 0.5, 1, 2: the swarm may not have started moving
    assert h.source.syncs == 2 + 3
    h.clock.advance(3.0)  # 5 s tick, settled: nothing
    assert h.source.syncs == 5


def test_events_during_a_sync_coalesce_into_one_more(h):
    h.provider.startService()
    h.source.hold = True
    h.source.on_event({"Type": "container", "Action": "start"})
    for _ in range(10):
        h.source.on_event({"Type": "container", "Action": "die"})
    assert h.source.syncs == 2 and len(h.source.pending) == 1
    h.source.release()
    assert h.source.syncs == 3  # exactly one more
    h.source.release()
    assert h.source.pending == []


def test_a_stream_of_events_is_rate_limited():
    h = Harness(min_interval=0.2)
    h.provider.startService()
    h.provider._resync.cancel()
    for i in range(100):  # 100 events over 1 s, 10 ms apart
        if i == 99:
            h.source.state = tasks("late")
        h.source.on_event({"Type": "container", "Action": "start"})
        h.clock.advance(0.01)
    h.clock.advance(0.2)
    # The first sync at start, then at most one per 0.2 s...
    assert 1 + 4 <= h.source.syncs <= 1 + 6
    # ...and the last event is still answered by a sync.
    assert h.targets() == ["late"]


def test_periodic_resync(h):
    h.provider.startService()
    h.clock.advance(59.9)
    assert h.source.syncs == 1
    h.clock.advance(0.2)
    assert h.source.syncs == 2


def test_outage_keeps_last_snapshot_logs_once_and_backs_off(h):
    h.source.state = tasks("t1", "t2")
    h.provider.startService()
    assert h.targets() == ["t1", "t2"]
    generation = h.publisher.generation

    h.source.down = ConnectionRefusedError("connection refused")
    h.source.watches[-1].ended.callback("stream closed")
    assert not h.publisher.status("docker").connected
    retries = []
    for _ in range(6):
        delay = h.provider._retry.getTime() - h.clock.seconds()
        retries.append(delay)
        h.clock.advance(delay)
    assert retries == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]  # capped at max_backoff
    assert h.targets() == ["t1", "t2"] and h.publisher.generation == generation
    warnings = [e for e in h.logged if e["log_level"].name == "warn"]
    assert len(warnings) == 1 and "keeping the last snapshot" in warnings[0]["log_format"]
    assert h.publisher.status("docker").errors == 7

    # Back: new tasks (a restarted daemon gives new containers), re-synced at once.
    h.source.down = None
    h.source.state = tasks("t3")
    h.clock.advance(8.0)
    assert h.targets() == ["t3"] and h.publisher.status("docker").connected
    assert any("is back" in e["log_format"] for e in h.logged)
    # Back-off starts over after a success.
    h.source.down = OSError("gone")
    h.source.watches[-1].ended.callback("closed")
    assert h.provider._retry.getTime() - h.clock.seconds() == 0.5


def test_failing_sync_reconnects_and_closes_the_stream(h):
    h.provider.startService()
    h.source.down = TimeoutError("read timed out")
    h.provider.sync()
    assert h.source.watches[0].closed and not h.provider.connected
    h.source.down = None
    h.clock.advance(0.5)
    assert len(h.source.watches) == 2 and h.provider.connected


def test_slow_failure_from_an_old_connection_does_not_break_the_new_one(h):
    h.source.state = tasks("t1")
    h.provider.startService()
    h.source.hold = True
    h.provider._resync.cancel()
    h.provider.sync()  # slow: still running when the stream drops
    h.source.watches[0].ended.callback("stream closed")
    h.clock.advance(0.5)  # reconnected; its sync waits behind the slow one
    assert h.provider.connected and len(h.source.watches) == 2
    h.source.pending.pop(0).errback(TimeoutError("read timed out"))
    assert h.provider.connected and not h.source.watches[1].closed
    # The queued sync ran on the new connection.
    assert len(h.source.pending) == 1
    h.source.state = tasks("t2")
    h.source.release()
    assert h.targets() == ["t2"]


def test_unreachable_at_start_says_so_clearly_once(h):
    h.source.down = FileNotFoundError(2, "No such file or directory")
    h.provider.startService()
    h.clock.advance(0.5 + 1 + 2)
    warnings = [e for e in h.logged if e["log_level"].name == "warn"]
    assert len(warnings) == 1 and "unreachable" in warnings[0]["log_format"]
    assert h.publisher.current == Snapshot()


def test_build_failure_keeps_last_snapshot(h):
    h.source.state = tasks("t1")
    h.provider.startService()

    def broken(state, config, me):
        raise KeyError("Spec")

    h.provider._build = broken
    h.provider.sync()
    assert h.targets() == ["t1"] and h.publisher.status("docker").last_error
    assert "critical" in h.levels()


def test_stop_cancels_everything(h):
    h.provider.startService()
    h.source.on_event({"Type": "service", "Action": "create"})
    h.provider.stopService()
    assert h.source.stopped and h.source.watches[0].closed
    assert h.clock.getDelayedCalls() == []
    h.source.on_event({"Type": "service", "Action": "remove"})
    assert h.clock.getDelayedCalls() == []


def test_stop_while_disconnected_cancels_retry(h):
    h.source.down = OSError("down")
    h.provider.startService()
    assert h.clock.getDelayedCalls()
    h.provider.stopService()
    assert h.clock.getDelayedCalls() == []


# -- the source's pure parts ------------------------------------------------------

import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from edge.discovery.docker_client import (  # noqa: E402
    api_client,
    detect_container_id,
    engine_host,
    read_state,
)

CID = "4f1e0c2d" * 8


@pytest.mark.parametrize(
    "mountinfo, cgroup, found",
    [
        # cgroup v2: only mountinfo shows the ID (docker's bind-mounted /etc/hostname).
        (
            f"712 690 0:52 /docker/containers/{CID}/hostname /etc/hostname rw - ext4 /dev/sda1 rw\n",
            "0::/\n",
            CID,
        ),
        ("1 0 0:1 / / rw - ext4 /dev/sda1 rw\n", f"12:devices:/docker/{CID}\n", CID),
        ("1 0 0:1 / / rw - ext4 /dev/sda1 rw\n", f"0::/system.slice/docker-{CID}.scope\n", CID),
        ("1 0 0:1 / / rw - ext4 /dev/sda1 rw\n", "0::/user.slice/session-1.scope\n", ""),
    ],
)
def test_detect_container_id(tmp_path, mountinfo, cgroup, found):
    (tmp_path / "mountinfo").write_text(mountinfo)
    (tmp_path / "cgroup").write_text(cgroup)
    assert detect_container_id(str(tmp_path / "mountinfo"), str(tmp_path / "cgroup")) == found


def test_api_client_uses_tls_from_the_environment_like_the_cli(tmp_path):
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("x")
    env = {"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(tmp_path)}
    client = api_client("tcp://127.0.0.1:2376", 5, environ=env, version="1.41")
    assert client.base_url == "https://127.0.0.1:2376"
    assert client.cert == (str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))
    assert client.verify == str(tmp_path / "ca.pem")
    plain = api_client("tcp://127.0.0.1:2375", 5, environ={}, version="1.41")
    assert plain.base_url == "http://127.0.0.1:2375"


@pytest.mark.parametrize(
    "url, host",
    [
        ("unix:///var/run/docker.sock", "127.0.0.1"),
        ("tcp://192.0.2.7:2375", "192.0.2.7"),
        ("tcp://localhost:2375", "127.0.0.1"),
    ],
)
def test_engine_host(url, host):
    assert engine_host(url) == host


class FakeClient:
    def __init__(self, swarm_state="active", manager=True):
        self.calls = []
        self._info = {"Swarm": {"LocalNodeState": swarm_state, "ControlAvailable": manager, "NodeID": "n1"}}

    def __getattr__(self, name):
        def call(*args, **kwargs):
            self.calls.append(name)
            return self._info if name == "info" else []

        return call


@pytest.mark.parametrize(
    "swarm, containers, manager, reads, problem",
    [
        ("auto", "auto", True, {"services", "tasks", "nodes"}, False),
        ("auto", "auto", False, {"containers"}, False),  # a worker or no swarm: containers
        ("auto", "true", True, {"services", "tasks", "nodes", "containers"}, False),
        ("true", "false", False, set(), True),  # asked for swarm on a non-manager
        ("false", "auto", True, {"containers"}, False),
    ],
)
def test_read_state_chooses_sources(swarm, containers, manager, reads, problem):
    client = FakeClient(manager=manager)
    state, me = read_state(client, DockerConfig(url="unix:///x", swarm=swarm, containers=containers))
    assert set(client.calls) - {"info", "networks"} == reads
    assert state.swarm == ("services" in reads) and state.containers_read == ("containers" in reads)
    assert bool(state.problems) is problem
    assert me == SelfFacts()


# -- python -m edge.discovery without any engine ------------------------------------------


def run_discovery(tmp_path, *args):
    config = tmp_path / "edge.toml"
    config.write_text(
        '[docker]\nmax_backoff = 1\n'
        '[routes.nas]\nrule = "Host(`nas.test`)"\nbackends = ["http://127.0.0.1:5000"]\n'
    )
    return subprocess.run(
        [sys.executable, "-m", "edge.discovery", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )


def test_once_without_docker_says_so_and_still_shows_static_routes(tmp_path):
    done = run_discovery(tmp_path, "--docker-url", f"unix://{tmp_path}/missing.sock")
    assert done.returncode == 1
    assert done.stderr.count("unreachable") == 2  # the provider's log line and the summary
    assert "Traceback" not in done.stderr
    snapshot = json.loads(done.stdout)
    assert [r["name"] for r in snapshot["routers"]] == ["nas@file"]
    assert snapshot["services"][0]["targets"][0]["url"] == "http://127.0.0.1:5000"
