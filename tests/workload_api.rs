//! The SPIFFE Workload API on the agent, driven by py-spiffe (PyPI `spiffe`), a client
//! written outside this project (`tests/py/workload_client.py`).
//!
//! The client runs in a virtual environment under `target/py-spiffe`, made on first use (or
//! by `scripts/test.sh`) with `spiffe` from PyPI.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::agent::TestAgent;
use common::*;
use lanyard::x509::inspect::{parse_pem_certs, CertInfo};

const APP_A: &str = "a0a0a0a0-1111-4111-8111-00000000000a";
const APP_B: &str = "b0b0b0b0-2222-4222-8222-00000000000b";
const GUID_A: &str = "9a1c2f3e-5b6d-4e7f-8a9b-0000000000a1";
const GUID_B: &str = "9a1c2f3e-5b6d-4e7f-8a9b-0000000000b1";
/// The py-spiffe release the tests use (it supports Python 3.9 and later).
const PY_SPIFFE: &str = "spiffe==0.3.2";

/// The virtual environment's python, with py-spiffe installed (made once per test run).
fn python() -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/py-spiffe");
        let py = venv.join("bin/python");
        let ready = || {
            Command::new(&py)
                .args(["-c", "import spiffe, grpc"])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !ready() {
            let st = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .unwrap();
            assert!(st.success(), "python3 -m venv failed");
            let out = Command::new(&py)
                .args(["-m", "pip", "install", "--quiet", PY_SPIFFE])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "pip install {PY_SPIFFE}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(ready(), "py-spiffe does not import");
        }
        py
    })
    .clone()
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/workload_client.py")
}

/// Runs the client once against `socket` (a path) and returns its one JSON line.
fn run_client(socket: &Path, mode: &str) -> serde_json::Value {
    let out = Command::new(python())
        .arg(script())
        .arg(mode)
        .env(
            "SPIFFE_ENDPOINT_SOCKET",
            format!("unix://{}", socket.display()),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{mode}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{mode}: {e}: {stdout}"))
}

/// A long-running client: its JSON lines arrive on a channel.
struct Streaming {
    child: Option<Child>,
    lines: mpsc::Receiver<serde_json::Value>,
}

impl Streaming {
    fn start(socket: &Path, args: &[&str]) -> Streaming {
        let mut child = Command::new(python())
            .arg(script())
            .args(args)
            .env(
                "SPIFFE_ENDPOINT_SOCKET",
                format!("unix://{}", socket.display()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        Streaming {
            child: Some(child),
            lines: rx,
        }
    }

    /// The next line for which `want` holds (others are skipped), within `timeout`.
    fn next_where(
        &self,
        what: &str,
        timeout: Duration,
        mut want: impl FnMut(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) if want(&v) => return v,
                Ok(_) => {}
                Err(e) => panic!("no {what} on the stream: {e}"),
            }
        }
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A snippet of `docs/apps.md`: the fenced block after `<!-- test: NAME -->`.
fn doc_snippet(name: &str) -> String {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/apps.md")).unwrap();
    let marker = format!("<!-- test: {name} -->");
    let at = doc
        .find(&marker)
        .unwrap_or_else(|| panic!("docs/apps.md has no snippet {name}"));
    let rest = &doc[at + marker.len()..];
    let body = &rest[rest.find("```").unwrap()..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("\n```").unwrap() + 1].to_string()
}

fn serial_of(chain_pem: &str) -> String {
    let der = &parse_pem_certs(chain_pem.as_bytes()).unwrap()[0];
    CertInfo::from_der(der).unwrap().serial
}

/// Hex serials compared as numbers (Python drops leading zeros).
fn same_serial(a: &str, b: &str) -> bool {
    a.trim_start_matches('0') == b.trim_start_matches('0')
}

/// The instance's files: chain blocks, key (PKCS#8 DER, hex), roots, all normalized.
fn files(dir: &Path) -> (Vec<String>, String, Vec<String>) {
    let read = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap();
    let chain = pem_blocks(&read("instance.crt"));
    let key = hex::encode(pem::parse(read("instance.key")).unwrap().contents());
    let mut roots = pem_blocks(&read("trust-bundle.crt"));
    roots.sort();
    (chain, key, roots)
}

fn normalize(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| pem_blocks(s.as_str().unwrap()).concat())
        .collect()
}

/// Fetches through py-spiffe and the files, until a fetch falls between two identical reads
/// of the files (a renewal may land in between).
fn fetch_matching_files(socket: &Path, dir: &Path) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let before = files(dir);
        let got = run_client(socket, "fetch");
        let after = files(dir);
        if before == after {
            let (chain, key, roots) = after;
            assert_eq!(normalize(&got["chain"]), chain, "chain");
            assert_eq!(got["key"].as_str().unwrap(), key, "key");
            let mut got_roots = normalize(&got["roots"]);
            got_roots.sort();
            assert_eq!(got_roots, roots, "bundle");
            return got;
        }
        assert!(Instant::now() < deadline, "the files never held still");
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread")]
async fn py_spiffe_gets_each_instance_its_own_svid_and_every_renewal_and_rotation_on_an_open_stream(
) {
    let ca = TestCa::start_with(&[
        ("issuance", "min_ttl = \"1s\""),
        ("rotation", "propagation_delay = \"1s\""),
    ]);
    let agent = TestAgent::start(&ca, "cell-1", "8s");
    let (status, a) = agent.put(GUID_A, APP_A).await;
    assert_eq!(status, 200, "{a}");
    let (status, b) = agent.put(GUID_B, APP_B).await;
    assert_eq!(status, 200, "{b}");
    let (dir_a, dir_b) = (agent.instance_dir(GUID_A), agent.instance_dir(GUID_B));
    let (sock_a, sock_b) = (dir_a.join("spiffe.sock"), dir_b.join("spiffe.sock"));

    // The PUT answer names the socket; it is there, a socket, mode 0666.
    assert_eq!(
        a["environment"]["SPIFFE_ENDPOINT_SOCKET"],
        format!("unix://{}", sock_a.display())
    );
    assert!(std::fs::metadata(&sock_a).unwrap().file_type().is_socket());
    assert_eq!(mode(&sock_a), 0o666);

    // What py-spiffe gets is what the files hold: SPIFFE ID, chain, key, bundle.
    let got_a = fetch_matching_files(&sock_a, &dir_a);
    let td = "spiffe://lanyard.internal";
    assert_eq!(
        got_a["spiffe_id"],
        format!(
            "{td}/org/4d9c8a7b-0f1b-4a3c-8d5e-f90a1b2c3d4e/space/5e0d9b8a-1a2c-4b4d-9e6f-0a1b2c3d4e5f/app/{APP_A}"
        )
    );
    assert_eq!(
        got_a["bundle_keys"],
        serde_json::json!(["lanyard.internal"])
    );
    // Each socket yields its own instance only.
    let got_b = fetch_matching_files(&sock_b, &dir_b);
    assert!(got_b["spiffe_id"].as_str().unwrap().ends_with(APP_B));
    assert!(!got_a["spiffe_id"].as_str().unwrap().contains(APP_B));

    // The guide's Python snippet, as written.
    let tmp = tempfile::tempdir().unwrap();
    let snippet = tmp.path().join("snippet.py");
    std::fs::write(&snippet, doc_snippet("python-workload-api")).unwrap();
    let out = Command::new(python())
        .arg(&snippet)
        .env(
            "SPIFFE_ENDPOINT_SOCKET",
            format!("unix://{}", sock_a.display()),
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("I am {}", got_a["spiffe_id"].as_str().unwrap())),
        "{text}"
    );
    assert!(text.contains("trusting 1 root(s)"), "{text}");
    assert!(text.contains("current certificate serial"), "{text}");

    // Without the security header: INVALID_ARGUMENT. JWT: UNIMPLEMENTED.
    let r = run_client(&sock_a, "no-header");
    assert_eq!(r["code"], "INVALID_ARGUMENT", "{r}");
    let r = run_client(&sock_a, "jwt");
    assert_eq!(r["code"], "UNIMPLEMENTED", "{r}");

    // An open stream: the current SVID at once, then a renewal, then the new root.
    let watch = Streaming::start(&sock_a, &["watch"]);
    let first = watch.next_where("a first SVID", Duration::from_secs(30), |_| true);
    let first_serial = first["serial"].as_str().unwrap().to_string();
    let renewed = watch.next_where("a renewal", Duration::from_secs(30), |v| {
        v["serial"]
            .as_str()
            .is_some_and(|s| !same_serial(s, &first_serial))
    });
    let on_disk = serial_of(&std::fs::read_to_string(dir_a.join("instance.crt")).unwrap());
    assert!(
        renewed["serial"].as_str().is_some(),
        "renewed: {renewed} (files: {on_disk})"
    );
    assert_eq!(first["roots"].as_array().unwrap().len(), 1);
    let (code, _, err) = ca.cli(&["authority", "prepare"]);
    assert_eq!(code, 0, "{err}");
    let rotated = watch.next_where("the prepared root", Duration::from_secs(30), |v| {
        v["roots"].as_array().is_some_and(|r| r.len() == 2)
    });
    let mut roots = normalize(&rotated["roots"]);
    roots.sort();
    assert_eq!(roots, files(&dir_a).2, "the stream's roots are the file's");

    // DELETE: the stream ends with an error, the socket goes; B is untouched.
    let r = agent
        .http
        .delete(agent.url(&format!("/v1/instances/{GUID_A}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let ended = watch.next_where("the end of the stream", Duration::from_secs(30), |v| {
        v.get("error").is_some()
    });
    assert!(
        ended["error"]
            .as_str()
            .unwrap()
            .contains("PERMISSION_DENIED"),
        "{ended}"
    );
    assert!(!sock_a.exists());
    let again_b = run_client(&sock_b, "fetch");
    assert_eq!(again_b["spiffe_id"], got_b["spiffe_id"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_socket_path_over_107_bytes_is_served_and_comes_back_after_an_agent_restart() {
    let ca = TestCa::start();
    let deep = format!("{}/instances", "d".repeat(70));
    let mut agent = TestAgent::start_with_root(&ca, "cell-1", "1h", &deep);
    let (status, body) = agent.put(GUID_A, APP_A).await;
    assert_eq!(status, 200, "{body}");
    let dir = agent.instance_dir(GUID_A);
    let socket = dir.join("spiffe.sock");
    assert!(socket.as_os_str().len() > 107, "{}", socket.display());
    assert_eq!(
        body["environment"]["SPIFFE_ENDPOINT_SOCKET"],
        format!("unix://{}", socket.display())
    );
    assert!(std::fs::metadata(&socket).unwrap().file_type().is_socket());
    assert_eq!(mode(&socket), 0o666);
    // A client reaches it through a shorter path, as through a container's own mount.
    let short = agent.dir.path().join("i");
    std::os::unix::fs::symlink(&dir, &short).unwrap();
    let short_socket = short.join("spiffe.sock");
    let got = fetch_matching_files(&short_socket, &dir);
    assert!(got["spiffe_id"].as_str().unwrap().ends_with(APP_A));

    // Stopped, the agent takes the socket away; started again, it serves it again.
    agent.stop();
    assert!(!socket.exists(), "a stopped agent leaves no dead socket");
    agent.spawn();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "{}", agent.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let again = fetch_matching_files(&short_socket, &dir);
    assert_eq!(again["spiffe_id"], got["spiffe_id"]);
}

/// The agent's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_open_streams_cost_the_agent_little_memory() {
    let ca = TestCa::start();
    let agent = TestAgent::start(&ca, "cell-1", "1h");
    let mut sockets = vec![];
    for i in 0..10u32 {
        let guid = format!("9a1c2f3e-5b6d-4e7f-8a9b-{i:012x}");
        let (status, body) = agent.put(&guid, APP_A).await;
        assert_eq!(status, 200, "{body}");
        sockets.push(agent.instance_dir(&guid).join("spiffe.sock"));
    }
    let pid = agent.child.as_ref().unwrap().id();
    let before = rss_kib(pid);
    // 100 streams on each of 10 instances' sockets.
    let holders: Vec<Streaming> = sockets
        .iter()
        .map(|s| Streaming::start(s, &["hold", "100"]))
        .collect();
    for h in &holders {
        h.next_where("100 open streams", Duration::from_secs(120), |v| {
            v["ready"] == 100
        });
    }
    let after = rss_kib(pid);
    eprintln!(
        "agent RSS: {before} KiB with 10 instances, {after} KiB with 1000 open Workload API \
         streams ({} KiB more, {:.1} KiB per stream)",
        after.saturating_sub(before),
        after.saturating_sub(before) as f64 / 1000.0
    );
    // A generous bound: the point is the figure above, and that nothing is per-stream heavy.
    assert!(after < before + 256 * 1024, "{before} -> {after} KiB");
    drop(holders);
}
