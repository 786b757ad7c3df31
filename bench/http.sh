#!/usr/bin/env bash
# edge's HTTP proxy side by side with nginx, HAProxy and Caddy, on loopback.
#
# Every proxy runs with one worker/thread (nginx worker_processes 1, haproxy
# nbthread 1, caddy GOMAXPROCS=1, edge one process) in front of the same
# nginx origin serving a 100-byte and a 1 MiB file. wrk drives each scenario
# against every proxy in turn: small responses with 32 and 256 keep-alive
# connections, 1 MiB responses with 8. Reported: req/s, p50/p99 latency, CPU
# microseconds per request (utime+stime from /proc/PID/stat before and
# after), peak RSS so far (VmHWM), and the ratios to nginx.
#
#   bash bench/http.sh                 # 5 s per run
#   SECONDS_PER_RUN=10 bash bench/http.sh
#   PROXIES="edge nginx" bash bench/http.sh
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
ROOT=$BENCH_ROOT
CONF="$HERE/http"
RUN_SECONDS=${SECONDS_PER_RUN:-5}
PROXIES=${PROXIES:-"nginx haproxy caddy edge"}
BASE_PORT=${BASE_PORT:-28800}
ORIGIN=$BASE_PORT
declare -A PORT=([nginx]=$((BASE_PORT + 1)) [haproxy]=$((BASE_PORT + 2)) [caddy]=$((BASE_PORT + 3)) [edge]=$((BASE_PORT + 4)))

bench_need wrk nginx:nginx-light haproxy caddy curl
bench_dir http
mkdir -p "$DIR/www"
head -c 100 /dev/zero | tr '\0' 'a' > "$DIR/www/small"
head -c 1048576 /dev/urandom > "$DIR/www/big"
start_origin "$CONF/origin.conf"

# The process whose CPU and memory count: nginx's worker, the others themselves.
declare -A WORK_PID
start_proxy() {
    local name=$1 port=${PORT[$1]}
    case $name in
    nginx)
        render "$CONF/nginx-proxy.conf" "$port" > "$DIR/nginx-proxy.conf"
        nginx -c "$DIR/nginx-proxy.conf" -e "$DIR/nginx-proxy-error.log" &
        local master=$!
        PIDS+=($master)
        wait_port "$port"
        WORK_PID[$name]=$(child_pid "$master")
        ;;
    haproxy)
        render "$CONF/haproxy.cfg" "$port" > "$DIR/haproxy.cfg"
        haproxy -db -f "$DIR/haproxy.cfg" > "$DIR/haproxy.log" 2>&1 &
        WORK_PID[$name]=$!
        PIDS+=($!)
        wait_port "$port"
        ;;
    caddy)
        render "$CONF/Caddyfile" "$port" > "$DIR/Caddyfile"
        GOMAXPROCS=1 XDG_DATA_HOME="$DIR" XDG_CONFIG_HOME="$DIR" \
            caddy run --config "$DIR/Caddyfile" --adapter caddyfile > "$DIR/caddy.log" 2>&1 &
        WORK_PID[$name]=$!
        PIDS+=($!)
        wait_port "$port"
        ;;
    edge)
        render "$CONF/edge.toml" "$port" > "$DIR/edge.toml"
        "$ROOT/.venv/bin/twistd" -n --pidfile= edge --config "$DIR/edge.toml" --log-level warn \
            > "$DIR/edge.log" 2>&1 &
        WORK_PID[$name]=$!
        PIDS+=($!)
        wait_port "$port"
        ;;
    esac
}

hwm_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
to_ms() {  # wrk latency like 850.00us / 1.23ms / 1.01s -> ms
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); print v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); print v + 0 }
        else if (v ~ /s$/) { sub(/s$/, "", v); print v * 1000 }
        else print v }'
}

RESULTS="$DIR/results.tsv"
: > "$RESULTS"

measure() {  # measure PROXY SCENARIO CONNECTIONS PATH
    local name=$1 scenario=$2 conns=$3 path=$4 pid=${WORK_PID[$1]} port=${PORT[$1]}
    wrk -t1 -c"$conns" -d1s "http://127.0.0.1:$port$path" > /dev/null 2>&1 || true  # warm-up
    local before after out
    before=$(cpu_ticks "$pid")
    out=$(wrk -t1 -c"$conns" -d"${RUN_SECONDS}s" --latency "http://127.0.0.1:$port$path" 2>&1)
    after=$(cpu_ticks "$pid")
    local requests rps p50 p99 errors
    requests=$(awk '/requests in/ {print $1}' <<< "$out")
    rps=$(awk '/Requests\/sec/ {print $2}' <<< "$out")
    p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<< "$out")")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<< "$out")")
    errors=$(awk '/Non-2xx|Socket errors/ {printf "%s ", $0}' <<< "$out")
    local cpu_us
    cpu_us=$(per_request_us $((after - before)) "${requests:-0}")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$scenario" "$rps" "$p50" "$p99" "$cpu_us" \
        "$(hwm_kib "$pid")" "${errors:-}" >> "$RESULTS"
    printf '%-8s %-10s %9s req/s  p50 %7s ms  p99 %7s ms  %5s us/req  %s\n' \
        "$name" "$scenario" "$rps" "$p50" "$p99" "$cpu_us" "${errors:-}" >&2
}

# All proxies run side by side (idle ones cost nothing) and each scenario
# measures them one after the other, so the figures compared in a row were
# taken within a minute of each other on a machine whose load drifts.
for proxy in $PROXIES; do
    start_proxy "$proxy"
done
for scenario in "small-32 32 /small" "small-256 256 /small" "1MiB-8 8 /big"; do
    for proxy in $PROXIES; do
        measure "$proxy" $scenario
    done
done

echo
echo "HTTP proxy bench, $(machine_line), ${RUN_SECONDS}s per run"
python3 - "$RESULTS" <<'EOF'
import sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1])]
data = {(r[0], r[1]): r for r in rows}
scenarios = list(dict.fromkeys(r[1] for r in rows))
proxies = list(dict.fromkeys(r[0] for r in rows))
print("| proxy | scenario | req/s | × nginx | p50 ms | p99 ms | CPU µs/req | peak RSS MiB | errors |")
print("|---|---|---|---|---|---|---|---|---|")
for s in scenarios:
    ref = data.get(("nginx", s))
    for p in proxies:
        r = data.get((p, s))
        if not r:
            continue
        ratio = f"{float(r[2]) / float(ref[2]):.2f}" if ref and float(ref[2]) else "-"
        print(f"| {p} | {s} | {float(r[2]):.0f} | {ratio} | {r[3]} | {r[4]} | {r[5]} | {int(r[6]) / 1024:.1f} | {r[7] or '-'} |")
EOF
