//! Trust-bundle long polls: many watchers each hold `GET /v1/trust-bundle?wait=300` on its
//! own mutual-TLS connection (as agents do, with a cell credential, so the anonymous
//! long-poll budget does not apply); a rotation step (prepare) changes the bundle and every
//! one of them must be answered with it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

use super::procstat::ProcSample;
use super::{ms, BenchOptions, CellClient};
use crate::api;
use crate::client::{ApiClient, ClientError};

/// Connections being set up at once: well under the server's handshake budget.
const SETUP_AT_ONCE: usize = 256;

/// Watchers holding long polls; each task ends with the time its poll was answered with a
/// new bundle (or `None`). Dropping it ends them.
pub(super) struct Held {
    tasks: Vec<JoinHandle<Option<Instant>>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts `n` watchers on their own connections and returns once each has read the bundle
/// and sent its long poll (the last ones may still be on their way to the server).
pub(super) async fn hold(
    server: &str,
    tls: &rustls::ClientConfig,
    n: usize,
) -> Result<Held, ClientError> {
    let setup = Arc::new(Semaphore::new(SETUP_AT_ONCE));
    let (ready_tx, mut ready_rx) = mpsc::channel::<bool>(n.max(1));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let c = ApiClient::new(server, tls.clone())?;
        let (ready, setup) = (ready_tx.clone(), setup.clone());
        tasks.push(tokio::spawn(async move {
            let permit = setup.acquire_owned().await.ok()?;
            let seq = match c.trust_bundle(None, 0, false).await {
                Ok(Some((seq, _))) => seq,
                _ => {
                    let _ = ready.send(false).await;
                    return None;
                }
            };
            drop(permit);
            let _ = ready.send(true).await;
            match c.trust_bundle(Some(seq), 300, false).await {
                Ok(Some((new, _))) if new > seq => Some(Instant::now()),
                _ => None,
            }
        }));
    }
    drop(ready_tx);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut failed = 0;
    for _ in 0..n {
        match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
            Ok(Some(true)) => {}
            Ok(Some(false)) => failed += 1,
            _ => {
                return Err(ClientError::Setup(
                    "watchers: not every watcher connected within 120 s".into(),
                ))
            }
        }
    }
    if failed > 0 {
        return Err(ClientError::Setup(format!(
            "watchers: {failed} of {n} could not read the trust bundle"
        )));
    }
    Ok(Held { tasks })
}

/// The `watchers` mode: holds `o.watchers` polls, reads the server's RSS, prepares a
/// generation and times until every watcher has the new bundle.
pub(super) async fn run(
    server: &str,
    operator: &ApiClient,
    cell: &CellClient,
    o: &BenchOptions,
) -> Result<serde_json::Value, ClientError> {
    let setup_start = Instant::now();
    let mut held = hold(server, &cell.tls, o.watchers).await?;
    let setup_time = setup_start.elapsed();
    // The last polls sent reach the server and are parked.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = o
        .server_pid
        .and_then(|p| ProcSample::read(p).ok())
        .map(|s| s.rss_bytes);
    let t0 = Instant::now();
    let _: api::AuthorityView = operator
        .post("/v1/authorities/prepare", &serde_json::json!({}), None)
        .await?;
    let prepared = t0.elapsed();
    let (mut answered, mut last) = (0usize, Duration::ZERO);
    for t in std::mem::take(&mut held.tasks) {
        if let Ok(Some(at)) = t.await {
            answered += 1;
            last = last.max(at.saturating_duration_since(t0));
        }
    }
    Ok(serde_json::json!({
        "mode": "watchers",
        "watchers": o.watchers,
        "authenticated": true,
        "setup_seconds": setup_time.as_secs_f64(),
        "server_rss_bytes": rss,
        "prepare_ms": ms(prepared),
        "answered": answered,
        "all_answered_ms": (answered == o.watchers).then(|| ms(last)),
    }))
}
