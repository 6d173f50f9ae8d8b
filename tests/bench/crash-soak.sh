#!/usr/bin/env bash
# The ledger's kill -9 test, for longer: ROUNDS (default 100) rounds of load
# and SIGKILL, then the check that every 2xx the clients received whole has
# exactly one record and none is duplicated. Prints the counts.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
rustup target add wasm32-wasip2 >&2
EDGEINFER_CRASH_ROUNDS=${ROUNDS:-100} exec cargo test -p edgeinfer --test crash -- --nocapture
