//! One instance's X509-SVID as the Workload API hands it out, built once per change of its
//! credential set (renewal or bundle) and shared by every open stream.

use zeroize::Zeroizing;

use super::workload_proto as pb;
use crate::x509::inspect::{parse_pem_certs, CertInfo};

/// An instance's SVID: identity, chain, key and the roots of its trust domain, as DER.
pub(crate) struct Svid {
    /// `spiffe://<trust_domain>/org/.../space/.../app/...`.
    pub(crate) spiffe_id: String,
    /// `spiffe://<trust_domain>`: the key of the bundle map.
    pub(crate) trust_domain_id: String,
    /// Leaf then intermediate, DER, concatenated.
    chain_der: Vec<u8>,
    /// PKCS#8 DER.
    key_der: Zeroizing<Vec<u8>>,
    /// Every published root, DER, concatenated.
    pub(crate) bundle_der: Vec<u8>,
}

impl std::fmt::Debug for Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Svid")
            .field("spiffe_id", &self.spiffe_id)
            .finish_non_exhaustive()
    }
}

impl Svid {
    /// From the instance's PEM set; `None` (and a warning in the log) if it does not parse.
    pub(crate) fn from_pem(chain_pem: &str, key_pem: &str, bundle_pem: &str) -> Option<Svid> {
        let chain = parse_pem_certs(chain_pem.as_bytes()).ok()?;
        let leaf = CertInfo::from_der(chain.first()?).ok()?;
        let spiffe_id = leaf.spiffe_id()?.to_string();
        let td = spiffe_id
            .strip_prefix("spiffe://")?
            .split('/')
            .next()
            .filter(|t| !t.is_empty())?;
        let key = pem::parse(key_pem).ok()?;
        if key.tag() != "PRIVATE KEY" {
            return None;
        }
        let roots = parse_pem_certs(bundle_pem.as_bytes()).ok()?;
        Some(Svid {
            trust_domain_id: format!("spiffe://{td}"),
            spiffe_id,
            chain_der: chain.concat(),
            key_der: Zeroizing::new(key.into_contents()),
            bundle_der: roots.concat(),
        })
    }

    /// The `FetchX509SVID` message.
    pub(crate) fn svid_response(&self) -> pb::X509svidResponse {
        pb::X509svidResponse {
            svids: vec![pb::X509svid {
                spiffe_id: self.spiffe_id.clone(),
                x509_svid: self.chain_der.clone(),
                x509_svid_key: self.key_der.to_vec(),
                bundle: self.bundle_der.clone(),
                hint: String::new(),
            }],
            crl: vec![],
            federated_bundles: Default::default(),
        }
    }

    /// The `FetchX509Bundles` message.
    pub(crate) fn bundles_response(&self) -> pb::X509BundlesResponse {
        pb::X509BundlesResponse {
            crl: vec![],
            bundles: [(self.trust_domain_id.clone(), self.bundle_der.clone())]
                .into_iter()
                .collect(),
        }
    }
}
