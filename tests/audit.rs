//! The audit log over real mutual TLS: issuance, join-token creation and use, revocation,
//! rotation and server starts leave entries; `lanyard audit verify` passes an untouched log
//! and, after an entry is edited, deleted or reordered directly in the store (sled with the
//! server stopped, PostgreSQL with SQL), exits 1 naming that entry's seq; several replicas
//! issuing at once on PostgreSQL keep one chain that verifies.

mod common;

use std::path::Path;

use common::postgres::{server_url, Database};
use common::*;
use lanyard::api;
use lanyard::client::{new_key_and_csr, tls_config};

/// Every entry of the log, through the API (checked against the OpenAPI document).
async fn all_entries(op: &CheckedClient) -> Vec<api::AuditEntry> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page: api::AuditResponse = op
            .get(&format!("/v1/audit?after={after}&limit=50"))
            .await
            .unwrap();
        if page.entries.is_empty() {
            return out;
        }
        after = page.next;
        out.extend(page.entries);
    }
}

/// Some of every kind of change: join (token created and used), issuance, renewal,
/// revocation, rotation steps.
async fn make_changes(ca: &TestCa) -> String {
    let cell = ca.join_cell("cell-1").await;
    let issued = cell.issue_instance(1).await.unwrap();
    cell.issue_instance(2).await.unwrap();
    let op = ca.operator();
    let _: api::CertificateView = op
        .post(
            &format!("/v1/certificates/{}/revoke", issued.serial),
            &api::RevokeRequest {
                reason: Some("key compromise".into()),
            },
            None,
        )
        .await
        .unwrap();
    let (code, out, err) = ca.cli(&["authority", "prepare"]);
    assert_eq!(code, 0, "{out}{err}");
    issued.serial
}

fn verify(ca: &TestCa) -> (i32, String) {
    let (code, out, err) = ca.cli(&["audit", "verify"]);
    (code, format!("{out}{err}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_change_leaves_an_entry_with_no_secret_and_the_chain_verifies() {
    let ca = TestCa::start();
    let t: api::JoinTokenResponse = ca
        .operator()
        .post(
            "/v1/join-tokens",
            &api::JoinTokenRequest {
                role: "cell".into(),
                name: "cell-9".into(),
                ttl_seconds: None,
            },
            None,
        )
        .await
        .unwrap();
    let revoked = make_changes(&ca).await;
    let entries = all_entries(&ca.operator()).await;
    let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
    for wanted in [
        "authority.created",
        "server.started",
        "join_token.created",
        "join_token.used",
        "cell.joined",
        "certificate.issued",
        "certificate.revoked",
        "authority.prepared",
    ] {
        assert!(actions.contains(&wanted), "no {wanted} in {actions:?}");
    }
    let revoke = entries
        .iter()
        .find(|e| e.action == "certificate.revoked")
        .unwrap();
    assert_eq!(revoke.subject, format!("certificate/{revoked}"));
    assert!(revoke.actor.ends_with("/operator/admin"), "{revoke:?}");
    assert_eq!(revoke.details["reason"], "keyCompromise");
    let instance = entries
        .iter()
        .find(|e| e.action == "certificate.issued" && e.details["kind"] == "instance")
        .unwrap();
    assert!(instance.actor.ends_with("/cell/cell-1"), "{instance:?}");
    assert_eq!(
        instance.details["instance_guid"],
        instance_request("", 1).instance_guid
    );
    let all = serde_json::to_string(&entries).unwrap();
    let secret = t.token.trim_start_matches("lyt_");
    assert!(!all.contains(secret), "a join token is never in the log");
    assert!(!all.contains("PRIVATE KEY"), "no key is ever in the log");
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "seq is gapless");
    }

    let (code, out) = verify(&ca);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("verifies"), "{out}");
    let (code, out, err) = ca.cli(&["audit", "tail", "-n", "3"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.contains("authority.prepared"), "{out}");
    let (code, out, _) = ca.cli(&["audit", "tail", "-n", "2", "--json"]);
    assert_eq!(code, 0);
    for line in out.lines() {
        let _: api::AuditEntry = serde_json::from_str(line).unwrap();
    }

    let (s, _, body, _) = raw(&ca, None, "GET", "/v1/audit", None, &[]).await;
    assert_eq!(s, 401, "{}", String::from_utf8_lossy(&body));
    let op = ca.operator_dir();
    let id = (
        std::fs::read_to_string(op.join("cert.pem")).unwrap(),
        std::fs::read_to_string(op.join("key.pem")).unwrap(),
    );
    for (q, field, status) in [
        ("?limit=0", "limit", 422),
        ("?limit=1001", "limit", 422),
        ("?after=-1", "after", 422),
        ("?after=x", "after", 422),
        ("?bogus=1", "bogus", 400),
    ] {
        let (s, _, body, _) = raw(
            &ca,
            Some((&id.0, &id.1)),
            "GET",
            &format!("/v1/audit{q}"),
            None,
            &[],
        )
        .await;
        let body = String::from_utf8_lossy(&body);
        assert_eq!(s, status, "{q}: {body}");
        assert!(body.contains(field), "{q}: {body}");
    }
}

/// Rewrites the sled audit tree with the server stopped: `edit` gets the entries by seq.
fn tamper_sled(ca: &mut TestCa, edit: impl FnOnce(&sled::Tree)) {
    ca.stop();
    {
        let db = sled::open(ca.state_dir().join("store")).unwrap();
        let tree = db.open_tree("audit_log").unwrap();
        edit(&tree);
        db.flush().unwrap();
    }
    ca.spawn();
}

fn key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn assert_breaks_at(ca: &TestCa, seq: u64) {
    let (code, out) = verify(ca);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("seq {seq}:")),
        "verify must name seq {seq}: {out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn on_sled_an_edited_deleted_or_reordered_entry_is_named_by_verify() {
    let mut ca = TestCa::start();
    make_changes(&ca).await;
    assert_eq!(verify(&ca).0, 0);

    // Edited: entry 3's subject changes (its hash no longer matches).
    let mut saved = None;
    tamper_sled(&mut ca, |t| {
        let v = t.get(key(3)).unwrap().unwrap();
        saved = Some(v.to_vec());
        let mut e: serde_json::Value = serde_json::from_slice(&v).unwrap();
        e["subject"] = "certificate/forged".into();
        t.insert(key(3), serde_json::to_vec(&e).unwrap()).unwrap();
    });
    assert_breaks_at(&ca, 3);
    tamper_sled(&mut ca, |t| {
        t.insert(key(3), saved.clone().unwrap()).unwrap();
    });
    let (code, out) = verify(&ca);
    assert_eq!(code, 0, "restored: {out}");

    // Deleted: entry 4 is gone.
    let mut saved = None;
    tamper_sled(&mut ca, |t| {
        saved = t.remove(key(4)).unwrap().map(|v| v.to_vec());
    });
    assert_breaks_at(&ca, 4);
    tamper_sled(&mut ca, |t| {
        t.insert(key(4), saved.clone().unwrap()).unwrap();
    });
    assert_eq!(verify(&ca).0, 0);

    // Reordered: entries 5 and 6 change places.
    tamper_sled(&mut ca, |t| {
        let a = t.get(key(5)).unwrap().unwrap();
        let b = t.get(key(6)).unwrap().unwrap();
        t.insert(key(5), b).unwrap();
        t.insert(key(6), a).unwrap();
    });
    assert_breaks_at(&ca, 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn on_postgres_an_edited_deleted_or_reordered_entry_is_named_by_verify() {
    let Some(server) = server_url() else {
        return;
    };
    let db = Database::fresh(&server).await;
    let url_line = format!("url = \"{}\"", db.url);
    let ca = TestCa::start_with(&[
        ("storage", "backend = \"postgres\""),
        ("storage", &url_line),
    ]);
    make_changes(&ca).await;
    assert_eq!(verify(&ca).0, 0);
    let sql = |q: String| {
        let url = db.url.clone();
        async move {
            let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            let driver = tokio::spawn(conn);
            c.batch_execute(&q).await.unwrap();
            drop(c);
            let _ = driver.await;
        }
    };
    sql("CREATE TABLE kept AS SELECT * FROM audit_log".into()).await;
    sql(
        "UPDATE audit_log SET entry = jsonb_set(entry, '{actor}', '\"mallory\"') WHERE seq = 3"
            .into(),
    )
    .await;
    assert_breaks_at(&ca, 3);
    // Restore entry 3 (the copy was taken before the edit), then delete entry 4.
    sql(
        "UPDATE audit_log a SET entry = k.entry FROM kept k WHERE a.seq = k.seq AND a.seq = 3"
            .into(),
    )
    .await;
    assert_eq!(verify(&ca).0, 0);
    sql("DELETE FROM audit_log WHERE seq = 4".into()).await;
    assert_breaks_at(&ca, 4);
    sql("INSERT INTO audit_log SELECT * FROM kept WHERE seq = 4".into()).await;
    assert_eq!(verify(&ca).0, 0);
    sql("UPDATE audit_log a SET entry = k.entry FROM kept k WHERE (a.seq = 5 AND k.seq = 6) OR (a.seq = 6 AND k.seq = 5)".into()).await;
    assert_breaks_at(&ca, 5);
    drop(ca);
    db.drop_it().await;
}

/// Three replicas sharing one KEK and a fresh database, started at once.
fn start_replicas(url: &str, kek: &Path) -> Vec<TestCa> {
    let overrides = vec![
        ("storage".to_string(), "backend = \"postgres\"".to_string()),
        ("storage".to_string(), format!("url = \"{url}\"")),
        (
            "keys".to_string(),
            format!("kek_file = \"{}\"", kek.display()),
        ),
    ];
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

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_issuing_at_once_on_postgres_keep_one_chain_that_verifies() {
    let Some(server) = server_url() else {
        return;
    };
    let db = Database::fresh(&server).await;
    let kek_dir = tempfile::tempdir().unwrap();
    // Created by the replica that initializes; the others read it.
    let kek = kek_dir.path().join("kek");
    let replicas = start_replicas(&db.url, &kek);
    let init = replicas
        .iter()
        .find(|r| r.operator_dir().join("cert.pem").exists())
        .expect("one replica initialized");
    let op_dir = init.operator_dir();
    let bundle = std::fs::read_to_string(op_dir.join("trust-bundle.pem")).unwrap();
    let mut tasks = Vec::new();
    for (i, r) in replicas.iter().enumerate() {
        let op = CheckedClient::from_credential_dir(&r.url(), &op_dir).unwrap();
        let t: api::JoinTokenResponse = op
            .post(
                "/v1/join-tokens",
                &api::JoinTokenRequest {
                    role: "cell".into(),
                    name: format!("cell-{i}"),
                    ttl_seconds: None,
                },
                None,
            )
            .await
            .unwrap();
        let (key, csr) = new_key_and_csr().unwrap();
        let anon =
            CheckedClient::new(&r.url(), tls_config(bundle.as_bytes(), None).unwrap()).unwrap();
        let issued: api::IssuedCertificate = anon
            .post("/v1/join", &api::CsrRequest { csr }, Some(&t.token))
            .await
            .unwrap();
        let cell = CheckedClient::new(
            &r.url(),
            tls_config(bundle.as_bytes(), Some((&issued.certificate_chain, &key))).unwrap(),
        )
        .unwrap();
        for w in 0..3u32 {
            let cell = cell.clone();
            tasks.push(tokio::spawn(async move {
                for n in 0..10u32 {
                    let (_k, csr) = new_key_and_csr().unwrap();
                    let req = instance_request(&csr, (i as u32) * 1000 + w * 100 + n);
                    let _: api::IssuedCertificate = cell
                        .post("/v1/instance-certificates", &req, None)
                        .await
                        .unwrap();
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (code, out, err) = init.cli(&["audit", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
    let op = CheckedClient::from_credential_dir(&replicas[1].url(), &op_dir).unwrap();
    let entries = all_entries(&op).await;
    let issued = entries
        .iter()
        .filter(|e| e.action == "certificate.issued" && e.details["kind"] == "instance")
        .count();
    assert_eq!(issued, 90, "one entry per instance certificate");
    let starts = entries
        .iter()
        .filter(|e| e.action == "server.started")
        .count();
    assert_eq!(starts, 3, "each replica's start");
    drop(replicas);
    db.drop_it().await;
}
