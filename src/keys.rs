//! The key-encryption key (KEK) and sealing of private keys at rest.
//!
//! Every CA private key is stored only as AES-256-GCM ciphertext under the KEK, with the
//! key's purpose as associated data so a sealed blob cannot be swapped for another one.
//! Plaintext key material lives in [`zeroize::Zeroizing`] buffers and never in `Debug`.

use std::fmt;
use std::path::Path;

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// Errors of the key layer.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The KEK is missing where one is required.
    #[error("no key-encryption key: set LANYARD_KEK or create keys.kek_file ({0})")]
    Missing(String),
    /// The KEK is not base64 of 32 bytes.
    #[error("the key-encryption key from {0} is not base64 of 32 bytes")]
    Malformed(String),
    /// The KEK file can be read by others than its owner.
    #[error("the key-encryption key file {0} is readable by group or others; chmod 600 it")]
    Exposed(String),
    /// A sealed value did not open: wrong KEK or tampered data.
    #[error("a sealed key did not decrypt: the key-encryption key does not match this state (wrong LANYARD_KEK or keys.kek_file?)")]
    WrongKek,
    /// File system failure while reading or writing the KEK file.
    #[error("key file {path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The OS random generator failed.
    #[error("the operating system's random generator failed")]
    Random,
}

/// The 32-byte key-encryption key.
pub(crate) struct Kek(Zeroizing<[u8; 32]>);

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Kek(...)")
    }
}

impl Kek {
    /// Builds a KEK from raw bytes (tests: a real KEK comes from the environment or its file).
    #[cfg(test)]
    pub(crate) fn from_bytes(b: [u8; 32]) -> Self {
        Kek(Zeroizing::new(b))
    }

    /// Draws a new KEK from the OS CSPRNG.
    pub(crate) fn generate() -> Result<Self, KeyError> {
        let mut b = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(&mut b[..])
            .map_err(|_| KeyError::Random)?;
        Ok(Kek(b))
    }

    fn from_base64(text: &str, source: &str) -> Result<Self, KeyError> {
        let raw = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|_| KeyError::Malformed(source.to_string()))?,
        );
        let arr: [u8; 32] = raw
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::Malformed(source.to_string()))?;
        Ok(Kek(Zeroizing::new(arr)))
    }

    /// Loads the KEK: `LANYARD_KEK` (base64) wins over `file`. Returns `None` when neither
    /// exists, so only `init` decides to create one.
    pub(crate) fn load(file: Option<&Path>) -> Result<Option<Self>, KeyError> {
        if let Ok(v) = std::env::var("LANYARD_KEK") {
            return Kek::from_base64(&v, "LANYARD_KEK").map(Some);
        }
        let Some(path) = file else { return Ok(None) };
        if let Ok(meta) = std::fs::metadata(path) {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(KeyError::Exposed(path.display().to_string()));
            }
        }
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let text = Zeroizing::new(text);
                Kek::from_base64(&text, &path.display().to_string()).map(Some)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(KeyError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Writes the KEK to `path` as base64 with mode 0600, refusing to overwrite a file.
    pub(crate) fn write_new_file(&self, path: &Path) -> Result<(), KeyError> {
        let io = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let text = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&self.0[..]));
        crate::fsutil::write_new_private_file(path, text.as_bytes()).map_err(io)
    }

    fn key(&self) -> LessSafeKey {
        // Cannot fail: AES_256_GCM takes exactly 32 bytes and the KEK is 32 bytes.
        let unbound = UnboundKey::new(&AES_256_GCM, &self.0[..]).expect("32-byte AES key");
        LessSafeKey::new(unbound)
    }

    /// Encrypts `plaintext`, binding it to `purpose` (for example `root/3`).
    /// The result is `nonce || ciphertext || tag`.
    pub(crate) fn seal(&self, purpose: &str, plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| KeyError::Random)?;
        let mut buf = plaintext.to_vec();
        self.key()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(purpose.as_bytes()),
                &mut buf,
            )
            .map_err(|_| KeyError::Random)?;
        let mut out = Vec::with_capacity(NONCE_LEN + buf.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// Decrypts what [`Kek::seal`] produced for the same `purpose`.
    pub(crate) fn open(
        &self,
        purpose: &str,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(KeyError::WrongKek);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| KeyError::WrongKek)?;
        let mut buf = Zeroizing::new(body.to_vec());
        let plain_len = self
            .key()
            .open_in_place(nonce, Aad::from(purpose.as_bytes()), &mut buf)
            .map_err(|_| KeyError::WrongKek)?
            .len();
        buf.truncate(plain_len);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_key_opens_with_the_same_kek_and_purpose() {
        let kek = Kek::generate().unwrap();
        let sealed = kek.seal("root/1", b"secret key bytes").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            &kek.open("root/1", &sealed).unwrap()[..],
            b"secret key bytes"
        );
    }

    #[test]
    fn a_wrong_kek_is_refused_with_a_clear_error() {
        let sealed = Kek::generate().unwrap().seal("root/1", b"k").unwrap();
        let other = Kek::generate().unwrap();
        let e = other.open("root/1", &sealed).unwrap_err();
        assert!(matches!(e, KeyError::WrongKek));
        assert!(e.to_string().contains("does not match"));
    }

    #[test]
    fn a_sealed_key_does_not_open_for_another_purpose() {
        let kek = Kek::generate().unwrap();
        let sealed = kek.seal("root/1", b"k").unwrap();
        assert!(kek.open("intermediate/1", &sealed).is_err());
        assert!(kek.open("root/1", &sealed[..10]).is_err());
    }

    #[test]
    fn a_kek_file_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        Kek::generate().unwrap().write_new_file(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::env::remove_var("LANYARD_KEK");
        assert!(matches!(Kek::load(Some(&path)), Err(KeyError::Exposed(_))));
    }

    #[test]
    fn the_kek_never_shows_in_debug_output() {
        let kek = Kek::from_bytes([7u8; 32]);
        assert_eq!(format!("{kek:?}"), "Kek(...)");
    }

    #[test]
    fn a_kek_file_is_written_0600_and_read_back_but_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        let kek = Kek::generate().unwrap();
        kek.write_new_file(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(kek.write_new_file(&path).is_err());
        let sealed = kek.seal("p", b"x").unwrap();
        std::env::remove_var("LANYARD_KEK");
        let loaded = Kek::load(Some(&path)).unwrap().unwrap();
        assert_eq!(&loaded.open("p", &sealed).unwrap()[..], b"x");
    }
}
