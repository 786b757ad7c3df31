"""
How long from ``docker service create`` until discovery routes the task.

Runs the real provider (``python -m edge.discovery --watch``, a subprocess)
against the test swarm and, for each round, creates a labelled one-replica
service (busybox httpd, host-mode port), then records:

- create -> routed: from the create call returning to the first snapshot
  holding the service's running task (what a user waits for);
- running -> routed: from the task's own ``Status.Timestamp`` when it became
  running (the daemon's clock, same machine) to that snapshot: discovery's
  own lag, independent of how fast the swarm schedules and starts tasks;
- remove -> gone: from the remove call to the snapshot without the service.

Usage: DOCKER_HOST=unix:///tmp/edge-test/docker.sock .venv/bin/python
bench/discovery_latency.py [--rounds 5]
(Traefik 1.7, for reference, polls swarm every 15 s by default:
``swarmModeRefreshSeconds``.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.swarmkit import DiscoveryWatch, Swarm, find_service  # noqa: E402


def _wall(watch: DiscoveryWatch, index: int) -> float:
    """Wall-clock time at which document ``index`` was read."""
    return time.time() - (time.monotonic() - watch.received_at[index])


def _docker_time(stamp: str) -> float:
    # "2026-11-30T00:54:08.99136043Z": trim nanoseconds to microseconds.
    head, _, frac = stamp.rstrip("Z").partition(".")
    frac = (frac + "000000")[:6]
    return datetime.fromisoformat(f"{head}.{frac}+00:00").timestamp()


def _first_doc(watch: DiscoveryWatch, start: int, predicate, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for i in range(start, len(watch.docs)):
            doc = watch.docs[i]
            if doc["kind"] == "snapshot" and predicate(doc["snapshot"]):
                return i
        time.sleep(0.01)
    raise SystemExit(f"timed out; log:\n{watch.log_tail()}")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    url = os.environ.get("DOCKER_HOST", "unix:///tmp/edge-test/docker.sock")
    kit = Swarm.connect(url)
    if kit is None:
        raise SystemExit(f"no swarm manager at {url}")
    workdir = tempfile.mkdtemp(prefix="edge-bench-")
    watch = DiscoveryWatch(url, workdir, log_level="warn")
    created, lag, removed = [], [], []
    try:
        watch.wait_snapshot(lambda s: True, args.timeout, "the first snapshot")
        cpu_start, wall_start = _cpu_seconds(watch.proc.pid), time.monotonic()
        for round_ in range(args.rounds):
            name = f"bench-disc-{uuid.uuid4().hex[:8]}"
            key = f"{name}@docker"
            start = len(watch.docs)
            t0 = time.time()
            service = kit.create_web_service(name, labels={"traefik.port": "80"})
            t_created = time.time()
            index = _first_doc(
                watch, start, lambda s: bool((find_service(s, key) or {}).get("targets")), args.timeout
            )
            routed = _wall(watch, index)
            (task,) = [t for t in service.tasks() if t["Status"]["State"] == "running"]
            running = _docker_time(task["Status"]["Timestamp"])
            start = len(watch.docs)
            t_remove = time.time()
            kit.remove_service(name)
            gone_index = _first_doc(watch, start, lambda s: find_service(s, key) is None, args.timeout)
            gone = _wall(watch, gone_index)
            created.append(routed - t_created)
            lag.append(routed - running)
            removed.append(gone - t_remove)
            print(
                f"round {round_ + 1}: create call {t_created - t0:.2f}s, create->routed"
                f" {created[-1]:.2f}s, running->routed {lag[-1]:.3f}s,"
                f" remove->gone {removed[-1]:.3f}s",
                flush=True,
            )
        cpu = _cpu_seconds(watch.proc.pid) - cpu_start
        wall = time.monotonic() - wall_start
    finally:
        watch.stop()
        kit.cleanup()
    print(f"discovery process CPU: {cpu:.2f}s over {wall:.1f}s of rounds ({100 * cpu / wall:.1f}% of a core)")
    for label, values in (
        ("create -> routed", created),
        ("running -> routed", lag),
        ("remove -> gone", removed),
    ):
        print(
            f"{label:18} median {statistics.median(values):.3f}s"
            f"  min {min(values):.3f}s  max {max(values):.3f}s  (n={len(values)})"
        )


if __name__ == "__main__":
    main()
