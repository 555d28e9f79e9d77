//! Several `lanyard serve` replicas on one PostgreSQL database: they initialize it once,
//! issue without ever repeating a serial or losing a record, spend a join token once, see each
//! other's rotation steps within a second, and never record a certificate of a generation
//! another replica has already deactivated; a replica SIGKILLed under load, its clients
//! moving to the survivors, loses no certificate a client received and duplicates none; and
//! each replica presents its own server certificate.
//!
//! The server comes from `LANYARD_TEST_POSTGRES_URL` (a role that may create databases, no
//! TLS); without it the test is skipped with a note, except where `CI` is set or
//! `LANYARD_REQUIRE_POSTGRES=1`, where it fails. `scripts/test.sh` starts a throwaway server.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::postgres::{admin, server_url, with_database};
use common::*;
use lanyard::api;
use lanyard::client::{new_key_and_csr, tls_config, ClientError};
use lanyard::timefmt::parse_rfc3339;

/// A fresh database name on the test server.
fn fresh_name() -> String {
    format!(
        "lanyard_replicas_{}",
        hex::encode(lanyard::ids::Serial::random().unwrap().as_bytes())
    )
}

/// A client of `replica` with the operator credential in `operator_dir`.
fn operator_of(replica: &TestCa, operator_dir: &Path) -> CheckedClient {
    CheckedClient::from_credential_dir(&replica.url(), operator_dir).unwrap()
}

/// A client of `replica` trusting `bundle`, presenting `identity` if given.
fn client_of(replica: &TestCa, bundle: &str, identity: Option<(&str, &str)>) -> CheckedClient {
    CheckedClient::new(
        &replica.url(),
        tls_config(bundle.as_bytes(), identity).unwrap(),
    )
    .unwrap()
}

/// A cell credential joined through `replica`; the token is made by `op`.
async fn join_cell(
    op: &CheckedClient,
    replica: &TestCa,
    bundle: &str,
    name: &str,
) -> (String, String) {
    let t: api::JoinTokenResponse = op
        .post(
            "/v1/join-tokens",
            &api::JoinTokenRequest {
                role: "cell".into(),
                name: name.into(),
                ttl_seconds: None,
            },
            None,
        )
        .await
        .unwrap();
    let (key, csr) = new_key_and_csr().unwrap();
    let issued: api::IssuedCertificate = client_of(replica, bundle, None)
        .post("/v1/join", &api::CsrRequest { csr }, Some(&t.token))
        .await
        .unwrap();
    (issued.certificate_chain, key.to_string())
}

/// Asks `cell` for an instance certificate with a fresh key.
async fn issue(cell: &CheckedClient, n: u32) -> Result<api::IssuedCertificate, String> {
    let (_key, csr) = new_key_and_csr().unwrap();
    cell.post::<_, api::IssuedCertificate>(
        "/v1/instance-certificates",
        &instance_request(&csr, n),
        None,
    )
    .await
    .map_err(|e| e.to_string())
}

/// Three replicas starting at once on the (empty) database at `url`, each with `auto_init` and
/// its own state_dir, sharing the KEK file `kek`; `extra` are further config overrides.
fn start_replicas(url: &str, kek: &Path, extra: &[(&str, &str)]) -> Vec<TestCa> {
    let mut overrides = vec![
        ("storage".to_string(), "backend = \"postgres\"".to_string()),
        ("storage".to_string(), format!("url = \"{url}\"")),
        (
            "keys".to_string(),
            format!("kek_file = \"{}\"", kek.display()),
        ),
    ];
    overrides.extend(extra.iter().map(|(s, l)| (s.to_string(), l.to_string())));
    let starts: Vec<_> = (0..3)
        .map(|_| {
            let o = overrides.clone();
            std::thread::spawn(move || {
                let o: Vec<(&str, &str)> =
                    o.iter().map(|(s, l)| (s.as_str(), l.as_str())).collect();
                TestCa::start_with(&o)
            })
        })
        .collect();
    starts.into_iter().map(|t| t.join().unwrap()).collect()
}

/// The one replica that initialized the database (it wrote the operator credential).
fn initializer(replicas: &[TestCa]) -> &TestCa {
    let initialized: Vec<&TestCa> = replicas
        .iter()
        .filter(|r| r.operator_dir().join("cert.pem").exists())
        .collect();
    assert_eq!(
        initialized.len(),
        1,
        "exactly one replica initializes (wrote the operator credential)"
    );
    initialized[0]
}

fn time(s: &str) -> SystemTime {
    parse_rfc3339(s).unwrap_or_else(|| panic!("not an RFC 3339 time: {s}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_on_one_database_keep_rotation_and_issuance_consistent() {
    let Some(server) = server_url() else {
        return;
    };
    let name = fresh_name();
    admin(&server, &format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let url = with_database(&server, &name);
    let shared = tempfile::tempdir().unwrap();
    let kek: PathBuf = shared.path().join("kek");

    // Three replicas starting at once on the empty database: exactly one initializes.
    // notBefore is the signing time, so it can be compared with rotation times.
    let replicas = start_replicas(&url, &kek, &[("issuance", "backdate = \"0s\"")]);
    let op_dir = initializer(&replicas).operator_dir();
    let ops: Vec<CheckedClient> = replicas.iter().map(|r| operator_of(r, &op_dir)).collect();
    let authorities: api::AuthoritiesResponse = ops[2].get("/v1/authorities").await.unwrap();
    assert_eq!(
        authorities.authorities.len(),
        1,
        "one generation 1, not one per replica"
    );
    let bundle = std::fs::read_to_string(op_dir.join("trust-bundle.pem")).unwrap();

    // (a) Several cells issuing concurrently on all three replicas: every certificate a client
    // received is recorded, and no serial appears twice.
    const CELLS_PER_REPLICA: usize = 2;
    const EACH: u32 = 8;
    let mut cells = Vec::new();
    for (i, r) in replicas.iter().enumerate() {
        for c in 0..CELLS_PER_REPLICA {
            let (chain, key) = join_cell(&ops[i], r, &bundle, &format!("cell-{i}-{c}")).await;
            cells.push(client_of(r, &bundle, Some((&chain, &key))));
        }
    }
    let started = Instant::now();
    let tasks: Vec<_> = cells
        .iter()
        .enumerate()
        .map(|(k, cell)| {
            let cell = cell.clone();
            tokio::spawn(async move {
                let mut serials = Vec::new();
                for n in 0..EACH {
                    serials.push(issue(&cell, k as u32 * 100 + n).await.unwrap().serial);
                }
                serials
            })
        })
        .collect();
    let mut received = Vec::new();
    for t in tasks {
        received.extend(t.await.unwrap());
    }
    println!(
        "issued {} certificates from {} cells on 3 replicas in {:?}",
        received.len(),
        cells.len(),
        started.elapsed()
    );
    let list: api::CertificatesResponse = ops[1].get("/v1/certificates?limit=1000").await.unwrap();
    let mut seen = HashSet::new();
    for c in &list.certificates {
        assert!(seen.insert(c.serial.clone()), "serial {} twice", c.serial);
    }
    for s in &received {
        assert!(seen.contains(s), "{s} was issued but is not recorded");
    }

    // (b) One join token raced on two replicas is accepted exactly once.
    let t: api::JoinTokenResponse = ops[0]
        .post(
            "/v1/join-tokens",
            &api::JoinTokenRequest {
                role: "cell".into(),
                name: "raced".into(),
                ttl_seconds: None,
            },
            None,
        )
        .await
        .unwrap();
    let race: Vec<_> = [1, 2]
        .iter()
        .map(|&i| {
            let c = client_of(&replicas[i], &bundle, None);
            let token = t.token.clone();
            tokio::spawn(async move {
                let (_key, csr) = new_key_and_csr().unwrap();
                c.post::<_, api::IssuedCertificate>(
                    "/v1/join",
                    &api::CsrRequest { csr },
                    Some(&token),
                )
                .await
                .is_ok()
            })
        })
        .collect();
    let mut accepted = 0;
    for r in race {
        accepted += usize::from(r.await.unwrap());
    }
    assert_eq!(accepted, 1, "a raced join token is accepted exactly once");

    // (c) A prepare on A reaches long polls held on B and on C within a second.
    let (seq, _) = client_of(&replicas[1], &bundle, None)
        .trust_bundle(None, 0, false)
        .await
        .unwrap()
        .unwrap();
    let polls: Vec<_> = [1, 2]
        .iter()
        .map(|&i| {
            let c = client_of(&replicas[i], &bundle, None);
            tokio::spawn(async move {
                let answer = c.trust_bundle(Some(seq), 30, false).await;
                (Instant::now(), answer)
            })
        })
        .collect();
    // Let both polls park on their servers.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let prepared_at = Instant::now();
    let _: api::AuthorityView = ops[0]
        .post("/v1/authorities/prepare", &serde_json::json!({}), None)
        .await
        .unwrap();
    let deadline = prepared_at + Duration::from_secs(3);
    for (i, p) in polls.into_iter().enumerate() {
        let (at, answer) = tokio::time::timeout_at(deadline.into(), p)
            .await
            .unwrap_or_else(|_| panic!("the long poll on replica {} did not wake", i + 1))
            .unwrap();
        let (new_seq, pem) = answer.unwrap().expect("a new bundle, not 304");
        assert!(new_seq > seq);
        assert_eq!(pem::parse_many(&pem).unwrap().len(), 2, "both roots");
        println!(
            "prepare on replica 0 reached the long poll on replica {} after {:?}",
            i + 1,
            at.saturating_duration_since(prepared_at)
        );
    }
    // The same step on another replica, which has seen it, is the normal conflict.
    let again = ops[2]
        .post::<_, api::AuthorityView>("/v1/authorities/prepare", &serde_json::json!({}), None)
        .await;
    assert!(again.is_err(), "a second prepare is refused: {again:?}");

    // (d) Activate and retire --force on A while B issues in a loop: no recorded certificate
    // was signed by a generation after it stopped being active.
    let (_, both_roots) = client_of(&replicas[1], &bundle, None)
        .trust_bundle(None, 0, false)
        .await
        .unwrap()
        .unwrap();
    let (chain, key) = join_cell(&ops[1], &replicas[1], &both_roots, "cell-loop").await;
    let looping = client_of(&replicas[1], &both_roots, Some((&chain, &key)));
    let stop = Arc::new(AtomicBool::new(false));
    let issuer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed, mut n) = (0u32, 0u32, 0u32);
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                match issue(&looping, 10_000 + n).await {
                    Ok(_) => ok += 1,
                    // After the retirement the cell's own generation-1 credential is refused.
                    Err(_) => failed += 1,
                }
            }
            (ok, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    let _: api::AuthorityView = ops[0]
        .post(
            "/v1/authorities/2/activate",
            &api::ForceRequest { force: true },
            None,
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _: api::AuthorityView = ops[0]
        .post(
            "/v1/authorities/1/retire",
            &api::ForceRequest { force: true },
            None,
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = issuer.await.unwrap();
    println!(
        "issuing on replica 1 during the rotation on replica 0: {ok} issued, {failed} refused"
    );
    assert!(ok > 0, "the loop issued before the rotation");

    // Every record, read from the database itself: the operator credential was signed by the
    // retired generation, so the API no longer accepts it.
    let (db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    let mut gens: HashMap<i64, (String, Option<SystemTime>, Option<SystemTime>)> = HashMap::new();
    for row in db
        .query(
            "SELECT id, state, record->>'retiring_at', record->>'retired_at' FROM authorities",
            &[],
        )
        .await
        .unwrap()
    {
        let retiring: Option<String> = row.get(2);
        let retired: Option<String> = row.get(3);
        gens.insert(
            row.get(0),
            (
                row.get(1),
                retiring.as_deref().map(time),
                retired.as_deref().map(time),
            ),
        );
    }
    assert_eq!(gens[&1].0, "retired");
    let rows = db
        .query("SELECT authority_id, not_before FROM certificates", &[])
        .await
        .unwrap();
    let mut after_deactivation = Duration::ZERO;
    for row in &rows {
        let id: i64 = row.get(0);
        let not_before: SystemTime = row.get(1);
        let (_, retiring, retired) = &gens[&id];
        if let Some(retired) = retired {
            assert!(
                not_before <= *retired,
                "a certificate of generation {id} has notBefore {not_before:?}, after the \
                 generation retired at {retired:?}"
            );
        }
        if let Some(d) = retiring.and_then(|r| not_before.duration_since(r).ok()) {
            after_deactivation = after_deactivation.max(d);
        }
    }
    println!(
        "{} records checked; the latest notBefore past its generation's deactivation: \
         {after_deactivation:?}",
        rows.len()
    );
    drop(db);
    let _ = driver.await;

    drop(replicas);
    let _ = admin(
        &server,
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    )
    .await;
}

/// One issuance by a cell that goes round `replicas` (one client per replica URL, all with
/// the cell's credential): each request starts at the replica after the previous one's, and
/// moves on to the next on a connection error or a 503, with the same CSR (a retry only makes
/// another certificate for the same key). `Err` after two rounds without an answer.
async fn issue_round(
    replicas: &[CheckedClient],
    next: &mut usize,
    retries: &mut u32,
    n: u32,
) -> Result<api::IssuedCertificate, String> {
    let (_key, csr) = new_key_and_csr().unwrap();
    let request = instance_request(&csr, n);
    let mut errors = Vec::new();
    for _ in 0..2 * replicas.len() {
        let at = *next % replicas.len();
        *next = at + 1;
        match replicas[at]
            .post::<_, api::IssuedCertificate>("/v1/instance-certificates", &request, None)
            .await
        {
            Ok(issued) => return Ok(issued),
            Err(e @ ClientError::Transport { .. }) => errors.push(e.to_string()),
            Err(ClientError::Api(p)) if p.status == 503 => errors.push(p.detail),
            Err(e) => return Err(format!("replica {at}: {e}")),
        }
        *retries += 1;
    }
    Err(format!("no replica answered: {errors:?}"))
}

/// Waits until `received` holds at least `n` certificates, up to `within`.
async fn wait_for_received(
    received: &std::sync::Mutex<Vec<(bool, api::IssuedCertificate)>>,
    n: usize,
    within: Duration,
    what: &str,
) {
    let deadline = Instant::now() + within;
    loop {
        let got = received.lock().unwrap().len();
        if got >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {got} of {n} certificates received within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_sigkilled_mid_load_loses_and_duplicates_nothing() {
    let Some(server) = server_url() else {
        return;
    };
    let name = fresh_name();
    admin(&server, &format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let url = with_database(&server, &name);
    let shared = tempfile::tempdir().unwrap();
    let mut replicas = start_replicas(&url, &shared.path().join("kek"), &[]);
    let op_dir = initializer(&replicas).operator_dir();
    let bundle = std::fs::read_to_string(op_dir.join("trust-bundle.pem")).unwrap();

    // Two cells joined through each replica; each cell has a client for every replica.
    const CELLS_PER_REPLICA: usize = 2;
    const BEFORE: usize = 30;
    const AFTER: usize = 40;
    const EACH_AT_MOST: u32 = 200;
    let mut cells = Vec::new();
    for (i, r) in replicas.iter().enumerate() {
        let op = operator_of(r, &op_dir);
        for c in 0..CELLS_PER_REPLICA {
            let (chain, key) = join_cell(&op, r, &bundle, &format!("cell-{i}-{c}")).await;
            let clients: Vec<CheckedClient> = replicas
                .iter()
                .map(|each| client_of(each, &bundle, Some((&chain, &key))))
                .collect();
            cells.push((i, clients));
        }
    }

    // Every certificate a client received, marked with whether the kill had happened when it
    // arrived; the retries before and after the kill.
    let received = Arc::new(std::sync::Mutex::new(Vec::new()));
    let killed = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = cells
        .into_iter()
        .enumerate()
        .map(|(k, (first, clients))| {
            let (received, killed, stop) = (received.clone(), killed.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut next, mut retries) = (first, [0u32; 2]);
                for n in 0..EACH_AT_MOST {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let mut r = 0;
                    let issued = issue_round(&clients, &mut next, &mut r, k as u32 * 1000 + n)
                        .await
                        .unwrap_or_else(|e| panic!("cell {k}: {e}"));
                    let after = killed.load(Ordering::SeqCst);
                    retries[usize::from(after)] += r;
                    received.lock().unwrap().push((after, issued));
                }
                retries
            })
        })
        .collect();

    // Mid-load, SIGKILL the replica that did not initialize and is not the first.
    wait_for_received(
        &received,
        BEFORE,
        Duration::from_secs(120),
        "before the kill",
    )
    .await;
    let victim = (1..3)
        .find(|&i| !replicas[i].operator_dir().join("cert.pem").exists())
        .unwrap();
    let mut child = replicas[victim].child.take().unwrap();
    child.kill().unwrap();
    let status = child.wait().unwrap();
    killed.store(true, Ordering::SeqCst);
    let at_kill = received.lock().unwrap().len();
    println!("replica {victim} killed ({status}) after {at_kill} certificates were received");

    // The survivors carry on for a bounded number of certificates.
    wait_for_received(
        &received,
        at_kill + AFTER,
        Duration::from_secs(120),
        "after the kill",
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let mut retries = [0u32; 2];
    for t in tasks {
        let r = t.await.unwrap();
        retries[0] += r[0];
        retries[1] += r[1];
    }
    let received = std::mem::take(&mut *received.lock().unwrap());
    let after = received.iter().filter(|(a, _)| *a).count();
    println!(
        "received {} certificates before the kill and {after} after; retries on another \
         replica: {} before the kill, {} after",
        received.len() - after,
        retries[0],
        retries[1]
    );
    assert!(
        retries[1] > 0,
        "after the kill some request went to the killed replica and was retried elsewhere"
    );

    // No serial was received twice, and each one received is recorded, with its generation.
    let mut seen = HashSet::new();
    for (_, c) in &received {
        assert!(
            seen.insert(c.serial.clone()),
            "serial {} received twice",
            c.serial
        );
    }
    let (db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    let recorded: HashMap<String, i64> = db
        .query("SELECT serial, authority_id FROM certificates", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (hex::encode(row.get::<_, Vec<u8>>(0)), row.get(1)))
        .collect();
    for (_, c) in &received {
        let authority = recorded
            .get(&c.serial)
            .unwrap_or_else(|| panic!("{} was received but is not recorded", c.serial));
        assert_eq!(
            authority.to_string(),
            c.authority_id,
            "the record of {} names another generation",
            c.serial
        );
    }
    println!(
        "{} records in the database, every one of the {} received among them",
        recorded.len(),
        received.len()
    );
    drop(db);
    let _ = driver.await;

    drop(replicas);
    let _ = admin(
        &server,
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    )
    .await;
}

/// The leaf `replica` presents to a new connection (verified against `bundle` for
/// `localhost` by the handshake), and its SubjectPublicKeyInfo.
async fn presented_certificate(
    replica: &TestCa,
    bundle: &str,
) -> (lanyard::x509::inspect::CertInfo, Vec<u8>) {
    use der::{Decode, Encode};
    let tls = tls_config(bundle.as_bytes(), None).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", replica.port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let s = connector.connect(name, tcp).await.unwrap();
    let der = s.get_ref().1.peer_certificates().unwrap()[0].clone();
    let spki = x509_cert::Certificate::from_der(&der)
        .unwrap()
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .unwrap();
    (
        lanyard::x509::inspect::CertInfo::from_der(&der).unwrap(),
        spki,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn each_replica_presents_its_own_server_certificate_and_keeps_it_across_a_restart() {
    let Some(server) = server_url() else {
        return;
    };
    let name = fresh_name();
    admin(&server, &format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let url = with_database(&server, &name);
    let shared = tempfile::tempdir().unwrap();
    let kek = shared.path().join("kek");
    let url_line = format!("url = \"{url}\"");
    let kek_line = format!("kek_file = \"{}\"", kek.display());
    let overrides = [
        ("storage", "backend = \"postgres\""),
        ("storage", url_line.as_str()),
        ("keys", kek_line.as_str()),
    ];
    // One after the other: the first initializes the database, the second opens it. Each
    // is named by its own port (the default `<hostname>:<port>`), which a restart keeps.
    let mut replicas = vec![
        TestCa::start_with(&overrides),
        TestCa::start_with(&overrides),
    ];
    let bundle = replicas[0].bundle_pem();

    let (a, a_key) = presented_certificate(&replicas[0], &bundle).await;
    let (b, b_key) = presented_certificate(&replicas[1], &bundle).await;
    assert_ne!(a.serial, b.serial, "each replica has its own certificate");
    assert_ne!(a_key, b_key, "and its own key");
    // The names clients check are the same on both.
    assert_eq!(a.dns_names, b.dns_names);
    assert_eq!(a.ip_addresses, b.ip_addresses);
    assert!(a.dns_names.contains(&"localhost".to_string()));
    assert!(a.ip_addresses.contains(&"127.0.0.1".parse().unwrap()));
    // A client trusting the bundle talks to both.
    for r in &replicas {
        client_of(r, &bundle, None)
            .trust_bundle(None, 0, false)
            .await
            .unwrap()
            .expect("the bundle");
    }

    // A restarted replica presents its own earlier certificate (a day's life is far from
    // due), not the other replica's and not a new one; the other keeps its own.
    replicas[1].restart();
    let (b2, b2_key) = presented_certificate(&replicas[1], &bundle).await;
    assert_eq!(b2.serial, b.serial, "{}", replicas[1].log_text());
    assert_eq!(b2_key, b_key);
    let (a2, _) = presented_certificate(&replicas[0], &bundle).await;
    assert_eq!(a2.serial, a.serial);
    client_of(&replicas[1], &bundle, None)
        .trust_bundle(None, 0, false)
        .await
        .unwrap()
        .expect("the bundle");

    drop(replicas);
    let _ = admin(
        &server,
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    )
    .await;
}
