//! What several replicas sharing the database need beyond the records: leases, and a cheap
//! reachability check for readiness.
//!
//! Kept apart from the record methods in `mod.rs`; the [`Store`](crate::store::Store)
//! implementation there delegates to these.

use std::time::{Duration, SystemTime};

use super::{db_error, pool_error, PostgresStore};
use crate::store::{Lease, LeaseGrant, StoreError};

impl PostgresStore {
    /// See [`Store::acquire_lease`](crate::store::Store::acquire_lease).
    pub(super) fn acquire_lease_now(
        &self,
        name: &str,
        holder: &str,
        period: Duration,
    ) -> Result<LeaseGrant, StoreError> {
        let pool = self.pool();
        let (name, holder) = (name.to_string(), holder.to_string());
        let seconds = period.as_secs_f64();
        self.run(async move {
            let c = pool.get().await.map_err(pool_error)?;
            // One statement decides: the row lock of the upsert orders concurrent callers,
            // and the WHERE of the update lets only a free, lapsed or own lease change hands.
            let st = c
                .prepare_cached(
                    "INSERT INTO leases (name, holder, expires_at)
                     VALUES ($1, $2, clock_timestamp() + make_interval(secs => $3))
                     ON CONFLICT (name) DO UPDATE
                     SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
                     WHERE leases.holder = EXCLUDED.holder
                        OR leases.expires_at <= clock_timestamp()
                     RETURNING holder, expires_at",
                )
                .await
                .map_err(db_error)?;
            if let Some(row) = c
                .query_opt(&st, &[&name, &holder, &seconds])
                .await
                .map_err(db_error)?
            {
                return Ok(LeaseGrant::Held(lease_of(&row)?));
            }
            // Refused: someone else holds it. Rows are never deleted, so it is there.
            let st = c
                .prepare_cached("SELECT holder, expires_at FROM leases WHERE name = $1")
                .await
                .map_err(db_error)?;
            let row = c.query_one(&st, &[&name]).await.map_err(db_error)?;
            Ok(LeaseGrant::Refused(lease_of(&row)?))
        })
    }

    /// See [`Store::current_lease`](crate::store::Store::current_lease).
    pub(super) fn current_lease_now(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        let pool = self.pool();
        let name = name.to_string();
        self.run(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let st = c
                .prepare_cached(
                    "SELECT holder, expires_at FROM leases
                     WHERE name = $1 AND expires_at > clock_timestamp()",
                )
                .await
                .map_err(db_error)?;
            c.query_opt(&st, &[&name])
                .await
                .map_err(db_error)?
                .map(|row| lease_of(&row))
                .transpose()
        })
    }
}

/// How long a readiness check waits for the database: less than a call, so `/readyz`
/// answers within its own budget.
const PING_TIMEOUT: Duration = Duration::from_secs(1);

impl PostgresStore {
    /// See [`Store::ping`](crate::store::Store::ping).
    pub(super) fn ping_now(&self) -> Result<(), StoreError> {
        let pool = self.pool();
        self.run_with_timeout(PING_TIMEOUT, async move {
            let c = pool.get().await.map_err(pool_error)?;
            // An empty query: one round trip, no parsing, no snapshot.
            c.simple_query("").await.map_err(db_error)?;
            Ok(())
        })
    }
}

fn lease_of(row: &tokio_postgres::Row) -> Result<Lease, StoreError> {
    Ok(Lease {
        holder: row.try_get(0).map_err(db_error)?,
        expires_at: row.try_get::<_, SystemTime>(1).map_err(db_error)?,
    })
}
