//! Black-box tests of the core CA: the real server over real mutual TLS.

mod common;

use std::process::Command;
use std::time::{Duration, SystemTime};

use common::CheckedClient as ApiClient;
use common::*;
use const_oid::db::{rfc4519, rfc5280, rfc5912};
use der::{Decode, Encode};
use lanyard::api;
use lanyard::client::new_key_and_csr;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages,
    SubjectAltName, SubjectKeyIdentifier,
};
use x509_cert::Certificate;

fn certs(chain: &str) -> Vec<Certificate> {
    pem::parse_many(chain)
        .unwrap()
        .iter()
        .map(|p| Certificate::from_der(p.contents()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn rsa_p384_and_ed25519_keys_are_accepted_and_rsa_gets_key_encipherment() {
    let ca = TestCa::start();
    let cell = ca.join_cell("cell-1").await;
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&[&str], bool); 3] = [
        (&["-newkey", "rsa:2048"], true),
        (
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
            false,
        ),
        (&["-newkey", "ed25519"], false),
    ];
    for (i, (args, rsa)) in cases.iter().enumerate() {
        let csr = openssl_csr(tmp.path(), args, &[]);
        let r: api::IssuedCertificate = cell
            .client
            .post(
                "/v1/instance-certificates",
                &instance_request(&csr, 100 + i as u32),
                None,
            )
            .await
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let leaf = &certs(&r.certificate_chain)[0].tbs_certificate;
        let (_, ku) = leaf.get::<KeyUsage>().unwrap().unwrap();
        assert_eq!(ku.0.contains(KeyUsages::KeyEncipherment), *rsa, "{args:?}");
        assert!(ku.0.contains(KeyUsages::DigitalSignature));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_certificate_has_exactly_the_contract_profile() {
    let ca = TestCa::start();
    let cell = ca.join_cell("cell-1").await;
    let (_key, csr) = new_key_and_csr().unwrap();
    let mut req = instance_request(&csr, 1);
    req.container_ip = Some("10.255.4.7".into());
    req.internal_routes = Some(vec!["billing.apps.internal".into()]);
    req.ttl_seconds = Some(3600.into());
    let before = SystemTime::now();
    let r: api::IssuedCertificate = cell
        .client
        .post("/v1/instance-certificates", &req, None)
        .await
        .unwrap();
    let chain = certs(&r.certificate_chain);
    assert_eq!(chain.len(), 2, "leaf then intermediate");
    let leaf = &chain[0].tbs_certificate;
    let inter = &chain[1].tbs_certificate;

    // Subject: four single-valued RDNs in order.
    let rdns: Vec<(der::asn1::ObjectIdentifier, String)> = leaf
        .subject
        .0
        .iter()
        .map(|rdn| {
            assert_eq!(rdn.0.len(), 1, "single-valued RDN");
            let atv = rdn.0.get(0).unwrap();
            (
                atv.oid,
                atv.value
                    .decode_as::<der::asn1::Utf8StringRef>()
                    .unwrap()
                    .as_str()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        rdns,
        vec![
            (
                rfc4519::OU,
                format!("organization:{}", req.organization_guid)
            ),
            (rfc4519::OU, format!("space:{}", req.space_guid)),
            (rfc4519::OU, format!("app:{}", req.app_guid)),
            (rfc4519::CN, req.instance_guid.clone()),
        ]
    );

    // SAN: DNS instance, DNS route, IP, exactly one URI.
    let (_, san) = leaf.get::<SubjectAltName>().unwrap().unwrap();
    let mut dns = vec![];
    let mut ips = vec![];
    let mut uris = vec![];
    for n in san.0 {
        match n {
            GeneralName::DnsName(d) => dns.push(d.to_string()),
            GeneralName::IpAddress(o) => ips.push(o.as_bytes().to_vec()),
            GeneralName::UniformResourceIdentifier(u) => uris.push(u.to_string()),
            other => panic!("unexpected SAN {other:?}"),
        }
    }
    assert_eq!(
        dns,
        vec![
            req.instance_guid.clone(),
            "billing.apps.internal".to_string()
        ]
    );
    assert_eq!(ips, vec![vec![10, 255, 4, 7]]);
    let spiffe = format!(
        "spiffe://lanyard.internal/org/{}/space/{}/app/{}",
        req.organization_guid, req.space_guid, req.app_guid
    );
    assert_eq!(uris, vec![spiffe.clone()]);
    assert_eq!(r.spiffe_id, spiffe);

    // Extensions.
    let (crit, bc) = leaf.get::<BasicConstraints>().unwrap().unwrap();
    assert!(crit && !bc.ca);
    let (crit, ku) = leaf.get::<KeyUsage>().unwrap().unwrap();
    assert!(crit);
    assert_eq!(
        ku.0,
        der::flagset::FlagSet::from(KeyUsages::DigitalSignature)
    );
    let (_, eku) = leaf.get::<ExtendedKeyUsage>().unwrap().unwrap();
    assert_eq!(
        eku.0,
        vec![rfc5280::ID_KP_SERVER_AUTH, rfc5280::ID_KP_CLIENT_AUTH]
    );
    assert!(leaf.get::<SubjectKeyIdentifier>().unwrap().is_some());
    let (_, aki) = leaf.get::<AuthorityKeyIdentifier>().unwrap().unwrap();
    let (_, inter_ski) = inter.get::<SubjectKeyIdentifier>().unwrap().unwrap();
    assert_eq!(aki.key_identifier.unwrap(), inter_ski.0);

    // Serial: 16 bytes, positive, as reported.
    let serial = leaf.serial_number.as_bytes();
    assert_eq!(serial.len(), 16);
    assert!(serial[0] & 0x80 == 0);
    assert_eq!(hex::encode(serial), r.serial);

    // Validity: backdated 60s, one hour long.
    let nb = leaf.validity.not_before.to_system_time();
    let na = leaf.validity.not_after.to_system_time();
    let back = before.duration_since(nb).unwrap();
    assert!(
        back >= Duration::from_secs(58) && back <= Duration::from_secs(63),
        "{back:?}"
    );
    assert_eq!(na.duration_since(nb).unwrap().as_secs(), 3660);

    // Signature and issuer.
    assert_eq!(
        chain[0].signature_algorithm.oid,
        rfc5912::ECDSA_WITH_SHA_256
    );
    assert_eq!(leaf.issuer, inter.subject);
    let (crit, ibc) = inter.get::<BasicConstraints>().unwrap().unwrap();
    assert!(crit && ibc.ca && ibc.path_len_constraint == Some(0));
    assert_eq!(r.authority_id, "1");
    assert_eq!(r.trust_bundle_sequence, 1);

    // The record is queryable.
    let list: api::CertificatesResponse = ca
        .operator()
        .get(&format!(
            "/v1/certificates?instance_guid={}",
            req.instance_guid
        ))
        .await
        .unwrap();
    assert_eq!(list.certificates.len(), 1);
    let rec = &list.certificates[0];
    assert_eq!(rec.serial.to_string(), r.serial);
    assert!(rec.requested_by.ends_with("/lanyard/cell/cell-1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn openssl_verifies_instance_certificates_strictly_for_client_and_server_use() {
    let ca = TestCa::start();
    let cell = ca.join_cell("cell-1").await;
    let r = cell.issue_instance(2).await.unwrap();
    let (_, bundle) = ca
        .anonymous()
        .trust_bundle(None, 0, false)
        .await
        .unwrap()
        .unwrap();
    for purpose in ["sslclient", "sslserver"] {
        let (ok, out) = openssl_verify(&bundle, &r.certificate_chain, purpose);
        assert!(ok, "openssl verify -purpose {purpose}: {out}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_csr_asking_for_ca_and_extra_names_gets_none_of_them() {
    let ca = TestCa::start();
    let cell = ca.join_cell("cell-1").await;
    let tmp = tempfile::tempdir().unwrap();
    let csr = openssl_csr(
        tmp.path(),
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        &[
            "-subj",
            "/CN=root of all evil",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-addext",
            "subjectAltName=DNS:evil.example,URI:spiffe://lanyard.internal/lanyard/operator/evil",
        ],
    );
    let csr_key = x509_cert::request::CertReq::from_der(pem::parse(&csr).unwrap().contents())
        .unwrap()
        .info
        .public_key
        .to_der()
        .unwrap();
    let r: api::IssuedCertificate = cell
        .client
        .post(
            "/v1/instance-certificates",
            &instance_request(&csr, 3),
            None,
        )
        .await
        .unwrap();
    let leaf = &certs(&r.certificate_chain)[0].tbs_certificate;
    let (_, bc) = leaf.get::<BasicConstraints>().unwrap().unwrap();
    assert!(!bc.ca);
    let (_, ku) = leaf.get::<KeyUsage>().unwrap().unwrap();
    assert!(!ku.0.contains(KeyUsages::KeyCertSign));
    let text = format!("{:?}", leaf.get::<SubjectAltName>().unwrap());
    assert!(
        !text.contains("evil") && !text.contains("apps.internal"),
        "{text}"
    );
    assert!(!leaf.subject.to_string().contains("evil"));
    assert!(!text.contains("operator"), "{text}");
    // The key is the CSR's.
    assert_eq!(leaf.subject_public_key_info.to_der().unwrap(), csr_key);
}

#[tokio::test(flavor = "multi_thread")]
async fn component_certificates_carry_the_component_name_and_the_cli_writes_private_files() {
    use std::os::unix::fs::PermissionsExt;
    let ca = TestCa::start();
    let out = ca.dir.path().join("gorouter");
    let (code, stdout, stderr) = ca.cli(&[
        "cert",
        "component",
        "--name",
        "gorouter",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let mode = std::fs::metadata(out.join("key.pem"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let chain = std::fs::read_to_string(out.join("cert.pem")).unwrap();
    let info =
        lanyard::x509::inspect::CertInfo::from_der(pem::parse_many(&chain).unwrap()[0].contents())
            .unwrap();
    assert_eq!(info.common_name.as_deref(), Some("gorouter"));
    assert_eq!(info.dns_names, vec!["gorouter".to_string()]);
    assert_eq!(
        info.uris,
        vec!["spiffe://lanyard.internal/component/gorouter".to_string()]
    );
    let (code, stdout, _) = ca.cli(&["inspect", out.join("cert.pem").to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("spiffe://lanyard.internal/component/gorouter"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_join_token_admits_one_cell_once() {
    let ca = TestCa::start();
    let (code, token, err) = ca.cli(&[
        "token", "create", "--role", "cell", "--name", "cell-9", "--ttl", "5m",
    ]);
    assert_eq!(code, 0, "{err}");
    let token = token.trim().to_string();
    let (_k, csr) = new_key_and_csr().unwrap();
    let anon = ca.anonymous();
    let issued: api::IssuedCertificate = anon
        .post(
            "/v1/join",
            &api::CsrRequest { csr: csr.clone() },
            Some(&token),
        )
        .await
        .unwrap();
    assert_eq!(
        issued.spiffe_id,
        "spiffe://lanyard.internal/lanyard/cell/cell-9"
    );
    let again = anon
        .post::<_, api::IssuedCertificate>("/v1/join", &api::CsrRequest { csr }, Some(&token))
        .await
        .unwrap_err();
    assert!(again.to_string().starts_with("401"), "{again}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cell_renews_its_own_credential_and_keeps_its_name() {
    let ca = TestCa::start();
    let cell = ca.join_cell("cell-7").await;
    let (_k, csr) = new_key_and_csr().unwrap();
    let r: api::IssuedCertificate = cell
        .client
        .post("/v1/cell-credentials", &api::CsrRequest { csr }, None)
        .await
        .unwrap();
    assert_eq!(r.spiffe_id, "spiffe://lanyard.internal/lanyard/cell/cell-7");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_is_answered_in_order_with_a_problem_for_each_bad_item() {
    let ca = TestCa::start();
    let cell = ca.join_cell("cell-1").await;
    let (_k, csr) = new_key_and_csr().unwrap();
    let good = serde_json::to_value(instance_request(&csr, 1)).unwrap();
    let mut bad_guid = good.clone();
    bad_guid["app_guid"] = "NOT-A-GUID".into();
    let mut unknown = good.clone();
    unknown["extra"] = 1.into();
    let body = serde_json::json!({"requests": [good.clone(), bad_guid, unknown, good]});
    let r: api::BatchResponse = cell
        .client
        .post("/v1/instance-certificates/batch", &body, None)
        .await
        .unwrap();
    let statuses: Vec<u16> = r.results.iter().map(|x| x.status).collect();
    assert_eq!(statuses, vec![201, 422, 400, 201]);
    assert!(r.results[1]
        .problem
        .as_ref()
        .unwrap()
        .detail
        .contains("app_guid"));
    assert_ne!(
        r.results[0].certificate.as_ref().unwrap().serial,
        r.results[3].certificate.as_ref().unwrap().serial
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_trust_bundle_comes_as_pem_or_spiffe_json_with_an_etag_and_long_polls() {
    let ca = TestCa::start();
    let (s, ct, body, h) = raw(&ca, None, "GET", "/v1/trust-bundle", None, &[]).await;
    assert_eq!(s, 200);
    assert_eq!(ct, "application/x-pem-file");
    assert_eq!(h.get("etag").unwrap(), "\"1\"");
    assert_eq!(String::from_utf8(body).unwrap(), ca.bundle_pem());

    let (s, ct, body, _) = raw(
        &ca,
        None,
        "GET",
        "/v1/trust-bundle",
        None,
        &[("accept", "application/json")],
    )
    .await;
    assert_eq!(s, 200);
    assert!(ct.starts_with("application/json"));
    let b: api::SpiffeBundle = serde_json::from_slice(&body).unwrap();
    assert_eq!(b.spiffe_sequence, 1);
    assert_eq!(b.keys.len(), 1);
    assert_eq!(
        (
            b.keys[0].use_.as_str(),
            b.keys[0].kty.as_str(),
            b.keys[0].crv.as_str()
        ),
        ("x509-svid", "EC", "P-256")
    );

    // Unchanged: 304 at once without wait, and after the wait with one.
    let (s, _, _, _) = raw(
        &ca,
        None,
        "GET",
        "/v1/trust-bundle",
        None,
        &[("if-none-match", "\"1\"")],
    )
    .await;
    assert_eq!(s, 304);
    // A poll that a change will answer, sent now so that it is held by the time the
    // one-second poll below has come back.
    let anon = ca.anonymous();
    let poll = tokio::spawn(async move { anon.trust_bundle(Some(1), 30, false).await });
    let t = std::time::Instant::now();
    let (s, _, _, _) = raw(
        &ca,
        None,
        "GET",
        "/v1/trust-bundle?wait=1",
        None,
        &[("if-none-match", "\"1\"")],
    )
    .await;
    assert_eq!(s, 304);
    // The wait is what is under test: the server held the request instead of answering at
    // once. A lower bound only, which a slow machine cannot break.
    assert!(t.elapsed() >= Duration::from_millis(900));
    assert!(!poll.is_finished(), "a poll without a change came back");

    // A change answers the held poll with the new bundle.
    let _: api::AuthorityView = ca
        .operator()
        .post("/v1/authorities/prepare", &serde_json::json!({}), None)
        .await
        .unwrap();
    let (seq, pem_text) = poll.await.unwrap().unwrap().unwrap();
    assert_eq!(seq, 2);
    assert_eq!(pem::parse_many(pem_text).unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn records_bundle_and_old_leaves_survive_a_restart() {
    let mut ca = TestCa::start();
    let cell = ca.join_cell("cell-1").await;
    let r = cell.issue_instance(5).await.unwrap();
    let bundle_before = ca.bundle_pem();
    ca.restart();
    let list: api::CertificatesResponse = ca
        .operator()
        .get("/v1/certificates?limit=1000")
        .await
        .unwrap();
    assert!(list.certificates.iter().any(|c| c.serial == r.serial));
    let (_, bundle_after) = ca
        .anonymous()
        .trust_bundle(None, 0, false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bundle_before, bundle_after);
    let (ok, out) = openssl_verify(&bundle_after, &r.certificate_chain, "sslclient");
    assert!(ok, "{out}");
    // The cell credential from before the restart still works.
    let _ = cell.issue_instance(6).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_kek_is_a_clear_start_up_error_and_nothing_is_reinitialized() {
    let mut ca = TestCa::start();
    ca.stop();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&ca.config)
        .env(
            "LANYARD_KEK",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("key-encryption key does not match"),
        "{stderr}"
    );
    // `init` on the existing state refuses and touches nothing.
    let (code, _, err) = ca.cli(&["init"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already initialized"), "{err}");
    ca.spawn();
    let v: api::AuthoritiesResponse = ca.operator().get("/v1/authorities").await.unwrap();
    assert_eq!(v.authorities.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_state_file_holds_a_ca_private_key_in_plaintext() {
    let mut ca = TestCa::start();
    ca.stop();
    let mut files = vec![ca.state_dir()];
    let mut seen = 0;
    while let Some(p) = files.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                files.push(e.unwrap().path());
            }
            continue;
        }
        seen += 1;
        if p.ends_with("key.pem") {
            continue; // the operator's own credential key, mode 0600
        }
        let data = std::fs::read(&p).unwrap();
        let text = String::from_utf8_lossy(&data);
        assert!(
            !text.contains("PRIVATE KEY"),
            "{} holds a PEM private key",
            p.display()
        );
        // A PKCS#8 P-256 key DER starts with these bytes (SEQUENCE, INTEGER 0, AlgorithmIdentifier id-ecPublicKey).
        let marker = [
            0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,
        ];
        assert!(
            !data.windows(marker.len()).any(|w| w == marker),
            "{} holds a DER private key",
            p.display()
        );
    }
    assert!(seen > 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_certificate_names_localhost_and_127_0_0_1_and_curl_trusts_it() {
    let ca = TestCa::start();
    let bundle = ca.operator_dir().join("trust-bundle.pem");
    for host in ["localhost", "127.0.0.1"] {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--cacert"])
            .arg(&bundle)
            .arg(format!("https://{host}:{}/healthz", ca.port))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--cacert"])
        .arg(&bundle)
        .arg("--cert")
        .arg(ca.operator_dir().join("cert.pem"))
        .arg("--key")
        .arg(ca.operator_dir().join("key.pem"))
        .arg(format!("https://localhost:{}/v1/authorities", ca.port))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"active\""));
}

/// The certificate the server presents to a new connection (verified by the handshake).
async fn server_certificate(ca: &TestCa) -> lanyard::x509::inspect::CertInfo {
    let tls = lanyard::client::tls_config(ca.bundle_pem().as_bytes(), None).unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", ca.port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let s = connector.connect(name, tcp).await.unwrap();
    let cert = s.get_ref().1.peer_certificates().unwrap()[0].clone();
    lanyard::x509::inspect::CertInfo::from_der(&cert).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_renews_its_own_certificate_before_it_expires_without_a_restart() {
    let ca = TestCa::start_with(&[
        ("issuance", "min_ttl = \"1s\""),
        ("issuance", "default_ttl = \"2s\""),
        ("issuance", "backdate = \"0s\""),
        ("rotation", "check_interval = \"200ms\""),
    ]);
    let pid = ca.child.as_ref().unwrap().id();
    // Watch the certificate the server presents until it has been renewed twice.
    let mut seen: Vec<lanyard::x509::inspect::CertInfo> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < 3 {
        let info = server_certificate(&ca).await;
        // The handshake verified it: a certificate the server shows is never expired.
        if seen.last().map(|c| &c.serial) != Some(&info.serial) {
            seen.push(info);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server certificate changed {} times: {}",
            seen.len() - 1,
            ca.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Renewed before it expired, and not far too early: each successor was issued (with no
    // backdating, its notBefore) after the first quarter of its predecessor's life (the
    // server renews at about two thirds). Times from the certificates, not the test's clock.
    for w in seen.windows(2) {
        let life = w[0].not_after.duration_since(w[0].not_before).unwrap();
        assert!(w[1].not_before < w[0].not_after, "renewed after expiry");
        assert!(
            w[1].not_before >= w[0].not_before + life / 4,
            "renewed far too early: {:?} then {:?}",
            w[0].not_before,
            w[1].not_before
        );
    }
    assert_eq!(ca.child.as_ref().unwrap().id(), pid);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bundle_command_prints_pem_and_spiffe_and_watches_for_changes() {
    let ca = TestCa::start();
    let (code, out, err) = ca.cli(&["bundle"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, ca.bundle_pem());
    let (code, out, _) = ca.cli(&["bundle", "--format", "spiffe"]);
    assert_eq!(code, 0);
    let b: api::SpiffeBundle = serde_json::from_str(&out).unwrap();
    assert_eq!(b.keys.len(), 1);
    let mut watch = std::process::Command::new(BIN)
        .args(["bundle", "--watch", "--config"])
        .arg(&ca.config)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read the watcher's output on a thread; prepare only once the first version arrived.
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut text = String::new();
    let count = |t: &str| t.matches("END CERTIFICATE").count();
    while count(&text) < 1 {
        text += &(rx.recv_timeout(Duration::from_secs(30)).unwrap() + "\n");
    }
    let _: api::AuthorityView = ca
        .operator()
        .post("/v1/authorities/prepare", &serde_json::json!({}), None)
        .await
        .unwrap();
    while count(&text) < 3 {
        text += &(rx.recv_timeout(Duration::from_secs(30)).unwrap() + "\n");
    }
    // It follows the CA through a whole rotation (the server's certificate moves to a root
    // the watcher did not trust when it started).
    let op = ca.operator();
    let _: api::AuthorityView = op
        .post(
            "/v1/authorities/2/activate",
            &api::ForceRequest { force: true },
            None,
        )
        .await
        .unwrap();
    let op = ApiClient::from_credential_dir(&ca.url(), &ca.operator_dir()).unwrap();
    let _: api::AuthorityView = op
        .post(
            "/v1/authorities/1/retire",
            &api::ForceRequest { force: true },
            None,
        )
        .await
        .unwrap();
    while !text.contains("# trust bundle sequence 4") || count(&text) < 6 {
        text += &(rx.recv_timeout(Duration::from_secs(30)).unwrap() + "\n");
    }
    let _ = watch.kill();
    let _ = watch.wait();
    // Versions 1 to 4: one root, two, two (active moved first), one.
    assert_eq!(text.matches("BEGIN CERTIFICATE").count(), 6, "{text}");
    assert!(
        text.contains("# trust bundle sequence 1") && text.contains("# trust bundle sequence 3")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bench_command_issues_what_it_reports_one_by_one_and_in_batches() {
    let ca = TestCa::start();
    let (code, out, err) = ca.cli(&[
        "bench",
        "--requests",
        "40",
        "--concurrency",
        "4",
        "--watchers",
        "5",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("issued 40 certificates (0 failed requests)"),
        "{out}"
    );
    assert!(out.contains("p99"), "{out}");
    let (code, out, err) = ca.cli(&[
        "bench",
        "--requests",
        "100",
        "--concurrency",
        "2",
        "--batch-size",
        "50",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("issued 100 certificates (0 failed requests)"),
        "{out}"
    );
    let list: api::CertificatesResponse = ca
        .operator()
        .get("/v1/certificates?limit=1000")
        .await
        .unwrap();
    let instances = list
        .certificates
        .iter()
        .filter(|c| c.kind == "instance")
        .count();
    assert_eq!(instances, 140);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopping_server_answers_held_long_polls_and_exits_without_waiting_for_them() {
    let mut ca = TestCa::start();
    let anon = ca.anonymous();
    let poll = tokio::spawn(async move { anon.trust_bundle(Some(1), 120, false).await });
    // A one-second poll sent after it: once that one is answered, the first is held.
    let (s, _, _, _) = raw(
        &ca,
        None,
        "GET",
        "/v1/trust-bundle?wait=1",
        None,
        &[("if-none-match", "\"1\"")],
    )
    .await;
    assert_eq!(s, 304);
    assert!(!poll.is_finished());
    // SIGTERM, then the exit: on its own and cleanly (a server that waited for the held poll
    // would still be there after the grace period, and be killed).
    let child = ca.child.take().unwrap();
    let status = tokio::task::spawn_blocking(move || terminate(child, Duration::from_secs(30)))
        .await
        .unwrap();
    let status = status.expect("the server did not stop within 30 s of SIGTERM");
    assert!(status.success(), "{status}");
    let answer = poll.await.unwrap();
    assert!(
        matches!(answer, Ok(None)),
        "the held poll should end with 304: {answer:?}"
    );
    assert!(ca.log_text().contains("lanyard stopped"));
}
