//! The embedded store: sled trees, JSON values, a flush (fsync) before every write returns.
//!
//! This is the only module that touches sled.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{
    AuthorityRecord, CertificateQuery, CertificateRecord, JoinTokenRecord, Store, StoreError,
};
use crate::ids::{AuthorityId, Serial};

const SEQUENCE_KEY: &[u8] = b"meta/bundle_sequence";

/// sled-backed [`Store`].
pub struct SledStore {
    db: sled::Db,
    meta: sled::Tree,
    authorities: sled::Tree,
    certs: sled::Tree,
    by_instance: sled::Tree,
    by_app: sled::Tree,
    by_time: sled::Tree,
    leaf_max: sled::Tree,
    revoked: sled::Tree,
    tokens: sled::Tree,
    /// Group commit: writes finished, and how many of them the last flush covered.
    written: std::sync::atomic::AtomicU64,
    flushed: std::sync::atomic::AtomicU64,
    flush_lock: std::sync::Mutex<()>,
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

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn index_key(prefix: &str, serial: &Serial) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 17);
    k.extend_from_slice(prefix.as_bytes());
    k.push(0);
    k.extend_from_slice(serial.as_bytes());
    k
}

impl SledStore {
    /// Opens (or creates) the store under `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Backend(e.to_string()))?;
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| {
                let text = e.to_string();
                if text.contains("could not acquire lock") {
                    StoreError::Backend(format!(
                        "the state in {} is in use by another lanyard process (is `lanyard serve` running?)",
                        dir.display()
                    ))
                } else {
                    StoreError::Backend(format!("cannot open {}: {text}", dir.display()))
                }
            })?;
        Self::from_db(db)
    }

    /// A throw-away store for tests.
    pub fn temporary() -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .map_err(backend)?;
        Self::from_db(db)
    }

    fn from_db(db: sled::Db) -> Result<Self, StoreError> {
        let t = |n: &str| db.open_tree(n).map_err(backend);
        Ok(SledStore {
            meta: t("meta")?,
            authorities: t("authorities")?,
            certs: t("certificates")?,
            by_instance: t("certificates_by_instance")?,
            by_app: t("certificates_by_app")?,
            by_time: t("certificates_by_time")?,
            leaf_max: t("authority_last_leaf")?,
            revoked: t("revoked_by_authority")?,
            tokens: t("join_tokens")?,
            written: Default::default(),
            flushed: Default::default(),
            flush_lock: Default::default(),
            db,
        })
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
        let mut out = Vec::new();
        let mut seq = 0;
        for item in self.authorities.iter() {
            let (k, v) = item.map_err(backend)?;
            if k.as_ref() == SEQUENCE_KEY {
                seq = decode(&k, &v)?;
            } else {
                out.push(decode::<AuthorityRecord>(&k, &v)?);
            }
        }
        out.sort_by_key(|a| a.id);
        Ok((out, seq))
    }

    fn save_authorities(
        &self,
        changed: &[AuthorityRecord],
        bundle_sequence: u64,
    ) -> Result<(), StoreError> {
        // One batch on one tree is atomic: the states and the sequence change together.
        let mut batch = sled::Batch::default();
        for a in changed {
            batch.insert(format!("gen/{:010}", a.id.0).as_bytes(), encode(a)?);
        }
        batch.insert(SEQUENCE_KEY, encode(&bundle_sequence)?);
        self.authorities.apply_batch(batch).map_err(backend)?;
        self.durable()
    }

    fn insert_certificates(&self, records: &[CertificateRecord]) -> Result<(), StoreError> {
        let mut inserted: Vec<Serial> = Vec::with_capacity(records.len());
        for r in records {
            let res = self
                .certs
                .compare_and_swap(r.serial.as_bytes(), None as Option<&[u8]>, Some(encode(r)?))
                .map_err(backend)?;
            if res.is_err() {
                // Undo what this call wrote so a failed batch leaves no trace.
                for s in &inserted {
                    let _ = self.certs.remove(s.as_bytes());
                }
                return Err(StoreError::SerialExists(r.serial));
            }
            inserted.push(r.serial);
        }
        for r in records {
            if let Some(g) = &r.instance_guid {
                self.by_instance
                    .insert(index_key(g.as_str(), &r.serial), &[])
                    .map_err(backend)?;
            }
            if let Some(g) = &r.app_guid {
                self.by_app
                    .insert(index_key(g.as_str(), &r.serial), &[])
                    .map_err(backend)?;
            }
            let mut tk = nanos(r.not_before).to_be_bytes().to_vec();
            tk.extend_from_slice(r.serial.as_bytes());
            self.by_time.insert(tk, &[]).map_err(backend)?;
            let na = nanos(r.not_after);
            self.leaf_max
                .fetch_and_update(r.authority_id.0.to_be_bytes(), |old| {
                    let cur = old
                        .and_then(|o| <[u8; 8]>::try_from(o).ok())
                        .map(u64::from_be_bytes)
                        .unwrap_or(0);
                    Some(cur.max(na).to_be_bytes().to_vec())
                })
                .map_err(backend)?;
        }
        self.durable()
    }

    fn get_certificate(&self, serial: &Serial) -> Result<Option<CertificateRecord>, StoreError> {
        match self.certs.get(serial.as_bytes()).map_err(backend)? {
            Some(v) => Ok(Some(decode(serial.to_string().as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    fn update_certificate(&self, record: &CertificateRecord) -> Result<(), StoreError> {
        self.certs
            .insert(record.serial.as_bytes(), encode(record)?)
            .map_err(backend)?;
        let mut key = record.authority_id.0.to_be_bytes().to_vec();
        key.extend_from_slice(record.serial.as_bytes());
        match record.revoked_at {
            Some(at) => self
                .revoked
                .insert(key, &nanos(at).to_be_bytes())
                .map(|_| ()),
            None => self.revoked.remove(key).map(|_| ()),
        }
        .map_err(backend)?;
        self.durable()
    }

    fn query_certificates(
        &self,
        q: &CertificateQuery,
    ) -> Result<Vec<CertificateRecord>, StoreError> {
        let serials: Vec<Serial> = match (&q.instance_guid, &q.app_guid) {
            (Some(g), _) => scan_index(&self.by_instance, g.as_str())?,
            (None, Some(g)) => scan_index(&self.by_app, g.as_str())?,
            (None, None) => {
                let mut v = Vec::new();
                for item in self.by_time.iter().rev() {
                    let (k, _) = item.map_err(backend)?;
                    if let Some(s) = k.get(8..).and_then(Serial::from_bytes) {
                        v.push(s);
                    }
                    if v.len() >= q.limit {
                        break;
                    }
                }
                v
            }
        };
        let mut out = Vec::with_capacity(serials.len());
        for s in serials {
            if let Some(r) = self.get_certificate(&s)? {
                if q.app_guid.is_some() && r.app_guid != q.app_guid {
                    continue;
                }
                out.push(r);
            }
        }
        out.sort_by(|a, b| {
            b.not_before
                .cmp(&a.not_before)
                .then(b.serial.cmp(&a.serial))
        });
        out.truncate(q.limit);
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

    fn insert_join_token(&self, hash: &[u8], token: &JoinTokenRecord) -> Result<(), StoreError> {
        self.tokens.insert(hash, encode(token)?).map_err(backend)?;
        self.durable()
    }

    fn get_join_token(&self, hash: &[u8]) -> Result<Option<JoinTokenRecord>, StoreError> {
        match self.tokens.get(hash).map_err(backend)? {
            Some(v) => Ok(Some(decode(b"join_token", &v)?)),
            None => Ok(None),
        }
    }

    fn take_join_token(&self, hash: &[u8]) -> Result<Option<JoinTokenRecord>, StoreError> {
        let old = self.tokens.remove(hash).map_err(backend)?;
        match old {
            Some(v) => {
                self.durable()?;
                Ok(Some(decode(b"join_token", &v)?))
            }
            None => Ok(None),
        }
    }
}

fn scan_index(tree: &sled::Tree, prefix: &str) -> Result<Vec<Serial>, StoreError> {
    let mut p = prefix.as_bytes().to_vec();
    p.push(0);
    let mut out = Vec::new();
    for item in tree.scan_prefix(&p) {
        let (k, _) = item.map_err(backend)?;
        if let Some(s) = k.get(p.len()..).and_then(Serial::from_bytes) {
            out.push(s);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{CertificateKind, GenerationState};
    use std::time::Duration;

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
    fn a_serial_can_be_recorded_only_once() {
        let s = SledStore::temporary().unwrap();
        let r = record("a1", "b1", SystemTime::now());
        s.insert_certificates(std::slice::from_ref(&r)).unwrap();
        assert!(matches!(
            s.insert_certificates(&[r]).unwrap_err(),
            StoreError::SerialExists(_)
        ));
    }

    #[test]
    fn records_are_found_by_instance_and_app_newest_first() {
        let s = SledStore::temporary().unwrap();
        let now = SystemTime::now();
        let a = record("a1", "b1", now);
        let mut b = record("a1", "b2", now + Duration::from_secs(100));
        b.not_before = now + Duration::from_secs(1);
        let c = record("a2", "b2", now);
        s.insert_certificates(&[a.clone(), b.clone(), c.clone()])
            .unwrap();
        let q = |i: Option<&str>, app: Option<&str>| CertificateQuery {
            instance_guid: i.map(|x| x.parse().unwrap()),
            app_guid: app.map(|x| x.parse().unwrap()),
            limit: 100,
        };
        let r = s.query_certificates(&q(Some("a1"), None)).unwrap();
        assert_eq!(
            r.iter().map(|r| r.serial).collect::<Vec<_>>(),
            vec![b.serial, a.serial]
        );
        assert_eq!(s.query_certificates(&q(None, Some("b2"))).unwrap().len(), 2);
        assert_eq!(
            s.query_certificates(&q(Some("a1"), Some("b2")))
                .unwrap()
                .len(),
            1
        );
        assert_eq!(s.query_certificates(&q(None, None)).unwrap().len(), 3);
        assert_eq!(
            s.last_leaf_not_after(AuthorityId(1))
                .unwrap()
                .unwrap()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            (now + Duration::from_secs(100))
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
        );
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

    #[test]
    fn a_join_token_can_be_taken_once() {
        let s = SledStore::temporary().unwrap();
        let t = JoinTokenRecord {
            name: "cell-1".parse().unwrap(),
            created_by: "op".into(),
            created_at: SystemTime::now(),
            expires_at: SystemTime::now(),
        };
        s.insert_join_token(b"h", &t).unwrap();
        assert!(s.take_join_token(b"h").unwrap().is_some());
        assert!(s.take_join_token(b"h").unwrap().is_none());
    }

    #[test]
    fn generation_state_names_match_the_api() {
        assert_eq!(GenerationState::Retiring.as_str(), "retiring");
    }
}
