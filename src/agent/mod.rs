//! The cell agent (contract section 5): joins with a one-time token, keeps its own cell
//! credential fresh, and keeps every instance's credential files on disk and current.
//!
//! Submodules: `config` (`ca-config/agent.toml`), `files` (the instance directory's set),
//! `local_api` (plain HTTP on a Unix socket or loopback port). This module holds bootstrap,
//! the instance table, renewal, batching and the bundle watch.

pub mod config;
pub mod files;
pub mod local_api;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use zeroize::Zeroizing;

use crate::api;
use crate::client::{new_key_and_csr, tls_config, ApiClient, ClientError};
use crate::ids::Guid;
use crate::timefmt::rfc3339;
use crate::x509::inspect::{parse_pem_certs, CertInfo};
use config::AgentConfig;

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

/// What a PUT says about an instance; also what the agent persists per instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpec {
    /// App GUID.
    pub app_guid: String,
    /// Space GUID.
    pub space_guid: String,
    /// Organization GUID.
    pub organization_guid: String,
    /// Container IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_ip: Option<String>,
    /// Internal routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_routes: Option<Vec<String>>,
}

/// What the agent keeps on disk per instance (`instances.json`).
#[derive(Debug, Serialize, Deserialize)]
struct PersistedInstance {
    spec: InstanceSpec,
    /// When its current certificate arrived: the renewal clock after a restart.
    #[serde(default, with = "crate::timefmt::rfc3339_option")]
    received_at: Option<SystemTime>,
}

/// The agent's view of one instance.
#[derive(Debug)]
struct InstanceState {
    spec: InstanceSpec,
    not_after: Option<SystemTime>,
    received_at: Option<SystemTime>,
    renew_at: Instant,
    renewals: u64,
    failures: u32,
    last_error: Option<String>,
    in_flight: bool,
    lock: Arc<tokio::sync::Mutex<()>>,
}

/// One line of `GET /v1/instances`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceStatus {
    /// Instance GUID.
    pub instance_guid: String,
    /// RFC 3339, or null before the first certificate.
    pub not_after: Option<String>,
    /// How many times the certificate was renewed.
    pub renewals: u64,
    /// The last failure, cleared by the next success.
    pub last_error: Option<String>,
}

/// The cell credential: chain and key, kept together in one 0600 file so a crash never
/// pairs a key with the wrong certificate.
#[derive(Serialize, Deserialize)]
struct CellCredential {
    chain_pem: String,
    key_pem: Zeroizing<String>,
}

impl std::fmt::Debug for CellCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CellCredential(...)")
    }
}

impl CellCredential {
    fn info(&self) -> Option<CertInfo> {
        parse_pem_certs(self.chain_pem.as_bytes())
            .ok()
            .and_then(|c| c.into_iter().next())
            .and_then(|d| CertInfo::from_der(&d).ok())
    }
}

struct BatchItem {
    request: api::InstanceCertificateRequest,
    reply: oneshot::Sender<Result<api::IssuedCertificate, CaRefusal>>,
}

/// Why the CA did not issue: its problem status when it answered, and a readable message.
#[derive(Debug, Clone)]
pub struct CaRefusal {
    /// The CA's status (400, 422, ...), or `None` when it could not be reached.
    pub status: Option<u16>,
    /// What happened.
    pub message: String,
}

impl std::fmt::Display for CaRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<&ClientError> for CaRefusal {
    fn from(e: &ClientError) -> Self {
        CaRefusal {
            status: match e {
                ClientError::Api(p) => Some(p.status),
                _ => None,
            },
            message: e.to_string(),
        }
    }
}

impl CaRefusal {
    fn unreachable(message: impl Into<String>) -> Self {
        CaRefusal {
            status: None,
            message: message.into(),
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
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("server", &self.config.server)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn jitter(d: Duration) -> Duration {
    // +-10%, from the CSPRNG (no need for anything weaker here).
    let mut b = [0u8; 2];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    let f = 0.9 + 0.2 * (u16::from_be_bytes(b) as f64 / u16::MAX as f64);
    d.mul_f64(f)
}

/// When to renew a certificate received at `received` that ends at `not_after`.
pub fn renewal_delay(received: SystemTime, not_after: SystemTime, fraction: f64) -> Duration {
    let life = not_after.duration_since(received).unwrap_or_default();
    jitter(life.mul_f64(fraction))
}

fn backoff(failures: u32, max: Duration) -> Duration {
    let base = Duration::from_millis(500);
    let exp = base.saturating_mul(1u32 << failures.min(16));
    jitter(exp.min(max))
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
        let c = ApiClient::new(&self.config.server, tls)?;
        *self.client.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(c);
        Ok(())
    }

    /// The directory of one instance.
    pub fn instance_dir(&self, guid: &Guid) -> PathBuf {
        self.root.join(guid.as_str())
    }

    /// Writes the instance table durably. Concurrent callers share one write (group commit):
    /// a caller whose change is already in a written snapshot returns at once.
    fn persist_instances(&self) -> Result<(), String> {
        use std::sync::atomic::Ordering;
        let mine = self.changes.fetch_add(1, Ordering::SeqCst) + 1;
        let _g = lock(&self.persist_lock);
        if self.persisted.load(Ordering::SeqCst) >= mine {
            return Ok(());
        }
        let snapshot = self.changes.load(Ordering::SeqCst);
        let specs: HashMap<String, PersistedInstance> = lock(&self.instances)
            .iter()
            .map(|(g, s)| {
                (
                    g.to_string(),
                    PersistedInstance {
                        spec: s.spec.clone(),
                        received_at: s.received_at,
                    },
                )
            })
            .collect();
        let data = serde_json::to_vec_pretty(&specs).map_err(|e| e.to_string())?;
        crate::fsutil::write_atomic(&self.state_file("instances.json"), &data, 0o600)
            .map_err(|e| format!("saving the instance list: {e}"))?;
        self.persisted.store(snapshot, Ordering::SeqCst);
        Ok(())
    }

    /// [`Agent::persist_instances`] on a blocking thread (it fsyncs).
    async fn persist(self: &Arc<Self>) -> Result<(), String> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.persist_instances())
            .await
            .map_err(|e| e.to_string())?
    }

    /// The instance table for `GET /v1/instances`.
    pub fn statuses(&self) -> Vec<InstanceStatus> {
        let mut v: Vec<InstanceStatus> = lock(&self.instances)
            .iter()
            .map(|(g, s)| InstanceStatus {
                instance_guid: g.to_string(),
                not_after: s.not_after.map(rfc3339),
                renewals: s.renewals,
                last_error: s.last_error.clone(),
            })
            .collect();
        v.sort_by(|a, b| a.instance_guid.cmp(&b.instance_guid));
        v
    }

    /// Registers (or updates) an instance and returns once its files are on disk.
    pub async fn put_instance(
        self: &Arc<Self>,
        guid: Guid,
        spec: InstanceSpec,
    ) -> Result<SystemTime, PutError> {
        let existing = {
            let mut m = lock(&self.instances);
            match m.get_mut(&guid) {
                Some(s) if s.spec == spec && s.not_after.is_some_and(|t| t > SystemTime::now()) => {
                    return Ok(s.not_after.unwrap_or(SystemTime::now()));
                }
                Some(s) => {
                    s.spec = spec.clone();
                    true
                }
                None => {
                    m.insert(
                        guid.clone(),
                        InstanceState {
                            spec: spec.clone(),
                            not_after: None,
                            received_at: None,
                            renew_at: Instant::now() + Duration::from_secs(3600),
                            renewals: 0,
                            failures: 0,
                            last_error: None,
                            in_flight: true,
                            lock: Arc::new(tokio::sync::Mutex::new(())),
                        },
                    );
                    false
                }
            }
        };
        match self.refresh_instance(&guid).await {
            Ok(t) => {
                self.persist().await.map_err(PutError::Local)?;
                Ok(t)
            }
            Err(e) => {
                if !existing {
                    lock(&self.instances).remove(&guid);
                    let dir = self.instance_dir(&guid);
                    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
                }
                Err(e)
            }
        }
    }

    /// Stops renewing an instance and removes its files. `false` if it was unknown.
    pub async fn delete_instance(self: &Arc<Self>, guid: &Guid) -> Result<bool, String> {
        let state = lock(&self.instances).remove(guid);
        let Some(state) = state else { return Ok(false) };
        let _g = state.lock.lock().await;
        self.persist().await?;
        let dir = self.instance_dir(guid);
        tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
            _ => Ok(()),
        })
        .await
        .map_err(|e| e.to_string())??;
        Ok(true)
    }

    /// Gets a new certificate for `guid` (for the instance's key) and swaps its files.
    async fn refresh_instance(self: &Arc<Self>, guid: &Guid) -> Result<SystemTime, PutError> {
        let (spec, ilock, renewing) = {
            let mut m = lock(&self.instances);
            let s = m.get_mut(guid).ok_or(PutError::Gone)?;
            s.in_flight = true;
            (s.spec.clone(), s.lock.clone(), s.not_after.is_some())
        };
        // The CA call runs without the instance's lock, so a slow CA never holds up a bundle
        // rewrite or a DELETE of this instance; only the file swap is serialized.
        let result = match self.issue(guid, &spec).await {
            Ok((issued, key_pem)) => {
                let _g = ilock.lock().await;
                if lock(&self.instances).contains_key(guid) {
                    self.write_files(guid, &issued.certificate_chain, &key_pem)
                        .await
                        .and_then(|()| {
                            crate::timefmt::parse_rfc3339(&issued.not_after).ok_or_else(|| {
                                PutError::Ca(CaRefusal::unreachable(
                                    "the CA sent an unreadable not_after",
                                ))
                            })
                        })
                } else {
                    // Deleted while the CA was answering: write nothing back.
                    Err(PutError::Gone)
                }
            }
            Err(e) => Err(e),
        };
        let outcome = {
            let mut m = lock(&self.instances);
            let Some(s) = m.get_mut(guid) else {
                return Err(PutError::Gone);
            };
            s.in_flight = false;
            match result {
                Ok(not_after) => {
                    if renewing {
                        s.renewals += 1;
                    }
                    let now = SystemTime::now();
                    s.not_after = Some(not_after);
                    s.received_at = Some(now);
                    s.failures = 0;
                    s.last_error = None;
                    s.renew_at =
                        Instant::now() + renewal_delay(now, not_after, self.config.renew_fraction);
                    Ok(not_after)
                }
                Err(e) => {
                    s.failures += 1;
                    s.last_error = Some(e.to_string());
                    s.renew_at = Instant::now() + backoff(s.failures, self.config.max_backoff.0);
                    tracing::warn!(instance = %guid, error = %e, failures = s.failures, "instance certificate not renewed; keeping the current files and retrying");
                    Err(e)
                }
            }
        };
        if outcome.is_ok() {
            if let Err(e) = self.persist().await {
                tracing::warn!(error = %e, "could not save the instance list");
            }
        }
        outcome
    }

    /// Asks the CA (through the batcher) for a certificate for the instance's key.
    async fn issue(
        self: &Arc<Self>,
        guid: &Guid,
        spec: &InstanceSpec,
    ) -> Result<(api::IssuedCertificate, Zeroizing<String>), PutError> {
        let (key_pem, csr) = self.instance_key_and_csr(guid).await?;
        let request = api::InstanceCertificateRequest {
            csr,
            instance_guid: guid.to_string(),
            app_guid: spec.app_guid.clone(),
            space_guid: spec.space_guid.clone(),
            organization_guid: spec.organization_guid.clone(),
            container_ip: spec.container_ip.clone(),
            internal_routes: spec.internal_routes.clone(),
            ttl_seconds: Some((self.config.instance_ttl.0.as_secs() as i64).into()),
        };
        let (tx, rx) = oneshot::channel();
        self.batches
            .send(BatchItem { request, reply: tx })
            .await
            .map_err(|_| PutError::Local("the agent is shutting down".into()))?;
        let issued = rx
            .await
            .map_err(|_| PutError::Local("the agent is shutting down".into()))?
            .map_err(PutError::Ca)?;
        Ok((issued, key_pem))
    }

    /// Swaps in a new set with the current bundle. The caller holds the instance's lock.
    async fn write_files(
        &self,
        guid: &Guid,
        chain_pem: &str,
        key_pem: &str,
    ) -> Result<(), PutError> {
        let bundle = self
            .bundle
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone();
        let dir = self.instance_dir(guid);
        let (chain, key) = (chain_pem.to_string(), Zeroizing::new(key_pem.to_string()));
        let old = tokio::task::spawn_blocking(move || {
            files::write_set(
                &dir,
                &files::CredentialSet {
                    chain_pem: &chain,
                    key_pem: &key,
                    bundle_pem: &bundle,
                },
            )
        })
        .await
        .map_err(|e| PutError::Local(e.to_string()))?
        .map_err(|e| PutError::Local(format!("writing credentials: {e}")))?;
        remove_later(old);
        Ok(())
    }

    /// The instance's key (made at its first issuance and kept for its life) and a CSR.
    ///
    /// Keeping the key across renewals is what makes the file swap safe for every reader:
    /// an app that opens `instance.crt` just before a swap and `instance.key` just after
    /// still gets a matching pair, because only the certificate changed. A fresh key per
    /// renewal would leave that window open however atomic the directory swap is.
    async fn instance_key_and_csr(
        &self,
        guid: &Guid,
    ) -> Result<(Zeroizing<String>, String), PutError> {
        let dir = self.instance_dir(guid);
        let existing = tokio::task::spawn_blocking(move || files::read_set(&dir).ok().map(|s| s.1))
            .await
            .map_err(|e| PutError::Local(e.to_string()))?;
        if let Some(key_pem) = existing {
            if let Ok(csr) = csr_for_key(&key_pem) {
                return Ok((key_pem, csr));
            }
            tracing::warn!(instance = %guid, "the instance key on disk is unusable; making a new one");
        }
        new_key_and_csr().map_err(|e| PutError::Local(e.to_string()))
    }

    async fn send_batch(self: Arc<Self>, items: Vec<BatchItem>) {
        let client = self.client();
        if items.len() == 1 {
            let mut items = items;
            let Some(item) = items.pop() else { return };
            let r = client
                .post::<_, api::IssuedCertificate>("/v1/instance-certificates", &item.request, None)
                .await
                .map_err(|e| CaRefusal::from(&e));
            let _ = item.reply.send(r);
            return;
        }
        let (requests, replies): (Vec<_>, Vec<_>) =
            items.into_iter().map(|i| (i.request, i.reply)).unzip();
        tracing::debug!(
            count = requests.len(),
            "sending a batch of instance requests"
        );
        let body = api::BatchRequest { requests };
        match client
            .post::<_, api::BatchResponse>("/v1/instance-certificates/batch", &body, None)
            .await
        {
            Ok(resp) if resp.results.len() == replies.len() => {
                for (r, reply) in resp.results.into_iter().zip(replies) {
                    let out = match (r.certificate, r.problem) {
                        (Some(c), _) => Ok(c),
                        (None, Some(p)) => Err(CaRefusal {
                            status: Some(p.status),
                            message: format!("{} {}: {}", p.status, p.title, p.detail),
                        }),
                        (None, None) => Err(CaRefusal::unreachable(format!(
                            "the CA answered {} without a certificate",
                            r.status
                        ))),
                    };
                    let _ = reply.send(out);
                }
            }
            Ok(_) => {
                for reply in replies {
                    let _ = reply.send(Err(CaRefusal::unreachable(
                        "the CA answered a batch with the wrong number of results",
                    )));
                }
            }
            Err(e) => {
                let refusal = CaRefusal::from(&e);
                for reply in replies {
                    let _ = reply.send(Err(refusal.clone()));
                }
            }
        }
    }

    /// Rewrites every instance's set with the current bundle (same certificate and key).
    async fn rewrite_bundles(self: &Arc<Self>) {
        let guids: Vec<(Guid, Arc<tokio::sync::Mutex<()>>)> = lock(&self.instances)
            .iter()
            .map(|(g, s)| (g.clone(), s.lock.clone()))
            .collect();
        let mut tasks = Vec::with_capacity(guids.len());
        for (g, l) in guids {
            let dir = self.instance_dir(&g);
            let agent = self.clone();
            tasks.push(tokio::spawn(async move {
                let _g = l.lock().await;
                // Read under the lock: a rewrite that started for an older bundle must not
                // put that older bundle back.
                let bundle = agent.bundle.read().unwrap_or_else(|p| p.into_inner()).1.clone();
                let res = tokio::task::spawn_blocking(move || -> std::io::Result<Option<PathBuf>> {
                    let (chain, key, old_bundle) = files::read_set(&dir)?;
                    if old_bundle == bundle {
                        return Ok(None);
                    }
                    files::write_set(&dir, &files::CredentialSet { chain_pem: &chain, key_pem: &key, bundle_pem: &bundle })
                })
                .await;
                match res {
                    Ok(Ok(old)) => remove_later(old),
                    Ok(Err(e)) => tracing::warn!(instance = %g, error = %e, "could not rewrite the trust bundle"),
                    Err(e) => tracing::warn!(instance = %g, error = %e, "bundle rewrite task failed"),
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// A CSR for an existing PKCS#8 PEM key.
fn csr_for_key(key_pem: &str) -> Result<String, String> {
    let kp = rcgen::KeyPair::from_pem(key_pem).map_err(|e| e.to_string())?;
    rcgen::CertificateParams::default()
        .serialize_request(&kp)
        .and_then(|c| c.pem())
        .map_err(|e| e.to_string())
}

fn remove_later(old: Option<PathBuf>) {
    if let Some(old) = old {
        tokio::spawn(async move {
            tokio::time::sleep(files::OLD_VERSION_GRACE).await;
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(old)).await;
        });
    }
}

/// Why an instance could not get its files.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    /// The CA refused or could not be reached.
    #[error("the CA did not issue a certificate: {0}")]
    Ca(CaRefusal),
    /// A local failure (disk, shutdown).
    #[error("{0}")]
    Local(String),
    /// The instance was deleted meanwhile.
    #[error("the instance was deleted")]
    Gone,
}

async fn batcher(
    agent: std::sync::Weak<Agent>,
    mut rx: mpsc::Receiver<BatchItem>,
    window: Duration,
) {
    while let Some(first) = rx.recv().await {
        let mut items = vec![first];
        let deadline = tokio::time::Instant::now() + window;
        while items.len() < crate::http::handlers::MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(i)) => items.push(i),
                _ => break,
            }
        }
        let Some(agent) = agent.upgrade() else { return };
        tokio::spawn(agent.send_batch(items));
    }
}

async fn renewal_loop(agent: Arc<Agent>) {
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = Instant::now();
        let due: Vec<Guid> = {
            let mut m = lock(&agent.instances);
            m.iter_mut()
                .filter(|(_, s)| !s.in_flight && s.renew_at <= now)
                .map(|(g, s)| {
                    s.in_flight = true;
                    g.clone()
                })
                .collect()
        };
        for g in due {
            let a = agent.clone();
            tokio::spawn(async move {
                if a.refresh_instance(&g).await.is_ok() {
                    tracing::info!(instance = %g, "instance certificate renewed");
                }
            });
        }
    }
}

async fn bundle_loop(agent: Arc<Agent>) {
    let mut failures = 0u32;
    loop {
        let known = agent.bundle.read().unwrap_or_else(|p| p.into_inner()).0;
        match agent.client().trust_bundle(Some(known), 60, false).await {
            Ok(Some((seq, pem_text))) => {
                failures = 0;
                if parse_pem_certs(pem_text.as_bytes()).is_err() {
                    tracing::warn!("the CA sent a trust bundle without certificates; ignoring it");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                *agent.bundle.write().unwrap_or_else(|p| p.into_inner()) = (seq, pem_text.clone());
                agent
                    .bundle_fetched
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                if let Err(e) = crate::fsutil::write_atomic(
                    &agent.state_file("trust-bundle.pem"),
                    pem_text.as_bytes(),
                    0o644,
                ) {
                    tracing::warn!(error = %e, "could not save the trust bundle");
                }
                if let Err(e) = agent.rebuild_client() {
                    tracing::warn!(error = %e, "could not rebuild the CA client");
                }
                // Rewrites run beside the watch, so a slow disk or a held instance lock never
                // delays noticing the next bundle.
                let a = agent.clone();
                tokio::spawn(async move {
                    a.rewrite_bundles().await;
                    tracing::info!(sequence = seq, "trust bundle updated on every instance");
                });
            }
            Ok(None) => failures = 0,
            Err(e) => {
                failures += 1;
                let wait = backoff(
                    failures,
                    agent.config.max_backoff.0.min(Duration::from_secs(10)),
                );
                tracing::warn!(error = %e, retry_in = ?wait, "trust bundle watch failed");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

async fn cell_renewal_loop(agent: Arc<Agent>) {
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
        match renew_cell(&agent).await {
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

    let cell = match load_cell(&config) {
        Some(c) => {
            tracing::info!("reusing the saved cell credential");
            c
        }
        None => {
            let token = read_join_token(&config)?;
            let tls = tls_config(format!("{bundle_pem}{bootstrap}").as_bytes(), None)
                .map_err(|e| AgentError::Config(e.to_string()))?;
            let anon = ApiClient::new(&config.server, tls)
                .map_err(|e| AgentError::Config(e.to_string()))?;
            let (key_pem, csr) = new_key_and_csr().map_err(|e| rt(e.to_string()))?;
            let issued: api::IssuedCertificate = anon
                .post("/v1/join", &api::CsrRequest { csr }, Some(&token))
                .await
                .map_err(|e| rt(format!("joining {}: {e}", config.server)))?;
            let cred = CellCredential {
                chain_pem: issued.certificate_chain,
                key_pem,
            };
            save_cell(&config, &cred).map_err(rt)?;
            tracing::info!(spiffe_id = %issued.spiffe_id, "joined the CA");
            cred
        }
    };

    let (tx, rx) = mpsc::channel(4096);
    let window = config.batch_window.0;
    let placeholder = ApiClient::new(
        &config.server,
        tls_config(bundle_pem.as_bytes(), None).map_err(|e| AgentError::Config(e.to_string()))?,
    )
    .map_err(|e| AgentError::Config(e.to_string()))?;
    let agent = Arc::new(Agent {
        root,
        cell: RwLock::new(cell),
        bundle: RwLock::new((0, bundle_pem)),
        client: RwLock::new(Arc::new(placeholder)),
        instances: Mutex::new(HashMap::new()),
        persist_lock: Mutex::new(()),
        bundle_fetched: std::sync::atomic::AtomicBool::new(false),
        changes: std::sync::atomic::AtomicU64::new(0),
        persisted: std::sync::atomic::AtomicU64::new(0),
        batches: tx,
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

/// Reloads the instance list and the validity of the files on disk after a restart.
fn reload_instances(agent: &Arc<Agent>) {
    let Ok(data) = std::fs::read(agent.state_file("instances.json")) else {
        return;
    };
    let Ok(specs) = serde_json::from_slice::<HashMap<String, PersistedInstance>>(&data) else {
        tracing::warn!("instances.json is unreadable; starting with no instances");
        return;
    };
    let mut m = lock(&agent.instances);
    for (g, persisted) in specs {
        let Ok(guid) = g.parse::<Guid>() else {
            continue;
        };
        let PersistedInstance { spec, received_at } = persisted;
        let dir = agent.instance_dir(&guid);
        crate::atomic_dir::remove_stale_versions(&dir);
        let info = files::read_set(&dir)
            .ok()
            .and_then(|(chain, _, _)| parse_pem_certs(chain.as_bytes()).ok())
            .and_then(|c| c.into_iter().next())
            .and_then(|d| CertInfo::from_der(&d).ok());
        let (not_after, renew_at) = match &info {
            Some(i) if i.not_after > SystemTime::now() => {
                let received = received_at.unwrap_or(i.not_before);
                let at =
                    received + renewal_delay(received, i.not_after, agent.config.renew_fraction);
                (
                    Some(i.not_after),
                    Instant::now() + at.duration_since(SystemTime::now()).unwrap_or_default(),
                )
            }
            _ => (None, Instant::now()),
        };
        m.insert(
            guid,
            InstanceState {
                spec,
                not_after,
                received_at,
                renew_at,
                renewals: 0,
                failures: 0,
                last_error: None,
                in_flight: false,
                lock: Arc::new(tokio::sync::Mutex::new(())),
            },
        );
    }
    tracing::info!(count = m.len(), "reloaded the instance list");
}

/// Runs the agent with the config at `path` until SIGINT/SIGTERM.
pub async fn run(path: &Path) -> Result<(), AgentError> {
    let config = AgentConfig::load(path).map_err(|e| AgentError::Config(e.to_string()))?;
    let listen = config
        .listen()
        .map_err(|e| AgentError::Config(e.to_string()))?;
    let agent = start(config).await?;
    let tasks = [
        tokio::spawn(renewal_loop(agent.clone())),
        tokio::spawn(bundle_loop(agent.clone())),
        tokio::spawn(cell_renewal_loop(agent.clone())),
    ];
    let res = local_api::serve(agent.clone(), listen, crate::cli::shutdown_signal()).await;
    for t in tasks {
        t.abort();
    }
    tracing::info!("agent stopped; credential files stay in place");
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_at_the_fraction_of_the_life_with_ten_percent_jitter() {
        let now = SystemTime::now();
        let end = now + Duration::from_secs(1000);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let d = renewal_delay(now, end, 0.5);
            assert!(
                d >= Duration::from_secs(450) && d <= Duration::from_secs(550),
                "{d:?}"
            );
            seen.insert(d.as_millis());
        }
        assert!(seen.len() > 50, "the jitter spreads renewals");
        assert_eq!(
            renewal_delay(end, now, 0.5),
            Duration::ZERO,
            "an expired certificate renews now"
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let max = Duration::from_secs(60);
        assert!(backoff(1, max) <= Duration::from_millis(1100));
        assert!(backoff(4, max) >= Duration::from_millis(7200));
        for n in [10, 20, 1000] {
            let b = backoff(n, max);
            assert!(
                b <= Duration::from_secs(66) && b >= Duration::from_secs(54),
                "{b:?}"
            );
        }
    }

    #[test]
    fn a_ca_refusal_keeps_the_status_of_the_problem() {
        let e = ClientError::Api(crate::api::Problem {
            type_: "t".into(),
            title: "Invalid value".into(),
            status: 422,
            detail: "app_guid: bad".into(),
        });
        let r = CaRefusal::from(&e);
        assert_eq!(r.status, Some(422));
        assert!(r.message.contains("app_guid"));
        let r = CaRefusal::from(&ClientError::Transport {
            url: "https://x".into(),
            message: "refused".into(),
        });
        assert_eq!(r.status, None);
    }
}
