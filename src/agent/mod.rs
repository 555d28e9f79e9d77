//! The cell agent: joins with a one-time token, keeps its own cell credential fresh, and
//! keeps every instance's credential files on disk and current.
//!
//! One job per file: `bootstrap` (join, the cell credential and its renewal), `instances`
//! (the instance table and each instance's credential set), `batcher` (gathering instance
//! requests into batches), `renewal` (when to renew, with jitter and backoff),
//! `bundle_watch` (the trust bundle long poll), `verify` (the check of each new certificate
//! before it is published), `local_api` (plain HTTP on a Unix socket or
//! loopback port), `files` (the instance directory's set), `workload_api` (the SPIFFE
//! Workload API on a socket per instance, with `svid` its messages, `unix_bind` binding
//! sockets at long paths, `h2_authority` the fix for clients' Unix-socket authority),
//! `metrics` (its `/metrics`), `exclusive` (one agent per state directory) and
//! `config` (`ca-config/agent.toml`). This module holds the [`Agent`] they share and [`run`].

mod batcher;
mod bootstrap;
mod bundle_watch;
pub(crate) mod config;
mod exclusive;
pub mod files;
mod h2_authority;
mod instances;
pub(crate) mod local_api;
mod metrics;
mod renewal;
mod svid;
mod unix_bind;
mod verify;
pub mod workload_api;
/// The Workload API's messages and service, generated from `proto/spiffe/workload/workload.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub(crate) mod workload_proto {
    tonic::include_proto!("_");
}

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::mpsc;

use crate::client::{tls_config, ApiClient, ClientError};
use crate::ids::Guid;
use config::AgentConfig;

pub use batcher::CaRefusal;
pub use bootstrap::start;
pub use instances::{InstanceSpec, InstanceStatus, PutError};
pub use renewal::renewal_delay;

use batcher::BatchItem;
use bootstrap::CellCredential;
use instances::InstanceState;

/// Agent failures with their exit code.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Configuration problem (exit 2).
    #[error("{0}")]
    Config(String),
    /// Runtime failure (exit 1).
    #[error("{0}")]
    Runtime(String),
}

impl AgentError {
    /// Process exit code.
    pub fn exit_code(&self) -> i32 {
        match self {
            AgentError::Config(_) => 2,
            AgentError::Runtime(_) => 1,
        }
    }
}

/// The running agent.
pub struct Agent {
    config: AgentConfig,
    root: PathBuf,
    cell: RwLock<CellCredential>,
    bundle: RwLock<(u64, String)>,
    client: RwLock<Arc<ApiClient>>,
    instances: Mutex<HashMap<Guid, InstanceState>>,
    persist_lock: Mutex<()>,
    /// Whether a bundle was fetched from the CA since start.
    bundle_fetched: std::sync::atomic::AtomicBool,
    /// Bumped on every change to the instance table.
    changes: std::sync::atomic::AtomicU64,
    /// The change count of the last snapshot written to disk.
    persisted: std::sync::atomic::AtomicU64,
    batches: mpsc::Sender<BatchItem>,
    /// The SPIFFE Workload API endpoint of every instance.
    workload: workload_api::Endpoints,
    /// Counters for the local API's `/metrics`.
    metrics: metrics::AgentMetrics,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("servers", &self.config.server_urls())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Agent {
    fn state_file(&self, name: &str) -> PathBuf {
        self.config.state_dir.join(name)
    }

    fn client(&self) -> Arc<ApiClient> {
        self.client
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn rebuild_client(&self) -> Result<(), ClientError> {
        let cell = self.cell.read().unwrap_or_else(|p| p.into_inner());
        let bundle = self.bundle.read().unwrap_or_else(|p| p.into_inner());
        // Until the first bundle arrives from the CA, the bootstrap roots are trusted too (a
        // restart after a rotation may find the saved bundle stale). After that only the
        // published bundle counts, so a retired (maybe compromised) root cannot vouch for the
        // CA any more.
        let mut roots = bundle.1.clone();
        if !self
            .bundle_fetched
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            if let Ok(extra) = std::fs::read_to_string(&self.config.trust_bundle_file) {
                roots.push_str(&extra);
            }
        }
        let tls = tls_config(roots.as_bytes(), Some((&cell.chain_pem, &cell.key_pem)))?;
        // Same replicas, same memory of which one answers: a new bundle or credential must
        // not send the next request back to a replica that is down.
        let c = self.client().with_tls(tls)?;
        *self.client.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(c);
        Ok(())
    }

    /// The gauges of `/metrics`, read now.
    fn gauges(&self) -> metrics::AgentGauges {
        let (instances, earliest_expiry) = self.instance_expiries();
        metrics::AgentGauges {
            instances,
            earliest_expiry,
            cell_not_after: self
                .cell
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .not_after(),
            bundle_sequence: self.bundle.read().unwrap_or_else(|p| p.into_inner()).0,
        }
    }

    /// `GET /metrics` of the local API.
    pub(crate) fn render_metrics(&self) -> Result<String, std::fmt::Error> {
        self.metrics.render(self.gauges())
    }

    /// The directory of one instance.
    pub fn instance_dir(&self, guid: &Guid) -> PathBuf {
        self.root.join(guid.as_str())
    }
}

/// Runs the agent with the config at `path` until SIGINT/SIGTERM.
pub async fn run(path: &Path) -> Result<(), AgentError> {
    let config = AgentConfig::load(path).map_err(|e| AgentError::Config(e.to_string()))?;
    let listen = config
        .listen()
        .map_err(|e| AgentError::Config(e.to_string()))?;
    // Before anything else touches the state (a join spends its token): one agent per state.
    let _lock = exclusive::lock_state_dir(&config.state_dir)?;
    if let config::Listen::Unix(path) = &listen {
        exclusive::claim_socket(path)?;
    }
    let agent = start(config).await?;
    let tasks = [
        tokio::spawn(renewal::renewal_loop(agent.clone())),
        tokio::spawn(bundle_watch::bundle_loop(agent.clone())),
        tokio::spawn(bootstrap::cell_renewal_loop(agent.clone())),
    ];
    let res = local_api::serve(agent.clone(), listen, crate::runtime::shutdown_signal()).await;
    for t in tasks {
        t.abort();
    }
    agent.workload.close_all(&agent.root);
    tracing::info!("agent stopped; credential files stay in place");
    res
}
