# What every bench script does before and around its measurements; sourced
# by bench/*.sh (bash, set -euo pipefail).
#
#   bench_need TOOL[:PACKAGE]...  install the Debian package of each missing tool
#   bench_dir NAME                $DIR, a fresh temp dir, removed (and every pid in
#                                 PIDS killed) when the script exits
#   render TEMPLATE PORT [SED...] a template with @DIR@ @PORT@ @ORIGIN@ filled in
#   start_origin TEMPLATE         the nginx origin on $ORIGIN, serving $DIR/www
#   wait_port PORT                until something accepts on 127.0.0.1:PORT
#   free_port                     a free UDP/TCP port number on 127.0.0.1
#   child_pid PID                 PID's first child (nginx's worker), once it has one
#   cpu_ticks PID...              utime+stime of the pids and their children
#   per_request_us TICKS N        CPU microseconds per request from a tick delta
#   machine_line                  date, cores and load, for every results header

BENCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HZ=$(getconf CLK_TCK)

bench_need() {
    local want tool package missing=()
    for want in "$@"; do
        tool=${want%%:*}
        package=${want#*:}
        command -v "$tool" >/dev/null 2>&1 || missing+=("$package")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    echo "bench: installing Debian packages: ${missing[*]}" >&2
    if [ "$(id -u)" != 0 ]; then
        echo "bench: not root; install them first: apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
    # Only the binaries are wanted: a packaged service the install started is stopped.
    local svc
    for svc in nginx haproxy caddy; do
        if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled "$svc" >/dev/null 2>&1; then
            systemctl disable --now "$svc" >/dev/null 2>&1 || true
        elif [ -x "/etc/init.d/$svc" ]; then
            "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
        fi
    done
}

PIDS=()
_bench_cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    sleep 0.3
    for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -z "${DIR:-}" ] || rm -rf "$DIR"
}

bench_dir() {
    DIR=$(mktemp -d "/tmp/edge-bench-$1.XXXXXX")
    chmod 755 "$DIR"  # nginx workers run as www-data/nobody
    trap _bench_cleanup EXIT
}

render() {
    local template=$1 port=$2
    shift 2
    sed -e "s#@DIR@#$DIR#g" -e "s#@PORT@#$port#g" -e "s#@ORIGIN@#${ORIGIN:-}#g" "$@" "$template"
}

wait_port() {
    local _
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "bench: nothing listens on port $1" >&2
    return 1
}

start_origin() {
    render "$1" "$ORIGIN" > "$DIR/origin.conf"
    nginx -c "$DIR/origin.conf" -e "$DIR/origin-error.log" &
    PIDS+=($!)
    wait_port "$ORIGIN"
}

free_port() {  # free for UDP and TCP alike (a DNS server wants both)
    python3 -c '
import socket
for _ in range(100):
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        tcp.bind(("127.0.0.1", udp.getsockname()[1]))
    except OSError:
        continue
    print(udp.getsockname()[1])
    break
'
}

child_pid() {
    local _ child
    for _ in $(seq 50); do
        child=$(pgrep -P "$1" | head -1 || true)
        if [ -n "$child" ]; then echo "$child"; return 0; fi
        sleep 0.1
    done
    echo "bench: process $1 started no child" >&2
    return 1
}

cpu_ticks() {
    local total=0 pid
    for pid in "$@" $(for p in "$@"; do pgrep -P "$p" || true; done); do
        if [ -r "/proc/$pid/stat" ]; then
            total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
        fi
    done
    echo "$total"
}

per_request_us() {
    awk -v t="$1" -v r="$2" -v hz="$HZ" 'BEGIN {printf "%.0f", (r > 0 ? t / hz * 1e6 / r : 0)}'
}

machine_line() {
    echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
}
