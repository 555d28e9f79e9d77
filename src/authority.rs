//! The one module that owns CA signing keys.
//!
//! An [`Authority`] holds every generation's records, the KEK, and the decrypted key of the
//! active intermediate (no other key stays in plaintext), signs leaves and CRLs, and applies
//! rotation steps.
//! Each change is written to the [`Store`] before the in-memory state moves, under the write
//! lock, so what a caller sees has always been durable first.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use der::Decode;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use tokio::sync::watch;
use x509_cert::name::Name;
use x509_cert::spki::SubjectPublicKeyInfoOwned;
use x509_cert::Certificate;
use zeroize::Zeroizing;

use crate::ids::{AuthorityId, Guid, Serial};
use crate::keys::{Kek, KeyError};
use crate::rotation::{self, RotationError, Step};
use crate::store::{
    AuthorityRecord, CaKeyRecord, CertificateKind, CertificateRecord, GenerationState, Store,
    StoreError,
};
use crate::x509::build::{self, Attr, CertSpec, Profile, Signer};
use crate::x509::X509Error;

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
pub struct AuthorityOptions {
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
pub type GenerationStatus = (AuthorityRecord, Option<SystemTime>);

/// The published trust bundle: roots of every prepared, active and retiring generation.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    /// Increases by one whenever the set of roots changes.
    pub sequence: u64,
    /// DER roots, the active one first.
    pub roots: Vec<Vec<u8>>,
}

impl TrustBundle {
    /// PEM, roots concatenated.
    pub fn pem(&self) -> String {
        build::pem_chain(self.roots.iter().map(Vec::as_slice))
    }
}

/// Everything about one leaf to sign, decided by the caller from validated input.
#[derive(Debug, Clone)]
pub struct LeafRequest {
    /// Record kind.
    pub kind: CertificateKind,
    /// Subject key (from a verified CSR or a locally generated key).
    pub public_key: SubjectPublicKeyInfoOwned,
    /// RSA subject keys get keyEncipherment.
    pub key_encipherment: bool,
    /// Subject attributes, in order.
    pub subject: Vec<(SubjectAttr, String)>,
    /// DNS SANs.
    pub dns: Vec<String>,
    /// IP SANs.
    pub ips: Vec<IpAddr>,
    /// The SPIFFE ID.
    pub uri: String,
    /// Requested lifetime (already checked against the configured limits).
    pub ttl: Duration,
    /// Instance identity, for the record.
    pub instance: Option<InstanceIds>,
    /// Name (cells, operators, components, server), for the record.
    pub name: Option<crate::ids::Name>,
    /// Who asked, for the record.
    pub requested_by: String,
}

/// Subject attribute kinds a leaf may carry.
#[derive(Debug, Clone, Copy)]
pub enum SubjectAttr {
    /// organizationalUnitName.
    Ou,
    /// commonName.
    Cn,
}

/// The GUIDs of an app instance.
#[derive(Debug, Clone)]
pub struct InstanceIds {
    /// Instance GUID.
    pub instance: Guid,
    /// App GUID.
    pub app: Guid,
    /// Space GUID.
    pub space: Guid,
    /// Organization GUID.
    pub organization: Guid,
}

/// A signed and recorded leaf.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Leaf DER.
    pub leaf: Vec<u8>,
    /// PEM: leaf then intermediate.
    pub chain_pem: String,
    /// The durable record.
    pub record: CertificateRecord,
    /// The SPIFFE ID in the certificate.
    pub spiffe_id: String,
    /// Bundle sequence at signing time.
    pub trust_bundle_sequence: u64,
}

struct LoadedCa {
    cert: Vec<u8>,
    name: Name,
    key_id: Vec<u8>,
    key: EcdsaKeyPair,
    not_after: SystemTime,
}

impl std::fmt::Debug for LoadedCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoadedCa(...)")
    }
}

struct Inner {
    generations: Vec<AuthorityRecord>,
    sequence: u64,
    active: Option<(AuthorityId, LoadedCa)>,
}

/// The CA's keys and generations. See the module docs.
pub struct Authority {
    store: Arc<dyn Store>,
    kek: Kek,
    opts: AuthorityOptions,
    inner: RwLock<Inner>,
    bundle: watch::Sender<Arc<TrustBundle>>,
    crl_cache: std::sync::Mutex<std::collections::HashMap<AuthorityId, CachedCrl>>,
}

/// A signed CRL and what it was made from.
struct CachedCrl {
    revoked: usize,
    generated: SystemTime,
    der: Vec<u8>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authority(...)")
    }
}

fn purpose_root(id: AuthorityId) -> String {
    format!("lanyard/root/{id}")
}

fn purpose_intermediate(id: AuthorityId, n: usize) -> String {
    format!("lanyard/intermediate/{id}/{n}")
}

fn new_key() -> Result<(Zeroizing<Vec<u8>>, EcdsaKeyPair), AuthorityError> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|_| KeyError::Random)?;
    let pkcs8 = Zeroizing::new(pkcs8.as_ref().to_vec());
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8, &rng)
        .map_err(|_| KeyError::Random)?;
    Ok((pkcs8, pair))
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
    pub fn initialize(
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
    pub fn open(
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
    pub fn bundle(&self) -> Arc<TrustBundle> {
        self.bundle.borrow().clone()
    }

    /// A receiver that sees every new bundle (for long polls and the TLS server).
    pub fn subscribe(&self) -> watch::Receiver<Arc<TrustBundle>> {
        self.bundle.subscribe()
    }

    /// Seals a secret other than a CA key (the server's TLS key) under the KEK.
    pub fn seal_secret(&self, purpose: &str, data: &[u8]) -> Result<Vec<u8>, AuthorityError> {
        Ok(self.kek.seal(&format!("lanyard/secret/{purpose}"), data)?)
    }

    /// Opens what [`Authority::seal_secret`] sealed.
    pub fn open_secret(
        &self,
        purpose: &str,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, AuthorityError> {
        Ok(self
            .kek
            .open(&format!("lanyard/secret/{purpose}"), sealed)?)
    }

    /// Every generation, oldest first, with the latest notAfter each one signed.
    pub fn generations(&self) -> Result<(Vec<GenerationStatus>, u64), AuthorityError> {
        let inner = read_lock(&self.inner);
        let mut out = Vec::with_capacity(inner.generations.len());
        for g in &inner.generations {
            out.push((g.clone(), self.store.last_leaf_not_after(g.id)?));
        }
        Ok((out, inner.sequence))
    }

    /// The active generation's id and its signing intermediate's notAfter.
    pub fn active(&self) -> Option<(AuthorityId, SystemTime)> {
        let inner = read_lock(&self.inner);
        inner.active.as_ref().map(|(id, ca)| (*id, ca.not_after))
    }

    /// Signs every request with the active intermediate and records them all durably, in one
    /// store write, before returning. Validity: notBefore = now - backdate, notAfter = now +
    /// ttl but never after the intermediate's notAfter.
    pub fn issue(&self, requests: &[LeafRequest]) -> Result<Vec<Issued>, AuthorityError> {
        // The read lock is held until the records are durable, so a rotation step (which
        // takes the write lock) never misses a certificate that is being signed.
        let inner = read_lock(&self.inner);
        let (id, ca) = inner.active.as_ref().ok_or(AuthorityError::NoActive)?;
        let now = SystemTime::now();
        // A leaf is clamped to the intermediate's end; below the shortest allowed lifetime
        // that would hand out certificates that are useless or already expired.
        if ca.not_after < now + self.opts.min_leaf_ttl {
            return Err(AuthorityError::IntermediateExpiring(
                *id,
                crate::timefmt::rfc3339(ca.not_after),
            ));
        }
        for _attempt in 0..3 {
            let mut out = Vec::with_capacity(requests.len());
            for r in requests {
                out.push(sign_leaf(
                    *id,
                    ca,
                    r,
                    now,
                    self.opts.backdate,
                    inner.sequence,
                )?);
            }
            let records: Vec<CertificateRecord> = out.iter().map(|i| i.record.clone()).collect();
            match self.store.insert_certificates(&records) {
                Ok(()) => return Ok(out),
                // 126 random bits make this all but impossible; draw new serials and re-sign.
                Err(StoreError::SerialExists(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Backend("could not find a free serial number".into()).into())
    }

    /// Prepares a new generation (state prepared, published now).
    pub fn prepare(&self) -> Result<AuthorityRecord, AuthorityError> {
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
    pub fn activate(
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
    pub fn retire(&self, id: AuthorityId, force: bool) -> Result<AuthorityRecord, AuthorityError> {
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

    /// A DER CRL for generation `id`, signed by its newest intermediate, valid for
    /// `validity`. Any generation still on record can publish one.
    ///
    /// The signed CRL is cached until a revocation is added or half its validity passed, so
    /// a public endpoint cannot make the server decrypt keys and sign at will.
    pub fn crl(&self, id: AuthorityId, validity: Duration) -> Result<Vec<u8>, AuthorityError> {
        let revoked = self.store.revoked(id)?;
        let now = SystemTime::now();
        {
            let cache = self.crl_cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = cache.get(&id) {
                if c.revoked == revoked.len() && now < c.generated + validity / 2 {
                    return Ok(c.der.clone());
                }
            }
        }
        let rec = {
            let inner = read_lock(&self.inner);
            inner
                .generations
                .iter()
                .find(|g| g.id == id)
                .cloned()
                .ok_or(RotationError::NotFound(id))?
        };
        let ca = load_intermediate(&self.kek, &rec)?;
        // Reason codes come from the records (the revocation index keeps serials and times).
        let entries: Vec<(Serial, SystemTime, Option<String>)> = revoked
            .iter()
            .map(|(serial, at)| {
                let reason = self
                    .store
                    .get_certificate(serial)
                    .ok()
                    .flatten()
                    .and_then(|r| r.revocation_reason);
                (*serial, *at, reason)
            })
            .collect();
        let number = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let der = build::sign_crl(
            &Signer {
                name: &ca.name,
                key_id: &ca.key_id,
                key: &ca.key,
            },
            &entries,
            now - self.opts.backdate,
            now + validity,
            number,
        )?;
        self.crl_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id,
                CachedCrl {
                    revoked: revoked.len(),
                    generated: now,
                    der: der.clone(),
                },
            );
        Ok(der)
    }

    /// Issues a new intermediate under the active root; the bundle does not change.
    pub fn renew_intermediate(&self, id: AuthorityId) -> Result<AuthorityRecord, AuthorityError> {
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
    pub fn next_scheduled_step(&self) -> Result<Option<Step>, AuthorityError> {
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

fn ca_subject(opts: &AuthorityOptions, cn: &str) -> Result<Name, X509Error> {
    build::subject(&[Attr::O(&opts.trust_domain), Attr::Cn(cn)])
}

fn new_generation(
    kek: &Kek,
    opts: &AuthorityOptions,
    id: AuthorityId,
    now: SystemTime,
) -> Result<AuthorityRecord, AuthorityError> {
    let (pkcs8, pair) = new_key()?;
    let spki = build::p256_spki(pair.public_key().as_ref())?;
    let key_id = build::key_identifier(&spki);
    let name = ca_subject(opts, &format!("Lanyard Root CA {id}"))?;
    let not_after = now + opts.root_ttl;
    let spec = CertSpec {
        serial: Serial::random().map_err(|_| KeyError::Random)?,
        subject: name.clone(),
        public_key: spki,
        not_before: now - opts.backdate,
        not_after,
        profile: Profile::Ca { path_len: None },
    };
    let cert = build::sign(
        &spec,
        &Signer {
            name: &name,
            key_id: &key_id,
            key: &pair,
        },
    )?;
    let root = LoadedCa {
        cert: cert.clone(),
        name,
        key_id,
        key: pair,
        not_after,
    };
    let intermediate = new_intermediate(kek, opts, id, 1, &root, now)?;
    Ok(AuthorityRecord {
        id,
        state: GenerationState::Prepared,
        created_at: now,
        published_at: Some(now),
        activated_at: None,
        retiring_at: None,
        retired_at: None,
        root: CaKeyRecord {
            certificate: cert,
            sealed_key: kek.seal(&purpose_root(id), &pkcs8)?,
            not_after,
            issued_at: Some(now),
        },
        intermediates: vec![intermediate],
    })
}

fn new_intermediate(
    kek: &Kek,
    opts: &AuthorityOptions,
    id: AuthorityId,
    n: usize,
    root: &LoadedCa,
    now: SystemTime,
) -> Result<CaKeyRecord, AuthorityError> {
    let (pkcs8, pair) = new_key()?;
    let spki = build::p256_spki(pair.public_key().as_ref())?;
    let not_after = (now + opts.intermediate_ttl).min(root.not_after);
    let spec = CertSpec {
        serial: Serial::random().map_err(|_| KeyError::Random)?,
        subject: ca_subject(opts, &format!("Lanyard Intermediate CA {id}.{n}"))?,
        public_key: spki,
        not_before: now - opts.backdate,
        not_after,
        profile: Profile::Ca { path_len: Some(0) },
    };
    let cert = build::sign(
        &spec,
        &Signer {
            name: &root.name,
            key_id: &root.key_id,
            key: &root.key,
        },
    )?;
    Ok(CaKeyRecord {
        certificate: cert,
        sealed_key: kek.seal(&purpose_intermediate(id, n), &pkcs8)?,
        not_after,
        issued_at: Some(now),
    })
}

fn load_ca(
    kek: &Kek,
    id: AuthorityId,
    rec: &CaKeyRecord,
    purpose: &str,
) -> Result<LoadedCa, AuthorityError> {
    let pkcs8 = kek.open(purpose, &rec.sealed_key)?;
    let key = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_ASN1_SIGNING,
        &pkcs8,
        &SystemRandom::new(),
    )
    .map_err(|e| AuthorityError::Damaged(id, format!("key does not load: {e}")))?;
    let cert = Certificate::from_der(&rec.certificate)
        .map_err(|e| AuthorityError::Damaged(id, format!("certificate does not parse: {e}")))?;
    let spki = &cert.tbs_certificate.subject_public_key_info;
    if spki.subject_public_key.raw_bytes() != key.public_key().as_ref() {
        return Err(AuthorityError::Damaged(
            id,
            "key does not match its certificate".into(),
        ));
    }
    Ok(LoadedCa {
        key_id: build::key_identifier(spki),
        name: cert.tbs_certificate.subject.clone(),
        cert: rec.certificate.clone(),
        key,
        not_after: rec.not_after,
    })
}

fn load_intermediate(kek: &Kek, g: &AuthorityRecord) -> Result<LoadedCa, AuthorityError> {
    let n = g.intermediates.len();
    let rec = g
        .intermediates
        .last()
        .ok_or_else(|| AuthorityError::Damaged(g.id, "no intermediate".into()))?;
    load_ca(kek, g.id, rec, &purpose_intermediate(g.id, n))
}

fn sign_leaf(
    id: AuthorityId,
    ca: &LoadedCa,
    r: &LeafRequest,
    now: SystemTime,
    backdate: Duration,
    sequence: u64,
) -> Result<Issued, AuthorityError> {
    let attrs: Vec<Attr<'_>> = r
        .subject
        .iter()
        .map(|(k, v)| match k {
            SubjectAttr::Ou => Attr::Ou(v),
            SubjectAttr::Cn => Attr::Cn(v),
        })
        .collect();
    let not_before = now - backdate;
    let not_after = (now + r.ttl).min(ca.not_after);
    let serial = Serial::random().map_err(|_| KeyError::Random)?;
    let spec = CertSpec {
        serial,
        subject: build::subject(&attrs)?,
        public_key: r.public_key.clone(),
        not_before,
        not_after,
        profile: Profile::Leaf {
            key_encipherment: r.key_encipherment,
            dns: r.dns.clone(),
            ips: r.ips.clone(),
            uri: r.uri.clone(),
        },
    };
    let leaf = build::sign(
        &spec,
        &Signer {
            name: &ca.name,
            key_id: &ca.key_id,
            key: &ca.key,
        },
    )?;
    let chain_pem = build::pem_chain([leaf.as_slice(), ca.cert.as_slice()]);
    // Validity is stored as encoded (whole seconds), so records and certificates agree.
    let secs = |t: SystemTime| {
        let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        SystemTime::UNIX_EPOCH + Duration::from_secs(d.as_secs())
    };
    let inst = r.instance.as_ref();
    let record = CertificateRecord {
        serial,
        kind: r.kind,
        instance_guid: inst.map(|i| i.instance.clone()),
        app_guid: inst.map(|i| i.app.clone()),
        space_guid: inst.map(|i| i.space.clone()),
        organization_guid: inst.map(|i| i.organization.clone()),
        name: r.name.clone(),
        requested_by: r.requested_by.clone(),
        authority_id: id,
        not_before: secs(not_before),
        not_after: secs(not_after),
        revoked_at: None,
        revocation_reason: None,
    };
    Ok(Issued {
        leaf,
        chain_pem,
        record,
        spiffe_id: r.uri.clone(),
        trust_bundle_sequence: sequence,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;
    use crate::x509::inspect::CertInfo;

    fn opts() -> AuthorityOptions {
        AuthorityOptions {
            trust_domain: "lanyard.internal".into(),
            root_ttl: Duration::from_secs(365 * 86400),
            intermediate_ttl: Duration::from_secs(30 * 86400),
            backdate: Duration::from_secs(60),
            propagation_delay: Duration::from_secs(600),
            min_leaf_ttl: Duration::from_secs(60),
        }
    }

    fn setup() -> (Arc<dyn Store>, Authority) {
        let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
        let kek = Kek::from_bytes([1; 32]);
        Authority::initialize(&store, &kek, &opts(), SystemTime::now()).unwrap();
        let a = Authority::open(store.clone(), Kek::from_bytes([1; 32]), opts()).unwrap();
        (store, a)
    }

    fn request(ttl: Duration) -> LeafRequest {
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
    fn a_leaf_is_backdated_and_its_record_is_durable() {
        let (store, a) = setup();
        let before = SystemTime::now();
        let issued = a
            .issue(&[request(Duration::from_secs(3600))])
            .unwrap()
            .remove(0);
        let info = CertInfo::from_der(&issued.leaf).unwrap();
        let nb = before.duration_since(info.not_before).unwrap();
        assert!(
            nb >= Duration::from_secs(59) && nb <= Duration::from_secs(62),
            "{nb:?}"
        );
        let life = info.not_after.duration_since(info.not_before).unwrap();
        assert!(life >= Duration::from_secs(3659) && life <= Duration::from_secs(3661));
        let rec = store
            .get_certificate(&issued.record.serial)
            .unwrap()
            .unwrap();
        assert_eq!(rec.not_after, info.not_after);
    }

    #[test]
    fn a_leaf_never_outlives_its_intermediate() {
        let (_, a) = setup();
        let (_, im_end) = a.active().unwrap();
        let issued = a
            .issue(&[request(Duration::from_secs(400 * 86400))])
            .unwrap()
            .remove(0);
        let info = CertInfo::from_der(&issued.leaf).unwrap();
        let end = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(end(info.not_after), end(im_end));
    }

    #[test]
    fn a_wrong_kek_is_a_clear_error_at_open() {
        let (store, _) = setup();
        let e = Authority::open(store, Kek::from_bytes([2; 32]), opts()).unwrap_err();
        assert!(
            e.to_string().contains("key-encryption key does not match"),
            "{e}"
        );
    }

    #[test]
    fn no_stored_ca_key_is_plaintext() {
        let (store, _a) = setup();
        let kek = Kek::from_bytes([1; 32]);
        let (gens, _) = store.load_authorities().unwrap();
        for g in gens {
            let sealed = std::iter::once((purpose_root(g.id), &g.root)).chain(
                g.intermediates
                    .iter()
                    .enumerate()
                    .map(|(i, k)| (purpose_intermediate(g.id, i + 1), k)),
            );
            for (purpose, k) in sealed {
                // The plaintext is a real PKCS#8 key, and not one byte run of it is stored.
                let plain = kek.open(&purpose, &k.sealed_key).unwrap();
                assert!(EcdsaKeyPair::from_pkcs8(
                    &ECDSA_P256_SHA256_ASN1_SIGNING,
                    &plain,
                    &SystemRandom::new()
                )
                .is_ok());
                let stored = serde_json::to_vec(&g).unwrap();
                let b64 =
                    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &plain[..]);
                assert!(!stored
                    .windows(16)
                    .any(|w| plain.windows(16).any(|p| p == w)));
                assert!(!String::from_utf8_lossy(&stored).contains(&b64[..24]));
                assert!(kek.open("wrong purpose", &k.sealed_key).is_err());
            }
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
        let info = CertInfo::from_der(&issued.leaf).unwrap();
        assert!(
            info.issuer.contains("Intermediate CA 1.2"),
            "{}",
            info.issuer
        );
    }
}
