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

/// The migrations this binary knows, in increasing version order. Versions are reserved per
/// change and may have gaps while a change is still on its branch; every known version a
/// database lacks is applied, in order, so merges of independent migrations need no
/// renumbering.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("migrations/0001_init.sql")),
    (2, "replicas", include_str!("migrations/0002_replicas.sql")),
    (3, "lease", include_str!("migrations/0003_lease.sql")),
    (
        10,
        "ownership_audit",
        include_str!("migrations/0010_ownership_audit.sql"),
    ),
    (
        20,
        "retention",
        include_str!("migrations/0020_retention.sql"),
    ),
];

/// Any fixed number shared by every lanyard process: the advisory lock that serializes
/// migrations ("lanyard" in ASCII).
const MIGRATION_LOCK: i64 = 0x006c_616e_7961_7264;

/// The schema version this binary writes.
pub(super) fn latest_version() -> i64 {
    MIGRATIONS.last().map(|m| m.0).unwrap_or(0)
}

/// Every version this binary knows, in order.
#[cfg(test)]
pub(super) fn known_versions() -> Vec<i64> {
    MIGRATIONS.iter().map(|m| m.0).collect()
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
    let applied: Vec<i64> = tx
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .map_err(db_error)?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(db_error)?;
    let found = applied.last().copied().unwrap_or(0);
    let known = latest_version();
    if let Some(unknown) = applied
        .iter()
        .find(|v| !MIGRATIONS.iter().any(|m| m.0 == **v))
    {
        return Err(StoreError::Backend(format!(
            "the database schema has version {unknown}, which this lanyard does not know: it \
             is newer than this binary (which knows up to version {known}); refusing to use \
             it: upgrade lanyard"
        )));
    }
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| !applied.contains(&m.0)) {
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
    fn versions_increase_from_one() {
        assert_eq!(MIGRATIONS.first().map(|m| m.0), Some(1));
        for w in MIGRATIONS.windows(2) {
            assert!(w[0].0 < w[1].0, "migration {} is out of order", w[1].1);
        }
        assert_eq!(
            latest_version(),
            MIGRATIONS.last().map(|m| m.0).unwrap_or(0)
        );
    }
}
