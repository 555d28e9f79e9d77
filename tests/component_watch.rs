//! Components keep their own credential fresh: `POST /v1/component-credentials`, and
//! `lanyard cert component --watch` / `lanyard bundle --watch --out` driving a real nginx
//! router through renewals and a full root rotation without an operator.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::agent::TestAgent;
use common::*;
use lanyard::api;
use lanyard::client::{new_key_and_csr, ClientError};
use lanyard::mtls::{CredentialPaths, Credentials, PeerIdentity, Policy};
use lanyard::x509::inspect::{parse_pem_certs, CertInfo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SERVER_APP: &str = "b0b0b0b0-1111-4111-8111-000000000001";

/// A child process killed when dropped (also when a test fails), or taken to be stopped.
struct Proc(Option<std::process::Child>);

impl Proc {
    fn take(&mut self) -> std::process::Child {
        self.0.take().unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn leaf(chain_pem: &str) -> CertInfo {
    let ders = parse_pem_certs(chain_pem.as_bytes()).unwrap();
    CertInfo::from_der(&ders[0]).unwrap()
}

/// The number of certificates in a PEM file (0 when it is missing or unreadable).
fn cert_count(p: &Path) -> usize {
    parse_pem_certs(read(p).as_bytes())
        .map(|c| c.len())
        .unwrap_or(0)
}

/// Waits until `cond` holds, or fails with `what` and `context()`.
async fn eventually(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_component_renews_its_own_certificate_and_only_a_component_may() {
    let ca = TestCa::start();
    let dir = ca.dir.path().join("gorouter");
    let (code, _, err) = ca.cli(&[
        "cert",
        "component",
        "--name",
        "gorouter",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let first = leaf(&read(&dir.join("cert.pem")));

    // With its own certificate: same name, new key, new serial.
    let me = CheckedClient::from_credential_dir(&ca.url(), &dir).unwrap();
    let (_key, csr) = new_key_and_csr().unwrap();
    let r: api::IssuedCertificate = me
        .post(
            "/v1/component-credentials",
            &api::ComponentCredentialRequest {
                csr: csr.clone(),
                ttl_seconds: Some(api::JsonInt(3600)),
            },
            None,
        )
        .await
        .unwrap();
    let renewed = leaf(&r.certificate_chain);
    assert_ne!(renewed.serial, first.serial);
    assert_eq!(renewed.uris, first.uris);
    assert_eq!(r.spiffe_id, "spiffe://lanyard.internal/component/gorouter");
    assert_eq!(renewed.dns_names, vec!["gorouter".to_string()]);
    assert_eq!(renewed.common_name.as_deref(), Some("gorouter"));
    let life = renewed
        .not_after
        .duration_since(renewed.not_before)
        .unwrap();
    assert!(life <= Duration::from_secs(3600 + 120), "{life:?}");

    // A TTL out of range names the field.
    let e = me
        .post::<_, api::IssuedCertificate>(
            "/v1/component-credentials",
            &serde_json::json!({"csr": csr, "ttl_seconds": 1}),
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Api(p) if p.status == 422 && p.detail.contains("ttl_seconds")),
        "{e:?}"
    );

    // An operator and a cell have credentials of their own to renew; nobody is anonymous.
    let cell = ca.join_cell("cell-1").await;
    for (who, client) in [("operator", ca.operator()), ("cell", cell.client.clone())] {
        let e = client
            .post::<_, api::IssuedCertificate>(
                "/v1/component-credentials",
                &api::ComponentCredentialRequest {
                    csr: csr.clone(),
                    ttl_seconds: None,
                },
                None,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ClientError::Api(p) if p.status == 403 && p.detail.contains("component")),
            "{who}: {e:?}"
        );
    }
    let e = ca
        .anonymous()
        .post::<_, api::IssuedCertificate>(
            "/v1/component-credentials",
            &api::ComponentCredentialRequest {
                csr,
                ttl_seconds: None,
            },
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Api(p) if p.status == 401),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bundle_watch_rewrites_the_file_runs_the_command_and_stops_on_sigterm() {
    let ca = TestCa::start();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bundle.pem");
    let count = tmp.path().join("changes");
    let child = Command::new(BIN)
        .args(["bundle", "--watch", "--out"])
        .arg(&out)
        .arg("--on-change")
        .arg(format!("echo x >> {}; exit 1", count.display()))
        .arg("--server")
        .arg(ca.url())
        .arg("--credential")
        .arg(ca.operator_dir())
        .current_dir(tmp.path())
        .env_remove("LANYARD_CONFIG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(tmp.path().join("watch.log")).unwrap())
        .spawn()
        .unwrap();
    let mut guard = Proc(Some(child));
    let log = || read(&tmp.path().join("watch.log"));
    eventually(
        "the bundle file",
        Duration::from_secs(30),
        || cert_count(&out) == 1 && read(&count).lines().count() == 1,
        log,
    )
    .await;
    let (code, _, err) = ca.cli(&["authority", "prepare"]);
    assert_eq!(code, 0, "{err}");
    // A failing command is logged and runs again at the next change.
    eventually(
        "the new root in the file",
        Duration::from_secs(30),
        || cert_count(&out) == 2 && read(&count).lines().count() == 2,
        log,
    )
    .await;
    assert_eq!(
        read(&out),
        ca.anonymous()
            .trust_bundle(None, 0, false)
            .await
            .unwrap()
            .unwrap()
            .1
    );
    assert!(log().contains("runs again at the next change"), "{}", log());
    let status = terminate(guard.take(), Duration::from_secs(20)).expect("stopped on SIGTERM");
    assert!(status.success(), "{status}: {}", log());
}

// ---------------------------------------------------------------------------------------
// nginx as the router, with `cert component --watch` and no operator
// ---------------------------------------------------------------------------------------

fn nginx_bin() -> PathBuf {
    for d in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(d).join("nginx");
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from("/usr/sbin/nginx")
}

/// An nginx master process in the foreground, stopped with SIGTERM when dropped (the
/// master then stops its workers).
struct Nginx {
    child: Option<std::process::Child>,
    prefix: PathBuf,
    socket: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            let _ = terminate(c, Duration::from_secs(10));
        }
    }
}

impl Nginx {
    /// The command that reloads this nginx (what `--on-change` runs).
    fn reload_command(prefix: &Path) -> String {
        format!(
            "{} -p {p} -c {p}/nginx.conf -e {p}/error.log -s reload",
            nginx_bin().display(),
            p = prefix.display()
        )
    }

    /// Renders the router template into `prefix` and starts nginx.
    fn start(prefix: &Path, backend: SocketAddr, instance_guid: &str, router: &Path) -> Nginx {
        std::fs::create_dir_all(prefix.join("tmp")).unwrap();
        // nginx cannot report a port it picked: it listens on a socket in its own prefix.
        let socket = prefix.join("front.sock");
        let conf = read(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/nginx/router.conf.template"
        )))
        .replace("@PREFIX@", &prefix.display().to_string())
        .replace("@LISTEN@", &format!("unix:{}", socket.display()))
        .replace("@BACKEND@", &backend.to_string())
        .replace("@INSTANCE_GUID@", instance_guid)
        .replace("@ROUTER_CREDENTIALS@", &router.display().to_string());
        std::fs::write(prefix.join("nginx.conf"), conf).unwrap();
        let mut globals = "daemon off;".to_string();
        if is_root() {
            // Workers stay root so they can use the test's private temp paths.
            globals.push_str(" user root;");
        }
        let child = Command::new(nginx_bin())
            .arg("-p")
            .arg(prefix)
            .arg("-c")
            .arg(prefix.join("nginx.conf"))
            .arg("-e")
            .arg(prefix.join("error.log"))
            .args(["-g", &globals])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(prefix.join("stderr.log")).unwrap())
            .spawn()
            .unwrap();
        let mut n = Nginx {
            child: Some(child),
            prefix: prefix.to_path_buf(),
            socket,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::os::unix::net::UnixStream::connect(&n.socket).is_err() {
            if let Ok(Some(st)) = n.child.as_mut().unwrap().try_wait() {
                panic!(
                    "nginx exited with {st}: {} {}",
                    read(&prefix.join("stderr.log")),
                    read(&prefix.join("error.log"))
                );
            }
            assert!(Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        n
    }

    fn error_log(&self) -> String {
        read(&self.prefix.join("error.log"))
    }
}

/// Whether this process runs as root (a file it creates belongs to uid 0).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file()
        .metadata()
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// An app instance that serves only the router, with `lanyard::mtls` following the files
/// the agent keeps; it answers with the serial of the caller's certificate.
async fn backend(instance_dir: &Path) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let creds = Credentials::open(
        CredentialPaths::instance_dir(instance_dir),
        Some(Duration::from_millis(100)),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(creds.server_config().unwrap()));
    let policy = Arc::new(Policy::new().allow_component("gorouter".parse().unwrap()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _creds = creds;
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, policy) = (acceptor.clone(), policy.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(peer) = PeerIdentity::from_connection(tls.get_ref().1) else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let (status, body) = match policy.check(&peer) {
                    Ok(()) => ("200 OK", serde_json::json!({"caller": peer.serial})),
                    Err(r) => (
                        "403 Forbidden",
                        serde_json::json!({"reason": r.to_string()}),
                    ),
                };
                let body = body.to_string();
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, task)
}

/// `GET /` over plain HTTP on the router's frontend socket: status and body.
async fn http_get(socket: &Path) -> Result<(u16, String), String> {
    let exchange = async {
        let mut s = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: app.example.com\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no HTTP answer: {text:?}"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status: {head:?}"))?;
        Ok((status, body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(15), exchange)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// What the request loop saw: how many answers, the failures, and every router serial the
/// backend was shown.
#[derive(Default)]
struct Traffic {
    ok: u64,
    failures: Vec<String>,
    router_serials: BTreeSet<String>,
    last_router_serial: String,
}

/// The intermediate (second certificate) of a PEM chain, as DER.
fn intermediate(chain_pem: &str) -> Vec<u8> {
    parse_pem_certs(chain_pem.as_bytes()).unwrap()[1].clone()
}

fn chain_intermediate(path: &Path) -> Option<Vec<u8>> {
    parse_pem_certs(read(path).as_bytes())
        .ok()
        .and_then(|c| c.get(1).cloned())
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_keeps_routing_through_component_renewals_and_a_root_rotation_with_no_operator() {
    let ca = TestCa::start_with(&[
        ("issuance", "min_ttl = \"1s\""),
        // The cell and server credentials live 20 s, so they too move to a new generation
        // soon after its activation; the server checks its own every second.
        ("issuance", "default_ttl = \"20s\""),
        ("rotation", "check_interval = \"1s\""),
        ("rotation", "propagation_delay = \"1s\""),
    ]);
    let tmp = tempfile::tempdir().unwrap();

    // The route backend: an instance the agent keeps renewed (6 s certificates).
    let agent = TestAgent::start(&ca, "cell-1", "6s");
    let guid = "9a1c2f3e-5b6d-4e7f-8a9b-00000000000a";
    let (status, body) = agent.put(guid, SERVER_APP).await;
    assert_eq!(status, 200, "{body}");
    let instance_dir = agent.instance_dir(guid);
    let (backend_addr, _backend) = backend(&instance_dir).await;

    // The router's helper: first issuance with a copy of the operator credential, which is
    // then deleted; from there on it runs on its own certificate.
    let operator_copy = tmp.path().join("operator");
    std::fs::create_dir_all(&operator_copy).unwrap();
    for f in ["cert.pem", "key.pem", "trust-bundle.pem"] {
        std::fs::copy(ca.operator_dir().join(f), operator_copy.join(f)).unwrap();
    }
    let router = tmp.path().join("gorouter");
    let prefix = tmp.path().join("nginx");
    let helper_log = tmp.path().join("helper.log");
    let helper = Command::new(BIN)
        .args([
            "cert",
            "component",
            "--name",
            "gorouter",
            "--ttl",
            "6s",
            "--out",
        ])
        .arg(&router)
        .arg("--watch")
        .arg("--on-change")
        .arg(Nginx::reload_command(&prefix))
        .arg("--server")
        .arg(ca.url())
        .arg("--credential")
        .arg(&operator_copy)
        .current_dir(tmp.path())
        .env_remove("LANYARD_CONFIG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&helper_log).unwrap())
        .spawn()
        .unwrap();
    let mut helper = Proc(Some(helper));
    let helper_text = || read(&helper_log);
    eventually(
        "the router's first credential",
        Duration::from_secs(30),
        || cert_count(&router.join("cert.pem")) == 2,
        helper_text,
    )
    .await;
    std::fs::remove_dir_all(&operator_copy).unwrap();

    let nginx = Nginx::start(&prefix, backend_addr, guid, &router);

    // Requests through nginx, one after another, for the whole test.
    let traffic = Arc::new(Mutex::new(Traffic::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let requests = {
        let (traffic, stop, socket) = (traffic.clone(), stop.clone(), nginx.socket.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let r = http_get(&socket).await;
                {
                    let mut t = traffic.lock().unwrap();
                    match r {
                        Ok((200, body)) => {
                            let j: serde_json::Value = serde_json::from_str(&body).unwrap();
                            let serial = j["caller"].as_str().unwrap().to_string();
                            t.ok += 1;
                            t.router_serials.insert(serial.clone());
                            t.last_router_serial = serial;
                        }
                        Ok((status, body)) => t.failures.push(format!("{status}: {body}")),
                        Err(e) => t.failures.push(e),
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let context = || {
        let t = traffic.lock().unwrap();
        format!(
            "ok {} failures {:?}\nhelper:\n{}\nnginx:\n{}",
            t.ok,
            t.failures,
            helper_text(),
            read(&prefix.join("error.log"))
        )
    };
    let seen = || traffic.lock().unwrap().router_serials.len();

    // Several renewals, each reloaded into nginx and shown to the backend.
    eventually(
        "three router certificates through nginx",
        Duration::from_secs(60),
        || seen() >= 3,
        context,
    )
    .await;

    // A full root rotation. Prepare, and wait until both sides trust the new root.
    let (code, _, err) = ca.cli(&["authority", "prepare"]);
    assert_eq!(code, 0, "{err}");
    eventually(
        "the new root on the router and on the instance",
        Duration::from_secs(30),
        || {
            cert_count(&router.join("trust-bundle.pem")) == 2
                && cert_count(&instance_dir.join("trust-bundle.crt")) == 2
        },
        context,
    )
    .await;
    let (code, _, err) = ca.cli(&["authority", "activate", "2", "--force"]);
    assert_eq!(code, 0, "{err}");
    // The new generation's intermediate, from a certificate it signed.
    let (_k, csr) = new_key_and_csr().unwrap();
    let probe: api::IssuedCertificate = ca
        .operator()
        .post(
            "/v1/component-certificates",
            &api::ComponentCertificateRequest {
                csr,
                name: "probe".into(),
                ttl_seconds: None,
            },
            None,
        )
        .await
        .unwrap();
    let gen2 = intermediate(&probe.certificate_chain);
    let cell_file = agent.dir.path().join("state/cell-credential.json");
    // Before the old root goes: the router (as nginx presents it), the instance and the
    // cell have all moved to the new generation.
    eventually(
        "every credential in use under the new generation",
        Duration::from_secs(60),
        || {
            let router_moved = chain_intermediate(&router.join("cert.pem")).as_ref() == Some(&gen2);
            let presented = router_moved && {
                let serial = leaf(&read(&router.join("cert.pem"))).serial;
                traffic.lock().unwrap().last_router_serial == serial
            };
            let cell: serde_json::Value =
                serde_json::from_str(&read(&cell_file)).unwrap_or_default();
            let cell_moved = cell["chain_pem"]
                .as_str()
                .is_some_and(|c| intermediate(c) == gen2);
            presented
                && cell_moved
                && chain_intermediate(&instance_dir.join("instance.crt")).as_ref() == Some(&gen2)
        },
        context,
    )
    .await;
    // The CA's own first credentials (long-lived operator credential) still count for
    // generation 1, hence --force: everything this route uses has moved.
    let (code, _, err) = ca.cli(&["authority", "retire", "1", "--force"]);
    assert_eq!(code, 0, "{err}");
    eventually(
        "the old root gone from the router and the instance",
        Duration::from_secs(30),
        || {
            cert_count(&router.join("trust-bundle.pem")) == 1
                && cert_count(&instance_dir.join("trust-bundle.crt")) == 1
        },
        context,
    )
    .await;
    // Two more renewals after the retirement.
    let after = seen();
    eventually(
        "two more router certificates",
        Duration::from_secs(60),
        || seen() >= after + 2,
        context,
    )
    .await;

    stop.store(true, Ordering::SeqCst);
    requests.await.unwrap();
    {
        let t = traffic.lock().unwrap();
        assert!(
            t.failures.is_empty(),
            "{} of {} requests failed: {:?}\nnginx: {}",
            t.failures.len(),
            t.ok + t.failures.len() as u64,
            t.failures,
            nginx.error_log()
        );
        assert!(t.ok > 50, "only {} requests", t.ok);
        eprintln!(
            "{} requests through nginx, {} router certificates, no failure",
            t.ok,
            t.router_serials.len()
        );
    }
    let text = helper_text();
    assert!(
        text.contains("issued with the operator credential"),
        "{text}"
    );
    assert!(text.contains("renewed"), "{text}");

    // SIGTERM stops the helper cleanly; started again with no operator credential at all,
    // it carries on from the credential in its directory.
    let status = terminate(helper.take(), Duration::from_secs(20)).expect("stopped on SIGTERM");
    assert!(status.success(), "{status}: {}", helper_text());
    let before = leaf(&read(&router.join("cert.pem"))).serial;
    let again_log = tmp.path().join("helper-again.log");
    let again = Command::new(BIN)
        .args([
            "cert",
            "component",
            "--name",
            "gorouter",
            "--ttl",
            "6s",
            "--out",
        ])
        .arg(&router)
        .arg("--watch")
        .arg("--server")
        .arg(ca.url())
        .current_dir(tmp.path())
        .env_remove("LANYARD_CONFIG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&again_log).unwrap())
        .spawn()
        .unwrap();
    let _again = ChildGuard(again);
    eventually(
        "a renewal by the restarted helper",
        Duration::from_secs(30),
        || leaf(&read(&router.join("cert.pem"))).serial != before,
        || read(&again_log),
    )
    .await;
    assert!(
        read(&again_log).contains("using the credential in"),
        "{}",
        read(&again_log)
    );
}
