//! The CA service: who may ask for what, input validation, and the issuance use cases.
//!
//! Handlers in [`crate::http`] parse transport details and call these methods; everything
//! here is synchronous (signing and fsync are blocking work) and returns [`CaError`], which
//! the HTTP layer maps to a status in one place.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use der::Decode;
use ring::rand::{SecureRandom, SystemRandom};
use x509_cert::spki::SubjectPublicKeyInfoOwned;

use crate::api;
use crate::authority::{
    Authority, AuthorityError, AuthorityOptions, InstanceIds, Issued, LeafRequest, SubjectAttr,
};
use crate::config::Config;
use crate::ids::{AuthorityId, Guid, IdError, Name, Role, Serial};
use crate::keys::{Kek, KeyError};
use crate::store::{
    CertificateKind, CertificateQuery, CertificateRecord, JoinTokenRecord, SledStore, Store,
    StoreError,
};
use crate::timefmt::rfc3339;
use crate::x509::csr::verify_csr;
use crate::x509::X509Error;

/// Errors of the service layer; each variant is one HTTP status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// 400: the body does not fit the schema.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no, untrusted or revoked client certificate, or a bad join token.
    #[error("{0}")]
    Unauthenticated(String),
    /// 403: the caller's role may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such thing.
    #[error("{0}")]
    NotFound(String),
    /// 405: the endpoint exists but not with this method.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 409: a state rule refused.
    #[error("{0}")]
    Conflict(String),
    /// 413: too large.
    #[error("{0}")]
    TooLarge(String),
    /// 422: a well-formed but invalid value; names the field.
    #[error("{field}: {message}")]
    Invalid {
        /// The field.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// 429: slow down.
    #[error("{0}")]
    RateLimited(String),
    /// 503: not ready.
    #[error("{0}")]
    NotReady(String),
    /// 500: our fault; the detail is logged, not returned.
    #[error("internal error: {0}")]
    Internal(String),
}

impl CaError {
    /// A 422 for `field`.
    pub fn invalid(field: impl Into<String>, message: impl std::fmt::Display) -> Self {
        CaError::Invalid {
            field: field.into(),
            message: message.to_string(),
        }
    }
}

impl From<AuthorityError> for CaError {
    fn from(e: AuthorityError) -> Self {
        use crate::rotation::RotationError;
        match e {
            AuthorityError::Rotation(RotationError::Conflict(m)) => CaError::Conflict(m),
            AuthorityError::Rotation(RotationError::NotFound(id)) => {
                CaError::NotFound(format!("authority {id} does not exist"))
            }
            AuthorityError::NoActive | AuthorityError::IntermediateExpiring(..) => {
                CaError::NotReady(e.to_string())
            }
            other => CaError::Internal(other.to_string()),
        }
    }
}

impl From<StoreError> for CaError {
    fn from(e: StoreError) -> Self {
        CaError::Internal(e.to_string())
    }
}

impl From<X509Error> for CaError {
    fn from(e: X509Error) -> Self {
        match e {
            X509Error::MalformedCsr(_)
            | X509Error::BadCsrSignature
            | X509Error::UnsupportedKey(_) => {
                let msg = e.to_string();
                CaError::invalid("csr", msg.trim_start_matches("csr: "))
            }
            other => CaError::Internal(other.to_string()),
        }
    }
}

impl From<KeyError> for CaError {
    fn from(e: KeyError) -> Self {
        CaError::Internal(e.to_string())
    }
}

/// Start-up failures, with the exit code they deserve.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Configuration problem (exit 2).
    #[error("{0}")]
    Config(String),
    /// `init` on an initialized state (exit 1).
    #[error("the state in {0} is already initialized; refusing to overwrite it")]
    AlreadyInitialized(PathBuf),
    /// Anything else at start (exit 1).
    #[error("{0}")]
    Runtime(String),
}

impl StartError {
    /// Process exit code.
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::Config(_) => 2,
            _ => 1,
        }
    }
}

impl From<StoreError> for StartError {
    fn from(e: StoreError) -> Self {
        StartError::Runtime(e.to_string())
    }
}

impl From<AuthorityError> for StartError {
    fn from(e: AuthorityError) -> Self {
        match e {
            AuthorityError::Key(KeyError::WrongKek) => StartError::Config(e.to_string()),
            other => StartError::Runtime(other.to_string()),
        }
    }
}

impl From<KeyError> for StartError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Io { .. } | KeyError::Random => StartError::Runtime(e.to_string()),
            other => StartError::Config(other.to_string()),
        }
    }
}

const META_INITIALIZED: &str = "initialized";
const META_KEK_CHECK: &str = "kek_check";
const KEK_CHECK_PURPOSE: &str = "lanyard/kek-check";
const META_SERVER_TLS: &str = "server_tls";

/// The component name in the API server's certificate (`spiffe://<td>/component/lanyard-server`);
/// clients of the API require it, and nobody else can get a certificate with it.
pub const SERVER_NAME: &str = "lanyard-server";

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredServerCert {
    chain_pem: String,
    #[serde(with = "serde_bytes_b64")]
    sealed_key: Vec<u8>,
    serial: Serial,
}

mod serde_bytes_b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        base64::engine::general_purpose::STANDARD
            .decode(String::deserialize(d)?)
            .map_err(serde::de::Error::custom)
    }
}

/// A signed leaf with a locally generated key (server certificate, operator credential).
pub struct LocalCredential {
    /// PEM chain (leaf, intermediate).
    pub chain_pem: String,
    /// PKCS#8 PEM private key.
    pub key_pem: zeroize::Zeroizing<String>,
    /// The record.
    pub record: CertificateRecord,
}

impl std::fmt::Debug for LocalCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCredential")
            .field("serial", &self.record.serial)
            .field("key_pem", &"...")
            .finish()
    }
}

/// A credential named after its holder (cell, operator, component, server): CN = name.
#[derive(Debug, Clone)]
pub struct NamedCredential {
    /// Record kind.
    pub kind: CertificateKind,
    /// The role, which gives the SPIFFE ID.
    pub role: Role,
    /// The name (CN).
    pub name: Name,
    /// DNS SANs.
    pub dns: Vec<String>,
    /// IP SANs.
    pub ips: Vec<IpAddr>,
    /// Lifetime.
    pub ttl: Duration,
    /// Who asked, for the record.
    pub requested_by: String,
}

/// The running CA: configuration, store and authority.
pub struct Ca {
    /// Validated configuration.
    pub config: Config,
    /// Durable state.
    pub store: Arc<dyn Store>,
    /// Signing keys and generations.
    pub authority: Authority,
    /// Counters for `/metrics`.
    pub metrics: crate::metrics::Metrics,
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

fn open_store(config: &Config) -> Result<Arc<dyn Store>, StartError> {
    let dir = config.state_dir.join("store");
    Ok(Arc::new(SledStore::open(&dir)?))
}

/// What `init` did, for its report.
#[derive(Debug)]
pub struct InitReport {
    /// Whether a KEK file was generated.
    pub generated_kek: Option<PathBuf>,
    /// Where the operator credential was written.
    pub operator_credential: PathBuf,
}

impl Ca {
    /// `lanyard init`: creates the KEK (dev), generation 1, the server certificate and the
    /// operator credential. Refuses an initialized state.
    pub fn init(config: &Config) -> Result<(Ca, InitReport), StartError> {
        let store = open_store(config)?;
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
        let authority = Authority::open(store.clone(), kek, authority_options(config))?;
        let ca = Ca {
            config: config.clone(),
            store,
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
        ca.issue_server_certificate()
            .and_then(|c| ca.store_server_certificate(&c))
            .map_err(|e| StartError::Runtime(format!("server certificate: {e}")))?;
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
    pub fn open(config: &Config) -> Result<(Ca, Option<InitReport>), StartError> {
        if !config.auto_init && !config.state_dir.join("store").exists() {
            // Nothing to open, and nothing should be created without `init`.
            return Err(StartError::Runtime(format!(
                "the state in {} is not initialized; run `lanyard init` first",
                config.state_dir.display()
            )));
        }
        let store = open_store(config)?;
        if store.get_meta(META_INITIALIZED)?.is_none() {
            if config.auto_init {
                let (ca, report) = Self::init_with_store(config, store)?;
                return Ok((ca, Some(report)));
            }
            return Err(StartError::Runtime(format!(
                "the state in {} is not initialized; run `lanyard init` first",
                config.state_dir.display()
            )));
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
        let authority = Authority::open(store.clone(), kek, authority_options(config))?;
        Ok((
            Ca {
                config: config.clone(),
                store,
                authority,
                metrics: Default::default(),
            },
            None,
        ))
    }

    fn td(&self) -> &str {
        &self.config.trust_domain
    }

    fn ttl(&self, requested: Option<api::JsonInt>) -> Result<Duration, CaError> {
        let i = &self.config.issuance;
        let Some(api::JsonInt(secs)) = requested else {
            return Ok(i.default_ttl.0);
        };
        let (min, max) = (i.min_ttl.0.as_secs(), i.max_ttl.0.as_secs());
        match u64::try_from(secs) {
            Ok(s) if (min..=max).contains(&s) => Ok(Duration::from_secs(s)),
            _ => Err(CaError::invalid(
                "ttl_seconds",
                format!("{} is out of range ({min} to {max})", display_int(secs)),
            )),
        }
    }

    fn public_key(csr: &str) -> Result<(SubjectPublicKeyInfoOwned, bool), CaError> {
        let v = verify_csr(csr.as_bytes())?;
        Ok((v.public_key, v.key_kind.is_rsa()))
    }

    fn named_leaf(
        &self,
        c: NamedCredential,
        key: (SubjectPublicKeyInfoOwned, bool),
    ) -> LeafRequest {
        let name = c.name.clone();
        LeafRequest {
            kind: c.kind,
            public_key: key.0,
            key_encipherment: key.1,
            subject: vec![(SubjectAttr::Cn, name.to_string())],
            dns: c.dns,
            ips: c.ips,
            uri: c.role.spiffe_id(self.td()),
            ttl: c.ttl,
            instance: None,
            name: Some(name),
            requested_by: c.requested_by,
        }
    }

    fn issue_many(&self, reqs: &[LeafRequest]) -> Result<Vec<Issued>, CaError> {
        let issued = self.authority.issue(reqs)?;
        for i in &issued {
            self.metrics.issued(i.record.kind);
        }
        Ok(issued)
    }

    fn issue_one(&self, req: LeafRequest) -> Result<Issued, CaError> {
        let mut v = self.issue_many(std::slice::from_ref(&req))?;
        v.pop()
            .ok_or_else(|| CaError::Internal("issuance returned nothing".into()))
    }

    /// Validates an instance request into a [`LeafRequest`] (verifying the CSR last, as it
    /// is the most expensive check).
    pub fn instance_leaf(
        &self,
        caller: &Role,
        r: &api::InstanceCertificateRequest,
    ) -> Result<LeafRequest, CaError> {
        let guid = |field: &str, v: &str| -> Result<Guid, CaError> {
            v.parse::<Guid>().map_err(|e| CaError::invalid(field, e))
        };
        let ids = InstanceIds {
            instance: guid("instance_guid", &r.instance_guid)?,
            app: guid("app_guid", &r.app_guid)?,
            space: guid("space_guid", &r.space_guid)?,
            organization: guid("organization_guid", &r.organization_guid)?,
        };
        let mut ips = Vec::new();
        if let Some(ip) = &r.container_ip {
            let addr = ip.parse::<IpAddr>().map_err(|_| {
                CaError::invalid(
                    "container_ip",
                    format!("`{ip}` is not an IPv4 or IPv6 address"),
                )
            })?;
            // A container never owns these; a certificate naming them could pass for a
            // local service (the CA's own API listens on loopback).
            let loopback = addr.is_loopback() && !self.config.issuance.allow_loopback_ips;
            if loopback || addr.is_unspecified() || addr.is_multicast() {
                return Err(CaError::invalid(
                    "container_ip",
                    format!("`{ip}` is a loopback, unspecified or multicast address"),
                ));
            }
            ips.push(addr);
        }
        let mut dns = vec![ids.instance.to_string()];
        let routes = r.internal_routes.as_deref().unwrap_or(&[]);
        if routes.len() > 100 {
            return Err(CaError::invalid("internal_routes", "at most 100 routes"));
        }
        for (i, route) in routes.iter().enumerate() {
            let n: Name = route.parse().map_err(|e| {
                CaError::invalid(
                    format!("internal_routes[{i}]"),
                    format!("`{route}` is not a DNS name: {e}"),
                )
            })?;
            if self.is_reserved_name(n.as_str()) {
                return Err(CaError::invalid(
                    format!("internal_routes[{i}]"),
                    format!("`{route}` is reserved for the CA and cannot be an app route"),
                ));
            }
            if !dns.contains(&n.to_string()) {
                dns.push(n.to_string());
            }
        }
        let ttl = self.ttl(r.ttl_seconds)?;
        let (public_key, rsa) = Self::public_key(&r.csr)?;
        let role = Role::Workload {
            org: ids.organization.clone(),
            space: ids.space.clone(),
            app: ids.app.clone(),
        };
        Ok(LeafRequest {
            kind: CertificateKind::Instance,
            public_key,
            key_encipherment: rsa,
            subject: vec![
                (
                    SubjectAttr::Ou,
                    format!("organization:{}", ids.organization),
                ),
                (SubjectAttr::Ou, format!("space:{}", ids.space)),
                (SubjectAttr::Ou, format!("app:{}", ids.app)),
                (SubjectAttr::Cn, ids.instance.to_string()),
            ],
            dns,
            ips,
            uri: role.spiffe_id(self.td()),
            ttl,
            instance: Some(ids),
            name: None,
            requested_by: caller.spiffe_id(self.td()),
        })
    }

    /// Names only the CA itself may carry: `localhost`, its `listen.server_names`, the trust
    /// domain, and the server's component name.
    fn is_reserved_name(&self, n: &str) -> bool {
        n == "localhost"
            || n.ends_with(".localhost")
            || n == self.config.trust_domain
            || n == SERVER_NAME
            || self.config.listen.server_names.iter().any(|s| s == n)
    }

    /// `POST /v1/instance-certificates`.
    pub fn issue_instance(
        &self,
        caller: &Role,
        r: &api::InstanceCertificateRequest,
    ) -> Result<Issued, CaError> {
        let leaf = self.instance_leaf(caller, r)?;
        self.issue_one(leaf)
    }

    /// `POST /v1/instance-certificates/batch`: each item validated alone, the valid ones
    /// signed and recorded together (one durable write).
    pub fn issue_instance_batch(
        &self,
        caller: &Role,
        items: Vec<Result<api::InstanceCertificateRequest, CaError>>,
    ) -> Result<Vec<Result<Issued, CaError>>, CaError> {
        let mut leaves = Vec::new();
        let mut slots: Vec<Result<usize, CaError>> = Vec::with_capacity(items.len());
        for item in items {
            match item.and_then(|r| self.instance_leaf(caller, &r)) {
                Ok(l) => {
                    slots.push(Ok(leaves.len()));
                    leaves.push(l);
                }
                Err(e) => slots.push(Err(e)),
            }
        }
        let mut issued: Vec<Option<Issued>> = if leaves.is_empty() {
            vec![]
        } else {
            self.issue_many(&leaves)?.into_iter().map(Some).collect()
        };
        Ok(slots
            .into_iter()
            .map(|s| {
                s.and_then(|i| {
                    issued
                        .get_mut(i)
                        .and_then(Option::take)
                        .ok_or_else(|| CaError::Internal("batch slot missing".into()))
                })
            })
            .collect())
    }

    /// `POST /v1/component-certificates`.
    pub fn issue_component(
        &self,
        caller: &Role,
        r: &api::ComponentCertificateRequest,
    ) -> Result<Issued, CaError> {
        let name: Name = r.name.parse().map_err(|e| CaError::invalid("name", e))?;
        if self.is_reserved_name(name.as_str()) {
            return Err(CaError::invalid(
                "name",
                format!("`{name}` is reserved for the CA's own server certificate"),
            ));
        }
        let ttl = self.ttl(r.ttl_seconds)?;
        let key = Self::public_key(&r.csr)?;
        let spec = NamedCredential {
            kind: CertificateKind::Component,
            role: Role::Component(name.clone()),
            dns: vec![name.to_string()],
            ips: vec![],
            ttl,
            requested_by: caller.spiffe_id(self.td()),
            name,
        };
        let leaf = self.named_leaf(spec, key);
        self.issue_one(leaf)
    }

    /// `POST /v1/join-tokens`: returns the secret once; only its hash is stored.
    pub fn create_join_token(
        &self,
        caller: &Role,
        r: &api::JoinTokenRequest,
    ) -> Result<api::JoinTokenResponse, CaError> {
        if r.role != "cell" {
            return Err(CaError::invalid(
                "role",
                format!("`{}` is not a joinable role (only \"cell\")", r.role),
            ));
        }
        let name: Name = r.name.parse().map_err(|e| CaError::invalid("name", e))?;
        let ttl = r.ttl_seconds.map(|t| t.0).unwrap_or(900);
        if !(1..=86400).contains(&ttl) {
            return Err(CaError::invalid(
                "ttl_seconds",
                format!("{} is out of range (1 to 86400)", display_int(ttl)),
            ));
        }
        let mut secret = zeroize::Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(&mut secret[..])
            .map_err(|_| CaError::Internal("random generator failed".into()))?;
        let token = format!(
            "lyt_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&secret[..])
        );
        let now = SystemTime::now();
        let expires_at = now + Duration::from_secs(ttl as u64);
        self.store.insert_join_token(
            &token_hash(&token),
            &JoinTokenRecord {
                name,
                created_by: caller.spiffe_id(self.td()),
                created_at: now,
                expires_at,
            },
        )?;
        self.metrics.join_token_created();
        Ok(api::JoinTokenResponse {
            token,
            expires_at: rfc3339(expires_at),
        })
    }

    /// Whether `token` is a live join token (without spending it).
    pub fn check_join_token(&self, token: &str) -> Result<(), CaError> {
        let rec = self
            .store
            .get_join_token(&token_hash(token))?
            .ok_or_else(|| {
                CaError::Unauthenticated("the join token is unknown or already used".into())
            })?;
        if SystemTime::now() >= rec.expires_at {
            return Err(CaError::Unauthenticated(format!(
                "the join token expired at {}",
                rfc3339(rec.expires_at)
            )));
        }
        Ok(())
    }

    /// `POST /v1/join`: spends the token, issues the cell credential.
    pub fn join(&self, token: &str, r: &api::CsrRequest) -> Result<Issued, CaError> {
        let key = Self::public_key(&r.csr)?;
        let rec = self
            .store
            .take_join_token(&token_hash(token))?
            .ok_or_else(|| {
                CaError::Unauthenticated("the join token is unknown or already used".into())
            })?;
        if SystemTime::now() >= rec.expires_at {
            return Err(CaError::Unauthenticated(format!(
                "the join token expired at {}",
                rfc3339(rec.expires_at)
            )));
        }
        let spec = NamedCredential {
            kind: CertificateKind::Cell,
            role: Role::Cell(rec.name.clone()),
            dns: vec![],
            ips: vec![],
            ttl: self.config.issuance.default_ttl.0,
            requested_by: format!("join-token created by {}", rec.created_by),
            name: rec.name,
        };
        let leaf = self.named_leaf(spec, key);
        self.issue_one(leaf)
    }

    /// `POST /v1/cell-credentials` and `/v1/operator-credentials`: renew the caller's own
    /// credential under the active generation, same name.
    pub fn renew_own_credential(
        &self,
        caller: &Role,
        r: &api::CsrRequest,
    ) -> Result<Issued, CaError> {
        let key = Self::public_key(&r.csr)?;
        let (kind, name, ttl) = match caller {
            Role::Cell(n) => (CertificateKind::Cell, n, self.config.issuance.default_ttl.0),
            Role::Operator(n) => (CertificateKind::Operator, n, self.config.issuance.max_ttl.0),
            _ => {
                return Err(CaError::Forbidden(
                    "only cells and operators renew credentials".into(),
                ))
            }
        };
        let spec = NamedCredential {
            kind,
            role: caller.clone(),
            name: name.clone(),
            dns: vec![],
            ips: vec![],
            ttl,
            requested_by: caller.spiffe_id(self.td()),
        };
        let leaf = self.named_leaf(spec, key);
        self.issue_one(leaf)
    }

    /// `GET /v1/certificates`.
    pub fn list_certificates(
        &self,
        q: &CertificateQuery,
    ) -> Result<Vec<CertificateRecord>, CaError> {
        Ok(self.store.query_certificates(q)?)
    }

    /// Is this serial revoked? (Client certificates of revoked credentials are refused.)
    pub fn is_revoked(&self, serial: &Serial) -> Result<bool, CaError> {
        Ok(self
            .store
            .get_certificate(serial)?
            .is_some_and(|r| r.revoked_at.is_some()))
    }

    /// `POST /v1/certificates/{serial}/revoke`.
    pub fn revoke(
        &self,
        serial: &Serial,
        reason: Option<String>,
    ) -> Result<CertificateRecord, CaError> {
        let mut rec = self
            .store
            .get_certificate(serial)?
            .ok_or_else(|| CaError::NotFound(format!("no certificate with serial {serial}")))?;
        if rec.revoked_at.is_some() {
            return Err(CaError::Conflict(format!(
                "certificate {serial} is already revoked"
            )));
        }
        if let Some(r) = &reason {
            if r.len() > 1024 {
                return Err(CaError::invalid("reason", "at most 1024 characters"));
            }
        }
        rec.revoked_at = Some(SystemTime::now());
        rec.revocation_reason = reason;
        self.store.update_certificate(&rec)?;
        Ok(rec)
    }

    /// Issues a credential with a key generated here (server certificate, operator
    /// credential). The key never leaves this process except into the caller's files.
    pub fn issue_local(&self, spec: NamedCredential) -> Result<LocalCredential, CaError> {
        self.issue_local_with_key(spec, None)
    }

    /// Like [`Ca::issue_local`], keeping `existing_key` (PKCS#8 PEM) when it parses.
    fn issue_local_with_key(
        &self,
        spec: NamedCredential,
        existing_key: Option<&str>,
    ) -> Result<LocalCredential, CaError> {
        let kp = match existing_key.and_then(|k| rcgen::KeyPair::from_pem(k).ok()) {
            Some(kp) => kp,
            None => rcgen::KeyPair::generate()
                .map_err(|e| CaError::Internal(format!("key generation: {e}")))?,
        };
        let spki = SubjectPublicKeyInfoOwned::from_der(&kp.public_key_der())
            .map_err(|e| CaError::Internal(e.to_string()))?;
        let leaf = self.named_leaf(spec, (spki, false));
        let issued = self.issue_one(leaf)?;
        Ok(LocalCredential {
            chain_pem: issued.chain_pem,
            key_pem: zeroize::Zeroizing::new(kp.serialize_pem()),
            record: issued.record,
        })
    }

    /// Writes an operator credential directory (`cert.pem`, `key.pem` 0600,
    /// `trust-bundle.pem`) for `name`, replacing what is there.
    ///
    /// The key already in the directory is kept (as the agent keeps instance keys), so a
    /// CLI that reads `cert.pem` and `key.pem` during a refresh still gets a matching pair;
    /// `lanyard credential renew` is the way to a new key.
    pub fn write_operator_credential(
        &self,
        dir: &std::path::Path,
        name: &Name,
        by: &str,
    ) -> Result<CertificateRecord, CaError> {
        let existing = std::fs::read_to_string(dir.join("key.pem"))
            .ok()
            .map(zeroize::Zeroizing::new);
        let spec = NamedCredential {
            kind: CertificateKind::Operator,
            role: Role::Operator(name.clone()),
            name: name.clone(),
            dns: vec![],
            ips: vec![],
            ttl: self.config.issuance.max_ttl.0,
            requested_by: by.to_string(),
        };
        let cred = self.issue_local_with_key(spec, existing.as_deref().map(String::as_str))?;
        write_credential_dir(
            dir,
            &cred.chain_pem,
            &cred.key_pem,
            &self.authority.bundle().pem(),
        )
        .map_err(|e| CaError::Internal(format!("writing {}: {e}", dir.display())))?;
        Ok(cred.record)
    }

    /// The API server's own certificate: names `localhost`, `127.0.0.1` and
    /// `listen.server_names`.
    pub fn issue_server_certificate(&self) -> Result<LocalCredential, CaError> {
        let mut dns = vec!["localhost".to_string()];
        let mut ips: Vec<IpAddr> = vec![
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ];
        for n in &self.config.listen.server_names {
            match n.parse::<IpAddr>() {
                Ok(ip) if !ips.contains(&ip) => ips.push(ip),
                Ok(_) => {}
                Err(_) if !dns.contains(n) => dns.push(n.clone()),
                Err(_) => {}
            }
        }
        let name: Name = SERVER_NAME
            .parse()
            .map_err(|e: IdError| CaError::Internal(e.0))?;
        self.issue_local(NamedCredential {
            kind: CertificateKind::Server,
            role: Role::Component(name.clone()),
            name,
            dns,
            ips,
            ttl: self.config.issuance.default_ttl.0,
            requested_by: "lanyard server".into(),
        })
    }

    /// The server certificate stored at init (or by an earlier run), if it is still good:
    /// signed by the active generation and not past two thirds of its life. Otherwise a new
    /// one is issued and stored (key sealed under the KEK).
    pub fn load_or_issue_server_certificate(&self) -> Result<LocalCredential, CaError> {
        if let Some(c) = self.stored_server_certificate()? {
            if self.credential_is_fresh(&c.record) {
                return Ok(c);
            }
        }
        let c = self.issue_server_certificate()?;
        self.store_server_certificate(&c)?;
        Ok(c)
    }

    /// Whether a credential is signed by the active generation and before 2/3 of its life.
    pub fn credential_is_fresh(&self, r: &CertificateRecord) -> bool {
        let active = self.authority.active().map(|a| a.0);
        // notBefore is backdated; the life that counts starts when it was issued.
        let issued = r.not_before + self.config.issuance.backdate.0;
        let life = r.not_after.duration_since(issued).unwrap_or_default();
        let renew_at = issued + life * 2 / 3;
        active == Some(r.authority_id) && SystemTime::now() < renew_at
    }

    fn stored_server_certificate(&self) -> Result<Option<LocalCredential>, CaError> {
        let Some(raw) = self.store.get_meta(META_SERVER_TLS)? else {
            return Ok(None);
        };
        let stored: StoredServerCert = serde_json::from_slice(&raw)
            .map_err(|e| CaError::Internal(format!("stored server certificate: {e}")))?;
        let key = self
            .authority
            .open_secret("server-tls", &stored.sealed_key)?;
        let key_pem = String::from_utf8(key.to_vec())
            .map_err(|_| CaError::Internal("stored server key is not PEM".into()))?;
        let Some(record) = self.store.get_certificate(&stored.serial)? else {
            return Ok(None);
        };
        Ok(Some(LocalCredential {
            chain_pem: stored.chain_pem,
            key_pem: zeroize::Zeroizing::new(key_pem),
            record,
        }))
    }

    /// Persists the server credential, its key sealed under the KEK.
    pub fn store_server_certificate(&self, c: &LocalCredential) -> Result<(), CaError> {
        let stored = StoredServerCert {
            chain_pem: c.chain_pem.clone(),
            sealed_key: self
                .authority
                .seal_secret("server-tls", c.key_pem.as_bytes())?,
            serial: c.record.serial,
        };
        let raw = serde_json::to_vec(&stored).map_err(|e| CaError::Internal(e.to_string()))?;
        self.store.put_meta(META_SERVER_TLS, &raw)?;
        Ok(())
    }

    /// The generations as the API shows them.
    pub fn authorities_view(&self) -> Result<api::AuthoritiesResponse, CaError> {
        let (gens, seq) = self.authority.generations()?;
        Ok(api::AuthoritiesResponse {
            authorities: gens.iter().map(|(g, l)| authority_view(g, *l)).collect(),
            trust_bundle_sequence: seq,
        })
    }

    /// One generation as the API shows it.
    pub fn authority_view_of(&self, id: AuthorityId) -> Result<api::AuthorityView, CaError> {
        let (gens, _) = self.authority.generations()?;
        gens.iter()
            .find(|(g, _)| g.id == id)
            .map(|(g, l)| authority_view(g, *l))
            .ok_or_else(|| CaError::NotFound(format!("authority {id} does not exist")))
    }
}

/// The API view of a generation.
pub fn authority_view(
    g: &crate::store::AuthorityRecord,
    last_leaf: Option<SystemTime>,
) -> api::AuthorityView {
    let opt = |t: Option<SystemTime>| t.map(rfc3339);
    api::AuthorityView {
        id: g.id.to_string(),
        state: g.state.as_str().to_string(),
        created_at: rfc3339(g.created_at),
        published_at: opt(g.published_at),
        activated_at: opt(g.activated_at),
        retiring_at: opt(g.retiring_at),
        retired_at: opt(g.retired_at),
        root_not_after: rfc3339(g.root.not_after),
        intermediate_not_after: g
            .intermediates
            .last()
            .map(|i| rfc3339(i.not_after))
            .unwrap_or_default(),
        last_leaf_not_after: opt(last_leaf),
        root_certificate: crate::x509::build::pem_chain([g.root.certificate.as_slice()]),
    }
}

/// The API view of an issued certificate.
pub fn issued_view(i: &Issued) -> api::IssuedCertificate {
    api::IssuedCertificate {
        certificate_chain: i.chain_pem.clone(),
        serial: i.record.serial.to_string(),
        not_before: rfc3339(i.record.not_before),
        not_after: rfc3339(i.record.not_after),
        spiffe_id: i.spiffe_id.clone(),
        authority_id: i.record.authority_id.to_string(),
        trust_bundle_sequence: i.trust_bundle_sequence,
    }
}

/// An integer for a message; the saturated extremes of [`api::JsonInt`] read as "huge".
fn display_int(v: i128) -> String {
    match v {
        i128::MAX => "a huge number".into(),
        i128::MIN => "a huge negative number".into(),
        v => v.to_string(),
    }
}

/// SHA-256 of a join token: the store key.
pub fn token_hash(token: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .to_vec()
}

/// Writes a credential directory: `cert.pem`, `key.pem` (0600), `trust-bundle.pem`, each
/// replaced atomically (plain files, as operators and tools expect). The key goes first; the
/// server's own refreshes keep the key, so only an explicit renewal with a new key has a
/// moment where the two files disagree.
pub fn write_credential_dir(
    dir: &std::path::Path,
    chain_pem: &str,
    key_pem: &str,
    bundle_pem: &str,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    crate::fsutil::write_atomic(&dir.join("key.pem"), key_pem.as_bytes(), 0o600)?;
    crate::fsutil::write_atomic(&dir.join("cert.pem"), chain_pem.as_bytes(), 0o644)?;
    crate::fsutil::write_atomic(&dir.join("trust-bundle.pem"), bundle_pem.as_bytes(), 0o644)
}
