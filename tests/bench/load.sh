#!/usr/bin/env bash
# Load test of the digits function under admission control: wrk at several
# concurrencies, reporting rps, p50/p99, non-2xx responses (429 and 5xx
# apart) and the host's resident memory after each step.
#
# The digits component gets a fixed capacity (MAX_CONCURRENCY running +
# MAX_QUEUE waiting, default 32 + 128 = 160), so the steps below that see no
# 429 and the step at 256 connections sees 429s only for the excess.
#
# Usage: tests/bench/load.sh [--json]
# Env:   DURATION (s per step, default 30), CONCURRENCY (default "1 16 64 256"),
#        THREADS (wrk threads, default 2), MAX_CONCURRENCY, MAX_QUEUE,
#        QUEUE_TIMEOUT_MS (default 2000), EDGEINFER_BIN (default target/release/edgeinfer).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root=$PWD
BENCH=load
source tests/bench/lib.sh
json=0
[[ "${1:-}" == --json ]] && json=1
DURATION=${DURATION:-30}
CONCURRENCY=${CONCURRENCY:-"1 16 64 256"}
THREADS=${THREADS:-2}
MAX_CONCURRENCY=${MAX_CONCURRENCY:-32}
MAX_QUEUE=${MAX_QUEUE:-128}
QUEUE_TIMEOUT_MS=${QUEUE_TIMEOUT_MS:-2000}

# --- Prerequisites. Everything noisy goes to stderr so --json stays parseable.
rustup target add wasm32-wasip2 >&2
need_load_tools
need_edgeinfer

# --- A throwaway app serving digits as spin.toml does (built and baked by
# `up --build`), with its capacity set in edgeinfer.toml.
app_dir load
digits_component "$root" >>"$tmp/spin.toml"
cat >"$tmp/edgeinfer.toml" <<EOF
[component.digits]
max_concurrency = $MAX_CONCURRENCY
max_queue = $MAX_QUEUE
queue_timeout_ms = $QUEUE_TIMEOUT_MS
EOF
# The README's 8x8 digit.
digits_lua >"$tmp/post.lua"
cat >>"$tmp/post.lua" <<'EOF'
-- Count statuses apart: wrk itself only reports "Non-2xx or 3xx".
counts = {}
response = function(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end
setup = function(thread) table.insert(threads, thread) end
threads = {}
done = function(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    local c = t:get("counts")
    for s, n in pairs(c) do total[s] = (total[s] or 0) + n end
  end
  local s429, s5xx, other = 0, 0, 0
  for s, n in pairs(total) do
    if s == 429 then s429 = s429 + n
    elseif s >= 500 then s5xx = s5xx + n
    elseif s >= 300 then other = other + n end
  end
  io.write(string.format("STATUS 429=%d 5xx=%d other=%d\n", s429, s5xx, other))
end
EOF

# Built and baked in a process of its own, so the host's RSS is the serving
# host's alone (baking runs the model's initializer in-process).
log "building and baking digits (minutes on 2 cores the first time)"
"$EDGEINFER_BIN" build --from "$tmp/spin.toml" >&2
log "starting edgeinfer"
serve() { cd "$tmp" && exec "$EDGEINFER_BIN" up --from "$tmp/spin.toml" --listen 127.0.0.1:0 --state-dir "$root/.edgeinfer"; }
start_server "$tmp/server.log" /v2/health/ready serve
curl -fs -X POST -H 'content-type: application/json' \
  -d "$(sed -n "s/^wrk.body = '\(.*\)'$/\1/p" "$tmp/post.lua")" "$url/models/digits" >&2
echo >&2
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status"; }
hwm_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status"; }
log "idle RSS $(rss_kb) KiB"
rss_idle=$(rss_kb)

wrk -t"$THREADS" -c16 -d2s -s "$tmp/post.lua" "$url/models/digits" >/dev/null   # warm-up
results=$tmp/results
for c in $CONCURRENCY; do
  t=$THREADS; ((c < t)) && t=$c
  log "concurrency $c for ${DURATION}s"
  # parse_wrk: rps p50 p99 errors sockerr non2xx n429 n5xx; keep all but errors.
  line=$(wrk -t"$t" -c"$c" -d"${DURATION}s" --timeout 10s --latency -s "$tmp/post.lua" \
    "$url/models/digits" | parse_wrk | awk '{ print $1, $2, $3, $5, $6, $7, $8 }')
  echo "$c $line $(rss_kb)" >>"$results"
done
metrics=$(curl -fs "$url/metrics")
rejected=$(awk '/^edgeinfer_rejected_total/ { printf "%s%s", sep, $0; sep = "; " }' <<<"$metrics")

if ((json)); then
  awk -v d="$DURATION" -v mc="$MAX_CONCURRENCY" -v mq="$MAX_QUEUE" -v idle="$rss_idle" -v hwm="$(hwm_kb)" '
    { steps = steps (NR > 1 ? "," : "") sprintf("{\"connections\":%d,\"rps\":%d,\"p50_ms\":%s,\"p99_ms\":%s,\"socket_errors\":%d,\"non_2xx\":%d,\"status_429\":%d,\"status_5xx\":%d,\"rss_kib\":%d}", $1, $2, $3, $4, $5, $6, $7, $8, $9) }
    END { printf "{\"benchmark\":\"load-digits\",\"duration_s\":%d,\"max_concurrency\":%d,\"max_queue\":%d,", d, mc, mq
          printf "\"rss_idle_kib\":%d,\"rss_peak_kib\":%d,\"steps\":[%s]}\n", idle, hwm, steps }' "$results"
else
  printf 'digits, max_concurrency=%s max_queue=%s, %ss per step\n' "$MAX_CONCURRENCY" "$MAX_QUEUE" "$DURATION"
  printf '%11s %9s %9s %9s %8s %8s %7s %7s %10s\n' connections rps p50_ms p99_ms sockerr non2xx 429 5xx rss_kib
  while read -r c rps p50 p99 err non2xx n429 n5xx rss; do
    printf '%11s %9s %9s %9s %8s %8s %7s %7s %10s\n' "$c" "$rps" "$p50" "$p99" "$err" "$non2xx" "$n429" "$n5xx" "$rss"
  done <"$results"
  printf 'host RSS: idle %s KiB, peak %s KiB\n' "$rss_idle" "$(hwm_kb)"
  printf 'rejections: %s\n' "${rejected:-none}"
fi
