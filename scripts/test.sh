#!/usr/bin/env bash
# Runs every test of the project. This is the test command of README.md and of CI.
# It installs what the tests need on a fresh Debian machine (as root) before running them.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "scripts/test.sh: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "scripts/test.sh: missing ${need[*]}; install them (as root: apt-get install ${need[*]})" >&2
    exit 1
  fi
fi

# PostgreSQL for the shared-store tests: the one named by LANYARD_TEST_POSTGRES_URL, or else
# a throwaway cluster of our own (temporary directory, free port, 127.0.0.1 only), removed on
# exit. Either way the tests may not skip it (LANYARD_REQUIRE_POSTGRES=1).
pg_bin() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
  done
  if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
    dirname "$(command -v initdb)"; return 0
  fi
  return 1
}

pg_dir=""
pg_user=""
pg_stop() {
  if [ -n "$pg_dir" ] && [ -d "$pg_dir" ]; then
    pg_as "$PG_BIN/pg_ctl" -D "$pg_dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$pg_dir"
  fi
}

# Runs a command as the cluster's owner (PostgreSQL refuses to run as root).
pg_as() {
  if [ "$(id -u)" = 0 ]; then
    (cd "$pg_dir" && runuser -u "$pg_user" -- "$@")
  else
    (cd "$pg_dir" && "$@")
  fi
}

pg_start() {
  if ! PG_BIN="$(pg_bin)"; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "scripts/test.sh: installing postgresql"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
      PG_BIN="$(pg_bin)"
    else
      echo "scripts/test.sh: PostgreSQL (initdb, pg_ctl) is missing; install it (as root: apt-get install postgresql) or set LANYARD_TEST_POSTGRES_URL" >&2
      exit 1
    fi
  fi
  if [ "$(id -u)" = 0 ]; then
    pg_user=lanyard-test
    id -u "$pg_user" >/dev/null 2>&1 \
      || useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$pg_user"
  else
    pg_user="$(id -un)"
  fi
  pg_dir="$(mktemp -d "${TMPDIR:-/tmp}/lanyard-pg.XXXXXX")"
  trap pg_stop EXIT
  chmod 755 "$pg_dir"
  [ "$(id -u)" = 0 ] && chown "$pg_user" "$pg_dir"
  pg_as "$PG_BIN/initdb" -D "$pg_dir/data" -U "$pg_user" --auth=trust --no-sync \
    -E UTF8 --locale=C >"$pg_dir/initdb.log" 2>&1 \
    || { cat "$pg_dir/initdb.log" >&2; exit 1; }
  # A free port as the kernel hands it out; another process may take it before the server
  # binds, so a failed start tries again with a new one.
  local attempt port
  for attempt in 1 2 3; do
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    # fsync off: the cluster is thrown away, and the tests restart lanyard, not the machine.
    if pg_as "$PG_BIN/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $pg_dir -c fsync=off -c max_connections=200" \
        start >/dev/null; then
      export LANYARD_TEST_POSTGRES_URL="postgres://$pg_user@127.0.0.1:$port/postgres"
      echo "scripts/test.sh: PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (cluster in $pg_dir)"
      return 0
    fi
    echo "scripts/test.sh: PostgreSQL did not start on port $port (attempt $attempt)" >&2
    tail -n 5 "$pg_dir/server.log" >&2 || true
  done
  exit 1
}

if [ -z "${LANYARD_TEST_POSTGRES_URL:-}" ]; then
  pg_start
fi
export LANYARD_REQUIRE_POSTGRES=1

# Headless Chromium for the operator console's browser test (tests/console.rs), which may not
# skip it here. The test keeps Chromium's traffic on 127.0.0.1.
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "scripts/test.sh: installing chromium"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "scripts/test.sh: chromium is missing; install it (as root: apt-get install chromium)" >&2
    exit 1
  fi
fi
export LANYARD_REQUIRE_CHROMIUM=1

# py-spiffe (PyPI `spiffe`), the SPIFFE Workload API client of tests/workload_api.rs, in a
# virtual environment under target/ (the test makes it too when it is missing).
py_venv=target/py-spiffe
if ! "$py_venv/bin/python" -c 'import spiffe, grpc' 2>/dev/null; then
  python3 -m venv "$py_venv" 2>/dev/null || {
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    fi
    python3 -m venv "$py_venv"
  }
  "$py_venv/bin/python" -m pip install --quiet 'spiffe==0.3.2'
fi

# Schemathesis (PyPI `schemathesis`), the property-based API tester of tests/schemathesis.rs,
# in its own virtual environment under target/ (the test makes it too when it is missing).
st_venv=target/schemathesis
if ! "$st_venv/bin/schemathesis" --version 2>/dev/null | grep -q '4\.32\.5'; then
  python3 -m venv "$st_venv"
  "$st_venv/bin/python" -m pip install --quiet 'schemathesis==4.32.5'
fi

cargo build --all-targets
cargo test --all-targets -- --test-threads="${LANYARD_TEST_THREADS:-4}"
cargo test --doc

# The cargo-fuzz targets (fuzz/), briefly: a quick build (no optimizations, no sanitizer) and a
# few seconds each; scripts/fuzz.sh with no FUZZ_QUICK runs longer. A crash fails the suite.
FUZZ_QUICK=1 bash scripts/fuzz.sh "${LANYARD_FUZZ_SECONDS:-5}"
