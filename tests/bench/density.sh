#!/usr/bin/env bash
# Density: N copies of the hello component as separate components of one
# app. Reports the host's RSS with all of them loaded and with all of them
# scaled to zero, and the latency of a call to a component scaled to zero
# (curl's time_total per call, and the host's own load time from
# edgeinfer_cold_start_duration_seconds).
#
# Usage: tests/bench/density.sh
# Env:   N (components, default 1000), CALLS (cold calls timed, default 200),
#        IDLE_MS (idle_unload_ms, default 1000), EDGEINFER_BIN (default target/release/edgeinfer).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root=$PWD
N=${N:-1000}
CALLS=${CALLS:-200}
IDLE_MS=${IDLE_MS:-1000}
BENCH=density
source tests/bench/lib.sh

rustup target add wasm32-wasip2 >&2
command -v curl >/dev/null || { apt-get update >&2 && apt-get install -y curl >&2; }
(cd functions && cargo build --release -p hello) >&2
wasm=$root/target/wasm/wasm32-wasip2/release/hello.wasm
need_edgeinfer

app_dir density
for i in $(seq "$N"); do
  printf '[[trigger.http]]\nroute = "/h%d"\ncomponent = "h%d"\n[component.h%d]\nsource = "%s"\n' "$i" "$i" "$i" "$wasm"
done >>"$tmp/spin.toml"
for i in $(seq "$N"); do printf '[component.h%d]\nidle_unload_ms = %d\n' "$i" "$IDLE_MS"; done >"$tmp/edgeinfer.toml"

started=$(date +%s.%N)
serve() { cd "$tmp" && exec "$EDGEINFER_BIN" up --from "$tmp/spin.toml" --listen 127.0.0.1:0 --state-dir "$tmp/state"; }
start_server "$tmp/server.log" /v2/health/ready serve
ready_s=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status"; }
loaded_count() { curl -fs "$url/metrics" | awk '/^edgeinfer_component_loaded\{/ { s += $2 } END { print s + 0 }'; }
rss_loaded=$(rss_kb)
log "ready in ${ready_s}s with $N components loaded; RSS $rss_loaded KiB"

# Everything idle: wait until all are unloaded, then a little for the allocator to give memory back.
for _ in $(seq 600); do [[ $(loaded_count) == 0 ]] && break; sleep 0.1; done
sleep 2
rss_zero=$(rss_kb)
log "all scaled to zero: RSS $rss_zero KiB ($(loaded_count) loaded)"

# One at a time, each to a different component scaled to zero, and then
# straight away to the same one again, warm, for comparison.
: >"$tmp/cold"
: >"$tmp/warm"
for i in $(seq "$CALLS"); do
  curl -fs -o /dev/null -w '%{time_total}\n' "$url/h$i" >>"$tmp/cold"
  curl -fs -o /dev/null -w '%{time_total}\n' "$url/h$i" >>"$tmp/warm"
done
pct() { sort -n "$1" | awk -v p="$2" '{ v[NR] = $1 } END { i = int(NR * p / 100 + 0.999); if (i < 1) i = 1; printf "%.2f", v[i] * 1000 }'; }
metrics=$(curl -fs "$url/metrics")
cold_starts=$(awk '/^edgeinfer_cold_starts_total\{/ { s += $2 } END { print s + 0 }' <<<"$metrics")
load_sum=$(awk '/^edgeinfer_cold_start_duration_seconds_sum\{/ { s += $2 } END { print s + 0 }' <<<"$metrics")
load_count=$(awk '/^edgeinfer_cold_start_duration_seconds_count\{/ { s += $2 } END { print s + 0 }' <<<"$metrics")

printf 'components: %d (hello), ready in %ss\n' "$N" "$ready_s"
printf 'RSS all loaded: %d KiB (%.1f KiB per component)\n' "$rss_loaded" "$(awk -v r="$rss_loaded" -v n="$N" 'BEGIN { print r / n }')"
printf 'RSS all scaled to zero: %d KiB (%.1f KiB per component)\n' "$rss_zero" "$(awk -v r="$rss_zero" -v n="$N" 'BEGIN { print r / n }')"
printf 'call from zero (curl, %d calls): p50 %s ms, p99 %s ms\n' "$CALLS" "$(pct "$tmp/cold" 50)" "$(pct "$tmp/cold" 99)"
printf 'warm call (curl, %d calls):      p50 %s ms, p99 %s ms\n' "$CALLS" "$(pct "$tmp/warm" 50)" "$(pct "$tmp/warm" 99)"
printf 'host load time from zero: mean %.2f ms over %d cold starts (%d counted)\n' \
  "$(awk -v s="$load_sum" -v c="$load_count" 'BEGIN { print (c > 0 ? s / c * 1000 : 0) }')" "$load_count" "$cold_starts"
