"""
What the cheap ``/tasks`` + ``/nodes`` poll costs on a big swarm.

Answers recorded from the test cluster (tests/testbed/cluster.sh; one
service, three host-mode tasks, four nodes: bench/task_reads/recorded.json)
are multiplied into ``--services`` services with ``--tasks`` tasks each (new
IDs, ports and addresses per copy) and served by a small fake Engine API on a
unix socket, in a subprocess so its CPU is not counted.  The real docker SDK
client reads it as the provider does, and the script reports, per poll:

- read: ``GET /tasks?filters=desired-state=running`` + ``GET /nodes``, JSON
  decoded, plus the digest, through the SDK; and with ``RAW_COMPARE``
  (:class:`~edge.discovery.poll.TaskReader`: bytes equal to the last read's
  are not decoded), unchanged and changed (what every poll costs, in edge's
  pool thread);
- rebuild: ``ClusterMemory.apply`` + ``build_snapshot`` of the whole view
  (only when the digest changed, on the reactor thread);
- the unchanged-digest check.

Usage: .venv/bin/python bench/task_reads.py [--services 200] [--tasks 3] [--polls 100]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import socketserver
import statistics
import subprocess
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
RECORDED = os.path.join(ROOT, "bench", "task_reads", "recorded.json")


def _swap(value, old: str, new: str):
    return json.loads(json.dumps(value).replace(old, new))


def scale(recorded: dict, services: int, tasks_per_service: int) -> dict:
    """``services`` copies of the recorded service, each with its own IDs and tasks."""
    base = recorded["service"]
    base_tasks = recorded["tasks"]
    out_services, out_tasks = [], []
    for i in range(services):
        sid = f"{i:05d}" + base["ID"][5:]
        name = f"svc{i:03d}"
        svc = _swap(base, base["ID"], sid)
        svc["Spec"]["Name"] = name
        svc["Spec"]["Labels"] = {"traefik.frontend.rule": f"Host:{name}.test", "traefik.port": "80"}
        out_services.append(svc)
        for j in range(tasks_per_service):
            t = copy.deepcopy(base_tasks[j % len(base_tasks)])
            t["ID"] = f"{i:05d}{j:03d}" + t["ID"][8:]
            t["ServiceID"] = sid
            for p in t.get("Status", {}).get("PortStatus", {}).get("Ports", []) or []:
                p["PublishedPort"] = 20000 + i * tasks_per_service + j
            for a in t.get("NetworksAttachments") or []:
                a["Addresses"] = [f"10.{1 + i // 250}.{i % 250}.{2 + j}/16"]
            out_tasks.append(t)
    return {"services": out_services, "tasks": out_tasks}


def serve(sock_path: str, data_path: str) -> None:
    """The fake Engine API: fixed answers for the few endpoints edge reads."""
    with open(data_path) as f:
        data = json.load(f)
    bodies = {
        "/version": json.dumps({"ApiVersion": data["version"], "Version": "20.10"}).encode(),
        "/tasks": json.dumps(data["tasks"]).encode(),
        "/nodes": json.dumps(data["nodes"]).encode(),
        "/services": json.dumps(data["services"]).encode(),
        "/networks": json.dumps(data["networks"]).encode(),
        "/info": json.dumps(data["info"]).encode(),
    }

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            path = "/" + path.lstrip("/").split("/", 1)[-1] if path.count("/") > 1 else path
            body = bodies.get(path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

        def address_string(self):
            return "unix"

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

    with Server(sock_path, Handler) as server:
        print("ready", flush=True)
        server.serve_forever()


def _ms(values) -> str:
    return f"median {statistics.median(values) * 1e3:.2f} ms, p90 {sorted(values)[int(len(values) * 0.9)] * 1e3:.2f} ms"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--services", type=int, default=200)
    p.add_argument("--tasks", type=int, default=3, help="tasks per service")
    p.add_argument("--polls", type=int, default=100)
    p.add_argument("--serve", nargs=2, metavar=("SOCK", "DATA"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(*args.serve)
        return

    from edge.config import DockerConfig
    from edge.discovery.build import DockerState, SelfFacts, build_snapshot
    from edge.discovery.docker_client import api_client
    from edge.discovery.memory import ClusterMemory
    from edge.discovery.poll import TaskReader, digest, read_tasks_nodes

    with open(RECORDED) as f:
        recorded = json.load(f)
    scaled = scale(recorded, args.services, args.tasks)
    data = dict(recorded, **scaled)
    tmp = tempfile.mkdtemp(prefix="edge-task-reads-")
    data_path = os.path.join(tmp, "data.json")
    sock = os.path.join(tmp, "docker.sock")
    with open(data_path, "w") as f:
        json.dump(data, f)
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", sock, data_path], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout.readline().strip() == "ready"
        client = api_client(f"unix://{sock}", timeout=10.0)
        read_tasks_nodes(client)  # warm the connection

        def measure(read):
            wall, cpu = [], []
            for _ in range(args.polls):
                w, c = time.perf_counter(), time.process_time()
                result = read()
                wall.append(time.perf_counter() - w)
                cpu.append(time.process_time() - c)
            return result, wall, cpu

        (tasks, nodes, seen), wall, cpu = measure(lambda: read_tasks_nodes(client))
        cached = TaskReader(raw_compare=True)
        (_, _, raw_seen), raw_wall, raw_cpu = measure(lambda: cached.read(client))
        assert raw_seen == seen and cached.decoded == 1
        changed_cpu = []
        for _ in range(max(5, args.polls // 5)):
            fresh = TaskReader(raw_compare=True)  # nothing to compare with: decodes
            c = time.process_time()
            fresh.read(client)
            changed_cpu.append(time.process_time() - c)
        body = len(json.dumps(tasks)) + len(json.dumps(nodes))

        config = DockerConfig(url="unix:///x.sock")
        state = DockerState(
            info=data["info"], swarm=True, services=data["services"], tasks=tasks,
            nodes=nodes, networks=data["networks"],
        )
        memory = ClusterMemory()
        rebuild = []
        for _ in range(max(5, args.polls // 5)):
            c = time.process_time()
            snapshot = build_snapshot(memory.apply(state), config, SelfFacts())
            rebuild.append(time.process_time() - c)
        routed = sum(len(s.targets) for s in snapshot.services)
        check = []
        for _ in range(args.polls):
            c = time.perf_counter()
            digest(tasks, nodes) == seen
            check.append(time.perf_counter() - c)
    finally:
        server.terminate()
        server.wait(5)
    load = os.getloadavg()
    print(f"task reads: {args.services} services, {len(tasks)} tasks, {len(nodes)} nodes,"
          f" {body / 1024:.0f} KiB of JSON per poll; load {load[0]:.2f}")
    print(f"  poll through the SDK (GET /tasks + /nodes, decode, digest): CPU {_ms(cpu)}; wall {_ms(wall)}")
    print(f"  poll with RAW_COMPARE, bytes unchanged (no decode): CPU {_ms(raw_cpu)}; wall {_ms(raw_wall)}")
    print(f"  poll with RAW_COMPARE, bytes changed (decode): CPU {_ms(changed_cpu)}")
    print(f"  of which digest alone: {_ms(check)}")
    print(f"  rebuild on change (memory + build_snapshot): CPU {_ms(rebuild)}; {routed} targets routed")
    every = 0.5
    print(f"  at one poll per {every} s with no change: {statistics.median(raw_cpu) / every * 100:.1f}% of one core"
          f" ({statistics.median(cpu) / every * 100:.1f}% through the SDK)")


if __name__ == "__main__":
    main()
