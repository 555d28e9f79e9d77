//! Building and signing certificates with `x509-cert`, signing with `ring`.
//!
//! rcgen keeps one value per attribute type in a subject, so the Diego-compatible subject
//! with three `OU`s is built here by hand. Every extension of every certificate Lanyard
//! issues is decided in this file; nothing is copied from a request.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use const_oid::db::{rfc4519, rfc5280, rfc5912};
use der::asn1::{AnyRef, BitString, Ia5String, OctetString, UtcTime, Utf8StringRef};
use der::{Any, DateTime, Decode, Encode};
use ring::rand::SystemRandom;
use ring::signature::EcdsaKeyPair;
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages,
    SubjectAltName, SubjectKeyIdentifier,
};
use x509_cert::ext::Extension;
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::time::{Time, Validity};
use x509_cert::{TbsCertificate, Version};

use super::X509Error;
use crate::ids::Serial;

/// One subject attribute.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Attr<'a> {
    /// organizationName
    O(&'a str),
    /// organizationalUnitName
    Ou(&'a str),
    /// commonName
    Cn(&'a str),
}

/// Builds a subject of single-valued RDNs in the given order.
pub(crate) fn subject(attrs: &[Attr<'_>]) -> Result<Name, X509Error> {
    let mut rdns = Vec::with_capacity(attrs.len());
    for a in attrs {
        let (oid, v) = match a {
            Attr::O(v) => (rfc4519::O, v),
            Attr::Ou(v) => (rfc4519::OU, v),
            Attr::Cn(v) => (rfc4519::CN, v),
        };
        let value = Any::encode_from(&Utf8StringRef::new(v)?)?;
        let atv = AttributeTypeAndValue { oid, value };
        let set = der::asn1::SetOfVec::try_from(vec![atv])?;
        rdns.push(RelativeDistinguishedName::from(set));
    }
    Ok(RdnSequence(rdns))
}

/// What kind of certificate to build.
#[derive(Debug, Clone)]
pub(crate) enum Profile {
    /// A CA certificate (root or intermediate).
    Ca {
        /// `pathLenConstraint`: `Some(0)` for an intermediate, `None` for a root.
        path_len: Option<u8>,
    },
    /// An end-entity certificate for TLS client and server use.
    Leaf {
        /// Add `keyEncipherment` (RSA subject keys).
        key_encipherment: bool,
        /// `DNS:` SANs, in order.
        dns: Vec<String>,
        /// `IP:` SANs.
        ips: Vec<IpAddr>,
        /// The one URI SAN (SPIFFE ID).
        uri: String,
    },
}

/// Everything a certificate says, apart from who signs it.
#[derive(Debug, Clone)]
pub(crate) struct CertSpec {
    /// Serial number.
    pub serial: Serial,
    /// Subject name.
    pub subject: Name,
    /// Subject public key.
    pub public_key: SubjectPublicKeyInfoOwned,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// CA or leaf, with its names.
    pub profile: Profile,
}

/// The signer of a certificate: a P-256 key, its subject and key identifier.
pub(crate) struct Signer<'a> {
    /// Issuer name written into the certificate.
    pub name: &'a Name,
    /// The issuer's subject key identifier, written as the authority key identifier.
    pub key_id: &'a [u8],
    /// The issuer's private key.
    pub key: &'a EcdsaKeyPair,
}

/// `ecdsa-with-SHA256`, parameters absent (RFC 5758).
pub(crate) fn ecdsa_sha256() -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid: rfc5912::ECDSA_WITH_SHA_256,
        parameters: None,
    }
}

/// The SubjectPublicKeyInfo of a P-256 public key given as an uncompressed point.
pub(crate) fn p256_spki(point: &[u8]) -> Result<SubjectPublicKeyInfoOwned, X509Error> {
    Ok(SubjectPublicKeyInfoOwned {
        algorithm: AlgorithmIdentifierOwned {
            oid: rfc5912::ID_EC_PUBLIC_KEY,
            parameters: Some(Any::encode_from(&rfc5912::SECP_256_R_1)?),
        },
        subject_public_key: BitString::from_bytes(point)?,
    })
}

/// RFC 5280 method 1 key identifier: SHA-1 of the subjectPublicKey bits.
pub(crate) fn key_identifier(spki: &SubjectPublicKeyInfoOwned) -> Vec<u8> {
    ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        spki.subject_public_key.raw_bytes(),
    )
    .as_ref()
    .to_vec()
}

/// An X.509 time: UTCTime before 2050, GeneralizedTime from then on (RFC 5280 4.1.2.5).
pub(crate) fn x509_time(t: SystemTime) -> Result<Time, X509Error> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| X509Error::Encoding("time before 1970".into()))?
        .as_secs();
    let dt = DateTime::from_unix_duration(Duration::from_secs(secs))?;
    if dt.year() < 2050 {
        Ok(Time::UtcTime(UtcTime::from_date_time(dt)?))
    } else {
        Ok(Time::GeneralTime(
            der::asn1::GeneralizedTime::from_date_time(dt),
        ))
    }
}

fn ext<T: der::oid::AssociatedOid + Encode>(
    value: &T,
    critical: bool,
) -> Result<Extension, X509Error> {
    Ok(Extension {
        extn_id: <T as der::oid::AssociatedOid>::OID,
        critical,
        extn_value: OctetString::new(value.to_der()?)?,
    })
}

fn ia5(s: &str) -> Result<Ia5String, X509Error> {
    Ia5String::new(s).map_err(|_| X509Error::Encoding(format!("`{s}` is not IA5")))
}

/// A signed structure (certificate or CRL) around its "to be signed" part, which is
/// carried as the bytes that were signed: encoded once, not again for the outer structure.
#[derive(der::Sequence)]
struct Signed<'a> {
    tbs: AnyRef<'a>,
    algorithm: AlgorithmIdentifierOwned,
    signature: BitString,
}

/// Encodes `tbs`, signs it with `signer` (ECDSA P-256 SHA-256) and answers the DER of the
/// signed structure.
fn sign_der<T: Encode>(signer: &Signer<'_>, tbs: &T) -> Result<Vec<u8>, X509Error> {
    let tbs_der = tbs.to_der()?;
    let sig = signer
        .key
        .sign(&SystemRandom::new(), &tbs_der)
        .map_err(|_| X509Error::Encoding("ECDSA signing failed".into()))?;
    Ok(Signed {
        tbs: AnyRef::from_der(&tbs_der)?,
        algorithm: ecdsa_sha256(),
        signature: BitString::from_bytes(sig.as_ref())?,
    }
    .to_der()?)
}

/// Builds the TBS, signs it with `signer` (ECDSA P-256 SHA-256) and returns the DER. The
/// spec is consumed: its subject, key and names move into the certificate uncopied.
pub(crate) fn sign(spec: CertSpec, signer: &Signer<'_>) -> Result<Vec<u8>, X509Error> {
    let subject_key_id = key_identifier(&spec.public_key);
    let mut exts = Vec::with_capacity(6);
    match &spec.profile {
        Profile::Ca { path_len } => {
            exts.push(ext(
                &BasicConstraints {
                    ca: true,
                    path_len_constraint: *path_len,
                },
                true,
            )?);
            exts.push(ext(
                &KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign),
                true,
            )?);
        }
        Profile::Leaf {
            key_encipherment, ..
        } => {
            exts.push(ext(
                &BasicConstraints {
                    ca: false,
                    path_len_constraint: None,
                },
                true,
            )?);
            let mut usage = KeyUsages::DigitalSignature.into();
            if *key_encipherment {
                usage |= KeyUsages::KeyEncipherment;
            }
            exts.push(ext(&KeyUsage(usage), true)?);
            exts.push(ext(
                &ExtendedKeyUsage(vec![rfc5280::ID_KP_SERVER_AUTH, rfc5280::ID_KP_CLIENT_AUTH]),
                false,
            )?);
        }
    }
    exts.push(ext(
        &SubjectKeyIdentifier(OctetString::new(subject_key_id.clone())?),
        false,
    )?);
    // A self-signed root names itself; every other certificate names its issuer's key.
    let self_signed = signer.key_id == subject_key_id.as_slice();
    if !self_signed {
        exts.push(ext(
            &AuthorityKeyIdentifier {
                key_identifier: Some(OctetString::new(signer.key_id)?),
                authority_cert_issuer: None,
                authority_cert_serial_number: None,
            },
            false,
        )?);
    }
    if let Profile::Leaf { dns, ips, uri, .. } = &spec.profile {
        let mut names = Vec::with_capacity(dns.len() + ips.len() + 1);
        for d in dns {
            names.push(GeneralName::DnsName(ia5(d)?));
        }
        for ip in ips {
            names.push(GeneralName::from(*ip));
        }
        names.push(GeneralName::UniformResourceIdentifier(ia5(uri)?));
        exts.push(ext(&SubjectAltName(names), false)?);
    }
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(spec.serial.as_bytes())?,
        signature: ecdsa_sha256(),
        issuer: signer.name.clone(),
        validity: Validity {
            not_before: x509_time(spec.not_before)?,
            not_after: x509_time(spec.not_after)?,
        },
        subject: spec.subject,
        subject_public_key_info: spec.public_key,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(exts),
    };
    sign_der(signer, &tbs)
}

/// The RFC 5280 reason code for a reason an operator gave by its RFC name
/// (`keyCompromise`, `superseded`, ...); free text gets none.
pub(crate) fn crl_reason(reason: &str) -> Option<x509_cert::ext::pkix::CrlReason> {
    use x509_cert::ext::pkix::CrlReason as R;
    Some(match reason.to_ascii_lowercase().as_str() {
        "unspecified" => R::Unspecified,
        "keycompromise" => R::KeyCompromise,
        "cacompromise" => R::CaCompromise,
        "affiliationchanged" => R::AffiliationChanged,
        "superseded" => R::Superseded,
        "cessationofoperation" => R::CessationOfOperation,
        "certificatehold" => R::CertificateHold,
        "privilegewithdrawn" => R::PrivilegeWithdrawn,
        "aacompromise" => R::AaCompromise,
        _ => return None,
    })
}

/// Builds and signs a CRL (v2) for `signer` listing `revoked` (serial, revocation time), with
/// the authority key identifier and a CRL number.
pub(crate) fn sign_crl(
    signer: &Signer<'_>,
    revoked: &[(Serial, SystemTime, Option<String>)],
    this_update: SystemTime,
    next_update: SystemTime,
    number: u64,
) -> Result<Vec<u8>, X509Error> {
    use x509_cert::crl::{RevokedCert, TbsCertList};
    use x509_cert::ext::pkix::CrlNumber;
    let mut entries = Vec::with_capacity(revoked.len());
    for (serial, at, reason) in revoked {
        let code = reason.as_deref().and_then(crl_reason);
        entries.push(RevokedCert {
            serial_number: SerialNumber::new(serial.as_bytes())?,
            revocation_date: x509_time(*at)?,
            crl_entry_extensions: code.map(|c| ext(&c, false)).transpose()?.map(|e| vec![e]),
        });
    }
    let exts = vec![
        ext(
            &AuthorityKeyIdentifier {
                key_identifier: Some(OctetString::new(signer.key_id)?),
                authority_cert_issuer: None,
                authority_cert_serial_number: None,
            },
            false,
        )?,
        ext(
            &CrlNumber(der::asn1::Uint::new(&number.to_be_bytes())?),
            false,
        )?,
    ];
    let tbs = TbsCertList {
        version: Version::V2,
        signature: ecdsa_sha256(),
        issuer: signer.name.clone(),
        this_update: x509_time(this_update)?,
        next_update: Some(x509_time(next_update)?),
        revoked_certificates: (!entries.is_empty()).then_some(entries),
        crl_extensions: Some(exts),
    };
    sign_der(signer, &tbs)
}

/// Encodes DER certificates as concatenated PEM blocks.
pub(crate) fn pem_chain<'a>(ders: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut out = String::new();
    for d in ders {
        super::pem::encode_into(&mut out, "CERTIFICATE", d);
    }
    out
}
