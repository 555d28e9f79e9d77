//! The agent's check of each new instance certificate before it is published, as linkerd's
//! identity client does: the certificate carries the instance's key, its chain verifies
//! against the trust bundle, and it names the instance (CN and `DNS:` the instance GUID, and
//! the SPIFFE ID of its app in the cell's trust domain). A CA bug, a compromised replica or
//! a mixed-up answer then keeps the current files instead of publishing a wrong identity.

use der::{Decode, Encode};
use rustls::pki_types::{CertificateDer, UnixTime};
use x509_cert::Certificate;

use super::instances::{InstanceSpec, PutError};
use super::Agent;
use crate::ids::Guid;
use crate::tls_provider::provider;
use crate::x509::inspect::{parse_pem_certs, CertInfo};

/// Why a new certificate was not published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    /// The chain or the key does not parse.
    #[error("the new certificate does not parse: {0}")]
    Unreadable(String),
    /// The certificate's public key is not the instance key's.
    #[error("the new certificate is not for the instance's key")]
    WrongKey,
    /// The chain does not verify against the trust bundle.
    #[error("the new certificate does not chain to the trust bundle: {0}")]
    Untrusted(String),
    /// It names another instance or identity.
    #[error("the new certificate does not name the instance: {0}")]
    WrongName(String),
}

/// What the certificate must name.
pub(crate) struct Expected<'a> {
    /// The instance GUID (CN and a `DNS:` SAN).
    pub guid: &'a str,
    /// The SPIFFE ID (the one URI SAN).
    pub spiffe_id: String,
}

/// The trust domain of a SPIFFE ID (`spiffe://<td>/...`).
fn trust_domain(spiffe_id: &str) -> Option<&str> {
    spiffe_id.strip_prefix("spiffe://")?.split('/').next()
}

/// The SPIFFE ID an instance certificate of `spec` carries in the trust domain of the
/// cell credential `cell_chain_pem`.
pub(crate) fn expected_spiffe_id(cell_chain_pem: &str, spec: &InstanceSpec) -> Option<String> {
    let cell = parse_pem_certs(cell_chain_pem.as_bytes()).ok()?;
    let info = CertInfo::from_der(cell.first()?).ok()?;
    let td = trust_domain(info.spiffe_id()?)?;
    Some(format!(
        "spiffe://{td}/org/{}/space/{}/app/{}",
        spec.organization_guid, spec.space_guid, spec.app_guid
    ))
}

/// Checks a new chain (leaf first) for the PKCS#8 `key_pem` against `bundle_pem`.
pub(crate) fn check(
    chain_pem: &str,
    key_pem: &str,
    bundle_pem: &str,
    expected: &Expected<'_>,
) -> Result<(), Refused> {
    let unreadable = |e: &dyn std::fmt::Display| Refused::Unreadable(e.to_string());
    let chain = parse_pem_certs(chain_pem.as_bytes()).map_err(|e| unreadable(&e))?;
    let leaf = chain
        .first()
        .ok_or_else(|| Refused::Unreadable("no certificate".into()))?;
    let cert = Certificate::from_der(leaf).map_err(|e| unreadable(&e))?;
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| unreadable(&e))?;
    let key = rcgen::KeyPair::from_pem(key_pem).map_err(|e| unreadable(&e))?;
    if spki != key.public_key_der() {
        return Err(Refused::WrongKey);
    }

    let roots = parse_pem_certs(bundle_pem.as_bytes()).map_err(|e| unreadable(&e))?;
    let anchors: Vec<_> = roots
        .iter()
        .filter_map(|r| {
            webpki::anchor_from_trusted_cert(&CertificateDer::from(r.as_slice()))
                .ok()
                .map(|a| a.to_owned())
        })
        .collect();
    let intermediates: Vec<CertificateDer<'_>> = chain[1..]
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let leaf_der = CertificateDer::from(leaf.as_slice());
    let ee = webpki::EndEntityCert::try_from(&leaf_der)
        .map_err(|e| Refused::Untrusted(format!("{e:?}")))?;
    ee.verify_for_usage(
        provider().signature_verification_algorithms.all,
        &anchors,
        &intermediates,
        UnixTime::now(),
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .map_err(|e| Refused::Untrusted(format!("{e:?}")))?;

    let info = CertInfo::from_der(leaf).map_err(|e| unreadable(&e))?;
    if info.common_name.as_deref() != Some(expected.guid) {
        return Err(Refused::WrongName(format!(
            "CN {:?}, not {}",
            info.common_name, expected.guid
        )));
    }
    if !info.dns_names.iter().any(|d| d == expected.guid) {
        return Err(Refused::WrongName(format!("no DNS:{}", expected.guid)));
    }
    if info.uris != [expected.spiffe_id.as_str()] {
        return Err(Refused::WrongName(format!(
            "URI SANs {:?}, not {}",
            info.uris, expected.spiffe_id
        )));
    }
    Ok(())
}

impl Agent {
    /// [`check`] for a certificate the CA just issued for `guid`, against the agent's bundle
    /// and the cell's trust domain; a refusal is logged and keeps the current files.
    pub(super) fn check_issued(
        &self,
        guid: &Guid,
        spec: &InstanceSpec,
        chain_pem: &str,
        key_pem: &str,
    ) -> Result<(), PutError> {
        let cell_chain = self
            .cell
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .chain_pem
            .clone();
        let bundle = self
            .bundle
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone();
        let spiffe_id = expected_spiffe_id(&cell_chain, spec)
            .ok_or_else(|| PutError::Local("the cell credential names no trust domain".into()))?;
        let expected = Expected {
            guid: guid.as_str(),
            spiffe_id,
        };
        check(chain_pem, key_pem, &bundle, &expected).map_err(|e| {
            tracing::error!(instance = %guid, error = %e, "refused a certificate from the CA");
            PutError::Local(e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        SanType,
    };

    use super::*;

    const GUID: &str = "9a1c2f3e-5b6d-4e7f-8a9b-0c1d";
    const SPIFFE: &str = "spiffe://lanyard.internal/org/o1/space/s1/app/a1";

    struct Ca {
        root_pem: String,
        inter: rcgen::Certificate,
        inter_key: KeyPair,
    }

    fn ca() -> Ca {
        let root_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, "root");
        let root = p.self_signed(&root_key).unwrap();
        let inter_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.distinguished_name.push(DnType::CommonName, "inter");
        let inter = p.signed_by(&inter_key, &root, &root_key).unwrap();
        Ca {
            root_pem: root.pem(),
            inter,
            inter_key,
        }
    }

    /// A leaf for `key` with CN `cn`, `DNS:dns` and `URI:uri`, and its chain.
    fn leaf(ca: &Ca, key: &KeyPair, cn: &str, dns: &str, uri: &str) -> String {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.subject_alt_names = vec![
            SanType::DnsName(dns.try_into().unwrap()),
            SanType::URI(uri.try_into().unwrap()),
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let c = p.signed_by(key, &ca.inter, &ca.inter_key).unwrap();
        c.pem() + &ca.inter.pem()
    }

    fn expected() -> Expected<'static> {
        Expected {
            guid: GUID,
            spiffe_id: SPIFFE.into(),
        }
    }

    #[test]
    fn a_certificate_for_the_key_chaining_to_the_bundle_and_naming_the_instance_passes() {
        let ca = ca();
        let key = KeyPair::generate().unwrap();
        let chain = leaf(&ca, &key, GUID, GUID, SPIFFE);
        assert_eq!(
            check(&chain, &key.serialize_pem(), &ca.root_pem, &expected()),
            Ok(())
        );
    }

    #[test]
    fn a_certificate_for_another_key_is_refused() {
        let ca = ca();
        let key = KeyPair::generate().unwrap();
        let other = KeyPair::generate().unwrap();
        let chain = leaf(&ca, &other, GUID, GUID, SPIFFE);
        assert_eq!(
            check(&chain, &key.serialize_pem(), &ca.root_pem, &expected()),
            Err(Refused::WrongKey)
        );
    }

    #[test]
    fn a_chain_to_another_root_is_refused() {
        let (ca, stranger) = (ca(), ca());
        let key = KeyPair::generate().unwrap();
        let chain = leaf(&stranger, &key, GUID, GUID, SPIFFE);
        let e = check(&chain, &key.serialize_pem(), &ca.root_pem, &expected()).unwrap_err();
        assert!(matches!(e, Refused::Untrusted(_)), "{e}");
    }

    #[test]
    fn a_certificate_naming_another_instance_or_app_is_refused() {
        let ca = ca();
        let key = KeyPair::generate().unwrap();
        let other = "0b1c2d3e";
        let other_app = "spiffe://lanyard.internal/org/o1/space/s1/app/a2";
        let other_domain = "spiffe://evil.example/org/o1/space/s1/app/a1";
        for (cn, dns, uri) in [
            (other, GUID, SPIFFE),
            (GUID, other, SPIFFE),
            (GUID, GUID, other_app),
            (GUID, GUID, other_domain),
        ] {
            let chain = leaf(&ca, &key, cn, dns, uri);
            let e = check(&chain, &key.serialize_pem(), &ca.root_pem, &expected()).unwrap_err();
            assert!(matches!(e, Refused::WrongName(_)), "{cn} {dns} {uri}: {e}");
        }
    }

    #[test]
    fn an_unreadable_chain_is_refused() {
        let ca = ca();
        let key = KeyPair::generate().unwrap();
        let e = check("not pem", &key.serialize_pem(), &ca.root_pem, &expected()).unwrap_err();
        assert!(matches!(e, Refused::Unreadable(_)), "{e}");
    }

    #[test]
    fn the_expected_spiffe_id_takes_the_cells_trust_domain() {
        assert_eq!(
            trust_domain("spiffe://lanyard.internal/lanyard/cell/c1"),
            Some("lanyard.internal")
        );
        assert_eq!(trust_domain("https://x"), None);
    }
}
