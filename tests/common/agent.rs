//! A real `lanyard agent` process next to a [`TestCa`].

use std::path::PathBuf;
use std::process::Child;

use super::TestCa;

pub(crate) struct TestAgent {
    pub dir: tempfile::TempDir,
    /// `credentials_root`.
    pub root: PathBuf,
    pub config: PathBuf,
    pub port: u16,
    pub child: Option<Child>,
    pub log: PathBuf,
    pub http: reqwest::Client,
}

impl TestAgent {
    /// Creates a join token and starts an agent with `instance_ttl`.
    pub(crate) fn start(ca: &TestCa, name: &str, instance_ttl: &str) -> TestAgent {
        Self::start_with_root(ca, name, instance_ttl, "instances")
    }

    /// [`TestAgent::start`] with `credentials_root` at `root` under the agent's directory.
    pub(crate) fn start_with_root(
        ca: &TestCa,
        name: &str,
        instance_ttl: &str,
        root: &str,
    ) -> TestAgent {
        // Plain-HTTP reqwest still wants a process-wide rustls provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let (code, token, err) = ca.cli(&[
            "token", "create", "--role", "cell", "--name", name, "--ttl", "10m",
        ]);
        assert_eq!(code, 0, "{err}");
        std::fs::write(dir.path().join("join-token"), token.trim()).unwrap();
        std::fs::copy(
            ca.operator_dir().join("trust-bundle.pem"),
            dir.path().join("bootstrap.pem"),
        )
        .unwrap();
        let d = dir.path().display();
        let text = format!(
            "server = \"{}\"\ntrust_bundle_file = \"{d}/bootstrap.pem\"\njoin_token_file = \"{d}/join-token\"\n\
             credentials_root = \"{d}/{root}\"\nstate_dir = \"{d}/state\"\nlisten = \"127.0.0.1:0\"\n\
             instance_ttl = \"{instance_ttl}\"\nrenew_fraction = 0.5\nmax_backoff = \"2s\"\n",
            ca.url()
        );
        let config = dir.path().join("agent.toml");
        std::fs::write(&config, text).unwrap();
        let log = dir.path().join("agent.log");
        let root = dir.path().join(root);
        let mut a = TestAgent {
            root,
            dir,
            config,
            port: 0,
            child: None,
            log,
            http: reqwest::Client::new(),
        };
        a.spawn();
        a
    }

    /// Starts the agent and returns once its local API is bound (it prints
    /// `listening on http://<ip>:<port>`); each start gets a new port from the kernel.
    pub(crate) fn spawn(&mut self) {
        let (child, at) =
            super::spawn_logged("agent", &self.config, &self.log, "LANYARD_JOIN_TOKEN");
        self.child = Some(child);
        let addr: std::net::SocketAddr = at
            .strip_prefix("http://")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("lanyard agent reported {at:?}"));
        self.port = addr.port();
    }

    pub(crate) fn stop(&mut self) {
        super::stop_child(self.child.take());
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub(crate) fn instance_dir(&self, guid: &str) -> PathBuf {
        self.root.join(guid)
    }

    /// PUTs an instance; returns status and JSON body.
    pub(crate) async fn put(&self, guid: &str, app: &str) -> (u16, serde_json::Value) {
        let body = serde_json::json!({
            "app_guid": app,
            "space_guid": "5e0d9b8a-1a2c-4b4d-9e6f-0a1b2c3d4e5f",
            "organization_guid": "4d9c8a7b-0f1b-4a3c-8d5e-f90a1b2c3d4e",
            "container_ip": "10.255.0.1",
        });
        let r = self
            .http
            .put(self.url(&format!("/v1/instances/{guid}")))
            .json(&body)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub(crate) async fn instances(&self) -> serde_json::Value {
        self.http
            .get(self.url("/v1/instances"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
