"""
The cheap read behind the full sync: ``GET /tasks`` and ``GET /nodes`` only.

Swarm sends no event when a task on another node dies, when its replacement
reaches ``running`` or when a manager becomes unreachable
(../shared/notes/multinode-swarm.md), so waiting for events leaves dead
targets routed and new ones unrouted for many seconds.  The provider
therefore reads tasks and nodes every ``poll_interval`` (0.5 s by default)
and rebuilds the snapshot only when :func:`digest` of what it read differs
from the last one; services and networks come from the last full sync, which
events and the slow re-sync still drive.  The cost is measured by
``bench/task_reads.py`` (docs/performance.md).
"""

from __future__ import annotations

import hashlib
import json

__all__ = ["digest", "lookup", "read_tasks_nodes", "TaskReader", "RAW_COMPARE"]


def lookup(d, *path, default=None):
    """``d[path[0]][path[1]]...``, or ``default`` where a step is missing or not a dict."""
    for key in path:
        if not isinstance(d, dict):
            return default
        d = d.get(key)
    return default if d is None else d


def _ports(task: dict) -> tuple:
    return tuple(
        (p.get("TargetPort"), p.get("PublishedPort"), p.get("Protocol"), p.get("PublishMode"))
        for p in lookup(task, "Status", "PortStatus", "Ports", default=()) or ()
        if isinstance(p, dict)
    )


def _addresses(task: dict) -> tuple:
    return tuple(
        (lookup(a, "Network", "ID", default=""), tuple(a.get("Addresses") or ()))
        for a in task.get("NetworksAttachments") or ()
        if isinstance(a, dict)
    )


def digest(tasks: list, nodes: list) -> int:
    """
    A hash of the task and node fields the snapshot depends on.

    Timestamps and version indexes are left out: a heartbeat that changes
    nothing edge routes on must not cost a rebuild.
    """
    task_part = frozenset(
        (
            t.get("ID"),
            t.get("ServiceID"),
            t.get("NodeID"),
            t.get("DesiredState"),
            lookup(t, "Status", "State"),
            _ports(t),
            _addresses(t),
        )
        for t in tasks
        if isinstance(t, dict)
    )
    node_part = frozenset(
        (
            n.get("ID"),
            lookup(n, "Status", "State"),
            lookup(n, "Status", "Addr"),
            lookup(n, "Spec", "Availability"),
            lookup(n, "Spec", "Role"),
            lookup(n, "ManagerStatus", "Reachability"),
            lookup(n, "ManagerStatus", "Leader"),
            lookup(n, "ManagerStatus", "Addr"),
            lookup(n, "Description", "Hostname"),
        )
        for n in nodes
        if isinstance(n, dict)
    )
    return hash((task_part, node_part))


def read_tasks_nodes(client) -> tuple[list, list, int]:
    """One blocking poll through the SDK: (tasks meant to run, nodes, their digest)."""
    tasks = client.tasks(filters={"desired-state": "running"})
    nodes = client.nodes()
    return tasks, nodes, digest(tasks, nodes)


# The speed-up switch: compare a poll's raw bytes with the previous poll's and
# decode only when they differ (decoding is most of a poll's cost: 9 of 16 ms
# at 600 tasks).  It reads through the SDK client as the requests.Session it
# is, with the Engine API's own URL layout, instead of client.tasks().
RAW_COMPARE = True

_TASK_FILTER = json.dumps({"desired-state": ["running"]})


class TaskReader:
    """Polls /tasks and /nodes; an answer byte-identical to the last one is not decoded again."""

    def __init__(self, raw_compare: bool = RAW_COMPARE):
        self._raw_compare = raw_compare
        self._key: bytes | None = None
        self._last: tuple[list, list, int] | None = None
        self.decoded = 0  # how many reads were decoded (bench, tests)

    def read(self, client) -> tuple[list, list, int]:
        if not self._raw_compare:
            self.decoded += 1
            return read_tasks_nodes(client)
        tasks_body = _body(client, "/tasks", {"filters": _TASK_FILTER})
        nodes_body = _body(client, "/nodes", None)
        key = hashlib.blake2b(tasks_body + b"\0" + nodes_body, digest_size=16).digest()
        if key != self._key or self._last is None:
            tasks, nodes = json.loads(tasks_body), json.loads(nodes_body)
            if not isinstance(tasks, list) or not isinstance(nodes, list):
                raise ValueError("the Engine API answered /tasks or /nodes with something other than a list")
            self._last = (tasks, nodes, digest(tasks, nodes))
            self._key = key
            self.decoded += 1
        return self._last


def _body(client, path: str, params) -> bytes:
    response = client.get(
        f"{client.base_url}/v{client.api_version}{path}", params=params, timeout=client.timeout
    )
    response.raise_for_status()
    return response.content
