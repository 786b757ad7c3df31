"""
The Docker provider: keep a complete Docker snapshot reported to the publisher.

A small state machine around a source (:class:`~edge.discovery.docker_client.
DockerSource`, or a fake in tests):

- connect: open the ``/events`` stream, then do a full sync; every
  (re)connect ends in a full sync because the daemon replays few events;
- every event asks for a full sync (coalesced: at most one in flight and one
  queued) and starts a short burst of follow-up syncs, because no event says
  a task reached ``running``; later ticks of the burst run only while some
  service is still converging;
- a cheap read of ``/tasks`` and ``/nodes`` every ``poll_interval``
  (:mod:`edge.discovery.poll`) catches what swarm sends no event for (a task
  dying or starting on another node, a manager becoming unreachable); it
  rebuilds only when what it read changed;
- a slow periodic re-sync is the safety net behind the stream;
- :class:`~edge.discovery.memory.ClusterMemory` rides out a leader election
  (nodes reading ``unknown``, tasks without ``PortStatus``);
- any failure (daemon gone, socket removed, timeout, stream closed) keeps the
  last good snapshot, is logged once, and reconnects with capped exponential
  back-off with jitter; recovery is logged too.
"""

from __future__ import annotations

import dataclasses

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from edge import metrics
from edge.config import DockerConfig
from edge.discovery.backoff import Backoff
from edge.discovery.build import build_snapshot, converging
from edge.discovery.memory import ClusterMemory
from edge.discovery.poll import digest

__all__ = ["DockerProvider", "BURST", "MIN_INTERVAL", "POLL_INTERVAL"]

# Seconds after an event at which to sync again while tasks converge.
# The first ticks are close: a task usually reports running a few hundred
# milliseconds after its container's start event.
BURST = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0)
# Ticks up to this offset always run: the swarm may not have started moving yet.
_ALWAYS = 2.0
# Least time between the starts of two syncs: a busy swarm sends events in a
# steady stream, and each full read costs ~15 ms of CPU even when small.
MIN_INTERVAL = 0.2
# Seconds between two cheap reads of /tasks and /nodes; 0 turns them off.
# Each costs ~ms per hundred tasks (bench/task_reads.py), a rebuild only on change.
POLL_INTERVAL = 0.5


def _describe(reason) -> str:
    if isinstance(reason, Failure):
        reason = reason.value
    text = str(reason) or type(reason).__name__
    return text.splitlines()[0] if text else type(reason).__name__


class DockerProvider(Service):
    """Reports ``docker`` snapshots; never empties them because the API went away."""

    name = "docker"
    _log = Logger()

    def __init__(
        self,
        config: DockerConfig,
        publisher,
        reactor,
        source=None,
        backoff: Backoff | None = None,
        burst: tuple[float, ...] = BURST,
        build=build_snapshot,
        min_interval: float = MIN_INTERVAL,
        poll_interval: float = POLL_INTERVAL,
    ):
        self.config = config
        self._publisher = publisher
        self._reactor = reactor
        if source is None:
            from edge.discovery.docker_client import DockerSource

            source = DockerSource(config, reactor)
        self._source = source
        self._backoff = backoff or Backoff(initial=0.5, maximum=max(0.5, config.max_backoff))
        self._burst = burst
        self._build = build
        self._min_interval = min_interval
        self._poll_interval = poll_interval
        self._poll_call = None
        self._polling = False
        self._memory = ClusterMemory()
        # The last full read (remembered facts applied) and its digest: a poll
        # replaces its tasks and nodes.
        self._full = None
        self._digest: int | None = None
        # Bumped when a full sync starts: a poll that began before it is stale.
        self._sync_count = 0
        self._last_sync_start: float | None = None
        self._delayed_sync = None
        self._watch = None
        self._syncing = False
        self._again = False
        self._retry = None
        self._resync = None
        self._burst_calls: list = []
        self._stopping = False
        self.connected = False
        self.converging = False
        self._down_since: float | None = None
        self._failed_attempts = 0
        self._ever_connected = False
        self._event_at: float | None = None  # oldest event not yet reflected
        # Problems of the last build: each is logged once, when it appears.
        self._logged_problems: frozenset = frozenset()
        # Bumped on every (re)connect: results of syncs started on an older
        # connection are ignored, so a slow failure cannot tear down a new one.
        self._connection = 0

    # -- service

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self._source.start()
        self._connect()

    def stopService(self):
        self._stopping = True
        self.connected = False
        for call in [self._retry, self._resync, self._delayed_sync, self._poll_call, *self._burst_calls]:
            if call is not None and call.active():
                call.cancel()
        self._burst_calls = []
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        self._source.stop()
        return super().stopService()

    # -- connecting

    def _connect(self) -> None:
        self._retry = None
        if self._stopping:
            return
        d = self._source.watch(self._on_event)
        d.addCallbacks(self._watching, self._failed)

    def _watching(self, watch) -> None:
        if self._stopping:
            watch.close()
            return
        self._watch = watch
        self._connection += 1
        watch.ended.addCallback(self._watch_ended, watch)
        self.connected = True
        self.sync()

    def _watch_ended(self, reason, watch) -> None:
        if watch is not self._watch or self._stopping:
            return
        self._failed(f"event stream ended: {reason}")

    def _failed(self, reason) -> None:
        if self._stopping:
            return
        message = _describe(reason)
        self.connected = False
        if self._watch is not None:
            watch, self._watch = self._watch, None
            watch.close()
        metrics.discovery_errors.labels("docker").inc()
        self._publisher.report_error("docker", message)
        self._failed_attempts += 1
        if self._down_since is None:
            self._down_since = self._reactor.seconds()
            if self._ever_connected:
                self._log.warn(
                    "Docker API at {url} failed: {error}; keeping the last snapshot"
                    " and reconnecting with back-off",
                    url=self.config.url,
                    error=message,
                )
            else:
                self._log.warn(
                    "Docker API at {url} is unreachable: {error}; routes come from the"
                    " config file only until it answers (retrying with back-off)",
                    url=self.config.url,
                    error=message,
                )
        else:
            self._log.debug("Docker API still failing: {error}", error=message)
        for call in self._burst_calls:
            if call.active():
                call.cancel()
        self._burst_calls = []
        for call in (self._resync, self._delayed_sync, self._poll_call):
            if call is not None and call.active():
                call.cancel()
        if self._retry is None or not self._retry.active():
            self._retry = self._reactor.callLater(self._backoff.next(), self._connect)

    # -- syncing

    def sync(self) -> None:
        """Read everything again (coalesced with a sync already in flight)."""
        if self._stopping or not self.connected:
            return
        if self._syncing:
            self._again = True
            return
        now = self._reactor.seconds()
        if self._last_sync_start is not None and now - self._last_sync_start < self._min_interval:
            if self._delayed_sync is None or not self._delayed_sync.active():
                self._delayed_sync = self._reactor.callLater(
                    self._last_sync_start + self._min_interval - now, self.sync
                )
            return
        if self._delayed_sync is not None and self._delayed_sync.active():
            self._delayed_sync.cancel()
        self._last_sync_start = now
        self._syncing = True
        self._sync_count += 1
        self._again = False
        d: Deferred = self._source.sync()
        d.addCallbacks(self._synced, self._sync_failed, (self._connection,), None, (self._connection,))
        d.addBoth(self._sync_done)

    def _sync_done(self, _) -> None:
        self._syncing = False
        if self._again and self.connected and not self._stopping:
            self.sync()

    def _sync_failed(self, failure: Failure, connection: int) -> None:
        if connection == self._connection:
            self._failed(failure)

    def _synced(self, result, connection: int) -> None:
        if self._stopping or not self.connected or connection != self._connection:
            # Read on an older connection: the sync queued behind it reads again.
            self._again = self._again or (connection != self._connection)
            return
        state, me = result
        # The digest of what swarm said (as a poll computes it), before the
        # memory fills in what it left out.
        seen = digest(state.tasks, state.nodes) if state.swarm else None
        state = self._memory.apply(state)
        if not self._publish(state, me):
            return
        self._full = (state, me)
        self._digest = seen
        self._schedule_poll()
        metrics.discovery_syncs.labels("docker").inc()
        if self._event_at is not None:
            lag = self._reactor.seconds() - self._event_at
            metrics.discovery_lag.labels("docker").set(max(0.0, lag))
            self._event_at = None
        if self._down_since is not None:
            if self._ever_connected:
                self._log.info(
                    "Docker API at {url} is back after {seconds:.1f}s ({attempts} failed"
                    " attempts); re-synced",
                    url=self.config.url,
                    seconds=self._reactor.seconds() - self._down_since,
                    attempts=self._failed_attempts,
                )
            else:
                self._log.info("Docker API at {url} now answers", url=self.config.url)
        elif not self._ever_connected:
            self._log.info(
                "Docker API at {url}: swarm={swarm} containers={containers}",
                url=self.config.url,
                swarm=state.swarm,
                containers=state.containers_read,
            )
        self._ever_connected = True
        self._down_since = None
        self._failed_attempts = 0
        self._backoff.reset()
        self.converging = converging(state)
        if self._resync is not None and self._resync.active():
            self._resync.cancel()
        self._resync = self._reactor.callLater(self.config.resync_interval, self.sync)

    def rebuild(self) -> None:
        """Build the last full read again: something it depends on besides Docker changed (the config file's middlewares)."""
        if self._full is not None and not self._stopping:
            self._publish(*self._full)

    def _publish(self, state, me) -> bool:
        try:
            snapshot = self._build(state, self.config, me)
        except Exception:
            # A bug or an API shape we did not expect: keep the last good view.
            self._log.failure("Building the Docker snapshot failed; keeping the last one")
            self._publisher.report_error("docker", "snapshot build failed (see log)")
            return False
        self._publisher.report("docker", snapshot)
        self._log_problems(snapshot.problems)
        if self._memory.patched_nodes or self._memory.patched_tasks:
            self._log.info(
                "Swarm read {nodes} node(s) as unknown and {tasks} task(s) without ports;"
                " kept their last known state and ports",
                nodes=self._memory.patched_nodes,
                tasks=self._memory.patched_tasks,
            )
        return True

    def _log_problems(self, problems) -> None:
        """A label problem (a router dropped, a label ignored) in the log once, when it appears; the API lists them all."""
        current = frozenset(problems)
        for problem in sorted(current - self._logged_problems, key=lambda p: (p.source, p.label, p.message)):
            log = self._log.error if problem.level == "error" else self._log.warn
            log("{source}: {message}", source=problem.source, message=problem.message)
        self._logged_problems = current

    # -- polling tasks and nodes

    def _schedule_poll(self) -> None:
        if self._poll_interval <= 0 or self._full is None or not self._full[0].swarm:
            return
        if self._polling or (self._poll_call is not None and self._poll_call.active()):
            return
        if self._stopping or not self.connected:
            return
        self._poll_call = self._reactor.callLater(self._poll_interval, self._poll)

    def _poll(self) -> None:
        self._poll_call = None
        if self._stopping or not self.connected or self._full is None:
            return
        if self._syncing:
            # The full sync reads tasks and nodes too; poll again after it.
            self._schedule_poll()
            return
        self._polling = True
        started = (self._connection, self._sync_count)
        d: Deferred = self._source.poll()
        d.addCallbacks(self._polled, self._poll_failed, (started,))
        d.addBoth(self._poll_done)

    def _polled(self, result, started) -> None:
        if self._stopping or started != (self._connection, self._sync_count) or self._full is None:
            return  # a full sync started meanwhile: it is newer
        tasks, nodes, seen = result
        if seen == self._digest:
            return
        full, me = self._full
        state = self._memory.apply(dataclasses.replace(full, tasks=tasks, nodes=nodes))
        if self._publish(state, me):
            self._full = (state, me)
            self._digest = seen
            metrics.discovery_syncs.labels("docker").inc()
            self.converging = converging(state)

    def _poll_failed(self, failure: Failure) -> None:
        # The full sync owns failure handling (and reconnects); a poll that
        # timed out during a leader election just keeps what edge has.
        self._log.debug("Polling tasks and nodes failed: {error}", error=_describe(failure))

    def _poll_done(self, result) -> None:
        if isinstance(result, Failure):
            self._log.failure("Handling a poll of tasks and nodes failed", result)
        self._polling = False
        self._schedule_poll()

    # -- events

    def _on_event(self, event: dict) -> None:
        if self._stopping:
            return
        self._log.debug(
            "Docker event {type} {action} {id}",
            type=event.get("Type", ""),
            action=event.get("Action", ""),
            id=(event.get("Actor") or {}).get("ID", "")[:12],
        )
        if self._event_at is None:
            stamp = event.get("timeNano")
            self._event_at = stamp / 1e9 if isinstance(stamp, int) else self._reactor.seconds()
        self.sync()
        self._start_burst()

    def _start_burst(self) -> None:
        for call in self._burst_calls:
            if call.active():
                call.cancel()
        self._burst_calls = [
            self._reactor.callLater(delay, self._burst_tick, delay) for delay in self._burst
        ]

    def _burst_tick(self, delay: float) -> None:
        if delay <= _ALWAYS or self.converging:
            self.sync()
        else:
            # Settled: the rest of this burst has nothing to catch.
            for call in self._burst_calls:
                if call.active():
                    call.cancel()
            self._burst_calls = []
