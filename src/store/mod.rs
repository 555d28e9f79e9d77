//! Durable state behind a trait, so the embedded store (sled) and a shared SQL store can sit
//! behind the same CA. Every write method returns only once the change is durable.

mod records;
mod sled_store;

pub use records::{
    AuthorityRecord, CaKeyRecord, CertificateKind, CertificateQuery, CertificateRecord,
    GenerationState, JoinTokenRecord,
};
pub use sled_store::SledStore;

use std::time::SystemTime;

use crate::ids::{AuthorityId, Serial};

/// Storage failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A certificate with this serial is already recorded.
    #[error("serial {0} is already recorded")]
    SerialExists(Serial),
    /// The backend failed (I/O, lock held by another process, ...).
    #[error("storage backend: {0}")]
    Backend(String),
    /// A stored value did not decode: the store is damaged or from a newer version.
    #[error("stored value `{key}` is corrupt: {message}")]
    Corrupt {
        /// Which key.
        key: String,
        /// Decoder message.
        message: String,
    },
}

/// What every storage backend provides. Write methods are durable before they return.
pub trait Store: Send + Sync + 'static {
    /// Reads a small metadata value (`initialized`, `kek_check`, ...).
    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Writes a small metadata value.
    fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;

    /// All authority generations, oldest first, and the trust bundle sequence.
    fn load_authorities(&self) -> Result<(Vec<AuthorityRecord>, u64), StoreError>;
    /// Writes changed generations and the bundle sequence in one atomic, durable step.
    fn save_authorities(
        &self,
        changed: &[AuthorityRecord],
        bundle_sequence: u64,
    ) -> Result<(), StoreError>;

    /// Records issued certificates. Fails without writing anything if a serial is taken.
    fn insert_certificates(&self, records: &[CertificateRecord]) -> Result<(), StoreError>;
    /// One certificate record.
    fn get_certificate(&self, serial: &Serial) -> Result<Option<CertificateRecord>, StoreError>;
    /// Replaces an existing record (revocation).
    fn update_certificate(&self, record: &CertificateRecord) -> Result<(), StoreError>;
    /// Records matching `query`, newest first.
    fn query_certificates(
        &self,
        query: &CertificateQuery,
    ) -> Result<Vec<CertificateRecord>, StoreError>;
    /// Revoked certificates a generation signed: serial and revocation time.
    fn revoked(&self, id: AuthorityId) -> Result<Vec<(Serial, SystemTime)>, StoreError>;
    /// The latest notAfter among certificates a generation signed.
    fn last_leaf_not_after(&self, id: AuthorityId) -> Result<Option<SystemTime>, StoreError>;

    /// Stores a join token under the hash of its secret.
    fn insert_join_token(&self, hash: &[u8], token: &JoinTokenRecord) -> Result<(), StoreError>;
    /// Reads a join token without spending it.
    fn get_join_token(&self, hash: &[u8]) -> Result<Option<JoinTokenRecord>, StoreError>;
    /// Removes and returns a join token: a second call for the same hash gets `None`.
    fn take_join_token(&self, hash: &[u8]) -> Result<Option<JoinTokenRecord>, StoreError>;
}
