//! Credential directories as operators and tools use them: `cert.pem`, `key.pem` and
//! `trust-bundle.pem`, plain files in one directory.

use std::path::Path;

/// The PEM chain: leaf, then intermediate.
pub(crate) const CERT_FILE: &str = "cert.pem";
/// The PKCS#8 PEM private key (mode 0600).
pub(crate) const KEY_FILE: &str = "key.pem";
/// Every published root (PEM).
pub(crate) const BUNDLE_FILE: &str = "trust-bundle.pem";

/// Writes a credential directory, each file replaced atomically. The key goes first, so the
/// only moment the two files disagree is during a renewal that changes the key, which is
/// always an explicit operator action.
pub(crate) fn write_credential_dir(
    dir: &Path,
    chain_pem: &str,
    key_pem: &str,
    bundle_pem: &str,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    crate::fsutil::write_atomic(&dir.join(KEY_FILE), key_pem.as_bytes(), 0o600)?;
    crate::fsutil::write_atomic(&dir.join(CERT_FILE), chain_pem.as_bytes(), 0o644)?;
    crate::fsutil::write_atomic(&dir.join(BUNDLE_FILE), bundle_pem.as_bytes(), 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_key_is_private_and_the_rest_readable() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("c");
        write_credential_dir(&dir, "CHAIN", "KEY", "BUNDLE").unwrap();
        let mode = |n: &str| std::fs::metadata(dir.join(n)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(KEY_FILE), 0o600);
        assert_eq!(mode(CERT_FILE), 0o644);
        assert_eq!(
            std::fs::read_to_string(dir.join(BUNDLE_FILE)).unwrap(),
            "BUNDLE"
        );
    }
}
