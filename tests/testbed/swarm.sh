#!/bin/bash
# Start (or stop) a throw-away dockerd in swarm mode inside its own network
# namespace, so nothing the tests do can reach another machine.
# Usage: tests/testbed/swarm.sh up|down|env
set -euo pipefail
NS=${EDGE_TEST_NETNS:-edge-test}
ROOT=${EDGE_TEST_ROOT:-/tmp/edge-test}
SOCK=$ROOT/docker.sock
export DOCKER_HOST=unix://$SOCK

log() { echo "testbed: $*" >&2; }

up() {
    if [ -S "$SOCK" ] && docker info >/dev/null 2>&1; then
        log "dockerd already answering on $SOCK"
    else
        command -v dockerd >/dev/null || { log "dockerd missing (apt-get install docker.io)"; exit 1; }
        ip netns list | grep -qw "$NS" || ip netns add "$NS"
        ip -n "$NS" link set lo up
        mkdir -p "$ROOT"
        rm -f "$SOCK"
        setsid nsenter --net=/run/netns/$NS -- dockerd \
            --data-root "$ROOT/data" --exec-root "$ROOT/exec" \
            -H "unix://$SOCK" --pidfile "$ROOT/docker.pid" \
            >"$ROOT/dockerd.log" 2>&1 </dev/null &
        for _ in $(seq 1 120); do
            docker info >/dev/null 2>&1 && break
            sleep 0.5
        done
        docker info >/dev/null 2>&1 || { log "dockerd did not start"; tail -20 "$ROOT/dockerd.log" >&2; exit 1; }
        log "dockerd up on $SOCK"
        started=1
    fi
    if [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" != active ]; then
        docker swarm init --advertise-addr 127.0.0.1 >/dev/null
        log "swarm initialised"
    elif [ "${started:-}" = 1 ] && [ "${EDGE_TEST_CLEAN:-}" = 1 ]; then
        # `make test` on a throw-away engine just started: what an earlier
        # run left in its swarm (a run stopped before its clean-up; CI reuses
        # the machine) must not show up in this run's snapshots. Images stay.
        leftover=$(docker service ls -q)
        [ -z "$leftover" ] || { docker service rm $leftover >/dev/null; log "removed services an earlier run left"; }
        leftover=$(docker ps -aq)
        [ -z "$leftover" ] || { docker rm -f $leftover >/dev/null; log "removed containers an earlier run left"; }
        docker network prune -f >/dev/null 2>&1 || true
    fi
    docker network inspect frontend >/dev/null 2>&1 || \
        docker network create -d overlay --attachable frontend >/dev/null
    if ! docker image inspect edge-test/busybox:1 >/dev/null 2>&1; then
        tmp=$(mktemp -d)
        mkdir -p "$tmp/bin" "$tmp/www"
        cp "$(command -v busybox)" "$tmp/bin/busybox"
        for c in sh httpd echo cat hostname sleep nc env; do ln -sf busybox "$tmp/bin/$c"; done
        echo hello > "$tmp/www/index.html"
        tar -C "$tmp" -c . | docker import - edge-test/busybox:1 >/dev/null
        rm -rf "$tmp"
        log "image edge-test/busybox:1 made"
    fi
}

down() {
    if [ -f "$ROOT/docker.pid" ]; then
        pid=$(cat "$ROOT/docker.pid")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    ip netns delete "$NS" 2>/dev/null || true
    log "down"
}

case "${1:-up}" in
    up) up ;;
    down) down ;;
    env) echo "export DOCKER_HOST=$DOCKER_HOST EDGE_TEST_NETNS=$NS" ;;
    *) echo "usage: $0 up|down|env" >&2; exit 2 ;;
esac
