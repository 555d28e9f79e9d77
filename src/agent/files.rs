//! The file names of an instance directory and the set written into it (see
//! [`crate::atomic_dir`] for how the set is swapped).

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Certificate chain file name.
pub const CERT_FILE: &str = "instance.crt";
/// Private key file name.
pub const KEY_FILE: &str = "instance.key";
/// Trust bundle file name.
pub const BUNDLE_FILE: &str = "trust-bundle.crt";
/// The directory `CF_SYSTEM_CERT_PATH` names: it holds only the trust bundle, so tooling that
/// imports every file there as a trust anchor never picks up the instance's own certificate
/// or key.
pub const SYSTEM_CERTS_DIR: &str = "system-certs";

/// How long a replaced version stays on disk for readers that resolved it just before the
/// switch.
pub const OLD_VERSION_GRACE: Duration = Duration::from_secs(5);

/// One credential set.
pub struct CredentialSet<'a> {
    /// PEM chain.
    pub chain_pem: &'a str,
    /// PKCS#8 PEM key.
    pub key_pem: &'a str,
    /// PEM roots.
    pub bundle_pem: &'a str,
}

/// Writes the set atomically; returns the previous version directory.
pub fn write_set(dir: &Path, set: &CredentialSet<'_>) -> std::io::Result<Option<PathBuf>> {
    let system_bundle = format!("{SYSTEM_CERTS_DIR}/{BUNDLE_FILE}");
    crate::atomic_dir::write_set(
        dir,
        &[
            (CERT_FILE, set.chain_pem.as_bytes(), 0o644),
            (KEY_FILE, set.key_pem.as_bytes(), 0o600),
            (BUNDLE_FILE, set.bundle_pem.as_bytes(), 0o644),
            (&system_bundle, set.bundle_pem.as_bytes(), 0o644),
        ],
    )
}

/// Reads the current set: chain, key, bundle.
pub fn read_set(dir: &Path) -> std::io::Result<(String, zeroize::Zeroizing<String>, String)> {
    Ok((
        crate::atomic_dir::read(dir, CERT_FILE)?,
        zeroize::Zeroizing::new(crate::atomic_dir::read(dir, KEY_FILE)?),
        crate::atomic_dir::read(dir, BUNDLE_FILE)?,
    ))
}
