//! Route integrity: nginx as the router, rendered and reloaded by the guide's snippets, in
//! front of an instance that allows only the router.

use super::*;

fn nginx_bin() -> PathBuf {
    let on_path = Command::new("nginx").arg("-v").output().is_ok();
    if on_path {
        PathBuf::from("nginx")
    } else {
        PathBuf::from("/usr/sbin/nginx")
    }
}

/// An nginx master process, stopped with SIGTERM when dropped: the master then stops its
/// workers, where a SIGKILL would leave them running.
struct NginxProcess(Option<std::process::Child>);

impl Drop for NginxProcess {
    fn drop(&mut self) {
        if let Some(child) = self.0.take() {
            let _ = terminate(child, Duration::from_secs(10));
        }
    }
}

/// nginx rendered from the template by the guide's snippet, in its own prefix, in the
/// foreground; stopped when dropped.
struct Nginx {
    _process: NginxProcess,
    prefix: PathBuf,
    /// The frontend: a Unix socket in the prefix.
    socket: PathBuf,
    env: Vec<(String, String)>,
}

impl Nginx {
    fn start(prefix: &Path, backend: SocketAddr, instance_guid: &str, router: &Path) -> Nginx {
        std::fs::create_dir_all(prefix).unwrap();
        // nginx cannot bind port 0 and tell us the port, and a port probed here could be
        // taken by a parallel test before nginx binds it. The frontend is not what these
        // tests are about (the upstream TLS is), so nginx listens on a Unix socket in its
        // private prefix: a name no other test can hold.
        let socket = prefix.join("front.sock");
        let env: Vec<(String, String)> = vec![
            ("PREFIX".into(), prefix.display().to_string()),
            ("LISTEN".into(), format!("unix:{}", socket.display())),
            ("BACKEND".into(), backend.to_string()),
            ("INSTANCE_GUID".into(), instance_guid.into()),
            ("ROUTER_CREDENTIALS".into(), router.display().to_string()),
        ];
        let out = Nginx::bash(&env, &doc_snippet("nginx-render"));
        assert!(
            out.status.success(),
            "render: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        // Foreground, so the test owns the process; as root, workers stay root so they can
        // use the temp paths inside the test's private prefix.
        let mut globals = "daemon off;".to_string();
        if running_as_root(prefix) {
            globals.push_str(" user root;");
        }
        let log = std::fs::File::create(prefix.join("stderr.log")).unwrap();
        let child = Command::new(nginx_bin())
            .arg("-p")
            .arg(prefix)
            .arg("-c")
            .arg(prefix.join("nginx.conf"))
            .arg("-e")
            .arg(prefix.join("error.log"))
            .args(["-g", &globals])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut guard = NginxProcess(Some(child));
        // nginx says nothing when it is ready: poll its socket, with a deadline.
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if let Ok(Some(st)) = guard.0.as_mut().unwrap().try_wait() {
                panic!(
                    "nginx exited with {st}: {} {}",
                    read(&prefix.join("stderr.log")),
                    read(&prefix.join("error.log"))
                );
            }
            assert!(Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx {
            _process: guard,
            prefix: prefix.to_path_buf(),
            socket,
            env,
        }
    }

    fn bash(env: &[(String, String)], script: &str) -> std::process::Output {
        let dir = tempfile::tempdir().unwrap();
        // The guide's snippets call plain `nginx`; make sure that is the one we found.
        let bin = dir.path().join("nginx");
        std::os::unix::fs::symlink(
            which(&nginx_bin()).unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx")),
            &bin,
        )
        .unwrap();
        let path = format!(
            "{}:{}",
            dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Command::new("bash")
            .args(["-euo", "pipefail", "-c", script])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("PATH", path)
            .output()
            .unwrap()
    }

    /// The guide's reload command.
    fn reload(&self) {
        let out = Nginx::bash(&self.env, &doc_snippet("nginx-reload"));
        assert!(
            out.status.success(),
            "reload: {} {}",
            String::from_utf8_lossy(&out.stderr),
            read(&self.prefix.join("error.log"))
        );
    }

    fn error_log(&self) -> String {
        read(&self.prefix.join("error.log"))
    }
}

/// `GET /` over plain HTTP to the router's frontend socket.
async fn http_get(socket: &Path) -> (u16, String) {
    let mut s = tokio::net::UnixStream::connect(socket).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: app.example.com\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    parse_http(&buf).unwrap()
}

fn which(bin: &Path) -> Option<PathBuf> {
    if bin.is_absolute() {
        return Some(bin.to_path_buf());
    }
    std::env::var("PATH")
        .ok()?
        .split(':')
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.is_file())
}

/// A CA, a route backend (the example server, allowing only the router) and the router's
/// component credential.
struct Route {
    ca: TestCa,
    cell: Credential,
    tmp: tempfile::TempDir,
    backend: Instance,
    backend_addr: SocketAddr,
    _backend: ChildGuard,
    router: PathBuf,
}

async fn route() -> Route {
    let ca = start_ca();
    let cell = ca.join_cell("cell-1").await;
    let tmp = tempfile::tempdir().unwrap();
    let backend = instance(&ca, &cell, tmp.path(), 10, SERVER_APP).await;
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
    let (guard, backend_addr) = example_server(
        &backend.dir,
        &["--allow-component", "gorouter"],
        &tmp.path().join("backend.log"),
    );
    Route {
        ca,
        cell,
        tmp,
        backend,
        backend_addr,
        _backend: guard,
        router,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn through_nginx_the_router_reaches_the_instance_its_route_names_and_a_wrong_instance_guid_is_a_502(
) {
    let r = route().await;
    let router_serial = Credentials::open(CredentialPaths::detect(&r.router).unwrap(), None)
        .unwrap()
        .status()
        .serial;

    // The guide's excerpt is what the template says.
    let template = read(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/nginx/router.conf.template"
    )));
    let squash = |l: &str| l.split_whitespace().collect::<Vec<_>>().join(" ");
    let template_lines: Vec<String> = template.lines().map(squash).collect();
    for line in doc_snippet("nginx-core").lines().map(squash) {
        assert!(
            template_lines.contains(&line),
            "not in the template: {line}"
        );
    }

    // Right instance GUID: the router proves who it is and checks whom it reached.
    let good = Nginx::start(
        &r.tmp.path().join("nginx-good"),
        r.backend_addr,
        &r.backend.guid,
        &r.router,
    );
    let (status, body) = http_get(&good.socket).await;
    assert_eq!(status, 200, "{body} {}", good.error_log());
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(j["caller"]["component"], "gorouter");
    assert_eq!(j["caller"]["serial"], router_serial.as_str());
    assert_eq!(j["server"]["instance_guid"], r.backend.guid.as_str());

    // A route that points at this address but names another instance: 502, never the app.
    let wrong = Nginx::start(
        &r.tmp.path().join("nginx-wrong"),
        r.backend_addr,
        &instance_guid(0xff),
        &r.router,
    );
    let (status, body) = http_get(&wrong.socket).await;
    assert_eq!(status, 502, "{body}");
    assert!(!body.contains(SERVER_APP));
    let log = wrong.error_log();
    assert!(
        log.contains("upstream SSL certificate does not match"),
        "{log}"
    );

    // The router's credential is renewed: after the guide's reload, nginx presents the new one.
    let (code, _, err) = r.ca.cli(&[
        "cert",
        "component",
        "--name",
        "gorouter",
        "--out",
        r.router.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let renewed = Credentials::open(CredentialPaths::detect(&r.router).unwrap(), None)
        .unwrap()
        .status()
        .serial;
    assert_ne!(renewed, router_serial);
    good.reload();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = http_get(&good.socket).await;
        assert_eq!(status, 200, "{body}");
        let j: serde_json::Value = serde_json::from_str(&body).unwrap();
        if j["caller"]["serial"] == renewed.as_str() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nginx still presents the old certificate"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(r.cell);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_direct_caller_without_the_routers_certificate_is_refused_by_the_route_backend() {
    let r = route().await;
    // Another app's valid instance certificate: through the handshake, then 403 with why.
    let app = instance(&r.ca, &r.cell, r.tmp.path(), 11, CALLER_APP).await;
    let (_c, cfg) = client_config(&app.dir);
    let a = get(&cfg, r.backend_addr, &r.backend.guid).await.unwrap();
    assert_eq!(a.status, 403);
    assert_eq!(
        a.json()["reason"],
        format!(
            "app {CALLER_APP} (space {SPACE}, organization {ORG}) is not allowed; \
             allowed components: gorouter"
        )
    );

    // No certificate at all: refused at the TLS layer.
    let e = get(
        &plain_client(&r.ca.bundle_pem(), None),
        r.backend_addr,
        &r.backend.guid,
    )
    .await
    .unwrap_err();
    assert!(
        e.contains("CertificateRequired") || e.contains("alert"),
        "{e}"
    );

    // Another component: refused too.
    let other = r.tmp.path().join("other");
    let (code, _, err) = r.ca.cli(&[
        "cert",
        "component",
        "--name",
        "tcp-router",
        "--out",
        other.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let other = Credentials::open(CredentialPaths::component_dir(&other), None).unwrap();
    let a = get(
        &Arc::new(other.client_config().unwrap()),
        r.backend_addr,
        &r.backend.guid,
    )
    .await
    .unwrap();
    assert_eq!(a.status, 403);
    assert!(
        a.body.contains("component tcp-router is not allowed"),
        "{}",
        a.body
    );

    // The router's own credential, from Rust, is served: the refusals were about identity.
    let router = Credentials::open(CredentialPaths::component_dir(&r.router), None).unwrap();
    let a = get(
        &Arc::new(router.client_config().unwrap()),
        r.backend_addr,
        &r.backend.guid,
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
}
