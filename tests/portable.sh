#!/usr/bin/env bash
# The bundled functions are portable: the files `edgeinfer build` bakes (the
# `source`s in spin.toml) run unchanged on another wasmtime host, `wasmtime
# serve` 48, and answer every request with the same body as `edgeinfer up`;
# there the function itself refuses a request body cut short.
# (Spin itself cannot be built in CI: some of its git dependencies are out
# of this machine's reach. Built by hand with them replaced, it gave the same
# answers; see README.)
#
# Usage: tests/portable.sh
# Env:   EDGEINFER_BIN (default: target/debug/edgeinfer, built if not given),
#        WASMTIME (default: target/debug/wasmtime, tests/wasmtime-serve,
#        built with the test suite's features if not given).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
source tests/bench/lib.sh
BENCH=portable

rustup target add wasm32-wasip2 >&2
need_load_tools
need_wasmtime debug
if [[ -z "${EDGEINFER_BIN:-}" ]]; then
  cargo build -p edgeinfer >&2
  EDGEINFER_BIN=$PWD/target/debug/edgeinfer
fi

"$EDGEINFER_BIN" build >&2 # builds the functions and bakes their models in

declare -A metadata
tmp=$(mktemp -d)
pid=""
trap 'stop_server; rm -rf "$tmp"' EXIT

# The README's requests, and each function's OIP metadata: request i goes
# to component ${of[i]}.
digits='{"pixels":[0,0,7,16,14,3,0,0,0,0,9,14,11,15,0,0,0,0,1,5,0,15,5,0,0,0,0,0,0,16,5,0,0,0,0,0,3,16,4,0,0,0,0,1,12,14,1,0,0,0,5,12,16,16,14,1,0,0,8,16,14,10,13,3]}'
of=(digits digits filetype filetype embed embed)
metadata=([digits]=/v2/models/digits [filetype]=/v2/models/filetype [embed]=/v2/models/all-minilm-l6-v2)
ask() { # URL I OUT
  case $2 in
    0) curl -fsS -d "$digits" "$1/models/digits" ;;
    2) curl -fsS --data-binary @host/src/main.rs "$1/models/filetype" ;;
    4) curl -fsS -d '{"model":"all-minilm-l6-v2","input":"hello world"}' "$1/v1/embeddings" ;;
    *) curl -fsS "$1${metadata[${of[$2]}]}" ;;
  esac >"$3"
}

# A host that streams the body (edgeinfer reads it whole first) leaves the
# function to tell a body cut short from a whole one: the client declares 64
# bytes more than it sends, a valid request, and leaves. The function must
# refuse it, not run it.
cut_short() { # URL OUT
  python3 - "${1#http://}" "$digits" >"$2" <<'EOF'
import socket, sys
addr, body = sys.argv[1], sys.argv[2].encode()
host, port = addr.rsplit(":", 1)
s = socket.create_connection((host, int(port)), timeout=30)
s.sendall(f"POST /models/digits HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n"
          f"content-length: {len(body) + 64}\r\nconnection: close\r\n\r\n".encode() + body)
s.shutdown(socket.SHUT_WR)
answer = b""
while chunk := s.recv(65536):
    answer += chunk
sys.stdout.write(answer.decode(errors="replace"))
EOF
  if head -1 "$2" | grep -q '^HTTP/1.1 400' && grep -q '"reading the body' "$2"; then
    log "digits on wasmtime serve: a body cut short is refused by the function ($(grep -o '"error":"[^"]*"' "$2"))"
  else
    log "digits on wasmtime serve: a body cut short was not refused: $(head -c 300 "$2")"
    return 1
  fi
}

# Every answer from the whole app on edgeinfer first...
start_server "$tmp/edgeinfer.log" /v2/health/ready \
  "$EDGEINFER_BIN" up --listen 127.0.0.1:0 --state-dir "$tmp/state"
for i in "${!of[@]}"; do ask "$url" "$i" "$tmp/edgeinfer.$i"; done
stop_server

# ...then from each baked file alone on `wasmtime serve`.
failed=0
for component in digits filetype embed; do
  source=$(awk -v c="[component.$component]" '$0 == c { f = 1; next }
             f && /^source *=/ { gsub(/"/, "", $3); print $3; exit }' spin.toml)
  start_server "$tmp/wasmtime.log" "${metadata[$component]}" \
    "$WASMTIME" serve -Scli --addr 127.0.0.1:0 "$source"
  for i in "${!of[@]}"; do
    [[ ${of[$i]} == "$component" ]] || continue
    ask "$url" "$i" "$tmp/wasmtime.$i"
    if cmp -s "$tmp/edgeinfer.$i" "$tmp/wasmtime.$i"; then
      log "$source: the same $(wc -c <"$tmp/wasmtime.$i")-byte answer on both hosts (request $i)"
    else
      log "$source, request $i: edgeinfer said $(head -c 300 "$tmp/edgeinfer.$i"); wasmtime serve said $(head -c 300 "$tmp/wasmtime.$i")"
      failed=1
    fi
  done
  if [[ $component == digits ]]; then cut_short "$url" "$tmp/cut" || failed=1; fi
  stop_server
done
# Equal, and right.
grep -q '"label":2,' "$tmp/edgeinfer.0" || { log "digits: not label 2"; failed=1; }
grep -q '"label":"rust"' "$tmp/edgeinfer.2" || { log "filetype: not rust"; failed=1; }
grep -q '"embedding":\[' "$tmp/edgeinfer.4" || { log "embed: no embedding"; failed=1; }
[[ $failed == 0 ]] && log "ok: digits, filetype and embed run unchanged on wasmtime serve, and refuse a body cut short"
exit "$failed"
