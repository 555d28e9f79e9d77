//! The one module that owns CA signing keys.
//!
//! An [`Authority`] holds every generation's records, the KEK, and the decrypted key of the
//! active intermediate (no other key stays in plaintext), signs leaves and CRLs, and applies
//! rotation steps.
//! Each change is written to the [`Store`] before the in-memory state moves, under the write
//! lock, so what a caller sees has always been durable first.
//!
//! `keys.rs` loads and seals CA keys, `generation.rs` creates roots and intermediates,
//! `leaf.rs` signs leaves, `crl.rs` signs CRLs; this file holds the state and rotation steps.

mod crl;
mod generation;
mod keys;
mod leaf;

pub(crate) use leaf::{InstanceIds, Issued, LeafRequest, SubjectAttr};

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use zeroize::Zeroizing;

use crate::ids::AuthorityId;
use crate::keys::{Kek, KeyError};
use crate::rotation::{self, RotationError, Step};
use crate::store::{AuthorityRecord, GenerationState, Store, StoreError};
use crate::x509::build;
use crate::x509::X509Error;

use crl::CachedCrl;
use generation::{new_generation, new_intermediate};
use keys::{load_ca, load_intermediate, purpose_root, LoadedCa};

/// Errors of the authority layer.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    /// A rotation rule refused the step.
    #[error(transparent)]
    Rotation(#[from] RotationError),
    /// Sealing or opening a key failed (a wrong KEK lands here).
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Building or signing a certificate failed.
    #[error(transparent)]
    X509(#[from] X509Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The state has no active generation (not initialized, or damaged).
    #[error("no active authority generation: the state is not initialized")]
    NoActive,
    /// The active intermediate ends before the shortest allowed leaf would.
    #[error("the intermediate of authority {0} expires at {1}; renew it or rotate before issuing")]
    IntermediateExpiring(AuthorityId, String),
    /// A stored CA key or certificate is unusable.
    #[error("stored authority {0} is damaged: {1}")]
    Damaged(AuthorityId, String),
}

/// Lifetimes and names an authority needs.
#[derive(Debug, Clone)]
pub(crate) struct AuthorityOptions {
    /// SPIFFE trust domain, also the CA subjects' organization.
    pub trust_domain: String,
    /// Root lifetime.
    pub root_ttl: Duration,
    /// Intermediate lifetime.
    pub intermediate_ttl: Duration,
    /// How far notBefore is set back.
    pub backdate: Duration,
    /// How long a prepared root must be published before activation.
    pub propagation_delay: Duration,
    /// Shortest leaf lifetime worth issuing (`issuance.min_ttl`).
    pub min_leaf_ttl: Duration,
}

/// A generation with the latest notAfter it signed.
pub(crate) type GenerationStatus = (AuthorityRecord, Option<SystemTime>);

/// The published trust bundle: roots of every prepared, active and retiring generation.
#[derive(Debug, Clone)]
pub(crate) struct TrustBundle {
    /// Increases by one whenever the set of roots changes.
    pub sequence: u64,
    /// DER roots, the active one first.
    pub roots: Vec<Vec<u8>>,
}

impl TrustBundle {
    /// PEM, roots concatenated.
    pub(crate) fn pem(&self) -> String {
        build::pem_chain(self.roots.iter().map(Vec::as_slice))
    }
}

struct Inner {
    generations: Vec<AuthorityRecord>,
    sequence: u64,
    active: Option<(AuthorityId, LoadedCa)>,
}

/// The CA's keys and generations. See the module docs.
pub(crate) struct Authority {
    store: Arc<dyn Store>,
    kek: Kek,
    opts: AuthorityOptions,
    inner: RwLock<Inner>,
    bundle: watch::Sender<Arc<TrustBundle>>,
    crl_cache: std::sync::Mutex<std::collections::HashMap<AuthorityId, CachedCrl>>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authority(...)")
    }
}

fn read_lock<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // A panic while holding the lock cannot leave half-applied state: every mutation is
    // computed on a copy and swapped in after the store accepted it.
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write_lock<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

impl Authority {
    /// Creates generation 1 (root and intermediate), active and published. For `init` only.
    pub(crate) fn initialize(
        store: &Arc<dyn Store>,
        kek: &Kek,
        opts: &AuthorityOptions,
        now: SystemTime,
    ) -> Result<(), AuthorityError> {
        let mut g = new_generation(kek, opts, AuthorityId(1), now)?;
        g.state = GenerationState::Active;
        g.activated_at = Some(now);
        store.save_authorities(&[g], 1)?;
        Ok(())
    }

    /// Loads the generations and decrypts the active intermediate's key.
    pub(crate) fn open(
        store: Arc<dyn Store>,
        kek: Kek,
        opts: AuthorityOptions,
    ) -> Result<Authority, AuthorityError> {
        let (generations, sequence) = store.load_authorities()?;
        let active_rec = generations
            .iter()
            .find(|g| g.state == GenerationState::Active)
            .ok_or(AuthorityError::NoActive)?;
        let active = (active_rec.id, load_intermediate(&kek, active_rec)?);
        let inner = Inner {
            generations,
            sequence,
            active: Some(active),
        };
        let bundle = Arc::new(bundle_of(&inner));
        let (tx, _) = watch::channel(bundle);
        Ok(Authority {
            store,
            kek,
            opts,
            inner: RwLock::new(inner),
            bundle: tx,
            crl_cache: Default::default(),
        })
    }

    /// The current trust bundle.
    pub(crate) fn bundle(&self) -> Arc<TrustBundle> {
        self.bundle.borrow().clone()
    }

    /// A receiver that sees every new bundle (for long polls and the TLS server).
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<TrustBundle>> {
        self.bundle.subscribe()
    }

    /// Seals a secret other than a CA key (the server's TLS key) under the KEK.
    pub(crate) fn seal_secret(
        &self,
        purpose: &str,
        data: &[u8],
    ) -> Result<Vec<u8>, AuthorityError> {
        Ok(self.kek.seal(&format!("lanyard/secret/{purpose}"), data)?)
    }

    /// Opens what [`Authority::seal_secret`] sealed.
    pub(crate) fn open_secret(
        &self,
        purpose: &str,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, AuthorityError> {
        Ok(self
            .kek
            .open(&format!("lanyard/secret/{purpose}"), sealed)?)
    }

    /// Every generation, oldest first, with the latest notAfter each one signed.
    pub(crate) fn generations(&self) -> Result<(Vec<GenerationStatus>, u64), AuthorityError> {
        let inner = read_lock(&self.inner);
        let mut out = Vec::with_capacity(inner.generations.len());
        for g in &inner.generations {
            out.push((g.clone(), self.store.last_leaf_not_after(g.id)?));
        }
        Ok((out, inner.sequence))
    }

    /// The active generation's id and its signing intermediate's notAfter.
    pub(crate) fn active(&self) -> Option<(AuthorityId, SystemTime)> {
        let inner = read_lock(&self.inner);
        inner.active.as_ref().map(|(id, ca)| (*id, ca.not_after))
    }

    /// Signs every request with the active intermediate and records them all durably, in one
    /// store write, before returning. Validity: notBefore = now - backdate, notAfter = now +
    /// ttl but never after the intermediate's notAfter.
    /// Prepares a new generation (state prepared, published now).
    pub(crate) fn prepare(&self) -> Result<AuthorityRecord, AuthorityError> {
        let mut inner = write_lock(&self.inner);
        rotation::check_prepare(&inner.generations)?;
        let now = SystemTime::now();
        let id = AuthorityId(inner.generations.iter().map(|g| g.id.0).max().unwrap_or(0) + 1);
        let g = new_generation(&self.kek, &self.opts, id, now)?;
        let seq = inner.sequence + 1;
        self.store.save_authorities(std::slice::from_ref(&g), seq)?;
        inner.generations.push(g.clone());
        inner.sequence = seq;
        self.publish(&inner);
        Ok(g)
    }

    /// Activates a prepared generation (see [`rotation::activate`]).
    pub(crate) fn activate(
        &self,
        id: AuthorityId,
        force: bool,
    ) -> Result<AuthorityRecord, AuthorityError> {
        let mut inner = write_lock(&self.inner);
        let mut gens = inner.generations.clone();
        let changed = rotation::activate(
            &mut gens,
            id,
            force,
            self.opts.propagation_delay,
            SystemTime::now(),
        )?;
        let new_rec = gens
            .iter()
            .find(|g| g.id == id)
            .cloned()
            .ok_or(RotationError::NotFound(id))?;
        let loaded = load_intermediate(&self.kek, &new_rec)?;
        let seq = inner.sequence + 1;
        let changed: Vec<AuthorityRecord> = changed.into_iter().map(|i| gens[i].clone()).collect();
        self.store.save_authorities(&changed, seq)?;
        inner.generations = gens;
        inner.sequence = seq;
        inner.active = Some((id, loaded));
        self.publish(&inner);
        Ok(new_rec)
    }

    /// Retires a retiring generation (see [`rotation::retire`]).
    pub(crate) fn retire(
        &self,
        id: AuthorityId,
        force: bool,
    ) -> Result<AuthorityRecord, AuthorityError> {
        let mut inner = write_lock(&self.inner);
        let mut gens = inner.generations.clone();
        let last = self.store.last_leaf_not_after(id)?;
        let changed = rotation::retire(&mut gens, id, force, last, SystemTime::now())?;
        let seq = inner.sequence + 1;
        let changed: Vec<AuthorityRecord> = changed.into_iter().map(|i| gens[i].clone()).collect();
        self.store.save_authorities(&changed, seq)?;
        inner.generations = gens;
        inner.sequence = seq;
        self.publish(&inner);
        changed
            .into_iter()
            .next()
            .ok_or_else(|| RotationError::NotFound(id).into())
    }

    /// Issues a new intermediate under the active root; the bundle does not change.
    pub(crate) fn renew_intermediate(
        &self,
        id: AuthorityId,
    ) -> Result<AuthorityRecord, AuthorityError> {
        let mut inner = write_lock(&self.inner);
        if inner.active.as_ref().map(|(a, _)| *a) != Some(id) {
            return Err(RotationError::Conflict(format!(
                "authority {id} is not active; only the active intermediate is renewed"
            ))
            .into());
        }
        let mut gens = inner.generations.clone();
        let g = gens
            .iter_mut()
            .find(|g| g.id == id)
            .ok_or(AuthorityError::NoActive)?;
        let root = load_ca(&self.kek, id, &g.root, &purpose_root(id))?;
        let n = g.intermediates.len() + 1;
        let im = new_intermediate(&self.kek, &self.opts, id, n, &root, SystemTime::now())?;
        g.intermediates.push(im);
        let rec = g.clone();
        let loaded = load_intermediate(&self.kek, &rec)?;
        self.store
            .save_authorities(std::slice::from_ref(&rec), inner.sequence)?;
        inner.generations = gens;
        inner.active = Some((id, loaded));
        Ok(rec)
    }

    /// What the automatic schedule would do now.
    pub(crate) fn next_scheduled_step(&self) -> Result<Option<Step>, AuthorityError> {
        let (gens, _) = self.generations()?;
        let leaf: std::collections::HashMap<AuthorityId, Option<SystemTime>> =
            gens.iter().map(|(g, l)| (g.id, *l)).collect();
        let recs: Vec<AuthorityRecord> = gens.into_iter().map(|(g, _)| g).collect();
        Ok(rotation::next_step(
            &recs,
            |id| leaf.get(&id).copied().flatten(),
            self.opts.propagation_delay,
            SystemTime::now(),
        ))
    }

    fn publish(&self, inner: &Inner) {
        let b = Arc::new(bundle_of(inner));
        self.bundle.send_replace(b);
    }
}

fn bundle_of(inner: &Inner) -> TrustBundle {
    let mut roots = Vec::new();
    for state in [
        GenerationState::Active,
        GenerationState::Prepared,
        GenerationState::Retiring,
    ] {
        for g in inner.generations.iter().filter(|g| g.state == state) {
            roots.push(g.root.certificate.clone());
        }
    }
    TrustBundle {
        sequence: inner.sequence,
        roots,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use der::Decode;
    use x509_cert::spki::SubjectPublicKeyInfoOwned;

    use super::*;
    use crate::store::{CertificateKind, SledStore};
    use crate::x509::inspect::CertInfo;

    pub(super) fn opts() -> AuthorityOptions {
        AuthorityOptions {
            trust_domain: "lanyard.internal".into(),
            root_ttl: Duration::from_secs(365 * 86400),
            intermediate_ttl: Duration::from_secs(30 * 86400),
            backdate: Duration::from_secs(60),
            propagation_delay: Duration::from_secs(600),
            min_leaf_ttl: Duration::from_secs(60),
        }
    }

    pub(super) fn setup() -> (Arc<dyn Store>, Authority) {
        let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
        let kek = Kek::from_bytes([1; 32]);
        Authority::initialize(&store, &kek, &opts(), SystemTime::now()).unwrap();
        let a = Authority::open(store.clone(), Kek::from_bytes([1; 32]), opts()).unwrap();
        (store, a)
    }

    pub(super) fn request(ttl: Duration) -> LeafRequest {
        let kp = rcgen::KeyPair::generate().unwrap();
        LeafRequest {
            kind: CertificateKind::Component,
            public_key: SubjectPublicKeyInfoOwned::from_der(&kp.public_key_der()).unwrap(),
            key_encipherment: false,
            subject: vec![(SubjectAttr::Cn, "gorouter".into())],
            dns: vec!["gorouter".into()],
            ips: vec![],
            uri: "spiffe://lanyard.internal/component/gorouter".into(),
            ttl,
            instance: None,
            name: Some("gorouter".parse().unwrap()),
            requested_by: "test".into(),
        }
    }

    #[test]
    fn rotation_publishes_new_roots_and_signs_with_the_new_generation() {
        let (_, a) = setup();
        assert_eq!(a.bundle().sequence, 1);
        let p = a.prepare().unwrap();
        assert_eq!(a.bundle().sequence, 2);
        assert_eq!(a.bundle().roots.len(), 2);
        assert!(a.activate(p.id, false).is_err());
        a.activate(p.id, true).unwrap();
        let b = a.bundle();
        assert_eq!(b.sequence, 3);
        assert_eq!(
            b.roots[0], p.root.certificate,
            "the active root moves first"
        );
        let issued = a
            .issue(&[request(Duration::from_secs(60))])
            .unwrap()
            .remove(0);
        assert_eq!(issued.record.authority_id, p.id);
        assert!(
            a.retire(AuthorityId(1), false).is_ok(),
            "generation 1 signed nothing"
        );
        assert_eq!(a.bundle().roots.len(), 1);
        assert_eq!(a.bundle().sequence, 4);
    }

    #[test]
    fn renewing_the_intermediate_keeps_the_bundle() {
        let (_, a) = setup();
        let rec = a.renew_intermediate(AuthorityId(1)).unwrap();
        assert!(a.renew_intermediate(AuthorityId(2)).is_err());
        assert_eq!(rec.intermediates.len(), 2);
        assert_eq!(a.bundle().sequence, 1);
        let issued = a
            .issue(&[request(Duration::from_secs(60))])
            .unwrap()
            .remove(0);
        let info = CertInfo::from_der(
            &crate::x509::inspect::parse_pem_certs(issued.chain_pem.as_bytes()).unwrap()[0],
        )
        .unwrap();
        assert!(
            info.issuer.contains("Intermediate CA 1.2"),
            "{}",
            info.issuer
        );
    }
}
