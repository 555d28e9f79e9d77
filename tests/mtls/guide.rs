//! The guide's snippets in other languages (Python, curl) against the example server, and
//! the guide's Python server.

use super::*;

/// The CF variables for an instance directory.
fn cf_env(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    vec![
        ("CF_INSTANCE_CERT", dir.join("instance.crt")),
        ("CF_INSTANCE_KEY", dir.join("instance.key")),
        ("CF_SYSTEM_CERT_PATH", dir.join("system-certs")),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_ssl_client_from_the_guide_calls_the_example_server_with_instance_credentials() {
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
    let script = tmp.path().join("mtls_client.py");
    std::fs::write(&script, doc_snippet("python-client")).unwrap();
    let url = format!("https://127.0.0.1:{}/", addr.port());
    let run = |dir: &Path| {
        let mut cmd = Command::new("python3");
        clean_env(&mut cmd)
            .arg(&script)
            .arg(&url)
            .envs(cf_env(dir))
            .output()
            .unwrap()
    };

    let out = run(&caller.dir);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout} {stderr}");
    let (status, body) = stdout.split_once('\n').unwrap();
    assert_eq!(status, "200", "{stdout}");
    let j: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(j["caller"]["app_guid"], CALLER_APP);
    assert_eq!(j["caller"]["instance_guid"], caller.guid.as_str());
    assert!(
        stderr.contains(&format!("answered by instance {}", server.guid)),
        "{stderr}"
    );

    let out = run(&other.dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("403\n") && stdout.contains("is not allowed"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_from_the_guide_calls_the_example_server_with_the_instance_files() {
    let ca = start_ca();
    let cell = ca.join_cell("cell-1").await;
    let tmp = tempfile::tempdir().unwrap();
    let server = instance(&ca, &cell, tmp.path(), 1, SERVER_APP).await;
    let caller = instance(&ca, &cell, tmp.path(), 2, CALLER_APP).await;
    let (_srv, addr) = example_server(
        &server.dir,
        &["--allow-space", SPACE],
        &tmp.path().join("server.log"),
    );
    let mut cmd = Command::new("bash");
    let out = clean_env(&mut cmd)
        .args(["-euo", "pipefail", "-c", &doc_snippet("curl")])
        .envs(cf_env(&caller.dir))
        .env("TARGET_URL", format!("https://127.0.0.1:{}/", addr.port()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(j["caller"]["app_guid"], CALLER_APP);
    assert_eq!(j["server"]["instance_guid"], server.guid.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_ssl_server_from_the_guide_serves_allowed_apps_and_picks_up_a_renewed_certificate()
{
    let ThreeApps {
        ca,
        cell,
        tmp,
        server,
        caller,
        other,
    } = three_apps().await;
    let script = tmp.path().join("mtls_server.py");
    std::fs::write(&script, doc_snippet("python-server")).unwrap();
    let mut cmd = Command::new("python3");
    clean_env(&mut cmd)
        .arg(&script)
        .envs(cf_env(&server.dir))
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("ALLOWED_APPS", CALLER_APP);
    let log = tmp.path().join("python.log");
    let (_py, addr) = start_listening(cmd, &log);

    let (_c, cfg) = client_config(&caller.dir);
    let a = get(&cfg, addr, "127.0.0.1").await.unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.server_serial, server.serial);
    let j = a.json();
    assert_eq!(j["caller"]["app_guid"], CALLER_APP);
    assert_eq!(j["caller"]["instance_guid"], caller.guid.as_str());
    assert_eq!(
        j["caller"]["spiffe_id"],
        format!("spiffe://lanyard.internal/org/{ORG}/space/{SPACE}/app/{CALLER_APP}")
    );

    let (_o, other_cfg) = client_config(&other.dir);
    let a = get(&other_cfg, addr, "127.0.0.1").await.unwrap();
    assert_eq!(a.status, 403);
    assert!(a.json()["reason"]
        .as_str()
        .unwrap()
        .contains(&format!("app {OTHER_APP} is not allowed")));

    assert!(
        get(&plain_client(&ca.bundle_pem(), None), addr, "127.0.0.1")
            .await
            .is_err()
    );
    let foreign = plain_client(
        &ca.bundle_pem(),
        Some(foreign_identity(&caller.guid, CALLER_APP)),
    );
    assert!(get(&foreign, addr, "127.0.0.1").await.is_err());

    // Renewal: the next connection is served with the new certificate, no restart.
    let (r, key) = issue(&cell, 1, SERVER_APP).await;
    write_instance_dir(&server.dir, &r.certificate_chain, &key, &ca.bundle_pem());
    let a = get(&cfg, addr, "127.0.0.1").await.unwrap();
    assert_eq!(a.status, 200, "{} {}", a.body, read(&log));
    assert_eq!(a.server_serial, r.serial);
}
