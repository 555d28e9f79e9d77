#!/usr/bin/env bash
# Compares lanyard builds on the issuance path, interleaved so that the machine's drift from
# minute to minute falls on every build alike: for each round, each build in turn gets a fresh
# sled state, a warm-up, BENCH_SINGLE single requests and BENCH_BATCH certificates in batches
# of 50 (16 mutual-TLS clients), and prints its server CPU per certificate, rate, context
# switches per request and RSS after the run.
#
#   scripts/bench-compare.sh OLD_BINARY NEW_BINARY [...]
#
# e.g. `cp target/release/lanyard /tmp/lanyard-before`, change and rebuild, then
# `scripts/bench-compare.sh /tmp/lanyard-before target/release/lanyard`.
# Knobs: BENCH_ROUNDS (default 2), BENCH_SINGLE (default 5000), BENCH_BATCH (default 5000).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: scripts/bench-compare.sh BINARY [BINARY...]" >&2; exit 2; }
ROUNDS=${BENCH_ROUNDS:-2}
SINGLE=${BENCH_SINGLE:-5000}
BATCH=${BENCH_BATCH:-5000}

# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh

PIDS=()
WORK=
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  [ -z "$WORK" ] || rm -rf "$WORK"
}
trap cleanup EXIT

summary() {
  python3 -c "
import json, sys
j = json.load(sys.stdin)
print('%5.0f µs/cert %6.0f cert/s %5.1f cs/req' % (j['server_cpu_us_per_certificate'],
      j['certificates_per_second'], j['server_context_switches_per_request']))"
}

printf '%-6s %-28s | %-40s | %-40s | %s\n' round build "single requests" "batches of 50" "RSS after"
for round in $(seq "$ROUNDS"); do
  for BIN in "$@"; do
    WORK=$(mktemp -d /tmp/lanyard-compare.XXXXXX)
    start_sled_ca "$WORK"
    run() { "$BIN" bench --server "$URL" --credential "$OP" --concurrency 16 --server-pid "$SERVER_PID" --json "$@"; }
    run --requests 1000 > /dev/null
    single=$(run --requests "$SINGLE" | summary)
    batch=$(run --requests "$BATCH" --batch-size 50 | summary)
    printf '%-6s %-28s | %-40s | %-40s | %s MB\n' "$round" "$(basename "$BIN")" "$single" "$batch" $(($(rss "$SERVER_PID") / 1048576))
    kill "$SERVER_PID"
    wait "$SERVER_PID" 2>/dev/null || true
    PIDS=()
    rm -rf "$WORK"
    WORK=
  done
done
