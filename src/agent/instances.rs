//! The instance table: what the local API was told about each instance, its certificate's
//! state, and the instance's credential set on disk (written only as a whole set).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use zeroize::Zeroizing;

use super::batcher::{BatchItem, CaRefusal};
use super::renewal::{backoff, renewal_delay};
use super::{files, lock, Agent};
use crate::api;
use crate::client::{new_key_and_csr, ClientError};
use crate::ids::Guid;
use crate::timefmt::rfc3339;
use crate::x509::inspect::{parse_pem_certs, CertInfo};

/// How often a failed binding release is retried in the background (about ten minutes in
/// all, with capped exponential backoff).
const RELEASE_RETRIES: u32 = 12;

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
pub(super) struct InstanceState {
    spec: InstanceSpec,
    not_after: Option<SystemTime>,
    received_at: Option<SystemTime>,
    pub(super) renew_at: Instant,
    renewals: u64,
    failures: u32,
    last_error: Option<String>,
    pub(super) in_flight: bool,
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

impl Agent {
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

    /// How many instances there are, and the earliest notAfter among their certificates.
    pub(super) fn instance_expiries(&self) -> (usize, Option<SystemTime>) {
        let m = lock(&self.instances);
        (m.len(), m.values().filter_map(|s| s.not_after).min())
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
                    self.workload.remove(&guid, &dir);
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
        let files = state.lock.lock().await;
        self.persist().await?;
        let dir = self.instance_dir(guid);
        // Its streams end and its socket goes before its files do.
        self.workload.remove(guid, &dir);
        tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
            _ => Ok(()),
        })
        .await
        .map_err(|e| e.to_string())??;
        // The files are gone: the CA call does not hold the instance's lock.
        drop(files);
        self.release_at_ca(guid).await;
        Ok(true)
    }

    /// Tells the CA the instance is gone, so its ownership binding ends now and not only
    /// when its last certificate expires (the instance may be rescheduled on another cell).
    /// One attempt inline, so the binding is usually released by the time the local DELETE
    /// answers; if the CA cannot be reached, retries in the background (the release is
    /// idempotent). The local DELETE never fails because of the CA.
    async fn release_at_ca(self: &Arc<Self>, guid: &Guid) {
        let path = format!("/v1/instances/{guid}");
        let retryable = |e: &ClientError| match e {
            ClientError::Api(p) => p.status >= 500 || p.status == 429,
            _ => true,
        };
        match self.client().delete(&path).await {
            Ok(()) => return,
            Err(e) if !retryable(&e) => {
                tracing::warn!(instance = %guid, error = %e, "the CA refused to release the instance's binding");
                return;
            }
            Err(e) => {
                tracing::warn!(instance = %guid, error = %e, "could not release the instance's binding at the CA; retrying in the background");
            }
        }
        let agent = self.clone();
        let guid = guid.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_secs(1);
            for _ in 0..RELEASE_RETRIES {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(60));
                match agent.client().delete(&path).await {
                    Ok(()) => return,
                    Err(e) if !retryable(&e) => return,
                    Err(e) => {
                        tracing::debug!(instance = %guid, error = %e, "binding release retry failed")
                    }
                }
            }
            tracing::warn!(instance = %guid, "gave up releasing the instance's binding; it ends when its last certificate expires");
        });
    }

    /// Gets a new certificate for `guid` (for the instance's key) and swaps its files.
    pub(super) async fn refresh_instance(
        self: &Arc<Self>,
        guid: &Guid,
    ) -> Result<SystemTime, PutError> {
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
                    // Checked before anything is written: a refusal keeps the current files.
                    let written =
                        match self.check_issued(guid, &spec, &issued.certificate_chain, &key_pem) {
                            Ok(()) => {
                                self.write_files(guid, &issued.certificate_chain, &key_pem)
                                    .await
                            }
                            Err(e) => Err(e),
                        };
                    written.and_then(|()| {
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
            if renewing {
                self.metrics.renewal(result.is_ok());
            }
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
            ttl_seconds: Some(crate::duration::ttl_seconds(self.config.instance_ttl.0)),
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
        let (d, b) = (dir.clone(), bundle.clone());
        let old = tokio::task::spawn_blocking(move || {
            files::write_set(
                &d,
                &files::CredentialSet {
                    chain_pem: &chain,
                    key_pem: &key,
                    bundle_pem: &b,
                },
            )
        })
        .await
        .map_err(|e| PutError::Local(e.to_string()))?
        .map_err(|e| PutError::Local(format!("writing credentials: {e}")))?;
        remove_later(old);
        self.workload
            .publish(guid, &dir, chain_pem, key_pem, &bundle);
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

    /// Rewrites every instance's set with the current bundle (same certificate and key).
    pub(super) async fn rewrite_bundles(self: &Arc<Self>) {
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
                let d = dir.clone();
                let res = tokio::task::spawn_blocking(move || -> std::io::Result<Option<Written>> {
                    let (chain, key, old_bundle) = files::read_set(&d)?;
                    if old_bundle == bundle {
                        return Ok(None);
                    }
                    let old = files::write_set(&d, &files::CredentialSet { chain_pem: &chain, key_pem: &key, bundle_pem: &bundle })?;
                    Ok(Some(Written { old, chain, key, bundle }))
                })
                .await;
                match res {
                    Ok(Ok(None)) => {}
                    Ok(Ok(Some(w))) => {
                        remove_later(w.old);
                        agent.workload.publish(&g, &dir, &w.chain, &w.key, &w.bundle);
                    }
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

/// A set that was just written, and the version directory it replaced.
struct Written {
    old: Option<PathBuf>,
    chain: String,
    key: Zeroizing<String>,
    bundle: String,
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

/// Reloads the instance list and the validity of the files on disk after a restart.
pub(super) fn reload_instances(agent: &Arc<Agent>) {
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
        let set = files::read_set(&dir).ok();
        if let Some((chain, key, bundle)) = &set {
            // The socket comes back with the files (it is served until the instance's
            // DELETE, even while a renewal is overdue).
            agent.workload.publish(&guid, &dir, chain, key, bundle);
        }
        let info = set
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
