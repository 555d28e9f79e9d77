#!/usr/bin/env bash
# The README's five-minute walkthrough, as a script that the test suite runs, so the README
# stays true. Usage: scripts/walkthrough.sh [SERVER_URL] [OPERATOR_DIR]
# With no arguments it talks to the dev CA (`cargo run --release -- serve`) on 127.0.0.1:8443.
set -euo pipefail
SERVER=${1:-https://localhost:8443}
OP=${2:-data/credentials/operator}
LANYARD=${LANYARD:-"cargo run --release -q --"}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
json() { python3 -c "import json,sys; print(json.dumps(dict(a.split('=',1) for a in sys.argv[1:])))" "$@"; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'], end='')"; }

# 1. The operator creates a one-time join token for a cell.
TOKEN=$($LANYARD token create --server "$SERVER" --credential "$OP" --role cell --name cell-1 --ttl 15m)

# 2. The cell makes its own key and CSR, and joins with the token: it gets its cell credential.
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=cell-1 \
  -keyout "$WORK/cell.key" -out "$WORK/cell.csr" 2>/dev/null
curl -sS --fail-with-body --cacert "$OP/trust-bundle.pem" \
  -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  -d "$(json csr="$(cat "$WORK/cell.csr")")" \
  "$SERVER/v1/join" | field certificate_chain > "$WORK/cell.crt"

# 3. With its cell credential, the cell asks for an app instance's certificate.
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=ignored \
  -keyout "$WORK/instance.key" -out "$WORK/instance.csr" 2>/dev/null
curl -sS --fail-with-body --cacert "$OP/trust-bundle.pem" \
  --cert "$WORK/cell.crt" --key "$WORK/cell.key" -H 'Content-Type: application/json' \
  -d "$(json csr="$(cat "$WORK/instance.csr")" \
        instance_guid=9a1c2f3e-5b6d-4e7f-8a9b-0c1d \
        app_guid=6f1e0c9a-2b3d-4c5e-8f7a-1b2c3d4e5f60 \
        space_guid=5e0d9b8a-1a2c-4b4d-9e6f-0a1b2c3d4e5f \
        organization_guid=4d9c8a7b-0f1b-4a3c-8d5e-f90a1b2c3d4e \
        container_ip=10.255.4.7)" \
  "$SERVER/v1/instance-certificates" | field certificate_chain > "$WORK/instance.crt"

# 4. Anyone fetches the trust bundle and verifies the chain with openssl.
curl -sS --fail --cacert "$OP/trust-bundle.pem" "$SERVER/v1/trust-bundle" > "$WORK/bundle.pem"
openssl x509 -in "$WORK/instance.crt" -noout -subject -ext subjectAltName
awk 'n>=1{print} /END CERTIFICATE/{n++}' "$WORK/instance.crt" > "$WORK/intermediate.pem"
openssl verify -x509_strict -purpose sslclient -CAfile "$WORK/bundle.pem" \
  -untrusted "$WORK/intermediate.pem" "$WORK/instance.crt"
$LANYARD inspect "$WORK/instance.crt"
echo "walkthrough: ok"
