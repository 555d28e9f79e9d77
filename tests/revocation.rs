//! Revocation over real mutual TLS: a retried revoke is harmless, the CRL lists a serial once,
//! and the CA refuses to revoke its own credentials.

mod common;

use common::postgres::{server_url, Database};
use common::*;
use der::Decode;
use lanyard::api;
use x509_cert::crl::CertificateList;

/// The serial in a certificate's first PEM block, lowercase hex.
fn serial_of(chain_pem: &str) -> String {
    lanyard::x509::inspect::CertInfo::from_der(pem::parse_many(chain_pem).unwrap()[0].contents())
        .unwrap()
        .serial
}

/// Lowercase hex with leading zeros dropped, so a DER integer and the API's hex compare.
fn normalized(hex: &str) -> String {
    hex.to_ascii_lowercase().trim_start_matches('0').to_string()
}

async fn revoke_raw(ca: &TestCa, serial: &str) -> (u16, String, serde_json::Value) {
    let op = ca.operator_dir();
    let chain = std::fs::read_to_string(op.join("cert.pem")).unwrap();
    let key = std::fs::read_to_string(op.join("key.pem")).unwrap();
    let (status, ct, body, _) = raw(
        ca,
        Some((&chain, &key)),
        "POST",
        &format!("/v1/certificates/{serial}/revoke"),
        Some(br#"{"reason": "keyCompromise"}"#.to_vec()),
        &[],
    )
    .await;
    (status, ct, serde_json::from_slice(&body).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_twice_answers_200_both_times_with_the_same_revoked_at_and_the_crl_lists_it_once()
{
    revoke_twice_and_read_the_crl(&TestCa::start()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_postgres_revoking_twice_answers_the_same_record_and_the_crl_lists_it_once() {
    let Some(server) = server_url() else {
        return;
    };
    let db = Database::fresh(&server).await;
    let url_line = format!("url = \"{}\"", db.url);
    let ca = TestCa::start_with(&[
        ("storage", "backend = \"postgres\""),
        ("storage", &url_line),
    ]);
    revoke_twice_and_read_the_crl(&ca).await;
    drop(ca);
    db.drop_it().await;
}

/// Revokes an instance certificate twice and checks both answers, the CRL and a 404.
async fn revoke_twice_and_read_the_crl(ca: &TestCa) {
    let cell = ca.join_cell("cell-1").await;
    let issued = cell.issue_instance(1).await.unwrap();
    let serial = issued.serial.clone();

    let (s1, _, first) = revoke_raw(ca, &serial).await;
    assert_eq!(s1, 200, "{first}");
    let (s2, _, second) = revoke_raw(ca, &serial).await;
    assert_eq!(s2, 200, "{second}");
    assert!(first["revoked_at"].is_string(), "{first}");
    assert_eq!(first["revoked_at"], second["revoked_at"]);
    assert_eq!(first, second, "a retry answers the record as it is");

    let authority = first["authority_id"].as_str().unwrap();
    let (s, ct, der, _) = raw(ca, None, "GET", &format!("/v1/crl/{authority}"), None, &[]).await;
    assert_eq!(s, 200);
    assert_eq!(ct, "application/pkix-crl");
    let crl = CertificateList::from_der(&der).unwrap();
    let listed = crl
        .tbs_cert_list
        .revoked_certificates
        .unwrap_or_default()
        .iter()
        .filter(|r| normalized(&hex::encode(r.serial_number.as_bytes())) == normalized(&serial))
        .count();
    assert_eq!(listed, 1, "the CRL lists the serial once");

    // An unknown serial is still 404.
    let (s, ct, p) = revoke_raw(ca, "0123456789abcdef0123456789abcdef").await;
    assert_eq!(s, 404, "{p}");
    assert_eq!(ct, "application/problem+json");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ca_refuses_to_revoke_its_own_server_certificate_and_the_local_operator_credential() {
    let ca = TestCa::start();
    let server_serial = {
        let tls = lanyard::client::tls_config(ca.bundle_pem().as_bytes(), None).unwrap();
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", ca.port))
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let s = connector.connect(name, tcp).await.unwrap();
        let cert = s.get_ref().1.peer_certificates().unwrap()[0].clone();
        lanyard::x509::inspect::CertInfo::from_der(&cert)
            .unwrap()
            .serial
    };
    let operator_serial =
        serial_of(&std::fs::read_to_string(ca.operator_dir().join("cert.pem")).unwrap());

    let (s, ct, p) = revoke_raw(&ca, &server_serial).await;
    assert_eq!(s, 409, "{p}");
    assert_eq!(ct, "application/problem+json");
    let detail = p["detail"].as_str().unwrap();
    assert!(detail.contains("own TLS server certificate"), "{detail}");
    assert!(detail.contains("re-issues it automatically"), "{detail}");

    let (s, ct, p) = revoke_raw(&ca, &operator_serial).await;
    assert_eq!(s, 409, "{p}");
    assert_eq!(ct, "application/problem+json");
    let detail = p["detail"].as_str().unwrap();
    assert!(detail.contains("local operator credential"), "{detail}");
    assert!(detail.contains("lanyard credential renew"), "{detail}");

    // Neither was revoked: the operator still gets in, over a new connection.
    let v: api::AuthoritiesResponse = ca.operator().get("/v1/authorities").await.unwrap();
    assert_eq!(v.authorities.len(), 1);
    let listed: api::CertificatesResponse = ca.operator().get("/v1/certificates").await.unwrap();
    for serial in [&server_serial, &operator_serial] {
        let rec = listed
            .certificates
            .iter()
            .find(|c| &c.serial == serial)
            .unwrap_or_else(|| panic!("{serial} is not listed"));
        assert!(rec.revoked_at.is_none(), "{rec:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copy_of_the_local_operator_credential_renewed_is_a_separate_working_credential() {
    // The README's recovery: on the CA host, copy the local credential and renew the copy.
    let ca = TestCa::start();
    let copy = ca.dir.path().join("operator-copy");
    std::fs::create_dir(&copy).unwrap();
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
    let new_serial = serial_of(&std::fs::read_to_string(copy.join("cert.pem")).unwrap());
    let local_serial =
        serial_of(&std::fs::read_to_string(ca.operator_dir().join("cert.pem")).unwrap());
    assert_ne!(new_serial, local_serial);

    let renewed = CheckedClient::from_credential_dir(&ca.url(), &copy).unwrap();
    let v: api::AuthoritiesResponse = renewed.get("/v1/authorities").await.unwrap();
    assert_eq!(v.authorities.len(), 1);
    // The new credential can be revoked like any other; the local one keeps working.
    let (s, _, p) = revoke_raw(&ca, &new_serial).await;
    assert_eq!(s, 200, "{p}");
    let v: api::AuthoritiesResponse = ca.operator().get("/v1/authorities").await.unwrap();
    assert_eq!(v.authorities.len(), 1);
}

/// The CRL at `path`, fetched anonymously: its DER.
async fn crl_at(ca: &TestCa, path: &str) -> Vec<u8> {
    let (s, ct, der, _) = raw(ca, None, "GET", path, None, &[]).await;
    assert_eq!(s, 200, "{path}: {}", String::from_utf8_lossy(&der));
    assert_eq!(ct, "application/pkix-crl");
    der
}

/// The serials a CRL lists, normalized.
fn crl_serials(der: &[u8]) -> Vec<String> {
    CertificateList::from_der(der)
        .unwrap()
        .tbs_cert_list
        .revoked_certificates
        .unwrap_or_default()
        .iter()
        .map(|r| normalized(&hex::encode(r.serial_number.as_bytes())))
        .collect()
}

/// Whether `openssl crl` verifies the CRL's signature with `issuer_pem`'s key.
fn crl_signed_by(der: &[u8], issuer_pem: &str) -> (bool, String) {
    let tmp = tempfile::tempdir().unwrap();
    let crl = tmp.path().join("crl.der");
    std::fs::write(&crl, der).unwrap();
    let issuer = file(tmp.path(), "issuer.pem", issuer_pem);
    let out = std::process::Command::new("openssl")
        .args(["crl", "-inform", "DER", "-noout", "-in"])
        .arg(&crl)
        .arg("-CAfile")
        .arg(&issuer)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success() && said.contains("verify OK"), said)
}

/// A leaf's serial, its issuer's PEM and the issuer's key identifier (the leaf's AKI).
fn leaf_and_issuer(chain_pem: &str) -> (String, String, String) {
    let blocks = pem_blocks(chain_pem);
    let leaf =
        lanyard::x509::inspect::CertInfo::from_der(pem::parse(&blocks[0]).unwrap().contents())
            .unwrap();
    (
        leaf.serial,
        blocks[1].clone(),
        leaf.authority_key_id.unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn after_an_intermediate_renewal_each_revoked_certificate_is_on_the_crl_its_own_issuer_signs()
{
    // The intermediate is renewed when a third of its life is left (after 30 s); leaves of
    // the first one live until its end, so both are unexpired when the CRLs are read.
    let ca = TestCa::start_with(&[
        ("rotation", "check_interval = \"1s\""),
        ("authority", "intermediate_ttl = \"45s\""),
        ("issuance", "min_ttl = \"1s\""),
        ("issuance", "default_ttl = \"45s\""),
        ("issuance", "max_ttl = \"45s\""),
    ]);
    let cell = ca.join_cell("cell-1").await;
    let old = cell.issue_instance(1).await.unwrap();
    let (s, _, p) = revoke_raw(&ca, &old.serial).await;
    assert_eq!(s, 200, "{p}");
    let first = ca
        .operator()
        .get::<api::AuthoritiesResponse>("/v1/authorities")
        .await
        .unwrap()
        .authorities[0]
        .intermediate_not_after
        .clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        // The operator credential is reissued meanwhile: read it afresh each time.
        let a = ca
            .operator()
            .get::<api::AuthoritiesResponse>("/v1/authorities")
            .await;
        if a.is_ok_and(|a| a.authorities[0].intermediate_not_after != first) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the intermediate was not renewed:\n{}",
            ca.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let new = cell.issue_instance(2).await.unwrap();
    let (s, _, p) = revoke_raw(&ca, &new.serial).await;
    assert_eq!(s, 200, "{p}");

    let (old_serial, old_issuer, old_key) = leaf_and_issuer(&old.certificate_chain);
    let (new_serial, new_issuer, new_key) = leaf_and_issuer(&new.certificate_chain);
    assert_ne!(old_key, new_key, "the second leaf has the renewed issuer");

    // Without `intermediate`: the newest intermediate's CRL.
    let newest = crl_at(&ca, "/v1/crl/1").await;
    let (ok, said) = crl_signed_by(&newest, &new_issuer);
    assert!(ok, "{said}");
    assert!(crl_serials(&newest).contains(&normalized(&new_serial)));

    // Each revoked leaf is on the CRL its own issuer signed, named by its key identifier
    // (as the leaf's authorityKeyIdentifier carries it, in either case).
    for (serial, issuer, key) in [
        (&old_serial, &old_issuer, old_key.clone()),
        (&new_serial, &new_issuer, new_key.to_ascii_uppercase()),
    ] {
        let der = crl_at(&ca, &format!("/v1/crl/1?intermediate={key}")).await;
        let (ok, said) = crl_signed_by(&der, issuer);
        assert!(ok, "CRL of {key} not signed by the leaf's issuer: {said}");
        assert!(
            crl_serials(&der).contains(&normalized(serial)),
            "{serial} is not on its issuer's CRL"
        );
    }
    // The old intermediate's CRL is not signed by the new one.
    let older = crl_at(&ca, &format!("/v1/crl/1?intermediate={old_key}")).await;
    assert!(!crl_signed_by(&older, &new_issuer).0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_crl_endpoint_names_a_bad_or_unknown_intermediate_parameter() {
    let ca = TestCa::start();
    for (query, status, needle) in [
        ("intermediate=xyz", 422, "intermediate"),
        ("intermediate=abc", 422, "intermediate"),
        ("intermediate=", 422, "intermediate"),
        ("intermediate=00112233", 404, "intermediate"),
        ("colour=blue", 400, "colour"),
        ("intermediate=00&intermediate=11", 400, "intermediate"),
    ] {
        let (s, ct, body, _) =
            raw(&ca, None, "GET", &format!("/v1/crl/1?{query}"), None, &[]).await;
        let p: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(s, status, "{query}: {p}");
        assert_eq!(ct, "application/problem+json");
        let detail = p["detail"].as_str().unwrap();
        assert!(detail.contains(needle), "{query}: {detail}");
    }
    let (s, _, _, _) = raw(&ca, None, "GET", "/v1/crl/7", None, &[]).await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn on_postgres_a_revocation_on_one_replica_refuses_the_credential_on_another() {
    let Some(server) = server_url() else {
        return;
    };
    let db = Database::fresh(&server).await;
    let shared = tempfile::tempdir().unwrap();
    let url_line = format!("url = \"{}\"", db.url);
    let kek_line = format!("kek_file = \"{}\"", shared.path().join("kek").display());
    let overrides = [
        ("storage", "backend = \"postgres\""),
        ("storage", url_line.as_str()),
        ("keys", kek_line.as_str()),
    ];
    // One after the other: the first initializes the database, the second opens it.
    let a = TestCa::start_with(&overrides);
    let b = TestCa::start_with(&overrides);
    let cell = a.join_cell("cell-1").await;
    // The same credential, talking to the other replica (its revocation set now cached).
    let on_b = CheckedClient::new(
        &b.url(),
        lanyard::client::tls_config(
            a.bundle_pem().as_bytes(),
            Some((&cell.chain_pem, &cell.key_pem)),
        )
        .unwrap(),
    )
    .unwrap();
    let (_k, csr) = lanyard::client::new_key_and_csr().unwrap();
    on_b.post::<_, api::IssuedCertificate>(
        "/v1/instance-certificates",
        &instance_request(&csr, 1),
        None,
    )
    .await
    .unwrap();

    let serial = serial_of(&cell.chain_pem);
    let (s, _, p) = revoke_raw(&a, &serial).await;
    assert_eq!(s, 200, "{p}");
    let revoked_at = std::time::Instant::now();
    let deadline = revoked_at + std::time::Duration::from_secs(20);
    loop {
        let r = on_b
            .post::<_, api::IssuedCertificate>(
                "/v1/instance-certificates",
                &instance_request(&csr, 2),
                None,
            )
            .await;
        match r {
            Err(lanyard::client::ClientError::Api(p)) if p.status == 401 => {
                assert!(p.detail.contains("revoked"), "{}", p.detail);
                break;
            }
            other => assert!(
                std::time::Instant::now() < deadline,
                "replica b still accepts the revoked credential: {other:?}"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    eprintln!(
        "replica b refused the credential revoked on replica a after {:?}",
        revoked_at.elapsed()
    );
    drop((a, b));
    db.drop_it().await;
}
