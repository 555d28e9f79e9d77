//! The one module that owns CA signing keys.
//!
//! An [`Authority`] holds every generation's records, the KEK, and the decrypted key of the
//! active intermediate (no other key stays in plaintext), signs leaves and CRLs, and applies
//! rotation steps.
//! Each change is written to the [`Store`] before the in-memory state moves, under the write
//! lock, so what a caller sees has always been durable first.
//!
//! The store is the authority on the generations; memory is a cache of one version of them.
//! Several processes may share a store: a rotation step saves only if the store still holds
//! the version this process read (else it reloads and judges the step again), a leaf is
//! recorded only while its signer is still stored as active (else this process reloads and
//! signs once more), and [`Authority::reload`] adopts what other processes saved.
//!
//! `keys.rs` loads and seals CA keys, `generation.rs` creates roots and intermediates,
//! `leaf.rs` signs leaves, `crl.rs` signs CRLs, `revocations.rs` keeps the revoked set in
//! memory; this file holds the state and rotation steps.

mod committer;
mod crl;
mod generation;
mod keys;
mod leaf;
mod revocations;

pub(crate) use committer::{CommitError, GroupCommitter};
pub(crate) use crl::Intermediate;
pub(crate) use leaf::{InstanceIds, Issued, LeafOutcome, LeafRefused, LeafRequest, SubjectAttr};

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use zeroize::Zeroizing;

use crate::audit::AuditEvent;
use crate::ids::AuthorityId;
use crate::keys::{Kek, KeyError};
use crate::rotation::{self, RotationError, Step};
use crate::store::{AuthorityRecord, GenerationState, Generations, Store, StoreError};
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
    /// The signing generation stopped being active while signing, twice in a row (other
    /// processes are rotating): a retry shortly after succeeds.
    #[error("authority {0} stopped being active while signing; try again")]
    Superseded(AuthorityId),
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

/// Who takes a rotation step and why, for its audit entry.
#[derive(Debug, Clone)]
pub(crate) struct StepBy {
    /// An operator's SPIFFE ID, or `schedule`.
    pub actor: String,
    /// Why (the schedule's rule), if said.
    pub reason: Option<String>,
    /// The replica that takes the step.
    pub replica: Option<String>,
}

impl StepBy {
    /// The audit event of `action` on generation `id` (`force` as asked).
    fn event(
        &self,
        action: &str,
        id: AuthorityId,
        force: Option<bool>,
        sequence: u64,
    ) -> AuditEvent {
        let mut details = serde_json::Map::new();
        if let Some(r) = &self.reason {
            details.insert("reason".into(), r.clone().into());
        }
        if let Some(f) = force {
            details.insert("force".into(), f.into());
        }
        if let Some(r) = &self.replica {
            details.insert("replica".into(), r.clone().into());
        }
        details.insert("bundle_sequence".into(), sequence.into());
        AuditEvent::new(
            self.actor.clone(),
            action,
            format!("authority/{id}"),
            details.into(),
        )
    }
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
    /// The roots as PEM, encoded once per bundle: every long poll released by a change
    /// answers it.
    pem: String,
}

impl TrustBundle {
    /// A bundle of `roots` (DER, the active one first) at `sequence`.
    pub(crate) fn new(sequence: u64, roots: Vec<Vec<u8>>) -> TrustBundle {
        let pem = build::pem_chain(roots.iter().map(Vec::as_slice));
        TrustBundle {
            sequence,
            roots,
            pem,
        }
    }

    /// PEM, roots concatenated.
    pub(crate) fn pem(&self) -> String {
        self.pem.clone()
    }
}

struct Inner {
    generations: Vec<AuthorityRecord>,
    sequence: u64,
    /// The store's version of `generations` (see [`Store::load_generations`]).
    version: u64,
    active: Option<(AuthorityId, LoadedCa)>,
}

/// How often a rotation step is judged again after another process saved first, before it
/// gives up with a 409.
const STEP_ATTEMPTS: usize = 5;

/// How often a process sharing its store re-reads the generations without a notification (a
/// backstop for notifications lost while its listener reconnected).
const RESYNC_INTERVAL: Duration = Duration::from_secs(5);

/// What a rotation step wants saved, judged against one version of the generations.
struct Planned<T> {
    /// Changed generations.
    changed: Vec<AuthorityRecord>,
    /// The bundle sequence to save with them.
    sequence: u64,
    /// What the step answers once saved.
    answer: T,
    /// Its audit entry, saved with it.
    audit: AuditEvent,
}

/// The CA's keys and generations. See the module docs.
pub(crate) struct Authority {
    store: Arc<dyn Store>,
    kek: Kek,
    opts: AuthorityOptions,
    inner: RwLock<Inner>,
    bundle: watch::Sender<Arc<TrustBundle>>,
    /// Signed CRLs per generation and intermediate (its index in the generation).
    crl_cache: std::sync::Mutex<std::collections::HashMap<(AuthorityId, usize), CachedCrl>>,
    /// The revoked set in memory (see `revocations.rs`).
    revocations: revocations::Revocations,
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
        let audit = AuditEvent::new(
            "lanyard init",
            "authority.created",
            format!("authority/{}", g.id),
            serde_json::json!({"state": "active", "bundle_sequence": 1}),
        );
        store.save_authorities(&[g], 1, &[audit])?;
        Ok(())
    }

    /// Loads the generations and decrypts the active intermediate's key.
    pub(crate) fn open(
        store: Arc<dyn Store>,
        kek: Kek,
        opts: AuthorityOptions,
    ) -> Result<Authority, AuthorityError> {
        let snapshot = store.load_generations()?;
        let active_rec = snapshot
            .records
            .iter()
            .find(|g| g.state == GenerationState::Active)
            .ok_or(AuthorityError::NoActive)?;
        let active = (active_rec.id, load_intermediate(&kek, active_rec)?);
        let inner = Inner {
            generations: snapshot.records,
            sequence: snapshot.bundle_sequence,
            version: snapshot.version,
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
            revocations: Default::default(),
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

    /// Every generation as this process holds it, oldest first, and the bundle sequence:
    /// memory only, for metrics scraped often.
    pub(crate) fn cached_generations(&self) -> (Vec<AuthorityRecord>, u64) {
        let inner = read_lock(&self.inner);
        (inner.generations.clone(), inner.sequence)
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

    /// Prepares a new generation (state prepared, published now).
    pub(crate) fn prepare(&self, by: &StepBy) -> Result<AuthorityRecord, AuthorityError> {
        self.step(|inner| {
            rotation::check_prepare(&inner.generations)?;
            // From the store, so two processes never create the same id.
            let id = self.store.new_authority_id()?;
            let g = new_generation(&self.kek, &self.opts, id, SystemTime::now())?;
            Ok(Planned {
                changed: vec![g.clone()],
                sequence: inner.sequence + 1,
                answer: g,
                audit: by.event("authority.prepared", id, None, inner.sequence + 1),
            })
        })
    }

    /// Activates a prepared generation (see [`rotation::activate`]).
    pub(crate) fn activate(
        &self,
        id: AuthorityId,
        force: bool,
        by: &StepBy,
    ) -> Result<AuthorityRecord, AuthorityError> {
        self.step(|inner| {
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
            // Refuse before saving a generation whose key this KEK cannot open.
            load_intermediate(&self.kek, &new_rec)?;
            Ok(Planned {
                changed: changed.into_iter().map(|i| gens[i].clone()).collect(),
                sequence: inner.sequence + 1,
                answer: new_rec,
                audit: by.event("authority.activated", id, Some(force), inner.sequence + 1),
            })
        })
    }

    /// Retires a retiring generation (see [`rotation::retire`]).
    pub(crate) fn retire(
        &self,
        id: AuthorityId,
        force: bool,
        by: &StepBy,
    ) -> Result<AuthorityRecord, AuthorityError> {
        self.step(|inner| {
            let mut gens = inner.generations.clone();
            // Read after the version this step is judged on: a retiring generation stopped
            // signing when it was deactivated (the store refuses its leaves from then on, and
            // waited for those in flight), so every leaf it signed is visible here; and the
            // conditional save fails if the generations moved since.
            let last = self.store.last_leaf_not_after(id)?;
            let changed = rotation::retire(&mut gens, id, force, last, SystemTime::now())?;
            let changed: Vec<AuthorityRecord> =
                changed.into_iter().map(|i| gens[i].clone()).collect();
            let answer = changed
                .first()
                .cloned()
                .ok_or(RotationError::NotFound(id))?;
            Ok(Planned {
                changed,
                sequence: inner.sequence + 1,
                answer,
                audit: by.event("authority.retired", id, Some(force), inner.sequence + 1),
            })
        })
    }

    /// Issues a new intermediate under the active root; the bundle does not change.
    pub(crate) fn renew_intermediate(
        &self,
        id: AuthorityId,
        by: &StepBy,
    ) -> Result<AuthorityRecord, AuthorityError> {
        self.step(|inner| {
            if inner.active.as_ref().map(|(a, _)| *a) != Some(id) {
                return Err(RotationError::Conflict(format!(
                    "authority {id} is not active; only the active intermediate is renewed"
                ))
                .into());
            }
            let mut g = inner
                .generations
                .iter()
                .find(|g| g.id == id)
                .cloned()
                .ok_or(AuthorityError::NoActive)?;
            let root = load_ca(&self.kek, id, &g.root, &purpose_root(id))?;
            let n = g.intermediates.len() + 1;
            let im = new_intermediate(&self.kek, &self.opts, id, n, &root, SystemTime::now())?;
            g.intermediates.push(im);
            Ok(Planned {
                changed: vec![g.clone()],
                sequence: inner.sequence,
                answer: g,
                audit: by.event("authority.intermediate_renewed", id, None, inner.sequence),
            })
        })
    }

    /// Runs a rotation step under the write lock: judges it against the generations in
    /// memory and saves it only if the store still holds that version; if another process
    /// saved first, adopts the store's generations and judges the step again (so a step that
    /// no longer applies gets its rule's answer, e.g. 409).
    fn step<T>(
        &self,
        plan: impl Fn(&Inner) -> Result<Planned<T>, AuthorityError>,
    ) -> Result<T, AuthorityError> {
        let mut inner = write_lock(&self.inner);
        for _ in 0..STEP_ATTEMPTS {
            let p = plan(&inner)?;
            let saved = self.store.save_generations_if(
                &p.changed,
                p.sequence,
                inner.version,
                std::slice::from_ref(&p.audit),
            );
            match saved {
                Ok(_) => {
                    // Adopt what the store now holds (this step, and anything saved since).
                    let snapshot = self.store.load_generations()?;
                    self.adopt(&mut inner, snapshot)?;
                    return Ok(p.answer);
                }
                Err(StoreError::Conflict) => {
                    let snapshot = self.store.load_generations()?;
                    self.adopt(&mut inner, snapshot)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(RotationError::Conflict(
            "the authority generations keep changing under this step (other replicas are rotating); try again".into(),
        )
        .into())
    }

    /// Adopts what other processes saved: reads the generations from the store and, if they
    /// are newer than those in memory, takes them, switches the signing key when the active
    /// generation or its intermediate changed, and publishes the bundle when it changed.
    pub(crate) fn reload(&self) -> Result<(), AuthorityError> {
        let snapshot = self.store.load_generations()?;
        if snapshot.version <= read_lock(&self.inner).version {
            return Ok(());
        }
        let mut inner = write_lock(&self.inner);
        self.adopt(&mut inner, snapshot)
    }

    /// Replaces the generations in memory with `snapshot` unless it is older than them.
    fn adopt(&self, inner: &mut Inner, snapshot: Generations) -> Result<(), AuthorityError> {
        if snapshot.version < inner.version {
            return Ok(());
        }
        let active_rec = snapshot
            .records
            .iter()
            .find(|g| g.state == GenerationState::Active);
        let same_key = match (&inner.active, active_rec) {
            (Some((id, _)), Some(rec)) => {
                *id == rec.id
                    && inner
                        .generations
                        .iter()
                        .find(|g| g.id == *id)
                        .map(|g| g.intermediates.len())
                        == Some(rec.intermediates.len())
            }
            _ => false,
        };
        if !same_key {
            // Decrypt before anything changes, so a key that does not open leaves the old
            // state (and its key) in place.
            inner.active = match active_rec {
                Some(rec) => Some((rec.id, load_intermediate(&self.kek, rec)?)),
                None => None,
            };
        }
        let bundle_changed = snapshot.bundle_sequence != inner.sequence;
        inner.generations = snapshot.records;
        inner.sequence = snapshot.bundle_sequence;
        inner.version = snapshot.version;
        if bundle_changed {
            self.publish(inner);
        }
        Ok(())
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

/// For a store other processes write too: starts a thread that reloads the generations after
/// each change notification and every [`RESYNC_INTERVAL`], so this process signs with, and
/// publishes, what the others saved, and moves the revocation counter so the next
/// revocation check reads the revoked set again (a notification may be a revocation; the
/// periodic move bounds how long a lost one goes unseen). Nothing for a store only this
/// process writes. The thread ends when the authority is dropped.
pub(crate) fn follow_store(authority: &Arc<Authority>) -> std::io::Result<()> {
    let Some(changes) = authority.store.change_feed() else {
        return Ok(());
    };
    let weak = Arc::downgrade(authority);
    std::thread::Builder::new()
        .name("lanyard-follow".into())
        .spawn(move || loop {
            use std::sync::mpsc::RecvTimeoutError;
            match changes.recv_timeout(RESYNC_INTERVAL) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            let Some(a) = weak.upgrade() else { return };
            if let Err(e) = a.reload() {
                // The next notification or the periodic re-read tries again.
                tracing::warn!(error = %e, "reloading the authority generations failed");
            }
            // After the reload, so the revoked set is read for every generation known now.
            a.revocations_changed();
        })
        .map(|_| ())
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
    TrustBundle::new(inner.sequence, roots)
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

    pub(super) fn by() -> StepBy {
        StepBy {
            actor: "test".into(),
            reason: None,
            replica: None,
        }
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
            action: "certificate.issued",
        }
    }

    #[test]
    fn rotation_publishes_new_roots_and_signs_with_the_new_generation() {
        let (_, a) = setup();
        assert_eq!(a.bundle().sequence, 1);
        let p = a.prepare(&by()).unwrap();
        assert_eq!(a.bundle().sequence, 2);
        assert_eq!(a.bundle().roots.len(), 2);
        assert!(a.activate(p.id, false, &by()).is_err());
        a.activate(p.id, true, &by()).unwrap();
        let b = a.bundle();
        assert_eq!(b.sequence, 3);
        assert_eq!(
            b.roots[0], p.root.certificate,
            "the active root moves first"
        );
        let issued = a
            .issue(&[request(Duration::from_secs(60))])
            .unwrap()
            .remove(0)
            .unwrap();
        assert_eq!(issued.record.authority_id, p.id);
        assert!(
            a.retire(AuthorityId(1), false, &by()).is_ok(),
            "generation 1 signed nothing"
        );
        assert_eq!(a.bundle().roots.len(), 1);
        assert_eq!(a.bundle().sequence, 4);
    }

    #[test]
    fn renewing_the_intermediate_keeps_the_bundle() {
        let (_, a) = setup();
        let rec = a.renew_intermediate(AuthorityId(1), &by()).unwrap();
        assert!(a.renew_intermediate(AuthorityId(2), &by()).is_err());
        assert_eq!(rec.intermediates.len(), 2);
        assert_eq!(a.bundle().sequence, 1);
        let issued = a
            .issue(&[request(Duration::from_secs(60))])
            .unwrap()
            .remove(0)
            .unwrap();
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
