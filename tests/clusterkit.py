"""
Helpers for tests on the multi-node test swarm (tests/testbed/cluster.sh).

Everything that sends a packet (edge itself, dig, the samplers) runs inside a
node's network namespace through :meth:`Cluster.in_ns`; the test process in
the host namespace only talks to the engines' unix sockets.

``python -m tests.clusterkit sample ...`` is the sampler the tests run inside
a node namespace: DNS questions (dnspython) and HTTP requests to edge at a
fixed rate for a bounded time, one JSON line per answer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import docker

from tests.swarmkit import IMAGE, NETWORK, wait_for

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "testbed" / "cluster.sh"
NODES = ("m1", "m2", "m3", "w1")
MANAGERS = ("m1", "m2", "m3")
_OFFSETS = {"m1": 11, "m2": 12, "m3": 13, "w1": 21}


class Cluster:
    def __init__(self, prefix: str | None = None, subnet: str | None = None):
        self.prefix = prefix or os.environ.get("EDGE_CLUSTER_PREFIX", "edgecl")
        self.subnet = subnet or os.environ.get("EDGE_CLUSTER_SUBNET", "10.213.7.0/24")
        self.base = self.subnet.rsplit(".", 1)[0]
        self._services: list[tuple[str, str]] = []

    # -- names

    def ns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def hostname(self, node: str) -> str:
        return self.ns(node)  # cluster.sh sets each engine's hostname to its namespace

    def addr(self, node: str) -> str:
        return f"{self.base}.{_OFFSETS[node]}"

    def sock(self, node: str) -> str:
        return f"unix:///run/{self.prefix}/{node}/docker.sock"

    def node_of_address(self, address: str) -> str:
        return next(n for n in NODES if self.addr(n) == address)

    def client(self, node: str, timeout: float = 5.0) -> docker.APIClient:
        return docker.APIClient(base_url=self.sock(node), timeout=timeout, version="1.41")

    def in_ns(self, node: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(node), *argv]

    # -- state

    def up(self) -> bool:
        try:
            return all(self.client(n, 3).info()["Swarm"]["LocalNodeState"] == "active" for n in NODES)
        except Exception:
            return False

    def nodes(self, via: str) -> dict[str, dict]:
        """``/nodes`` as seen by manager ``via``, keyed by our node names."""
        out = {}
        for raw in self.client(via).nodes():
            name = raw["Description"]["Hostname"]
            if name.startswith(self.prefix + "-"):
                out[name[len(self.prefix) + 1 :]] = raw
        return out

    def leader(self, via: str | None = None) -> str | None:
        for manager in ([via] if via else MANAGERS):
            try:
                for name, raw in self.nodes(manager).items():
                    if (raw.get("ManagerStatus") or {}).get("Leader"):
                        return name
            except Exception:
                continue
        return None

    def healthy(self, via: str) -> bool:
        """Every node ready, every manager reachable, a leader: the cluster is whole."""
        try:
            nodes = self.nodes(via)
        except Exception:
            return False
        return (
            set(nodes) == set(NODES)
            and all(n["Status"]["State"] == "ready" for n in nodes.values())
            and all(
                nodes[m]["ManagerStatus"]["Reachability"] == "reachable" for m in MANAGERS
            )
            and any(nodes[m]["ManagerStatus"].get("Leader") for m in MANAGERS)
        )

    def wait_healthy(self, via: str, timeout: float = 120.0) -> None:
        wait_for(lambda: self.healthy(via), timeout, "every node ready and every manager reachable", 0.5)

    def stop(self, node: str) -> float:
        """Stop a node's engine (SIGTERM, as a shutdown would); returns when it was sent."""
        pid = int(Path(f"/run/{self.prefix}/{node}/docker.pid").read_text())
        at = time.monotonic()
        os.kill(pid, 15)
        wait_for(lambda: not _alive(pid), 60, f"dockerd of {node} to exit", 0.1)
        return at

    def start(self, node: str) -> None:
        self._script("start", node)

    def _script(self, *args: str) -> None:
        subprocess.run(["bash", str(SCRIPT), *args], check=True, timeout=180, env=dict(
            os.environ, EDGE_CLUSTER_PREFIX=self.prefix, EDGE_CLUSTER_SUBNET=self.subnet))

    # -- services

    def create_web(self, via: str, name: str, on: tuple[str, ...], labels: dict, published: int = 0):
        """
        A global busybox httpd service on nodes ``on`` only.

        Port 80 is published in host mode: on ``published``, on a random port
        when 0; not at all when -1 (reached by task IP over the overlay).
        """
        others = [n for n in NODES if n not in on]
        port = {"Protocol": "tcp", "TargetPort": 80, "PublishMode": "host"}
        if published > 0:
            port["PublishedPort"] = published
        spec = docker.types.TaskTemplate(
            container_spec=docker.types.ContainerSpec(
                IMAGE,
                command=["/bin/sh", "-c", "mkdir -p /tmp/www && hostname > /tmp/www/index.html"
                         " && exec /bin/httpd -f -p 80 -h /tmp/www"],
            ),
            placement=docker.types.Placement(
                constraints=[f"node.hostname!={self.hostname(n)}" for n in others]
            ),
            networks=[{"Target": NETWORK}],
        )
        client = self.client(via, 30)
        created = client.create_service(
            spec,
            name=name,
            labels=labels,
            mode=docker.types.ServiceMode("global"),
            endpoint_spec=docker.types.EndpointSpec(ports=[port] if published >= 0 else []),
        )
        self._services.append((via, created["ID"]))
        return created["ID"]

    def running(self, via: str, service: str) -> dict[str, dict]:
        """Running tasks of ``service`` by our node name, as manager ``via`` reads them."""
        names = {raw["ID"]: name for name, raw in self.nodes(via).items()}
        out = {}
        for t in self.client(via).tasks(filters={"service": service}):
            if t["Status"]["State"] == "running" and t["DesiredState"] == "running":
                out[names.get(t["NodeID"], t["NodeID"])] = t
        return out

    def task_container(self, node: str, task_id: str) -> str:
        found = self.client(node).containers(filters={"label": f"com.docker.swarm.task.id={task_id}"})
        assert found, f"no container of task {task_id} on {node}"
        return found[0]["Id"]

    def cleanup(self) -> None:
        for via, sid in self._services:
            for manager in (via, *MANAGERS):
                try:
                    self.client(manager, 10).remove_service(sid)
                    break
                except docker.errors.NotFound:
                    break
                except Exception:
                    continue
        self._services = []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Sampler:
    """``python -m tests.clusterkit sample`` in a node namespace; its JSON lines once it ends."""

    def __init__(self, cluster: Cluster, node: str, *args: str, log: Path, mode: str = "sample"):
        self._out = open(log, "w")
        self.log = log
        self.proc = subprocess.Popen(
            cluster.in_ns(node, sys.executable, "-m", "tests.clusterkit", mode, *args),
            cwd=ROOT,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> list[dict]:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(30)
        self._out.close()
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]


def _sample(argv: list[str]) -> None:
    """DNS and/or HTTP at ``--rate`` per second for at most ``--duration`` seconds."""
    import argparse
    import http.client
    import signal

    import dns.message
    import dns.query
    import dns.rcode
    import dns.rdatatype

    p = argparse.ArgumentParser(prog="clusterkit sample")
    p.add_argument("--dns", help="HOST:PORT of edge's DNS")
    p.add_argument("--name", action="append", default=[], help="names to ask (A)")
    p.add_argument("--http", help="HOST:PORT of edge's HTTP entry point")
    p.add_argument("--host", action="append", default=[], help="Host headers to send, each in turn")
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--duration", type=float, default=120.0)
    args = p.parse_args(argv)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    end = time.monotonic() + min(args.duration, 600.0)
    n = 0
    while not stop and time.monotonic() < end:
        tick = time.monotonic()
        for name in args.name:
            host, port = args.dns.rsplit(":", 1)
            record = {"kind": "dns", "name": name, "t": time.time()}
            try:
                answer = dns.query.udp(dns.message.make_query(name, "A"), host, port=int(port), timeout=1.0)
                record["rcode"] = dns.rcode.to_text(answer.rcode())
                record["a"] = sorted(r.to_text() for rr in answer.answer if rr.rdtype == dns.rdatatype.A for r in rr)
            except Exception as e:
                record["error"] = type(e).__name__
            print(json.dumps(record), flush=True)
        for name in args.host if args.http else ():
            host, port = args.http.rsplit(":", 1)
            record = {"kind": "http", "host": name, "t": time.time()}
            try:
                conn = http.client.HTTPConnection(host, int(port), timeout=3.0)
                conn.request("GET", "/", headers={"Host": name})
                response = conn.getresponse()
                record["status"] = response.status
                record["body"] = response.read(200).decode("utf-8", "replace").strip()
                conn.close()
            except Exception as e:
                record["error"] = type(e).__name__
            print(json.dumps(record), flush=True)
        n += 1
        time.sleep(max(0.0, 1.0 / args.rate - (time.monotonic() - tick)))


def _sample_retry(argv: list[str]) -> None:
    """
    A client that knows every manager: each request (and DNS question) goes to
    the next manager in turn and, when that one fails, to the others; one JSON
    line per request saying whether any manager answered and how many were tried.
    """
    import argparse
    import http.client
    import signal

    import dns.message
    import dns.query
    import dns.rcode
    import dns.rdatatype

    p = argparse.ArgumentParser(prog="clusterkit sample-retry")
    p.add_argument("--manager", action="append", required=True)
    p.add_argument("--host", required=True, help="routed name: Host header and DNS question")
    p.add_argument("--http-port", type=int, default=80)
    p.add_argument("--dns-port", type=int, default=53)
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--duration", type=float, default=300.0)
    args = p.parse_args(argv)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    end = time.monotonic() + min(args.duration, 600.0)
    n = 0
    managers = args.manager
    while not stop and time.monotonic() < end:
        tick = time.monotonic()
        order = managers[n % len(managers):] + managers[: n % len(managers)]
        for kind in ("http", "dns"):
            record = {"kind": kind, "t": time.time(), "tries": 0, "ok": False, "errors": []}
            for manager in order:
                record["tries"] += 1
                try:
                    if kind == "http":
                        conn = http.client.HTTPConnection(manager, args.http_port, timeout=1.0)
                        conn.request("GET", "/", headers={"Host": args.host})
                        response = conn.getresponse()
                        body = response.read(200).decode("utf-8", "replace").strip()
                        conn.close()
                        if response.status == 200:
                            record.update(ok=True, via=manager, body=body)
                            break
                        record["errors"].append(f"{manager}:{response.status}")
                    else:
                        answer = dns.query.udp(dns.message.make_query(args.host, "A"), manager,
                                               port=args.dns_port, timeout=0.5)
                        a = sorted(r.to_text() for rr in answer.answer if rr.rdtype == dns.rdatatype.A for r in rr)
                        if answer.rcode() == dns.rcode.NOERROR and a:
                            record.update(ok=True, via=manager, a=a)
                            break
                        record["errors"].append(f"{manager}:{dns.rcode.to_text(answer.rcode())}:empty")
                except Exception as e:
                    record["errors"].append(f"{manager}:{type(e).__name__}")
            print(json.dumps(record), flush=True)
        n += 1
        time.sleep(max(0.0, 1.0 / args.rate - (time.monotonic() - tick)))


def record_figure(name: str, value, unit: str = "s") -> None:
    """A measured figure, for the report: printed and kept in /tmp/<prefix>/figures.jsonl."""
    line = {"figure": name, "value": value, "unit": unit, "at": time.time()}
    print(f"FIGURE {name}: {value} {unit}")
    prefix = os.environ.get("EDGE_CLUSTER_PREFIX", "edgecl")
    try:
        with open(f"/tmp/{prefix}/figures.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")
    except OSError:
        pass


if __name__ == "__main__":
    if sys.argv[1:2] == ["sample"]:
        _sample(sys.argv[2:])
    elif sys.argv[1:2] == ["sample-retry"]:
        _sample_retry(sys.argv[2:])
    else:
        print("usage: python -m tests.clusterkit sample ...", file=sys.stderr)
        sys.exit(2)
