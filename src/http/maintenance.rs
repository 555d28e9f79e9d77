//! The server's background duties: keeping its own certificate and the local operator
//! credential fresh (after every bundle change and periodically), and running the automatic
//! rotation schedule. The decisions are the CA's; this module schedules them and swaps the
//! new server certificate into the TLS listener.

use std::sync::Arc;
use std::time::Duration;

use super::handlers::AppState;
use super::ServeError;

impl AppState {
    /// Re-issues the server certificate and the local operator credential when they are past
    /// two thirds of their life or signed by a generation that is no longer active, and keeps
    /// the operator's `trust-bundle.pem` equal to the published bundle. Failures are logged
    /// and retried by the next refresh.
    pub(crate) async fn refresh_local_credentials(self: &Arc<Self>) {
        let st = self.clone();
        let res = tokio::task::spawn_blocking(move || st.refresh_blocking()).await;
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "refreshing local credentials failed; will retry")
            }
            Err(e) => tracing::warn!(error = %e, "refresh task failed"),
        }
    }

    fn refresh_blocking(&self) -> Result<(), ServeError> {
        // The activate handler and the maintenance loop may both refresh at once; one at a
        // time, or both would reissue and their files could interleave.
        let _one_at_a_time = self.refresh_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.ca.renew_intermediate_if_due()?;
        if let Some(server_cert) = &self.server_cert {
            if let Some(cred) = self.ca.refresh_server_certificate(&server_cert.record())? {
                server_cert.replace(&cred)?;
            }
        }
        self.ca.refresh_operator_credential()?;
        Ok(())
    }
}

/// Refreshes the local credentials after every bundle change, and at least every 30 s (or
/// `rotation.check_interval`, if shorter).
pub(super) async fn maintenance_loop(st: Arc<AppState>) {
    let mut rx = st.ca.subscribe_bundle();
    let every = st
        .ca
        .config()
        .rotation
        .check_interval
        .0
        .min(Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            r = rx.changed() => if r.is_err() { return },
        }
        st.refresh_local_credentials().await;
        st.purge_expired_join_tokens().await;
    }
}

/// Takes the automatic rotation schedule's steps, one check every `rotation.check_interval`.
pub(super) async fn rotation_loop(st: Arc<AppState>) {
    let every = st.ca.config().rotation.check_interval.0;
    loop {
        tokio::time::sleep(every).await;
        let ca = st.ca.clone();
        let res = tokio::task::spawn_blocking(move || ca.run_scheduled_rotation_step()).await;
        match res {
            Ok(Ok(true)) => st.refresh_local_credentials().await,
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "automatic rotation step failed; will retry"),
            Err(e) => tracing::warn!(error = %e, "rotation task failed"),
        }
    }
}
