//! Reading a whole store, for `lanyard store migrate` and its checks. Each read may be
//! large, so it runs under the long call limit.

use super::{db_error, decode, pool_error, PostgresStore, LONG_CALL_TIMEOUT};
use crate::ids::Serial;
use crate::store::{CertificateRecord, JoinTokenRecord, StoreError};

impl PostgresStore {
    /// See [`Store::all_meta`](crate::store::Store::all_meta).
    pub(super) fn all_meta_now(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let pool = self.pool();
        self.run_with_timeout(LONG_CALL_TIMEOUT, async move {
            let c = pool.get().await.map_err(pool_error)?;
            let rows = c
                .query("SELECT key, value FROM meta ORDER BY key", &[])
                .await
                .map_err(db_error)?;
            rows.iter()
                .map(|r| {
                    Ok((
                        r.try_get(0).map_err(db_error)?,
                        r.try_get(1).map_err(db_error)?,
                    ))
                })
                .collect()
        })
    }

    /// See [`Store::certificates_after`](crate::store::Store::certificates_after).
    pub(super) fn certificates_after_now(
        &self,
        after: Option<&Serial>,
        limit: usize,
    ) -> Result<Vec<CertificateRecord>, StoreError> {
        let pool = self.pool();
        // bytea compares bytewise, as the promised order does.
        let after: Option<Vec<u8>> = after.map(|s| s.as_bytes().to_vec());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run_with_timeout(LONG_CALL_TIMEOUT, async move {
            let c = pool.get().await.map_err(pool_error)?;
            let rows = c
                .query(
                    "SELECT record::text FROM certificates
                     WHERE $1::bytea IS NULL OR serial > $1
                     ORDER BY serial LIMIT $2",
                    &[&after, &limit],
                )
                .await
                .map_err(db_error)?;
            rows.iter()
                .map(|r| {
                    let text: String = r.try_get(0).map_err(db_error)?;
                    decode("certificates", &text)
                })
                .collect()
        })
    }

    /// See [`Store::all_join_tokens`](crate::store::Store::all_join_tokens).
    pub(super) fn all_join_tokens_now(
        &self,
    ) -> Result<Vec<(Vec<u8>, JoinTokenRecord)>, StoreError> {
        let pool = self.pool();
        self.run_with_timeout(LONG_CALL_TIMEOUT, async move {
            let c = pool.get().await.map_err(pool_error)?;
            let rows = c
                .query(
                    "SELECT hash, record::text FROM join_tokens ORDER BY hash",
                    &[],
                )
                .await
                .map_err(db_error)?;
            rows.iter()
                .map(|r| {
                    let text: String = r.try_get(1).map_err(db_error)?;
                    Ok((
                        r.try_get(0).map_err(db_error)?,
                        decode("join_token", &text)?,
                    ))
                })
                .collect()
        })
    }
}
