#!/usr/bin/env bash
# A router with compress + forwardauth + headers in edge beside nginx's
# auth_request + gzip doing the same (bench/forwardauth/nginx-proxy.conf):
# every request asks the auth server (nginx, /auth -> 200 + Remote-User),
# nothing cached, and the 10 KB HTML page is gzip-compressed (level 6 both,
# Accept-Encoding: gzip). Also edge with the same route and no middlewares
# (the page sent as it is), for the cost of the three.
#
# edge runs its HTTP service alone (tests/test_http_harness.py, the harness
# the proxy tests use) on a pickled snapshot, one process; nginx one worker.
#
#   bash bench/forwardauth.sh            # 5 s per run, 32 connections
#   SECONDS_PER_RUN=10 CONNS=64 bash bench/forwardauth.sh
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
ROOT=$BENCH_ROOT
CONF="$HERE/forwardauth"
RUN_SECONDS=${SECONDS_PER_RUN:-5}
CONNS=${CONNS:-32}
BASE_PORT=${BASE_PORT:-28900}
ORIGIN=$BASE_PORT NGINX=$((BASE_PORT + 1)) EDGE=$((BASE_PORT + 2)) PLAIN=$((BASE_PORT + 3))

bench_need wrk nginx:nginx-light curl
bench_dir fa
mkdir -p "$DIR/www"
head -c 100 /dev/zero | tr '\0' 'a' > "$DIR/www/small"
for i in $(seq 200); do echo "<p>line $i of the page edge and nginx compress</p>"; done > "$DIR/www/page.html"

start_origin "$CONF/origin.conf"
render "$CONF/nginx-proxy.conf" "$NGINX" > "$DIR/nginx.conf"
nginx -c "$DIR/nginx.conf" -e "$DIR/nginx-error.log" & master=$!; PIDS+=($master)
wait_port "$NGINX"
declare -A WORK_PID=([nginx]=$(child_pid "$master"))

start_edge() {  # start_edge NAME PORT [plain]
    (cd "$ROOT" && .venv/bin/python bench/forwardauth/snapshot.py "$ORIGIN" "$DIR/$1.pickle" ${3:-})
    printf '[entrypoints.http]\naddress = "tcp:%s:interface=127.0.0.1:backlog=4096"\n[http]\n' "$2" > "$DIR/$1.toml"
    (cd "$ROOT" && exec .venv/bin/python -m tests.test_http_harness edge "$DIR/$1.toml" "$DIR/$1.pickle" \
        > "$DIR/$1.log" 2>&1) & WORK_PID[$1]=$!; PIDS+=(${WORK_PID[$1]})
    wait_port "$2"
}
start_edge edge "$EDGE"
start_edge plain "$PLAIN" plain

# The check really happens: edge's answer carries the headers, the origin saw Remote-User.
curl -sfI "http://127.0.0.1:$EDGE/small" | grep -qi '^X-Frame-Options: DENY' || { echo "edge: no headers" >&2; exit 1; }
curl -sfI "http://127.0.0.1:$NGINX/small" | grep -qi '^X-Frame-Options: DENY' || { echo "nginx: no headers" >&2; exit 1; }
# ... and both compress the page.
for port in "$EDGE" "$NGINX"; do
    curl -sf -o /dev/null -D - -H 'Accept-Encoding: gzip' "http://127.0.0.1:$port/page.html" \
        | grep -qi '^Content-Encoding: gzip' || { echo "port $port: page not compressed" >&2; exit 1; }
done

measure() {  # measure NAME PORT
    local pid=${WORK_PID[$1]}
    local url="http://127.0.0.1:$2/page.html" gz=(-H "Accept-Encoding: gzip")
    wrk -t1 -c"$CONNS" -d1s "${gz[@]}" "$url" > /dev/null 2>&1 || true
    local before after out requests
    before=$(cpu_ticks "$pid")
    out=$(wrk -t1 -c"$CONNS" -d"${RUN_SECONDS}s" --latency "${gz[@]}" "$url" 2>&1)
    after=$(cpu_ticks "$pid")
    requests=$(awk '/requests in/ {print $1}' <<< "$out")
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$(awk '/Requests\/sec/ {print $2}' <<< "$out")" \
        "$(awk '$1 == "50%" {print $2}' <<< "$out")" "$(per_request_us $((after - before)) "${requests:-0}")" \
        "$(awk '/Non-2xx|Socket errors/ {printf "%s ", $0}' <<< "$out")" >> "$DIR/results.tsv"
}
: > "$DIR/results.tsv"
for name in nginx edge plain; do
    case $name in nginx) port=$NGINX ;; edge) port=$EDGE ;; plain) port=$PLAIN ;; esac
    measure "$name" "$port"
done

echo "forward auth bench, $(machine_line), ${RUN_SECONDS}s, $CONNS connections"
python3 - "$DIR/results.tsv" <<'PY'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
ref = float(rows[0][1])
names = {"nginx": "nginx gzip + auth_request + add_header", "edge": "edge compress + forwardauth + headers",
         "plain": "edge, no middlewares (not compressed)"}
print("| proxy | req/s | × nginx | p50 | CPU µs/req (proxy process) | errors |")
print("|---|---|---|---|---|---|")
for name, rps, p50, cpu, errors in rows:
    print(f"| {names[name]} | {float(rps):.0f} | {float(rps) / ref:.2f} | {p50} | {cpu} | {errors.strip() or '-'} |")
PY
