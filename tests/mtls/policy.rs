//! Who may call an app: the policy of the example server, refusals at the TLS layer, and
//! the identity an app reads from its credentials.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn an_allowed_app_gets_200_with_both_identities_and_another_app_gets_403_with_the_reason() {
    let ThreeApps {
        ca: _ca,
        cell: _cell,
        tmp,
        server,
        caller,
        other,
    } = three_apps().await;
    let (_srv, addr) = example_server(
        &server.dir,
        &["--allow-app", CALLER_APP],
        &tmp.path().join("server.log"),
    );

    // The allowed app, verifying the server by its container IP and by its instance GUID.
    let (_c, caller_cfg) = client_config(&caller.dir);
    for name in ["127.0.0.1", server.guid.as_str()] {
        let a = get(&caller_cfg, addr, name).await.unwrap();
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.server_serial, server.serial);
        let j = a.json();
        assert_eq!(j["caller"]["instance_guid"], caller.guid.as_str());
        assert_eq!(j["caller"]["app_guid"], CALLER_APP);
        assert_eq!(j["caller"]["space_guid"], SPACE);
        assert_eq!(j["caller"]["organization_guid"], ORG);
        assert_eq!(
            j["caller"]["spiffe_id"],
            format!("spiffe://lanyard.internal/org/{ORG}/space/{SPACE}/app/{CALLER_APP}")
        );
        assert_eq!(j["server"]["instance_guid"], server.guid.as_str());
        assert_eq!(j["server"]["serial"], server.serial.as_str());
    }
    // The client checks whom it reached: the server is not the "other" instance.
    let e = get(&caller_cfg, addr, &other.guid).await.unwrap_err();
    assert!(
        e.contains("handshake") && e.contains("not valid for name"),
        "{e}"
    );

    // Another app of the same CA: through the handshake, refused by the policy, told why.
    let (_o, other_cfg) = client_config(&other.dir);
    let a = get(&other_cfg, addr, "127.0.0.1").await.unwrap();
    assert_eq!(a.status, 403);
    assert_eq!(
        a.json()["reason"],
        format!(
            "app {OTHER_APP} (space {SPACE}, organization {ORG}) is not allowed; \
             allowed apps: {CALLER_APP}"
        )
    );

    // The client example prints the status, then the body; exit 0 only for 2xx.
    let run_client = |dir: &Path, extra: &[&str], url: String| {
        let mut cmd = Command::new(example("mtls_client"));
        clean_env(&mut cmd)
            .arg("--credentials")
            .arg(dir)
            .args(extra)
            .arg(url)
            .output()
            .unwrap()
    };
    let out = run_client(
        &caller.dir,
        &[],
        format!("https://127.0.0.1:{}/", addr.port()),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("200\n") && stdout.contains(CALLER_APP),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains(&server.guid));
    let out = run_client(
        &caller.dir,
        &["--connect-to", "127.0.0.1"],
        format!("https://{}:{}/", server.guid, addr.port()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_client(
        &other.dir,
        &[],
        format!("https://127.0.0.1:{}/", addr.port()),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout.starts_with("403\n") && stdout.contains("is not allowed"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_with_a_certificate_from_a_foreign_ca_or_with_none_is_refused_at_the_tls_layer() {
    let ca = start_ca();
    let cell = ca.join_cell("cell-1").await;
    let tmp = tempfile::tempdir().unwrap();
    let server = instance(&ca, &cell, tmp.path(), 1, SERVER_APP).await;
    let log = tmp.path().join("server.log");
    // The policy allows the very app the foreign certificate claims to be.
    let (_srv, addr) = example_server(&server.dir, &["--allow-app", CALLER_APP], &log);

    let foreign = plain_client(
        &ca.bundle_pem(),
        Some(foreign_identity(&instance_guid(2), CALLER_APP)),
    );
    let e = get(&foreign, addr, "127.0.0.1").await.unwrap_err();
    assert!(
        e.contains("UnknownCA") || e.contains("BadCertificate"),
        "{e}"
    );

    let anonymous = plain_client(&ca.bundle_pem(), None);
    let e = get(&anonymous, addr, "127.0.0.1").await.unwrap_err();
    assert!(
        e.contains("CertificateRequired") || e.contains("alert"),
        "{e}"
    );

    // Neither got an HTTP answer; the server says why in its log.
    eventually("the server's log", Duration::from_secs(5), || {
        let l = read(&log);
        l.matches("handshake refused").count() >= 2
    })
    .await;
    let l = read(&log);
    assert!(l.contains("UnknownIssuer"), "{l}");
    assert!(l.contains("peer sent no certificates"), "{l}");

    // A real instance of the allowed app still gets through.
    let caller = instance(&ca, &cell, tmp.path(), 2, CALLER_APP).await;
    let (_c, cfg) = client_config(&caller.dir);
    assert_eq!(get(&cfg, addr, "127.0.0.1").await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_come_from_the_cf_variables_name_their_identity_and_never_print_the_key() {
    let ca = start_ca();
    let cell = ca.join_cell("cell-1").await;
    let tmp = tempfile::tempdir().unwrap();
    let inst = instance(&ca, &cell, tmp.path(), 7, CALLER_APP).await;
    let vars = [
        ("CF_INSTANCE_CERT", inst.dir.join("instance.crt")),
        ("CF_INSTANCE_KEY", inst.dir.join("instance.key")),
        ("CF_SYSTEM_CERT_PATH", inst.dir.join("system-certs")),
    ];
    let paths = CredentialPaths::from_lookup(|name| {
        vars.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| p.clone().into_os_string())
    })
    .unwrap();
    assert_eq!(paths.certificate, inst.dir.join("instance.crt"));
    assert_eq!(paths.private_key, inst.dir.join("instance.key"));
    assert_eq!(
        paths.trust_bundle,
        inst.dir.join("system-certs/trust-bundle.crt")
    );
    let creds = Credentials::open(paths, None).unwrap();
    let me = creds.identity().unwrap();
    assert_eq!(me.instance_guid.as_ref().unwrap().as_str(), inst.guid);
    assert_eq!(me.app_guid.as_ref().unwrap().as_str(), CALLER_APP);
    assert_eq!(me.space_guid.as_ref().unwrap().as_str(), SPACE);
    assert_eq!(me.organization_guid.as_ref().unwrap().as_str(), ORG);
    assert_eq!(me.component, None);
    assert_eq!(me.trust_domain, "lanyard.internal");
    assert_eq!(me.kind(), "app instance");
    let debug = format!("{creds:?}");
    assert!(
        debug.contains("...") && debug.contains(&inst.serial),
        "{debug}"
    );
    assert!(
        !debug.contains("PRIVATE") && !debug.contains(&inst.key[40..80]),
        "{debug}"
    );

    // A component credential as `lanyard cert component` writes it.
    let router = tmp.path().join("gorouter");
    let (code, _, err) = ca.cli(&[
        "cert",
        "component",
        "--name",
        "gorouter",
        "--out",
        router.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let comp = Credentials::open(CredentialPaths::detect(&router).unwrap(), None).unwrap();
    let id = comp.identity().unwrap();
    assert_eq!(id.component.as_ref().map(|n| n.as_str()), Some("gorouter"));
    assert_eq!(id.spiffe_id, "spiffe://lanyard.internal/component/gorouter");
    assert_eq!((&id.instance_guid, &id.app_guid), (&None, &None));
    assert_eq!(id.describe(), "component gorouter");
}
