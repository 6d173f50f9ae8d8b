#!/usr/bin/env bash
# The ONNX Runtime backend against ONNX Runtime in Python: the same library
# (the onnxruntime 1.32.0 wheel's libonnxruntime.so), the same model, input
# and intra-op thread count, timed in one run. `backend` is the host's
# backend called directly; `wasi-nn` adds the guest (oip-nn, warm instance).
#
# Usage: tests/bench/onnxruntime.sh [MODEL_DIR ...]   (default: digits filetype embed extra/squeezenet)
# Env:   ITERATIONS (default 200), THREADS (default 1),
#        BINARY=1 (send the tensors as OIP binary data, not JSON, so that the
#        guest does not spend wasi-nn's time parsing numbers),
#        EDGEINFER_BIN (default: target/release/edgeinfer built --features onnxruntime)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ITERATIONS=${ITERATIONS:-200}
THREADS=${THREADS:-1}
models=("$@")
[[ ${#models[@]} == 0 ]] && models=(digits filetype embed extra/squeezenet)

rustup target add wasm32-wasip2 >&2
# Apart: built together, oip-nn would get the kit with tract linked in.
(cd functions && cargo build --release -p oip && cargo build --release -p oip-nn) >&2
if [[ -z "${EDGEINFER_BIN:-}" ]]; then
  cargo build --release -p edgeinfer --features onnxruntime >&2
  EDGEINFER_BIN=$PWD/target/release/edgeinfer
fi
ORT_DYLIB_PATH=$(tests/ort-lib)   # also makes the venv target/py
export ORT_DYLIB_PATH
PYTHON=target/py/bin/python

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '%-18s %8s %8s %8s %8s %8s %8s | %8s %8s\n' model \
  py_p50 py_p99 be_p50 be_p99 nn_p50 nn_p99 be/py nn/py
for m in "${models[@]}"; do
  "$PYTHON" models/bench.py "$m" --emit-request "$tmp/req.json"
  py=$("$PYTHON" models/bench.py "$m" --json --runs "$ITERATIONS" --threads "$THREADS")
  ours=$("$EDGEINFER_BIN" bench "models/$m/model.onnx" --input "$tmp/req.json" \
    --backend onnxruntime --threads "$THREADS" \
    --iterations "$ITERATIONS" --state-dir target/bench-state --json ${BINARY:+--binary})
  "$PYTHON" - "$m" "$py" "$ours" <<'PY'
import json, sys
m, py, ours = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
p, b, x = py["ort_us"], ours["backend_us"], ours["wasi_nn_us"]
assert ours["backend"]["name"] == "onnxruntime", ours["backend"]
print(f"{m:18} {p['p50']:8.0f} {p['p99']:8.0f} {b['p50']:8.0f} {b['p99']:8.0f} {x['p50']:8.0f} {x['p99']:8.0f} | "
      f"{b['p50']/p['p50']:7.2f}x {x['p50']/p['p50']:7.2f}x")
PY
done
echo "(µs; onnxruntime ${THREADS} intra-op thread(s), both sides)"
