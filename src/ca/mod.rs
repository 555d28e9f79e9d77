//! The CA service: who may ask for what, input validation, and every use case the API offers.
//!
//! [`Ca`] is the one door to the authority (keys, generations) and the store (records): its
//! fields are private and callers use its methods. Everything here is synchronous (signing
//! and fsync are blocking work) except the `_async` issuance methods, which hand the signing
//! and the durable write to the issuing thread and wait for it without blocking; all return
//! [`CaError`], which the HTTP layer maps to a status
//! in one place. API views are not built here: the types below are handed out as they are and
//! the caller decides what the wire shows.
//!
//! `error.rs` holds the errors, `audit_log.rs` the audit log, `issuance.rs` certificate requests,
//! `join.rs` join tokens, `certificates.rs` records and revocation, `components.rs` components
//! renewing their own certificate, `authorities.rs` generations, rotation steps, the
//! bundle and CRLs, `local_credentials.rs` the server certificate and operator credential,
//! `ownership.rs` instance bindings, `status.rs` metrics, `lease.rs` the schedule lease, `migrate.rs` `store migrate`; this file
//! opens and initializes the state.

mod audit_log;
mod authorities;
mod certificates;
mod components;
mod error;
mod issuance;
mod join;
mod lease;
mod local_credentials;
mod migrate;
mod ownership;
mod retention;
mod status;

pub(crate) use audit_log::MAX_AUDIT_PAGE;
pub(crate) use error::{CaError, StartError};
pub(crate) use local_credentials::LocalCredential;
pub(crate) use migrate::migrate_to_postgres;

// The data the use cases hand out, re-exported so that callers depend on `ca` alone.
pub(crate) use crate::authority::{GenerationStatus, Issued, TrustBundle};
pub(crate) use crate::rotation::Due;
pub(crate) use crate::store::{
    AuthorityRecord, CertificateCursor, CertificateQuery, CertificateRecord, InstanceBinding,
    Lease, LeaseGrant,
};
pub(crate) use issuance::RESERVED_SUFFIX;
pub(crate) use retention::RETENTION_BATCH;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use crate::authority::{follow_store, Authority, AuthorityOptions, GroupCommitter};
use crate::config::Config;
use crate::ids::IdError;
use crate::keys::Kek;
use crate::metrics::Metrics;
use crate::store::{PostgresStore, SledStore, Store};

const META_INITIALIZED: &str = "initialized";
const META_KEK_CHECK: &str = "kek_check";
const KEK_CHECK_PURPOSE: &str = "lanyard/kek-check";

/// The running CA: configuration, store and authority, reachable only through its methods.
pub(crate) struct Ca {
    /// Validated configuration.
    config: Config,
    /// Durable state.
    store: Arc<dyn Store>,
    /// Signs and records leaves in group writes (see `authority/committer.rs`); before
    /// `authority`, so its thread stops first.
    issuer: GroupCommitter,
    /// Signing keys and generations (shared with the thread that follows other replicas and
    /// the issuing thread).
    authority: Arc<Authority>,
    /// Counters for `/metrics`.
    metrics: Metrics,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("trust_domain", &self.config.trust_domain)
            .finish()
    }
}

fn authority_options(c: &Config) -> AuthorityOptions {
    AuthorityOptions {
        trust_domain: c.trust_domain.clone(),
        root_ttl: c.authority.root_ttl.0,
        intermediate_ttl: c.authority.intermediate_ttl.0,
        backdate: c.issuance.backdate.0,
        propagation_delay: c.rotation.propagation_delay.0,
        min_leaf_ttl: c.issuance.min_ttl.0,
    }
}

/// Whether the configured backend is PostgreSQL (shared) rather than sled (in `state_dir`).
fn uses_postgres(config: &Config) -> bool {
    config.storage.backend == "postgres"
}

fn open_store(config: &Config) -> Result<Arc<dyn Store>, StartError> {
    if uses_postgres(config) {
        let url = config.storage.url.as_deref().ok_or_else(|| {
            StartError::Config("storage.url: required when storage.backend is \"postgres\"".into())
        })?;
        return Ok(Arc::new(PostgresStore::open(url)?));
    }
    let dir = config.state_dir.join("store");
    Ok(Arc::new(SledStore::open(&dir)?))
}

/// Opens the authority and, on a store other replicas share, starts following their changes.
fn open_authority(
    store: &Arc<dyn Store>,
    kek: Kek,
    config: &Config,
) -> Result<Arc<Authority>, StartError> {
    let authority = Arc::new(Authority::open(
        store.clone(),
        kek,
        authority_options(config),
    )?);
    follow_store(&authority)
        .map_err(|e| StartError::Runtime(format!("starting the store follower: {e}")))?;
    Ok(authority)
}

/// Starts the issuing thread, its queue as deep as the blocking pool's.
fn start_issuer(authority: &Arc<Authority>, config: &Config) -> Result<GroupCommitter, StartError> {
    GroupCommitter::start(authority, config.listen.blocking_queue_depth)
        .map_err(|e| StartError::Runtime(format!("starting the issuing thread: {e}")))
}

/// What `init` did, for its report.
#[derive(Debug)]
pub(crate) struct InitReport {
    /// Whether a KEK file was generated.
    pub generated_kek: Option<PathBuf>,
    /// Where the operator credential was written.
    pub operator_credential: PathBuf,
}

impl Ca {
    /// `lanyard init`: creates the KEK (dev), generation 1, the server certificate and the
    /// operator credential. Refuses an initialized state.
    pub(crate) fn init(config: &Config) -> Result<(Ca, InitReport), StartError> {
        let store = open_store(config)?;
        // Replicas starting with `auto_init` on the same database wait meanwhile.
        let _init = store.lock_init()?;
        Self::init_with_store(config, store)
    }

    fn init_with_store(
        config: &Config,
        store: Arc<dyn Store>,
    ) -> Result<(Ca, InitReport), StartError> {
        if store.get_meta(META_INITIALIZED)?.is_some() {
            return Err(StartError::AlreadyInitialized(config.state_dir.clone()));
        }
        let mut generated_kek = None;
        let kek = match Kek::load(config.kek_file())? {
            Some(k) => k,
            None => {
                // Only an empty state gets a new KEK: anything already sealed would be lost.
                if store.get_meta(META_KEK_CHECK)?.is_some()
                    || !store.load_authorities()?.0.is_empty()
                {
                    return Err(StartError::Config(
                        "the state already holds sealed keys but no key-encryption key was found (LANYARD_KEK or keys.kek_file); refusing to create a new one".into(),
                    ));
                }
                let Some(path) = config.kek_file() else {
                    return Err(StartError::Config(
                        "no key-encryption key: set LANYARD_KEK or keys.kek_file".into(),
                    ));
                };
                let k = Kek::generate()?;
                k.write_new_file(path)?;
                generated_kek = Some(path.to_path_buf());
                k
            }
        };
        // A crash after this point and before `initialized` leaves a state that init resumes:
        // the check value and generation 1 are reused, never regenerated.
        match store.get_meta(META_KEK_CHECK)? {
            Some(sealed) => {
                kek.open(KEK_CHECK_PURPOSE, &sealed)
                    .map_err(|e| StartError::Config(e.to_string()))?;
            }
            None => store.put_meta(META_KEK_CHECK, &kek.seal(KEK_CHECK_PURPOSE, b"lanyard")?)?,
        }
        if store.load_authorities()?.0.is_empty() {
            Authority::initialize(&store, &kek, &authority_options(config), SystemTime::now())?;
        }
        let authority = open_authority(&store, kek, config)?;
        let ca = Ca {
            config: config.clone(),
            store,
            issuer: start_issuer(&authority, config)?,
            authority,
            metrics: Default::default(),
        };
        let dir = config.operator_credential_dir();
        ca.write_operator_credential(
            &dir,
            &"admin"
                .parse()
                .map_err(|e: IdError| StartError::Runtime(e.0))?,
            "lanyard init",
        )
        .map_err(|e| StartError::Runtime(format!("operator credential: {e}")))?;
        // No server certificate here: each replica issues its own on its first start, under
        // its replica name, which needs the port `serve` binds.
        ca.store.put_meta(META_INITIALIZED, b"1")?;
        Ok((
            ca,
            InitReport {
                generated_kek,
                operator_credential: dir,
            },
        ))
    }

    /// Opens an initialized state (or initializes it when `auto_init` is set).
    pub(crate) fn open(config: &Config) -> Result<(Ca, Option<InitReport>), StartError> {
        // (A database has no such marker: its `initialized` value below says the same.)
        if !config.auto_init && !uses_postgres(config) && !config.state_dir.join("store").exists() {
            // Nothing to open, and nothing should be created without `init`.
            return Err(StartError::Runtime(format!(
                "the state in {} is not initialized; run `lanyard init` first",
                config.state_dir.display()
            )));
        }
        let store = open_store(config)?;
        if store.get_meta(META_INITIALIZED)?.is_none() {
            if !config.auto_init {
                return Err(StartError::Runtime(format!(
                    "the state in {} is not initialized; run `lanyard init` first",
                    config.state_dir.display()
                )));
            }
            // Of replicas starting together on an empty database, the first to take the lock
            // initializes; the others wait, then find it initialized and open it.
            let init = store.lock_init()?;
            if store.get_meta(META_INITIALIZED)?.is_none() {
                let (ca, report) = Self::init_with_store(config, store)?;
                drop(init);
                return Ok((ca, Some(report)));
            }
            drop(init);
        }
        let kek = Kek::load(config.kek_file())?.ok_or_else(|| {
            StartError::Config(format!(
                "no key-encryption key: LANYARD_KEK is unset and {} does not exist (an initialized state never gets a new one)",
                config
                    .kek_file()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "keys.kek_file".into())
            ))
        })?;
        if let Some(sealed) = store.get_meta(META_KEK_CHECK)? {
            kek.open(KEK_CHECK_PURPOSE, &sealed)
                .map_err(|e| StartError::Config(e.to_string()))?;
        }
        let authority = open_authority(&store, kek, config)?;
        Ok((
            Ca {
                config: config.clone(),
                store,
                issuer: start_issuer(&authority, config)?,
                authority,
                metrics: Default::default(),
            },
            None,
        ))
    }

    /// The validated configuration.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// The trust domain, for SPIFFE IDs.
    pub(super) fn td(&self) -> &str {
        &self.config.trust_domain
    }
}
