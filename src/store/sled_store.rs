//! The embedded store: sled trees, JSON values, a flush (fsync) before every write returns.
//!
//! This is the only module that touches sled.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::Serialize;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::{
    AuditPage, AuthorityRecord, CertificateQuery, CertificateRecord, Generations, InitLock,
    InstanceBinding, JoinTokenRecord, Lease, LeaseGrant, ReleaseOutcome, RevokeOutcome, Store,
    StoreError,
};
use crate::audit::{self, AuditEntry, AuditEvent, ChainHead};
use crate::ids::{AuthorityId, Guid, Serial};

const SEQUENCE_KEY: &[u8] = b"meta/bundle_sequence";
/// The generations' version (see [`Store::load_generations`]), beside the sequence.
const VERSION_KEY: &[u8] = b"meta/authorities_version";
/// The last generation id [`Store::new_authority_id`] handed out.
const LAST_ID_KEY: &[u8] = b"meta/last_authority_id";
/// The audit chain head (`audit_head` tree): the last entry's seq and hash.
const HEAD_KEY: &[u8] = b"head";

/// sled-backed [`Store`].
pub(crate) struct SledStore {
    db: sled::Db,
    meta: sled::Tree,
    authorities: sled::Tree,
    certs: sled::Tree,
    /// Instance GUID, 0, notBefore (big-endian nanoseconds), serial: an instance's records
    /// in time order, so a page of the newest reads only what it answers.
    by_instance: sled::Tree,
    /// The same by app GUID.
    by_app: sled::Tree,
    /// notBefore, serial: every record in time order.
    by_time: sled::Tree,
    /// notAfter, serial: records by expiry, for retention.
    by_expiry: sled::Tree,
    /// Which index layouts the store has been brought up to (see [`SledStore::upgrade`]).
    layout: sled::Tree,
    leaf_max: sled::Tree,
    revoked: sled::Tree,
    tokens: sled::Tree,
    /// Instance bindings, by instance GUID.
    bindings: sled::Tree,
    /// Audit entries, by big-endian seq.
    audit: sled::Tree,
    /// The audit chain head, so an append needs no scan.
    audit_head: sled::Tree,
    /// Group commit: writes finished, and how many of them the last flush covered.
    written: std::sync::atomic::AtomicU64,
    flushed: std::sync::atomic::AtomicU64,
    flush_lock: std::sync::Mutex<()>,
    /// Generation saves take it for writing, checked certificate inserts for reading: sled
    /// holds one process, so this makes a save and an insert against it atomic.
    generations_lock: std::sync::RwLock<()>,
    /// Whether some caller holds the init lock, and where waiters wait.
    init_lock: std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Backend(format!("encoding: {e}")))
}

fn decode<T: DeserializeOwned>(key: &[u8], v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        message: e.to_string(),
    })
}

/// Nanoseconds since the epoch: 0 before it, and the largest u64 (in 2554) after that, so
/// keys stay in time order at both ends.
fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The instance index's tree.
const BY_INSTANCE: &str = "certificates_by_instance_time";
/// The app index's tree.
const BY_APP: &str = "certificates_by_app_time";
/// The expiry index's tree.
const BY_EXPIRY: &str = "certificates_by_expiry";
/// The `layout` mark of a store whose instance, app and expiry indexes are in time order.
const TIME_INDEXES: &[u8] = b"time_indexes";

/// `t` (big-endian nanoseconds) then the serial: keys in time order.
fn time_key(t: SystemTime, serial: &Serial) -> Vec<u8> {
    let mut k = nanos(t).to_be_bytes().to_vec();
    k.extend_from_slice(serial.as_bytes());
    k
}

/// A GUID index's prefix: the GUID, then 0 (no GUID holds it, so none extends another).
fn guid_prefix(g: &Guid) -> Vec<u8> {
    let mut k = g.as_str().as_bytes().to_vec();
    k.push(0);
    k
}

/// A record's key in the instance index, if it has an instance.
fn instance_key(r: &CertificateRecord) -> Option<Vec<u8>> {
    r.instance_guid
        .as_ref()
        .map(|g| [guid_prefix(g), time_key(r.not_before, &r.serial)].concat())
}

/// A record's key in the app index, if it has an app.
fn app_key(r: &CertificateRecord) -> Option<Vec<u8>> {
    r.app_guid
        .as_ref()
        .map(|g| [guid_prefix(g), time_key(r.not_before, &r.serial)].concat())
}

/// sled's page cache. With sled's default (1 GiB) a busy CA's memory keeps growing with the
/// certificates it issues (184 MB after 31,000, against 157 MB with this cap); reads here are
/// by key or short index ranges of recent records, which a small cache serves as well.
const CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// How long [`SledStore::open`] waits for a file lock that is being released.
const LOCK_WAIT: Duration = Duration::from_secs(1);

/// Whether sled failed to open because another handle still holds the state's file lock.
/// sled reports it only as an `Other` I/O error with this text.
fn is_lock_held(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// A record's key in the revocation index: its generation, then its serial.
fn revoked_key(r: &CertificateRecord) -> Vec<u8> {
    let mut k = r.authority_id.0.to_be_bytes().to_vec();
    k.extend_from_slice(r.serial.as_bytes());
    k
}

/// A record's key in the expiry index.
fn expiry_key(r: &CertificateRecord) -> Vec<u8> {
    time_key(r.not_after, &r.serial)
}

/// The serial at the end of an index key.
fn serial_of_key(k: &[u8]) -> Option<Serial> {
    k.len()
        .checked_sub(16)
        .and_then(|at| Serial::from_bytes(&k[at..]))
}

impl SledStore {
    /// Opens (or creates) the store under `dir`.
    pub(crate) fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Backend(e.to_string()))?;
        let config = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(CACHE_BYTES);
        // sled releases its file lock from a background thread after the last handle is
        // dropped, and the kernel after a process exits: a lock still held is waited for a
        // moment before it is reported as another process using the state.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(e) if is_lock_held(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) if is_lock_held(&e) => {
                    return Err(StoreError::Backend(format!(
                        "the state in {} is in use by another lanyard process (is `lanyard serve` running?)",
                        dir.display()
                    )))
                }
                Err(e) => {
                    return Err(StoreError::Backend(format!(
                        "cannot open {}: {e}",
                        dir.display()
                    )))
                }
            }
        };
        Self::from_db(db)
    }

    /// A throw-away store for tests.
    #[cfg(test)]
    pub(crate) fn temporary() -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .map_err(backend)?;
        Self::from_db(db)
    }

    fn from_db(db: sled::Db) -> Result<Self, StoreError> {
        let t = |n: &str| db.open_tree(n).map_err(backend);
        SledStore {
            meta: t("meta")?,
            authorities: t("authorities")?,
            certs: t("certificates")?,
            by_instance: t(BY_INSTANCE)?,
            by_app: t(BY_APP)?,
            by_time: t("certificates_by_time")?,
            by_expiry: t(BY_EXPIRY)?,
            layout: t("layout")?,
            leaf_max: t("authority_last_leaf")?,
            revoked: t("revoked_by_authority")?,
            tokens: t("join_tokens")?,
            bindings: t("instance_bindings")?,
            audit: t("audit_log")?,
            audit_head: t("audit_head")?,
            written: Default::default(),
            flushed: Default::default(),
            flush_lock: Default::default(),
            generations_lock: Default::default(),
            init_lock: Default::default(),
            db,
        }
        .upgrade()
    }

    /// Brings a store written by an earlier version up to this one's index layout: the
    /// instance and app indexes used to hold GUID and serial only (a query read and sorted
    /// every record of the GUID), and there was no expiry index. Building the new ones is
    /// idempotent, so a crash halfway only repeats it; the mark is written last, and the old
    /// trees are dropped after it.
    fn upgrade(self) -> Result<Self, StoreError> {
        if self.layout.get(TIME_INDEXES).map_err(backend)?.is_some() {
            return Ok(self);
        }
        for item in self.certs.iter() {
            let (k, v) = item.map_err(backend)?;
            let r: CertificateRecord = decode(&k, &v)?;
            for (tree, key) in [
                (&self.by_instance, instance_key(&r)),
                (&self.by_app, app_key(&r)),
                (&self.by_expiry, Some(expiry_key(&r))),
            ] {
                if let Some(key) = key {
                    tree.insert(key, &[][..]).map_err(backend)?;
                }
            }
        }
        self.db.flush().map_err(backend)?;
        self.layout.insert(TIME_INDEXES, &[][..]).map_err(backend)?;
        self.db.flush().map_err(backend)?;
        for old in ["certificates_by_instance", "certificates_by_app"] {
            if self
                .db
                .tree_names()
                .iter()
                .any(|n| n.as_ref() == old.as_bytes())
            {
                self.db.drop_tree(old).map_err(backend)?;
            }
        }
        Ok(self)
    }

    /// Makes every write so far durable. Concurrent callers share one fsync (group commit):
    /// a flush that starts after a caller's writes covers them, so a caller that finds such
    /// a flush already done returns without its own.
    fn durable(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        let mine = self.written.fetch_add(1, Ordering::SeqCst) + 1;
        let _one = self.flush_lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.flushed.load(Ordering::SeqCst) >= mine {
            return Ok(());
        }
        let covered = self.written.load(Ordering::SeqCst);
        self.db.flush().map_err(backend)?;
        self.flushed.store(covered, Ordering::SeqCst);
        Ok(())
    }
}

impl Store for SledStore {
    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(key).map_err(backend)?.map(|v| v.to_vec()))
    }

    fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.meta.insert(key, value).map_err(backend)?;
        self.durable()
    }

    fn load_authorities(&self) -> Result<(Vec<AuthorityRecord>, u64), StoreError> {
        let g = self.load_generations()?;
        Ok((g.records, g.bundle_sequence))
    }

    fn save_authorities(
        &self,
        changed: &[AuthorityRecord],
        bundle_sequence: u64,
        audit: &[AuditEvent],
    ) -> Result<(), StoreError> {
        let _w = self
            .generations_lock
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let version = self.load_generations()?.version;
        self.write_generations(changed, bundle_sequence, version + 1, audit)
    }

    fn load_generations(&self) -> Result<Generations, StoreError> {
        let mut records = Vec::new();
        let mut bundle_sequence = 0;
        let mut version = 0;
        for item in self.authorities.iter() {
            let (k, v) = item.map_err(backend)?;
            match k.as_ref() {
                SEQUENCE_KEY => bundle_sequence = decode(&k, &v)?,
                VERSION_KEY => version = decode(&k, &v)?,
                LAST_ID_KEY => {}
                _ => records.push(decode::<AuthorityRecord>(&k, &v)?),
            }
        }
        records.sort_by_key(|a| a.id);
        Ok(Generations {
            records,
            bundle_sequence,
            version,
        })
    }

    fn save_generations_if(
        &self,
        changed: &[AuthorityRecord],
        bundle_sequence: u64,
        expected_version: u64,
        audit: &[AuditEvent],
    ) -> Result<u64, StoreError> {
        // One process owns the sled store, so the lock makes read-compare-write atomic.
        let _w = self
            .generations_lock
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if self.load_generations()?.version != expected_version {
            return Err(StoreError::Conflict);
        }
        self.write_generations(changed, bundle_sequence, expected_version + 1, audit)?;
        Ok(expected_version + 1)
    }

    fn new_authority_id(&self) -> Result<AuthorityId, StoreError> {
        let _w = self
            .generations_lock
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let last: u32 = match self.authorities.get(LAST_ID_KEY).map_err(backend)? {
            Some(v) => decode(LAST_ID_KEY, &v)?,
            None => 0,
        };
        let stored = self
            .load_generations()?
            .records
            .iter()
            .map(|g| g.id.0)
            .max()
            .unwrap_or(0);
        let id = last
            .max(stored)
            .checked_add(1)
            .ok_or_else(|| StoreError::Backend("generation ids are exhausted".into()))?;
        self.authorities
            .insert(LAST_ID_KEY, encode(&id)?)
            .map_err(backend)?;
        self.durable()?;
        Ok(AuthorityId(id))
    }

    fn insert_signed(
        &self,
        signer: AuthorityId,
        records: &[CertificateRecord],
        audit: &[AuditEvent],
    ) -> Result<Vec<usize>, StoreError> {
        // Held until the records are durable: a generation save waits for this insert.
        let _r = self
            .generations_lock
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let active = self
            .authorities
            .get(format!("gen/{:010}", signer.0).as_bytes())
            .map_err(backend)?
            .map(|v| decode::<AuthorityRecord>(b"gen", &v))
            .transpose()?
            .is_some_and(|g| g.state == super::GenerationState::Active);
        if !active {
            return Err(StoreError::NotActive(signer));
        }
        self.insert_records(records, Some(SystemTime::now()), audit)
    }

    fn get_binding(
        &self,
        instance: &Guid,
        now: SystemTime,
    ) -> Result<Option<InstanceBinding>, StoreError> {
        let key = instance.as_str().as_bytes();
        Ok(match self.bindings.get(key).map_err(backend)? {
            Some(v) => Some(decode::<InstanceBinding>(key, &v)?).filter(|b| !b.expired(now)),
            None => None,
        })
    }

    fn release_binding(
        &self,
        instance: &Guid,
        owner: Option<&str>,
        now: SystemTime,
        audit: &[AuditEvent],
    ) -> Result<ReleaseOutcome, StoreError> {
        let key = instance.as_str().as_bytes();
        let trees = (&self.bindings, &self.audit, &self.audit_head);
        let result = trees.transaction(|(bindings, log, head)| {
            let Some(raw) = bindings.get(key)? else {
                return Ok(ReleaseOutcome::NotBound);
            };
            let b: InstanceBinding =
                decode(key, &raw).map_err(ConflictableTransactionError::Abort)?;
            if b.expired(now) {
                bindings.remove(key)?;
                return Ok(ReleaseOutcome::NotBound);
            }
            if owner.is_some_and(|o| o != b.owner) {
                return Ok(ReleaseOutcome::OwnedElsewhere);
            }
            bindings.remove(key)?;
            append_in(log, head, audit)?;
            Ok(ReleaseOutcome::Released(b))
        });
        match result {
            Ok(outcome) => self.durable().map(|()| outcome),
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(backend(e)),
        }
    }

    fn insert_certificates(&self, records: &[CertificateRecord]) -> Result<(), StoreError> {
        self.insert_records(records, None, &[]).map(|_| ())
    }

    fn get_certificate(&self, serial: &Serial) -> Result<Option<CertificateRecord>, StoreError> {
        match self.certs.get(serial.as_bytes()).map_err(backend)? {
            Some(v) => Ok(Some(decode(serial.to_string().as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    fn update_certificate(&self, record: &CertificateRecord) -> Result<(), StoreError> {
        let value = encode(record)?;
        let revoked_key = revoked_key(record);
        // The record and the revocation index change together, and only for a recorded
        // serial: an update must never create a record that the indexes do not know.
        let result = (&self.certs, &self.revoked).transaction(|(certs, revoked)| {
            if certs.get(record.serial.as_bytes())?.is_none() {
                return Err(ConflictableTransactionError::Abort(record.serial));
            }
            certs.insert(&record.serial.as_bytes()[..], value.as_slice())?;
            match record.revoked_at {
                Some(at) => {
                    revoked.insert(revoked_key.as_slice(), &nanos(at).to_be_bytes()[..])?;
                }
                None => {
                    revoked.remove(revoked_key.as_slice())?;
                }
            }
            Ok(())
        });
        match result {
            Ok(()) => self.durable(),
            Err(TransactionError::Abort(serial)) => Err(StoreError::NotFound(serial)),
            Err(TransactionError::Storage(e)) => Err(backend(e)),
        }
    }

    fn revoke(
        &self,
        serial: &Serial,
        at: SystemTime,
        reason: Option<&str>,
        audit: &[AuditEvent],
    ) -> Result<RevokeOutcome, StoreError> {
        // Read, check and write in one transaction over the record and the index: a
        // concurrent revoke of the same serial conflicts and is retried by sled, so it then
        // sees this one's record and leaves it alone.
        let trees = (&self.certs, &self.revoked, &self.audit, &self.audit_head);
        let result = trees.transaction(|(certs, revoked, log, head)| {
            let Some(raw) = certs.get(serial.as_bytes())? else {
                return Err(ConflictableTransactionError::Abort(StoreError::NotFound(
                    *serial,
                )));
            };
            let mut record: CertificateRecord = decode(serial.to_string().as_bytes(), &raw)
                .map_err(ConflictableTransactionError::Abort)?;
            if record.revoked_at.is_some() {
                return Ok(RevokeOutcome::AlreadyRevoked(record));
            }
            record.revoked_at = Some(at);
            record.revocation_reason = reason.map(str::to_string);
            let value = encode(&record).map_err(ConflictableTransactionError::Abort)?;
            let revoked_key = revoked_key(&record);
            certs.insert(&serial.as_bytes()[..], value.as_slice())?;
            revoked.insert(revoked_key.as_slice(), &nanos(at).to_be_bytes()[..])?;
            append_in(log, head, audit)?;
            Ok(RevokeOutcome::Revoked(record))
        });
        match result {
            // Flushed even when it was already revoked: a retry after a crash that came
            // before the first call's flush must still answer only once it is durable.
            Ok(outcome) => self.durable().map(|()| outcome),
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(backend(e)),
        }
    }

    fn query_certificates(
        &self,
        q: &CertificateQuery,
    ) -> Result<Vec<CertificateRecord>, StoreError> {
        if let Some(serial) = &q.serial {
            return Ok(self
                .get_certificate(serial)?
                .filter(|r| q.admits(r))
                .into_iter()
                .take(q.limit)
                .collect());
        }
        // Walk one index backwards from the cursor (or its end), reading only the records
        // answered; with both GUIDs the instance index is walked and the app checked, since
        // an instance keeps its app.
        let (tree, prefix) = match (&q.instance_guid, &q.app_guid) {
            (Some(g), _) => (&self.by_instance, guid_prefix(g)),
            (None, Some(g)) => (&self.by_app, guid_prefix(g)),
            (None, None) => (&self.by_time, Vec::new()),
        };
        let keys = match &q.after {
            Some(c) => {
                let end = [prefix.clone(), time_key(c.not_before, &c.serial)].concat();
                tree.range(prefix..end)
            }
            None => tree.scan_prefix(prefix),
        };
        let mut out = Vec::new();
        for item in keys.rev() {
            if out.len() >= q.limit {
                break;
            }
            let (k, _) = item.map_err(backend)?;
            let Some(serial) = serial_of_key(&k) else {
                continue;
            };
            if let Some(r) = self.get_certificate(&serial)? {
                if q.admits(&r) {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    fn revoked(&self, id: AuthorityId) -> Result<Vec<(Serial, SystemTime)>, StoreError> {
        let mut out = Vec::new();
        for item in self.revoked.scan_prefix(id.0.to_be_bytes()) {
            let (k, v) = item.map_err(backend)?;
            let serial = k.get(4..).and_then(Serial::from_bytes);
            let at = <[u8; 8]>::try_from(v.as_ref()).ok().map(u64::from_be_bytes);
            if let (Some(s), Some(at)) = (serial, at) {
                out.push((s, UNIX_EPOCH + std::time::Duration::from_nanos(at)));
            }
        }
        Ok(out)
    }

    fn last_leaf_not_after(&self, id: AuthorityId) -> Result<Option<SystemTime>, StoreError> {
        Ok(self
            .leaf_max
            .get(id.0.to_be_bytes())
            .map_err(backend)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(|b| UNIX_EPOCH + std::time::Duration::from_nanos(u64::from_be_bytes(b))))
    }

    fn insert_join_token(
        &self,
        hash: &[u8],
        token: &JoinTokenRecord,
        audit: &[AuditEvent],
    ) -> Result<(), StoreError> {
        let value = encode(token)?;
        let trees = (&self.tokens, &self.audit, &self.audit_head);
        finish(trees.transaction(|(tokens, log, head)| {
            tokens.insert(hash, value.as_slice())?;
            append_in(log, head, audit)
        }))?;
        self.durable()
    }

    fn get_join_token(&self, hash: &[u8]) -> Result<Option<JoinTokenRecord>, StoreError> {
        match self.tokens.get(hash).map_err(backend)? {
            Some(v) => Ok(Some(decode(b"join_token", &v)?)),
            None => Ok(None),
        }
    }

    fn lock_init(&self) -> Result<InitLock, StoreError> {
        // sled admits one process; this keeps threads of that process apart.
        let (held, freed) = &*self.init_lock;
        let mut h = held.lock().unwrap_or_else(|p| p.into_inner());
        while *h {
            h = freed.wait(h).unwrap_or_else(|p| p.into_inner());
        }
        *h = true;
        Ok(InitLock::new(Box::new(SledInitLock(
            self.init_lock.clone(),
        ))))
    }

    fn take_join_token(
        &self,
        hash: &[u8],
        audit: &[AuditEvent],
    ) -> Result<Option<JoinTokenRecord>, StoreError> {
        // Of concurrent takers, sled commits one transaction first; the others run again and
        // find the token gone.
        let trees = (&self.tokens, &self.audit, &self.audit_head);
        let old = finish(trees.transaction(|(tokens, log, head)| {
            let old = tokens.remove(hash)?;
            if old.is_some() {
                append_in(log, head, audit)?;
            }
            Ok(old)
        }))?;
        match old {
            Some(v) => {
                self.durable()?;
                Ok(Some(decode(b"join_token", &v)?))
            }
            None => Ok(None),
        }
    }

    fn append_audit(&self, audit: &[AuditEvent]) -> Result<(), StoreError> {
        if audit.is_empty() {
            return Ok(());
        }
        let trees = (&self.audit, &self.audit_head);
        finish(trees.transaction(|(log, head)| append_in(log, head, audit)))?;
        self.durable()
    }

    fn audit_after(&self, after: u64, limit: usize) -> Result<AuditPage, StoreError> {
        let start = after.saturating_add(1).to_be_bytes();
        let mut page = AuditPage {
            next: after,
            ..Default::default()
        };
        for item in self.audit.range(start..).take(limit) {
            let (k, v) = item.map_err(backend)?;
            let Some(pos) = <[u8; 8]>::try_from(k.as_ref()).ok().map(u64::from_be_bytes) else {
                continue;
            };
            page.entries.push(decode::<AuditEntry>(&k, &v)?);
            page.next = pos;
        }
        page.last = match self.audit.last().map_err(backend)? {
            Some((k, _)) => <[u8; 8]>::try_from(k.as_ref())
                .ok()
                .map(u64::from_be_bytes)
                .unwrap_or(0),
            None => 0,
        };
        Ok(page)
    }

    fn import_audit(&self, entries: &[AuditEntry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let encoded = entries.iter().map(encode).collect::<Result<Vec<_>, _>>()?;
        let trees = (&self.audit, &self.audit_head);
        finish(trees.transaction(|(log, head)| {
            let mut h: ChainHead = match head.get(HEAD_KEY)? {
                Some(v) => decode(HEAD_KEY, &v).map_err(ConflictableTransactionError::Abort)?,
                None => ChainHead::default(),
            };
            for (e, v) in entries.iter().zip(&encoded) {
                super::continues(&h, e).map_err(ConflictableTransactionError::Abort)?;
                log.insert(&e.seq.to_be_bytes()[..], v.as_slice())?;
                h = ChainHead {
                    seq: e.seq,
                    hash: e.hash.clone(),
                };
            }
            let v = encode(&h).map_err(ConflictableTransactionError::Abort)?;
            head.insert(HEAD_KEY, v)?;
            Ok(())
        }))?;
        self.durable()
    }

    fn all_bindings(&self) -> Result<Vec<InstanceBinding>, StoreError> {
        self.bindings
            .iter()
            .map(|item| {
                let (k, v) = item.map_err(backend)?;
                decode(&k, &v)
            })
            .collect()
    }

    fn import_bindings(&self, bindings: &[InstanceBinding]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for b in bindings {
            batch.insert(b.instance_guid.as_str().as_bytes(), encode(b)?);
        }
        self.bindings.apply_batch(batch).map_err(backend)?;
        self.durable()
    }

    fn purge_expired_join_tokens(&self, now: SystemTime) -> Result<u64, StoreError> {
        let mut purged = 0u64;
        for item in self.tokens.iter() {
            let (hash, v) = item.map_err(backend)?;
            let rec: JoinTokenRecord = decode(b"join_token", &v)?;
            // Removed only if still the same expired record, so a token re-inserted under
            // the same hash in the meantime is not lost.
            if rec.expires_at < now
                && self
                    .tokens
                    .compare_and_swap(&hash, Some(v), None as Option<&[u8]>)
                    .map_err(backend)?
                    .is_ok()
            {
                purged += 1;
            }
        }
        if purged > 0 {
            self.durable()?;
        }
        Ok(purged)
    }

    fn acquire_lease(
        &self,
        _name: &str,
        _holder: &str,
        _period: std::time::Duration,
    ) -> Result<LeaseGrant, StoreError> {
        // sled locks its files: this process is the only one with the store, so the only
        // possible holder.
        Ok(LeaseGrant::Unshared)
    }

    fn current_lease(&self, _name: &str) -> Result<Option<Lease>, StoreError> {
        Ok(None)
    }

    fn ping(&self) -> Result<(), StoreError> {
        // In this process: there whenever the process is.
        Ok(())
    }

    fn all_meta(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.meta
            .iter()
            .map(|item| {
                let (k, v) = item.map_err(backend)?;
                let key = String::from_utf8(k.to_vec()).map_err(|_| StoreError::Corrupt {
                    key: String::from_utf8_lossy(&k).into_owned(),
                    message: "a metadata key that is not UTF-8".into(),
                })?;
                Ok((key, v.to_vec()))
            })
            .collect()
    }

    fn certificates_after(
        &self,
        after: Option<&Serial>,
        limit: usize,
    ) -> Result<Vec<CertificateRecord>, StoreError> {
        use std::ops::Bound;
        // The tree is keyed by the serial's bytes, so its order is the promised one.
        let start = match after {
            Some(s) => Bound::Excluded(s.as_bytes().to_vec()),
            None => Bound::Unbounded,
        };
        self.certs
            .range::<Vec<u8>, _>((start, Bound::Unbounded))
            .take(limit)
            .map(|item| {
                let (k, v) = item.map_err(backend)?;
                decode(&k, &v)
            })
            .collect()
    }

    fn expired_certificates(
        &self,
        before: SystemTime,
        limit: usize,
    ) -> Result<Vec<Serial>, StoreError> {
        // Keys start with notAfter: every key below `before`'s nanoseconds expired earlier.
        let end = nanos(before).to_be_bytes();
        self.by_expiry
            .range(..&end[..])
            .take(limit)
            .map(|item| {
                let (k, _) = item.map_err(backend)?;
                serial_of_key(&k).ok_or_else(|| StoreError::Corrupt {
                    key: format!("{BY_EXPIRY}/{}", hex::encode(&k)),
                    message: "not an expiry and a serial".into(),
                })
            })
            .collect()
    }

    fn delete_expired_certificates(
        &self,
        serials: &[Serial],
        before: SystemTime,
        audit: &[AuditEvent],
    ) -> Result<u64, StoreError> {
        let trees = (
            &self.certs,
            &self.by_instance,
            &self.by_app,
            &self.by_time,
            &self.by_expiry,
            &self.revoked,
            &self.audit,
            &self.audit_head,
        );
        let deleted = finish(trees.transaction(
            |(certs, by_instance, by_app, by_time, by_expiry, revoked, log, head)| {
                let abort = ConflictableTransactionError::Abort;
                let mut deleted = 0u64;
                for serial in serials {
                    let Some(v) = certs.get(serial.as_bytes())? else {
                        continue;
                    };
                    let r: CertificateRecord = decode(serial.as_bytes(), &v).map_err(abort)?;
                    if r.not_after >= before {
                        continue;
                    }
                    certs.remove(&serial.as_bytes()[..])?;
                    if let Some(k) = instance_key(&r) {
                        by_instance.remove(k)?;
                    }
                    if let Some(k) = app_key(&r) {
                        by_app.remove(k)?;
                    }
                    by_time.remove(time_key(r.not_before, &r.serial))?;
                    by_expiry.remove(expiry_key(&r))?;
                    revoked.remove(revoked_key(&r))?;
                    deleted += 1;
                }
                if deleted > 0 {
                    append_in(log, head, audit)?;
                }
                Ok(deleted)
            },
        ))?;
        self.durable()?;
        Ok(deleted)
    }

    fn all_join_tokens(&self) -> Result<Vec<(Vec<u8>, JoinTokenRecord)>, StoreError> {
        self.tokens
            .iter()
            .map(|item| {
                let (k, v) = item.map_err(backend)?;
                Ok((k.to_vec(), decode(b"join_token", &v)?))
            })
            .collect()
    }
}

/// Releases the sled store's init lock when dropped.
struct SledInitLock(std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);

impl Drop for SledInitLock {
    fn drop(&mut self) {
        let (held, freed) = &*self.0;
        *held.lock().unwrap_or_else(|p| p.into_inner()) = false;
        freed.notify_one();
    }
}

impl SledStore {
    /// Writes changed generations, the sequence and the version in one atomic batch.
    fn write_generations(
        &self,
        changed: &[AuthorityRecord],
        bundle_sequence: u64,
        version: u64,
        audit: &[AuditEvent],
    ) -> Result<(), StoreError> {
        // One transaction: the states, the sequence and the audit entry change together.
        let mut writes = Vec::with_capacity(changed.len() + 2);
        for a in changed {
            writes.push((format!("gen/{:010}", a.id.0).into_bytes(), encode(a)?));
        }
        writes.push((SEQUENCE_KEY.to_vec(), encode(&bundle_sequence)?));
        writes.push((VERSION_KEY.to_vec(), encode(&version)?));
        let trees = (&self.authorities, &self.audit, &self.audit_head);
        finish(trees.transaction(|(authorities, log, head)| {
            for (k, v) in &writes {
                authorities.insert(k.as_slice(), v.as_slice())?;
            }
            append_in(log, head, audit)
        }))?;
        self.durable()
    }
}

impl SledStore {
    /// Records certificates in one transaction; with `bind_at`, instance records are bound
    /// (judged at that time) and those bound elsewhere refused. Returns the refused indices.
    fn insert_records(
        &self,
        records: &[CertificateRecord],
        bind_at: Option<SystemTime>,
        audit: &[AuditEvent],
    ) -> Result<Vec<usize>, StoreError> {
        if !audit.is_empty() && audit.len() != records.len() {
            return Err(StoreError::Backend(
                "one audit event per certificate record, or none".into(),
            ));
        }
        let encoded = records.iter().map(encode).collect::<Result<Vec<_>, _>>()?;
        let wanted: Vec<Option<InstanceBinding>> = match bind_at {
            Some(_) => records.iter().map(InstanceBinding::of).collect(),
            None => vec![None; records.len()],
        };
        let now = bind_at.unwrap_or(UNIX_EPOCH);
        // One transaction over the record, every index and the bindings: a taken serial
        // aborts it with nothing written, a crash cannot leave a record without its indexes
        // or binding, no reader sees a batch half written, and two inserts binding the same
        // instance conflict (sled runs the loser again, and it then sees the winner's
        // binding). The transaction reads its own writes, so a serial named twice in one
        // batch aborts it too, and a second record for one instance sees the first's binding.
        let result = (
            &self.certs,
            &self.by_instance,
            &self.by_app,
            &self.by_time,
            &self.by_expiry,
            &self.leaf_max,
            &self.bindings,
            &self.audit,
            &self.audit_head,
        )
            .transaction(
                |(
                    certs,
                    by_instance,
                    by_app,
                    by_time,
                    by_expiry,
                    leaf_max,
                    bindings,
                    log,
                    head,
                )| {
                    let mut refused = Vec::new();
                    for (i, (r, value)) in records.iter().zip(&encoded).enumerate() {
                        if let Some(want) = &wanted[i] {
                            let key = want.instance_guid.as_str().as_bytes();
                            let current = bindings
                                .get(key)?
                                .map(|v| decode::<InstanceBinding>(key, &v))
                                .transpose()
                                .map_err(|e| ConflictableTransactionError::Abort(Err(e)))?;
                            match InstanceBinding::merged(current.as_ref(), want, now) {
                                Some(b) => {
                                    let v = encode(&b)
                                        .map_err(|e| ConflictableTransactionError::Abort(Err(e)))?;
                                    bindings.insert(key, v)?;
                                }
                                None => {
                                    refused.push(i);
                                    continue;
                                }
                            }
                        }
                        if certs.get(r.serial.as_bytes())?.is_some() {
                            return Err(ConflictableTransactionError::Abort(Ok(r.serial)));
                        }
                        certs.insert(&r.serial.as_bytes()[..], value.as_slice())?;
                        if let Some(k) = instance_key(r) {
                            by_instance.insert(k, &[][..])?;
                        }
                        if let Some(k) = app_key(r) {
                            by_app.insert(k, &[][..])?;
                        }
                        by_time.insert(time_key(r.not_before, &r.serial), &[][..])?;
                        by_expiry.insert(expiry_key(r), &[][..])?;
                        let key = r.authority_id.0.to_be_bytes();
                        let current = leaf_max
                            .get(key)?
                            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
                            .map(u64::from_be_bytes)
                            .unwrap_or(0);
                        let na = nanos(r.not_after);
                        if na > current {
                            leaf_max.insert(&key[..], &na.to_be_bytes()[..])?;
                        }
                    }
                    let events: Vec<AuditEvent> = audit
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| refused.binary_search(i).is_err())
                        .map(|(_, e)| e.clone())
                        .collect();
                    append_in(log, head, &events).map_err(|e| match e {
                        ConflictableTransactionError::Abort(e) => {
                            ConflictableTransactionError::Abort(Err(e))
                        }
                        ConflictableTransactionError::Storage(e) => {
                            ConflictableTransactionError::Storage(e)
                        }
                        _ => ConflictableTransactionError::Conflict,
                    })?;
                    Ok(refused)
                },
            );
        match result {
            Ok(refused) => self.durable().map(|()| refused),
            Err(TransactionError::Abort(Ok(serial))) => Err(StoreError::SerialExists(serial)),
            Err(TransactionError::Abort(Err(e))) => Err(e),
            Err(TransactionError::Storage(e)) => Err(backend(e)),
        }
    }
}

/// Appends `events` to the audit chain inside a transaction: reads the head (no scan),
/// writes the entries and moves the head. Two transactions appending at once both write the
/// head, so sled runs one of them again, which then links to the other's entries.
fn append_in(
    log: &sled::transaction::TransactionalTree,
    head: &sled::transaction::TransactionalTree,
    events: &[AuditEvent],
) -> Result<(), ConflictableTransactionError<StoreError>> {
    if events.is_empty() {
        return Ok(());
    }
    let abort = ConflictableTransactionError::Abort;
    let mut h: ChainHead = match head.get(HEAD_KEY)? {
        Some(v) => decode(HEAD_KEY, &v).map_err(abort)?,
        None => ChainHead::default(),
    };
    let time = crate::timefmt::rfc3339(SystemTime::now());
    for e in audit::append(&mut h, events, &time) {
        log.insert(&e.seq.to_be_bytes()[..], encode(&e).map_err(abort)?)?;
    }
    head.insert(HEAD_KEY, encode(&h).map_err(abort)?)?;
    Ok(())
}

/// A transaction's result as a store result.
fn finish<T>(r: Result<T, TransactionError<StoreError>>) -> Result<T, StoreError> {
    match r {
        Ok(v) => Ok(v),
        Err(TransactionError::Abort(e)) => Err(e),
        Err(TransactionError::Storage(e)) => Err(backend(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{CertificateKind, GenerationState};

    fn record(instance: &str, app: &str, not_after: SystemTime) -> CertificateRecord {
        CertificateRecord {
            serial: Serial::random().unwrap(),
            kind: CertificateKind::Instance,
            instance_guid: Some(instance.parse().unwrap()),
            app_guid: Some(app.parse().unwrap()),
            space_guid: None,
            organization_guid: None,
            name: None,
            requested_by: "test".into(),
            authority_id: AuthorityId(1),
            not_before: SystemTime::now(),
            not_after,
            revoked_at: None,
            revocation_reason: None,
        }
    }

    #[test]
    fn a_store_of_the_earlier_index_layout_is_indexed_by_time_once_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let base = SystemTime::now();
        let records: Vec<CertificateRecord> = (0..3u64)
            .map(|i| {
                let mut r = record("a1", "b1", base + Duration::from_secs(3600));
                r.not_before = base - Duration::from_secs(100 - i);
                r
            })
            .collect();
        {
            // What an earlier version wrote: the records, and GUID-and-serial indexes.
            let db = sled::open(dir.path()).unwrap();
            let certs = db.open_tree("certificates").unwrap();
            let old = db.open_tree("certificates_by_app").unwrap();
            for r in &records {
                certs
                    .insert(r.serial.as_bytes(), encode(r).unwrap())
                    .unwrap();
                let mut k = b"b1\0".to_vec();
                k.extend_from_slice(r.serial.as_bytes());
                old.insert(k, &[][..]).unwrap();
            }
            db.flush().unwrap();
        }
        let s = SledStore::open(dir.path()).unwrap();
        let app = CertificateQuery {
            app_guid: Some("b1".parse().unwrap()),
            limit: 1,
            ..Default::default()
        };
        let newest = s.query_certificates(&app).unwrap();
        assert_eq!(newest.len(), 1);
        assert_eq!(newest[0].serial, records[2].serial);
        let expired = s
            .expired_certificates(base + Duration::from_secs(7200), 10)
            .unwrap();
        assert_eq!(expired.len(), 3, "the expiry index was built too");
        drop(s);
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.query_certificates(&app).unwrap().len(), 1);
        assert!(!s
            .db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == b"certificates_by_app"));
    }

    #[test]
    fn concurrent_writers_share_flushes_and_every_write_is_covered() {
        use std::sync::atomic::Ordering;
        let s = std::sync::Arc::new(SledStore::temporary().unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        let r = record(&format!("a{t}"), &format!("b{i}"), SystemTime::now());
                        s.insert_certificates(&[r]).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.written.load(Ordering::SeqCst), 200);
        assert_eq!(
            s.flushed.load(Ordering::SeqCst),
            200,
            "the last flush covers every write"
        );
        let all = s
            .query_certificates(&CertificateQuery {
                limit: 1000,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(all.len(), 200);
    }

    /// Prints what the audit log adds to a batch insert (run with `--ignored --nocapture`;
    /// a measurement, not a check: the machine's load decides the numbers).
    #[test]
    #[ignore]
    fn measure_the_audit_cost_of_a_batch_insert() {
        use crate::audit::AuditEvent;
        let s = SledStore::temporary().unwrap();
        let g = crate::store::conformance::authority(1, GenerationState::Active);
        s.save_authorities(&[g], 1, &[]).unwrap();
        let batch = |n: usize, k: usize| -> Vec<CertificateRecord> {
            (0..n)
                .map(|i| record(&format!("c{k:04x}{i:04x}"), "b1", SystemTime::now()))
                .collect()
        };
        let (rounds, n) = (20, 500);
        let mut plain = std::time::Duration::ZERO;
        let mut audited = std::time::Duration::ZERO;
        for k in 0..rounds {
            let recs = batch(n, 2 * k);
            let t = std::time::Instant::now();
            s.insert_signed(AuthorityId(1), &recs, &[]).unwrap();
            plain += t.elapsed();
            let recs = batch(n, 2 * k + 1);
            let events: Vec<AuditEvent> = recs
                .iter()
                .map(|r| {
                    AuditEvent::new(
                        r.requested_by.clone(),
                        "certificate.issued",
                        format!("certificate/{}", r.serial),
                        serde_json::json!({"serial": r.serial.to_string(), "kind": "instance",
                            "instance_guid": r.instance_guid.as_ref().map(|g| g.to_string())}),
                    )
                })
                .collect();
            let t = std::time::Instant::now();
            s.insert_signed(AuthorityId(1), &recs, &events).unwrap();
            audited += t.elapsed();
        }
        let per = |d: std::time::Duration| d.as_secs_f64() * 1e6 / (rounds * n) as f64;
        println!(
            "sled batch insert of {n}: {:.1} us/certificate without audit, {:.1} us/certificate with audit (+{:.1} us)",
            per(plain),
            per(audited),
            per(audited) - per(plain)
        );
    }

    /// Fresh stores in numbered directories under one temporary directory; a reopen drops
    /// the store (releasing sled's lock) and opens its directory again.
    struct SledHarness {
        root: tempfile::TempDir,
        opened: usize,
        current: Option<std::path::PathBuf>,
    }

    impl SledHarness {
        fn new() -> Self {
            SledHarness {
                root: tempfile::tempdir().unwrap(),
                opened: 0,
                current: None,
            }
        }
    }

    impl crate::store::conformance::Harness for SledHarness {
        type Store = SledStore;

        fn open_fresh(&mut self) -> Result<SledStore, StoreError> {
            self.opened += 1;
            let dir = self.root.path().join(format!("store-{}", self.opened));
            let store = SledStore::open(&dir)?;
            self.current = Some(dir);
            Ok(store)
        }

        fn reopen(&mut self, store: SledStore) -> Result<SledStore, StoreError> {
            drop(store);
            let dir = self.current.clone().expect("reopen after open_fresh");
            SledStore::open(&dir)
        }
    }

    mod conformance {
        use super::SledHarness;
        crate::store_conformance_tests!(SledHarness::new());
    }

    #[test]
    fn generation_state_names_match_the_api() {
        assert_eq!(GenerationState::Retiring.as_str(), "retiring");
    }
}
