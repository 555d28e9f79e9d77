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
