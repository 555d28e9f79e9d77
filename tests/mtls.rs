//! The manual mTLS option for apps (`lanyard::mtls`, the two examples, the snippets of
//! `docs/apps.md`) and route integrity through a real nginx, against a real CA.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use lanyard::api;
use lanyard::client::{new_key_and_csr, tls_config, ApiClient};
use lanyard::mtls::{CredentialPaths, Credentials, MtlsError, PeerIdentity, Policy};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SERVER_APP: &str = "b0b0b0b0-1111-4111-8111-000000000001";
const CALLER_APP: &str = "ca11e400-2222-4222-8222-000000000002";
const OTHER_APP: &str = "0dd0dd00-3333-4333-8333-000000000003";
const SPACE: &str = "5e0d9b8a-1a2c-4b4d-9e6f-0a1b2c3d4e5f";
const ORG: &str = "4d9c8a7b-0f1b-4a3c-8d5e-f90a1b2c3d4e";

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// An app instance whose credentials are on disk in the agent's layout.
struct Instance {
    guid: String,
    dir: PathBuf,
    chain: String,
    key: String,
    serial: String,
}

/// A CA for these tests: apps here listen on 127.0.0.1 and are verified by that address,
/// which a production CA refuses to write into a certificate.
fn start_ca() -> TestCa {
    TestCa::start_with(&[("issuance", "allow_loopback_ips = true")])
}

fn instance_guid(n: u32) -> String {
    instance_request("", n).instance_guid
}

/// Issues an instance certificate for app `app` (instance GUID from `n`) with a fresh key.
/// `container_ip` 127.0.0.1 lets clients verify the server by the address they dial.
async fn issue(cell: &Credential, n: u32, app: &str) -> (api::IssuedCertificate, String) {
    let (key, csr) = new_key_and_csr().unwrap();
    let mut req = instance_request(&csr, n);
    req.app_guid = app.into();
    req.container_ip = Some("127.0.0.1".into());
    let r: api::IssuedCertificate = cell
        .client
        .post("/v1/instance-certificates", &req, None)
        .await
        .unwrap();
    (r, key.to_string())
}

/// Issues a certificate and writes the instance's directory under `root`.
async fn instance(ca: &TestCa, cell: &Credential, root: &Path, n: u32, app: &str) -> Instance {
    let (r, key) = issue(cell, n, app).await;
    let guid = instance_guid(n);
    let dir = root.join(&guid);
    write_instance_dir(&dir, &r.certificate_chain, &key, &ca.bundle_pem());
    Instance {
        guid,
        dir,
        chain: r.certificate_chain,
        key,
        serial: r.serial,
    }
}

/// Path of a built example; builds the examples once per test run (a no-op when
/// `cargo test --all-targets` already did), so `cargo test --test mtls` works alone too.
fn example(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        // <target>/<profile>/deps/mtls-<hash>
        let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let target_dir = profile_dir.parent().unwrap();
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet", "--examples", "--target-dir"])
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name().and_then(|n| n.to_str()) == Some("release") {
            cmd.arg("--release");
        }
        // Cargo sets these for the test process; ring's build script reruns when
        // CARGO_MANIFEST_DIR changes, which would rebuild half the tree twice per run.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("CARGO_PKG_")
                || k.starts_with("CARGO_BIN_EXE_")
                || [
                    "CARGO_MANIFEST_DIR",
                    "CARGO_MANIFEST_PATH",
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                ]
                .contains(&k.as_ref())
            {
                cmd.env_remove(k.as_ref());
            }
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "building the examples failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        profile_dir.join("examples")
    });
    dir.join(name)
}

/// Removes the variables an example or a snippet reads, so the caller's environment cannot
/// leak in.
fn clean_env(cmd: &mut Command) -> &mut Command {
    for v in [
        "CF_INSTANCE_CERT",
        "CF_INSTANCE_KEY",
        "CF_SYSTEM_CERT_PATH",
        "MTLS_LISTEN",
        "MTLS_CREDENTIALS",
        "MTLS_ALLOW_APPS",
        "MTLS_ALLOW_SPACES",
        "MTLS_ALLOW_ORGS",
        "MTLS_ALLOW_COMPONENTS",
    ] {
        cmd.env_remove(v);
    }
    cmd
}

/// Starts a process that prints `listening on <addr>` first; returns it and the address.
fn start_listening(mut cmd: Command, log: &Path) -> (ChildGuard, SocketAddr) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let guard = ChildGuard(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("no 'listening on' line: {}", read(log)));
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}: {}", read(log)));
    (guard, addr)
}

/// The `mtls_server` example with these credentials and policy flags.
fn example_server(creds: &Path, policy: &[&str], log: &Path) -> (ChildGuard, SocketAddr) {
    let mut cmd = Command::new(example("mtls_server"));
    clean_env(&mut cmd)
        .arg("--credentials")
        .arg(creds)
        .args(["--listen", "127.0.0.1:0"])
        .args(policy);
    start_listening(cmd, log)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// A snippet of `docs/apps.md`: the fenced block after `<!-- test: NAME -->`.
fn doc_snippet(name: &str) -> String {
    let doc = read(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/apps.md"
    )));
    let marker = format!("<!-- test: {name} -->");
    let at = doc
        .find(&marker)
        .unwrap_or_else(|| panic!("docs/apps.md has no snippet {name}"));
    let rest = &doc[at + marker.len()..];
    let fence = rest.find("```").unwrap();
    let body = &rest[fence..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("\n```").unwrap() + 1].to_string()
}

/// An HTTP answer over mutual TLS, with the serial of the certificate the server showed.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
    server_serial: String,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// `GET /` over a new TLS connection to `addr`, verifying the server as `name`.
async fn get(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    name: &str,
) -> Result<Answer, String> {
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    let server_name = ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut tls = connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let server_serial = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| PeerIdentity::from_der(c).ok())
            .map(|p| p.serial)
            .unwrap_or_default();
        tls.write_all(
            format!("GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        match tls.read_to_end(&mut buf).await {
            Ok(_) => {}
            // Some servers close without close_notify after a complete answer.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => {}
            Err(e) => return Err(format!("read: {e}")),
        }
        let (status, body) = parse_http(&buf)?;
        Ok(Answer {
            status,
            body,
            server_serial,
        })
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// `GET /` over plain HTTP (the router's frontend).
async fn http_get(port: u16) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: app.example.com\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), tcp.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    parse_http(&buf).unwrap()
}

fn parse_http(buf: &[u8]) -> Result<(u16, String), String> {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP answer: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status: {head:?}"))?;
    Ok((status, body.to_string()))
}

/// The client configuration an app builds from its credential directory.
fn client_config(dir: &Path) -> (Credentials, Arc<rustls::ClientConfig>) {
    let creds = Credentials::from_dir(dir).unwrap();
    let cfg = Arc::new(creds.client_config().unwrap());
    (creds, cfg)
}

/// A client that trusts `bundle_pem` and presents `identity` (chain DERs and PKCS#8 key), or
/// nothing: callers that are not Lanyard instances.
fn plain_client(
    bundle_pem: &str,
    identity: Option<(Vec<CertificateDer<'static>>, Vec<u8>)>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for p in pem::parse_many(bundle_pem).unwrap() {
        roots.add(CertificateDer::from(p.into_contents())).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    Arc::new(match identity {
        None => b.with_no_client_auth(),
        Some((chain, key)) => b
            .with_client_auth_cert(chain, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)))
            .unwrap(),
    })
}

/// A certificate from a CA that is not Lanyard's, copying an instance's identity exactly
/// as far as rcgen can: only the chain can tell it apart.
fn foreign_identity(guid: &str, app: &str) -> (Vec<CertificateDer<'static>>, Vec<u8>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let mut root = CertificateParams::new(Vec::<String>::new()).unwrap();
    root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root.distinguished_name
        .push(DnType::CommonName, "lanyard.internal root 1");
    let root_key = KeyPair::generate().unwrap();
    let root = root.self_signed(&root_key).unwrap();
    let mut leaf = CertificateParams::new(vec![guid.to_string()]).unwrap();
    leaf.subject_alt_names.push(SanType::URI(
        format!("spiffe://lanyard.internal/org/{ORG}/space/{SPACE}/app/{app}")
            .try_into()
            .unwrap(),
    ));
    leaf.distinguished_name
        .push(DnType::OrganizationalUnitName, format!("app:{app}"));
    leaf.distinguished_name.push(DnType::CommonName, guid);
    leaf.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
    ];
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = leaf.signed_by(&leaf_key, &root, &root_key).unwrap();
    (
        vec![leaf.der().clone(), root.der().clone()],
        leaf_key.serialize_der(),
    )
}

/// Waits until `cond` holds, or fails with `what`.
async fn eventually(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// True when this process runs as root (a directory it creates belongs to uid 0).
fn running_as_root(dir: &Path) -> bool {
    std::fs::metadata(dir)
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------------------
// App to app
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn an_allowed_app_gets_200_with_both_identities_and_another_app_gets_403_with_the_reason() {
    let ca = start_ca();
    let cell = ca.join_cell("cell-1").await;
    let tmp = tempfile::tempdir().unwrap();
    let server = instance(&ca, &cell, tmp.path(), 1, SERVER_APP).await;
    let caller = instance(&ca, &cell, tmp.path(), 2, CALLER_APP).await;
    let other = instance(&ca, &cell, tmp.path(), 3, OTHER_APP).await;
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

// ---------------------------------------------------------------------------------------
// Reload
// ---------------------------------------------------------------------------------------

/// A minimal app built on the module: answers `200 <serial in use>` or `403 <refusal>`.
async fn serve_in_process(creds: Credentials, policy: Policy) -> SocketAddr {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(creds.server_config().unwrap()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, creds, policy) = (acceptor.clone(), creds.clone(), policy.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let verdict = PeerIdentity::from_connection(tls.get_ref().1)
                    .map_err(|e| e.to_string())
                    .and_then(|p| policy.check(&p).map_err(|r| r.to_string()));
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let (status, body) = match verdict {
                    Ok(()) => ("200 OK", creds.status().serial),
                    Err(reason) => ("403 Forbidden", reason),
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

#[derive(Default)]
struct LoopStats {
    ok: u64,
    failures: Vec<String>,
    /// Served serials in the order they were first seen.
    serials: Vec<String>,
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_keeps_serving_through_renewals_and_a_root_rotation_with_zero_failed_connections() {
    let ca = start_ca();
    let mut cell = ca.join_cell("cell-1").await;
    let tmp = tempfile::tempdir().unwrap();
    let server = instance(&ca, &cell, tmp.path(), 20, SERVER_APP).await;
    let client = instance(&ca, &cell, tmp.path(), 21, CALLER_APP).await;
    let bundle1 = ca.bundle_pem();

    let server_creds = Credentials::from_dir(&server.dir).unwrap();
    let policy = Policy::new().allow_app(CALLER_APP.parse().unwrap());
    let addr = serve_in_process(server_creds.clone(), policy).await;
    let (client_creds, client_cfg) = client_config(&client.dir);

    // Two callers, each making a new connection per request for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Mutex::new(LoopStats::default()));
    let mut loops = Vec::new();
    for _ in 0..2 {
        let (stop, stats, cfg) = (stop.clone(), stats.clone(), client_cfg.clone());
        loops.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = get(&cfg, addr, "127.0.0.1").await;
                {
                    let mut s = stats.lock().unwrap();
                    match r {
                        Ok(a) if a.status == 200 => {
                            s.ok += 1;
                            if !s.serials.contains(&a.server_serial) {
                                s.serials.push(a.server_serial);
                            }
                        }
                        Ok(a) => s.failures.push(format!("{} {}", a.status, a.body)),
                        Err(e) => s.failures.push(e),
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    let seen = |serial: String| {
        let stats = stats.clone();
        move || stats.lock().unwrap().serials.last() == Some(&serial)
    };
    eventually(
        "the first answer",
        Duration::from_secs(10),
        seen(server.serial.clone()),
    )
    .await;

    // Renewals under the first root: new key and certificate, swapped in as a set.
    let mut expected = vec![server.serial.clone()];
    let mut client_key = client.key.clone();
    let mut client_chain = client.chain.clone();
    for round in 0..3 {
        let (r, key) = issue(&cell, 20, SERVER_APP).await;
        write_instance_dir(&server.dir, &r.certificate_chain, &key, &bundle1);
        eventually(
            "the renewed server certificate",
            Duration::from_secs(10),
            seen(r.serial.clone()),
        )
        .await;
        expected.push(r.serial);
        if round == 1 {
            let (r, key) = issue(&cell, 21, CALLER_APP).await;
            write_instance_dir(&client.dir, &r.certificate_chain, &key, &bundle1);
            (client_chain, client_key) = (r.certificate_chain, key);
            let mut rx = client_creds.subscribe();
            tokio::time::timeout(
                Duration::from_secs(10),
                rx.wait_for(|s| s.serial == r.serial),
            )
            .await
            .unwrap()
            .unwrap();
        }
    }

    // A new root: published first (both apps trust both roots), then activated.
    let op = ca.operator();
    let prepared: api::AuthorityView = op
        .post("/v1/authorities/prepare", &serde_json::json!({}), None)
        .await
        .unwrap();
    let (_, bundle2) = ca
        .anonymous()
        .trust_bundle(None, 0, false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pem::parse_many(&bundle2).unwrap().len(), 2);
    let current_server = std::fs::read_to_string(server.dir.join("instance.crt")).unwrap();
    let current_server_key = std::fs::read_to_string(server.dir.join("instance.key")).unwrap();
    write_instance_dir(&server.dir, &current_server, &current_server_key, &bundle2);
    write_instance_dir(&client.dir, &client_chain, &client_key, &bundle2);
    for creds in [&server_creds, &client_creds] {
        let mut rx = creds.subscribe();
        tokio::time::timeout(
            Duration::from_secs(10),
            rx.wait_for(|s| s.trust_anchors == 2),
        )
        .await
        .unwrap()
        .unwrap();
    }
    let activated: api::AuthorityView = op
        .post(
            &format!("/v1/authorities/{}/activate", prepared.id),
            &serde_json::json!({"force": true}),
            None,
        )
        .await
        .unwrap();
    assert_eq!(activated.state, "active");
    // The CA's own server certificate moves to the new root: the cell trusts both now.
    cell = Credential {
        client: ApiClient::new(
            &ca.url(),
            tls_config(bundle2.as_bytes(), Some((&cell.chain_pem, &cell.key_pem))).unwrap(),
        )
        .unwrap(),
        ..cell
    };

    // Leaves from the new generation, for the server and the client.
    let (r, key) = issue(&cell, 20, SERVER_APP).await;
    assert_eq!(r.authority_id, prepared.id);
    write_instance_dir(&server.dir, &r.certificate_chain, &key, &bundle2);
    eventually(
        "the second-generation server certificate",
        Duration::from_secs(10),
        seen(r.serial.clone()),
    )
    .await;
    expected.push(r.serial);
    let (r, key) = issue(&cell, 21, CALLER_APP).await;
    write_instance_dir(&client.dir, &r.certificate_chain, &key, &bundle2);
    let mut rx = client_creds.subscribe();
    tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|s| s.serial == r.serial),
    )
    .await
    .unwrap()
    .unwrap();
    let ok_before = stats.lock().unwrap().ok;
    eventually(
        "answers with the new client certificate",
        Duration::from_secs(10),
        || stats.lock().unwrap().ok >= ok_before + 20,
    )
    .await;

    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.unwrap();
    }
    let s = stats.lock().unwrap();
    assert!(
        s.failures.is_empty(),
        "{} failed connections: {:?}",
        s.failures.len(),
        s.failures
    );
    assert!(s.ok >= 50, "only {} answers", s.ok);
    assert_eq!(s.serials, expected, "served serials, in order");
    assert_eq!(server_creds.status().loads, 6); // start, 3 renewals, new bundle, new root
    assert_eq!(server_creds.status().last_error, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_that_does_not_match_its_certificate_is_refused_and_the_set_in_use_stays() {
    let ca = start_ca();
    let cell = ca.join_cell("cell-1").await;
    let tmp = tempfile::tempdir().unwrap();
    let inst = instance(&ca, &cell, tmp.path(), 1, SERVER_APP).await;
    let creds = Credentials::open(CredentialPaths::instance_dir(&inst.dir), None).unwrap();
    assert_eq!(creds.status().serial, inst.serial);

    // A writer that does not swap atomically: a new key next to the old certificate.
    let (other_key, _) = new_key_and_csr().unwrap();
    let data = std::fs::read_link(inst.dir.join("..data")).unwrap();
    std::fs::write(
        inst.dir.join(data).join("instance.key"),
        other_key.as_bytes(),
    )
    .unwrap();
    let e = creds.reload().unwrap_err();
    assert!(matches!(e, MtlsError::KeyMismatch { .. }), "{e}");
    assert!(e.to_string().contains("does not match"), "{e}");
    let st = creds.status();
    assert_eq!(st.serial, inst.serial);
    assert!(st.last_error.unwrap().contains("does not match"));
    // Loading from scratch refuses the pair too.
    assert!(matches!(
        Credentials::from_dir(&inst.dir).unwrap_err(),
        MtlsError::KeyMismatch { .. }
    ));

    // The next complete set is picked up.
    let (r, key) = issue(&cell, 1, SERVER_APP).await;
    write_instance_dir(&inst.dir, &r.certificate_chain, &key, &ca.bundle_pem());
    assert!(creds.reload().unwrap());
    let st = creds.status();
    assert_eq!((st.serial, st.last_error, st.loads), (r.serial, None, 2));
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

// ---------------------------------------------------------------------------------------
// Route integrity with nginx
// ---------------------------------------------------------------------------------------

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
struct NginxProcess(std::process::Child);

impl Drop for NginxProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// nginx rendered from the template by the guide's snippet, in its own prefix, in the
/// foreground; stopped when dropped.
struct Nginx {
    _process: NginxProcess,
    prefix: PathBuf,
    port: u16,
    env: Vec<(String, String)>,
}

impl Nginx {
    fn start(prefix: &Path, backend: SocketAddr, instance_guid: &str, router: &Path) -> Nginx {
        std::fs::create_dir_all(prefix).unwrap();
        let port = free_port();
        let env: Vec<(String, String)> = vec![
            ("PREFIX".into(), prefix.display().to_string()),
            ("LISTEN".into(), format!("127.0.0.1:{port}")),
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
        let mut guard = NginxProcess(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(st)) = guard.0.try_wait() {
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
            port,
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
    let (status, body) = http_get(good.port).await;
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
    let (status, body) = http_get(wrong.port).await;
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
        let (status, body) = http_get(good.port).await;
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

// ---------------------------------------------------------------------------------------
// Other languages: the guide's snippets
// ---------------------------------------------------------------------------------------

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
    let ca = start_ca();
    let cell = ca.join_cell("cell-1").await;
    let tmp = tempfile::tempdir().unwrap();
    let server = instance(&ca, &cell, tmp.path(), 1, SERVER_APP).await;
    let caller = instance(&ca, &cell, tmp.path(), 2, CALLER_APP).await;
    let other = instance(&ca, &cell, tmp.path(), 3, OTHER_APP).await;
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
    let ca = start_ca();
    let cell = ca.join_cell("cell-1").await;
    let tmp = tempfile::tempdir().unwrap();
    let server = instance(&ca, &cell, tmp.path(), 1, SERVER_APP).await;
    let caller = instance(&ca, &cell, tmp.path(), 2, CALLER_APP).await;
    let other = instance(&ca, &cell, tmp.path(), 3, OTHER_APP).await;
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

// ---------------------------------------------------------------------------------------
// The whole mission path: real CA, real agent, two apps, a full root rotation
// ---------------------------------------------------------------------------------------

/// An operator call that tolerates the moment the server swaps the local operator files.
async fn operator_post<T: serde::de::DeserializeOwned>(
    ca: &TestCa,
    path: &str,
) -> Result<T, lanyard::client::ClientError> {
    let mut last = None;
    for _ in 0..5 {
        let op = ApiClient::from_credential_dir(&ca.url(), &ca.operator_dir()).unwrap();
        match op.post::<_, T>(path, &serde_json::json!({}), None).await {
            Ok(v) => return Ok(v),
            Err(e @ lanyard::client::ClientError::Api(_)) => return Err(e),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_root_rotation_under_live_app_to_app_traffic_with_the_real_agent_fails_no_handshake()
{
    let ca = TestCa::start_with(&[
        ("issuance", "min_ttl = \"1s\""),
        ("issuance", "default_ttl = \"6s\""),
        ("issuance", "max_ttl = \"8s\""),
        ("rotation", "propagation_delay = \"2s\""),
        ("rotation", "check_interval = \"200ms\""),
    ]);
    let agent = common::agent::TestAgent::start(&ca, "cell-1", "3s");
    let server_guid = "5e7e7000-0001";
    let client_guid = "c1e7e000-0002";
    assert_eq!(agent.put(server_guid, SERVER_APP).await.0, 200);
    assert_eq!(agent.put(client_guid, CALLER_APP).await.0, 200);
    let server_dir = agent.instance_dir(server_guid);
    let client_dir = agent.instance_dir(client_guid);

    // App 1: the example server process, allowing only the caller app.
    let log = ca.dir.path().join("mtls_server.log");
    let (server, addr) = example_server(&server_dir, &["--allow-app", CALLER_APP], &log);
    let server_pid = server.0.id();
    // App 2: a client on the module, one new connection per request, all the time.
    let (client_creds, client_cfg) = client_config(&client_dir);
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Mutex::new((
        0usize,
        Vec::<String>::new(),
        Vec::<String>::new(),
    )));
    let traffic = {
        let (stop, stats, cfg) = (stop.clone(), stats.clone(), client_cfg.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = get(&cfg, addr, server_guid).await;
                {
                    let mut s = stats.lock().unwrap();
                    match r {
                        Ok(a) if a.status == 200 => {
                            s.0 += 1;
                            if s.1.last() != Some(&a.server_serial) {
                                s.1.push(a.server_serial);
                            }
                        }
                        Ok(a) => s.2.push(format!("status {}: {}", a.status, a.body)),
                        Err(e) => s.2.push(e),
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let prepared: api::AuthorityView = operator_post(&ca, "/v1/authorities/prepare").await.unwrap();
    assert_eq!(prepared.id, "2");
    // Activate without force once the propagation delay allows it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match operator_post::<api::AuthorityView>(&ca, "/v1/authorities/2/activate").await {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "activation never allowed: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let activated = started.elapsed();
    // Retire without force once every certificate generation 1 signed has expired.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        match operator_post::<api::AuthorityView>(&ca, "/v1/authorities/1/retire").await {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "retirement never allowed: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let retired = started.elapsed();
    // Keep talking after retirement, once the bundle without root 1 reached the files.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();

    let (ok, served, failures) = stats.lock().unwrap().clone();
    eprintln!(
        "rotation under traffic: {ok} connections, {} failed; activated after {activated:?}, retired after {retired:?}; server certificates served: {}",
        failures.len(),
        served.len()
    );
    assert!(
        failures.is_empty(),
        "failed connections: {failures:?}\nagent: {}",
        agent.log_text()
    );
    assert!(ok > 100, "{ok} connections");
    assert!(
        served.len() >= 3,
        "the served certificate did not change: {served:?}"
    );
    assert_eq!(server.0.id(), server_pid, "the server was not restarted");

    // After retirement nothing chains to the old root: both apps' files verify with the new
    // bundle (root 2 only) and not with root 1.
    let (_, bundle) = ca
        .anonymous()
        .trust_bundle(None, 0, false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pem::parse_many(&bundle).unwrap().len(), 1);
    let (_, gen1_root) = {
        let a: api::AuthoritiesResponse =
            ApiClient::from_credential_dir(&ca.url(), &ca.operator_dir())
                .unwrap()
                .get("/v1/authorities")
                .await
                .unwrap();
        (
            a.trust_bundle_sequence,
            a.authorities[0].root_certificate.clone(),
        )
    };
    for dir in [&server_dir, &client_dir] {
        let chain = std::fs::read_to_string(dir.join("instance.crt")).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("trust-bundle.crt")).unwrap(),
            bundle
        );
        assert!(openssl_verify(&bundle, &chain, "sslclient").0);
        assert!(!openssl_verify(&gen1_root, &chain, "sslclient").0);
    }
    assert!(client_creds.status().last_error.is_none());
}
