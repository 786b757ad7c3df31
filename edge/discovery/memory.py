"""
What discovery remembers between two reads of the swarm, and why.

Swarm's answers are briefly wrong in two known ways after a leader election
(docs/operations.md, "Multi-node swarms"):

- every node reads ``Status.State: unknown`` (and managers may read
  ``Reachability: unknown``) for 0.2-15 s.  Routing on that would empty
  ``managers.<zone>`` and every routed name, so a node that reads ``unknown``
  keeps the last definite state edge saw for it;
- the tasks that nodes re-register with the new leader have no
  ``Status.PortStatus``, although their containers still listen on their
  host-mode ports.  A task keeps the last published ports edge saw for it
  (keyed by task ID, so a new task never inherits an old one's ports).

:class:`ClusterMemory` holds both and patches a fresh :class:`DockerState`
before the pure builder sees it.  It only ever remembers what is in the
latest read: a node or task absent from it is forgotten, so the memory is
bounded by the size of the swarm.
"""

from __future__ import annotations

import dataclasses

from edge.discovery.build import DockerState
from edge.discovery.poll import lookup as _get

__all__ = ["ClusterMemory", "UNKNOWN"]

UNKNOWN = "unknown"


class ClusterMemory:
    """Last definite node states and last known task ports, per ID."""

    def __init__(self):
        self._node_state: dict[str, str] = {}
        self._reachability: dict[str, str] = {}
        self._ports: dict[str, list] = {}
        # How many nodes / tasks the last apply() patched (logs, tests).
        self.patched_nodes = 0
        self.patched_tasks = 0

    def apply(self, state: DockerState) -> DockerState:
        """``state`` with remembered facts filled in where swarm reads unknown/missing."""
        if not state.swarm:
            return state
        nodes = self._nodes(state.nodes)
        tasks = self._tasks(state.tasks)
        if nodes is state.nodes and tasks is state.tasks:
            return state
        return dataclasses.replace(state, nodes=nodes, tasks=tasks)

    def _nodes(self, raw_nodes: list) -> list:
        states, reach = {}, {}
        out, patched = [], 0
        for raw in raw_nodes:
            nid = raw.get("ID", "") if isinstance(raw, dict) else ""
            if not nid:
                out.append(raw)
                continue
            state = _get(raw, "Status", "State", default=UNKNOWN)
            reachability = _get(raw, "ManagerStatus", "Reachability", default="")
            new = raw
            if state == UNKNOWN and nid in self._node_state:
                state = self._node_state[nid]
                new = dict(new, Status=dict(new.get("Status") or {}, State=state))
            if reachability == UNKNOWN and nid in self._reachability:
                reachability = self._reachability[nid]
                new = dict(new, ManagerStatus=dict(new.get("ManagerStatus") or {}, Reachability=reachability))
            if state != UNKNOWN:
                states[nid] = state
            if reachability and reachability != UNKNOWN:
                reach[nid] = reachability
            patched += new is not raw
            out.append(new)
        self._node_state, self._reachability = states, reach
        self.patched_nodes = patched
        return out if patched else raw_nodes

    def _tasks(self, raw_tasks: list) -> list:
        ports: dict[str, list] = {}
        out, patched = [], 0
        for raw in raw_tasks:
            tid = raw.get("ID", "") if isinstance(raw, dict) else ""
            if not tid:
                out.append(raw)
                continue
            known = _get(raw, "Status", "PortStatus", "Ports")
            new = raw
            if known:
                ports[tid] = known
            elif tid in self._ports:
                ports[tid] = self._ports[tid]
                status = dict(raw.get("Status") or {})
                status["PortStatus"] = dict(status.get("PortStatus") or {}, Ports=self._ports[tid])
                new = dict(raw, Status=status)
                patched += 1
            out.append(new)
        self._ports = ports
        self.patched_tasks = patched
        return out if patched else raw_tasks
