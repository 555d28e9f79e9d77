//! PKCS#10 requests: parse, check the key type, verify the self-signature.
//!
//! Only the public key of a request is ever used; its subject and requested extensions are
//! ignored on purpose (a CSR asking for `CA:TRUE` gets a leaf all the same).

use const_oid::db::{rfc5912, rfc8410};
use der::asn1::{AnyRef, BitStringRef, ObjectIdentifier, UintRef};
use der::{Decode, Encode, Reader, SliceReader, Tagged};
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use x509_cert::spki::{AlgorithmIdentifierRef, SubjectPublicKeyInfoOwned, SubjectPublicKeyInfoRef};

use super::X509Error;

/// The kinds of subject key Lanyard accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// EC P-256.
    EcP256,
    /// EC P-384.
    EcP384,
    /// RSA with the modulus size in bits (2048 to 4096).
    Rsa(usize),
    /// Ed25519.
    Ed25519,
}

impl KeyKind {
    /// RSA subject keys also get `keyEncipherment`.
    pub(crate) fn is_rsa(self) -> bool {
        matches!(self, KeyKind::Rsa(_))
    }
}

/// A request whose signature verified: what is left of it is its public key.
#[derive(Debug, Clone)]
pub(crate) struct VerifiedCsr {
    /// The subject public key, re-encoded canonically for the certificate.
    pub public_key: SubjectPublicKeyInfoOwned,
    /// Its kind.
    pub key_kind: KeyKind,
}

#[derive(der::Sequence)]
struct RsaPublicKey<'a> {
    modulus: UintRef<'a>,
    public_exponent: UintRef<'a>,
}

/// Parses a PEM (or DER) CSR, checks its key, verifies its signature.
///
/// The signature is checked over the `CertificationRequestInfo` bytes exactly as they came
/// (not a re-encoding of the parsed value), and nothing the key check does not need is
/// decoded or copied: the subject and attributes are only skipped over.
pub(crate) fn verify_csr(input: &[u8]) -> Result<VerifiedCsr, X509Error> {
    let pem_der;
    let der: &[u8] = if input.trim_ascii_start().starts_with(b"-----BEGIN") {
        let mut blocks = super::pem::decode_all(input)
            .map_err(|e| X509Error::MalformedCsr(format!("not PEM: {e}")))?;
        if blocks.len() != 1 {
            return Err(X509Error::MalformedCsr(format!(
                "expected exactly one PEM block, found {}",
                blocks.len()
            )));
        }
        let p = blocks.remove(0);
        if p.label != "CERTIFICATE REQUEST" && p.label != "NEW CERTIFICATE REQUEST" {
            return Err(X509Error::MalformedCsr(format!(
                "PEM block is `{}`, expected `CERTIFICATE REQUEST`",
                p.label
            )));
        }
        pem_der = p.der;
        &pem_der
    } else {
        input
    };
    let req = RawCertReq::parse(der)
        .map_err(|e| X509Error::MalformedCsr(format!("not a PKCS#10 request: {e}")))?;
    let spki = &req.public_key;
    let key_bytes = spki.subject_public_key.raw_bytes();
    let key_kind = key_kind(spki)?;
    let sig_oid = req.signature_algorithm;
    let alg: &'static dyn VerificationAlgorithm = match (key_kind, sig_oid) {
        (KeyKind::EcP256, o) if o == rfc5912::ECDSA_WITH_SHA_256 => {
            &signature::ECDSA_P256_SHA256_ASN1
        }
        (KeyKind::EcP256, o) if o == rfc5912::ECDSA_WITH_SHA_384 => {
            &signature::ECDSA_P256_SHA384_ASN1
        }
        (KeyKind::EcP384, o) if o == rfc5912::ECDSA_WITH_SHA_256 => {
            &signature::ECDSA_P384_SHA256_ASN1
        }
        (KeyKind::EcP384, o) if o == rfc5912::ECDSA_WITH_SHA_384 => {
            &signature::ECDSA_P384_SHA384_ASN1
        }
        (KeyKind::Rsa(_), o) if o == rfc5912::SHA_256_WITH_RSA_ENCRYPTION => {
            &signature::RSA_PKCS1_2048_8192_SHA256
        }
        (KeyKind::Rsa(_), o) if o == rfc5912::SHA_384_WITH_RSA_ENCRYPTION => {
            &signature::RSA_PKCS1_2048_8192_SHA384
        }
        (KeyKind::Rsa(_), o) if o == rfc5912::SHA_512_WITH_RSA_ENCRYPTION => {
            &signature::RSA_PKCS1_2048_8192_SHA512
        }
        (KeyKind::Ed25519, o) if o == rfc8410::ID_ED_25519 => &signature::ED25519,
        (_, o) => {
            return Err(X509Error::UnsupportedKey(format!(
                "signature algorithm {o} is not accepted for this key type"
            )))
        }
    };
    let sig = req
        .signature
        .as_bytes()
        .ok_or_else(|| X509Error::MalformedCsr("signature has unused bits".into()))?;
    UnparsedPublicKey::new(alg, key_bytes)
        .verify(req.info, sig)
        .map_err(|_| X509Error::BadCsrSignature)?;
    Ok(VerifiedCsr {
        public_key: canonical_spki(key_kind, key_bytes)?,
        key_kind,
    })
}

/// Rebuilds the SubjectPublicKeyInfo from the key alone, with the algorithm identifier
/// written by us: nothing the requester put around its key (odd parameters, trailing
/// bytes) reaches a signed certificate.
fn canonical_spki(kind: KeyKind, key: &[u8]) -> Result<SubjectPublicKeyInfoOwned, X509Error> {
    use der::asn1::{BitString, Null};
    use x509_cert::spki::AlgorithmIdentifierOwned;
    let bad = |m: &str| X509Error::UnsupportedKey(m.to_string());
    let (oid, parameters, bits) = match kind {
        KeyKind::EcP256 | KeyKind::EcP384 => {
            let (curve, len) = if kind == KeyKind::EcP256 {
                (rfc5912::SECP_256_R_1, 65)
            } else {
                (rfc5912::SECP_384_R_1, 97)
            };
            if key.len() != len || key[0] != 4 {
                return Err(bad("EC public key is not an uncompressed point"));
            }
            (
                rfc5912::ID_EC_PUBLIC_KEY,
                Some(der::Any::encode_from(&curve)?),
                key.to_vec(),
            )
        }
        KeyKind::Rsa(_) => {
            let k = RsaPublicKey::from_der(key).map_err(|_| bad("RSA public key is malformed"))?;
            (
                rfc5912::RSA_ENCRYPTION,
                Some(der::Any::encode_from(&Null)?),
                k.to_der()?,
            )
        }
        KeyKind::Ed25519 => {
            if key.len() != 32 {
                return Err(bad("Ed25519 public key is not 32 bytes"));
            }
            (rfc8410::ID_ED_25519, None, key.to_vec())
        }
    };
    Ok(SubjectPublicKeyInfoOwned {
        algorithm: AlgorithmIdentifierOwned { oid, parameters },
        subject_public_key: BitString::from_bytes(&bits)?,
    })
}

/// A PKCS#10 request as signed: the `CertificationRequestInfo` bytes as they came, the key
/// in them, the signature algorithm and the signature.
struct RawCertReq<'a> {
    info: &'a [u8],
    public_key: SubjectPublicKeyInfoRef<'a>,
    signature_algorithm: ObjectIdentifier,
    signature: BitStringRef<'a>,
}

impl<'a> RawCertReq<'a> {
    /// `CertificationRequest ::= SEQUENCE { certificationRequestInfo, signatureAlgorithm,
    /// signature }` with `CertificationRequestInfo ::= SEQUENCE { version (0), subject,
    /// subjectPKInfo, [0] attributes }`; trailing data anywhere is refused.
    fn parse(der: &'a [u8]) -> der::Result<Self> {
        let mut outer = SliceReader::new(der)?;
        let req = outer.sequence(|r| {
            let info = r.tlv_bytes()?;
            let algorithm = AlgorithmIdentifierRef::decode(r)?;
            let signature = BitStringRef::decode(r)?;
            let mut inner = SliceReader::new(info)?;
            let public_key = inner.sequence(|i| {
                if u8::decode(i)? != 0 {
                    return Err(der::ErrorKind::Value {
                        tag: der::Tag::Integer,
                    }
                    .into());
                }
                // The subject must be a SEQUENCE; its contents are never used.
                let subject = AnyRef::decode(i)?;
                subject.tag().assert_eq(der::Tag::Sequence)?;
                let spki = SubjectPublicKeyInfoRef::decode(i)?;
                // The attributes, [0] IMPLICIT SET OF.
                let attrs = AnyRef::decode(i)?;
                if attrs.tag()
                    != (der::Tag::ContextSpecific {
                        constructed: true,
                        number: der::TagNumber::N0,
                    })
                {
                    return Err(attrs.tag().unexpected_error(None));
                }
                Ok(spki)
            })?;
            inner.finish(())?;
            Ok(RawCertReq {
                info,
                public_key,
                signature_algorithm: algorithm.oid,
                signature,
            })
        })?;
        outer.finish(req)
    }
}

fn key_kind(spki: &SubjectPublicKeyInfoRef<'_>) -> Result<KeyKind, X509Error> {
    let oid = spki.algorithm.oid;
    if oid == rfc5912::ID_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
            .ok_or_else(|| X509Error::UnsupportedKey("EC key without a named curve".into()))?;
        if curve == rfc5912::SECP_256_R_1 {
            Ok(KeyKind::EcP256)
        } else if curve == rfc5912::SECP_384_R_1 {
            Ok(KeyKind::EcP384)
        } else {
            Err(X509Error::UnsupportedKey(format!(
                "EC curve {curve} is not accepted (use P-256 or P-384)"
            )))
        }
    } else if oid == rfc5912::RSA_ENCRYPTION {
        let key = RsaPublicKey::from_der(spki.subject_public_key.raw_bytes())
            .map_err(|_| X509Error::UnsupportedKey("RSA public key is malformed".into()))?;
        let m = key.modulus.as_bytes();
        let bits = match m.first() {
            Some(first) => m.len() * 8 - first.leading_zeros() as usize,
            None => 0,
        };
        if !(2048..=4096).contains(&bits) {
            return Err(X509Error::UnsupportedKey(format!(
                "RSA key of {bits} bits is not accepted (2048 to 4096)"
            )));
        }
        Ok(KeyKind::Rsa(bits))
    } else if oid == rfc8410::ID_ED_25519 {
        Ok(KeyKind::Ed25519)
    } else {
        Err(X509Error::UnsupportedKey(format!(
            "key algorithm {oid} is not accepted (EC P-256, P-384, RSA 2048-4096, Ed25519)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr_for(alg: &'static rcgen::SignatureAlgorithm) -> String {
        let kp = rcgen::KeyPair::generate_for(alg).unwrap();
        rcgen::CertificateParams::new(vec!["x.example".into()])
            .unwrap()
            .serialize_request(&kp)
            .unwrap()
            .pem()
            .unwrap()
    }

    #[test]
    fn p256_p384_and_ed25519_requests_verify() {
        assert_eq!(
            verify_csr(csr_for(&rcgen::PKCS_ECDSA_P256_SHA256).as_bytes())
                .unwrap()
                .key_kind,
            KeyKind::EcP256
        );
        assert_eq!(
            verify_csr(csr_for(&rcgen::PKCS_ECDSA_P384_SHA384).as_bytes())
                .unwrap()
                .key_kind,
            KeyKind::EcP384
        );
        assert_eq!(
            verify_csr(csr_for(&rcgen::PKCS_ED25519).as_bytes())
                .unwrap()
                .key_kind,
            KeyKind::Ed25519
        );
    }

    #[test]
    fn a_request_with_a_broken_signature_is_refused() {
        let pem_text = csr_for(&rcgen::PKCS_ECDSA_P256_SHA256);
        let mut der = pem::parse(&pem_text).unwrap().into_contents();
        let n = der.len();
        der[n - 5] ^= 0x55;
        let e = verify_csr(&der).unwrap_err();
        assert!(
            matches!(e, X509Error::BadCsrSignature | X509Error::MalformedCsr(_)),
            "{e}"
        );
    }

    #[test]
    fn der_input_and_trailing_bytes_are_handled() {
        let pem_text = csr_for(&rcgen::PKCS_ECDSA_P256_SHA256);
        let mut der = pem::parse(&pem_text).unwrap().into_contents();
        assert_eq!(verify_csr(&der).unwrap().key_kind, KeyKind::EcP256);
        der.push(0);
        assert!(matches!(
            verify_csr(&der).unwrap_err(),
            X509Error::MalformedCsr(_)
        ));
    }

    #[test]
    fn an_openssl_style_request_with_crlf_line_endings_verifies() {
        let pem_text = csr_for(&rcgen::PKCS_ECDSA_P256_SHA256).replace('\n', "\r\n");
        assert_eq!(
            verify_csr(pem_text.as_bytes()).unwrap().key_kind,
            KeyKind::EcP256
        );
    }

    #[test]
    fn two_requests_in_one_field_are_refused() {
        let one = csr_for(&rcgen::PKCS_ECDSA_P256_SHA256);
        let two = format!("{one}{one}");
        assert!(
            matches!(verify_csr(two.as_bytes()).unwrap_err(), X509Error::MalformedCsr(m) if m.contains("exactly one"))
        );
    }

    #[test]
    fn garbage_is_a_malformed_request() {
        assert!(matches!(
            verify_csr(b"hello").unwrap_err(),
            X509Error::MalformedCsr(_)
        ));
        assert!(matches!(
            verify_csr(
                b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
            )
            .unwrap_err(),
            X509Error::MalformedCsr(_)
        ));
    }
}
