//! The trust bundle watch: a long poll on the CA's bundle; each new bundle is saved, trusted
//! for the CA connection, and written into every instance's set.

use std::sync::Arc;
use std::time::Duration;

use super::renewal::backoff;
use super::Agent;
use crate::x509::inspect::parse_pem_certs;

/// Follows the CA's bundle for the agent's life; failures back off, capped at 10s so a
/// rotation is noticed soon after the CA comes back.
pub(super) async fn bundle_loop(agent: Arc<Agent>) {
    let mut failures = 0u32;
    loop {
        let known = agent.bundle.read().unwrap_or_else(|p| p.into_inner()).0;
        // The client presents the cell credential, so this poll counts in the CA's
        // authenticated budget: a platform of agents never fills the anonymous one.
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
