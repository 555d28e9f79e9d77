//! CA keys: loading a sealed key with its certificate, and the purposes that bind each
//! sealed key to its place (a key sealed for one generation or role opens nowhere else).

use std::time::SystemTime;

use der::Decode;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use x509_cert::name::Name;
use x509_cert::Certificate;
use zeroize::Zeroizing;

use super::AuthorityError;
use crate::ids::AuthorityId;
use crate::keys::{Kek, KeyError};
use crate::store::{AuthorityRecord, CaKeyRecord};
use crate::x509::build;

/// A CA certificate with its decrypted key, ready to sign.
pub(super) struct LoadedCa {
    /// The certificate as PEM, encoded once: it ends every chain this CA answers.
    pub(super) cert_pem: String,
    pub(super) name: Name,
    pub(super) key_id: Vec<u8>,
    pub(super) key: EcdsaKeyPair,
    pub(super) not_after: SystemTime,
}

impl std::fmt::Debug for LoadedCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoadedCa(...)")
    }
}
pub(super) fn purpose_root(id: AuthorityId) -> String {
    format!("lanyard/root/{id}")
}

pub(super) fn purpose_intermediate(id: AuthorityId, n: usize) -> String {
    format!("lanyard/intermediate/{id}/{n}")
}

pub(super) fn new_key() -> Result<(Zeroizing<Vec<u8>>, EcdsaKeyPair), AuthorityError> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|_| KeyError::Random)?;
    let pkcs8 = Zeroizing::new(pkcs8.as_ref().to_vec());
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8, &rng)
        .map_err(|_| KeyError::Random)?;
    Ok((pkcs8, pair))
}
pub(super) fn load_ca(
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
        cert_pem: build::pem_chain([rec.certificate.as_slice()]),
        key,
        not_after: rec.not_after,
    })
}

pub(super) fn load_intermediate(
    kek: &Kek,
    g: &AuthorityRecord,
) -> Result<LoadedCa, AuthorityError> {
    let n = g.intermediates.len();
    let rec = g
        .intermediates
        .last()
        .ok_or_else(|| AuthorityError::Damaged(g.id, "no intermediate".into()))?;
    load_ca(kek, g.id, rec, &purpose_intermediate(g.id, n))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{opts, setup};
    use super::super::Authority;
    use super::*;

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
}
