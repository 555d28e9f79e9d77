//! The authorization matrix: every endpoint of the served OpenAPI document (which a unit test
//! holds to the router's routes list) × every kind of caller, each cell asserted exactly:
//! allowed (any answer but 401/403), 401, or 403. A route without a row fails the test.

mod common;

use std::collections::BTreeSet;

use common::*;
use lanyard::api;
use lanyard::client::new_key_and_csr;

/// Every route with the role it requires (as its `x-lanyard-role` says).
const ROWS: &[(&str, &str, &str)] = &[
    ("get", "/healthz", "public"),
    ("get", "/readyz", "public"),
    ("get", "/metrics", "public"),
    ("get", "/v1/openapi.json", "public"),
    ("get", "/v1/trust-bundle", "public"),
    ("get", "/v1/crl/{authority_id}", "public"),
    ("post", "/v1/instance-certificates", "cell"),
    ("post", "/v1/instance-certificates/batch", "cell"),
    ("post", "/v1/cell-credentials", "cell"),
    ("post", "/v1/component-certificates", "operator"),
    ("post", "/v1/join-tokens", "operator"),
    ("post", "/v1/operator-credentials", "operator"),
    ("get", "/v1/authorities", "operator"),
    ("post", "/v1/authorities/prepare", "operator"),
    ("post", "/v1/authorities/{id}/activate", "operator"),
    ("post", "/v1/authorities/{id}/retire", "operator"),
    ("get", "/v1/certificates", "operator"),
    ("post", "/v1/certificates/{serial}/revoke", "operator"),
    ("post", "/v1/join", "join-token"),
    (
        "delete",
        "/v1/instances/{instance_guid}",
        "cell-or-operator",
    ),
    ("post", "/v1/instances/{instance_guid}/release", "operator"),
    ("get", "/v1/audit", "operator"),
    ("get", "/v1/activity", "operator"),
    ("post", "/v1/component-credentials", "component"),
];

/// The kinds of caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    NoCertificate,
    Cell,
    AnotherCell,
    Operator,
    Component,
    Instance,
    RevokedCell,
    ExpiredCell,
    ForeignCa,
    UsedJoinToken,
    ExpiredJoinToken,
}

const CALLERS: [Caller; 11] = [
    Caller::NoCertificate,
    Caller::Cell,
    Caller::AnotherCell,
    Caller::Operator,
    Caller::Component,
    Caller::Instance,
    Caller::RevokedCell,
    Caller::ExpiredCell,
    Caller::ForeignCa,
    Caller::UsedJoinToken,
    Caller::ExpiredJoinToken,
];

/// What a caller gets from an endpoint requiring `role`: `None` when allowed, else the status.
fn expected(role: &str, caller: Caller) -> Option<u16> {
    use Caller::*;
    // Whose certificate is not a verified credential of this CA: 401 wherever a role is
    // needed. (An instance certificate is verified, as a workload with no API role: 403.)
    let unauthenticated = matches!(
        caller,
        NoCertificate | RevokedCell | ExpiredCell | ForeignCa | UsedJoinToken | ExpiredJoinToken
    );
    match role {
        "public" => None,
        // Nobody in the matrix holds a valid token.
        "join-token" => Some(401),
        _ if unauthenticated => Some(401),
        "cell" if matches!(caller, Cell | AnotherCell) => None,
        "operator" if caller == Operator => None,
        // A cell that does not own the instance is let in by its role and then refused by
        // the binding (409), not by authorization.
        "cell-or-operator" if matches!(caller, Cell | AnotherCell | Operator) => None,
        "component" if caller == Component => None,
        _ => Some(403),
    }
}

/// A credential's chain and key.
type Identity = (String, String);

fn operator_identity(ca: &TestCa) -> Identity {
    let op = ca.operator_dir();
    (
        std::fs::read_to_string(op.join("cert.pem")).unwrap(),
        std::fs::read_to_string(op.join("key.pem")).unwrap(),
    )
}

async fn join_token(ca: &TestCa, name: &str, ttl: Option<u64>) -> String {
    let mut body = serde_json::json!({"role": "cell", "name": name});
    if let Some(t) = ttl {
        body["ttl_seconds"] = t.into();
    }
    let t: api::JoinTokenResponse = ca
        .operator()
        .post("/v1/join-tokens", &body, None)
        .await
        .unwrap();
    t.token
}

/// Starts the CA of the matrix, and a cell credential of it that has expired: the CA first
/// runs with the shortest leaf lifetime (cell credentials take `issuance.default_ttl`), a cell
/// joins, and the CA restarts on the same state with the dev lifetimes (its own server
/// certificate is renewed by then, as a few seconds of a short life are past two thirds).
async fn ca_with_an_expired_cell() -> (TestCa, Identity) {
    const SHORT: &str = "default_ttl = \"5s\"";
    let mut ca = TestCa::start_with(&[
        ("issuance", "min_ttl = \"1s\""),
        ("issuance", SHORT),
        ("rotation", "check_interval = \"1s\""),
    ]);
    let cell = ca.join_cell("cell-expired").await;
    let not_after = lanyard::x509::inspect::CertInfo::from_der(
        pem::parse_many(&cell.chain_pem).unwrap()[0].contents(),
    )
    .unwrap()
    .not_after;
    ca.stop();
    let text = std::fs::read_to_string(&ca.config).unwrap();
    std::fs::write(&ca.config, text.replace(SHORT, "default_ttl = \"24h\"")).unwrap();
    ca.spawn();
    // Until the credential has surely expired (a wait, not an assertion).
    while std::time::SystemTime::now() <= not_after + std::time::Duration::from_secs(1) {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    (ca, (cell.chain_pem, cell.key_pem))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_endpoint_allows_exactly_the_callers_its_role_admits() {
    let (ca, expired) = ca_with_an_expired_cell().await;
    let foreign = TestCa::start();

    // The table covers exactly the served document's operations, with the same roles.
    let doc: serde_json::Value = reqwest::Client::builder()
        .use_preconfigured_tls(
            lanyard::client::tls_config(ca.bundle_pem().as_bytes(), None).unwrap(),
        )
        .build()
        .unwrap()
        .get(format!("{}/v1/openapi.json", ca.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut served = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let role = op["x-lanyard-role"].as_str().unwrap_or("?").to_string();
            served.insert((method.clone(), path.clone(), role));
        }
    }
    let table: BTreeSet<(String, String, String)> = ROWS
        .iter()
        .map(|(m, p, r)| (m.to_string(), p.to_string(), r.to_string()))
        .collect();
    assert_eq!(
        served, table,
        "the matrix needs exactly one row per served operation, with its role"
    );

    // The callers.
    let cell = ca.join_cell("cell-1").await;
    let other = ca.join_cell("cell-2").await;
    let revoked = ca.join_cell("cell-3").await;
    let revoked_serial = lanyard::x509::inspect::CertInfo::from_der(
        pem::parse_many(&revoked.chain_pem).unwrap()[0].contents(),
    )
    .unwrap()
    .serial;
    let _: api::CertificateView = ca
        .operator()
        .post(
            &format!("/v1/certificates/{revoked_serial}/revoke"),
            &serde_json::json!({}),
            None,
        )
        .await
        .unwrap();
    let (component_key, csr) = new_key_and_csr().unwrap();
    let component: api::IssuedCertificate = ca
        .operator()
        .post(
            "/v1/component-certificates",
            &serde_json::json!({"csr": csr, "name": "gorouter"}),
            None,
        )
        .await
        .unwrap();
    let (instance_key, csr) = new_key_and_csr().unwrap();
    let instance: api::IssuedCertificate = cell
        .client
        .post(
            "/v1/instance-certificates",
            &instance_request(&csr, 1),
            None,
        )
        .await
        .unwrap();
    let foreign_cell = foreign.join_cell("cell-1").await;
    let used = join_token(&ca, "cell-9", None).await;
    let (_k, csr) = new_key_and_csr().unwrap();
    let _: api::IssuedCertificate = ca
        .anonymous()
        .post("/v1/join", &api::CsrRequest { csr }, Some(&used))
        .await
        .unwrap();
    let expiring = join_token(&ca, "cell-8", Some(1)).await;
    // A one-second token: wait until it has surely expired (a wait, not an assertion).
    let expires = std::time::Instant::now() + std::time::Duration::from_millis(2500);
    while std::time::Instant::now() < expires {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let op = operator_identity(&ca);
    let identity = |c: Caller| -> Option<Identity> {
        match c {
            Caller::Cell => Some((cell.chain_pem.clone(), cell.key_pem.clone())),
            Caller::AnotherCell => Some((other.chain_pem.clone(), other.key_pem.clone())),
            Caller::Operator => Some(op.clone()),
            Caller::Component => Some((
                component.certificate_chain.clone(),
                component_key.to_string(),
            )),
            Caller::Instance => {
                Some((instance.certificate_chain.clone(), instance_key.to_string()))
            }
            Caller::RevokedCell => Some((revoked.chain_pem.clone(), revoked.key_pem.clone())),
            Caller::ExpiredCell => Some(expired.clone()),
            Caller::ForeignCa => {
                Some((foreign_cell.chain_pem.clone(), foreign_cell.key_pem.clone()))
            }
            _ => None,
        }
    };

    let mut failures = Vec::new();
    let mut cells = 0;
    for (method, path, role) in ROWS {
        let concrete = path
            .replace("{authority_id}", "1")
            .replace("{id}", "1")
            .replace("{instance_guid}", "5f0e6a1c-3b2d-4c8e-9a7f-1d2e3f4a5b6c")
            .replace("{serial}", "0123456789abcdef0123456789abcdef");
        for caller in CALLERS {
            let id = identity(caller);
            let auth = match caller {
                Caller::UsedJoinToken => Some(format!("Bearer {used}")),
                Caller::ExpiredJoinToken => Some(format!("Bearer {expiring}")),
                _ => None,
            };
            let headers: Vec<(&str, &str)> = auth
                .as_deref()
                .map(|a| vec![("authorization", a)])
                .unwrap_or_default();
            let body = (*method != "get").then(|| b"{}".to_vec());
            let (status, _, answer, _) = raw(
                &ca,
                id.as_ref().map(|(c, k)| (c.as_str(), k.as_str())),
                &method.to_uppercase(),
                &concrete,
                body,
                &headers,
            )
            .await;
            cells += 1;
            let got = matches!(status, 401 | 403).then_some(status);
            if got != expected(role, caller) {
                failures.push(format!(
                    "{method} {path} as {caller:?}: got {status}, expected {:?}: {}",
                    expected(role, caller),
                    String::from_utf8_lossy(&answer)
                ));
            }
        }
    }
    eprintln!(
        "authorization matrix: {} endpoints x {} callers = {cells} cells",
        ROWS.len(),
        CALLERS.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
