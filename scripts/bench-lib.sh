# Helpers shared by scripts/bench.sh, bench-replicas.sh and bench-starvation.sh (sourced, not run).

# Waits for a process's "listening on URL" line in FILE; prints the URL.
listening() {
  local file=$1 pid=$2
  for _ in $(seq 600); do
    if grep -q '^listening on ' "$file" 2>/dev/null; then
      grep -m1 '^listening on ' "$file" | cut -d' ' -f3
      return
    fi
    kill -0 "$pid" 2>/dev/null || { echo "bench: process $pid exited; see $file" >&2; exit 1; }
    sleep 0.1
  done
  echo "bench: nothing listening after 60 s ($file)" >&2
  exit 1
}
# Starts `$BIN serve` on sled with throwaway state in DIR (a free port, no rotation schedule:
# the benches step it) and waits for its operator credential. Sets SERVER_PID, URL and OP
# (the operator credential directory), and adds the server to PIDS (the processes the caller
# stops on exit).
start_sled_ca() {
  local dir=$1
  cat > "$dir/lanyard.toml" <<CONF
trust_domain = "lanyard.internal"
state_dir = "$dir/ca"
auto_init = true
[listen]
address = "127.0.0.1:0"
[keys]
kek_file = "$dir/ca/kek"
[rotation]
automatic = false
propagation_delay = "10m"
[storage]
backend = "sled"
CONF
  "$BIN" serve --config "$dir/lanyard.toml" > "$dir/serve.out" 2> "$dir/serve.err" &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  URL=$(listening "$dir/serve.out" "$SERVER_PID")
  OP="$dir/ca/credentials/operator"
  for _ in $(seq 100); do [ -s "$OP/cert.pem" ] && break; sleep 0.1; done
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss() { awk '/^VmRSS:/ {print $2 * 1024}' "/proc/$1/status"; }
# utime and stime (clock ticks) of a process, to split its CPU into user and kernel time.
ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12, $13}'; }

# Installs Debian's golang-cfssl when missing (as root), or fails.
need_cfssl() {
  if ! command -v cfssl >/dev/null || ! command -v cfssljson >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
      apt-get install -y -q golang-cfssl >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q golang-cfssl >/dev/null; }
    else
      echo "bench: cfssl is missing; install Debian's golang-cfssl" >&2
      exit 1
    fi
  fi
}

# Runs cfssl (a P-256 CA, a server certificate for 127.0.0.1, a client certificate so that it
# is called over mutual TLS with keep-alive connections, as Lanyard is) in DIR, measures its
# /sign with `lanyard bench --mode cfssl` (REQUESTS, CLIENTS) into OUT, and stops it.
# Needs BIN and PIDS (an array of processes to stop on exit).
run_cfssl() {
  local dir=$1 requests=$2 clients=$3 out=$4
  mkdir -p "$dir"
  (
    cd "$dir"
    echo '{"CN":"cfssl bench CA","key":{"algo":"ecdsa","size":256}}' > ca-csr.json
    cfssl gencert -initca ca-csr.json 2>/dev/null | cfssljson -bare ca
    echo '{"CN":"127.0.0.1","key":{"algo":"ecdsa","size":256}}' > server-csr.json
    cfssl gencert -ca ca.pem -ca-key ca-key.pem -hostname 127.0.0.1,localhost server-csr.json 2>/dev/null | cfssljson -bare server
    echo '{"CN":"bench client","key":{"algo":"ecdsa","size":256}}' > client-csr.json
    cfssl gencert -ca ca.pem -ca-key ca-key.pem -hostname bench-client client-csr.json 2>/dev/null | cfssljson -bare client
  )
  local port pid
  port=$(free_port)
  cfssl serve -address 127.0.0.1 -port "$port" -ca "$dir/ca.pem" -ca-key "$dir/ca-key.pem" \
    -tls-cert "$dir/server.pem" -tls-key "$dir/server-key.pem" -mutual-tls-ca "$dir/ca.pem" \
    -loglevel 2 > "$dir/cfssl.out" 2> "$dir/cfssl.err" &
  pid=$!
  PIDS+=("$pid")
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  "$BIN" bench --mode cfssl --target "https://127.0.0.1:$port" --target-dir "$dir" \
    --requests "$requests" --concurrency "$clients" --server-pid "$pid" --json > "$out"
  kill "$pid"
}
