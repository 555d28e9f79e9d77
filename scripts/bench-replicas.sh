#!/usr/bin/env bash
# Three PostgreSQL replicas against one sled node and cfssl, in one run: builds Lanyard in
# release mode, creates a throwaway database on a PostgreSQL server, starts three
# `lanyard serve` on it (sharing the KEK), and drives each with its own `lanyard bench`
# process (CLIENTS keep-alive mutual-TLS workers each) at the same time; then one sled node
# and cfssl under the same load. Prints one table.
#
#   BENCH_POSTGRES_URL=postgres://USER@127.0.0.1:PORT/postgres scripts/bench-replicas.sh
#
# The URL names a role that may create databases (LANYARD_TEST_POSTGRES_URL is used when
# BENCH_POSTGRES_URL is unset); the database is dropped at the end. Knobs: BENCH_REQUESTS
# (certificates per bench process, default 8000), BENCH_CLIENTS (workers per bench process,
# default 16), BENCH_OUT (raw JSON), BENCH_BIN (a lanyard binary instead of building one).
# The three replicas and their three load generators share this machine's cores, as do the
# single node and its load generator: compare the rates measured here with each other.
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${BENCH_REQUESTS:-8000}
CLIENTS=${BENCH_CLIENTS:-16}
OUT=${BENCH_OUT:-target/bench/replicas.json}
PG=${BENCH_POSTGRES_URL:-${LANYARD_TEST_POSTGRES_URL:-}}
if [ -z "$PG" ]; then
  echo "bench: set BENCH_POSTGRES_URL=postgres://USER@HOST:PORT/postgres (a role that may create databases)" >&2
  exit 1
fi

# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
need_cfssl

if [ -n "${BENCH_BIN:-}" ]; then
  BIN=$BENCH_BIN
else
  echo "bench: building (release)" >&2
  cargo build --release -q --bin lanyard
  BIN=$PWD/target/release/lanyard
fi

WORK=$(mktemp -d /tmp/lanyard-bench-replicas.XXXXXX)
DB="lanyard_bench_$$"
DB_URL=$(python3 - "$PG" "$DB" <<'PY'
import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1])
print(u.urlunsplit((p.scheme, p.netloc, "/" + sys.argv[2], p.query, p.fragment)))
PY
)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  psql -q "$PG" -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
psql -q "$PG" -c "CREATE DATABASE $DB" >/dev/null

# serve NAME BACKEND-LINES: starts `lanyard serve` with state in $WORK/NAME; sets URL and PID.
serve() {
  local name=$1 storage=$2
  mkdir -p "$WORK/$name"
  cat > "$WORK/$name/lanyard.toml" <<CONF
trust_domain = "lanyard.internal"
state_dir = "$WORK/$name/state"
auto_init = true
replica_name = "$name"
[listen]
address = "127.0.0.1:0"
[keys]
kek_file = "$WORK/kek"
[rotation]
automatic = false
propagation_delay = "10m"
[storage]
$storage
CONF
  "$BIN" serve --config "$WORK/$name/lanyard.toml" > "$WORK/$name/serve.out" 2> "$WORK/$name/serve.err" &
  PID=$!
  PIDS+=("$PID")
  URL=$(listening "$WORK/$name/serve.out" "$PID")
}

# load NAME URL PID CREDENTIAL: one bench process, in the background, JSON to $WORK/NAME.json.
load() {
  "$BIN" bench --server "$2" --credential "$4" --server-pid "$3" --json \
    --requests "$REQUESTS" --concurrency "$CLIENTS" > "$WORK/$1.json" &
}

echo "bench: three replicas on PostgreSQL" >&2
PGLINES="backend = \"postgres\"
url = \"$DB_URL\""
serve r1 "$PGLINES"; R1=$URL; P1=$PID
OP="$WORK/r1/state/credentials/operator"
for _ in $(seq 100); do [ -s "$OP/cert.pem" ] && break; sleep 0.1; done
serve r2 "$PGLINES"; R2=$URL; P2=$PID
serve r3 "$PGLINES"; R3=$URL; P3=$PID
sleep 2
echo "bench: $((3 * CLIENTS)) clients over three replicas" >&2
start=$(date +%s.%N)
load rep1 "$R1" "$P1" "$OP"; B1=$!
load rep2 "$R2" "$P2" "$OP"; B2=$!
load rep3 "$R3" "$P3" "$OP"; B3=$!
wait "$B1" "$B2" "$B3"
end=$(date +%s.%N)
echo "$start $end" > "$WORK/replicas.window"
for p in "$P1" "$P2" "$P3"; do kill "$p"; done

echo "bench: one sled node, $CLIENTS clients" >&2
serve sled 'backend = "sled"'
SOP="$WORK/sled/state/credentials/operator"
for _ in $(seq 100); do [ -s "$SOP/cert.pem" ] && break; sleep 0.1; done
sleep 2
load sled "$URL" "$PID" "$SOP"
wait $!
kill "$PID"

echo "bench: cfssl, $CLIENTS clients" >&2
run_cfssl "$WORK/cfssl" "$REQUESTS" "$CLIENTS" "$WORK/cfssl.json"

mkdir -p "$(dirname "$OUT")"
python3 - "$WORK" "$OUT" <<'PY'
import json, os, sys
work, out = sys.argv[1], sys.argv[2]
j = lambda n: json.load(open(os.path.join(work, n + ".json")))
reps = [j(f"rep{i}") for i in (1, 2, 3)]
sled, cfssl = j("sled"), j("cfssl")
start, end = map(float, open(os.path.join(work, "replicas.window")).read().split())
issued = sum(r["issued"] for r in reps)
# Together: every certificate over the time from the first bench's start to the last one's end.
together = issued / (end - start)
tc = cfssl["certificates_per_second"]
cpu = sum(r["server_cpu_us_per_certificate"] * r["issued"] for r in reps) / max(1, issued)
rows = [
    ("three replicas (PostgreSQL), together", f"{together:.0f}", f"{together / tc:.2f}× cfssl", "≥ 1.5× cfssl",
     "yes" if together / tc >= 1.5 else "NO", f"{cpu:.0f}", f"{max(r['p99_ms'] for r in reps):.1f}"),
    ("one node (sled)", f"{sled['certificates_per_second']:.0f}", f"{sled['certificates_per_second'] / tc:.2f}× cfssl",
     "", "", f"{sled['server_cpu_us_per_certificate']:.0f}", f"{sled['p99_ms']:.1f}"),
    ("cfssl", f"{tc:.0f}", "1.00× cfssl", "", "", f"{cfssl['server_cpu_us_per_certificate']:.0f}", f"{cfssl['p99_ms']:.1f}"),
]
head = ("measure", "cert/s", "ratio", "target", "met", "server CPU µs/cert", "p99 ms")
widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"
print(line(head))
print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
for r in rows:
    print(line(r))
print()
for i, r in enumerate(reps, 1):
    print(f"replica {i}: {r['certificates_per_second']:.0f} cert/s alone in its window, "
          f"{r['server_cpu_us_per_certificate']:.0f} µs CPU per certificate, p99 {r['p99_ms']:.1f} ms, "
          f"{r['server_context_switches_per_request']:.1f} context switches per request, failures {r['failures']}")
for n, d in [("sled", sled), ("cfssl", cfssl)] + [(f"replica {i}", r) for i, r in enumerate(reps, 1)]:
    if d.get("failures") or d.get("first_failure"):
        print(f"failures in {n}: {d.get('failures')} (first: {d.get('first_failure')})")
json.dump({"replicas": reps, "sled": sled, "cfssl": cfssl, "window": [start, end]}, open(out, "w"), indent=1)
print(f"raw figures: {out}")
PY
