//! Versioned schema migrations.
//!
//! Each migration is one SQL file, applied once, in order, and recorded in
//! `schema_migrations`. Every process that opens the store runs [`apply`]: the work happens
//! in one transaction that first takes a transaction-scoped advisory lock, so replicas that
//! start at the same moment apply each migration exactly once (the others wait, then find
//! nothing left to do). A database whose schema is newer than this binary knows is refused:
//! an older binary would write rows the newer schema does not expect.

use deadpool_postgres::Object;

use super::db_error;
use crate::store::StoreError;

/// The migrations this binary knows, in order; the version is the position plus one.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("migrations/0001_init.sql")),
    (2, "replicas", include_str!("migrations/0002_replicas.sql")),
];

/// Any fixed number shared by every lanyard process: the advisory lock that serializes
/// migrations ("lanyard" in ASCII).
const MIGRATION_LOCK: i64 = 0x006c_616e_7961_7264;

/// The schema version this binary writes.
pub(super) fn latest_version() -> i64 {
    MIGRATIONS.last().map(|m| m.0).unwrap_or(0)
}

/// Brings the schema up to [`latest_version`], or refuses a newer one. Returns the version
/// found before (0 for an empty database).
pub(super) async fn apply(mut client: Object) -> Result<i64, StoreError> {
    let tx = client.transaction().await.map_err(db_error)?;
    // Held until commit or rollback: a second replica blocks here until the first is done.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db_error)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    bigint      PRIMARY KEY,
             name       text        NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(db_error)?;
    let found: i64 = tx
        .query_one(
            "SELECT COALESCE(max(version), 0)::bigint FROM schema_migrations",
            &[],
        )
        .await
        .map_err(db_error)?
        .try_get(0)
        .map_err(db_error)?;
    let known = latest_version();
    if found > known {
        return Err(StoreError::Backend(format!(
            "the database schema is at version {found}, newer than this lanyard knows \
             (version {known}); refusing to use it: upgrade lanyard"
        )));
    }
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > found) {
        tx.batch_execute(sql).await.map_err(|e| {
            StoreError::Backend(format!("migration {version} ({name}) failed: {e}"))
        })?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await
        .map_err(db_error)?;
    }
    tx.commit().await.map_err(db_error)?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_consecutive_from_one() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.0, i as i64 + 1, "migration {} is out of order", m.1);
        }
        assert_eq!(latest_version(), MIGRATIONS.len() as i64);
    }
}
