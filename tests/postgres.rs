//! The CA on PostgreSQL: a real `lanyard serve` with `storage.backend = "postgres"` on a fresh
//! database keeps its records and generations across a restart.
//!
//! The server comes from `LANYARD_TEST_POSTGRES_URL` (a role that may create databases, no
//! TLS); without it the database tests are skipped with a note, except where `CI` is set or
//! `LANYARD_REQUIRE_POSTGRES=1`, where they fail. `scripts/test.sh` starts a throwaway server.

mod common;

use std::process::Command;

use common::postgres::{server_url, Database};
use common::*;
use lanyard::api;

fn generations(v: &api::AuthoritiesResponse) -> Vec<(String, String)> {
    v.authorities
        .iter()
        .map(|a| (a.id.clone(), a.state.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn records_and_generations_survive_a_restart_on_postgres() {
    let Some(server) = server_url() else {
        return;
    };
    let db = Database::fresh(&server).await;
    let url_line = format!("url = \"{}\"", db.url);
    let mut ca = TestCa::start_with(&[
        ("storage", "backend = \"postgres\""),
        ("storage", &url_line),
    ]);
    assert!(
        !ca.state_dir().join("store").exists(),
        "a postgres CA keeps no embedded store"
    );

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
    let before: api::AuthoritiesResponse = ca.operator().get("/v1/authorities").await.unwrap();
    assert_eq!(
        generations(&before),
        [
            ("1".to_string(), "active".to_string()),
            ("2".to_string(), "prepared".to_string())
        ]
    );
    let (_, bundle_before) = ca
        .anonymous()
        .trust_bundle(None, 0, false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        pem::parse_many(&bundle_before).unwrap().len(),
        2,
        "the prepared root is published"
    );
    // The rows are in the database itself.
    assert!(db.count("SELECT count(*) FROM certificates").await >= 4);
    assert_eq!(db.count("SELECT count(*) FROM authorities").await, 2);

    ca.restart();

    let after: api::AuthoritiesResponse = ca.operator().get("/v1/authorities").await.unwrap();
    assert_eq!(generations(&after), generations(&before));
    assert_eq!(after.trust_bundle_sequence, before.trust_bundle_sequence);
    let list: api::CertificatesResponse = ca
        .operator()
        .get("/v1/certificates?limit=1000")
        .await
        .unwrap();
    for r in &issued {
        let found = list.certificates.iter().find(|c| c.serial == r.serial);
        assert!(found.is_some(), "{} is listed after the restart", r.serial);
    }
    let revoked = list
        .certificates
        .iter()
        .find(|c| c.serial == issued[0].serial)
        .unwrap();
    assert!(revoked.revoked_at.is_some(), "the revocation survives");
    let (_, bundle_after) = ca
        .anonymous()
        .trust_bundle(None, 0, false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bundle_after, bundle_before);
    // The cell credential from before the restart still works, and a new record lands.
    let again = cell.issue_instance(4).await.unwrap();
    let list: api::CertificatesResponse = ca
        .operator()
        .get("/v1/certificates?limit=1000")
        .await
        .unwrap();
    assert!(list.certificates.iter().any(|c| c.serial == again.serial));

    ca.stop();
    db.drop_it().await;
}

#[test]
fn a_postgres_backend_without_a_url_is_a_config_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &[("storage", "backend = \"postgres\"")]);
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("LANYARD_STORAGE_URL")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("storage.url"), "{stderr}");
}
