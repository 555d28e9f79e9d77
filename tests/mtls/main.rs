//! The manual mTLS option for apps (`lanyard::mtls`, the two examples, the snippets of
//! `docs/apps.md`) and route integrity through a real nginx, against a real CA.
//!
//! One test binary, one module per subject: `policy` (who may call an app, and the identity
//! it is told), `reload` (credentials that change under a running app), `router` (route
//! integrity through nginx) and `guide` (the guide's snippets in other languages). The
//! helpers they share are here; the process harness is in `tests/common`.

#[path = "../common/mod.rs"]
mod common;

mod guide;
mod policy;
mod reload;
mod router;

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
/// A CA, one cell and three instances on it: the server app, a caller the tests allow, and
/// another app they refuse. `tmp` holds the instances' files and the logs.
struct ThreeApps {
    ca: TestCa,
    cell: Credential,
    tmp: tempfile::TempDir,
    server: Instance,
    caller: Instance,
    other: Instance,
}

async fn three_apps() -> ThreeApps {
    let ca = start_ca();
    let cell = ca.join_cell("cell-1").await;
    let tmp = tempfile::tempdir().unwrap();
    let server = instance(&ca, &cell, tmp.path(), 1, SERVER_APP).await;
    let caller = instance(&ca, &cell, tmp.path(), 2, CALLER_APP).await;
    let other = instance(&ca, &cell, tmp.path(), 3, OTHER_APP).await;
    ThreeApps {
        ca,
        cell,
        tmp,
        server,
        caller,
        other,
    }
}

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

/// Starts a process that prints `listening on <addr>` once bound; returns it and the address.
/// Its stderr and the rest of its stdout go to `log`.
fn start_listening(mut cmd: Command, log: &Path) -> (ChildGuard, SocketAddr) {
    let append = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap()
    };
    cmd.stderr(append());
    let (child, at) = spawn_reporting(cmd, append(), Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}: {}", read(log)));
    let guard = ChildGuard(child);
    let addr = at
        .parse()
        .unwrap_or_else(|_| panic!("unexpected address {at:?}: {}", read(log)));
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
