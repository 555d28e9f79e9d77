//! Several replicas on one PostgreSQL database: the schedule lease and its takeover.
//!
//! The server comes from `LANYARD_TEST_POSTGRES_URL` (a role that may create databases, no
//! TLS); without it these tests are skipped with a note, except where `CI` is set or
//! `LANYARD_REQUIRE_POSTGRES=1`, where they fail. `scripts/test.sh` starts a throwaway server.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::postgres::{server_url, Database};
use common::*;
use lanyard::api;

/// A replica on `db_url` sharing `kek_from`'s key-encryption key (none: the first replica,
/// which initializes the database).
fn replica(db_url: &str, name: &str, kek_from: Option<&Path>, extra: &[(&str, &str)]) -> TestCa {
    let dir = tempfile::tempdir().unwrap();
    let url_line = format!("url = \"{db_url}\"");
    let name_line = format!("replica_name = \"{name}\"");
    let mut overrides = vec![
        ("storage", "backend = \"postgres\""),
        ("storage", url_line.as_str()),
    ];
    overrides.extend_from_slice(extra);
    let config = write_config(dir.path(), &overrides);
    // A top-level key goes before the first table.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{name_line}\n{text}")).unwrap();
    if let Some(kek) = kek_from {
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        std::fs::copy(kek, dir.path().join("data/kek")).unwrap();
    }
    let log = dir.path().join("serve.log");
    let mut ca = TestCa {
        dir,
        config,
        port: 0,
        child: None,
        log,
    };
    ca.spawn();
    ca
}

async fn lease_seen_by(client: &CheckedClient) -> Option<api::ScheduleLease> {
    let a: api::AuthoritiesResponse = client.get("/v1/authorities").await.unwrap();
    a.schedule_lease
}

#[tokio::test(flavor = "multi_thread")]
async fn one_replica_holds_the_schedule_lease_and_another_takes_over_when_it_dies() {
    let Some(server) = server_url() else {
        return;
    };
    let db = Database::fresh(&server).await;
    let lease = ("rotation", "lease = \"2s\"");
    let mut a = replica(&db.url, "replica-a", None, &[lease]);
    let kek = a.state_dir().join("kek");
    let b = replica(&db.url, "replica-b", Some(&kek), &[lease]);
    // Both replicas answer with the same operator credential (one CA).
    let via_a = a.operator();
    let via_b = CheckedClient::from_credential_dir(&b.url(), &a.operator_dir()).unwrap();

    // `a` started first and took the lease; `b` sees the same holder.
    let seen_a = lease_seen_by(&via_a).await.expect("a holder");
    let seen_b = lease_seen_by(&via_b).await.expect("a holder");
    assert_eq!(seen_a.holder, "replica-a");
    assert_eq!(seen_b.holder, "replica-a");
    // The holder renews it: the expiry moves while it lives.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let later = lease_seen_by(&via_b).await.expect("still held");
        assert_eq!(later.holder, "replica-a");
        if later.expires_at > seen_a.expires_at {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lease was not renewed: {later:?} vs {seen_a:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The holder dies without a word; `b` must take over within two lease periods.
    let killed = Instant::now();
    if let Some(mut child) = a.child.take() {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let taken = loop {
        if let Some(l) = lease_seen_by(&via_b).await {
            if l.holder == "replica-b" {
                break killed.elapsed();
            }
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "replica-b did not take the lease over\n{}",
            b.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("takeover after the holder died: {taken:?} (lease 2s)");
    assert!(taken < Duration::from_secs(4), "took {taken:?}");
    assert!(b
        .log_text()
        .contains("this replica holds the schedule lease"));

    drop(b);
    drop(a);
    db.drop_it().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_the_embedded_store_there_is_no_lease_to_show() {
    let ca = TestCa::start();
    let a: api::AuthoritiesResponse = ca.operator().get("/v1/authorities").await.unwrap();
    assert!(a.schedule_lease.is_none());
    let raw: serde_json::Value = ca.operator().get("/v1/authorities").await.unwrap();
    assert!(raw["schedule_lease"].is_null() && raw.get("schedule_lease").is_some());
}

// ---------------------------------------------------------------------------------------
// Database outages, simulated by a TCP forwarder between lanyard and PostgreSQL.

/// Forwards 127.0.0.1:<port> to the database while up; cut, it closes every forwarded
/// connection and holds new ones open without forwarding a byte (a database that stopped
/// answering, the hardest case: no refusal to react to, only timeouts).
struct Forwarder {
    port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    async fn start(target: std::net::SocketAddr) -> Forwarder {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (up2, conns2) = (up.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let forward = up2.load(Ordering::SeqCst);
                let task = tokio::spawn(async move {
                    if !forward {
                        // Black hole: hold the socket, answer nothing.
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
                conns2.lock().unwrap().push(task.abort_handle());
            }
        });
        Forwarder {
            port,
            up,
            conns,
            accept,
        }
    }

    /// The outage: every connection closed, new ones black-holed.
    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// The database is back (the black-holed connections stay dead, as after a real
    /// outage, until the client gives up on them).
    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.accept.abort();
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

/// The database URL with its host and port replaced by the forwarder's.
fn through(url: &str, port: u16) -> String {
    let start = url
        .find('@')
        .map(|i| i + 1)
        .unwrap_or(url.find("://").unwrap() + 3);
    let end = start + url[start..].find('/').unwrap();
    format!("{}127.0.0.1:{port}{}", &url[..start], &url[end..])
}

fn target_of(url: &str) -> std::net::SocketAddr {
    let start = url
        .find('@')
        .map(|i| i + 1)
        .unwrap_or(url.find("://").unwrap() + 3);
    let end = start + url[start..].find('/').unwrap();
    let hostport = &url[start..end];
    let hostport = hostport.replace("localhost", "127.0.0.1");
    hostport.parse().unwrap()
}

/// Asks `/readyz` until it answers `status` (readiness is cached for a second); the last
/// answer's `Retry-After` and time.
async fn readyz_until(ca: &TestCa, status: u16) -> (Option<String>, Duration) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (got, retry, took) = timed(ca, None, "GET", "/readyz", None).await;
        if got == status {
            return (retry, took);
        }
        assert!(
            Instant::now() < deadline,
            "readyz answered {got}, not {status}\n{}",
            ca.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Status, `Retry-After` and elapsed time of one request.
async fn timed(
    ca: &TestCa,
    identity: Option<(&str, &str)>,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> (u16, Option<String>, Duration) {
    let start = Instant::now();
    let (status, _, _, headers) = raw(ca, identity, method, path, body, &[]).await;
    let retry = headers
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, retry, start.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_outage_answers_503_quickly_keeps_the_bundle_and_recovers() {
    let Some(server) = server_url() else {
        return;
    };
    let db = Database::fresh(&server).await;
    let fwd = Forwarder::start(target_of(&db.url)).await;
    let url_line = format!("url = \"{}\"", through(&db.url, fwd.port));
    let ca = TestCa::start_with(&[
        ("storage", "backend = \"postgres\""),
        ("storage", &url_line),
    ]);
    let cell = ca.join_cell("cell-1").await;
    cell.issue_instance(1).await.unwrap();
    let op_chain = std::fs::read_to_string(ca.operator_dir().join("cert.pem")).unwrap();
    let op_key = std::fs::read_to_string(ca.operator_dir().join("key.pem")).unwrap();
    let op = Some((op_chain.as_str(), op_key.as_str()));
    let cell_id = Some((cell.chain_pem.as_str(), cell.key_pem.as_str()));
    let (status, _, _) = timed(&ca, None, "GET", "/readyz", None).await;
    assert_eq!(status, 200);
    let issue_body = || {
        let (_key, csr) = lanyard::client::new_key_and_csr().unwrap();
        Some(serde_json::to_vec(&instance_request(&csr, 2)).unwrap())
    };

    fwd.cut();
    let mut worst = Duration::ZERO;
    for (who, method, path, body) in [
        (cell_id, "POST", "/v1/instance-certificates", issue_body()),
        (op, "GET", "/v1/authorities", None),
        (op, "GET", "/v1/certificates", None),
        (cell_id, "POST", "/v1/instance-certificates", issue_body()),
    ] {
        let (status, retry, took) = timed(&ca, who, method, path, body).await;
        eprintln!("outage: {method} {path} -> {status} in {took:?}");
        assert_eq!(status, 503, "{method} {path}\n{}", ca.log_text());
        assert!(retry.is_some(), "{method} {path}: 503 without Retry-After");
        assert!(
            took < Duration::from_secs(2),
            "{method} {path} took {took:?}"
        );
        worst = worst.max(took);
    }
    // The bundle is served from memory.
    let (status, _, took) = timed(&ca, None, "GET", "/v1/trust-bundle", None).await;
    assert_eq!(status, 200);
    eprintln!("outage: bundle served in {took:?}");
    // Readiness says so (once its one-second cache has turned over), each answer quickly.
    let (retry, took) = readyz_until(&ca, 503).await;
    assert!(retry.is_some());
    assert!(took < Duration::from_secs(2), "readyz took {took:?}");
    eprintln!("outage: worst time to 503: {worst:?}; readyz 503 in {took:?}");

    fwd.restore();
    let back = Instant::now();
    loop {
        let (status, _, _) = timed(
            &ca,
            cell_id,
            "POST",
            "/v1/instance-certificates",
            issue_body(),
        )
        .await;
        if status == 201 {
            break;
        }
        assert_eq!(status, 503);
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "no recovery within 30s\n{}",
            ca.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("recovered {:?} after the database returned", back.elapsed());
    // Past the readiness cache (a second), readiness follows.
    readyz_until(&ca, 200).await;

    drop(ca);
    drop(fwd);
    db.drop_it().await;
}

// ---------------------------------------------------------------------------------------
// `lanyard store migrate`.

/// Runs `lanyard store migrate --to <url>` with `ca`'s config.
fn migrate(ca: &TestCa, url: &str) -> (i32, String) {
    migrate_with(ca, &["--to", url], None)
}

/// Runs `lanyard store migrate` with `ca`'s config, the target in `args` or in
/// `LANYARD_MIGRATE_TO`.
fn migrate_with(ca: &TestCa, args: &[&str], env_url: Option<&str>) -> (i32, String) {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["store", "migrate"])
        .args(args)
        .arg("--config")
        .arg(&ca.config)
        .env_remove("LANYARD_KEK")
        .env_remove("LANYARD_STORAGE_URL")
        .env_remove("LANYARD_MIGRATE_TO");
    if let Some(url) = env_url {
        cmd.env("LANYARD_MIGRATE_TO", url);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sled_ca_migrates_to_postgres_whole_and_serves_from_it() {
    let Some(server) = server_url() else {
        return;
    };
    let db = Database::fresh(&server).await;
    let mut ca = TestCa::start();
    let cell = ca.join_cell("cell-1").await;
    let mut issued = Vec::new();
    for n in 1..=3 {
        issued.push(cell.issue_instance(n).await.unwrap());
    }
    let (code, _, err) = ca.cli(&["revoke", &issued[0].serial, "--reason", "superseded"]);
    assert_eq!(code, 0, "{err}");
    let _: serde_json::Value = ca
        .operator()
        .post("/v1/authorities/prepare", &serde_json::json!({}), None)
        .await
        .unwrap();
    let token: api::JoinTokenResponse = ca
        .operator()
        .post(
            "/v1/join-tokens",
            &api::JoinTokenRequest {
                role: "cell".into(),
                name: "cell-2".into(),
                ttl_seconds: None,
            },
            None,
        )
        .await
        .unwrap();
    let before: api::AuthoritiesResponse = ca.operator().get("/v1/authorities").await.unwrap();
    let (_, bundle_before) = ca
        .anonymous()
        .trust_bundle(None, 0, false)
        .await
        .unwrap()
        .unwrap();
    let list_before: api::CertificatesResponse = ca
        .operator()
        .get("/v1/certificates?limit=1000")
        .await
        .unwrap();

    // Not while the server holds the store.
    let (code, err) = migrate(&ca, &db.url);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("in use by another lanyard process"), "{err}");

    ca.stop();
    // The URL through the environment, out of the process list.
    let (code, err) = migrate_with(&ca, &[], Some(&db.url));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("migrated 2 generation(s)"), "{err}");

    // The same config, on the database.
    let text = std::fs::read_to_string(&ca.config).unwrap();
    let text = text.replace(
        "backend = \"sled\"",
        &format!("backend = \"postgres\"\nurl = \"{}\"", db.url),
    );
    std::fs::write(&ca.config, text).unwrap();
    std::fs::rename(
        ca.state_dir().join("store"),
        ca.state_dir().join("store.migrated"),
    )
    .unwrap();
    ca.spawn();

    let after: api::AuthoritiesResponse = ca.operator().get("/v1/authorities").await.unwrap();
    let gens = |a: &api::AuthoritiesResponse| {
        a.authorities
            .iter()
            .map(|g| (g.id.clone(), g.state.clone(), g.root_certificate.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(gens(&after), gens(&before));
    assert_eq!(after.trust_bundle_sequence, before.trust_bundle_sequence);
    let (_, bundle_after) = ca
        .anonymous()
        .trust_bundle(None, 0, false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bundle_after, bundle_before);
    let list_after: api::CertificatesResponse = ca
        .operator()
        .get("/v1/certificates?limit=1000")
        .await
        .unwrap();
    let view = |l: &api::CertificatesResponse| {
        let mut v: Vec<_> = l
            .certificates
            .iter()
            .map(|c| (c.serial.clone(), c.revoked_at.clone()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(view(&list_after), view(&list_before));
    let revoked = list_after
        .certificates
        .iter()
        .find(|c| c.serial == issued[0].serial)
        .unwrap();
    assert!(revoked.revoked_at.is_some(), "the revocation came along");
    // The join token works, once.
    let (_key, csr) = lanyard::client::new_key_and_csr().unwrap();
    let joined: Result<api::IssuedCertificate, _> = ca
        .anonymous()
        .post(
            "/v1/join",
            &api::CsrRequest { csr: csr.clone() },
            Some(&token.token),
        )
        .await;
    assert!(joined.is_ok(), "{joined:?}");
    let again: Result<api::IssuedCertificate, _> = ca
        .anonymous()
        .post("/v1/join", &api::CsrRequest { csr }, Some(&token.token))
        .await;
    assert!(again.is_err(), "a join token is spent once");
    // The keys opened under the same KEK: a new certificate issues.
    let cell = Credential::new(&ca, cell.chain_pem.clone(), cell.key_pem.clone());
    let fresh = cell.issue_instance(9).await.unwrap();
    assert!(!fresh.serial.is_empty());
    // The audit chain came along whole and goes on (the start on the database and the new
    // issuance appended to it), and so did the bindings: another cell is refused.
    let (code, out, err) = ca.cli(&["audit", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
    let log: api::AuditResponse = ca.operator().get("/v1/audit?limit=1000").await.unwrap();
    assert!(
        log.entries
            .iter()
            .any(|e| e.action == "certificate.revoked"),
        "the history before the migration is there"
    );
    let other = ca.join_cell("cell-3").await;
    assert!(
        other.issue_instance(2).await.is_err(),
        "bindings were copied"
    );

    ca.stop();
    db.drop_it().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn store_migrate_refuses_a_database_that_is_not_empty() {
    let Some(server) = server_url() else {
        return;
    };
    let db = Database::fresh(&server).await;
    let mut ca = TestCa::start();
    ca.stop();
    // The URL through the environment, out of the process list.
    let (code, err) = migrate_with(&ca, &[], Some(&db.url));
    assert_eq!(code, 0, "{err}");
    let (code, err) = migrate(&ca, &db.url);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not empty"), "{err}");
    db.drop_it().await;
}
