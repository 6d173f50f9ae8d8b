#!/usr/bin/env bash
# What metering costs: throughput of hello and digits with metering off, with
# the durable ledger as served by default (a record per call, group-committed,
# durable before the response's last byte; fuel not counted, as nothing prices
# it), and with the ledger plus fuel counting (what pricing fuel costs). Modes alternate
# within each round so machine noise hits them alike. Besides throughput it
# reports the host's CPU time per call, counted until the ledger has ingested
# the run's records: a figure that machine noise barely moves.
#
# Usage: tests/bench/metering.sh [--json]
# Env:   DURATION (s per wrk run, default 10), ROUNDS (default 3),
#        CONNECTIONS (default 128: enough to saturate the host, so throughput
#        is its capacity; at 32 the host is latency-bound and the ledger's
#        sync wait shows as lost throughput), EDGEINFER_BIN (default
#        target/release/edgeinfer).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root=$PWD
BENCH=metering
source tests/bench/lib.sh
json=0
[[ "${1:-}" == --json ]] && json=1
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-128}

rustup target add wasm32-wasip2 >&2
need_load_tools
need_edgeinfer

app_dir metering
cat >>"$tmp/spin.toml" <<TOML
[[trigger.http]]
route = "/hello"
component = "hello"
[component.hello]
source = "$root/target/wasm/wasm32-wasip2/release/hello.wasm"
[component.hello.build]
command = "cargo build --release -p hello"
workdir = "$root/functions"
TOML
digits_component "$root" >>"$tmp/spin.toml"
digits_lua >"$tmp/digits.lua"
log "building and baking"
"$EDGEINFER_BIN" build --from "$tmp/spin.toml" >&2

declare -A settings=(
  [off]=$'[metering]\nenabled = false\nfuel = false'
  [ledger]=$'[metering]\nenabled = true'
  [ledger+fuel]=$'[metering]\nenabled = true\nfuel = true'
)
modes=(off ledger ledger+fuel)
results=$tmp/results
for round in $(seq "$ROUNDS"); do
  for mode in "${modes[@]}"; do
    printf '%s\n' "${settings[$mode]}" >"$tmp/edgeinfer.toml"
    rm -rf "$tmp/ledger.db"*
    start_server "$tmp/server.log" /v2/health/ready \
      "$EDGEINFER_BIN" up --from "$tmp/spin.toml" --listen 127.0.0.1:0 \
      --state-dir "$tmp/state" --db "$tmp/ledger.db"
    for fn in hello digits; do
      if [[ $fn == hello ]]; then args=("$url/hello"); else args=(-s "$tmp/digits.lua" "$url/models/digits"); fi
      wrk -t2 -c"$CONNECTIONS" -d1s "${args[@]}" >/dev/null   # warm-up
      log "round $round: $fn, metering $mode, ${DURATION}s"
      cpu0=$(cpu_us "$pid")
      run=$(wrk -t2 -c"$CONNECTIONS" -d"${DURATION}"s --latency "${args[@]}" | parse_wrk)
      sleep 2   # the ledger ingests at idle priority; its CPU counts too
      cpu=$(( $(cpu_us "$pid") - cpu0 ))
      calls=$(awk -v r="${run%% *}" -v d="$DURATION" 'BEGIN { printf "%.0f", r * d }')
      echo "$fn-$mode $round $run $(ratio "$cpu" "$calls")" >>"$results"
    done
    if [[ $mode == ledger ]]; then
      records=$("$EDGEINFER_BIN" billing events --db "$tmp/ledger.db" --format jsonl | wc -l)
      log "ledger holds $records records"
    fi
    stop_server
  done
done

# Each mode against metering off in the same round (the machine's speed
# drifts between rounds more than the modes differ), then the median of those.
round_ratio() {  # $1 = fn-mode, $2 = column: median over rounds of mode/off
  awk -v k="$1" -v c="$2" '{ split($1, a, "-"); split(k, b, "-") }
       a[1] == b[1] && a[2] == "off" { off[$2] = $c }
       $1 == k { v[$2] = $c }
       END { for (r in v) if (off[r] > 0) print v[r] / off[r] }' "$results" | sort -n |
    awk '{ x[NR] = $1 } END { if (NR == 0) { print 0; exit }
         printf "%.3f\n", (NR % 2 ? x[(NR + 1) / 2] : (x[NR / 2] + x[NR / 2 + 1]) / 2) }'
}

if ((json)); then
  printf '{"benchmark":"metering","duration_s":%s,"rounds":%s,"connections":%s,"results":{' "$DURATION" "$ROUNDS" "$CONNECTIONS"
  sep=""
  for fn in hello digits; do
    for mode in "${modes[@]}"; do
      printf '%s"%s-%s":{"rps":%s,"p50_ms":%s,"p99_ms":%s,"cpu_us_per_call":%s,"rps_vs_off":%s,"cpu_vs_off":%s}' \
        "$sep" "$fn" "$mode" "$(median "$results" "$fn-$mode" 3)" "$(median "$results" "$fn-$mode" 4)" \
        "$(median "$results" "$fn-$mode" 5)" "$(median "$results" "$fn-$mode" 11)" \
        "$(round_ratio "$fn-$mode" 3)" "$(round_ratio "$fn-$mode" 11)"
      sep=","
    done
  done
  printf '}}\n'
else
  printf '%-16s %5s %10s %10s %10s %7s %12s\n' run round rps p50_ms p99_ms errors cpu_us/call
  while read -r s r rps p50 p99 err _ _ _ _ cpu; do
    printf '%-16s %5s %10s %10s %10s %7s %12s\n' "$s" "$r" "$rps" "$p50" "$p99" "$err" "$cpu"
  done <"$results"
  echo
  echo "(vs off: the median over rounds of each round's mode/off ratio)"
  for fn in hello digits; do
    for mode in "${modes[@]}"; do
      printf '%-7s %-11s median rps %9s  p50 %7s ms  p99 %7s ms  vs off %s  cpu/call %6s us  vs off %s\n' \
        "$fn" "$mode" "$(median "$results" "$fn-$mode" 3)" "$(median "$results" "$fn-$mode" 4)" \
        "$(median "$results" "$fn-$mode" 5)" "$(round_ratio "$fn-$mode" 3)" \
        "$(median "$results" "$fn-$mode" 11)" "$(round_ratio "$fn-$mode" 11)"
    done
  done
fi
