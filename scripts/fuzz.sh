#!/usr/bin/env bash
# Runs each cargo-fuzz target (fuzz/) for N seconds (default 60): scripts/fuzz.sh [N] [TARGET...]
# FUZZ_QUICK=1 (as scripts/test.sh runs it) builds without optimizations or AddressSanitizer:
# the parsers are safe Rust, so the sanitizer adds little, and the build takes a third of the
# time; the longer runs keep both.
# Installs cargo-fuzz when missing. Only the stable toolchain is needed: cargo-fuzz's
# sanitizer flags are nightly-only, so RUSTC_BOOTSTRAP=1 lets stable accept them.
# Prints each target's executions; exits 1 on a crash (the input is in fuzz/artifacts/TARGET/,
# and belongs in the seeds of src/fuzzing.rs once fixed).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(csr request_json pem)

if ! cargo fuzz --help >/dev/null 2>&1; then
  echo "scripts/fuzz.sh: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
flags=()
if [ "${FUZZ_QUICK:-0}" = 1 ]; then
  flags=(--dev --sanitizer none)
fi
# Its own target directory under the main one, so the main build's cache is not disturbed.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}/fuzz"
status=0
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  log="$(mktemp)"
  if cargo fuzz run ${flags[@]+"${flags[@]}"} --fuzz-dir fuzz "$t" "fuzz/corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 >"$log" 2>&1; then
    execs="$(grep -o 'Done [0-9]* runs' "$log" | grep -o '[0-9]*' | tail -1 || true)"
    echo "fuzz $t: ${execs:-?} executions in ${secs}s, no crash"
  else
    echo "fuzz $t: FAILED (crash or build failure); log follows" >&2
    tail -n 40 "$log" >&2
    status=1
  fi
  rm -f "$log"
done
exit $status
