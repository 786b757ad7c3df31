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

__all__ = ["digest", "lookup", "read_tasks_nodes"]


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
    """One blocking poll: (tasks meant to run, nodes, their digest)."""
    tasks = client.tasks(filters={"desired-state": "running"})
    nodes = client.nodes()
    return tasks, nodes, digest(tasks, nodes)
