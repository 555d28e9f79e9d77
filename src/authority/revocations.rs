//! The revocation status that every authenticated request checks, and the revoked serials
//! each CRL lists, kept in memory so neither costs a store read per request.
//!
//! A revocation counter moves whenever the revoked set may have changed: a revocation made
//! by this process ([`Authority::revocations_changed`]) and, on a store other processes
//! share, every change notification and periodic re-read (see `follow_store`). The snapshot
//! of revoked serials is read from the store again only when the counter moved since it was
//! taken; the counter is read *before* the store, so a revocation committed during the read
//! moves it and the next check reads again.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use super::{read_lock, Authority, AuthorityError};
use crate::ids::{AuthorityId, Serial};

/// The revoked certificates of one generation: serial and revocation time, in store order.
pub(super) type RevokedList = Arc<Vec<(Serial, SystemTime)>>;

/// What a CRL needs of a revoked certificate beyond its serial; a revoked record never
/// changes again, so this is read once per serial.
#[derive(Debug, Clone)]
pub(super) struct RevokedDetails {
    /// The certificate's notBefore.
    pub(super) not_before: SystemTime,
    /// The certificate's notAfter: expired entries leave the CRL.
    pub(super) not_after: SystemTime,
    /// The operator's reason, for the CRL reason code.
    pub(super) reason: Option<String>,
}

/// One read of every generation's revoked certificates.
#[derive(Debug)]
pub(super) struct Snapshot {
    /// The counter value read before the store was.
    counter: u64,
    /// Every revoked serial, of any generation.
    serials: HashSet<Serial>,
    /// Per generation, the list its CRLs are made from.
    pub(super) by_generation: HashMap<AuthorityId, RevokedList>,
}

/// The in-memory revocation state of an [`Authority`]. See the module docs.
#[derive(Debug, Default)]
pub(super) struct Revocations {
    counter: AtomicU64,
    snapshot: RwLock<Option<Arc<Snapshot>>>,
    /// One reload at a time: concurrent checks that find the snapshot stale wait for it.
    reloading: Mutex<()>,
    details: Mutex<HashMap<Serial, RevokedDetails>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Revocations {
    fn current(&self) -> Option<Arc<Snapshot>> {
        let c = self.counter.load(Ordering::SeqCst);
        read_lock(&self.snapshot)
            .as_ref()
            .filter(|s| s.counter == c)
            .cloned()
    }
}

impl Authority {
    /// Says that the revoked set may have changed (a revocation committed): the next check
    /// reads it from the store again.
    pub(crate) fn revocations_changed(&self) {
        self.revocations.counter.fetch_add(1, Ordering::SeqCst);
    }

    /// Is this serial revoked? From memory unless a revocation happened since the last
    /// read.
    pub(crate) fn is_revoked(&self, serial: &Serial) -> Result<bool, AuthorityError> {
        Ok(self.revoked_snapshot()?.serials.contains(serial))
    }

    /// [`Authority::is_revoked`] from memory only: `None` when the snapshot is stale.
    pub(crate) fn is_revoked_in_memory(&self, serial: &Serial) -> Option<bool> {
        self.revocations
            .current()
            .map(|s| s.serials.contains(serial))
    }

    /// The current snapshot, read from the store when the counter moved since the last one.
    pub(super) fn revoked_snapshot(&self) -> Result<Arc<Snapshot>, AuthorityError> {
        let r = &self.revocations;
        if let Some(s) = r.current() {
            return Ok(s);
        }
        let _one = lock(&r.reloading);
        if let Some(s) = r.current() {
            return Ok(s);
        }
        let counter = r.counter.load(Ordering::SeqCst);
        let ids: Vec<AuthorityId> = read_lock(&self.inner)
            .generations
            .iter()
            .map(|g| g.id)
            .collect();
        let previous = read_lock(&r.snapshot).clone();
        let mut serials = HashSet::new();
        let mut by_generation = HashMap::with_capacity(ids.len());
        for id in ids {
            let list = self.store.revoked(id)?;
            serials.extend(list.iter().map(|(s, _)| *s));
            // An unchanged list keeps its `Arc`, so the CRLs made from it stay cached.
            let kept = previous
                .as_ref()
                .and_then(|p| p.by_generation.get(&id))
                .filter(|old| old.as_slice() == list.as_slice())
                .cloned();
            by_generation.insert(id, kept.unwrap_or_else(|| Arc::new(list)));
        }
        let snapshot = Arc::new(Snapshot {
            counter,
            serials,
            by_generation,
        });
        *r.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Some(snapshot.clone());
        Ok(snapshot)
    }

    /// The CRL details of each serial of `list` (from `snapshot`), read from the records
    /// once per serial. A serial whose record is gone (purged after it expired) is left out.
    pub(super) fn revoked_details(
        &self,
        snapshot: &Snapshot,
        list: &[(Serial, SystemTime)],
    ) -> Result<HashMap<Serial, RevokedDetails>, AuthorityError> {
        let mut out = HashMap::with_capacity(list.len());
        let missing: Vec<Serial> = {
            let known = lock(&self.revocations.details);
            list.iter()
                .filter_map(|(s, _)| match known.get(s) {
                    Some(d) => {
                        out.insert(*s, d.clone());
                        None
                    }
                    None => Some(*s),
                })
                .collect()
        };
        for s in missing {
            if let Some(rec) = self.store.get_certificate(&s)? {
                let d = RevokedDetails {
                    not_before: rec.not_before,
                    not_after: rec.not_after,
                    reason: rec.revocation_reason,
                };
                lock(&self.revocations.details).insert(s, d.clone());
                out.insert(s, d);
            }
        }
        // Serials no longer revoked anywhere (their records purged) leave the cache too.
        let mut known = lock(&self.revocations.details);
        if known.len() > snapshot.serials.len() {
            known.retain(|s, _| snapshot.serials.contains(s));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::super::tests::{request, setup};

    #[test]
    fn the_revocation_status_comes_from_memory_until_the_counter_moves() {
        let (store, a) = setup();
        let issued = a
            .issue(&[request(Duration::from_secs(600))])
            .unwrap()
            .remove(0)
            .unwrap();
        let serial = issued.record.serial;
        assert!(!a.is_revoked(&serial).unwrap());
        // Revoked behind the authority's back: the snapshot in memory still answers, which
        // shows the check did not read the store.
        store.revoke(&serial, SystemTime::now(), None, &[]).unwrap();
        assert!(!a.is_revoked(&serial).unwrap());
        a.revocations_changed();
        assert!(a.is_revoked(&serial).unwrap());
    }

    #[test]
    fn an_unchanged_list_is_kept_across_reloads() {
        let (store, a) = setup();
        let issued = a
            .issue(&[request(Duration::from_secs(600))])
            .unwrap()
            .remove(0)
            .unwrap();
        store
            .revoke(&issued.record.serial, SystemTime::now(), None, &[])
            .unwrap();
        a.revocations_changed();
        let first = a.revoked_snapshot().unwrap();
        a.revocations_changed();
        let second = a.revoked_snapshot().unwrap();
        let id = issued.record.authority_id;
        assert!(std::sync::Arc::ptr_eq(
            &first.by_generation[&id],
            &second.by_generation[&id]
        ));
    }
}
