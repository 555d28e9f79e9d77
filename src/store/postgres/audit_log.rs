//! The audit chain in PostgreSQL: appends inside a caller's transaction, and reads.
//!
//! Several replicas append to one chain. An append locks the single `audit_head` row
//! (`FOR UPDATE`) as the last step of its transaction, computes the entries from the head it
//! read, inserts them with one statement and moves the head; the lock is held until commit,
//! so the next appender (in this process or another) reads the committed head. `seq` is
//! therefore gapless and every entry links to its predecessor. Every transaction takes its
//! other row locks before this one, so the head lock never takes part in a lock cycle.

use std::time::SystemTime;

use tokio_postgres::types::Json;

use super::{db_error, decode, non_negative, pool_error, PostgresStore};
use crate::audit::{self, AuditEntry, AuditEvent, ChainHead};
use crate::store::{AuditPage, StoreError};

/// Appends `events` to the chain inside `tx` (nothing for none).
pub(super) async fn append_tx(
    tx: &deadpool_postgres::Transaction<'_>,
    events: &[AuditEvent],
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let row = tx
        .query_one("SELECT seq, hash FROM audit_head FOR UPDATE", &[])
        .await
        .map_err(db_error)?;
    let mut head = ChainHead {
        seq: non_negative("audit_head.seq", row.try_get(0))?,
        hash: row.try_get(1).map_err(db_error)?,
    };
    let time = crate::timefmt::rfc3339(SystemTime::now());
    let entries = audit::append(&mut head, events, &time);
    let mut seqs = Vec::with_capacity(entries.len());
    let mut bodies = Vec::with_capacity(entries.len());
    for e in &entries {
        seqs.push(
            i64::try_from(e.seq)
                .map_err(|_| StoreError::Backend("the audit log is full".into()))?,
        );
        bodies.push(Json(
            serde_json::to_value(e).map_err(|e| StoreError::Backend(format!("encoding: {e}")))?,
        ));
    }
    let insert = tx
        .prepare_cached(
            "INSERT INTO audit_log (seq, entry)
             SELECT * FROM UNNEST($1::bigint[], $2::jsonb[])",
        )
        .await
        .map_err(db_error)?;
    tx.execute(&insert, &[&seqs, &bodies])
        .await
        .map_err(db_error)?;
    let last =
        i64::try_from(head.seq).map_err(|_| StoreError::Backend("the audit log is full".into()))?;
    let update = tx
        .prepare_cached("UPDATE audit_head SET seq = $1, hash = $2")
        .await
        .map_err(db_error)?;
    tx.execute(&update, &[&last, &head.hash])
        .await
        .map_err(db_error)?;
    Ok(())
}

impl PostgresStore {
    /// See [`Store::import_audit`](crate::store::Store::import_audit).
    pub(super) fn import_audit_now(&self, entries: &[AuditEntry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let pool = self.pool();
        let entries = entries.to_vec();
        self.run_with_timeout(super::LONG_CALL_TIMEOUT, async move {
            let mut c = pool.get().await.map_err(pool_error)?;
            let tx = c.transaction().await.map_err(db_error)?;
            let row = tx
                .query_one("SELECT seq, hash FROM audit_head FOR UPDATE", &[])
                .await
                .map_err(db_error)?;
            let mut head = ChainHead {
                seq: non_negative("audit_head.seq", row.try_get(0))?,
                hash: row.try_get(1).map_err(db_error)?,
            };
            let insert = tx
                .prepare_cached("INSERT INTO audit_log (seq, entry) VALUES ($1, $2)")
                .await
                .map_err(db_error)?;
            for e in &entries {
                crate::store::continues(&head, e)?;
                let seq = i64::try_from(e.seq)
                    .map_err(|_| StoreError::Backend("the audit log is full".into()))?;
                let body = Json(
                    serde_json::to_value(e)
                        .map_err(|e| StoreError::Backend(format!("encoding: {e}")))?,
                );
                tx.execute(&insert, &[&seq, &body])
                    .await
                    .map_err(db_error)?;
                head = ChainHead {
                    seq: e.seq,
                    hash: e.hash.clone(),
                };
            }
            let last = i64::try_from(head.seq)
                .map_err(|_| StoreError::Backend("the audit log is full".into()))?;
            tx.execute(
                "UPDATE audit_head SET seq = $1, hash = $2",
                &[&last, &head.hash],
            )
            .await
            .map_err(db_error)?;
            tx.commit().await.map_err(db_error)
        })
    }
    /// See [`Store::append_audit`](crate::store::Store::append_audit).
    pub(super) fn append_audit_now(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let pool = self.pool();
        let events = events.to_vec();
        self.run(async move {
            let mut c = pool.get().await.map_err(pool_error)?;
            let tx = c.transaction().await.map_err(db_error)?;
            append_tx(&tx, &events).await?;
            tx.commit().await.map_err(db_error)
        })
    }

    /// See [`Store::audit_after`](crate::store::Store::audit_after).
    pub(super) fn audit_after_now(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<AuditPage, StoreError> {
        let pool = self.pool();
        let after_i = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let st = c
                .prepare_cached(
                    "SELECT seq, entry::text FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
                )
                .await
                .map_err(db_error)?;
            let rows = c.query(&st, &[&after_i, &limit]).await.map_err(db_error)?;
            let mut page = AuditPage {
                next: after,
                ..Default::default()
            };
            for row in rows {
                let pos = non_negative("audit_log.seq", row.try_get(0))?;
                let text: String = row.try_get(1).map_err(db_error)?;
                page.entries
                    .push(decode::<AuditEntry>(&format!("audit_log/{pos}"), &text)?);
                page.next = pos;
            }
            let last: Option<i64> = c
                .query_one("SELECT max(seq) FROM audit_log", &[])
                .await
                .map_err(db_error)?
                .try_get(0)
                .map_err(db_error)?;
            page.last = last.and_then(|v| u64::try_from(v).ok()).unwrap_or(0);
            Ok(page)
        })
    }
}
