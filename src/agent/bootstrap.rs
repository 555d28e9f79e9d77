//! Bootstrap: the cell credential (loaded from disk, or obtained by joining with the
//! one-time token) and its renewal, and the start of the agent.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use super::batcher::batcher;
use super::config::AgentConfig;
use super::instances::reload_instances;
use super::renewal::{backoff, renewal_delay};
use super::{Agent, AgentError};
use crate::api;
use crate::client::{new_key_and_csr, tls_config, ApiClient};
use crate::x509::inspect::{parse_pem_certs, CertInfo};

/// The cell credential: chain and key, kept together in one 0600 file so a crash never
/// pairs a key with the wrong certificate.
#[derive(Serialize, Deserialize)]
pub(super) struct CellCredential {
    pub(super) chain_pem: String,
    pub(super) key_pem: Zeroizing<String>,
}

impl std::fmt::Debug for CellCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CellCredential(...)")
    }
}

impl CellCredential {
    /// When the credential expires.
    pub(super) fn not_after(&self) -> Option<SystemTime> {
        self.info().map(|i| i.not_after)
    }

    fn info(&self) -> Option<CertInfo> {
        parse_pem_certs(self.chain_pem.as_bytes())
            .ok()
            .and_then(|c| c.into_iter().next())
            .and_then(|d| CertInfo::from_der(&d).ok())
    }
}

/// Renews the cell credential at its renewal time, and after a failure with backoff.
pub(super) async fn cell_renewal_loop(agent: Arc<Agent>) {
    let mut failures = 0u32;
    loop {
        let wait = {
            let cell = agent.cell.read().unwrap_or_else(|p| p.into_inner());
            match cell.info() {
                Some(i) => {
                    // The credential file is written when the credential arrives.
                    let received = modified(&cell_file(&agent.config)).unwrap_or(i.not_before);
                    let at = received
                        + renewal_delay(received, i.not_after, agent.config.renew_fraction);
                    at.duration_since(SystemTime::now()).unwrap_or_default()
                }
                None => Duration::ZERO,
            }
        };
        let wait = if failures > 0 {
            backoff(failures, agent.config.max_backoff.0)
        } else {
            wait
        };
        tokio::time::sleep(wait).await;
        let result = renew_cell(&agent).await;
        agent.metrics.cell_renewal(result.is_ok());
        match result {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "cell credential not renewed; retrying");
            }
        }
    }
}

async fn renew_cell(agent: &Arc<Agent>) -> Result<(), String> {
    let (key_pem, csr) = new_key_and_csr().map_err(|e| e.to_string())?;
    let issued: api::IssuedCertificate = agent
        .client()
        .post("/v1/cell-credentials", &api::CsrRequest { csr }, None)
        .await
        .map_err(|e| e.to_string())?;
    let cred = CellCredential {
        chain_pem: issued.certificate_chain,
        key_pem,
    };
    save_cell(&agent.config, &cred)?;
    *agent.cell.write().unwrap_or_else(|p| p.into_inner()) = cred;
    agent.rebuild_client().map_err(|e| e.to_string())?;
    tracing::info!(serial = %issued.serial, authority = %issued.authority_id, not_after = %issued.not_after, "cell credential renewed");
    Ok(())
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn cell_file(config: &AgentConfig) -> PathBuf {
    config.state_dir.join("cell-credential.json")
}

fn save_cell(config: &AgentConfig, cred: &CellCredential) -> Result<(), String> {
    let data = Zeroizing::new(serde_json::to_vec(cred).map_err(|e| e.to_string())?);
    crate::fsutil::write_atomic(&cell_file(config), &data, 0o600)
        .map_err(|e| format!("saving the cell credential: {e}"))
}

fn load_cell(config: &AgentConfig) -> Option<CellCredential> {
    let data = Zeroizing::new(std::fs::read(cell_file(config)).ok()?);
    let cred: CellCredential = serde_json::from_slice(&data).ok()?;
    let valid = cred
        .info()
        .is_some_and(|i| i.not_after > SystemTime::now() + Duration::from_secs(5));
    valid.then_some(cred)
}

fn read_join_token(config: &AgentConfig) -> Result<Zeroizing<String>, AgentError> {
    if let Ok(t) = std::env::var("LANYARD_JOIN_TOKEN") {
        return Ok(Zeroizing::new(t.trim().to_string()));
    }
    let Some(path) = &config.join_token_file else {
        return Err(AgentError::Config(
            "no cell credential yet and no join token: set LANYARD_JOIN_TOKEN or join_token_file"
                .into(),
        ));
    };
    std::fs::read_to_string(path)
        .map(|t| Zeroizing::new(t.trim().to_string()))
        .map_err(|e| AgentError::Config(format!("join_token_file {}: {e}", path.display())))
}

/// Bootstraps the agent: loads or obtains the cell credential, fetches the bundle, reloads
/// the instance list and renews what is due.
pub async fn start(config: AgentConfig) -> Result<Arc<Agent>, AgentError> {
    let rt = |e: String| AgentError::Runtime(e);
    std::fs::create_dir_all(&config.state_dir)
        .map_err(|e| rt(format!("state_dir {}: {e}", config.state_dir.display())))?;
    std::fs::create_dir_all(&config.credentials_root).map_err(|e| {
        rt(format!(
            "credentials_root {}: {e}",
            config.credentials_root.display()
        ))
    })?;
    let root = std::fs::canonicalize(&config.credentials_root).map_err(|e| rt(e.to_string()))?;
    let bootstrap = std::fs::read_to_string(&config.trust_bundle_file).map_err(|e| {
        AgentError::Config(format!(
            "trust_bundle_file {}: {e}",
            config.trust_bundle_file.display()
        ))
    })?;
    parse_pem_certs(bootstrap.as_bytes()).map_err(|e| {
        AgentError::Config(format!(
            "trust_bundle_file {}: {e}",
            config.trust_bundle_file.display()
        ))
    })?;
    let saved_bundle = std::fs::read_to_string(config.state_dir.join("trust-bundle.pem")).ok();
    let bundle_pem = saved_bundle.unwrap_or_else(|| bootstrap.clone());

    // One failover client from the start: the join goes to the first replica that answers,
    // and the agent's client keeps that replica (see `Agent::rebuild_client`). Until a cell
    // credential exists it presents none; the bootstrap roots are trusted beside a saved bundle.
    let anon = ApiClient::new_failover(
        config.server_urls(),
        tls_config(format!("{bundle_pem}{bootstrap}").as_bytes(), None)
            .map_err(|e| AgentError::Config(e.to_string()))?,
    )
    .map_err(|e| AgentError::Config(e.to_string()))?;
    let cell = match load_cell(&config) {
        Some(c) => {
            tracing::info!("reusing the saved cell credential");
            c
        }
        None => {
            let token = read_join_token(&config)?;
            let (key_pem, csr) = new_key_and_csr().map_err(|e| rt(e.to_string()))?;
            let issued: api::IssuedCertificate = anon
                .post("/v1/join", &api::CsrRequest { csr }, Some(&token))
                .await
                .map_err(|e| rt(format!("joining {}: {e}", config.server_urls().join(", "))))?;
            let cred = CellCredential {
                chain_pem: issued.certificate_chain,
                key_pem,
            };
            save_cell(&config, &cred).map_err(rt)?;
            tracing::info!(spiffe_id = %issued.spiffe_id, replica = %anon.current_server(), "joined the CA");
            cred
        }
    };

    let (tx, rx) = mpsc::channel(4096);
    let window = config.batch_window.0;
    let agent = Arc::new(Agent {
        root,
        cell: RwLock::new(cell),
        bundle: RwLock::new((0, bundle_pem)),
        // Replaced at once by `rebuild_client`, which keeps its replicas.
        client: RwLock::new(Arc::new(anon)),
        instances: Mutex::new(HashMap::new()),
        persist_lock: Mutex::new(()),
        bundle_fetched: std::sync::atomic::AtomicBool::new(false),
        changes: std::sync::atomic::AtomicU64::new(0),
        persisted: std::sync::atomic::AtomicU64::new(0),
        batches: tx,
        workload: Default::default(),
        metrics: Default::default(),
        config,
    });
    agent
        .rebuild_client()
        .map_err(|e| AgentError::Config(e.to_string()))?;
    tokio::spawn(batcher(Arc::downgrade(&agent), rx, window));

    // The current bundle, so new files carry it (a CA outage here is not fatal).
    match agent.client().trust_bundle(None, 0, false).await {
        Ok(Some((seq, pem_text))) => {
            *agent.bundle.write().unwrap_or_else(|p| p.into_inner()) = (seq, pem_text.clone());
            agent
                .bundle_fetched
                .store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = crate::fsutil::write_atomic(
                &agent.state_file("trust-bundle.pem"),
                pem_text.as_bytes(),
                0o644,
            );
            let _ = agent.rebuild_client();
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "the CA is unreachable at start; serving from disk"),
    }
    reload_instances(&agent);
    Ok(agent)
}
