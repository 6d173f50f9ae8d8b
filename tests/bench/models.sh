#!/usr/bin/env bash
# Per-model latency, side by side in one run, on the same input (one case of
# each model's reference.json): ONNX Runtime (Python, 1 thread), native tract,
# tract in the sandbox (warm instance), cold (a fresh instance per call,
# which is how `edgeinfer up` serves every request) and wasi-nn (the model
# run natively by the host for the oip-nn function, warm instance), with
# nnc: the backend's own share of each wasi-nn call (its compute time), and
# nn-cold: oip-nn's cold call less its warm one, paired call by call.
#
# Usage: tests/bench/models.sh [MODEL_DIR ...]   (default: digits filetype embed extra/squeezenet extra/ppocr-cls)
# Env:   ITERATIONS (default 500: a p99 of fewer calls is one or two stalls), EDGEINFER_BIN (default target/release/edgeinfer),
#        BINARY=1 (send edgeinfer's columns the tensors as OIP binary data, not JSON),
#        PYTHON (a python with onnxruntime; default: the venv target/py, see tests/ort-lib).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source tests/bench/lib.sh
BENCH=models
ITERATIONS=${ITERATIONS:-500}
models=("$@")
[[ ${#models[@]} == 0 ]] && models=(digits filetype embed extra/squeezenet extra/ppocr-cls)

rustup target add wasm32-wasip2 >&2
# Apart: built together, oip-nn would get the kit with tract linked in.
(cd functions && cargo build --release -p oip && cargo build --release -p oip-nn) >&2
need_edgeinfer
need_python

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '%-18s %9s %9s %9s %9s %9s %9s %9s %9s %9s %9s %9s | %8s %8s %8s %8s %8s %8s\n' model \
  ort_p50 ort_p99 nat_p50 nat_p99 wasm_p50 wasm_p99 cold_p50 cold_p99 nn_p50 nn_p99 nnc_p50 \
  nat/ort wasm/nat nn/nat nnc/nat cold-wasm nn-cold
for m in "${models[@]}"; do
  "$PYTHON" models/bench.py "$m" --emit-request "$tmp/req.json"
  ort=$("$PYTHON" models/bench.py "$m" --json --runs "$ITERATIONS")
  ours=$("$EDGEINFER_BIN" bench "models/$m/model.onnx" --input "$tmp/req.json" \
    --iterations "$ITERATIONS" --state-dir target/bench-state --json ${BINARY:+--binary})
  "$PYTHON" - "$m" "$ort" "$ours" <<'EOF'
import json, sys
m, ort, ours = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
o, n, w, c, x = ort["ort_us"], ours["native_us"], ours["wasm_us"], ours["cold_us"], ours["wasi_nn_us"]
k = ours["wasi_nn_compute_us"]
d, e = ours["cold_over_warm_us"], ours["wasi_nn_cold_over_warm_us"]
print(f"{m:18} {o['p50']:9.0f} {o['p99']:9.0f} {n['p50']:9.0f} {n['p99']:9.0f} {w['p50']:9.0f} {w['p99']:9.0f} "
      f"{c['p50']:9.0f} {c['p99']:9.0f} {x['p50']:9.0f} {x['p99']:9.0f} {k['p50']:9.0f} | {n['p50']/o['p50']:7.2f}x "
      f"{w['p50']/n['p50']:7.2f}x {x['p50']/n['p50']:7.2f}x {k['p50']/n['p50']:7.2f}x {d['p50']/1000:6.2f}ms "
      f"{e['p50']/1000:6.2f}ms")
EOF
done
echo "(µs)"
