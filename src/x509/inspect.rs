//! Reading what a certificate says: subject parts, SANs, validity. Used for roles on the
//! server, by `lanyard inspect`, by the mTLS kit and by tests.

use std::net::IpAddr;
use std::time::SystemTime;

use const_oid::db::rfc4519;
use der::asn1::{PrintableStringRef, Utf8StringRef};
use der::{Decode, Tag, Tagged};
use serde::Serialize;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{AuthorityKeyIdentifier, BasicConstraints, SubjectAltName};
use x509_cert::Certificate;

use super::X509Error;

/// What one certificate says, in plain types.
#[derive(Debug, Clone, Serialize)]
pub struct CertInfo {
    /// Serial, lowercase hex.
    pub serial: String,
    /// Subject, RFC 4514 text.
    pub subject: String,
    /// Issuer, RFC 4514 text.
    pub issuer: String,
    /// The subject's commonName.
    pub common_name: Option<String>,
    /// The subject's organizationalUnitName values, in order.
    pub org_units: Vec<String>,
    /// `DNS:` SANs.
    pub dns_names: Vec<String>,
    /// `IP:` SANs.
    pub ip_addresses: Vec<IpAddr>,
    /// `URI:` SANs.
    pub uris: Vec<String>,
    /// Start of validity.
    #[serde(with = "crate::timefmt::rfc3339_system")]
    pub not_before: SystemTime,
    /// End of validity.
    #[serde(with = "crate::timefmt::rfc3339_system")]
    pub not_after: SystemTime,
    /// basicConstraints CA flag.
    pub is_ca: bool,
    /// Authority key identifier, hex.
    pub authority_key_id: Option<String>,
}

fn attr_text(value: &der::Any) -> Option<String> {
    match value.tag() {
        Tag::Utf8String => value
            .decode_as::<Utf8StringRef<'_>>()
            .ok()
            .map(|s| s.as_str().to_string()),
        Tag::PrintableString => value
            .decode_as::<PrintableStringRef<'_>>()
            .ok()
            .map(|s| s.as_str().to_string()),
        _ => None,
    }
}

impl CertInfo {
    /// Parses a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<CertInfo, X509Error> {
        let cert = Certificate::from_der(der)
            .map_err(|e| X509Error::MalformedCertificate(e.to_string()))?;
        let tbs = &cert.tbs_certificate;
        let mut common_name = None;
        let mut org_units = Vec::new();
        for rdn in tbs.subject.0.iter() {
            for atv in rdn.0.iter() {
                if atv.oid == rfc4519::CN {
                    common_name = attr_text(&atv.value);
                } else if atv.oid == rfc4519::OU {
                    if let Some(t) = attr_text(&atv.value) {
                        org_units.push(t);
                    }
                }
            }
        }
        let mut info = CertInfo {
            serial: hex::encode(tbs.serial_number.as_bytes()),
            subject: tbs.subject.to_string(),
            issuer: tbs.issuer.to_string(),
            common_name,
            org_units,
            dns_names: vec![],
            ip_addresses: vec![],
            uris: vec![],
            not_before: tbs.validity.not_before.to_system_time(),
            not_after: tbs.validity.not_after.to_system_time(),
            is_ca: false,
            authority_key_id: None,
        };
        let bad = |e: der::Error| X509Error::MalformedCertificate(e.to_string());
        if let Some((_, san)) = tbs.get::<SubjectAltName>().map_err(bad)? {
            for n in san.0 {
                match n {
                    GeneralName::DnsName(d) => info.dns_names.push(d.to_string()),
                    GeneralName::UniformResourceIdentifier(u) => info.uris.push(u.to_string()),
                    GeneralName::IpAddress(o) => {
                        let b = o.as_bytes();
                        if let Ok(v4) = <[u8; 4]>::try_from(b) {
                            info.ip_addresses.push(IpAddr::from(v4));
                        } else if let Ok(v6) = <[u8; 16]>::try_from(b) {
                            info.ip_addresses.push(IpAddr::from(v6));
                        }
                    }
                    _ => {}
                }
            }
        }
        if let Some((_, bc)) = tbs.get::<BasicConstraints>().map_err(bad)? {
            info.is_ca = bc.ca;
        }
        if let Some((_, aki)) = tbs.get::<AuthorityKeyIdentifier>().map_err(bad)? {
            info.authority_key_id = aki.key_identifier.map(|k| hex::encode(k.as_bytes()));
        }
        Ok(info)
    }

    /// The value of the `OU=<prefix>:<value>` attribute (Diego's `organization:`, `space:`,
    /// `app:`).
    pub fn ou_value(&self, prefix: &str) -> Option<&str> {
        self.org_units
            .iter()
            .find_map(|ou| ou.strip_prefix(prefix)?.strip_prefix(':'))
    }

    /// The SPIFFE ID: the one `spiffe://` URI SAN.
    pub fn spiffe_id(&self) -> Option<&str> {
        self.uris
            .iter()
            .find(|u| u.starts_with("spiffe://"))
            .map(String::as_str)
    }
}

/// Splits PEM text into DER certificates, skipping other blocks; an input without any
/// certificate is an error.
pub fn parse_pem_certs(text: &[u8]) -> Result<Vec<Vec<u8>>, X509Error> {
    let blocks =
        pem::parse_many(text).map_err(|e| X509Error::MalformedCertificate(e.to_string()))?;
    let mut out = Vec::with_capacity(blocks.len());
    for b in blocks {
        if b.tag() != "CERTIFICATE" {
            continue;
        }
        out.push(b.into_contents());
    }
    if out.is_empty() {
        return Err(X509Error::MalformedCertificate(
            "no CERTIFICATE block found".into(),
        ));
    }
    Ok(out)
}
