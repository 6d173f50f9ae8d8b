#!/usr/bin/env bash
# One model served through wasi:nn over HTTP: the generic `oip-nn` function,
# the model loaded by the host, `wrk` posting one case of its reference.json
# (JSON tensors) at each connection count. Give several hosts in
# EDGEINFER_BINS to compare them: they take turns within each round. LOADS
# says how the function gets its model: `name` (load-by-name, the model in
# [nn.models]) and/or `bytes` (wasi:nn `load` of the .onnx among its files,
# EDGEINFER_MODEL_FILE); they take turns too.
#
# Usage: tests/bench/nn-http.sh [MODEL_DIR [SHAPES]]   (default: extra/ppocr-cls x=1,3,48,192)
# Env:   DURATION (s per wrk run, default 5), ROUNDS (default 2),
#        CONNECTIONS (default "1 4"), EDGEINFER_BINS (default: the release build),
#        LOADS (default "name"; "name bytes" for both),
#        PYTHON (a python with onnxruntime; default: the venv target/py).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source tests/bench/lib.sh
BENCH=nn-http
if [[ $# -ge 1 ]]; then model=$1 shapes=${2:-}; else model=extra/ppocr-cls shapes=x=1,3,48,192; fi
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-2}
CONNECTIONS=${CONNECTIONS:-1 4}
LOADS=${LOADS:-name}

rustup target add wasm32-wasip2 >&2
need_load_tools
(cd functions && cargo build --release -p oip-nn) >&2
need_edgeinfer_bins
need_python

tmp=$(mktemp -d)
pid=""
trap 'stop_server; rm -rf "$tmp"' EXIT
mkdir "$tmp/state"
"$PYTHON" models/bench.py "$model" --emit-request "$tmp/req.json"
cat >"$tmp/post.lua" <<EOF
local f = io.open("$tmp/req.json", "rb"); wrk.body = f:read("*a"); f:close()
wrk.method = "POST"; wrk.headers["Content-Type"] = "application/json"
EOF
# One app per way of loading; the function is the same.
mkdir "$tmp/name" "$tmp/bytes" "$tmp/bytes/model"
cp "models/$model/model.onnx" "$tmp/bytes/model/"
for load in name bytes; do
  {
    echo "spin_manifest_version = 2"
    echo "[application]"
    echo "name = \"nn-http\""
    echo "[[trigger.http]]"
    echo "route = \"/v2/models/model/...\""
    echo "component = \"model\""
    echo "[component.model]"
    echo "source = \"$PWD/target/wasm/wasm32-wasip2/release/oip_nn.wasm\""
    if [[ $load == name ]]; then
      echo "environment = { EDGEINFER_MODEL_NAME = \"model\" }"
    else
      echo "environment = { EDGEINFER_MODEL_NAME = \"model\", EDGEINFER_MODEL_FILE = \"/model/model.onnx\" }"
      echo "files = [{ source = \"model\", destination = \"/model\" }]"
    fi
  } >"$tmp/$load/spin.toml"
done
{
  echo "[nn.models.model]"
  echo "path = \"$PWD/models/$model/model.onnx\""
  [[ -n "$shapes" ]] && echo "shapes = [\"$shapes\"]"
} >"$tmp/name/edgeinfer.toml"

printf '%-40s %5s %5s %5s %8s %8s %8s %6s\n' host load round conns rps p50_ms p99_ms errors
for round in $(seq "$ROUNDS"); do
  for bin in $EDGEINFER_BINS; do
  for load in $LOADS; do
    start_server "$tmp/server.log" /v2/health/ready \
      "$bin" up --from "$tmp/$load/spin.toml" --listen 127.0.0.1:0 --state-dir "$tmp/state"
    wrk -t1 -c1 -d1s -s "$tmp/post.lua" "$url/v2/models/model/infer" >/dev/null   # warm-up
    for c in $CONNECTIONS; do
      read -r rps p50 p99 err _ < <(wrk -t1 -c"$c" -d"${DURATION}s" --latency -s "$tmp/post.lua" \
        "$url/v2/models/model/infer" | parse_wrk)
      printf '%-40s %5s %5s %5s %8s %8s %8s %6s\n' "$bin" "$load" "$round" "$c" "$rps" "$p50" "$p99" "$err"
    done
    stop_server
  done
  done
done
