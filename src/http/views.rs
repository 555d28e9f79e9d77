//! What the API shows of the CA's data: conversions from the service's types into the wire
//! types of [`crate::api`]. Records never go on the wire as they are stored.

use std::time::SystemTime;

use base64::Engine;
use der::Decode;

use crate::api;
use crate::ca::{
    AuthorityRecord, CaError, CertificateRecord, Due, GenerationStatus, InstanceBinding, Issued,
    Lease, TrustBundle,
};
use crate::timefmt::rfc3339;

/// `GET /v1/authorities`: every generation, the bundle sequence, the lease and what the
/// server does next by itself.
pub(crate) fn authorities_view(
    gens: &[GenerationStatus],
    sequence: u64,
    lease: Option<&Lease>,
    activatable_at: impl Fn(&AuthorityRecord) -> Option<SystemTime>,
    next: Option<&Due>,
) -> api::AuthoritiesResponse {
    api::AuthoritiesResponse {
        authorities: gens
            .iter()
            .map(|(g, l)| authority_view(g, *l, activatable_at(g)))
            .collect(),
        trust_bundle_sequence: sequence,
        schedule_lease: lease.map(|l| api::ScheduleLease {
            holder: l.holder.clone(),
            expires_at: rfc3339(l.expires_at),
        }),
        next_automatic_step: next.map(|d| api::ScheduledStep {
            action: d.action.to_string(),
            authority_id: d.authority.to_string(),
            due_at: rfc3339(d.at),
            reason: d.reason.clone(),
        }),
    }
}

/// One generation, with the latest notAfter it signed and, when prepared, the time it may be
/// activated.
pub(crate) fn authority_view(
    g: &AuthorityRecord,
    last_leaf: Option<SystemTime>,
    activatable_at: Option<SystemTime>,
) -> api::AuthorityView {
    let opt = |t: Option<SystemTime>| t.map(rfc3339);
    api::AuthorityView {
        id: g.id.to_string(),
        state: g.state.as_str().to_string(),
        created_at: rfc3339(g.created_at),
        published_at: opt(g.published_at),
        activated_at: opt(g.activated_at),
        retiring_at: opt(g.retiring_at),
        retired_at: opt(g.retired_at),
        root_not_before: rfc3339(not_before(&g.root)),
        root_not_after: rfc3339(g.root.not_after),
        intermediate_not_before: g
            .intermediates
            .last()
            .map(|i| rfc3339(not_before(i)))
            .unwrap_or_default(),
        intermediate_not_after: g
            .intermediates
            .last()
            .map(|i| rfc3339(i.not_after))
            .unwrap_or_default(),
        last_leaf_not_after: opt(last_leaf),
        root_certificate: crate::x509::build::pem_chain([g.root.certificate.as_slice()]),
        activatable_at: opt(activatable_at),
    }
}

/// A CA certificate's notBefore, read from the certificate itself (the record keeps only its
/// notAfter); the issue time stands in should the stored DER not parse.
fn not_before(c: &crate::store::CaKeyRecord) -> SystemTime {
    crate::x509::inspect::CertInfo::from_der(&c.certificate)
        .map(|i| i.not_before)
        .unwrap_or_else(|_| c.issued_at.unwrap_or(c.not_after))
}

/// The answer of every endpoint that issues a certificate.
pub(crate) fn issued_view(i: &Issued) -> api::IssuedCertificate {
    api::IssuedCertificate {
        certificate_chain: i.chain_pem.clone(),
        serial: i.record.serial.to_string(),
        not_before: rfc3339(i.record.not_before),
        not_after: rfc3339(i.record.not_after),
        spiffe_id: i.spiffe_id.clone(),
        authority_id: i.record.authority_id.to_string(),
        trust_bundle_sequence: i.trust_bundle_sequence,
    }
}

/// A certificate record as `GET /v1/certificates` and revoke show it.
pub(crate) fn certificate_view(r: &CertificateRecord) -> api::CertificateView {
    let text = |v: Option<&dyn std::fmt::Display>| v.map(ToString::to_string);
    api::CertificateView {
        serial: r.serial.to_string(),
        kind: r.kind.as_str().to_string(),
        instance_guid: text(r.instance_guid.as_ref().map(|g| g as _)),
        app_guid: text(r.app_guid.as_ref().map(|g| g as _)),
        space_guid: text(r.space_guid.as_ref().map(|g| g as _)),
        organization_guid: text(r.organization_guid.as_ref().map(|g| g as _)),
        name: text(r.name.as_ref().map(|n| n as _)),
        requested_by: r.requested_by.clone(),
        authority_id: r.authority_id.to_string(),
        not_before: rfc3339(r.not_before),
        not_after: rfc3339(r.not_after),
        revoked_at: r.revoked_at.map(rfc3339),
        revocation_reason: r.revocation_reason.clone(),
    }
}

/// The bundle as a SPIFFE bundle (JWKS), one key per root.
pub(crate) fn spiffe_bundle(b: &TrustBundle, refresh: u64) -> Result<api::SpiffeBundle, CaError> {
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut keys = Vec::with_capacity(b.roots.len());
    for root in &b.roots {
        let cert = x509_cert::Certificate::from_der(root)
            .map_err(|e| CaError::Internal(format!("root does not parse: {e}")))?;
        let point = cert
            .tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes();
        if point.len() != 65 || point[0] != 4 {
            return Err(CaError::Internal(
                "root key is not an uncompressed P-256 point".into(),
            ));
        }
        keys.push(api::SpiffeKey {
            use_: "x509-svid".into(),
            kty: "EC".into(),
            crv: "P-256".into(),
            x: b64url.encode(&point[1..33]),
            y: b64url.encode(&point[33..65]),
            x5c: vec![b64.encode(root)],
        });
    }
    Ok(api::SpiffeBundle {
        keys,
        spiffe_sequence: b.sequence,
        spiffe_refresh_hint: refresh,
    })
}

/// An instance binding as the API shows it.
pub(crate) fn binding_view(b: &InstanceBinding) -> api::InstanceBindingView {
    api::InstanceBindingView {
        instance_guid: b.instance_guid.to_string(),
        owner: b.owner.clone(),
        app_guid: b.app_guid.to_string(),
        space_guid: b.space_guid.to_string(),
        organization_guid: b.organization_guid.to_string(),
        not_after: rfc3339(b.not_after),
    }
}

/// `GET /v1/activity`: the replica's recent activity at `now`.
pub(crate) fn activity_view(
    a: &crate::activity::Activity,
    now: SystemTime,
) -> api::ActivityResponse {
    let minutes = a.per_minute(now);
    let at = |m: u64| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(m * 60);
    api::ActivityResponse {
        since: rfc3339(a.started_at()),
        issued_last_hour: minutes.iter().map(|m| m.issued).sum(),
        refused_last_hour: minutes.iter().map(|m| m.refused).sum(),
        issuance_per_minute: minutes
            .iter()
            .map(|m| api::MinuteActivity {
                minute: rfc3339(at(m.minute)),
                issued: m.issued,
                refused: m.refused,
            })
            .collect(),
        cells: a
            .cells()
            .into_iter()
            .map(|c| api::CellActivityView {
                name: c.name,
                last_request_at: rfc3339(c.at),
                last_request: format!("{} {}", c.method, c.path),
                last_status: c.status,
                requests: c.requests,
            })
            .collect(),
        expiring_soon: a
            .expiring(now, std::time::Duration::from_secs(3600), 50)
            .into_iter()
            .map(|c| api::ExpiringCertificate {
                kind: c.kind.as_str().to_string(),
                subject: c.subject,
                serial: c.serial,
                authority_id: c.authority_id,
                not_after: rfc3339(c.not_after),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::ids::{AuthorityId, Serial};
    use crate::store::CertificateKind;

    fn record(kind: CertificateKind) -> CertificateRecord {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        CertificateRecord {
            serial: Serial::random().unwrap(),
            kind,
            instance_guid: Some("0d4b5c3e-1b8f-4c43-9f39-2a0a0d9f1c11".parse().unwrap()),
            app_guid: Some("5c1e7a0e-2a63-4d8b-b7a4-0f51e3d1b2c3".parse().unwrap()),
            space_guid: Some("6e2f8b1f-3b74-4e9c-a8b5-1a62f4e2c3d4".parse().unwrap()),
            organization_guid: Some("7f3a9c2a-4c85-4fad-b9c6-2b73a5f3d4e5".parse().unwrap()),
            name: None,
            requested_by: "spiffe://lanyard.internal/cell/c1".into(),
            authority_id: AuthorityId(2),
            not_before: t,
            not_after: t + Duration::from_secs(3600),
            revoked_at: None,
            revocation_reason: None,
        }
    }

    /// The view is the record's JSON, field for field: the wire did not change when records
    /// stopped being sent as they are stored.
    #[test]
    fn a_certificate_view_serializes_like_the_stored_record() {
        let kinds = [
            CertificateKind::Instance,
            CertificateKind::Cell,
            CertificateKind::Operator,
            CertificateKind::Component,
            CertificateKind::Server,
        ];
        for kind in kinds {
            let mut r = record(kind);
            r.name = Some("gorouter".parse().unwrap());
            let same = |r: &CertificateRecord| {
                assert_eq!(
                    serde_json::to_value(certificate_view(r)).unwrap(),
                    serde_json::to_value(r).unwrap()
                );
            };
            same(&r);
            r.revoked_at = Some(r.not_before + Duration::from_secs(10));
            same(&r);
            r.revocation_reason = Some("key compromise".into());
            same(&r);
        }
    }
}
