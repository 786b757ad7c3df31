"""
Write the inputs of bench/dns.sh into a directory: the same 1,000 local
names for edge (as config-file routes, so they come through discovery's
snapshot like swarm routers) and dnsmasq (as a hosts file), 1,000 names for
the shared upstream, dnsperf query files, and the two servers' configs.

    python bench/dns/setup.py DIR EDGE_DNS_PORT PEER_PORT UPSTREAM_PORT HTTP ADMIN
"""

import sys
from pathlib import Path

N = 1000
ADDRESS = "10.20.0.1"


def main(directory, dns_port, peer_port, upstream_port, http_port, admin_port):
    d = Path(directory)
    local = [f"svc{i}.bench.home" for i in range(N)]
    forwarded = [f"fwd{i}.up.bench" for i in range(N)]
    (d / "local.hosts").write_text("".join(f"{ADDRESS} {n}\n" for n in local))
    (d / "upstream.hosts").write_text(
        "".join(f"10.30.{i // 250}.{i % 250 + 1} {n}\n" for i, n in enumerate(forwarded))
    )
    (d / "local.queries").write_text("".join(f"{n} A\n" for n in local))
    (d / "forwarded.queries").write_text("".join(f"{n} A\n" for n in forwarded))
    routes = "".join(
        f'[routes.r{i}]\nrule = "Host(`{n}`)"\nbackends = ["http://127.0.0.1:9"]\n'
        for i, n in enumerate(local)
    )
    (d / "edge.toml").write_text(
        f"""[docker]
url = "unix:///nonexistent/edge-bench-docker.sock"
[entrypoints.http]
address = "tcp:{http_port}:interface=127.0.0.1"
[admin]
address = "tcp:{admin_port}:interface=127.0.0.1"
[log]
level = "warn"
[dns]
port = {dns_port}
interfaces = ["127.0.0.1"]
advertise = ["{ADDRESS}"]
upstream = ["127.0.0.1:{upstream_port}"]
cache_size = 10000
{routes}"""
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
