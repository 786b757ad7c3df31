#!/usr/bin/env bash
# edge's DNS against dnsmasq, side by side in one run, with dnsperf.
#
#   bash bench/dns.sh            # DURATION=10 seconds per measurement
#   DURATION=5 bash bench/dns.sh
#
# Both servers answer the same 1,000 local names (edge: config-file routes,
# answered through the discovery snapshot; dnsmasq: a hosts file) and forward
# the same 1,000 other names to one upstream dnsmasq, their caches warmed
# first.  For each: QPS with 100 queries outstanding, CPU time per query from
# /proc/PID/stat (utime+stime) around that run, and p50/p99 latency at a
# steady 2,000 QPS.  Everything runs on 127.0.0.1 high ports.
set -euo pipefail

cd "$(dirname "$0")/.."
. bench/lib.sh
DURATION=${DURATION:-10}
PY=${PY:-.venv/bin/python}
TWISTD=${TWISTD:-.venv/bin/twistd}
bench_need dnsperf dnsmasq:dnsmasq-base dig:dnsutils
DNSMASQ=${DNSMASQ:-$(command -v dnsmasq)}
command -v "$TWISTD" >/dev/null || { echo "bench/dns.sh: $TWISTD is missing (make venv)" >&2; exit 1; }
bench_dir dns
EDGE_PORT=$(free_port); PEER_PORT=$(free_port); UP_PORT=$(free_port)
HTTP_PORT=$(free_port); ADMIN_PORT=$(free_port)
"$PY" bench/dns/setup.py "$DIR" "$EDGE_PORT" "$PEER_PORT" "$UP_PORT" "$HTTP_PORT" "$ADMIN_PORT"

dnsmasq_common=(--keep-in-foreground --no-resolv --no-hosts --listen-address=127.0.0.1
                --bind-interfaces --log-facility=- --user=root)
# The upstream both forward to.
"$DNSMASQ" "${dnsmasq_common[@]}" --port="$UP_PORT" --addn-hosts="$DIR/upstream.hosts" \
    --local-ttl=3600 >"$DIR/upstream.log" 2>&1 &
UP_PID=$!; PIDS+=($UP_PID)
# The peer: local names from a hosts file, the rest forwarded with a cache.
"$DNSMASQ" "${dnsmasq_common[@]}" --port="$PEER_PORT" --addn-hosts="$DIR/local.hosts" \
    --local-ttl=5 --server="127.0.0.1#$UP_PORT" --cache-size=10000 >"$DIR/peer.log" 2>&1 &
PEER_PID=$!; PIDS+=($PEER_PID)
# edge: the real program; Docker is unreachable on purpose (the routes come
# from the config file), which costs nothing once its back-off is long.
"$TWISTD" -n --pidfile= edge --config "$DIR/edge.toml" >"$DIR/edge.log" 2>&1 &
EDGE_PID=$!; PIDS+=($EDGE_PID)

wait_answer() {  # port name
    for _ in $(seq 100); do
        if [ -n "$(dig @127.0.0.1 -p "$1" "$2" +short +time=1 +tries=1 2>/dev/null)" ]; then return 0; fi
        for pid in "${PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null || { echo "bench/dns.sh: process $pid exited" >&2; cat "$DIR"/*.log >&2; exit 1; }
        done
        sleep 0.2
    done
    echo "bench/dns.sh: nothing answers $2 on port $1" >&2; cat "$DIR/edge.log" >&2; exit 1
}
wait_answer "$UP_PORT" fwd0.up.bench
wait_answer "$PEER_PORT" svc999.bench.home
wait_answer "$EDGE_PORT" svc999.bench.home

# Warm both caches with every forwarded name.
for port in "$EDGE_PORT" "$PEER_PORT"; do
    dnsperf -s 127.0.0.1 -p "$port" -d "$DIR/forwarded.queries" -n 2 -q 20 >/dev/null
done

declare -A QPS CPU P50 P99
measure() {  # label pid port queryfile
    local label=$1 pid=$2 port=$3 file=$4 before after out completed p50 p99 n
    before=$(cpu_ticks "$pid")
    out=$(dnsperf -s 127.0.0.1 -p "$port" -d "$file" -q 100 -l "$DURATION" 2>&1)
    after=$(cpu_ticks "$pid")
    completed=$(awk '/Queries completed:/ {print $3}' <<<"$out")
    QPS[$label]=$(awk '/Queries per second:/ {printf "%.0f", $4}' <<<"$out")
    CPU[$label]=$(awk -v t=$((after - before)) -v hz="$HZ" -v n="$completed" 'BEGIN {printf "%.1f", t / hz / n * 1e6}')
    read -r p50 p99 n < <(dnsperf -s 127.0.0.1 -p "$port" -d "$file" -q 100 -Q 2000 \
        -l "$DURATION" -v 2>/dev/null | "$PY" bench/dns/p99.py)
    P50[$label]=$p50; P99[$label]=$p99
    printf '%-22s %8s QPS  %6s us CPU/query  p50 %5s us  p99 %5s us (at 2000 QPS)\n' \
        "$label" "${QPS[$label]}" "${CPU[$label]}" "${P50[$label]}" "${P99[$label]}"
}

echo "dnsperf, 100 outstanding, ${DURATION}s per run; $(machine_line)"
measure "dnsmasq local" "$PEER_PID" "$PEER_PORT" "$DIR/local.queries"
measure "edge local" "$EDGE_PID" "$EDGE_PORT" "$DIR/local.queries"
measure "dnsmasq forwarded" "$PEER_PID" "$PEER_PORT" "$DIR/forwarded.queries"
measure "edge forwarded" "$EDGE_PID" "$EDGE_PORT" "$DIR/forwarded.queries"

for pid in "$UP_PID" "$PEER_PID" "$EDGE_PID"; do
    kill -0 "$pid" 2>/dev/null || echo "bench/dns.sh: WARNING: process $pid died during the run; figures are void" >&2
done
echo "upstream saw $(grep -c 'query\[' "$DIR/upstream.log" || true) queries (log-queries off: 0 expected)" >&2

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
echo
echo "| names | edge QPS | dnsmasq QPS | QPS ratio | edge CPU/query | dnsmasq CPU/query | edge p99 @2k QPS | dnsmasq p99 @2k QPS |"
echo "|---|---|---|---|---|---|---|---|"
for kind in local forwarded; do
    e="edge $kind"; d="dnsmasq $kind"
    echo "| $kind (1,000) | ${QPS[$e]} | ${QPS[$d]} | $(ratio "${QPS[$e]}" "${QPS[$d]}")x | ${CPU[$e]} us | ${CPU[$d]} us | ${P99[$e]} us | ${P99[$d]} us |"
done
