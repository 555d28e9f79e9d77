//! `GET /v1/certificates` as operators use it: pages with a cursor, lookup by serial, and
//! the retention of expired records (deleted by the server, while the audit log keeps the
//! facts and still verifies).

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use lanyard::api;
use lanyard::client::new_key_and_csr;

const APP: &str = "6f1e0c9a-2b3d-4c5e-8f7a-1b2c3d4e5f60";

async fn list(ca: &TestCa, query: &str) -> api::CertificatesResponse {
    ca.operator()
        .get(&format!("/v1/certificates{query}"))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_follow_next_through_every_record_once_and_a_serial_finds_its_record() {
    let ca = TestCa::start();
    let cell = ca.join_cell("cell-pages").await;
    let mut issued = HashSet::new();
    for n in 0..7 {
        issued.insert(cell.issue_instance(n).await.unwrap().serial);
    }

    // One app, two at a time: `next` leads through all seven, and is absent on the last page.
    let mut seen = Vec::new();
    let mut query = format!("?app_guid={APP}&limit=2");
    let mut pages = 0;
    loop {
        let page = list(&ca, &query).await;
        pages += 1;
        assert!(page.certificates.len() <= 2);
        seen.extend(page.certificates.iter().map(|c| c.serial.clone()));
        match page.next {
            Some(next) => query = format!("?app_guid={APP}&limit=2&after={next}"),
            None => break,
        }
    }
    assert_eq!(pages, 4, "seven records, two a page");
    assert_eq!(seen.len(), 7, "{seen:?}");
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), issued);
    // Newest first, as without a cursor.
    let all = list(&ca, &format!("?app_guid={APP}")).await;
    assert!(all.next.is_none());
    let all: Vec<String> = all.certificates.into_iter().map(|c| c.serial).collect();
    assert_eq!(all, seen);

    // The answer keeps its shape: no `next` when nothing more matches.
    let (chain, key) = read_operator(&ca);
    let (status, _, body, _) = raw(
        &ca,
        Some((&chain, &key)),
        "GET",
        &format!("/v1/certificates?app_guid={APP}&limit=1000"),
        None,
        &[],
    )
    .await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v.as_object().unwrap().len(), 1, "{v}");

    // A serial finds its record (in any of the spellings a path takes), or nothing.
    let one = &seen[3];
    for spelling in [one.clone(), one.to_uppercase(), format!("0x{one}")] {
        let found = list(&ca, &format!("?serial={spelling}")).await;
        let serials: Vec<&str> = found
            .certificates
            .iter()
            .map(|c| c.serial.as_str())
            .collect();
        assert_eq!(serials, [one.as_str()], "{spelling}");
    }
    let other_app = list(
        &ca,
        &format!("?serial={one}&app_guid=0000000a-0000-4000-8000-000000000000"),
    )
    .await;
    assert!(other_app.certificates.is_empty());
    let unknown = list(&ca, "?serial=00112233445566778899aabbccddeeff").await;
    assert!(unknown.certificates.is_empty() && unknown.next.is_none());

    // A cursor or serial that is not one is a 422 naming the field.
    for (query, field) in [
        ("?after=abc", "after"),
        ("?after=zz", "after"),
        ("?serial=12", "serial"),
    ] {
        let err = ca
            .operator()
            .get::<api::CertificatesResponse>(&format!("/v1/certificates{query}"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("422") && err.contains(field), "{query}: {err}");
    }
}

/// The operator credential's chain and key, as files hold them.
fn read_operator(ca: &TestCa) -> (String, String) {
    let dir = ca.operator_dir();
    (
        std::fs::read_to_string(dir.join("cert.pem")).unwrap(),
        std::fs::read_to_string(dir.join("key.pem")).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_record_past_retention_disappears_while_the_audit_chain_still_verifies() {
    let ca = TestCa::start_with(&[
        ("storage", "expired_retention = \"1s\""),
        ("issuance", "min_ttl = \"1s\""),
        ("rotation", "check_interval = \"1s\""),
    ]);
    let cell = ca.join_cell("cell-retention").await;
    let (_key, csr) = new_key_and_csr().unwrap();
    let mut short = instance_request(&csr, 1);
    short.ttl_seconds = Some(api::JsonInt(1));
    let expiring: api::IssuedCertificate = cell
        .client
        .post("/v1/instance-certificates", &short, None)
        .await
        .unwrap();
    let kept = cell.issue_instance(2).await.unwrap();
    let by_serial = |s: &str| format!("?serial={s}");
    assert_eq!(
        list(&ca, &by_serial(&expiring.serial))
            .await
            .certificates
            .len(),
        1,
        "the record is there while the certificate lives"
    );

    // The maintenance task deletes it once it is a second past its expiry; this waits for
    // that (with a bound far above it, for a loaded machine) rather than timing it.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !list(&ca, &by_serial(&expiring.serial))
        .await
        .certificates
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the expired record is still listed; server log:\n{}",
            ca.log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let all = list(&ca, "").await;
    assert!(all.certificates.iter().all(|c| c.serial != expiring.serial));
    assert_eq!(
        list(&ca, &by_serial(&kept.serial)).await.certificates.len(),
        1,
        "a live record stays"
    );
    // Revoking it now finds nothing.
    let err = ca
        .operator()
        .post::<_, api::CertificateView>(
            &format!("/v1/certificates/{}/revoke", expiring.serial),
            &api::RevokeRequest { reason: None },
            None,
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("404"), "{err}");

    // The audit log keeps the issuance and records the deletion, and the chain verifies.
    let audit: api::AuditResponse = ca
        .operator()
        .get("/v1/audit?after=0&limit=1000")
        .await
        .unwrap();
    let subject = format!("certificate/{}", expiring.serial);
    assert!(
        audit
            .entries
            .iter()
            .any(|e| e.action == "certificate.issued" && e.subject == subject),
        "the issuance stays in the audit log"
    );
    let deletion = audit
        .entries
        .iter()
        .find(|e| e.action == "certificates.deleted")
        .expect("the deletion is audited");
    assert!(
        deletion.details["serials"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == expiring.serial.as_str()),
        "{:?}",
        deletion.details
    );
    let (code, out, err) = ca.cli(&["audit", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
}
