#!/usr/bin/env bash
# Performance benchmark, in one run: builds Lanyard in release mode, runs it on sled with
# throwaway state next to cfssl (`cfssl serve`, a P-256 CA, its /api/v1/cfssl/sign), measures
# the crypto floor in process, and prints one table of ratios against the targets.
#
#   scripts/bench.sh            (as root it installs Debian's golang-cfssl when missing)
#
# Knobs (environment): BENCH_REQUESTS (single-request run, default 8000), BENCH_BATCHES
# (batches of 50, default 300), BENCH_WATCHERS (default 10000), BENCH_PUTS (default 250),
# BENCH_FLOOR (floor iterations, default 20000), BENCH_OUT (where the raw JSON goes),
# BENCH_BIN (a lanyard binary to measure instead of building one).
# Benchmarks are not tests: scripts/test.sh does not run this. The machine's speed varies,
# so only ratios measured in the same run are compared.
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${BENCH_REQUESTS:-8000}
BATCHES=${BENCH_BATCHES:-300}
WATCHERS=${BENCH_WATCHERS:-10000}
PUTS=${BENCH_PUTS:-250}
FLOOR_N=${BENCH_FLOOR:-20000}
CLIENTS=16
OUT=${BENCH_OUT:-target/bench/results.json}

# 10,000 long polls are 10,000 sockets in the server and as many in the load generator.
need=$((WATCHERS + 1024))
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt "$need" ]; then
  echo "bench: the hard fd limit ($hard) is below $need; lower BENCH_WATCHERS or raise it" >&2
  exit 1
fi
ulimit -n "$need"

# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
need_cfssl

if [ -n "${BENCH_BIN:-}" ]; then
  BIN=$BENCH_BIN   # a build to compare, e.g. a copy of an earlier target/release/lanyard
else
  echo "bench: building (release)" >&2
  cargo build --release -q --bin lanyard
  BIN=$PWD/target/release/lanyard
fi

WORK=$(mktemp -d /tmp/lanyard-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "bench: crypto floor" >&2
"$BIN" bench --mode floor --requests "$FLOOR_N" --json > "$WORK/floor1.json"

# Lanyard: sled, throwaway state, a free port, no rotation schedule (the bench steps it).
start_sled_ca "$WORK"
sleep 3
echo "$(rss "$SERVER_PID")" > "$WORK/idle_rss"
ca_bench() { "$BIN" bench --server "$URL" --credential "$OP" --server-pid "$SERVER_PID" --json "$@"; }

echo "bench: Lanyard, $CLIENTS clients, single requests" >&2
ticks "$SERVER_PID" > "$WORK/ticks.single"
ca_bench --requests "$REQUESTS" --concurrency "$CLIENTS" > "$WORK/single.json"
ticks "$SERVER_PID" >> "$WORK/ticks.single"
echo "bench: Lanyard, $CLIENTS clients, batches of 50" >&2
ticks "$SERVER_PID" > "$WORK/ticks.batch"
ca_bench --requests $((BATCHES * 50)) --concurrency "$CLIENTS" --batch-size 50 > "$WORK/batch.json"
ticks "$SERVER_PID" >> "$WORK/ticks.batch"
HALF=$(python3 -c "import json; print(round(json.load(open('$WORK/single.json'))['certificates_per_second'] / 2, 1))")
PACED=$(python3 -c "print(max(1000, int($HALF * 8)))")
echo "bench: Lanyard, paced at half the peak ($HALF/s)" >&2
ca_bench --requests "$PACED" --concurrency "$CLIENTS" --rate "$HALF" > "$WORK/paced.json"

echo "bench: cfssl, $CLIENTS clients" >&2
run_cfssl "$WORK/cfssl" "$REQUESTS" "$CLIENTS" "$WORK/cfssl.json"

# A cell restart: the agent gets every PUT at once.
echo "bench: agent, $PUTS PUTs at once" >&2
A="$WORK/agent"
mkdir -p "$A"
"$BIN" token create --server "$URL" --credential "$OP" --role cell --name bench-agent --ttl 10m > "$A/join-token" 2>/dev/null
cat > "$A/agent.toml" <<CONF
server = "$URL"
trust_bundle_file = "$OP/trust-bundle.pem"
join_token_file = "$A/join-token"
credentials_root = "$A/instances"
state_dir = "$A/state"
listen = "127.0.0.1:0"
instance_ttl = "24h"
renew_fraction = 0.5
CONF
"$BIN" agent --config "$A/agent.toml" > "$A/agent.out" 2> "$A/agent.err" &
AGENT_PID=$!
PIDS+=("$AGENT_PID")
AGENT_URL=$(listening "$A/agent.out" "$AGENT_PID")
"$BIN" bench --mode agent --target "$AGENT_URL" --target-dir "$A/instances" --requests "$PUTS" --json > "$WORK/agent.json"
kill "$AGENT_PID"

echo "bench: $WATCHERS trust-bundle watchers, then a rotation step" >&2
ca_bench --mode watchers --watchers "$WATCHERS" > "$WORK/watchers.json"

echo "bench: crypto floor again" >&2
"$BIN" bench --mode floor --requests "$FLOOR_N" --json > "$WORK/floor2.json"

mkdir -p "$(dirname "$OUT")"
python3 - "$WORK" "$OUT" <<'PY'
import json, os, sys
work, out = sys.argv[1], sys.argv[2]
j = lambda n: json.load(open(os.path.join(work, n + ".json")))
floor1, floor2 = j("floor1"), j("floor2")
floor = min(floor1["floor_cpu_us"], floor2["floor_cpu_us"])
single, batch, paced, cfssl = j("single"), j("batch"), j("paced"), j("cfssl")
agent, watchers = j("agent"), j("watchers")
idle = int(open(os.path.join(work, "idle_rss")).read())
MB = 1024 * 1024
rows = []
def row(what, value, unit, ratio, target, ok):
    rows.append((what, value, unit, ratio, target, "yes" if ok else "NO"))
cpu1 = single["server_cpu_us_per_certificate"]
cpu50 = batch["server_cpu_us_per_certificate"]
row("server CPU per certificate, single requests", f"{cpu1:.0f}", "µs", f"{cpu1 / floor:.2f}× floor", "≤ 2.0× floor", cpu1 / floor <= 2.0)
row("server CPU per certificate, batches of 50", f"{cpu50:.0f}", "µs", f"{cpu50 / floor:.2f}× floor", "≤ 1.5× floor", cpu50 / floor <= 1.5)
t1, tc = single["certificates_per_second"], cfssl["certificates_per_second"]
row("throughput, single requests", f"{t1:.0f}", "cert/s", f"{t1 / tc:.2f}× cfssl", "≥ 2.0× cfssl", t1 / tc >= 2.0)
tb = batch["certificates_per_second"]
row("throughput, batches of 50", f"{tb:.0f}", "cert/s", f"{tb / tc:.2f}× cfssl", "(no target)", True)
row(f"p99 latency at half the peak ({paced['rate_target']:.0f}/s)", f"{paced['p99_ms']:.1f}", "ms", "", "≤ 10 ms", paced["p99_ms"] <= 10)
a = agent["all_on_disk_ms"]
row(f"{agent['puts']} PUTs to the agent, all on disk", "failed" if a is None else f"{a:.0f}", "ms", "", "≤ 300 ms", a is not None and a <= 300)
w_rss = watchers["server_rss_bytes"] / MB
row(f"{watchers['watchers']} bundle watchers: server RSS", f"{w_rss:.0f}", "MB", "", "≤ 200 MB", w_rss <= 200)
w_t = watchers["all_answered_ms"]
row(f"{watchers['watchers']} bundle watchers: all answered after prepare", "failed" if w_t is None else f"{w_t:.0f}", "ms", "", "≤ 1000 ms", w_t is not None and w_t <= 1000)
row("idle server RSS", f"{idle / MB:.0f}", "MB", "", "≤ 40 MB", idle / MB <= 40)
head = ("measure", "value", "unit", "ratio", "target", "met")
widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"
print(line(head))
print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
for r in rows:
    print(line(r))
print()
print(f"floor: ring P-256 CSR verify + one ECDSA P-256 signature = {floor:.1f} µs CPU "
      f"(min of {floor1['floor_cpu_us']:.1f} and {floor2['floor_cpu_us']:.1f}, one thread, in process)")
print(f"cfssl: {tc:.0f} cert/s, {cfssl['server_cpu_us_per_certificate']:.0f} µs server CPU per certificate "
      f"({cfssl['server_cpu_us_per_certificate'] / floor:.2f}× floor), p99 {cfssl['p99_ms']:.1f} ms; records nothing")
print(f"Lanyard single: p50 {single['p50_ms']:.1f} ms, p99 {single['p99_ms']:.1f} ms; "
      f"paced: {paced['server_cpu_us_per_certificate']:.0f} µs CPU per certificate, p50 {paced['p50_ms']:.1f} ms")
print(f"watchers: authenticated (cell credential, own connection each), so "
      f"listen.max_anonymous_long_polls does not apply and was left at its default; "
      f"set up in {watchers['setup_seconds']:.1f} s; prepare answered in {watchers['prepare_ms']:.0f} ms")
def split(name):
    (u0, s0), (u1, s1) = [map(int, l.split()) for l in open(os.path.join(work, "ticks." + name))]
    u, k = u1 - u0, s1 - s0
    return 100 * k / max(1, u + k)
for name, d in [("single", single), ("batch", batch)]:
    print(f"server {name}: {split(name):.0f}% of its CPU in the kernel, "
          f"{d['server_context_switches_per_request']:.1f} context switches per request, "
          f"{d['server_threads']} threads")
print(f"cfssl: {cfssl['server_context_switches_per_request']:.1f} context switches per request, "
      f"{cfssl['server_threads']} threads")
fails = [(n, d.get("failures") or 0, d.get("first_failure")) for n, d in
         [("single", single), ("batch", batch), ("paced", paced), ("cfssl", cfssl), ("agent", agent)]]
for n, f, first in fails:
    if f or first:
        print(f"failures in {n}: {f} (first: {first})")
json.dump({"floor": [floor1, floor2], "single": single, "batch": batch, "paced": paced,
           "cfssl": cfssl, "agent": agent, "watchers": watchers, "idle_rss_bytes": idle},
          open(out, "w"), indent=1)
print(f"raw figures: {out}")
PY
