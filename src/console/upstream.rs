//! The console's side of the CA: an [`ApiClient`] with the operator credential, rebuilt when
//! the credential directory changes on disk.
//!
//! The CA rewrites its local operator credential (`cert.pem`, `key.pem`, `trust-bundle.pem`)
//! when a new generation becomes active, and `lanyard credential renew` rewrites any other
//! one; a console that kept the files it read at start would stop trusting the server's
//! certificate after the next rotation. Checking three files' metadata per request costs
//! microseconds, so the console follows them without a watcher thread.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::de::DeserializeOwned;

use crate::client::{ApiClient, ClientError, CredentialFiles};
use crate::credential_dir::{BUNDLE_FILE, CERT_FILE, KEY_FILE};
use crate::timefmt::rfc3339;
use crate::x509::inspect::{parse_pem_certs, CertInfo};

/// What identifies one version of a file: modification time, length and inode. An atomic
/// rename always changes the inode, so a rewrite within one clock tick is seen too.
type FileStamp = Option<(SystemTime, u64, u64)>;

fn stamp(dir: &Path) -> [FileStamp; 3] {
    [CERT_FILE, KEY_FILE, BUNDLE_FILE].map(|name| {
        let m = std::fs::metadata(dir.join(name)).ok()?;
        #[cfg(unix)]
        let ino = std::os::unix::fs::MetadataExt::ino(&m);
        #[cfg(not(unix))]
        let ino = 0;
        Some((m.modified().ok()?, m.len(), ino))
    })
}

/// Who the console is to the CA: its certificate's SPIFFE ID and end of validity. Public
/// facts of the certificate; the key is never read into anything the browser gets.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct Identity {
    /// The operator certificate's URI SAN, if the directory has a certificate.
    pub spiffe_id: Option<String>,
    /// Its notAfter (RFC 3339).
    pub not_after: Option<String>,
}

fn identity(files: &CredentialFiles) -> Identity {
    let info = files
        .chain_pem
        .as_deref()
        .and_then(|pem| parse_pem_certs(pem.as_bytes()).ok())
        .and_then(|ders| ders.into_iter().next())
        .and_then(|der| CertInfo::from_der(&der).ok());
    Identity {
        spiffe_id: info
            .as_ref()
            .and_then(|i| i.spiffe_id().map(str::to_string)),
        not_after: info.map(|i| rfc3339(i.not_after)),
    }
}

struct Loaded {
    stamp: [FileStamp; 3],
    client: ApiClient,
    identity: Identity,
}

/// The CA as the console reaches it. See the module docs.
pub(crate) struct Upstream {
    dir: PathBuf,
    loaded: Mutex<Loaded>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// A client for `servers` (in order, failing over as every client command does) with the
    /// credential in `dir`.
    pub(crate) fn new(servers: &[String], dir: &Path) -> Result<Self, ClientError> {
        let stamp = stamp(dir);
        // One read of the files for both, so the identity shown is the one the client presents.
        let files = CredentialFiles::read(dir)?;
        let client = ApiClient::new_failover(servers, files.tls_config()?)?;
        Ok(Upstream {
            dir: dir.to_path_buf(),
            loaded: Mutex::new(Loaded {
                stamp,
                client,
                identity: identity(&files),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Loaded> {
        // Every update replaces whole fields: a panic elsewhere cannot leave it half-made.
        self.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current client, rebuilt first if the credential files changed since they were
    /// read. A set that does not load (a certificate already replaced, its key not yet) keeps
    /// the previous client; the next change of the files is tried again.
    fn client(&self) -> ApiClient {
        let now = stamp(&self.dir);
        let mut loaded = self.lock();
        if now != loaded.stamp {
            loaded.stamp = now;
            let rebuilt = CredentialFiles::read(&self.dir).and_then(|files| {
                Ok((
                    loaded.client.with_tls(files.tls_config()?)?,
                    identity(&files),
                ))
            });
            match rebuilt {
                Ok((client, identity)) => {
                    tracing::info!(dir = %self.dir.display(), "credential files changed; reloaded them");
                    loaded.client = client;
                    loaded.identity = identity;
                }
                Err(e) => {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "credential files changed but do not load; keeping the previous ones");
                }
            }
        }
        loaded.client.clone()
    }

    /// GETs `path_and_query` from the CA and parses the answer as `R`.
    pub(crate) async fn get<R: DeserializeOwned>(
        &self,
        path_and_query: &str,
    ) -> Result<R, ClientError> {
        self.client().get(path_and_query).await
    }

    /// The CA URLs, in order.
    pub(crate) fn servers(&self) -> Vec<String> {
        self.lock().client.servers().to_vec()
    }

    /// The CA URL that answered last (the first one before any answer).
    pub(crate) fn current_server(&self) -> String {
        self.lock().client.current_server().to_string()
    }

    /// The credential's public identity.
    pub(crate) fn identity(&self) -> Identity {
        self.lock().identity.clone()
    }
}
