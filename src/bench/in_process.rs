//! Issuances through the API router in this process, without sockets or TLS: from the
//! request's bytes (JSON with a PEM CSR, the cell's identity attached as the accept loop
//! would) to the durable record (sled, flushed) and the response's bytes. Run under
//! callgrind by `scripts/bench-instructions.sh`, it gives instructions per issuance, which
//! do not change with the machine's load the way times do.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::http::{header, Request, StatusCode};
use rustls::pki_types::CertificateDer;
use tower::ServiceExt;

use super::procstat::ProcSample;
use crate::api;
use crate::ca::Ca;
use crate::client::{new_key_and_csr, ClientError};
use crate::config::Config;
use crate::http::handlers::{router, AppState};
use crate::http::tls::{identify, Caller, PeerIdentity};
use crate::x509::inspect::parse_pem_certs;

fn setup(m: impl std::fmt::Display) -> ClientError {
    ClientError::Setup(format!("in-process bench: {m}"))
}

/// A CA in a throw-away directory, removed on drop.
struct TempCa {
    dir: std::path::PathBuf,
    state: Arc<AppState>,
    /// Built once and cloned per request, as the accept loop does.
    app: axum::Router,
}

impl Drop for TempCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl TempCa {
    fn new() -> Result<TempCa, ClientError> {
        let dir = std::env::temp_dir().join(format!("lanyard-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(setup)?;
        let d = dir.display();
        let text = format!(
            "trust_domain = \"lanyard.internal\"\nstate_dir = \"{d}/state\"\nauto_init = true\n\
             [listen]\naddress = \"127.0.0.1:0\"\n[keys]\nkek_file = \"{d}/kek\"\n\
             [rotation]\nautomatic = false\npropagation_delay = \"10m\"\n\
             [storage]\nbackend = \"sled\"\n"
        );
        let path = dir.join("lanyard.toml");
        std::fs::write(&path, text).map_err(setup)?;
        let config = Config::load(&path).map_err(setup)?;
        let (ca, _) = Ca::init(&config).map_err(setup)?;
        let state = Arc::new(AppState::in_process(Arc::new(ca)));
        Ok(TempCa {
            app: router(state.clone()),
            state,
            dir,
        })
    }

    /// The identity the accept loop attaches for a client presenting `chain_pem`.
    fn caller(&self, chain_pem: &[u8]) -> Result<Caller, ClientError> {
        let certs: Vec<CertificateDer<'static>> = parse_pem_certs(chain_pem)
            .map_err(setup)?
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        let identity = identify(self.state.ca(), &certs);
        if !matches!(identity, PeerIdentity::Verified { .. }) {
            return Err(setup(format!("credential not accepted: {identity:?}")));
        }
        Ok(Caller {
            addr: ([127, 0, 0, 1], 40000).into(),
            identity,
            certs: Arc::new(certs),
        })
    }

    async fn post(
        &self,
        path: &str,
        body: Bytes,
        caller: Option<&Caller>,
        bearer: Option<&str>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let mut req = Request::builder()
            .method("POST")
            .uri(path)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(t) = bearer {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let mut req = req.body(Body::from(body)).map_err(setup)?;
        if let Some(c) = caller {
            req.extensions_mut().insert(c.clone());
        }
        let r = self.app.clone().oneshot(req).await.map_err(setup)?;
        let status = r.status();
        let bytes = axum::body::to_bytes(r.into_body(), usize::MAX)
            .await
            .map_err(setup)?;
        Ok((status, bytes))
    }

    /// A cell's identity: a join token from the operator, spent on a fresh CSR.
    async fn cell(&self) -> Result<Caller, ClientError> {
        let op_pem = std::fs::read(
            self.state
                .ca()
                .config()
                .operator_credential_dir()
                .join("cert.pem"),
        )
        .map_err(setup)?;
        let operator = self.caller(&op_pem)?;
        let body = serde_json::to_vec(&api::JoinTokenRequest {
            role: "cell".into(),
            name: "bench-cell".into(),
            ttl_seconds: None,
        })
        .map_err(setup)?;
        let (_, t) = self
            .post("/v1/join-tokens", body.into(), Some(&operator), None)
            .await?;
        let t: api::JoinTokenResponse = serde_json::from_slice(&t).map_err(setup)?;
        let (_key, csr) = new_key_and_csr()?;
        let body = serde_json::to_vec(&api::CsrRequest { csr }).map_err(setup)?;
        let (_, c) = self
            .post("/v1/join", body.into(), None, Some(&t.token))
            .await?;
        let c: api::IssuedCertificate = serde_json::from_slice(&c).map_err(setup)?;
        self.caller(c.certificate_chain.as_bytes())
    }
}

/// One instance request's body, for instance `n`.
fn body(csr: &str, n: usize) -> Result<Bytes, ClientError> {
    let req = api::InstanceCertificateRequest {
        csr: csr.to_string(),
        instance_guid: format!("be{n:014x}"),
        app_guid: "be0c9a2b3d4c5e8f7a1b2c3d4e5f60".into(),
        space_guid: "be0d9b8a1a2c4b4d9e6f0a1b2c3d4e5f".into(),
        organization_guid: "be9c8a7b0f1b4a3c8d5ef90a1b2c3d4e".into(),
        container_ip: Some("10.255.4.7".into()),
        internal_routes: None,
        ttl_seconds: Some(3600.into()),
    };
    Ok(serde_json::to_vec(&req).map_err(setup)?.into())
}

/// Runs `n` issuances one after another (after a few to warm up) and answers the time and
/// process CPU per issuance; instruction counts come from running this under callgrind.
pub(super) async fn run(n: usize) -> Result<serde_json::Value, ClientError> {
    let ca = tokio::task::block_in_place(TempCa::new)?;
    let cell = ca.cell().await?;
    let (_k, csr) = new_key_and_csr()?;
    const WARM_UP: usize = 3;
    let bodies = (0..n + WARM_UP)
        .map(|i| body(&csr, i))
        .collect::<Result<Vec<_>, _>>()?;
    let mut bodies = bodies.into_iter();
    for b in bodies.by_ref().take(WARM_UP) {
        ca.post("/v1/instance-certificates", b, Some(&cell), None)
            .await?;
    }
    let pid = std::process::id();
    let cpu0 = ProcSample::read(pid).ok();
    let t0 = Instant::now();
    let mut issued = 0usize;
    for b in bodies {
        let (status, bytes) = ca
            .post("/v1/instance-certificates", b, Some(&cell), None)
            .await?;
        if status != StatusCode::CREATED {
            return Err(setup(format!(
                "answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        issued += 1;
    }
    let wall = t0.elapsed();
    let cpu = cpu0
        .zip(ProcSample::read(pid).ok())
        .map(|(a, b)| super::procstat::cpu_between(&a, &b));
    let per = |s: f64| s * 1e6 / issued.max(1) as f64;
    Ok(serde_json::json!({
        "mode": "in-process",
        "issued": issued,
        "wall_us_per_issuance": per(wall.as_secs_f64()),
        "process_cpu_us_per_issuance": cpu.map(|c| per(c.as_secs_f64())),
    }))
}
