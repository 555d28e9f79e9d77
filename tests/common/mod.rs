//! Test harness: real `lanyard` processes, real TLS clients.
//!
//! Our processes bind `127.0.0.1:0` and report the address the kernel gave them
//! (`listening on ...` on stdout), so no test ever hands a port it probed to a process: there
//! is no window in which another test could take it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub(crate) mod agent;
pub(crate) mod openapi;
pub(crate) mod postgres;

use lanyard::api;
use lanyard::client::{new_key_and_csr, tls_config, ClientError, CredentialFiles};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_lanyard");

/// How long a process of ours may take to say where it listens (a cold debug build that
/// initializes its state on a loaded machine).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The dev config with a temporary state dir, `listen.address = "127.0.0.1:0"` (the kernel
/// picks the port) and optional extra lines per section
/// (`("rotation", "propagation_delay = \"1s\"")`).
pub(crate) fn write_config(dir: &Path, overrides: &[(&str, &str)]) -> PathBuf {
    let mut text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/ca-config/lanyard.toml"
    ))
    .unwrap();
    text = text.replace(
        "state_dir = \"./data\"",
        &format!("state_dir = \"{}\"", dir.join("data").display()),
    );
    text = text.replace(
        "kek_file = \"./data/kek\"",
        &format!("kek_file = \"{}\"", dir.join("data/kek").display()),
    );
    text = text.replace("127.0.0.1:8443", "127.0.0.1:0");
    text = text.replace("automatic = true", "automatic = false");
    for (section, line) in overrides {
        let key = line.split('=').next().unwrap().trim();
        let header = format!("[{section}]");
        let mut out = Vec::new();
        let mut in_section = false;
        let mut done = false;
        for l in text.lines() {
            if l.starts_with('[') {
                if in_section && !done {
                    out.push(line.to_string());
                    done = true;
                }
                in_section = l.trim() == header;
            }
            if in_section && l.split('=').next().map(str::trim) == Some(key) {
                out.push(line.to_string());
                done = true;
                continue;
            }
            out.push(l.to_string());
        }
        if in_section && !done {
            out.push(line.to_string());
            done = true;
        }
        if !done {
            out.push(header);
            out.push(line.to_string());
        }
        text = out.join("\n") + "\n";
    }
    let path = dir.join("lanyard.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A running CA process.
pub(crate) struct TestCa {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub port: u16,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl TestCa {
    pub(crate) fn start() -> TestCa {
        Self::start_with(&[])
    }

    pub(crate) fn start_with(overrides: &[(&str, &str)]) -> TestCa {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), overrides);
        let log = dir.path().join("serve.log");
        let mut ca = TestCa {
            dir,
            config,
            port: 0,
            child: None,
            log,
        };
        ca.spawn();
        ca
    }

    /// Starts `lanyard serve` and returns once it has bound its port (the server prints
    /// `listening on https://<ip>:<port>` after its state is open and the socket is bound).
    ///
    /// The first start binds port 0; the port it got is then written into the config, so a
    /// restart comes back at the same address (as a real CA does: agents and clients keep
    /// their URL) and CLI commands that take their server from the config reach it.
    pub(crate) fn spawn(&mut self) {
        let (child, at) = spawn_logged("serve", &self.config, &self.log, "LANYARD_KEK");
        let addr: std::net::SocketAddr = at
            .strip_prefix("https://")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("lanyard serve reported {at:?}"));
        self.child = Some(child);
        if self.port == 0 {
            self.port = addr.port();
            let text = std::fs::read_to_string(&self.config).unwrap();
            let pinned = text.replace(
                "address = \"127.0.0.1:0\"",
                &format!("address = \"127.0.0.1:{}\"", self.port),
            );
            assert_ne!(pinned, text, "no listen address to pin in {text}");
            std::fs::write(&self.config, pinned).unwrap();
        } else {
            assert_eq!(addr.port(), self.port, "the restarted server moved");
        }
    }

    /// Stops the server with SIGTERM and waits for it.
    pub(crate) fn stop(&mut self) {
        stop_child(self.child.take());
    }

    pub(crate) fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub(crate) fn state_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub(crate) fn operator_dir(&self) -> PathBuf {
        self.state_dir().join("credentials/operator")
    }

    pub(crate) fn bundle_pem(&self) -> String {
        std::fs::read_to_string(self.operator_dir().join("trust-bundle.pem")).unwrap()
    }

    pub(crate) fn operator(&self) -> CheckedClient {
        CheckedClient::from_credential_dir(&self.url(), &self.operator_dir()).unwrap()
    }

    pub(crate) fn anonymous(&self) -> CheckedClient {
        CheckedClient::new(
            &self.url(),
            tls_config(self.bundle_pem().as_bytes(), None).unwrap(),
        )
        .unwrap()
    }

    /// Runs the CLI against this CA and returns (exit code, stdout, stderr). Commands that
    /// read a config get this CA's (`inspect` and `completions` take none).
    pub(crate) fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let mut cmd = Command::new(BIN);
        cmd.args(args);
        if !matches!(args.first(), Some(&"inspect") | Some(&"completions")) {
            cmd.arg("--config").arg(&self.config);
        }
        let out = cmd.env_remove("LANYARD_KEK").output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Creates a join token and joins a cell; returns a client with the cell credential.
    pub(crate) async fn join_cell(&self, name: &str) -> Credential {
        let op = self.operator();
        let t: api::JoinTokenResponse = op
            .post(
                "/v1/join-tokens",
                &api::JoinTokenRequest {
                    role: "cell".into(),
                    name: name.into(),
                    ttl_seconds: None,
                },
                None,
            )
            .await
            .unwrap();
        let (key, csr) = new_key_and_csr().unwrap();
        let issued: api::IssuedCertificate = self
            .anonymous()
            .post("/v1/join", &api::CsrRequest { csr }, Some(&t.token))
            .await
            .unwrap();
        Credential::new(self, issued.certificate_chain, key.to_string())
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A certificate chain and key, with a client that presents them.
pub(crate) struct Credential {
    pub chain_pem: String,
    pub key_pem: String,
    pub client: CheckedClient,
}

impl Credential {
    /// Asks for an instance certificate (GUIDs from `n`) with a fresh key, as a cell does.
    pub(crate) async fn issue_instance(
        &self,
        n: u32,
    ) -> Result<api::IssuedCertificate, lanyard::client::ClientError> {
        let (_key, csr) = new_key_and_csr().unwrap();
        self.client
            .post(
                "/v1/instance-certificates",
                &instance_request(&csr, n),
                None,
            )
            .await
    }

    pub(crate) fn new(ca: &TestCa, chain_pem: String, key_pem: String) -> Credential {
        let tls = tls_config(ca.bundle_pem().as_bytes(), Some((&chain_pem, &key_pem))).unwrap();
        let client = CheckedClient::new(&ca.url(), tls).unwrap();
        Credential {
            chain_pem,
            key_pem,
            client,
        }
    }
}

/// A raw HTTPS request with full control: returns status, content type, body.
pub(crate) async fn raw(
    ca: &TestCa,
    identity: Option<(&str, &str)>,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    headers: &[(&str, &str)],
) -> (u16, String, Vec<u8>, reqwest::header::HeaderMap) {
    let tls = tls_config(ca.bundle_pem().as_bytes(), identity).unwrap();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .unwrap();
    let mut req = http.request(method.parse().unwrap(), format!("{}{path}", ca.url()));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let ct = headers
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = resp.bytes().await.unwrap().to_vec();
    let doc = openapi::document(&http, &ca.url()).await;
    openapi::check(doc, method, path, status, &ct, &body);
    (status, ct, body, headers)
}

/// The API client of the tests: `lanyard::client::ApiClient`'s methods with the same
/// answers, except that every answer is checked against the server's OpenAPI document.
#[derive(Clone, Debug)]
pub(crate) struct CheckedClient {
    base: String,
    http: reqwest::Client,
}

impl CheckedClient {
    /// A client for `base` with the given TLS config.
    pub(crate) fn new(base: &str, tls: rustls::ClientConfig) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        Ok(CheckedClient {
            base: base.trim_end_matches('/').to_string(),
            http,
        })
    }

    /// A client presenting the credential in `dir` (if it has one) and trusting its bundle.
    pub(crate) fn from_credential_dir(base: &str, dir: &Path) -> Result<Self, ClientError> {
        let f = CredentialFiles::read(dir)?;
        let identity = match (&f.chain_pem, &f.key_pem) {
            (Some(c), Some(k)) => Some((c.as_str(), k.as_str())),
            _ => None,
        };
        Self::new(base, tls_config(f.bundle_pem.as_bytes(), identity)?)
    }

    /// Sends `req` (for `method` and `path`) and checks the answer: status, headers, body.
    async fn send(
        &self,
        method: &str,
        path: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<(u16, reqwest::header::HeaderMap, Vec<u8>), ClientError> {
        let transport = |e: reqwest::Error| ClientError::Transport {
            url: self.base.clone(),
            message: format!("{e:?}"),
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(transport)?.to_vec();
        let ct = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let doc = openapi::document(&self.http, &self.base).await;
        openapi::check(doc, method, path, status, ct, &body);
        Ok((status, headers, body))
    }

    /// A problem answer as `ApiClient` reports it, or the JSON answer.
    fn answer<R: serde::de::DeserializeOwned>(status: u16, body: &[u8]) -> Result<R, ClientError> {
        if !(200..300).contains(&status) {
            return Err(ClientError::Api(
                serde_json::from_slice(body).expect("checked: a problem body"),
            ));
        }
        serde_json::from_slice(body).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// POSTs JSON, optionally with a bearer token, and parses the JSON answer.
    pub(crate) async fn post<B: serde::Serialize + ?Sized, R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        bearer: Option<&str>,
    ) -> Result<R, ClientError> {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(60))
            .json(body);
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        let (status, _, body) = self.send("POST", path, req).await?;
        Self::answer(status, &body)
    }

    /// GETs JSON.
    pub(crate) async fn get<R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<R, ClientError> {
        let req = self
            .http
            .get(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(60));
        let (status, _, body) = self.send("GET", path, req).await?;
        Self::answer(status, &body)
    }

    /// Fetches the trust bundle; with `known` and `wait`, long-polls. `None` on 304,
    /// otherwise the sequence and the body (PEM, or SPIFFE JSON when `json`).
    pub(crate) async fn trust_bundle(
        &self,
        known: Option<u64>,
        wait: u64,
        json: bool,
    ) -> Result<Option<(u64, String)>, ClientError> {
        let path = if wait > 0 {
            format!("/v1/trust-bundle?wait={wait}")
        } else {
            "/v1/trust-bundle".to_string()
        };
        let mut req = self
            .http
            .get(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(wait + 30));
        if let Some(n) = known {
            req = req.header("If-None-Match", format!("\"{n}\""));
        }
        if json {
            req = req.header("Accept", "application/json");
        }
        let (status, headers, body) = self.send("GET", &path, req).await?;
        if status == 304 {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&body).into_owned();
        if !(200..300).contains(&status) {
            return Err(ClientError::Decode(format!(
                "trust bundle answered {status}: {text}"
            )));
        }
        let seq = headers
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim_matches('"').parse::<u64>().ok())
            .ok_or_else(|| ClientError::Decode("trust bundle without an ETag".into()))?;
        Ok(Some((seq, text)))
    }
}

/// An instance request for GUIDs derived from `n`.
pub(crate) fn instance_request(csr: &str, n: u32) -> api::InstanceCertificateRequest {
    api::InstanceCertificateRequest {
        csr: csr.to_string(),
        instance_guid: format!("9a1c2f3e-5b6d-4e7f-8a9b-{n:012x}"),
        app_guid: "6f1e0c9a-2b3d-4c5e-8f7a-1b2c3d4e5f60".into(),
        space_guid: "5e0d9b8a-1a2c-4b4d-9e6f-0a1b2c3d4e5f".into(),
        organization_guid: "4d9c8a7b-0f1b-4a3c-8d5e-f90a1b2c3d4e".into(),
        container_ip: None,
        internal_routes: None,
        ttl_seconds: None,
    }
}

/// Writes `text` to a file in `dir` and returns its path.
pub(crate) fn file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Splits a PEM chain into its blocks as PEM text.
pub(crate) fn pem_blocks(chain: &str) -> Vec<String> {
    pem::parse_many(chain)
        .unwrap()
        .into_iter()
        .map(|p| pem::encode(&p))
        .collect()
}

/// `openssl verify -x509_strict -purpose PURPOSE` of a chain (leaf, then intermediates)
/// against `bundle`: whether it passed, and what openssl said.
pub(crate) fn openssl_verify(bundle: &str, chain: &str, purpose: &str) -> (bool, String) {
    let tmp = tempfile::tempdir().unwrap();
    let blocks = pem_blocks(chain);
    let leaf = file(tmp.path(), "leaf.pem", &blocks[0]);
    let inter = file(tmp.path(), "inter.pem", &blocks[1..].join(""));
    let roots = file(tmp.path(), "roots.pem", bundle);
    let out = Command::new("openssl")
        .args(["verify", "-x509_strict", "-purpose", purpose, "-CAfile"])
        .arg(&roots)
        .arg("-untrusted")
        .arg(&inter)
        .arg(&leaf)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Sends SIGTERM to a child and waits up to 20 s for it to exit, then kills it.
pub(crate) fn stop_child(child: Option<Child>) {
    if let Some(c) = child {
        let _ = terminate(c, Duration::from_secs(20));
    }
}

/// SIGTERM, then a blocking wait for the exit on a helper thread (no polling); SIGKILL if
/// the child is still there after `grace`. The exit status, or `None` if it had to be killed.
pub(crate) fn terminate(mut child: Child, grace: Duration) -> Option<std::process::ExitStatus> {
    let pid = child.id();
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        if let Ok(status) = child.wait() {
            let _ = tx.send(status);
        }
    });
    let status = rx.recv_timeout(grace).ok();
    if status.is_none() {
        // The waiter still owns the Child, so the pid cannot have been reused yet.
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    let _ = waiter.join();
    status
}

/// Writes instance credentials in the cell agent's layout and swaps them in as one set, the
/// way Kubernetes' atomic writer does: the files go into a new `..<timestamp>` directory, a
/// `..data_tmp` symlink to it is renamed over `..data`, and `instance.crt`, `instance.key`
/// and `trust-bundle.crt` are relative symlinks through `..data`. The previous version
/// directory is removed afterwards.
pub(crate) fn write_instance_dir(dir: &Path, chain_pem: &str, key_pem: &str, bundle_pem: &str) {
    let set = lanyard::agent::files::CredentialSet {
        chain_pem,
        key_pem,
        bundle_pem,
    };
    if let Some(previous) = lanyard::agent::files::write_set(dir, &set).unwrap() {
        let _ = std::fs::remove_dir_all(previous);
    }
}

/// A child process that is killed when the guard is dropped (also when a test panics).
pub(crate) struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A CSR made by openssl with the given key options and extra `req` arguments.
pub(crate) fn openssl_csr(dir: &std::path::Path, key_args: &[&str], extra: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(["req", "-new", "-nodes", "-keyout"])
        .arg(dir.join("csr-key.pem"))
        .args(key_args)
        .args(if extra.is_empty() {
            &["-subj", "/CN=x"][..]
        } else {
            extra
        })
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Starts `lanyard <command> --config <config>` with debug logs appended to `log` and
/// `clear` removed from its environment (so the caller's environment cannot leak in), and
/// waits for the one line it prints once bound: `listening on <where>`. Returns the child
/// and `<where>` (`https://ip:port`, `http://ip:port`, `unix:/path`).
pub(crate) fn spawn_logged(
    command: &str,
    config: &Path,
    log: &Path,
    clear: &str,
) -> (Child, String) {
    let log_file = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap()
    };
    let mut cmd = Command::new(BIN);
    cmd.args([command, "--config"])
        .arg(config)
        .env_remove(clear)
        .env("LANYARD_LOG", "info,lanyard=debug")
        .stderr(log_file());
    match spawn_reporting(cmd, log_file(), START_TIMEOUT) {
        Ok((child, at)) => (child, at),
        Err(e) => panic!(
            "lanyard {command}: {e}\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        ),
    }
}

/// Spawns `cmd` with a piped stdout and waits for the first line it prints that starts with
/// `listening on `; returns the child and the rest of that line. A thread keeps reading
/// stdout until the child closes it, so the child never blocks on a full pipe; every other
/// line goes to `rest`. If the child exits first, or says nothing of the kind within
/// `timeout`, it is killed and the error says what happened.
pub(crate) fn spawn_reporting(
    mut cmd: Command,
    rest: impl Write + Send + 'static,
    timeout: Duration,
) -> Result<(Child, String), String> {
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut rest = rest;
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.is_some() && line.starts_with("listening on ") {
                let _ = tx.take().unwrap().send(line);
            } else {
                let _ = writeln!(rest, "{line}");
            }
        }
    });
    let line: String = match rx.recv_timeout(timeout) {
        Ok(line) => line,
        Err(e) => {
            let _ = child.kill();
            let status = child.wait().unwrap();
            return Err(match e {
                std::sync::mpsc::RecvTimeoutError::Disconnected => {
                    format!("exited with {status} before it was listening")
                }
                std::sync::mpsc::RecvTimeoutError::Timeout => {
                    format!("did not say where it listens within {timeout:?}")
                }
            });
        }
    };
    Ok((child, line["listening on ".len()..].to_string()))
}
