#!/usr/bin/env bash
# `make bench`: every bench script in one go, after installing the peer
# programs from Debian's packages (their system services are not enabled).
#
#   bash bench/run.sh              # all of them
#   bash bench/run.sh dns http     # some of them
#
# discovery needs the test swarm (tests/testbed/swarm.sh up); the others run
# on loopback. Figures go to standard output and bench/*/results.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=""
for tool in nginx haproxy caddy dnsmasq dnsperf wrk h2load dig openssl; do
    command -v "$tool" >/dev/null || missing="$missing $tool"
done
if [ -n "$missing" ]; then
    echo "bench: installing Debian packages for:$missing" >&2
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        nginx-light haproxy caddy dnsmasq-base dnsperf wrk nghttp2-client dnsutils openssl
    # Only the binaries are wanted: keep the packaged services stopped.
    for svc in nginx haproxy caddy; do
        command -v systemctl >/dev/null && systemctl disable --now "$svc" 2>/dev/null || true
        pkill -x "$svc" 2>/dev/null || true
    done
fi

which=("$@")
[ ${#which[@]} -gt 0 ] || which=(discovery dns http tls)
for name in "${which[@]}"; do
    echo "=== bench: $name ==="
    case "$name" in
        discovery)
            bash tests/testbed/swarm.sh up
            DOCKER_HOST=unix:///tmp/edge-test/docker.sock \
                ip netns exec edge-test .venv/bin/python bench/discovery_latency.py ;;
        dns) bash bench/dns.sh ;;
        http) bash bench/http.sh ;;
        tls) bash bench/tls.sh ;;
        *) echo "bench: unknown bench $name (discovery, dns, http, tls)" >&2; exit 2 ;;
    esac
done
