#!/bin/bash
# A throw-away multi-node swarm on one machine: 3 managers + 1 worker, each
# dockerd in its own network namespace, linked by a bridge in a "switch"
# namespace.  Nothing is attached to the host namespace and nothing can leave
# the machine (see ../shared/notes/multinode-swarm.md for the recipe):
#  - no default route in any node namespace; unreachable 0.0.0.0/1,
#    128.0.0.0/1 and ::/0 there, so a stray connect() fails at once;
#  - icmp_ratelimit=0 in the node namespaces, so every stray connection from a
#    container gets its "unreachable" answer;
#  - `unreachable <subnet>` in the host namespace, so a probe sent from the
#    host by mistake fails instead of following the host's default route.
# Probes (dig, curl, edge in host mode) must run inside a node namespace.
#
# Usage: tests/testbed/cluster.sh up|down|env|stop NODE|start NODE|status|image [TAG]
# Names: EDGE_CLUSTER_PREFIX (default edgecl) gives namespaces PREFIX-sw,
# PREFIX-m1..m3, PREFIX-w1 and state under /run/PREFIX and /tmp/PREFIX;
# EDGE_CLUSTER_SUBNET (default 10.213.7.0/24, a /24) gives the addresses
# (.11-.13 managers, .21 worker).
set -euo pipefail
PREFIX=${EDGE_CLUSTER_PREFIX:-edgecl}
SUBNET=${EDGE_CLUSTER_SUBNET:-10.213.7.0/24}
RUN=/run/$PREFIX
TMP=/tmp/$PREFIX
NODES="m1 m2 m3 w1"
IMAGE=edge-test/busybox:1
NETWORK=frontend

case "$SUBNET" in
    */24) BASE=${SUBNET%.*/24} ;;
    *) echo "cluster: EDGE_CLUSTER_SUBNET must be a /24 (got $SUBNET)" >&2; exit 2 ;;
esac
[[ "$PREFIX" =~ ^[a-z0-9][a-z0-9-]{0,9}$ ]] || {
    echo "cluster: EDGE_CLUSTER_PREFIX must be 1-10 of [a-z0-9-] (got $PREFIX)" >&2; exit 2; }

log() { echo "cluster: $*" >&2; }
ns() { echo "$PREFIX-$1"; }
addr() {
    case "$1" in m1) echo "$BASE.11" ;; m2) echo "$BASE.12" ;; m3) echo "$BASE.13" ;; w1) echo "$BASE.21" ;;
        *) log "unknown node $1"; exit 2 ;; esac
}
sock() { echo "$RUN/$1/docker.sock"; }
dk() { local node=$1; shift; DOCKER_HOST=unix://$(sock "$node") docker "$@"; }
answering() { dk "$1" info >/dev/null 2>&1; }

network() {
    local sw; sw=$(ns sw)
    ip netns list | grep -qw "$sw" || ip netns add "$sw"
    ip -n "$sw" link set lo up
    ip -n "$sw" link show br0 >/dev/null 2>&1 || ip -n "$sw" link add br0 type bridge
    ip -n "$sw" link set br0 up
    for node in $NODES; do
        local n; n=$(ns "$node")
        ip netns list | grep -qw "$n" || ip netns add "$n"
        ip -n "$n" link set lo up
        if ! ip -n "$n" link show eth0 >/dev/null 2>&1; then
            ip -n "$sw" link add "sw-$node" type veth peer name eth0 netns "$n"
            ip -n "$sw" link set "sw-$node" master br0 up
            ip -n "$n" addr add "$(addr "$node")/24" dev eth0
            ip -n "$n" link set eth0 up
        fi
        # Safety first: everything outside the subnet is unreachable.
        ip -n "$n" route replace unreachable 0.0.0.0/1
        ip -n "$n" route replace unreachable 128.0.0.0/1
        ip -n "$n" -6 route replace unreachable ::/0
        if ip -n "$n" route show default | grep -q .; then
            log "$n has a default route; refusing to go on"; exit 1
        fi
        ip netns exec "$n" sysctl -qw net.ipv4.icmp_ratelimit=0
        ip netns exec "$n" sysctl -qw net.ipv6.icmp.ratelimit=0 2>/dev/null || true
    done
    ip route replace unreachable "$SUBNET"
}

start_engine() {
    local node=$1 n dir run
    n=$(ns "$node"); dir=$TMP/$node; run=$RUN/$node
    answering "$node" && return 0
    mkdir -p "$dir" "$run"
    cat >"$dir/daemon.json" <<EOF
{"deprecated-key-path": "$dir/key.json"}
EOF
    rm -f "$(sock "$node")"
    # /run/PREFIX/<hostname>/docker.sock too, for a stack's per-node bind
    # source /run/PREFIX/{{.Node.Hostname}}/docker.sock.
    ln -sfn "$run" "$RUN/$n"
    setsid nsenter --net=/run/netns/"$n" -- unshare --uts -- sh -c "hostname $n; exec dockerd \
        --config-file $dir/daemon.json --data-root $dir/data --exec-root $run/exec \
        -H unix://$(sock "$node") --pidfile $run/docker.pid --cgroup-parent /$n" \
        >"$dir/dockerd.log" 2>&1 </dev/null &
}

wait_engine() {
    local node=$1
    for _ in $(seq 1 120); do answering "$node" && return 0; sleep 0.5; done
    log "dockerd of $node did not start"; tail -20 "$TMP/$node/dockerd.log" >&2; exit 1
}

stop_engine() {
    local node=$1 pid
    [ -f "$RUN/$node/docker.pid" ] || return 0
    pid=$(cat "$RUN/$node/docker.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$RUN/$node/docker.pid"
}

make_image() {
    if ! dk m1 image inspect "$IMAGE" >/dev/null 2>&1; then
        local tmp; tmp=$(mktemp -d)
        mkdir -p "$tmp/bin" "$tmp/www"
        cp "$(command -v busybox)" "$tmp/bin/busybox"
        for c in sh httpd echo cat hostname sleep nc env; do ln -sf busybox "$tmp/bin/$c"; done
        echo hello >"$tmp/www/index.html"
        tar -C "$tmp" -c . | dk m1 import - "$IMAGE" >/dev/null
        rm -rf "$tmp"
    fi
    for node in m2 m3 w1; do
        dk "$node" image inspect "$IMAGE" >/dev/null 2>&1 || dk m1 save "$IMAGE" | dk "$node" load -q >/dev/null
    done
}

swarm() {
    if [ "$(dk m1 info --format '{{.Swarm.LocalNodeState}}')" != active ]; then
        dk m1 swarm init --advertise-addr "$(addr m1)" --listen-addr "$(addr m1):2377" >/dev/null
        log "swarm initialised on m1"
    fi
    local mtoken wtoken
    mtoken=$(dk m1 swarm join-token -q manager)
    wtoken=$(dk m1 swarm join-token -q worker)
    for node in m2 m3 w1; do
        [ "$(dk "$node" info --format '{{.Swarm.LocalNodeState}}')" = active ] && continue
        local token=$wtoken
        [ "$node" = w1 ] || token=$mtoken
        dk "$node" swarm join --token "$token" --advertise-addr "$(addr "$node")" \
            --listen-addr "$(addr "$node"):2377" "$(addr m1):2377" >/dev/null
        log "$node joined"
    done
    dk m1 network inspect "$NETWORK" >/dev/null 2>&1 || \
        dk m1 network create -d overlay --attachable "$NETWORK" >/dev/null
}

up() {
    for tool in dockerd docker busybox nsenter unshare ip; do
        command -v $tool >/dev/null || { log "$tool missing (make system-deps)"; exit 1; }
    done
    network
    for node in $NODES; do start_engine "$node"; done
    for node in $NODES; do wait_engine "$node"; done
    make_image
    swarm
    log "up: $(dk m1 node ls --format '{{.Hostname}}:{{.Status}}:{{.ManagerStatus}}' | tr '\n' ' ')"
}

down() {
    for node in $NODES; do stop_engine "$node"; done
    for node in $NODES sw; do ip netns delete "$(ns "$node")" 2>/dev/null || true; done
    ip route del unreachable "$SUBNET" 2>/dev/null || true
    # Mounts a killed engine left behind would keep rm from freeing the space.
    for dir in "$TMP" "$RUN"; do
        { grep -o " $dir/[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do
            umount -l "$m" 2>/dev/null || true; done
    done
    # $TMP/cache (edge's image inputs, kept between runs) stays.
    for node in $NODES; do rm -rf "${TMP:?}/$node"; done
    rm -rf "$RUN" "$TMP/pytest" "$TMP/figures.jsonl"
    log "down"
}

# edge's image (tests/testbed/image.sh builds it on m1), loaded on every manager.
image() {
    local tag=${1:-edge-test/edge:cluster}
    DOCKER_HOST=unix://$(sock m1) bash "$(dirname "$0")/image.sh" "$tag" >/dev/null
    for node in m2 m3; do
        [ "$(dk "$node" image inspect -f '{{.Id}}' "$tag" 2>/dev/null)" = "$(dk m1 image inspect -f '{{.Id}}' "$tag")" ] ||
            dk m1 save "$tag" | dk "$node" load -q >/dev/null
    done
    echo "$tag"
}

env_() {
    echo "export EDGE_CLUSTER_PREFIX=$PREFIX EDGE_CLUSTER_SUBNET=$SUBNET"
    for node in $NODES; do
        echo "# $node: netns $(ns "$node"), address $(addr "$node"), DOCKER_HOST=unix://$(sock "$node")"
    done
}

case "${1:-up}" in
    up) up ;;
    down) down ;;
    env) env_ ;;
    stop) stop_engine "${2:?node}" ;;
    start) start_engine "${2:?node}"; wait_engine "$2" ;;
    status) dk "${2:-m1}" node ls ;;
    image) image "${2:-}" ;;
    *) echo "usage: $0 up|down|env|stop NODE|start NODE|status [NODE]|image [TAG]" >&2; exit 2 ;;
esac
