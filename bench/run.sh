#!/usr/bin/env bash
# `make bench`: every bench script in one go.  Each script installs the
# Debian packages of the programs it drives when they are missing
# (bench/lib.sh: bench_need; their packaged services are left stopped), so
# this runs on a fresh Debian machine.
#
#   bash bench/run.sh              # all of them
#   bash bench/run.sh dns http     # some of them
#
# discovery needs the test swarm (tests/testbed/swarm.sh up); the others run
# on loopback. Figures go to standard output (tls also to bench/tls/results.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

which=("$@")
[ ${#which[@]} -gt 0 ] || which=(discovery dns http tls forwardauth)
for name in "${which[@]}"; do
    echo "=== bench: $name ==="
    case "$name" in
        discovery)
            bench_need dockerd:docker.io nsenter:util-linux ip:iproute2 busybox:busybox-static
            bash tests/testbed/swarm.sh up
            DOCKER_HOST=unix:///tmp/edge-test/docker.sock \
                ip netns exec edge-test .venv/bin/python bench/discovery_latency.py ;;
        dns) bash bench/dns.sh ;;
        http) bash bench/http.sh ;;
        tls) bash bench/tls.sh ;;
        forwardauth) bash bench/forwardauth.sh ;;
        *) echo "bench: unknown bench $name (discovery, dns, http, tls, forwardauth)" >&2; exit 2 ;;
    esac
done
