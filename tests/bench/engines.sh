#!/usr/bin/env bash
# One model served both ways by one host: tract in the sandbox (the `oip`
# function, baked) and through wasi:nn (`oip-nn`). Over HTTP, one call at a
# time (each a fresh instance), it times the sandboxed route before any
# wasi:nn call, then the wasi:nn route, then the sandboxed route again. The
# last must match the first: native code run on an instance's core must not
# slow the guests that run there next (see `run_native` in host/src/cores.rs).
# Give several hosts in EDGEINFER_BINS to compare them, in turns.
#
# Usage: tests/bench/engines.sh [MODEL_DIR [SHAPES]]   (default: extra/ppocr-cls x=1,3,48,192)
# Env:   CALLS (per route and turn, default 30), ROUNDS (default 2),
#        EDGEINFER_BINS (default: the release build),
#        PYTHON (a python with onnxruntime; default: the venv target/py).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source tests/bench/lib.sh
BENCH=engines
if [[ $# -ge 1 ]]; then model=$1 shapes=${2:-}; else model=extra/ppocr-cls shapes=x=1,3,48,192; fi
CALLS=${CALLS:-30}
ROUNDS=${ROUNDS:-2}

rustup target add wasm32-wasip2 >&2
need_load_tools
need_edgeinfer_bins
need_python

# An app of its own beside the repo's functions and target dir, with the
# model added twice by `edgeinfer models add`.
app_dir engines
app=$tmp
ln -s "$PWD/functions" "$app/functions"
ln -s "$PWD/target" "$app/target"
"$PYTHON" models/bench.py "$model" --emit-request "$app/req.json"
first=${EDGEINFER_BINS%% *}
(
  cd "$app"
  "$first" models add sandboxed "$OLDPWD/models/$model/model.onnx" ${shapes:+--shape "$shapes"}
  "$first" models add nn "$OLDPWD/models/$model/model.onnx" ${shapes:+--shape "$shapes"} --engine wasi-nn
  "$first" build
) >&2

# Median and p99 (ms) of CALLS posts to route $1, one at a time.
times() {
  for _ in $(seq "$CALLS"); do
    curl -fsS -o /dev/null -w '%{time_total}\n' -X POST -H 'content-type: application/json' \
      --data-binary @"$app/req.json" "$url/v2/models/$1/infer"
  done | sort -n | awk '{ v[NR] = $1 * 1000 }
    END { printf "%8.2f %8.2f", v[int((NR + 1) / 2)], v[int(NR * 0.99 + 0.999)] }'
}

printf '%-40s %5s | %-17s | %-17s | %-17s\n' host round "sandbox before" "wasi:nn" "sandbox after"
printf '%-40s %5s | %8s %8s | %8s %8s | %8s %8s\n' "" "" p50_ms p99_ms p50_ms p99_ms p50_ms p99_ms
for round in $(seq "$ROUNDS"); do
  for bin in $EDGEINFER_BINS; do
    start_server "$app/up.log" /v2/models/nn/ready \
      bash -c "cd '$app' && exec '$bin' up --listen 127.0.0.1:0 --state-dir '$app/state'"
    until curl -fs -o /dev/null "$url/v2/models/sandboxed/ready"; do sleep 0.1; done
    before=$(times sandboxed)
    nn=$(times nn)
    after=$(times sandboxed)
    stop_server
    printf '%-40s %5s | %s | %s | %s\n' "$bin" "$round" "$before" "$nn" "$after"
  done
done
