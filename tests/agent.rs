//! Black-box tests of the cell agent: the real CA and the real agent as processes.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::agent::TestAgent;
use common::*;
use der::{Decode, Encode};

const APP: &str = "6f1e0c9a-2b3d-4c5e-8f7a-1b2c3d4e5f60";

/// A CA whose limits allow the short lifetimes these tests use (renewals are what they
/// watch, and a renewal comes at half of a certificate's life).
fn short_lived_ca() -> TestCa {
    TestCa::start_with(&[("issuance", "min_ttl = \"1s\"")])
}

/// Whether the key in `key_pem` belongs to the leaf of `chain_pem`.
fn pair_matches(chain_pem: &str, key_pem: &str) -> bool {
    let Ok(blocks) = pem::parse_many(chain_pem) else {
        return false;
    };
    let Some(leaf) = blocks.first() else {
        return false;
    };
    let Ok(cert) = x509_cert::Certificate::from_der(leaf.contents()) else {
        return false;
    };
    let Ok(kp) = rcgen::KeyPair::from_pem(key_pem) else {
        return false;
    };
    cert.tbs_certificate
        .subject_public_key_info
        .to_der()
        .unwrap()
        == kp.public_key_der()
}

fn leaf_serial(chain_pem: &str) -> String {
    let blocks = pem::parse_many(chain_pem).unwrap();
    lanyard::x509::inspect::CertInfo::from_der(blocks[0].contents())
        .unwrap()
        .serial
}

fn openssl_verifies(dir: &std::path::Path) -> bool {
    let chain = std::fs::read_to_string(dir.join("instance.crt")).unwrap();
    let bundle = std::fs::read_to_string(dir.join("trust-bundle.crt")).unwrap();
    openssl_verify(&bundle, &chain, "sslclient").0
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_put_answers_once_its_files_are_on_disk_and_they_verify() {
    use std::os::unix::fs::PermissionsExt;
    let ca = TestCa::start();
    let agent = TestAgent::start(&ca, "cell-1", "1h");
    let guid = "9a1c2f3e-5b6d-4e7f-8a9b-0c1d";
    let (s, body) = agent.put(guid, APP).await;
    assert_eq!(s, 200, "{body}");
    let dir = agent.instance_dir(guid);
    let dir = dir.canonicalize().unwrap();
    assert_eq!(body["instance_guid"], guid);
    assert!(body["not_after"].is_string());
    assert_eq!(
        body["paths"]["certificate"],
        dir.join("instance.crt").display().to_string()
    );
    assert_eq!(
        body["paths"]["private_key"],
        dir.join("instance.key").display().to_string()
    );
    assert_eq!(
        body["paths"]["trust_bundle"],
        dir.join("trust-bundle.crt").display().to_string()
    );
    assert_eq!(
        body["environment"]["CF_INSTANCE_CERT"],
        body["paths"]["certificate"]
    );
    assert_eq!(
        body["environment"]["CF_INSTANCE_KEY"],
        body["paths"]["private_key"]
    );
    // CF_SYSTEM_CERT_PATH holds the roots and nothing else (tooling imports every file in it).
    let system = dir.join("system-certs");
    assert_eq!(
        body["environment"]["CF_SYSTEM_CERT_PATH"],
        system.display().to_string()
    );
    let names: Vec<String> = std::fs::read_dir(&system)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["trust-bundle.crt".to_string()]);
    assert_eq!(
        std::fs::read_to_string(system.join("trust-bundle.crt")).unwrap(),
        std::fs::read_to_string(dir.join("trust-bundle.crt")).unwrap()
    );
    let chain = std::fs::read_to_string(dir.join("instance.crt")).unwrap();
    let key = std::fs::read_to_string(dir.join("instance.key")).unwrap();
    assert!(key.contains("BEGIN PRIVATE KEY"), "PKCS#8 PEM");
    assert!(pair_matches(&chain, &key));
    let mode = std::fs::metadata(dir.join("instance.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert!(openssl_verifies(&dir));
    assert!(std::fs::symlink_metadata(dir.join("..data"))
        .unwrap()
        .file_type()
        .is_symlink());
    let info =
        lanyard::x509::inspect::CertInfo::from_der(pem::parse_many(&chain).unwrap()[0].contents())
            .unwrap();
    assert_eq!(info.common_name.as_deref(), Some(guid));
    assert_eq!(info.ou_value("app"), Some(APP));

    // The same PUT again is idempotent: no new certificate.
    let (s, _) = agent.put(guid, APP).await;
    assert_eq!(s, 200);
    assert_eq!(
        std::fs::read_to_string(dir.join("instance.crt")).unwrap(),
        chain
    );

    // DELETE removes the directory; a second DELETE is a 404 problem.
    let r = agent
        .http
        .delete(agent.url(&format!("/v1/instances/{guid}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert!(!dir.exists());
    let r = agent
        .http
        .delete(agent.url(&format!("/v1/instances/{guid}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let list = agent.instances().await;
    assert_eq!(list["instances"].as_array().unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_to_the_local_api_gets_problem_json() {
    let ca = TestCa::start();
    let agent = TestAgent::start(&ca, "cell-1", "1h");
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("NOT-A-GUID", serde_json::json!({"app_guid": APP, "space_guid": "a1", "organization_guid": "b2"}).to_string(), 422, "instance_guid"),
        ("abc1", serde_json::json!({"app_guid": "Bad", "space_guid": "a1", "organization_guid": "b2"}).to_string(), 422, "app_guid"),
        ("abc1", serde_json::json!({"app_guid": APP, "space_guid": "a1", "organization_guid": "b2", "container_ip": "nope"}).to_string(), 422, "container_ip"),
        ("abc1", serde_json::json!({"app_guid": APP, "space_guid": "a1"}).to_string(), 400, "organization_guid"),
        ("abc1", serde_json::json!({"app_guid": APP, "space_guid": "a1", "organization_guid": "b2", "x": 1}).to_string(), 400, "x"),
        ("abc1", "{oops".to_string(), 400, "JSON"),
    ];
    for (guid, body, status, hint) in cases {
        let r = agent
            .http
            .put(agent.url(&format!("/v1/instances/{guid}")))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status);
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let p: serde_json::Value = r.json().await.unwrap();
        assert!(p["detail"].as_str().unwrap().contains(hint), "{p}");
    }
    let r = agent
        .http
        .get(agent.url("/v1/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reader_never_sees_a_key_and_certificate_from_different_renewals() {
    let ca = short_lived_ca();
    // Two-second certificates: a renewal about every second. (X.509 times have whole-second
    // resolution, so a one-second certificate can be expired by the time openssl reads it.)
    let agent = TestAgent::start(&ca, "cell-1", "2s");
    let guid = "a1b2c3d4-0001";
    let (s, body) = agent.put(guid, APP).await;
    assert_eq!(s, 200, "{body}");
    let dir = agent.instance_dir(guid);
    let stop = Arc::new(AtomicBool::new(false));
    let checks = Arc::new(AtomicUsize::new(0));
    let mismatches = Arc::new(AtomicUsize::new(0));
    let serials = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let reader = {
        let (stop, checks, mismatches, serials, dir) = (
            stop.clone(),
            checks.clone(),
            mismatches.clone(),
            serials.clone(),
            dir.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // Open both files the way an app does: by their paths, one after the other.
                let chain = std::fs::read_to_string(dir.join("instance.crt"));
                let key = std::fs::read_to_string(dir.join("instance.key"));
                match (chain, key) {
                    (Ok(c), Ok(k)) => {
                        checks.fetch_add(1, Ordering::Relaxed);
                        if pair_matches(&c, &k) {
                            serials.lock().unwrap().insert(leaf_serial(&c));
                        } else {
                            mismatches.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => {
                        mismatches.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    // Read through at least three renewals, each seen by the reader.
    let deadline = Instant::now() + Duration::from_secs(20);
    let list = loop {
        let list = agent.instances().await;
        let renewals = list["instances"][0]["renewals"].as_u64().unwrap();
        if renewals >= 3 && serials.lock().unwrap().len() >= 3 {
            break list;
        }
        assert!(
            Instant::now() < deadline,
            "fewer than 3 renewals seen: {list}\n{}",
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let seen = serials.lock().unwrap().len();
    let renewals = list["instances"][0]["renewals"].as_u64().unwrap();
    eprintln!(
        "reader: {} checks, {} mismatches, {seen} certificates seen, {renewals} renewals",
        checks.load(Ordering::Relaxed),
        mismatches.load(Ordering::Relaxed)
    );
    assert_eq!(mismatches.load(Ordering::Relaxed), 0);
    assert!(checks.load(Ordering::Relaxed) > 100);
    assert!(seen >= 3, "renewals observed by the reader: {seen}");
    assert!(renewals >= 3, "{list}");
    assert!(list["instances"][0]["last_error"].is_null());
    assert!(openssl_verifies(&dir));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bundle_change_reaches_every_instance_while_the_agent_runs() {
    // How fast it arrives (the agent long-polls: well under a second) is for a benchmark to
    // measure; here it has to arrive, in every instance, with the pairs intact.
    let ca = TestCa::start();
    let agent = TestAgent::start(&ca, "cell-1", "1h");
    let guids = ["b0000001", "b0000002", "b0000003"];
    for g in guids {
        assert_eq!(agent.put(g, APP).await.0, 200);
    }
    let t = Instant::now();
    let _: lanyard::api::AuthorityView = ca
        .operator()
        .post("/v1/authorities/prepare", &serde_json::json!({}), None)
        .await
        .unwrap();
    let deadline = t + Duration::from_secs(20);
    let mut done_at = None;
    while Instant::now() < deadline {
        let all = guids.iter().all(|g| {
            std::fs::read_to_string(agent.instance_dir(g).join("trust-bundle.crt"))
                .map(|b| pem::parse_many(b).map(|v| v.len()).unwrap_or(0) == 2)
                .unwrap_or(false)
        });
        if all {
            done_at = Some(t.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = done_at.unwrap_or_else(|| panic!("bundle never propagated: {}", agent.log_text()));
    eprintln!("bundle propagated to {} instances in {took:?}", guids.len());
    for g in guids {
        let dir = agent.instance_dir(g);
        assert!(pair_matches(
            &std::fs::read_to_string(dir.join("instance.crt")).unwrap(),
            &std::fs::read_to_string(dir.join("instance.key")).unwrap()
        ));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ca_outage_keeps_the_files_and_the_agent_renews_when_the_ca_returns() {
    let mut ca = short_lived_ca();
    // Two-second certificates: the first renewal is due after about a second.
    let agent = TestAgent::start(&ca, "cell-1", "2s");
    let guid = "c0ffee01";
    assert_eq!(agent.put(guid, APP).await.0, 200);
    let dir = agent.instance_dir(guid);
    ca.stop();
    // Wait for the failed renewal to be reported.
    let deadline = Instant::now() + Duration::from_secs(20);
    let list = loop {
        let list = agent.instances().await;
        if list["instances"][0]["last_error"].is_string() {
            break list;
        }
        assert!(
            Instant::now() < deadline,
            "no failed renewal reported: {list}\n{}",
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Files are still there and still a matching pair.
    let chain = std::fs::read_to_string(dir.join("instance.crt")).unwrap();
    let key = std::fs::read_to_string(dir.join("instance.key")).unwrap();
    assert!(pair_matches(&chain, &key));
    let before = list["instances"][0]["renewals"].as_u64().unwrap();
    ca.spawn();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = agent.instances().await;
        let inst = &list["instances"][0];
        if inst["renewals"].as_u64().unwrap() > before && inst["last_error"].is_null() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no renewal after the CA came back: {list}\n{}",
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(
        leaf_serial(&std::fs::read_to_string(dir.join("instance.crt")).unwrap()),
        leaf_serial(&chain)
    );
    assert!(openssl_verifies(&dir));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_agent_resumes_without_joining_again() {
    let ca = short_lived_ca();
    let mut agent = TestAgent::start(&ca, "cell-r", "2s");
    let guid = "d00d0001";
    assert_eq!(agent.put(guid, APP).await.0, 200);
    agent.stop();
    // The token is spent: a second join would fail, so the agent must reuse its credential.
    agent.spawn();
    let list = agent.instances().await;
    assert_eq!(list["instances"][0]["instance_guid"], guid, "{list}");
    let dir = agent.instance_dir(guid);
    let first = leaf_serial(&std::fs::read_to_string(dir.join("instance.crt")).unwrap());
    let deadline = Instant::now() + Duration::from_secs(15);
    while leaf_serial(&std::fs::read_to_string(dir.join("instance.crt")).unwrap()) == first {
        assert!(
            Instant::now() < deadline,
            "no renewal after restart: {}",
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let records: lanyard::api::CertificatesResponse = ca
        .operator()
        .get("/v1/certificates?limit=1000")
        .await
        .unwrap();
    let cells = records
        .certificates
        .iter()
        .filter(|c| c.kind == "cell" && c.name.as_deref() == Some("cell-r"))
        .count();
    assert_eq!(cells, 1, "the restart minted a new cell credential");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_fifty_instances_put_at_once_all_get_credentials_in_batches() {
    let ca = TestCa::start();
    let agent = Arc::new(TestAgent::start(&ca, "cell-big", "1h"));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..250u32 {
        let agent = agent.clone();
        tasks.push(tokio::spawn(async move {
            agent.put(&format!("e{i:07x}"), APP).await
        }));
    }
    for task in tasks {
        let (s, body) = task.await.unwrap();
        assert_eq!(s, 200, "{body}");
    }
    let took = t.elapsed();
    eprintln!("250 instances got credentials in {took:?}");
    let list = agent.instances().await;
    assert_eq!(list["instances"].as_array().unwrap().len(), 250);
    for i in (0..250u32).step_by(25) {
        let dir = agent.instance_dir(&format!("e{i:07x}"));
        assert!(pair_matches(
            &std::fs::read_to_string(dir.join("instance.crt")).unwrap(),
            &std::fs::read_to_string(dir.join("instance.key")).unwrap()
        ));
    }
    assert!(
        agent.log_text().contains("sending a batch"),
        "requests were not batched"
    );
}
