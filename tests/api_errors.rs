//! Every error row of the contract, over real mutual TLS: status and problem+json.

mod common;

use std::process::Command;

use common::*;
use lanyard::api;
use lanyard::client::new_key_and_csr;

fn check_problem(status: u16, ct: &str, body: &[u8], want: u16, detail_has: &str) {
    assert_eq!(status, want, "body: {}", String::from_utf8_lossy(body));
    assert_eq!(ct, "application/problem+json");
    let p: serde_json::Value = serde_json::from_slice(body).unwrap();
    for k in ["type", "title", "status", "detail"] {
        assert!(p.get(k).is_some(), "problem lacks {k}: {p}");
    }
    assert_eq!(p["status"], want);
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.contains(detail_has),
        "detail `{detail}` lacks `{detail_has}`"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_contract_error_is_a_problem_with_the_right_status() {
    let ca = TestCa::start();
    let cell = ca.join_cell("cell-1").await;
    let cell_id = Some((cell.chain_pem.as_str(), cell.key_pem.as_str()));
    let op_chain = std::fs::read_to_string(ca.operator_dir().join("cert.pem")).unwrap();
    let op_key = std::fs::read_to_string(ca.operator_dir().join("key.pem")).unwrap();
    let op = Some((op_chain.as_str(), op_key.as_str()));
    let (_k, csr) = new_key_and_csr().unwrap();
    let good = serde_json::to_value(instance_request(&csr, 1)).unwrap();
    let post = |id, path: &'static str, body: Vec<u8>| {
        let ca = &ca;
        async move { raw(ca, id, "POST", path, Some(body), &[]).await }
    };
    let with = |field: &str, v: serde_json::Value| {
        let mut g = good.clone();
        g[field] = v;
        serde_json::to_vec(&g).unwrap()
    };

    // 400: not JSON, unknown field, missing field, wrong type.
    let (s, ct, b, _) = post(cell_id, "/v1/instance-certificates", b"{not json".to_vec()).await;
    check_problem(s, &ct, &b, 400, "not valid JSON");
    let (s, ct, b, _) = post(
        cell_id,
        "/v1/instance-certificates",
        with("colour", "red".into()),
    )
    .await;
    check_problem(s, &ct, &b, 400, "colour");
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("app_guid");
    let (s, ct, b, _) = post(
        cell_id,
        "/v1/instance-certificates",
        serde_json::to_vec(&missing).unwrap(),
    )
    .await;
    check_problem(s, &ct, &b, 400, "app_guid");
    let (s, ct, b, _) = post(
        cell_id,
        "/v1/instance-certificates",
        with("ttl_seconds", "long".into()),
    )
    .await;
    check_problem(s, &ct, &b, 400, "schema");

    // 401: no client certificate, untrusted certificate, bad join token.
    let (s, ct, b, _) = post(
        None,
        "/v1/instance-certificates",
        serde_json::to_vec(&good).unwrap(),
    )
    .await;
    check_problem(s, &ct, &b, 401, "client certificate");
    let foreign_key = rcgen::KeyPair::generate().unwrap();
    let mut fp = rcgen::CertificateParams::new(vec![]).unwrap();
    fp.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://lanyard.internal/lanyard/cell/cell-1"
            .try_into()
            .unwrap(),
    )];
    let foreign = fp.self_signed(&foreign_key).unwrap().pem();
    let fk = foreign_key.serialize_pem();
    let (s, ct, b, _) = post(
        Some((&foreign, &fk)),
        "/v1/instance-certificates",
        serde_json::to_vec(&good).unwrap(),
    )
    .await;
    check_problem(s, &ct, &b, 401, "does not chain");
    let (s, ct, b, _) = raw(
        &ca,
        None,
        "POST",
        "/v1/join",
        Some(serde_json::to_vec(&api::CsrRequest { csr: csr.clone() }).unwrap()),
        &[("authorization", "Bearer lyt_nope")],
    )
    .await;
    check_problem(s, &ct, &b, 401, "join token");

    // 403: wrong role both ways.
    let (s, ct, b, _) = post(
        op,
        "/v1/instance-certificates",
        serde_json::to_vec(&good).unwrap(),
    )
    .await;
    check_problem(s, &ct, &b, 403, "cell role");
    let (s, ct, b, _) = post(
        cell_id,
        "/v1/join-tokens",
        br#"{"role":"cell","name":"x"}"#.to_vec(),
    )
    .await;
    check_problem(s, &ct, &b, 403, "operator role");
    let (s, ct, b, _) = post(cell_id, "/v1/authorities/prepare", b"{}".to_vec()).await;
    check_problem(s, &ct, &b, 403, "operator role");

    // 404: unknown path, unknown authority, unknown serial.
    let (s, ct, b, _) = raw(&ca, None, "GET", "/v1/nothing", None, &[]).await;
    check_problem(s, &ct, &b, 404, "no such endpoint");
    let (s, ct, b, _) = post(op, "/v1/authorities/42/activate", b"{}".to_vec()).await;
    check_problem(s, &ct, &b, 404, "42");
    let (s, ct, b, _) = post(
        op,
        "/v1/certificates/0123456789abcdef0123456789abcdef/revoke",
        b"{}".to_vec(),
    )
    .await;
    check_problem(s, &ct, &b, 404, "0123456789abcdef0123456789abcdef");

    // A TTL too large for any integer type is still an out-of-range TTL; a fraction is not
    // an integer at all.
    let (s, ct, b, _) = post(cell_id, "/v1/instance-certificates", {
        let mut t = serde_json::to_string(&good).unwrap();
        t.pop();
        (t + ",\"ttl_seconds\":1000000000000000000000000000000}").into_bytes()
    })
    .await;
    check_problem(s, &ct, &b, 422, "ttl_seconds");
    let (s, ct, b, _) = post(
        cell_id,
        "/v1/instance-certificates",
        with("ttl_seconds", serde_json::json!(1.5)),
    )
    .await;
    check_problem(s, &ct, &b, 400, "integer");
    // prepare takes an empty body or {} only.
    let (s, ct, b, _) = post(op, "/v1/authorities/prepare", br#"{"x":1}"#.to_vec()).await;
    check_problem(s, &ct, &b, 400, "x");
    // Authentication comes before the body on /v1/join.
    let (s, ct, b, _) = raw(
        &ca,
        None,
        "POST",
        "/v1/join",
        Some(b"{oops".to_vec()),
        &[("authorization", "Bearer lyt_nope")],
    )
    .await;
    check_problem(s, &ct, &b, 401, "join token");
    // Any whole number of seconds is a valid wait (clamped to 300).
    let (s, _, _, _) = raw(
        &ca,
        None,
        "GET",
        "/v1/trust-bundle?wait=99999999999999999999999",
        None,
        &[],
    )
    .await;
    assert_eq!(s, 200);

    // 405 and a bad path parameter are problems too.
    let (s, ct, b, _) = raw(&ca, None, "GET", "/v1/instance-certificates", None, &[]).await;
    check_problem(s, &ct, &b, 405, "method");
    let (s, ct, b, _) = post(op, "/v1/authorities/%FF/activate", b"{}".to_vec()).await;
    check_problem(s, &ct, &b, 400, "path");

    // 409: prepare twice; activate before the propagation delay says how long is left.
    let (s, _, b, _) = post(op, "/v1/authorities/prepare", b"{}".to_vec()).await;
    assert_eq!(s, 201, "{}", String::from_utf8_lossy(&b));
    let (s, ct, b, _) = post(op, "/v1/authorities/prepare", b"{}".to_vec()).await;
    check_problem(s, &ct, &b, 409, "already prepared");
    let (s, ct, b, _) = post(op, "/v1/authorities/2/activate", b"{}".to_vec()).await;
    check_problem(s, &ct, &b, 409, "left");
    let (s, ct, b, _) = post(op, "/v1/authorities/1/retire", b"{}".to_vec()).await;
    check_problem(s, &ct, &b, 409, "active");

    // 413: body over 1 MiB; batch over 1000.
    let big = vec![b' '; 1024 * 1024 + 10];
    let (s, ct, b, _) = post(cell_id, "/v1/instance-certificates", big).await;
    check_problem(s, &ct, &b, 413, "limit");
    let many = serde_json::json!({"requests": vec![serde_json::json!({}); 1001]});
    let (s, ct, b, _) = post(
        cell_id,
        "/v1/instance-certificates/batch",
        serde_json::to_vec(&many).unwrap(),
    )
    .await;
    check_problem(s, &ct, &b, 413, "1000");

    // 422: GUID, IP, route, CSR, CSR signature, key type, TTL.
    for (field, value, hint) in [
        (
            "instance_guid",
            serde_json::json!("Not-A-Guid"),
            "instance_guid",
        ),
        ("app_guid", serde_json::json!("-abc"), "app_guid"),
        ("space_guid", serde_json::json!(""), "space_guid"),
        (
            "organization_guid",
            serde_json::json!("a".repeat(64)),
            "organization_guid",
        ),
        (
            "container_ip",
            serde_json::json!("10.0.0.300"),
            "container_ip",
        ),
        (
            "internal_routes",
            serde_json::json!(["ok.apps.internal", "bad route"]),
            "internal_routes[1]",
        ),
        ("csr", serde_json::json!("hello"), "csr"),
        ("ttl_seconds", serde_json::json!(10), "ttl_seconds"),
        ("ttl_seconds", serde_json::json!(30 * 86400), "ttl_seconds"),
        ("ttl_seconds", serde_json::json!(-5), "ttl_seconds"),
    ] {
        let (s, ct, b, _) = post(cell_id, "/v1/instance-certificates", with(field, value)).await;
        check_problem(s, &ct, &b, 422, hint);
    }
    let mut der = pem::parse(&csr).unwrap().into_contents();
    let n = der.len();
    der[n - 3] ^= 0x01;
    let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
    let (s, ct, b, _) = post(
        cell_id,
        "/v1/instance-certificates",
        with("csr", tampered.into()),
    )
    .await;
    check_problem(s, &ct, &b, 422, "csr");
    let tmp = tempfile::tempdir().unwrap();
    for args in [
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-521"][..],
        &["-newkey", "rsa:1024"][..],
    ] {
        let weird = openssl_csr(tmp.path(), args, &[]);
        let (s, ct, b, _) = post(
            cell_id,
            "/v1/instance-certificates",
            with("csr", weird.into()),
        )
        .await;
        check_problem(s, &ct, &b, 422, "csr");
    }
    let (s, ct, b, _) = post(
        op,
        "/v1/join-tokens",
        br#"{"role":"operator","name":"x"}"#.to_vec(),
    )
    .await;
    check_problem(s, &ct, &b, 422, "role");
    let (s, ct, b, _) = post(
        op,
        "/v1/join-tokens",
        br#"{"role":"cell","name":"x","ttl_seconds":0}"#.to_vec(),
    )
    .await;
    check_problem(s, &ct, &b, 422, "ttl_seconds");
    let (s, ct, b, _) = raw(&ca, op, "GET", "/v1/certificates?app_guid=XYZ", None, &[]).await;
    check_problem(s, &ct, &b, 422, "app_guid");

    // 429: a burst of bad join tokens from one address.
    let mut last = 0;
    for _ in 0..25 {
        let (s, ct, b, h) = raw(
            &ca,
            None,
            "POST",
            "/v1/join",
            Some(serde_json::to_vec(&api::CsrRequest { csr: csr.clone() }).unwrap()),
            &[("authorization", "Bearer lyt_guess")],
        )
        .await;
        last = s;
        if s == 429 {
            check_problem(s, &ct, &b, 429, "join");
            assert_eq!(h.get("retry-after").unwrap(), "60");
            break;
        }
    }
    assert_eq!(last, 429);

    // A valid token still works from the same address: only failures are limited.
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
    let _: api::IssuedCertificate = ca
        .anonymous()
        .post(
            "/v1/join",
            &api::CsrRequest { csr: csr.clone() },
            Some(&t.token),
        )
        .await
        .unwrap();

    // The server is still healthy after all of this.
    let (s, _, _, _) = raw(&ca, None, "GET", "/healthz", None, &[]).await;
    assert_eq!(s, 200);
    assert!(!ca.log_text().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_credential_is_refused_and_recorded() {
    let ca = TestCa::start();
    let cell = ca.join_cell("cell-2").await;
    let serial = lanyard::x509::inspect::CertInfo::from_der(
        pem::parse_many(&cell.chain_pem).unwrap()[0].contents(),
    )
    .unwrap()
    .serial;
    // A kept-alive connection from before the revocation loses access too.
    let _ = cell.issue_instance(1).await.unwrap();
    let (code, out, err) = ca.cli(&["revoke", &serial, "--reason", "keyCompromise", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("revoked_at"), "{out}");
    let e = cell.issue_instance(1).await.unwrap_err();
    assert!(e.to_string().contains("revoked"), "{e}");
    // A retried revoke is harmless: it succeeds and answers the record as it is.
    let (code, again, err) = ca.cli(&["revoke", &serial, "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(again.contains("revoked_at"), "{again}");

    // The generation's CRL lists it, and openssl verifies the CRL's signature.
    let (s, ct, der, _) = raw(&ca, None, "GET", "/v1/crl/1", None, &[]).await;
    assert_eq!(s, 200);
    assert_eq!(ct, "application/pkix-crl");
    let tmp = tempfile::tempdir().unwrap();
    let crl_path = tmp.path().join("crl.der");
    std::fs::write(&crl_path, der).unwrap();
    let chain = pem_blocks(&cell.chain_pem);
    let issuers = file(
        tmp.path(),
        "issuers.pem",
        &(chain[1].clone() + &ca.bundle_pem()),
    );
    let out = Command::new("openssl")
        .args(["crl", "-inform", "DER", "-noout", "-text", "-in"])
        .arg(&crl_path)
        .arg("-CAfile")
        .arg(&issuers)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_uppercase()
        + &String::from_utf8_lossy(&out.stderr).to_uppercase();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("VERIFY OK"), "{text}");
    assert!(text.contains(&serial.to_uppercase()), "{text}");
    assert!(
        text.contains("KEY COMPROMISE"),
        "the reason code is in the CRL: {text}"
    );
    let (s, _, _, _) = raw(&ca, None, "GET", "/v1/crl/9", None, &[]).await;
    assert_eq!(s, 404);

    // Metrics count what happened.
    let (s, ct, body, _) = raw(&ca, None, "GET", "/metrics", None, &[]).await;
    assert_eq!(s, 200);
    assert!(ct.starts_with("text/plain"));
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains("lanyard_certificates_issued_total{kind=\"cell\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("lanyard_authority_generations{state=\"active\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("lanyard_http_responses_total{class=\"4xx\"}"),
        "{text}"
    );
}

#[test]
fn a_bad_config_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &[("issuance", "max_ttl = \"forever\"")]);
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("issuance.max_ttl") && err.starts_with("lanyard: error:"),
        "{err}"
    );
    let cfg = write_config(dir.path(), &[("listen", "colour = \"red\"")]);
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("colour"));
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("LANYARD_LISTEN_ADDRESS", "not-an-address")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    for args in [
        &["frobnicate"][..],
        &["token"][..],
        &["bundle", "--server", "notaurl", "--credential", "/tmp"][..],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("lanyard: error:") && err.trim_end().lines().count() == 1,
            "{args:?}: {err}"
        );
    }
}

#[test]
fn an_environment_variable_overrides_a_config_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &[]);
    let out = Command::new(BIN)
        .args(["init", "--config"])
        .arg(&cfg)
        .env("LANYARD_TRUST_DOMAIN", "Bad_Domain")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("trust_domain"));
    let out = Command::new(BIN)
        .args(["init", "--config"])
        .arg(&cfg)
        .env("LANYARD_TRUST_DOMAIN", "cf.example")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let op =
        std::fs::read_to_string(dir.path().join("data/credentials/operator/cert.pem")).unwrap();
    let info =
        lanyard::x509::inspect::CertInfo::from_der(pem::parse_many(&op).unwrap()[0].contents())
            .unwrap();
    assert_eq!(
        info.uris,
        vec!["spiffe://cf.example/lanyard/operator/admin".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_lists_every_route_of_the_contract() {
    use utoipa::OpenApi;
    let ca = TestCa::start();
    let (s, ct, body, _) = raw(&ca, None, "GET", "/v1/openapi.json", None, &[]).await;
    assert_eq!(s, 200);
    assert!(ct.starts_with("application/json"));
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    // The served document is the one generated from the code (the same operations and
    // schemas), with the rules that come from the configuration written in: the TTL range
    // (the dev config's 60s to 7d), the addresses and names the CA refuses.
    let generated = serde_json::to_value(lanyard::http::ApiDoc::openapi()).unwrap();
    assert_eq!(doc["paths"], generated["paths"]);
    let names = |d: &serde_json::Value| {
        d["components"]["schemas"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&doc), names(&generated));
    let schemas = &doc["components"]["schemas"];
    let ttl = &schemas["InstanceCertificateRequest"]["properties"]["ttl_seconds"];
    assert_eq!(
        (&ttl["minimum"], &ttl["maximum"]),
        (&60.into(), &604800.into())
    );
    assert!(schemas["IpAddress"]["not"].is_object());
    assert!(schemas["RouteName"]["not"]
        .to_string()
        .contains("lanyard-server"));
    for (method, path, role) in [
        ("post", "/v1/instance-certificates", "cell"),
        ("post", "/v1/instance-certificates/batch", "cell"),
        ("post", "/v1/component-certificates", "operator"),
        ("post", "/v1/component-credentials", "component"),
        ("post", "/v1/join-tokens", "operator"),
        ("post", "/v1/join", "join-token"),
        ("post", "/v1/cell-credentials", "cell"),
        ("post", "/v1/operator-credentials", "operator"),
        ("get", "/v1/trust-bundle", "public"),
        ("get", "/v1/authorities", "operator"),
        ("post", "/v1/authorities/prepare", "operator"),
        ("post", "/v1/authorities/{id}/activate", "operator"),
        ("post", "/v1/authorities/{id}/retire", "operator"),
        ("get", "/v1/certificates", "operator"),
        ("post", "/v1/certificates/{serial}/revoke", "operator"),
        ("get", "/v1/crl/{authority_id}", "public"),
        ("get", "/healthz", "public"),
        ("get", "/readyz", "public"),
        ("get", "/metrics", "public"),
        ("get", "/v1/openapi.json", "public"),
    ] {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} missing");
        assert_eq!(op["x-lanyard-role"], role, "{method} {path}");
    }
    // Every answer so far (this binary's other tests may run alongside) was checked, and the
    // check does refuse what the document does not allow.
    assert!(common::openapi::checked() >= 1);
    let refused = |method: &str, path: &str, status: u16, ct: &str, body: &str| {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            common::openapi::check(&doc, method, path, status, ct, body.as_bytes())
        }));
        assert!(r.is_err(), "accepted {status} {ct} {body}");
    };
    let token = r#"{"token": "t", "expires_at": "2030-01-01T00:00:00Z"}"#;
    common::openapi::check(
        &doc,
        "POST",
        "/v1/join-tokens",
        201,
        "application/json",
        token.as_bytes(),
    );
    // A missing field, an undocumented field, a bad date, an undocumented status, a wrong
    // content type, a problem that is not one.
    refused(
        "POST",
        "/v1/join-tokens",
        201,
        "application/json",
        r#"{"token": "t"}"#,
    );
    refused(
        "POST",
        "/v1/join-tokens",
        201,
        "application/json",
        &token.replace('}', r#", "x": 1}"#),
    );
    refused(
        "POST",
        "/v1/join-tokens",
        201,
        "application/json",
        &token.replace("2030-01-01T00:00:00Z", "soon"),
    );
    refused("POST", "/v1/join-tokens", 418, "application/json", token);
    refused("POST", "/v1/join-tokens", 201, "text/plain", token);
    refused(
        "POST",
        "/v1/join-tokens",
        403,
        "application/problem+json",
        r#"{"status": 403}"#,
    );
    refused("GET", "/v1/join-tokens", 200, "application/json", "{}");
}

#[tokio::test(flavor = "multi_thread")]
async fn nobody_but_the_ca_can_get_a_certificate_that_passes_for_the_ca_server() {
    let ca = TestCa::start();
    let cell = ca.join_cell("cell-1").await;
    let cell_id = Some((cell.chain_pem.as_str(), cell.key_pem.as_str()));
    let (_k, csr) = new_key_and_csr().unwrap();
    let mut good = serde_json::to_value(instance_request(&csr, 7)).unwrap();
    for (field, value) in [
        ("internal_routes", serde_json::json!(["localhost"])),
        ("internal_routes", serde_json::json!(["lanyard-server"])),
        ("internal_routes", serde_json::json!(["lanyard.internal"])),
        ("container_ip", serde_json::json!("127.0.0.1")),
        ("container_ip", serde_json::json!("::1")),
        ("container_ip", serde_json::json!("0.0.0.0")),
    ] {
        good[field] = value;
        let (s, ct, b, _) = raw(
            &ca,
            cell_id,
            "POST",
            "/v1/instance-certificates",
            Some(serde_json::to_vec(&good).unwrap()),
            &[],
        )
        .await;
        check_problem(s, &ct, &b, 422, field);
        good = serde_json::to_value(instance_request(&csr, 7)).unwrap();
    }
    let op_chain = std::fs::read_to_string(ca.operator_dir().join("cert.pem")).unwrap();
    let op_key = std::fs::read_to_string(ca.operator_dir().join("key.pem")).unwrap();
    let body = serde_json::json!({"csr": csr, "name": "lanyard-server"});
    let (s, ct, b, _) = raw(
        &ca,
        Some((&op_chain, &op_key)),
        "POST",
        "/v1/component-certificates",
        Some(serde_json::to_vec(&body).unwrap()),
        &[],
    )
    .await;
    check_problem(s, &ct, &b, 422, "reserved");

    // A server presenting any other certificate from the bundle is refused by the API client,
    // even when the host name matches.
    let out = ca.dir.path().join("impostor");
    let (code, _, err) = ca.cli(&[
        "cert",
        "component",
        "--name",
        "localhost",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = ca.cli(&[
        "cert",
        "component",
        "--name",
        "impostor",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let chain = std::fs::read_to_string(out.join("cert.pem")).unwrap();
    let key = std::fs::read_to_string(out.join("key.pem")).unwrap();
    let ders: Vec<rustls::pki_types::CertificateDer<'static>> = pem::parse_many(&chain)
        .unwrap()
        .into_iter()
        .map(|p| p.into_contents().into())
        .collect();
    let key =
        rustls::pki_types::PrivateKeyDer::Pkcs8(pem::parse(&key).unwrap().into_contents().into());
    let cfg = rustls::ServerConfig::builder_with_provider(lanyard::tls_provider::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(ders, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = acceptor.accept(tcp).await;
        }
    });
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        lanyard::client::tls_config(ca.bundle_pem().as_bytes(), None).unwrap(),
    ));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("impostor").unwrap();
    let e = connector.connect(name, tcp).await.unwrap_err();
    assert!(
        e.to_string().contains("ApplicationVerificationFailure"),
        "{e}"
    );
}

/// `curl` POSTing the file `body` to `path` without `Expect: 100-continue` (so the body
/// is sent at once, whatever the server answers), with `extra` arguments: exit code, status
/// and stderr, and the answer's content type and body.
fn curl_post_file(
    ca: &TestCa,
    path: &str,
    body: &std::path::Path,
    extra: &[&str],
) -> (i32, u16, String, String, Vec<u8>) {
    let tmp = tempfile::tempdir().unwrap();
    let out_file = tmp.path().join("answer");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60", "-X", "POST", "--cacert"])
        .arg(ca.operator_dir().join("trust-bundle.pem"))
        .args(["-H", "content-type: application/json", "-H", "Expect:"])
        .args(extra)
        .arg("--data-binary")
        .arg(format!("@{}", body.display()))
        .args(["-o"])
        .arg(&out_file)
        .args(["-w", "%{http_code} %{content_type}"])
        .arg(format!("https://127.0.0.1:{}{path}", ca.port))
        .output()
        .unwrap();
    let written = String::from_utf8_lossy(&out.stdout).into_owned();
    let (code, ct) = written.split_once(' ').unwrap_or((&written, ""));
    (
        out.status.code().unwrap_or(-1),
        code.parse().unwrap_or(0),
        ct.to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        std::fs::read(&out_file).unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_before_a_large_body_was_read_still_reaches_curl_as_a_problem() {
    let ca = TestCa::start();
    let dir = tempfile::tempdir().unwrap();
    let op = ca.operator_dir();
    let (cert, key) = (op.join("cert.pem"), op.join("key.pem"));
    let operator = [
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];
    // Under and over the 1 MiB limit (both within what the server reads before refusing).
    for size in [900 * 1024, 3 * 1024 * 1024] {
        let body = file(dir.path(), &format!("body-{size}"), &"a".repeat(size));
        let cases: [(&str, &[&str], u16, &str); 5] = [
            ("/v1/instance-certificates", &[], 401, "client certificate"),
            ("/v1/instance-certificates", &operator, 403, "cell role"),
            ("/v1/join-tokens", &[], 401, "client certificate"),
            ("/v1/join", &[], 401, "join token"),
            (
                "/v1/join",
                &["-H", "Authorization: bearer lyt_nope"],
                401,
                "",
            ),
        ];
        for (path, extra, want, detail) in cases {
            // A few rounds: a connection reset depends on timing.
            for _ in 0..3 {
                let (exit, status, ct, err, answer) = curl_post_file(&ca, path, &body, extra);
                assert!(
                    !err.contains("end failure") && !err.contains("eset"),
                    "{path} {size}: curl: {err}"
                );
                assert_eq!(exit, 0, "{path} {size}: curl: {err}");
                check_problem(status, &ct, &answer, want, detail);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bearer_scheme_of_a_join_is_matched_in_any_case() {
    let ca = TestCa::start();
    let op = ca.operator();
    for (n, scheme) in ["bearer", "BEARER", "bEaReR"].iter().enumerate() {
        let t: api::JoinTokenResponse = op
            .post(
                "/v1/join-tokens",
                &api::JoinTokenRequest {
                    role: "cell".into(),
                    name: format!("cell-{n}"),
                    ttl_seconds: None,
                },
                None,
            )
            .await
            .unwrap();
        let (_key, csr) = new_key_and_csr().unwrap();
        let header = format!("{scheme}  {}", t.token);
        let (s, _, b, _) = raw(
            &ca,
            None,
            "POST",
            "/v1/join",
            Some(serde_json::to_vec(&api::CsrRequest { csr }).unwrap()),
            &[("authorization", &header)],
        )
        .await;
        assert_eq!(s, 201, "{scheme}: {}", String::from_utf8_lossy(&b));
    }
}
