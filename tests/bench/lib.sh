# Shared by the benchmark scripts: sourced, not run. Everything noisy goes to
# stderr so that --json output stays parseable.

log() { echo "${BENCH:-bench}: $*" >&2; }
as_root() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi; }

# Installs wrk and curl from Debian if missing.
need_load_tools() {
  for tool in wrk curl; do
    command -v "$tool" >/dev/null || { as_root apt-get update >&2 && as_root apt-get install -y "$tool" >&2; }
  done
}

# `wasmtime serve` 48, the host edgeinfer is compared with: wasmtime-cli's
# own serve command, built in this workspace (tests/wasmtime-serve), so that
# it never has to be installed. Sets WASMTIME unless it is given.
# - `need_wasmtime debug` (the tests): built with tests/run's flags, so that
#   it reuses the build of wasmtime the tests made (change both together);
# - `need_wasmtime` (benchmarks): release, with only its own features, as
#   `cargo install wasmtime-cli` would build it.
need_wasmtime() {
  [[ -n "${WASMTIME:-}" ]] && return
  if [[ "${1:-release}" == debug ]]; then
    cargo build --workspace --all-features --tests --bin wasmtime >&2
    WASMTIME=$PWD/target/debug/wasmtime
  else
    cargo build --release -p wasmtime-serve >&2
    WASMTIME=$PWD/target/release/wasmtime
  fi
}

# wasmtime-cli's version, for reports.
wasmtime_version() { cargo pkgid wasmtime-cli | sed 's/.*[#@]/wasmtime-cli /'; }

# Sets EDGEINFER_BIN, building the release host unless it is given.
need_edgeinfer() {
  if [[ -z "${EDGEINFER_BIN:-}" ]]; then
    cargo build --release -p edgeinfer >&2
    EDGEINFER_BIN=$PWD/target/release/edgeinfer
  fi
}

# Sets EDGEINFER_BINS (hosts to compare, in turns) to the release build
# unless it is given.
need_edgeinfer_bins() {
  if [[ -z "${EDGEINFER_BINS:-}" ]]; then
    need_edgeinfer
    EDGEINFER_BINS=$EDGEINFER_BIN
  fi
}

# Sets PYTHON to a python with onnxruntime (the venv target/py, made by
# tests/ort-lib) unless it is given.
need_python() {
  if [[ -z "${PYTHON:-}" ]]; then
    tests/ort-lib >/dev/null
    PYTHON=target/py/bin/python
  fi
}

# Runs "$@" in the background with output to $2's log file ($1), reads the
# address it bound from its startup line (no port races), and waits until
# $url$ready_path answers 200. Sets pid and url.
#   start_server LOG READY_PATH CMD...
start_server() {
  local logfile=$1 ready_path=$2
  shift 2
  "$@" >"$logfile" 2>&1 &
  pid=$!
  for _ in $(seq 6000); do
    url=$(grep -om1 'http://127\.0\.0\.1:[0-9]*' "$logfile" || true)
    if [[ -n "$url" ]] && curl -fs -o /dev/null "$url$ready_path"; then return; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  log "server did not become ready:"; cat "$logfile" >&2; exit 1
}
stop_server() { [[ -n "${pid:-}" ]] && { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; }; pid=""; }

# Sets tmp to a throwaway app dir whose spin.toml starts as app $1's; on exit
# the server (pid) is stopped and the dir removed. Append the components.
app_dir() {
  tmp=$(mktemp -d)
  pid=""
  trap 'stop_server; rm -rf "$tmp"' EXIT
  printf 'spin_manifest_version = 2\n[application]\nname = "%s"\n' "$1" >"$tmp/spin.toml"
}

# wrk's --latency report -> "rps p50_ms p99_ms errors socket_errors non2xx
# n429 n5xx" (errors = socket errors + non-2xx/3xx responses; the last two
# need a wrk script that prints "STATUS 429=N 5xx=N", as load.sh's does).
parse_wrk() {
  awk 'function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0;
                        if (v ~ /s$/) return v * 1000; return v * 60000 }   # "m"
       $1 == "50%" { p50 = ms($2) }  $1 == "99%" { p99 = ms($2) }
       /^Requests\/sec:/ { rps = $2 }
       /Socket errors:/ { gsub(/,/, ""); sock += $4 + $6 + $8 + $10 }
       /Non-2xx or 3xx/ { non2xx = $NF }
       /^STATUS/ { split($2, a, "="); n429 = a[2]; split($3, b, "="); n5xx = b[2] }
       END { printf "%.0f %.3f %.3f %d %d %d %d %d\n", rps, p50, p99, sock + non2xx, sock, non2xx, n429, n5xx }'
}

# Median of column $3 (1-based) over the rows of file $1 whose first field is $2.
median() {
  awk -v s="$2" -v c="$3" '$1 == s { print $c }' "$1" | sort -n |
    awk '{v[NR] = $1} END { if (NR == 0) { print 0; exit }
         printf "%.3f\n", (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'
}
# CPU time (user + system) process $1 has used, in µs.
cpu_us() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.0f\n", ($14 + $15) * 1e6 / hz }' "/proc/$1/stat"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }'; }

# The README's 8x8 digit as a wrk script that POSTs it.
digits_lua() {
  cat <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"pixels":[0,0,7,16,14,3,0,0,0,0,9,14,11,15,0,0,0,0,1,5,0,15,5,0,0,0,0,0,0,16,5,0,0,0,0,0,3,16,4,0,0,0,0,1,12,14,1,0,0,0,5,12,16,16,14,1,0,0,8,16,14,10,13,3]}'
LUA
}

# spin.toml lines for the digits function as the bundled app serves it
# (built, then baked by `edgeinfer build`), at /models/digits.
digits_component() {
  local root=$1
  cat <<TOML
[[trigger.http]]
route = "/models/digits"
component = "digits"
[component.digits]
source = "$root/target/baked/digits.wasm"
[component.digits.build]
command = "cargo build --release -p digits"
workdir = "$root/functions"
[component.digits.tool.edgeinfer]
bake = "$root/target/wasm/wasm32-wasip2/release/digits.wasm"
TOML
}
