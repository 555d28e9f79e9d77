//! Durable state behind a trait, so the embedded store (sled) and a shared SQL store can sit
//! behind the same CA. Every write method returns only once the change is durable.
//!
//! Backends: [`SledStore`] (embedded, one process) and [`PostgresStore`] (a PostgreSQL
//! database that several processes can share).

#[cfg(any(test, feature = "store-conformance"))]
pub(crate) mod conformance;
mod postgres;
mod records;
mod sled_store;

pub(crate) use postgres::PostgresStore;
pub(crate) use records::{
    AuthorityRecord, CaKeyRecord, CertificateCursor, CertificateKind, CertificateQuery,
    CertificateRecord, GenerationState, InstanceBinding, JoinTokenRecord, Lease, LeaseGrant,
    ReleaseOutcome,
};
pub(crate) use sled_store::SledStore;

use std::time::{Duration, SystemTime};

use crate::audit::{AuditEntry, AuditEvent};
use crate::ids::{AuthorityId, Guid, Serial};

/// Whether `e` is the entry that follows `head`, for [`Store::import_audit`].
pub(crate) fn continues(head: &crate::audit::ChainHead, e: &AuditEntry) -> Result<(), StoreError> {
    if e.seq != head.seq + 1 || e.prev_hash != head.hash {
        return Err(StoreError::Backend(format!(
            "audit entry {} does not continue the chain (its head is seq {})",
            e.seq, head.seq
        )));
    }
    Ok(())
}

/// One page of the audit log (see [`Store::audit_after`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct AuditPage {
    /// The entries, in position order.
    pub entries: Vec<AuditEntry>,
    /// The position of the last entry answered (`after` when none).
    pub next: u64,
    /// The position of the log's last entry (0 for an empty log).
    pub last: u64,
}

/// The generations as one read saw them, with the version that conditional saves compare.
#[derive(Debug, Clone)]
pub(crate) struct Generations {
    /// Every generation, oldest (lowest id) first.
    pub records: Vec<AuthorityRecord>,
    /// The trust bundle sequence saved with them.
    pub bundle_sequence: u64,
    /// Increases with every save of the generations (0 in a fresh store).
    pub version: u64,
}

/// Held while one process initializes the state; dropping it lets the next waiter in.
pub(crate) struct InitLock {
    /// Whatever the backend must keep alive to hold the lock (released on drop).
    _held: Box<dyn Send>,
}

impl InitLock {
    /// Wraps what holds the lock until this value is dropped.
    pub(crate) fn new(held: Box<dyn Send>) -> Self {
        InitLock { _held: held }
    }
}

impl std::fmt::Debug for InitLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InitLock")
    }
}

/// What [`Store::revoke`] did.
#[derive(Debug, Clone)]
pub(crate) enum RevokeOutcome {
    /// This call revoked it; the record as now stored.
    Revoked(CertificateRecord),
    /// It was revoked before; the record as it is (unchanged).
    AlreadyRevoked(CertificateRecord),
}

impl RevokeOutcome {
    /// The record as stored after the call.
    pub(crate) fn into_record(self) -> CertificateRecord {
        match self {
            RevokeOutcome::Revoked(r) | RevokeOutcome::AlreadyRevoked(r) => r,
        }
    }
}

/// Storage failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A certificate with this serial is already recorded.
    #[error("serial {0} is already recorded")]
    SerialExists(Serial),
    /// No certificate with this serial is recorded.
    #[error("no certificate with serial {0} is recorded")]
    NotFound(Serial),
    /// The backend cannot be reached right now (connection refused, lost or timed out): the
    /// request may succeed later, and a write that failed this way may or may not have
    /// committed.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The backend failed (I/O, lock held by another process, ...).
    #[error("storage backend: {0}")]
    Backend(String),
    /// A conditional save found the generations changed since they were read (another
    /// process or thread saved first); nothing was written.
    #[error("the authority generations changed since they were read")]
    Conflict,
    /// A certificate was to be recorded as signed by a generation the store does not hold as
    /// active (another process activated a newer one, or retired it); nothing was written.
    #[error("authority {0} is no longer the active generation")]
    NotActive(AuthorityId),
    /// A stored value did not decode: the store is damaged or from a newer version.
    #[error("stored value `{key}` is corrupt: {message}")]
    Corrupt {
        /// Which key.
        key: String,
        /// Decoder message.
        message: String,
    },
}

/// What every storage backend provides. Write methods are durable before they return: what
/// they wrote is there after the process stops and the store is opened again.
///
/// The `conformance` module (compiled for unit tests and with the `store-conformance`
/// feature) checks each promise below; every backend runs it.
pub(crate) trait Store: Send + Sync + 'static {
    /// Reads a small metadata value (`initialized`, `kek_check`, ...); `None` if never written.
    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Writes a small metadata value, replacing the previous one.
    fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;

    /// All authority generations, oldest (lowest id) first, and the trust bundle sequence
    /// (0 in a fresh store).
    fn load_authorities(&self) -> Result<(Vec<AuthorityRecord>, u64), StoreError>;
    /// Writes changed generations (replacing those with the same id; others stay) and the
    /// bundle sequence in one atomic, durable step, whatever was stored (for `init`); the
    /// version moves on as with [`Store::save_generations_if`].
    fn save_authorities(
        &self,
        changed: &[AuthorityRecord],
        bundle_sequence: u64,
        audit: &[AuditEvent],
    ) -> Result<(), StoreError>;
    /// The generations, the bundle sequence and their version, read together (one snapshot).
    fn load_generations(&self) -> Result<Generations, StoreError>;
    /// Compare-and-set: like [`Store::save_authorities`], but only if the stored version is
    /// still `expected_version`; then the version increases by one and the new one is
    /// returned. Otherwise [`StoreError::Conflict`] and nothing is written. Of concurrent
    /// saves expecting the same version, in this process or another, exactly one succeeds.
    /// A save waits for certificate inserts that [`Store::insert_signed`] is checking against
    /// a generation it changes, so none of them commits against the old state afterwards.
    /// On a shared store, a committed save notifies every [`Store::change_feed`].
    fn save_generations_if(
        &self,
        changed: &[AuthorityRecord],
        bundle_sequence: u64,
        expected_version: u64,
        audit: &[AuditEvent],
    ) -> Result<u64, StoreError>;
    /// A new generation id: above every stored generation's id and every id this store
    /// handed out before, and never the same twice, even to concurrent callers in other
    /// processes. An id whose generation is never saved is simply skipped.
    fn new_authority_id(&self) -> Result<AuthorityId, StoreError>;

    /// Records issued certificates, all or none: if a serial is already recorded, or named
    /// twice in `records`, it fails with [`StoreError::SerialExists`] and writes nothing.
    fn insert_certificates(&self, records: &[CertificateRecord]) -> Result<(), StoreError>;
    /// Like [`Store::insert_certificates`], but only while generation `signer` is stored as
    /// active, checked in the same atomic step as the insert: a conditional save that
    /// changes `signer` is either wholly before (then this fails with
    /// [`StoreError::NotActive`] and writes nothing) or wholly after the insert (and then
    /// sees the records, e.g. in [`Store::last_leaf_not_after`]).
    ///
    /// Instance records are bound in the same atomic step (see [`InstanceBinding`]): a record
    /// whose instance has a live binding of another owner, or of the same owner with another
    /// app, space or organization, is refused and not written; the others are written and
    /// bind (or extend) their instance. Records are judged in order, so of two in one call
    /// for the same instance the first decides. Returns the indices of the refused records,
    /// in increasing order. Of concurrent calls binding the same free instance, in this
    /// process or another, exactly one owner wins.
    ///
    /// `audit[i]` is the audit event of `records[i]` (`audit` is either empty or one event per
    /// record): the events of the written records are appended in the same atomic step.
    fn insert_signed(
        &self,
        signer: AuthorityId,
        records: &[CertificateRecord],
        audit: &[AuditEvent],
    ) -> Result<Vec<usize>, StoreError>;
    /// The live binding of an instance at `now`; `None` if it was never bound, was released,
    /// or every certificate issued under it has expired.
    // Read by the conformance checks; the CA itself judges bindings inside its writes.
    #[cfg_attr(not(test), allow(dead_code))]
    fn get_binding(
        &self,
        instance: &Guid,
        now: SystemTime,
    ) -> Result<Option<InstanceBinding>, StoreError>;
    /// Ends an instance's binding, durably: only if `owner` holds it (`Some`, a cell
    /// releasing its own), or whoever holds it (`None`, an operator). A binding that expired
    /// by `now` is removed too and answered [`ReleaseOutcome::NotBound`]. Certificates stay
    /// as they are (releasing does not revoke).
    /// `audit` is appended in the same atomic step, only when a binding is released.
    fn release_binding(
        &self,
        instance: &Guid,
        owner: Option<&str>,
        now: SystemTime,
        audit: &[AuditEvent],
    ) -> Result<ReleaseOutcome, StoreError>;
    /// One certificate record; `None` for a serial never recorded.
    fn get_certificate(&self, serial: &Serial) -> Result<Option<CertificateRecord>, StoreError>;
    /// Replaces an existing record (revocation), keeping it findable by the same queries;
    /// [`StoreError::NotFound`] (writing nothing) if the serial was never recorded. On a
    /// shared store, a committed update notifies every [`Store::change_feed`].
    fn update_certificate(&self, record: &CertificateRecord) -> Result<(), StoreError>;
    /// Revokes a certificate in one atomic, durable step: the record (`revoked_at = at`,
    /// `revocation_reason = reason`) and the revocation index that [`Store::revoked`] reads
    /// change together or not at all. A certificate already revoked is left exactly as it is
    /// (its first `revoked_at` and reason stay) and answered
    /// [`RevokeOutcome::AlreadyRevoked`], so a retried revoke is harmless; of concurrent
    /// revokes of one serial exactly one is [`RevokeOutcome::Revoked`].
    /// [`StoreError::NotFound`] (writing nothing) for a serial never recorded. On a shared
    /// store, a committed revocation notifies every [`Store::change_feed`].
    ///
    /// `audit` is appended in the same atomic step, only when this call revokes.
    fn revoke(
        &self,
        serial: &Serial,
        at: SystemTime,
        reason: Option<&str>,
        audit: &[AuditEvent],
    ) -> Result<RevokeOutcome, StoreError>;
    /// Records matching every filter of `query`, newest (latest notBefore) first, at most
    /// `query.limit`.
    fn query_certificates(
        &self,
        query: &CertificateQuery,
    ) -> Result<Vec<CertificateRecord>, StoreError>;
    /// Revoked certificates a generation signed: serial and revocation time, as the current
    /// records say.
    fn revoked(&self, id: AuthorityId) -> Result<Vec<(Serial, SystemTime)>, StoreError>;
    /// The latest notAfter among every certificate a generation signed (credentials
    /// included, revoked or not); `None` before its first.
    fn last_leaf_not_after(&self, id: AuthorityId) -> Result<Option<SystemTime>, StoreError>;

    /// Stores a join token under the hash of its secret, and appends `audit` in the same
    /// atomic step.
    fn insert_join_token(
        &self,
        hash: &[u8],
        token: &JoinTokenRecord,
        audit: &[AuditEvent],
    ) -> Result<(), StoreError>;
    /// Reads a join token without spending it.
    fn get_join_token(&self, hash: &[u8]) -> Result<Option<JoinTokenRecord>, StoreError>;
    /// Removes and returns a join token: of any number of calls for the same hash, even
    /// concurrent ones, exactly one gets it; the others get `None`. The one that gets it
    /// appends `audit` in the same atomic step.
    fn take_join_token(
        &self,
        hash: &[u8],
        audit: &[AuditEvent],
    ) -> Result<Option<JoinTokenRecord>, StoreError>;

    /// Appends events to the audit log on their own (changes that write nothing else, such
    /// as a server start), durably.
    ///
    /// Every write method that takes `audit` appends its events to the same hash chain (see
    /// [`crate::audit`]) in the same atomic, durable step as its change: entry `seq`s follow
    /// each other without gaps and each entry links to the one before, whichever process of
    /// those sharing the store appends, and however many append at once.
    fn append_audit(&self, audit: &[AuditEvent]) -> Result<(), StoreError>;
    /// Up to `limit` audit entries with `seq` above `after`, in `seq` order (as stored: a
    /// damaged log is answered as it is, for the verifier to judge), the position of the
    /// last one answered (`after` when none; the next call's `after`), and the last
    /// position of the whole log (0 when empty).
    fn audit_after(&self, after: u64, limit: usize) -> Result<AuditPage, StoreError>;
    /// Writes audit entries as they are (for copying a whole store), durably, after the
    /// chain head, and moves the head to the last of them. Refuses (writing nothing) entries
    /// that do not continue the chain: the first must be the head's seq + 1 and link to its
    /// hash, and each next one must follow the one before.
    fn import_audit(&self, entries: &[AuditEntry]) -> Result<(), StoreError>;
    /// Every binding, live or expired, in no particular order (for copying a whole store).
    fn all_bindings(&self) -> Result<Vec<InstanceBinding>, StoreError>;
    /// Writes bindings as they are, replacing any of the same instance (for copying a whole
    /// store), durably.
    fn import_bindings(&self, bindings: &[InstanceBinding]) -> Result<(), StoreError>;

    /// Waits until no other holder (thread or process) has the init lock, then holds it until
    /// the returned value is dropped (or the process ends), so one process initializes the
    /// state while the others wait and then find it initialized.
    fn lock_init(&self) -> Result<InitLock, StoreError>;

    /// For a store other processes write too: a receiver that gets a message soon (well
    /// under a second) after another process committed a change of the generations or a
    /// revocation, and whenever notifications may have been lost (after a reconnect).
    /// Messages are coalesced; the receiver reloads what it needs. `None` for a store only
    /// this process writes.
    fn change_feed(&self) -> Option<std::sync::mpsc::Receiver<()>> {
        None
    }

    /// Removes every join token that expired before `now` (`expires_at < now`), durably, and
    /// returns how many; tokens expiring at `now` or later stay. Tokens nobody spends would
    /// otherwise pile up forever.
    fn purge_expired_join_tokens(&self, now: SystemTime) -> Result<u64, StoreError>;

    /// Up to `limit` serials of certificates that expired before `before` (`not_after <
    /// before`; one expiring at `before` or later is not among them), the earliest expiry
    /// first, read from an index of expiry times (no scan of the records).
    fn expired_certificates(
        &self,
        before: SystemTime,
        limit: usize,
    ) -> Result<Vec<Serial>, StoreError>;
    /// Deletes the records of `serials` that expired before `before`, with every index
    /// entry of theirs (so no query, revocation list or copy finds them), in one atomic,
    /// durable step, and returns how many it deleted; serials not recorded, or expiring at
    /// `before` or later, are left alone. `audit` is appended in the same step, only when
    /// something is deleted. The audit log itself is never shortened, and what
    /// [`Store::last_leaf_not_after`] answers does not change.
    fn delete_expired_certificates(
        &self,
        serials: &[Serial],
        before: SystemTime,
        audit: &[AuditEvent],
    ) -> Result<u64, StoreError>;

    /// Takes or renews the lease `name` for `holder` for `period` from now (the store's
    /// clock, so holders on hosts whose clocks differ still agree). A shared store grants it
    /// when nobody holds it, when it has lapsed, or when `holder` already holds it (a
    /// renewal, which moves the expiry forward), and refuses it otherwise, naming the holder;
    /// of concurrent callers at most one is granted a lease that is not theirs already. A
    /// store only one process can open answers [`LeaseGrant::Unshared`] to everyone.
    fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        period: Duration,
    ) -> Result<LeaseGrant, StoreError>;
    /// Who holds the lease `name` now: `None` if nobody does (never taken, or lapsed), and
    /// always `None` on a store that answers [`LeaseGrant::Unshared`].
    fn current_lease(&self, name: &str) -> Result<Option<Lease>, StoreError>;

    /// Answers `Ok` when the backend can serve calls now, quickly (within about a second)
    /// either way: a cheap round trip for a database, nothing for an embedded store.
    fn ping(&self) -> Result<(), StoreError>;

    /// Every metadata value, in no particular order (for copying a whole store).
    fn all_meta(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Up to `limit` certificate records in increasing serial order (the serial's bytes),
    /// starting after `after` (from the first when `None`): paging through them all visits
    /// each record once.
    fn certificates_after(
        &self,
        after: Option<&Serial>,
        limit: usize,
    ) -> Result<Vec<CertificateRecord>, StoreError>;
    /// Every unspent join token with the hash it is stored under, in no particular order.
    fn all_join_tokens(&self) -> Result<Vec<(Vec<u8>, JoinTokenRecord)>, StoreError>;
}
