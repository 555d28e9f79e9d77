//! Root rotation over the real API and CLI: manual steps, restarts mid-rotation, the
//! automatic schedule, and the server moving its own certificate.

mod common;

use std::time::{Duration, Instant};

use common::CheckedClient as ApiClient;
use common::*;
use lanyard::api;
use lanyard::client::{new_key_and_csr, tls_config};

fn openssl_verifies(bundle: &str, chain: &str) -> bool {
    openssl_verify(bundle, chain, "sslclient").0
}

async fn authorities(ca: &TestCa) -> api::AuthoritiesResponse {
    ca.operator().get("/v1/authorities").await.unwrap()
}

fn states(a: &api::AuthoritiesResponse) -> Vec<(String, String)> {
    a.authorities
        .iter()
        .map(|g| (g.id.clone(), g.state.clone()))
        .collect()
}

fn s(id: &str, st: &str) -> (String, String) {
    (id.to_string(), st.to_string())
}

async fn bundle_roots(ca: &TestCa) -> (u64, Vec<Vec<u8>>) {
    let (seq, pem_text) = ca
        .anonymous()
        .trust_bundle(None, 0, false)
        .await
        .unwrap()
        .unwrap();
    (
        seq,
        pem::parse_many(pem_text)
            .unwrap()
            .into_iter()
            .map(|p| p.into_contents())
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manual_rotation_survives_restarts_at_every_step() {
    let mut ca = TestCa::start();
    let cell = ca.join_cell("cell-1").await;
    let old_leaf = cell.issue_instance(1).await.unwrap();

    // prepare
    let (code, out, err) = ca.cli(&["authority", "prepare", "--json"]);
    assert_eq!(code, 0, "{err}");
    let prepared: api::AuthorityView = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (prepared.id.as_str(), prepared.state.as_str()),
        ("2", "prepared")
    );
    ca.restart();
    let a = authorities(&ca).await;
    assert_eq!(states(&a), vec![s("1", "active"), s("2", "prepared")]);
    assert_eq!(a.trust_bundle_sequence, 2);
    let (seq, roots) = bundle_roots(&ca).await;
    assert_eq!((seq, roots.len()), (2, 2));

    // activate: too early without force, 409 with the time left, via the CLI (exit 1)
    let (code, _, err) = ca.cli(&["authority", "activate", "2"]);
    assert_eq!(code, 1);
    assert!(err.contains("409") && err.contains("left"), "{err}");
    let (code, _, err) = ca.cli(&["authority", "activate", "2", "--force"]);
    assert_eq!(code, 0, "{err}");
    ca.restart();
    let a = authorities(&ca).await;
    assert_eq!(states(&a), vec![s("1", "retiring"), s("2", "active")]);
    assert_eq!(a.trust_bundle_sequence, 3);
    let (seq, roots) = bundle_roots(&ca).await;
    assert_eq!(seq, 3);
    assert_eq!(
        roots[0],
        pem::parse(&prepared.root_certificate)
            .unwrap()
            .into_contents(),
        "active root first"
    );

    // New leaves come from generation 2. The cell's client picks up the new bundle first,
    // as the agent does through its long poll: the server now presents a generation 2 chain.
    let cell = Credential::new(&ca, cell.chain_pem, cell.key_pem);
    let new_leaf = cell.issue_instance(2).await.unwrap();
    assert_eq!(new_leaf.authority_id, "2");
    assert_eq!(new_leaf.trust_bundle_sequence, 3);

    // retire: refused while generation 1's leaves are valid, with the time; then forced.
    let (code, _, err) = ca.cli(&["authority", "retire", "1"]);
    assert_eq!(code, 1);
    assert!(err.contains("409") && err.contains("valid until"), "{err}");
    let (code, _, err) = ca.cli(&["authority", "retire", "1", "--force"]);
    assert_eq!(code, 0, "{err}");
    ca.restart();
    let a = authorities(&ca).await;
    assert_eq!(states(&a), vec![s("1", "retired"), s("2", "active")]);
    assert_eq!(a.trust_bundle_sequence, 4);
    let (_, roots) = bundle_roots(&ca).await;
    assert_eq!(roots.len(), 1);
    // Nothing chains to the retired root any more: the old leaf fails, the new one passes.
    let (_, bundle) = ca
        .anonymous()
        .trust_bundle(None, 0, false)
        .await
        .unwrap()
        .unwrap();
    assert!(!openssl_verifies(&bundle, &old_leaf.certificate_chain));
    assert!(openssl_verifies(&bundle, &new_leaf.certificate_chain));

    // The readable table.
    let (code, out, _) = ca.cli(&["authority", "list"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("STATE") && out.contains("retired") && out.contains("active"),
        "{out}"
    );
    assert!(out.contains("trust bundle sequence: 4"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_moves_its_own_certificate_to_the_new_generation_without_a_restart() {
    let ca = TestCa::start();
    let op = ca.operator();
    let prepared: api::AuthorityView = op
        .post("/v1/authorities/prepare", &serde_json::json!({}), None)
        .await
        .unwrap();
    // A client that trusts only the new root cannot reach the server yet...
    let only_new = ApiClient::new(
        &ca.url(),
        tls_config(prepared.root_certificate.as_bytes(), None).unwrap(),
    )
    .unwrap();
    assert!(only_new.get::<serde_json::Value>("/healthz").await.is_err());
    let _: api::AuthorityView = op
        .post(
            "/v1/authorities/2/activate",
            &api::ForceRequest { force: true },
            None,
        )
        .await
        .unwrap();
    // ...and can right after activation, with the same process.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let fresh = ApiClient::new(
            &ca.url(),
            tls_config(prepared.root_certificate.as_bytes(), None).unwrap(),
        )
        .unwrap();
        if fresh.get::<serde_json::Value>("/healthz").await.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "server certificate did not move: {}",
            ca.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The local operator credential moved as well, and `credential renew` renews any copy.
    let cred = std::fs::read_to_string(ca.operator_dir().join("cert.pem")).unwrap();
    let leaf =
        lanyard::x509::inspect::CertInfo::from_der(pem::parse_many(&cred).unwrap()[0].contents())
            .unwrap();
    assert!(
        leaf.issuer.contains("Intermediate CA 2."),
        "{}",
        leaf.issuer
    );
    let copy = ca.dir.path().join("op-copy");
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["cert.pem", "key.pem", "trust-bundle.pem"] {
        std::fs::copy(ca.operator_dir().join(f), copy.join(f)).unwrap();
    }
    let (code, _, err) = ca.cli(&[
        "credential",
        "renew",
        "--credential",
        copy.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_ne!(
        std::fs::read_to_string(copy.join("key.pem")).unwrap(),
        std::fs::read_to_string(ca.operator_dir().join("key.pem")).unwrap()
    );
    let renewed = std::fs::read_to_string(copy.join("cert.pem")).unwrap();
    let info = lanyard::x509::inspect::CertInfo::from_der(
        pem::parse_many(&renewed).unwrap()[0].contents(),
    )
    .unwrap();
    assert_eq!(info.uris, leaf.uris, "same name");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_automatic_schedule_prepares_activates_and_retires_on_its_own() {
    let ca = TestCa::start_with(&[
        ("rotation", "automatic = true"),
        // Published long enough to be seen, and activated by the delay before five sixths.
        ("rotation", "propagation_delay = \"500ms\""),
        ("rotation", "check_interval = \"100ms\""),
        // A 2.5 s root lives 1.5 to 2.5 s (whole-second notAfter): prepared at half its life,
        // retired when its last certificate (at most 2 s, cut at the root's end) expired.
        ("authority", "root_ttl = \"2500ms\""),
        ("authority", "intermediate_ttl = \"2500ms\""),
        ("issuance", "min_ttl = \"1s\""),
        ("issuance", "default_ttl = \"2s\""),
        ("issuance", "max_ttl = \"2s\""),
    ]);
    let start = Instant::now();
    let mut seen_prepared = false;
    let mut sequences = vec![];
    loop {
        let op = ApiClient::from_credential_dir(&ca.url(), &ca.operator_dir());
        if let Ok(op) = op {
            if let Ok(a) = op.get::<api::AuthoritiesResponse>("/v1/authorities").await {
                let st = states(&a);
                if sequences.last() != Some(&a.trust_bundle_sequence) {
                    sequences.push(a.trust_bundle_sequence);
                }
                seen_prepared |= st.contains(&s("2", "prepared"));
                // Generation 3 may follow soon after with these lifetimes; the run is
                // complete once generation 1 is retired.
                if st.first() == Some(&s("1", "retired")) {
                    assert!(st.contains(&s("2", "active")) || st.contains(&s("2", "retiring")));
                    break;
                }
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(45),
            "schedule stuck: {sequences:?}\n{}",
            ca.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "automatic rotation 1 -> 2 took {:?}; bundle sequences {sequences:?}",
        start.elapsed()
    );
    assert!(seen_prepared, "generation 2 was never observed as prepared");
    assert!(sequences.windows(2).all(|w| w[0] < w[1]));
    assert!(sequences.contains(&4));
    let log = ca.log_text();
    let mut after = 0;
    for step in [
        "automatic rotation: prepared",
        "automatic rotation: activated",
        "automatic rotation: retired",
    ] {
        let at = log
            .find(step)
            .unwrap_or_else(|| panic!("log lacks `{step}`"));
        assert!(at >= after, "`{step}` logged out of order:\n{log}");
        after = at;
    }
    assert!(
        log.contains("half its lifetime"),
        "decisions are logged with reasons"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_intermediate_is_renewed_under_the_same_root_even_without_the_schedule() {
    let ca = TestCa::start_with(&[
        ("rotation", "check_interval = \"200ms\""),
        ("authority", "root_ttl = \"60s\""),
        // Lives 2 to 3 s (whole-second notAfter): renewed when a third is left, after 1.3
        // to 2 s, leaving a leaf issued next under the renewed one a second or more.
        ("authority", "intermediate_ttl = \"3s\""),
        ("issuance", "min_ttl = \"1s\""),
        ("issuance", "default_ttl = \"2s\""),
        ("issuance", "max_ttl = \"3s\""),
    ]);
    let first = authorities(&ca).await.authorities[0]
        .intermediate_not_after
        .clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    let a = loop {
        // The operator credential is reissued under the new intermediate: read it afresh.
        let op = ApiClient::from_credential_dir(&ca.url(), &ca.operator_dir()).unwrap();
        if let Ok(a) = op.get::<api::AuthoritiesResponse>("/v1/authorities").await {
            if a.authorities[0].intermediate_not_after != first {
                break a;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the intermediate was not renewed: {}",
            ca.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        a.trust_bundle_sequence, 1,
        "an intermediate renewal does not change the bundle"
    );
    // Issuance now uses the new intermediate, and its chains verify.
    let (_k, csr) = new_key_and_csr().unwrap();
    let cell = ca.join_cell("cell-1").await;
    let r: api::IssuedCertificate = cell
        .client
        .post(
            "/v1/instance-certificates",
            &instance_request(&csr, 1),
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", ca.log_text()));
    let (_, bundle) = ca
        .anonymous()
        .trust_bundle(None, 0, false)
        .await
        .unwrap()
        .unwrap();
    assert!(openssl_verifies(&bundle, &r.certificate_chain));
    let chain = pem::parse_many(&r.certificate_chain).unwrap();
    let issuer = lanyard::x509::inspect::CertInfo::from_der(chain[1].contents()).unwrap();
    // With these lifetimes the renewed intermediate may itself be renewed meanwhile.
    let renewed = lanyard::timefmt::parse_rfc3339(&a.authorities[0].intermediate_not_after);
    assert!(
        Some(issuer.not_after) >= renewed,
        "signed by the renewed intermediate (or a later one): {:?} < {renewed:?}",
        issuer.not_after
    );
    assert!(ca.log_text().contains("intermediate renewed"));
}
