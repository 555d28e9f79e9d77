#!/usr/bin/env bash
# Instructions per issuance, counted with callgrind (valgrind): one instance certificate
# issued in process through the API router (request bytes -> CSR verified -> signed ->
# record durable in sled -> response bytes), next to the crypto floor (ring P-256 CSR
# verification plus one signature). Instruction counts do not move with the machine's load,
# so regressions show in them.
#
#   scripts/bench-instructions.sh           (BENCH_PROFILE=1 also prints where they go)
#
# Each workload runs twice, with N1 and N2 iterations after the same setup and warm-up; the
# difference divided by N2 - N1 is the count of one iteration, on every thread (tokio's,
# the blocking pool's, sled's), without the setup.
set -euo pipefail
cd "$(dirname "$0")/.."
N1=${BENCH_N1:-10}
N2=${BENCH_N2:-60}
command -v valgrind >/dev/null || { echo "bench-instructions: valgrind is missing" >&2; exit 1; }
cargo build --release -q --bin lanyard
BIN=$PWD/target/release/lanyard
WORK=${BENCH_WORK:-$(mktemp -d /tmp/lanyard-callgrind.XXXXXX)}
mkdir -p "$WORK"

# Total instructions of one run: `bench --mode MODE --requests N` under callgrind.
count() {
  local mode=$1 n=$2 out="$WORK/$1.$2.callgrind"
  valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$BIN" bench --mode "$mode" --requests "$n" --json > "$WORK/$mode.$n.json" 2> "$WORK/$mode.$n.log" \
    || { echo "bench-instructions: $mode $n failed; see $WORK/$mode.$n.log" >&2; exit 1; }
  awk '/^(summary|totals):/ {print $2; exit}' "$out"
}

echo "bench-instructions: callgrind, $N1 and $N2 iterations of each (slow)" >&2
f1=$(count floor "$N1"); f2=$(count floor "$N2")
i1=$(count in-process "$N1"); i2=$(count in-process "$N2")
python3 - "$f1" "$f2" "$i1" "$i2" "$N1" "$N2" <<'PY'
import sys
f1, f2, i1, i2, n1, n2 = map(int, sys.argv[1:])
floor = (f2 - f1) / (n2 - n1)
issue = (i2 - i1) / (n2 - n1)
print("| per operation | instructions |")
print("|---|---|")
print(f"| one issuance, in process (request bytes to durable record and response bytes) | {issue:,.0f} |")
print(f"| crypto floor (ring P-256 CSR verify + one ECDSA P-256 signature) | {floor:,.0f} |")
print(f"| ratio | {issue / floor:.2f}× |")
PY

if [ "${BENCH_PROFILE:-0}" = 1 ]; then
  # Where one issuance's instructions go: inclusive counts per function (all threads),
  # the N2 run minus the N1 run, per issuance.
  python3 scripts/callgrind-split.py "$WORK/in-process.$N1.callgrind" "$WORK/in-process.$N2.callgrind" $((N2 - N1))
fi
echo "callgrind files: $WORK" >&2
