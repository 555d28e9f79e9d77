//! Entry points for the cargo-fuzz targets in `fuzz/` (feature `fuzzing`): the parsers that
//! take untrusted bytes from the network. Each must return for any input: no panic, no hang.

use crate::api;
use crate::ids::Guid;
use crate::problem::parse_json;
use crate::x509::inspect::{parse_pem_certs, CertInfo};

/// A CSR as `POST /v1/instance-certificates` receives it: parsed, its key checked, its
/// signature verified.
pub fn csr(data: &[u8]) {
    let _ = crate::x509::csr::verify_csr(data);
}

/// A request body as the API parses it: every request type, then the GUIDs of an instance
/// request as the edge parses them.
pub fn request_json(data: &[u8]) {
    if let Ok(r) = parse_json::<api::InstanceCertificateRequest>(data) {
        for g in [
            &r.instance_guid,
            &r.app_guid,
            &r.space_guid,
            &r.organization_guid,
        ] {
            let _ = g.parse::<Guid>();
        }
    }
    let _ = parse_json::<api::BatchRequest<serde_json::Value>>(data);
    let _ = parse_json::<api::CsrRequest>(data);
    let _ = parse_json::<api::JoinTokenRequest>(data);
    let _ = parse_json::<api::ComponentCertificateRequest>(data);
    let _ = parse_json::<api::RevokeRequest>(data);
}

/// PEM certificates as the agent, the CLI and the mTLS kit read them, each then inspected.
pub fn pem(data: &[u8]) {
    if let Ok(certs) = parse_pem_certs(data) {
        for c in certs {
            let _ = CertInfo::from_der(&c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs that once troubled parsers of this kind; every crash a fuzz run finds is added
    /// here, so it stays fixed.
    const SEEDS: &[&[u8]] = &[
        b"",
        b"-----BEGIN",
        b"-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n",
        b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n",
        b"\x30\x80\x30\x80\x00\x00",
        b"\x30\x82\xff\xff",
        b"{\"csr\": \"\\ud800\"}",
        b"{\"requests\": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}",
        b"{\"instance_guid\": \"-\", \"app_guid\": \"\", \"space_guid\": \"a--\", \"organization_guid\": \"\\u0000\", \"csr\": \"\"}",
        b"{\"ttl_seconds\": 1e999}",
    ];

    #[test]
    fn every_fuzz_entry_point_returns_on_the_seed_inputs() {
        for s in SEEDS {
            csr(s);
            request_json(s);
            pem(s);
        }
    }
}
