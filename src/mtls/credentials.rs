//! The live credential: the current set behind a lock, a watcher that swaps in new sets, and
//! the rustls configurations that always use the current one.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::{ClientConfig, ServerConfig};
use tokio::sync::watch;

use super::files::{self, CredentialPaths, Material};
use super::identity::PeerIdentity;
use super::verify::{
    CurrentCertificate, CurrentClientVerifier, CurrentServerVerifier, MaterialSource,
};
use super::MtlsError;
use crate::tls_provider::provider;

/// How often [`Credentials`] looks at its files by default. The agent renews certificates
/// long before they expire and publishes a new root long before it signs anything, so a
/// fraction of a second is far more than soon enough; reading three small files that often
/// costs nothing measurable.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// What the credential in use looks like; see [`Credentials::subscribe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateStatus {
    /// The leaf's serial, lowercase hex.
    pub serial: String,
    /// The leaf's end of validity.
    pub not_after: SystemTime,
    /// The leaf's SPIFFE ID.
    pub spiffe_id: Option<String>,
    /// How many roots the trust bundle in use holds.
    pub trust_anchors: usize,
    /// How many credential sets have been loaded so far (1 after start).
    pub loads: u64,
    /// Why the files on disk could not be loaded, while the previous set stays in use.
    pub last_error: Option<String>,
}

/// An app's own credential, read from its files and kept current.
///
/// Cloning is cheap and every clone shares the same state. The configurations from
/// [`Credentials::server_config`] and [`Credentials::client_config`] look up the current set
/// on every handshake, so a renewed certificate or a new root is used by the next connection
/// without rebuilding anything; connections already open keep what they negotiated.
#[derive(Clone)]
pub struct Credentials {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("paths", &self.shared.paths)
            .field("serial", &self.shared.material().leaf.serial)
            .field("key", &"...")
            .finish()
    }
}

/// State shared by the handle, the watcher and the rustls callbacks.
struct Shared {
    paths: CredentialPaths,
    current: RwLock<Arc<Material>>,
    status: watch::Sender<CertificateStatus>,
    /// Serializes reloads, so the watcher and an explicit [`Credentials::reload`] do not race
    /// to swap. Holds the digest of the last file contents that failed to load, so the
    /// watcher does not retry (and re-log) the very same broken set on every tick.
    reloading: Mutex<Option<[u8; 32]>>,
}

impl MaterialSource for Shared {
    fn material(&self) -> Arc<Material> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Shared {
    /// Loads the files if their content differs from the set in use; `Ok(true)` when a new
    /// set was swapped in. `retry_rejected` decides whether content that already failed to
    /// load is tried again (the watcher does not; an explicit reload does).
    fn reload(&self, retry_rejected: bool) -> Result<bool, MtlsError> {
        let mut rejected = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let in_use = self.material().fingerprint;
        // A failed read here is not final: a swap in progress can make a path vanish for a
        // moment, and `load` retries.
        let on_disk = files::current_fingerprint(&self.paths).ok();
        if on_disk == Some(in_use) {
            // Unchanged, or a broken write was undone.
            *rejected = None;
            self.note_error(None);
            return Ok(false);
        }
        if !retry_rejected && on_disk.is_some() && *rejected == on_disk {
            return Ok(false);
        }
        match files::load(&self.paths) {
            Ok(m) => {
                *rejected = None;
                self.note_error(None);
                if m.fingerprint == in_use {
                    return Ok(false);
                }
                let m = Arc::new(m);
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = m.clone();
                self.status.send_modify(|s| {
                    let loads = s.loads + 1;
                    *s = status_of(&m, loads);
                });
                tracing::info!(
                    serial = %m.leaf.serial,
                    trust_anchors = m.trust_anchors,
                    certificate = %self.paths.certificate.display(),
                    "mtls: loaded new credentials"
                );
                Ok(true)
            }
            Err(e) => {
                *rejected = on_disk;
                self.note_error(Some(e.to_string()));
                Err(e)
            }
        }
    }

    /// Records (and logs once) why the files could not be used.
    fn note_error(&self, error: Option<String>) {
        self.status.send_if_modified(|s| {
            if s.last_error == error {
                return false;
            }
            match &error {
                Some(e) => tracing::warn!(error = %e, "mtls: keeping the credentials in use"),
                None => tracing::info!("mtls: credential files are readable again"),
            }
            s.last_error = error;
            true
        });
    }
}

fn status_of(m: &Material, loads: u64) -> CertificateStatus {
    CertificateStatus {
        serial: m.leaf.serial.clone(),
        not_after: m.leaf.not_after,
        spiffe_id: m.leaf.spiffe_id().map(str::to_string),
        trust_anchors: m.trust_anchors,
        loads,
        last_error: None,
    }
}

impl Credentials {
    /// Loads the agent's layout in `dir` (`instance.crt`, `instance.key`, `trust-bundle.crt`)
    /// and watches it every [`DEFAULT_POLL_INTERVAL`].
    pub fn from_dir(dir: &Path) -> Result<Self, MtlsError> {
        Self::open(
            CredentialPaths::instance_dir(dir),
            Some(DEFAULT_POLL_INTERVAL),
        )
    }

    /// Loads the files named by `CF_INSTANCE_CERT`, `CF_INSTANCE_KEY` and
    /// `CF_SYSTEM_CERT_PATH` and watches them every [`DEFAULT_POLL_INTERVAL`].
    pub fn from_env() -> Result<Self, MtlsError> {
        Self::open(CredentialPaths::from_env()?, Some(DEFAULT_POLL_INTERVAL))
    }

    /// Loads `paths` and, with `poll`, starts a background thread that looks at the files
    /// that often and swaps in a new set when they change. The thread ends once every handle
    /// and every configuration built from this one are dropped. With `None` the files are
    /// read again only by [`Credentials::reload`].
    ///
    /// Loading blocks on file I/O (and, if the files look inconsistent, on a few short
    /// retries); call it before serving, or from `spawn_blocking`.
    pub fn open(paths: CredentialPaths, poll: Option<Duration>) -> Result<Self, MtlsError> {
        let material = Arc::new(files::load(&paths)?);
        let (status, _) = watch::channel(status_of(&material, 1));
        let shared = Arc::new(Shared {
            paths,
            current: RwLock::new(material),
            status,
            reloading: Mutex::new(None),
        });
        if let Some(every) = poll {
            // Only a weak reference: the watcher must not keep the credential alive.
            let weak = Arc::downgrade(&shared);
            std::thread::Builder::new()
                .name("lanyard-mtls-watch".into())
                .spawn(move || loop {
                    std::thread::sleep(every);
                    let Some(shared) = weak.upgrade() else { return };
                    // A failure is recorded in the status and logged; the set in use stays.
                    let _ = shared.reload(false);
                })
                .map_err(MtlsError::Watcher)?;
        }
        Ok(Credentials { shared })
    }

    /// Looks at the files now and swaps in a new set if they changed; `Ok(true)` when it did.
    /// On an error the set in use stays.
    pub fn reload(&self) -> Result<bool, MtlsError> {
        self.shared.reload(true)
    }

    /// The files this credential comes from.
    pub fn paths(&self) -> &CredentialPaths {
        &self.shared.paths
    }

    /// The credential in use now.
    pub fn status(&self) -> CertificateStatus {
        self.shared.status.borrow().clone()
    }

    /// A receiver that is notified whenever a new set is loaded or loading fails.
    pub fn subscribe(&self) -> watch::Receiver<CertificateStatus> {
        self.shared.status.subscribe()
    }

    /// This app's own identity, from the leaf in use.
    pub fn identity(&self) -> Result<PeerIdentity, MtlsError> {
        PeerIdentity::from_info(&self.shared.material().leaf)
    }

    /// A server configuration (TLS 1.3 and 1.2) that presents the current certificate and
    /// requires a client certificate that chains to the current trust bundle. Set ALPN
    /// protocols on it as the app's HTTP stack needs.
    ///
    /// Session resumption is off: a resumed session skips both certificates, so it would
    /// carry a peer's identity (and this app's certificate) past a renewal, a new bundle or
    /// the end of a root. Every connection is a full handshake against the files as they
    /// are now; with ECDSA P-256 that costs well under a millisecond.
    ///
    /// Revocation lists are not consulted: instance certificates live hours, so their expiry
    /// bounds how long a stolen key is useful. An app that needs more can check the peer's
    /// serial against the CA's CRL (`GET /v1/crl/{authority_id}`).
    pub fn server_config(&self) -> Result<ServerConfig, MtlsError> {
        let provider = provider();
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_client_cert_verifier(Arc::new(CurrentClientVerifier::new(
                self.shared.clone(),
                provider,
            )))
            .with_cert_resolver(Arc::new(CurrentCertificate::new(self.shared.clone())));
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(config)
    }

    /// A client configuration (TLS 1.3 and 1.2) that presents the current certificate and
    /// accepts a server whose certificate chains to the current trust bundle and names the
    /// server name of the connection (an instance GUID, an internal route, an IP SAN).
    /// Session resumption is off, for the reasons given at [`Credentials::server_config`].
    pub fn client_config(&self) -> Result<ClientConfig, MtlsError> {
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .dangerous()
            // "dangerous" only because it is custom: it delegates every check to rustls'
            // own WebPKI verifier for the current bundle.
            .with_custom_certificate_verifier(Arc::new(CurrentServerVerifier::new(
                self.shared.clone(),
            )))
            .with_client_cert_resolver(Arc::new(CurrentCertificate::new(self.shared.clone())));
        config.resumption = rustls::client::Resumption::disabled();
        Ok(config)
    }
}
