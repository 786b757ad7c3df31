#!/usr/bin/env bash
# TLS bench: edge against nginx, HAProxy and Caddy, all terminating TLS 1.3
# with the same ECDSA P-256 certificate (session resumption off) in front of
# one nginx origin serving a 100-byte page, every process on 127.0.0.1.
#
#   handshake  wrk with "Connection: close": every request is a new TCP
#              connection with a full TLS handshake (wrk never resumes).
#   keepalive  wrk over persistent TLS connections.
#   plain      edge's own plain-HTTP entry point, for the cost TLS adds
#              (plain-new: a new TCP connection per request, no TLS).
#   h2-*       h2load (nghttp2-client) over HTTP/2: h2-8x10 is 8 connections x
#              10 concurrent streams, h2-1x100 one connection x 100 streams,
#              on the 100-byte page; h2-big-* the same on a 1 MiB response
#              (its MiB/s column is what counts there).  H2=0 skips them.
#
# CPU per request is the proxy's own CPU time (utime+stime of all its
# processes, from /proc) over the requests wrk completed: far steadier on a
# shared 2-core machine than requests per second, which are shown too.
# Each proxy gets one worker/thread (nginx worker_processes 1, HAProxy
# nbthread 1, Caddy GOMAXPROCS=1, edge is one Python process).
#
# Usage: bash bench/tls.sh   (DURATION=5 CONNS=16 ROUNDS=1 ONLY='edge nginx haproxy caddy')
# Output: a table on stdout and $OUT (default bench/tls/results.txt).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
. "$ROOT/bench/lib.sh"
HERE="$ROOT/bench/tls"
PY="${PY:-$ROOT/.venv/bin/python}"
TWISTD="${TWISTD:-$ROOT/.venv/bin/twistd}"
DURATION="${DURATION:-5}"
CONNS="${CONNS:-16}"
ROUNDS="${ROUNDS:-1}"
ONLY="${ONLY:-edge nginx haproxy caddy}"
H2="${H2:-1}"
H1="${H1:-1}"
OUT="${OUT:-$HERE/results.txt}"
BASE="${BASE_PORT:-18600}"
ORIGIN=$BASE; EDGE=$((BASE + 1)); EDGE_HTTP=$((BASE + 2)); NGINX=$((BASE + 3))
HAPROXY=$((BASE + 4)); CADDY=$((BASE + 5))

bench_need wrk h2load:nghttp2-client nginx:nginx-light haproxy caddy curl
bench_dir tls
mkdir -p "$DIR/www" "$DIR/certs" "$DIR/state"
chmod 755 "$DIR/www"

render_conf() {  # template port -> $DIR/name
    render "$HERE/$1" "$2" -e "s#@HTTP_PORT@#$EDGE_HTTP#g" >"$DIR/$1"
}

printf '%0100d' 0 >"$DIR/www/index.html"  # 100 bytes
head -c 1048576 /dev/zero >"$DIR/www/big"  # 1 MiB
"$PY" "$HERE/make_cert.py" "$DIR"

start_origin "$HERE/origin.conf"
printf '%-8s %-12s %10s %10s %12s %8s\n' proxy mode "req/s" requests "cpu_us/req" "MiB/s" | tee "$OUT"

measure() {  # name mode url pid... ; header args in WRK_ARGS
    local name=$1 mode=$2 url=$3; shift 3
    local before after out reqs rate code
    for _ in $(seq 1 50); do  # routes may be published a moment after the port opens
        code=$(curl -s -o "$DIR/check.out" -w '%{http_code}' --cacert "$DIR/root.crt" \
            -H "Host: bench.lan" "$url" || true)
        [[ "$code" == 200 ]] && break
        sleep 0.1
    done
    if [[ "$code" != 200 ]]; then
        echo "$name $mode: $url answers $code, not 200:" >&2
        head -c 300 "$DIR/check.out" >&2 || true
        return 1
    fi
    # A short warm-up so the JIT-less first requests and connection setup do not count.
    wrk -t1 -c4 -d1s "${WRK_ARGS[@]}" "$url" >/dev/null 2>&1 || true
    before=$(cpu_ticks "$@")
    out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" "${WRK_ARGS[@]}" "$url" 2>&1)
    after=$(cpu_ticks "$@")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    rate=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    local errors
    errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out")
    if [[ -n "$errors" ]]; then echo "  ($name $mode: $errors)" >&2; fi
    local us
    us=$(per_request_us $((after - before)) "$reqs")
    printf '%-8s %-12s %10s %10s %12s %8s\n' "$name" "$mode" "$rate" "$reqs" "$us" "-" | tee -a "$OUT"
}

measure_h2() {  # name mode url conns streams pid...
    local name=$1 mode=$2 url=$3 conns=$4 streams=$5; shift 5
    local before after out reqs rate us mib secs
    # :authority is the URL's (a differing Host header makes the request malformed, RFC 9113 8.3.1).
    h2load -c 2 -m 4 -n 200 "$url" >/dev/null 2>&1 || true  # warm-up
    before=$(cpu_ticks "$@")
    out=$(h2load -c "$conns" -m "$streams" -D "$DURATION" "$url" 2>&1)
    after=$(cpu_ticks "$@")
    reqs=$(awk '/^requests:/ {print $8}' <<<"$out")  # succeeded
    secs=$(awk '/^finished in/ {sub("s,", "", $3); print $3}' <<<"$out")
    rate=$(awk -v r="$reqs" -v s="$secs" 'BEGIN {printf "%.0f", (s > 0 ? r / s : 0)}')
    mib=$(awk -v r="$reqs" -v s="$secs" -v b="$H2_BYTES" 'BEGIN {printf "%.1f", (s > 0 ? r * b / s / 1048576 : 0)}')
    local failed
    failed=$(awk '/^requests:/ {print $10 + $12}' <<<"$out")
    if [[ "${failed:-0}" != 0 ]]; then echo "  ($name $mode: $failed failed/errored)" >&2; fi
    us=$(per_request_us $((after - before)) "$reqs")
    printf '%-8s %-12s %10s %10s %12s %8s\n' "$name" "$mode" "$rate" "$reqs" "$us" "$mib" | tee -a "$OUT"
}

run_h2() {  # name port pid...
    local name=$1 port=$2; shift 2
    [[ "$H2" == 1 ]] || return 0
    for _ in $(seq 1 "$ROUNDS"); do
        H2_BYTES=100
        measure_h2 "$name" h2-8x10 "https://127.0.0.1:$port/" 8 10 "$@"
        measure_h2 "$name" h2-1x100 "https://127.0.0.1:$port/" 1 100 "$@"
        H2_BYTES=1048576
        measure_h2 "$name" h2-big-8x10 "https://127.0.0.1:$port/big" 8 10 "$@"
        measure_h2 "$name" h2-big-1x100 "https://127.0.0.1:$port/big" 1 100 "$@"
    done
}

run_modes() {  # name port pid...
    local name=$1 port=$2; shift 2
    run_h2 "$name" "$port" "$@"
    [[ "$H1" == 1 ]] || return 0
    for _ in $(seq 1 "$ROUNDS"); do
        WRK_ARGS=(-H "Host: bench.lan" -H "Connection: close")
        measure "$name" handshake "https://127.0.0.1:$port/" "$@"
        WRK_ARGS=(-H "Host: bench.lan")
        measure "$name" keepalive "https://127.0.0.1:$port/" "$@"
    done
}

stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

wanted() { [[ " $ONLY " == *" $1 "* ]]; }

if wanted edge; then
render_conf edge.toml "$EDGE"
"$TWISTD" -n --pidfile= edge --config "$DIR/edge.toml" --log-level warn >"$DIR/edge.log" 2>&1 &
EPID=$!
PIDS+=($EPID)
wait_port "$EDGE"
run_modes edge "$EDGE" "$EPID"
for _ in $(seq 1 "$ROUNDS"); do
    [[ "$H1" == 1 ]] || break
    WRK_ARGS=(-H "Host: bench.lan" -H "Connection: close")
    measure edge plain-new "http://127.0.0.1:$EDGE_HTTP/" "$EPID"
    WRK_ARGS=(-H "Host: bench.lan")
    measure edge plain "http://127.0.0.1:$EDGE_HTTP/" "$EPID"
done
stop "$EPID"
fi

if wanted nginx; then
render_conf nginx-tls.conf "$NGINX"
nginx -c "$DIR/nginx-tls.conf" -e "$DIR/nginx-tls-error.log" &
NPID=$!
PIDS+=($NPID)
wait_port "$NGINX"
run_modes nginx "$NGINX" "$NPID"
stop "$NPID"
fi

if wanted haproxy; then
render_conf haproxy-tls.cfg "$HAPROXY"
haproxy -f "$DIR/haproxy-tls.cfg" -db >"$DIR/haproxy.log" 2>&1 &
HPID=$!
PIDS+=($HPID)
wait_port "$HAPROXY"
run_modes haproxy "$HAPROXY" "$HPID"
stop "$HPID"
fi

if wanted caddy; then
render_conf Caddyfile "$CADDY"
GOMAXPROCS=1 XDG_DATA_HOME="$DIR" XDG_CONFIG_HOME="$DIR" \
    caddy run --config "$DIR/Caddyfile" --adapter caddyfile >"$DIR/caddy.log" 2>&1 &
CPID=$!
PIDS+=($CPID)
wait_port "$CADDY"
run_modes caddy "$CADDY" "$CPID"
stop "$CPID"
fi

echo "(shared 2-core machine; DURATION=${DURATION}s CONNS=$CONNS; $(date -u +%FT%TZ))" | tee -a "$OUT"
