//! The server's background duties: keeping its own certificate and the local operator
//! credential fresh (after every bundle change and periodically), and running the automatic
//! rotation schedule. The decisions are the CA's; this module schedules them and swaps the
//! new server certificate into the TLS listener.
//!
//! The rotation schedule and intermediate renewal run only while this replica holds the
//! schedule lease ([`ScheduleLease`]), so on a shared store exactly one replica takes them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::handlers::AppState;
use super::ServeError;
use crate::ca::LeaseGrant;

/// This replica's view of the schedule lease.
#[derive(Debug)]
pub(crate) struct ScheduleLease {
    /// The name the lease is held under.
    replica: String,
    /// How long one grant lasts.
    period: Duration,
    /// Until when this replica may act as the holder, on its own monotonic clock; `None`
    /// while it does not hold the lease.
    held_until: Mutex<Option<Instant>>,
}

impl ScheduleLease {
    /// Not held yet: [`lease_loop`] takes it.
    pub(crate) fn new(replica: String, period: Duration) -> Self {
        ScheduleLease {
            replica,
            period,
            held_until: Mutex::new(None),
        }
    }

    /// Whether this replica holds the lease now.
    pub(crate) fn held(&self) -> bool {
        let until = *self.held_until.lock().unwrap_or_else(|p| p.into_inner());
        until.is_some_and(|t| Instant::now() < t)
    }

    /// Holds the lease for `d` from now without asking the store (in-process routers:
    /// tests and the in-process bench).
    pub(crate) fn hold_for(&self, d: Duration) {
        self.set(Some(Instant::now() + d));
    }

    fn set(&self, until: Option<Instant>) -> bool {
        let mut g = self.held_until.lock().unwrap_or_else(|p| p.into_inner());
        let was = g.is_some_and(|t| Instant::now() < t);
        *g = until;
        was
    }
}

/// Renews the schedule lease every third of its period (after the first attempt, which
/// [`renew_schedule_lease`] makes at start), so a holder renews twice before a grant lapses
/// and another replica takes a dead holder's lease within a period and a third of its last
/// renewal.
pub(super) async fn lease_loop(st: Arc<AppState>) {
    let every = st.lease.period / 3;
    loop {
        tokio::time::sleep(every).await;
        renew_schedule_lease(&st).await;
    }
}

/// Takes or renews the schedule lease once and records whether this replica holds it.
pub(super) async fn renew_schedule_lease(st: &Arc<AppState>) {
    // Measured before asking: the store's expiry is at least a period after the moment it
    // granted, which is after this, so this replica stops acting first.
    let asked = Instant::now();
    let ca = st.ca.clone();
    let (replica, period) = (st.lease.replica.clone(), st.lease.period);
    let res =
        tokio::task::spawn_blocking(move || ca.acquire_schedule_lease(&replica, period)).await;
    let until = match res {
        Ok(Ok(LeaseGrant::Held(_) | LeaseGrant::Unshared)) => Some(asked + period),
        Ok(Ok(LeaseGrant::Refused(l))) => {
            tracing::debug!(holder = %l.holder, "the schedule lease is held by another replica");
            None
        }
        Ok(Err(e)) => {
            // Keep what is still valid: a store hiccup shorter than the lease costs nothing,
            // a longer one lets the grant lapse here as it does in the store.
            tracing::warn!(error = %e, "renewing the schedule lease failed; will retry");
            *st.lease
                .held_until
                .lock()
                .unwrap_or_else(|p| p.into_inner())
        }
        Err(e) => {
            tracing::warn!(error = %e, "lease task failed");
            None
        }
    };
    let was = st.lease.set(until);
    let now = until.is_some_and(|t| Instant::now() < t);
    if now && !was {
        tracing::info!(replica = %st.lease.replica, "this replica holds the schedule lease");
    } else if was && !now {
        tracing::info!(replica = %st.lease.replica, "this replica no longer holds the schedule lease");
    }
}

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
        // One replica renews for all (the others load what it stored).
        if self.lease.held() {
            self.ca.renew_intermediate_if_due(&self.lease.replica)?;
        }
        if let Some(server_cert) = &self.server_cert {
            if let Some(cred) = self
                .ca
                .refresh_server_certificate(&self.lease.replica, &server_cert.record())?
            {
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
        st.delete_expired_records().await;
    }
}

/// The most retention batches one maintenance pass deletes; a larger backlog is worked off
/// over the next passes, so one pass never holds the blocking pool for long.
const RETENTION_BATCHES_PER_PASS: usize = 20;

impl AppState {
    /// Deletes the certificate records whose retention after expiry has passed, a batch at a
    /// time (see [`crate::ca::RETENTION_BATCH`]). One replica does it for all: the holder of
    /// the schedule lease. Failures are logged and retried by the next pass.
    pub(crate) async fn delete_expired_records(self: &Arc<Self>) {
        if !self.lease.held() {
            return;
        }
        for _ in 0..RETENTION_BATCHES_PER_PASS {
            let (ca, actor) = (self.ca.clone(), self.lease.replica.clone());
            let now = std::time::SystemTime::now();
            match self
                .pool
                .run(move || ca.delete_expired_records(&actor, now))
                .await
            {
                Ok(Ok(0)) => return,
                Ok(Ok(n)) => {
                    tracing::info!(
                        deleted = n,
                        "expired certificate records past retention deleted"
                    );
                    if n < crate::ca::RETENTION_BATCH {
                        return;
                    }
                }
                Ok(Err(e)) | Err(e) => {
                    tracing::warn!(error = %e, "deleting expired certificate records failed; will retry");
                    return;
                }
            }
        }
    }
}

/// Takes the automatic rotation schedule's steps, one check every `rotation.check_interval`.
pub(super) async fn rotation_loop(st: Arc<AppState>) {
    let every = st.ca.config().rotation.check_interval.0;
    loop {
        tokio::time::sleep(every).await;
        if !st.lease.held() {
            continue;
        }
        let (ca, replica) = (st.ca.clone(), st.lease.replica.clone());
        let res =
            tokio::task::spawn_blocking(move || ca.run_scheduled_rotation_step(&replica)).await;
        match res {
            Ok(Ok(true)) => st.refresh_local_credentials().await,
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "automatic rotation step failed; will retry"),
            Err(e) => tracing::warn!(error = %e, "rotation task failed"),
        }
    }
}
