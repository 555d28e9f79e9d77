//! Crash safety: `lanyard serve` (embedded store) SIGKILLed at random moments while cells
//! issue, an operator revokes and join tokens are created and spent. After every restart:
//! - every certificate a client got a 201 for is in the records, and no serial repeats;
//! - every revocation answered 200 is on its generation's CRL;
//! - every join token whose use was answered 201 is spent, and every token whose creation
//!   was answered 201 and that was not used still works;
//! - the audit chain verifies (`lanyard audit verify`) and holds an entry for every
//!   acknowledged issuance, revocation, token creation and token use.
//!
//! The suite runs 20 cycles; `LANYARD_CRASH_CYCLES=N` runs more (README, Development), and
//! `LANYARD_CRASH_SEED` repeats a run's kill timings (the seed is printed).

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use lanyard::api;
use lanyard::client::{new_key_and_csr, tls_config};
use x509_cert::crl::CertificateList;
use x509_cert::der::Decode;

/// Cells issuing at once.
const CELLS: usize = 3;

/// What clients were told, across every cycle.
#[derive(Default)]
struct Acknowledged {
    /// Serial -> the app GUID it was issued for (the records are looked up by app).
    issued: HashMap<String, String>,
    /// Serial -> authority id, for revocations answered 200.
    revoked: HashMap<String, String>,
    /// Tokens whose join was answered 201.
    spent_tokens: Vec<String>,
    /// Tokens whose creation was answered 201 and that were never presented.
    unused_tokens: Vec<String>,
    /// Every token whose creation was answered 201.
    created_tokens: Vec<String>,
}

/// A small deterministic generator for kill timings (xorshift64*), so a seed repeats a run.
struct Timings(u64);

impl Timings {
    fn next_ms(&mut self, low: u64, high: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        low + self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % (high - low)
    }
}

fn app_guid(cycle: usize, cell: usize) -> String {
    format!("6f1e0c9a-2b3d-4c5e-8f7a-{cycle:06x}{cell:06x}")
}

fn request(csr: String, cycle: usize, cell: usize, n: u32) -> api::InstanceCertificateRequest {
    api::InstanceCertificateRequest {
        csr,
        instance_guid: format!("9a1c2f3e-{cycle:04x}-{cell:04x}-{n:012x}"),
        app_guid: app_guid(cycle, cell),
        space_guid: "5e0d9b8a-1a2c-4b4d-9e6f-0a1b2c3d4e5f".into(),
        organization_guid: "4d9c8a7b-0f1b-4a3c-8d5e-f90a1b2c3d4e".into(),
        container_ip: None,
        internal_routes: None,
        ttl_seconds: None,
    }
}

/// Issues instance certificates as one cell until `stop`, recording every 201.
async fn issue_until(
    cell: CheckedClient,
    cycle: usize,
    index: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Acknowledged>>,
) {
    let mut n = 0u32;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let (_key, csr) = new_key_and_csr().unwrap();
        let answer: Result<api::IssuedCertificate, _> = cell
            .post(
                "/v1/instance-certificates",
                &request(csr, cycle, index, n),
                None,
            )
            .await;
        match answer {
            Ok(c) => {
                let previous = acked
                    .lock()
                    .unwrap()
                    .issued
                    .insert(c.serial.clone(), app_guid(cycle, index));
                assert!(previous.is_none(), "serial {} answered twice", c.serial);
            }
            // The server is gone or going: wait for it to come back.
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Revokes certificates acknowledged earlier until `stop`, recording every 200.
async fn revoke_until(op: CheckedClient, stop: Arc<AtomicBool>, acked: Arc<Mutex<Acknowledged>>) {
    while !stop.load(Ordering::Relaxed) {
        let pick = {
            let a = acked.lock().unwrap();
            a.issued
                .keys()
                .find(|s| !a.revoked.contains_key(*s))
                .cloned()
        };
        let Some(serial) = pick else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let answer: Result<serde_json::Value, _> = op
            .post(
                &format!("/v1/certificates/{serial}/revoke"),
                &api::RevokeRequest {
                    reason: Some("keyCompromise".into()),
                },
                None,
            )
            .await;
        match answer {
            Ok(record) => {
                let authority = record["authority_id"].as_str().unwrap().to_string();
                acked.lock().unwrap().revoked.insert(serial, authority);
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Creates join tokens and spends every other one until `stop`.
async fn join_until(
    op: CheckedClient,
    anonymous: CheckedClient,
    cycle: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Acknowledged>>,
) {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let created: Result<api::JoinTokenResponse, _> = op
            .post(
                "/v1/join-tokens",
                &api::JoinTokenRequest {
                    role: "cell".into(),
                    name: format!("crash-{cycle}-{n}"),
                    ttl_seconds: None,
                },
                None,
            )
            .await;
        let Ok(t) = created else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        acked.lock().unwrap().created_tokens.push(t.token.clone());
        if n % 2 == 0 {
            acked.lock().unwrap().unused_tokens.push(t.token);
            continue;
        }
        let (_key, csr) = new_key_and_csr().unwrap();
        let joined: Result<api::IssuedCertificate, _> = anonymous
            .post("/v1/join", &api::CsrRequest { csr }, Some(&t.token))
            .await;
        // A join that got no answer may or may not have spent the token: claim nothing.
        if joined.is_ok() {
            acked.lock().unwrap().spent_tokens.push(t.token);
        }
    }
}

/// Checks everything acknowledged so far against the restarted server.
/// The audit subject of a join token: the first 8 bytes of its SHA-256, in hex.
fn token_subject(token: &str) -> String {
    let hash = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    format!("join-token/{}", hex::encode(&hash.as_ref()[..8]))
}

/// Every audit entry's (action, subject), read page by page through the API.
async fn audit_entries(op: &CheckedClient) -> HashSet<(String, String)> {
    let mut out = HashSet::new();
    let mut after = 0;
    loop {
        let page: api::AuditResponse = op
            .get(&format!("/v1/audit?after={after}&limit=1000"))
            .await
            .unwrap();
        if page.entries.is_empty() {
            return out;
        }
        after = page.next;
        out.extend(page.entries.into_iter().map(|e| (e.action, e.subject)));
    }
}

async fn check(ca: &TestCa, acked: &Mutex<Acknowledged>) {
    let op = ca.operator();
    let (issued, revoked, spent, unused, created) = {
        let mut a = acked.lock().unwrap();
        let unused = std::mem::take(&mut a.unused_tokens);
        (
            a.issued.clone(),
            a.revoked.clone(),
            a.spent_tokens.clone(),
            unused,
            a.created_tokens.clone(),
        )
    };

    // Every acknowledged certificate is recorded, once.
    let apps: HashSet<&String> = issued.values().collect();
    let mut recorded = HashSet::new();
    for app in apps {
        let list: api::CertificatesResponse = op
            .get(&format!("/v1/certificates?app_guid={app}&limit=1000"))
            .await
            .unwrap();
        assert!(
            list.certificates.len() < 1000,
            "one page holds an app's records"
        );
        for c in list.certificates {
            assert!(
                recorded.insert(c.serial.clone()),
                "serial {} listed twice",
                c.serial
            );
        }
    }
    for serial in issued.keys() {
        assert!(
            recorded.contains(serial),
            "acknowledged certificate {serial} was lost"
        );
    }

    // Every acknowledged revocation is on its generation's CRL.
    let authorities: HashSet<&String> = revoked.values().collect();
    let mut listed = HashSet::new();
    for authority in authorities {
        let (status, _, der, _) =
            raw(ca, None, "GET", &format!("/v1/crl/{authority}"), None, &[]).await;
        assert_eq!(status, 200);
        let crl = CertificateList::from_der(&der).unwrap();
        for r in crl.tbs_cert_list.revoked_certificates.unwrap_or_default() {
            let hex = hex::encode(r.serial_number.as_bytes());
            listed.insert(hex.trim_start_matches('0').to_string());
        }
    }
    for serial in revoked.keys() {
        assert!(
            listed.contains(serial.trim_start_matches('0')),
            "acknowledged revocation of {serial} is not on the CRL"
        );
    }

    // The audit chain verifies and holds every acknowledged change. (Checked before the
    // token checks below, which append entries of their own.)
    let (code, out, err) = ca.cli(&["audit", "verify"]);
    assert_eq!(code, 0, "the audit chain does not verify: {out}{err}");
    let entries = audit_entries(&op).await;
    let has =
        |action: &str, subject: &str| entries.contains(&(action.to_string(), subject.to_string()));
    for serial in issued.keys() {
        assert!(
            has("certificate.issued", &format!("certificate/{serial}")),
            "acknowledged certificate {serial} has no audit entry"
        );
    }
    for serial in revoked.keys() {
        assert!(
            has("certificate.revoked", &format!("certificate/{serial}")),
            "acknowledged revocation of {serial} has no audit entry"
        );
    }
    for token in &created {
        assert!(
            has("join_token.created", &token_subject(token)),
            "an acknowledged join token creation has no audit entry"
        );
    }
    for token in &spent {
        assert!(
            has("join_token.used", &token_subject(token)),
            "an acknowledged join has no audit entry for its token's use"
        );
    }

    // A spent token stays spent; a created one survives.
    let anonymous = ca.anonymous();
    for token in spent.iter().rev().take(3) {
        let (_key, csr) = new_key_and_csr().unwrap();
        let again: Result<api::IssuedCertificate, _> = anonymous
            .post("/v1/join", &api::CsrRequest { csr }, Some(token))
            .await;
        assert!(again.is_err(), "a spent join token was accepted again");
    }
    for token in unused {
        let (_key, csr) = new_key_and_csr().unwrap();
        let joined: Result<api::IssuedCertificate, _> = anonymous
            .post("/v1/join", &api::CsrRequest { csr }, Some(&token))
            .await;
        assert!(
            joined.is_ok(),
            "an acknowledged join token was lost: {joined:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_killed_at_random_moments_loses_no_acknowledged_certificate_revocation_or_token_use(
) {
    let cycles: usize = std::env::var("LANYARD_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("LANYARD_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("crash cycles: {cycles}, LANYARD_CRASH_SEED={seed}");
    let mut timings = Timings(seed);

    let mut ca = TestCa::start();
    let bundle = ca.bundle_pem();
    let mut cells = Vec::new();
    for i in 0..CELLS {
        let c = ca.join_cell(&format!("cell-{i}")).await;
        cells.push(c);
    }
    let acked = Arc::new(Mutex::new(Acknowledged::default()));

    for cycle in 0..cycles {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for (i, cell) in cells.iter().enumerate() {
            let client = CheckedClient::new(
                &ca.url(),
                tls_config(bundle.as_bytes(), Some((&cell.chain_pem, &cell.key_pem))).unwrap(),
            )
            .unwrap();
            tasks.push(tokio::spawn(issue_until(
                client,
                cycle,
                i,
                stop.clone(),
                acked.clone(),
            )));
        }
        tasks.push(tokio::spawn(revoke_until(
            ca.operator(),
            stop.clone(),
            acked.clone(),
        )));
        tasks.push(tokio::spawn(join_until(
            ca.operator(),
            ca.anonymous(),
            cycle,
            stop.clone(),
            acked.clone(),
        )));

        tokio::time::sleep(Duration::from_millis(timings.next_ms(150, 900))).await;
        let mut child = ca.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }

        ca.spawn();
        check(&ca, &acked).await;
    }

    let a = acked.lock().unwrap();
    println!(
        "{cycles} kills: {} certificates, {} revocations and {} joins acknowledged, none lost, each in the audit chain, which verified after every restart",
        a.issued.len(),
        a.revoked.len(),
        a.spent_tokens.len()
    );
    assert!(
        a.issued.len() >= cycles,
        "the load issued too little to prove anything: {}",
        a.issued.len()
    );
}
