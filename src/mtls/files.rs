//! Where the credential files are, and reading them into a consistent set.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ring::digest;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use zeroize::Zeroizing;

use super::MtlsError;
use crate::tls_provider::provider;
use crate::x509::inspect::{parse_pem_certs, CertInfo};

/// The certificate file in an instance credential directory: leaf, then intermediate.
pub const CERT_FILE: &str = "instance.crt";
/// The private key file in an instance credential directory (PKCS#8 PEM, mode 0600).
pub const KEY_FILE: &str = "instance.key";
/// The trust bundle file in an instance credential directory: every published root.
pub const BUNDLE_FILE: &str = "trust-bundle.crt";
/// Environment variable naming the instance certificate file.
pub const ENV_INSTANCE_CERT: &str = "CF_INSTANCE_CERT";
/// Environment variable naming the instance key file.
pub const ENV_INSTANCE_KEY: &str = "CF_INSTANCE_KEY";
/// Environment variable naming the directory that holds `trust-bundle.crt` (or the file).
pub const ENV_SYSTEM_CERT_PATH: &str = "CF_SYSTEM_CERT_PATH";

/// How many times a load is attempted when the files look inconsistent, and the first pause.
const LOAD_ATTEMPTS: u32 = 5;
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(20);

/// The three files that make a credential: certificate chain, private key, trust bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialPaths {
    /// PEM certificate chain, leaf first.
    pub certificate: PathBuf,
    /// PEM private key (PKCS#8; SEC1 and PKCS#1 are accepted too).
    pub private_key: PathBuf,
    /// PEM root certificates to trust.
    pub trust_bundle: PathBuf,
}

impl CredentialPaths {
    /// The cell agent's layout: `<dir>/instance.crt`, `<dir>/instance.key`,
    /// `<dir>/trust-bundle.crt`.
    pub fn instance_dir(dir: &Path) -> Self {
        CredentialPaths {
            certificate: dir.join(CERT_FILE),
            private_key: dir.join(KEY_FILE),
            trust_bundle: dir.join(BUNDLE_FILE),
        }
    }

    /// The layout `lanyard cert component` writes: `<dir>/cert.pem`, `<dir>/key.pem`,
    /// `<dir>/trust-bundle.pem`.
    pub fn component_dir(dir: &Path) -> Self {
        CredentialPaths {
            certificate: dir.join("cert.pem"),
            private_key: dir.join("key.pem"),
            trust_bundle: dir.join("trust-bundle.pem"),
        }
    }

    /// Whichever of the two layouts `dir` holds (the instance layout wins).
    pub fn detect(dir: &Path) -> Result<Self, MtlsError> {
        let instance = Self::instance_dir(dir);
        if instance.certificate.exists() {
            return Ok(instance);
        }
        let component = Self::component_dir(dir);
        if component.certificate.exists() {
            return Ok(component);
        }
        Err(MtlsError::Invalid {
            path: dir.to_path_buf(),
            message: format!(
                "holds neither {CERT_FILE} (instance credentials) nor cert.pem (component credentials)"
            ),
        })
    }

    /// The files named by `CF_INSTANCE_CERT`, `CF_INSTANCE_KEY` and `CF_SYSTEM_CERT_PATH`.
    pub fn from_env() -> Result<Self, MtlsError> {
        Self::from_lookup(|name| std::env::var_os(name))
    }

    /// Like [`CredentialPaths::from_env`], with variables from `lookup` (for tests and for
    /// apps that keep their environment elsewhere).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Self, MtlsError> {
        let get = |name: &str| {
            lookup(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .ok_or_else(|| MtlsError::Environment(format!("{name} is not set")))
        };
        let system = get(ENV_SYSTEM_CERT_PATH)?;
        // Diego names a directory of certificates; accept a bundle file as well.
        let trust_bundle = if system.is_dir() {
            system.join(BUNDLE_FILE)
        } else {
            system
        };
        Ok(CredentialPaths {
            certificate: get(ENV_INSTANCE_CERT)?,
            private_key: get(ENV_INSTANCE_KEY)?,
            trust_bundle,
        })
    }
}

/// The bytes of the three files, as read at one moment.
struct RawFiles {
    cert: Vec<u8>,
    key: Zeroizing<Vec<u8>>,
    bundle: Vec<u8>,
}

impl RawFiles {
    fn read(paths: &CredentialPaths) -> Result<Self, MtlsError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| MtlsError::Read {
                path: p.to_path_buf(),
                source,
            })
        };
        Ok(RawFiles {
            cert: read(&paths.certificate)?,
            key: Zeroizing::new(read(&paths.private_key)?),
            bundle: read(&paths.trust_bundle)?,
        })
    }

    /// A digest of the three contents, to notice any change cheaply.
    fn fingerprint(&self) -> [u8; 32] {
        let mut ctx = digest::Context::new(&digest::SHA256);
        for part in [&self.cert[..], &self.key[..], &self.bundle[..]] {
            // Length-prefixed so that bytes moving between files still count as a change.
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }
}

/// The digest of the files as they are now; used by the watcher to decide whether to load.
pub(crate) fn current_fingerprint(paths: &CredentialPaths) -> Result<[u8; 32], MtlsError> {
    Ok(RawFiles::read(paths)?.fingerprint())
}

/// A loaded, self-consistent credential set and what rustls needs from it.
pub(crate) struct Material {
    /// The chain and the signing key.
    pub certified: Arc<CertifiedKey>,
    /// Verifies client certificates against this set's bundle.
    pub client_verifier: Arc<dyn ClientCertVerifier>,
    /// Verifies server certificates against this set's bundle.
    pub server_verifier: Arc<WebPkiServerVerifier>,
    /// The leaf, parsed.
    pub leaf: CertInfo,
    /// How many roots the bundle holds.
    pub trust_anchors: usize,
    /// Digest of the files this was built from.
    pub fingerprint: [u8; 32],
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key, not even its algorithm-specific debug form.
        f.debug_struct("Material")
            .field("serial", &self.leaf.serial)
            .field("trust_anchors", &self.trust_anchors)
            .finish_non_exhaustive()
    }
}

/// Loads the files and checks that they belong together. When the key does not match the
/// leaf, or the files changed while they were being read, it reads them again: a writer that
/// swaps the set atomically never causes a retry, one that rewrites files one by one only
/// briefly.
pub(crate) fn load(paths: &CredentialPaths) -> Result<Material, MtlsError> {
    let mut pause = FIRST_RETRY_PAUSE;
    let mut attempt = 1;
    loop {
        let result = RawFiles::read(paths).and_then(|raw| {
            let material = build(paths, &raw)?;
            // Reading the certificate and the key again tells whether a swap happened between
            // the reads; the key check alone would miss a swap that left the old bundle.
            let again = RawFiles::read(paths)?;
            if again.fingerprint() != material.fingerprint {
                return Err(MtlsError::Invalid {
                    path: paths.certificate.clone(),
                    message: "the credential files changed while being read".into(),
                });
            }
            Ok(material)
        });
        match result {
            Ok(m) => return Ok(m),
            Err(e) if attempt >= LOAD_ATTEMPTS => return Err(e),
            Err(_) => {
                std::thread::sleep(pause);
                pause *= 2;
                attempt += 1;
            }
        }
    }
}

fn build(paths: &CredentialPaths, raw: &RawFiles) -> Result<Material, MtlsError> {
    let invalid = |path: &Path, message: String| MtlsError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = parse_pem_certs(&raw.cert)
        .map_err(|e| invalid(&paths.certificate, e.to_string()))?
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let first = chain
        .first()
        .ok_or_else(|| invalid(&paths.certificate, "holds no certificate".into()))?;
    let leaf = CertInfo::from_der(first).map_err(|e| invalid(&paths.certificate, e.to_string()))?;

    let key = private_key(&raw.key).map_err(|m| invalid(&paths.private_key, m))?;
    let provider = provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| invalid(&paths.private_key, format!("the key does not load: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        // ring can tell the public key of every key type it loads; "unknown" cannot happen
        // with it, and would not be a reason to refuse the set.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(MtlsError::KeyMismatch {
                certificate: paths.certificate.clone(),
                key: paths.private_key.clone(),
            })
        }
        Err(e) => return Err(invalid(&paths.certificate, e.to_string())),
    }

    let mut roots = RootCertStore::empty();
    for der in
        parse_pem_certs(&raw.bundle).map_err(|e| invalid(&paths.trust_bundle, e.to_string()))?
    {
        roots
            .add(CertificateDer::from(der))
            .map_err(|e| invalid(&paths.trust_bundle, format!("not a usable root: {e}")))?;
    }
    let trust_anchors = roots.len();
    let roots = Arc::new(roots);
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| invalid(&paths.trust_bundle, e.to_string()))?;
    let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider)
        .build()
        .map_err(|e| invalid(&paths.trust_bundle, e.to_string()))?;

    Ok(Material {
        certified: Arc::new(certified),
        client_verifier,
        server_verifier,
        leaf,
        trust_anchors,
        fingerprint: raw.fingerprint(),
    })
}

/// The one private key in a PEM file.
fn private_key(pem_bytes: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    let blocks = pem::parse_many(pem_bytes).map_err(|e| format!("not PEM: {e}"))?;
    let mut keys = Vec::new();
    for b in blocks {
        let der = b.contents().to_vec();
        let key = match b.tag() {
            "PRIVATE KEY" => PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der)),
            "EC PRIVATE KEY" => PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(der)),
            "RSA PRIVATE KEY" => PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der)),
            _ => continue,
        };
        keys.push(key);
    }
    match keys.len() {
        1 => keys.pop().ok_or_else(|| "no private key".to_string()),
        0 => Err("holds no PRIVATE KEY block".into()),
        n => Err(format!("holds {n} private keys; expected one")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_cert_path_may_name_a_directory_or_a_file() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_path_buf();
        let env = |bundle: PathBuf| {
            move |name: &str| match name {
                ENV_INSTANCE_CERT => Some(OsString::from("/c/instance.crt")),
                ENV_INSTANCE_KEY => Some(OsString::from("/c/instance.key")),
                ENV_SYSTEM_CERT_PATH => Some(bundle.clone().into_os_string()),
                _ => None,
            }
        };
        let p = CredentialPaths::from_lookup(env(dir.clone())).unwrap();
        assert_eq!(p.trust_bundle, dir.join(BUNDLE_FILE));
        let file = dir.join("roots.pem");
        let p = CredentialPaths::from_lookup(env(file.clone())).unwrap();
        assert_eq!(p.trust_bundle, file);
        assert_eq!(p.certificate, PathBuf::from("/c/instance.crt"));
    }

    #[test]
    fn a_missing_variable_is_named() {
        let e = CredentialPaths::from_lookup(|_| None).unwrap_err();
        assert!(e.to_string().contains("CF_SYSTEM_CERT_PATH"), "{e}");
    }

    #[test]
    fn a_key_file_must_hold_exactly_one_key() {
        assert!(private_key(b"").is_err());
        let kp = rcgen::KeyPair::generate().unwrap();
        let one = kp.serialize_pem();
        assert!(private_key(one.as_bytes()).is_ok());
        let two = format!("{one}{one}");
        assert!(private_key(two.as_bytes())
            .unwrap_err()
            .contains("2 private keys"));
    }
}
