//! Instance ownership over real mutual TLS: the first cell to obtain an instance's
//! certificate owns it; another cell (or the owner with another app) is refused with a 409
//! that names no cell, per item in a batch; the owner's release, an operator's release (API
//! and CLI) or the agent's local DELETE lets another cell in.

mod common;

use std::time::{Duration, Instant};

use common::agent::TestAgent;
use common::*;
use lanyard::api;
use lanyard::client::{new_key_and_csr, ClientError};

/// The status and detail of a refused request.
fn refusal<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (u16, String) {
    match r {
        Err(ClientError::Api(p)) => (p.status, p.detail),
        other => panic!("expected a problem, got {other:?}"),
    }
}

/// A raw request with a credential; returns status and body.
async fn call(ca: &TestCa, who: &Credential, method: &str, path: &str) -> (u16, serde_json::Value) {
    let (s, _, body, _) = raw(
        ca,
        Some((&who.chain_pem, &who.key_pem)),
        method,
        path,
        None,
        &[],
    )
    .await;
    (
        s,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

fn operator_credential(ca: &TestCa) -> Credential {
    let op = ca.operator_dir();
    Credential::new(
        ca,
        std::fs::read_to_string(op.join("cert.pem")).unwrap(),
        std::fs::read_to_string(op.join("key.pem")).unwrap(),
    )
}

fn guid(n: u32) -> String {
    instance_request("", n).instance_guid
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_cell_is_refused_409_without_naming_the_owner_until_the_owner_releases() {
    let ca = TestCa::start();
    let owner = ca.join_cell("cell-owner").await;
    let other = ca.join_cell("cell-other").await;
    owner.issue_instance(1).await.unwrap();
    owner
        .issue_instance(1)
        .await
        .expect("the owner renews its own instance");

    let (status, detail) = refusal(other.issue_instance(1).await);
    assert_eq!(status, 409, "{detail}");
    assert!(detail.contains("bound elsewhere"), "{detail}");
    assert!(
        !detail.contains("cell-owner"),
        "the owner is never named: {detail}"
    );

    // The owner with another app is refused too.
    let (_k, csr) = new_key_and_csr().unwrap();
    let mut moved = instance_request(&csr, 1);
    moved.app_guid = "0a0a0a0a-0000-4000-8000-000000000001".into();
    let r: Result<api::IssuedCertificate, _> = owner
        .client
        .post("/v1/instance-certificates", &moved, None)
        .await;
    assert_eq!(refusal(r).0, 409);

    // Another cell cannot release it.
    let path = format!("/v1/instances/{}", guid(1));
    let (s, body) = call(&ca, &other, "DELETE", &path).await;
    assert_eq!(s, 409, "{body}");
    assert!(!body.to_string().contains("cell-owner"), "{body}");

    // The owner releases (idempotently); then the other cell gets it.
    let (s, _) = call(&ca, &owner, "DELETE", &path).await;
    assert_eq!(s, 204);
    let (s, _) = call(&ca, &owner, "DELETE", &path).await;
    assert_eq!(s, 204, "releasing again is harmless");
    other
        .issue_instance(1)
        .await
        .expect("a released instance is free for another cell");
    let (status, _) = refusal(owner.issue_instance(1).await);
    assert_eq!(status, 409, "now the former owner is the other cell");
}

#[tokio::test(flavor = "multi_thread")]
async fn in_a_batch_only_the_items_bound_elsewhere_are_refused() {
    let ca = TestCa::start();
    let owner = ca.join_cell("cell-1").await;
    let other = ca.join_cell("cell-2").await;
    owner.issue_instance(2).await.unwrap();
    let requests: Vec<api::InstanceCertificateRequest> = [3, 2, 4, 3]
        .iter()
        .map(|n| instance_request(&new_key_and_csr().unwrap().1, *n))
        .collect();
    let mut last = requests[3].clone();
    last.app_guid = "0a0a0a0a-0000-4000-8000-000000000002".into();
    let body = api::BatchRequest {
        requests: vec![
            requests[0].clone(),
            requests[1].clone(),
            requests[2].clone(),
            last,
        ],
    };
    let r: api::BatchResponse = other
        .client
        .post("/v1/instance-certificates/batch", &body, None)
        .await
        .unwrap();
    let statuses: Vec<u16> = r.results.iter().map(|x| x.status).collect();
    assert_eq!(
        statuses,
        vec![201, 409, 201, 409],
        "the owner's instance and the same instance under another app are refused: {r:?}"
    );
    let p = r.results[1].problem.as_ref().unwrap();
    assert!(p.detail.contains("bound elsewhere"), "{p:?}");
    assert!(!p.detail.contains("cell-1"), "{p:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_releases_through_the_api_and_the_cli_and_releasing_does_not_revoke() {
    let ca = TestCa::start();
    let owner = ca.join_cell("cell-1").await;
    let other = ca.join_cell("cell-2").await;
    let first = owner.issue_instance(5).await.unwrap();
    owner.issue_instance(6).await.unwrap();
    let op = operator_credential(&ca);

    let (s, body) = call(
        &ca,
        &op,
        "POST",
        &format!("/v1/instances/{}/release", guid(5)),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert!(
        body["owner"].as_str().unwrap().ends_with("/cell/cell-1"),
        "{body}"
    );
    let (s, _) = call(
        &ca,
        &op,
        "POST",
        &format!("/v1/instances/{}/release", guid(5)),
    )
    .await;
    assert_eq!(s, 404, "nothing left to release");
    other.issue_instance(5).await.unwrap();

    let (code, out, err) = ca.cli(&["instance", "release", &guid(6)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("cell-1"), "{out}");
    other.issue_instance(6).await.unwrap();
    let (code, _, err) = ca.cli(&["instance", "release", &guid(77)]);
    assert_eq!(code, 1, "an unknown binding is an error for the CLI: {err}");
    assert!(err.contains("not bound"), "{err}");

    let recs: api::CertificatesResponse = ca
        .operator()
        .get(&format!("/v1/certificates?instance_guid={}", guid(5)))
        .await
        .unwrap();
    let old = recs
        .certificates
        .iter()
        .find(|c| c.serial == first.serial)
        .unwrap();
    assert!(old.revoked_at.is_none(), "releasing does not revoke");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agents_local_delete_releases_the_instance_for_another_cell() {
    let ca = TestCa::start();
    let agent = TestAgent::start(&ca, "cell-agent", "1h");
    let other = ca.join_cell("cell-other").await;
    let app = "6f1e0c9a-2b3d-4c5e-8f7a-1b2c3d4e5f60";
    let g = "9a1c2f3e-5b6d-4e7f-8a9b-00000000a9e0";
    let (s, body) = agent.put(g, app).await;
    assert_eq!(s, 200, "{body}");

    let (_k, csr) = new_key_and_csr().unwrap();
    let mut req = instance_request(&csr, 0);
    req.instance_guid = g.into();
    req.app_guid = app.into();
    let r: Result<api::IssuedCertificate, _> = other
        .client
        .post("/v1/instance-certificates", &req, None)
        .await;
    assert_eq!(refusal(r).0, 409, "the agent's cell owns the instance");

    let r = agent
        .http
        .delete(agent.url(&format!("/v1/instances/{g}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    // The agent releases before it answers when the CA is up; poll in case it had to retry.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r: Result<api::IssuedCertificate, _> = other
            .client
            .post("/v1/instance-certificates", &req, None)
            .await;
        match r {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the instance was not released: {e}\n{}", agent.log_text()),
        }
    }
}
