#!/usr/bin/env bash
# The ONNX Runtime backend against ONNX Runtime in Python: the same library
# (the onnxruntime 1.32.0 wheel's libonnxruntime.so), the same model, input
# and intra-op thread count, timed in one run. `backend` is the host's
# backend called directly; `wasi-nn` adds the guest (oip-nn, warm instance).
# Only those two take turns (`bench --ways`): the sandboxed ways would evict
# the model from the caches between calls, where Python's loop runs nothing.
#
# Usage: tests/bench/onnxruntime.sh [MODEL_DIR ...]   (default: digits filetype embed extra/squeezenet)
# Env:   ITERATIONS (default 200, per round), THREADS (default 1),
#        ROUNDS (default 3: Python and the host take turns, one round each,
#        so the machine's drift falls on both; the last line per model gives
#        the median of the rounds' p50s and ratios),
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
ROUNDS=${ROUNDS:-3}
printf '%-18s %6s %8s %8s %8s %8s %8s %8s | %8s %8s\n' model round \
  py_p50 py_p99 be_p50 be_p99 nn_p50 nn_p99 be/py nn/py
for m in "${models[@]}"; do
  "$PYTHON" models/bench.py "$m" --emit-request "$tmp/req.json"
  rounds=()
  for r in $(seq "$ROUNDS"); do
    py=$("$PYTHON" models/bench.py "$m" --json --runs "$ITERATIONS" --threads "$THREADS")
    ours=$("$EDGEINFER_BIN" bench "models/$m/model.onnx" --input "$tmp/req.json" \
      --backend onnxruntime --threads "$THREADS" --ways backend,wasi-nn \
      --iterations "$ITERATIONS" --state-dir target/bench-state --json ${BINARY:+--binary})
    rounds+=("{\"py\": $py, \"ours\": $ours}")
  done
  (IFS=,; echo "[${rounds[*]}]") >"$tmp/rounds.json"
  "$PYTHON" - "$m" "$tmp/rounds.json" <<'PY'
import json, statistics, sys
m = sys.argv[1]
rows = []
for r in json.load(open(sys.argv[2])):
    assert r["ours"]["backend"]["name"] == "onnxruntime", r["ours"]["backend"]
    p, b, x = r["py"]["ort_us"], r["ours"]["backend_us"], r["ours"]["wasi_nn_us"]
    rows.append((p["p50"], p["p99"], b["p50"], b["p99"], x["p50"], x["p99"], b["p50"] / p["p50"], x["p50"] / p["p50"]))
def show(label, row):
    print(f"{m:18} {label:>6} " + " ".join(f"{v:8.0f}" for v in row[:6]) + f" | {row[6]:7.2f}x {row[7]:7.2f}x")
for i, row in enumerate(rows, 1):
    show(str(i), row)
if len(rows) > 1:
    show("median", [statistics.median(c) for c in zip(*rows)])
PY
done
echo "(µs; onnxruntime ${THREADS} intra-op thread(s), both sides; ${ROUNDS} round(s) of ${ITERATIONS} calls in turns)"
