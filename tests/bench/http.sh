#!/usr/bin/env bash
# HTTP throughput of the `hello` component: edgeinfer (a fresh instance per
# request) against `wasmtime serve`, both with its default instance reuse and
# with a fresh instance per request (the like-for-like comparison).
#
# Usage: tests/bench/http.sh [--json]
# Env:   DURATION (s per wrk run, default 10), ROUNDS (default 2),
#        EDGEINFER_BIN (default target/release/edgeinfer),
#        WASMTIME (default target/release/wasmtime, tests/wasmtime-serve).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source tests/bench/lib.sh
json=0
[[ "${1:-}" == --json ]] && json=1
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}

# --- Prerequisites. Everything noisy goes to stderr so --json stays parseable.
rustup target add wasm32-wasip2 >&2
need_load_tools
need_wasmtime

# --- Build guest and host (release: we are measuring the host, not debug checks).
(cd functions && cargo build --release -p hello) >&2
wasm=$PWD/target/wasm/wasm32-wasip2/release/hello.wasm
need_edgeinfer

# --- A throwaway app: every path goes to hello, so wrk can hit `/` on all servers.
app_dir bench
mkdir "$tmp/state"
cat >>"$tmp/spin.toml" <<EOF
[[trigger.http]]
route = "/..."
component = "hello"
[component.hello]
source = "$wasm"
EOF

# One function per server; `exec` so that $! is the server itself.
run_edgeinfer() {
  exec "$EDGEINFER_BIN" up --from "$tmp/spin.toml" --listen 127.0.0.1:0 --state-dir "$tmp/state"
}
# wasmtime 48's serve has WASIp3 (hello's wasi:http/handler@0.3.0) on by
# default; -Scli adds the wasi:cli@0.2 imports spin-sdk links in. Port 0: the
# kernel picks one and serve prints it.
wasmtime_serve() { exec "$WASMTIME" serve -Scli --addr 127.0.0.1:0 "$@" "$wasm"; }
run_wasmtime-reuse() { wasmtime_serve; }   # p3 default: 128 requests, 16 at once
run_wasmtime-fresh() { wasmtime_serve --max-instance-reuse-count 1; }
declare -A ready=([edgeinfer]=/v2/health/ready [wasmtime-reuse]=/ [wasmtime-fresh]=/)
servers=(edgeinfer wasmtime-reuse wasmtime-fresh)

start() { start_server "$tmp/server.log" "${ready[$1]}" "run_$1"; }

# --- Alternate servers within each round so machine noise hits all of them alike.
results=$tmp/results
for round in $(seq "$ROUNDS"); do
  for s in "${servers[@]}"; do
    start "$s"
    wrk -t2 -c32 -d1s "$url/" >/dev/null   # warm-up: caches, JIT'd paths, pools
    log "round $round: $s at $url for ${DURATION}s"
    echo "$s $round $(wrk -t2 -c32 -d"${DURATION}"s --latency "$url/" | parse_wrk)" >>"$results"
    stop_server
  done
done

# --- Report: per-run rows, then median rps per server and edgeinfer's ratios.
m_e=$(median "$results" edgeinfer 3); m_r=$(median "$results" wasmtime-reuse 3); m_f=$(median "$results" wasmtime-fresh 3)

if ((json)); then
  awk -v d="$DURATION" -v r="$ROUNDS" -v me="$m_e" -v mr="$m_r" -v mf="$m_f" \
      -v qr="$(ratio "$m_e" "$m_r")" -v qf="$(ratio "$m_e" "$m_f")" \
      -v wt="$(wasmtime_version)" -v wrkv="$(wrk -v 2>&1 | head -1 | awk '{print $2}')" '
    { runs = runs (NR > 1 ? "," : "") sprintf("{\"server\":\"%s\",\"round\":%d,\"rps\":%d,\"p50_ms\":%s,\"p99_ms\":%s,\"errors\":%d}", $1, $2, $3, $4, $5, $6) }
    END { printf "{\"benchmark\":\"http-hello\",\"duration_s\":%d,\"rounds\":%d,\"threads\":2,\"connections\":32,", d, r
          printf "\"wasmtime\":\"%s\",\"wrk\":\"%s\",\"runs\":[%s],", wt, wrkv, runs
          printf "\"median_rps\":{\"edgeinfer\":%s,\"wasmtime-reuse\":%s,\"wasmtime-fresh\":%s},", me, mr, mf
          printf "\"ratio\":{\"edgeinfer/wasmtime-reuse\":%s,\"edgeinfer/wasmtime-fresh\":%s}}\n", qr, qf }' "$results"
else
  printf '%-16s %5s %10s %10s %10s %7s\n' server round rps p50_ms p99_ms errors
  while read -r s r rps p50 p99 err _; do
    printf '%-16s %5s %10s %10s %10s %7s\n' "$s" "$r" "$rps" "$p50" "$p99" "$err"
  done <"$results"
  echo
  printf 'median rps: edgeinfer %s, wasmtime-reuse %s, wasmtime-fresh %s\n' "$m_e" "$m_r" "$m_f"
  printf 'edgeinfer/wasmtime-reuse %s, edgeinfer/wasmtime-fresh %s\n' "$(ratio "$m_e" "$m_r")" "$(ratio "$m_e" "$m_f")"
fi
