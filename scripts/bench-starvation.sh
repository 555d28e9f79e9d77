#!/usr/bin/env bash
# Starvation benchmark: a release Lanyard on sled with throwaway state and its default
# connection budgets, flooded with anonymous trust-bundle long polls in steps
# (scripts/starvation.py); after each step a cell issues a certificate and an operator lists
# the authorities. Prints one line per step and the largest flood under which both were
# served.
#
#   scripts/bench-starvation.sh            (BENCH_STEPS=1000,4000,8300,9400 by default)
#
# Needs curl, openssl and python3. Not a test: scripts/test.sh does not run it
# (tests/starvation.rs asserts the same property with a small budget).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh

STEPS=${BENCH_STEPS:-1000,4000,8300,9400}
last=${STEPS##*,}
need=$((last * 2 + 1024))
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt "$need" ]; then
  echo "bench-starvation: the hard fd limit ($hard) is below $need; lower BENCH_STEPS" >&2
  exit 1
fi
ulimit -n "$need"

if [ -n "${BENCH_BIN:-}" ]; then
  BIN=$BENCH_BIN
else
  echo "bench-starvation: building (release)" >&2
  cargo build --release -q --bin lanyard
  BIN=$PWD/target/release/lanyard
fi

WORK=$(mktemp -d /tmp/lanyard-starve.XXXXXX)
SERVER_PID=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

start_sled_ca "$WORK"

# A cell: a join token, a key made here, the join.
TOKEN=$("$BIN" token create --server "$URL" --credential "$OP" --role cell --name starve-cell --ttl 10m 2>/dev/null)
openssl ecparam -name prime256v1 -genkey -noout 2>/dev/null | openssl pkcs8 -topk8 -nocrypt -out "$WORK/cell.key"
chmod 600 "$WORK/cell.key"
openssl req -new -key "$WORK/cell.key" -subj "/CN=cell" -out "$WORK/cell.csr"
python3 -c 'import json,sys; print(json.dumps({"csr": open(sys.argv[1]).read()}))' "$WORK/cell.csr" > "$WORK/join.json"
curl -sS --fail --cacert "$OP/trust-bundle.pem" -H "Authorization: Bearer $TOKEN" \
  -H "Content-Type: application/json" --data @"$WORK/join.json" "$URL/v1/join" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["certificate_chain"], end="")' > "$WORK/cell.pem"
openssl ecparam -name prime256v1 -genkey -noout 2>/dev/null | openssl pkcs8 -topk8 -nocrypt -out "$WORK/instance.key"
openssl req -new -key "$WORK/instance.key" -subj "/CN=instance" -out "$WORK/instance.csr"

echo "bench-starvation: $URL, default budgets; steps $STEPS" >&2
python3 scripts/starvation.py --url "$URL" --bundle "$OP/trust-bundle.pem" \
  --cell-cert "$WORK/cell.pem" --cell-key "$WORK/cell.key" --csr "$WORK/instance.csr" \
  --operator-dir "$OP" --steps "$STEPS"
echo "server RSS after the flood: $(awk '/^VmRSS:/ {print int($2 / 1024)}' "/proc/$SERVER_PID/status") MB"
