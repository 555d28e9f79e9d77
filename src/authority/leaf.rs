//! Leaf issuance: what to sign (decided by the caller from validated input), the signing
//! with the active intermediate, and the durable record.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use x509_cert::spki::SubjectPublicKeyInfoOwned;

use super::keys::LoadedCa;
use super::{read_lock, Authority, AuthorityError};
use crate::audit::AuditEvent;
use crate::ids::{AuthorityId, Guid, Serial};
use crate::keys::KeyError;
use crate::store::{CertificateKind, CertificateRecord, StoreError};
use crate::x509::build::{self, Attr, CertSpec, Profile, Signer};

/// Everything about one leaf to sign, decided by the caller from validated input.
#[derive(Debug, Clone)]
pub(crate) struct LeafRequest {
    /// Record kind.
    pub kind: CertificateKind,
    /// Subject key (from a verified CSR or a locally generated key).
    pub public_key: SubjectPublicKeyInfoOwned,
    /// RSA subject keys get keyEncipherment.
    pub key_encipherment: bool,
    /// Subject attributes, in order.
    pub subject: Vec<(SubjectAttr, String)>,
    /// DNS SANs.
    pub dns: Vec<String>,
    /// IP SANs.
    pub ips: Vec<IpAddr>,
    /// The SPIFFE ID.
    pub uri: String,
    /// Requested lifetime (already checked against the configured limits).
    pub ttl: Duration,
    /// Instance identity, for the record.
    pub instance: Option<InstanceIds>,
    /// Name (cells, operators, components, server), for the record.
    pub name: Option<crate::ids::Name>,
    /// Who asked, for the record (and the audit entry's actor).
    pub requested_by: String,
    /// The audit entry's action (`certificate.issued`, `cell.joined`, `credential.renewed`).
    pub action: &'static str,
}

/// Subject attribute kinds a leaf may carry.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SubjectAttr {
    /// organizationalUnitName.
    Ou,
    /// commonName.
    Cn,
}

/// The GUIDs of an app instance.
#[derive(Debug, Clone)]
pub(crate) struct InstanceIds {
    /// Instance GUID.
    pub instance: Guid,
    /// App GUID.
    pub app: Guid,
    /// Space GUID.
    pub space: Guid,
    /// Organization GUID.
    pub organization: Guid,
}

/// A signed and recorded leaf.
#[derive(Debug, Clone)]
pub(crate) struct Issued {
    /// PEM: leaf then intermediate.
    pub chain_pem: String,
    /// The durable record.
    pub record: CertificateRecord,
    /// The SPIFFE ID in the certificate.
    pub spiffe_id: String,
    /// Bundle sequence at signing time.
    pub trust_bundle_sequence: u64,
}

/// Why one leaf of an [`Authority::issue`] call was refused on its own (the others of the
/// call are issued). Nothing was recorded for it.
#[derive(Debug)]
pub(crate) enum LeafRefused {
    /// Its instance is bound elsewhere: to another cell, or to the same cell with another
    /// app, space or organization.
    Bound(Guid),
    /// Its certificate could not be built from what was asked.
    Unbuildable(crate::x509::X509Error),
}

/// One request's outcome in [`Authority::issue`].
pub(crate) type LeafOutcome = Result<Issued, LeafRefused>;

impl Authority {
    /// Signs every request with the active intermediate and records them all durably, in one
    /// store write, before returning. Validity: notBefore = now - backdate, notAfter = now +
    /// ttl but never after the intermediate's notAfter. An instance leaf whose instance is
    /// bound elsewhere ([`LeafRefused::Bound`]), or whose certificate cannot be built
    /// ([`LeafRefused::Unbuildable`]), is refused alone; the others are issued. Answers one
    /// outcome per request, in order. A failure of the write itself fails them all.
    ///
    /// The store records them only while the signing generation is still stored as active;
    /// if another process deactivated it meanwhile, this reloads the generations and signs
    /// once more with the new active one.
    pub(crate) fn issue(
        &self,
        requests: &[LeafRequest],
    ) -> Result<Vec<LeafOutcome>, AuthorityError> {
        match self.issue_once(requests) {
            Err(AuthorityError::Store(StoreError::NotActive(_))) => {
                self.reload()?;
                match self.issue_once(requests) {
                    Err(AuthorityError::Store(StoreError::NotActive(id))) => {
                        Err(AuthorityError::Superseded(id))
                    }
                    other => other,
                }
            }
            other => other,
        }
    }

    /// One attempt of [`Authority::issue`] with the generations in memory.
    fn issue_once(&self, requests: &[LeafRequest]) -> Result<Vec<LeafOutcome>, AuthorityError> {
        // The read lock is held until the records are durable, so a rotation step of this
        // process (which takes the write lock) never misses a certificate being signed; for
        // other processes sharing the store, `insert_signed` checks the signer in the same
        // transaction as the insert.
        let inner = read_lock(&self.inner);
        let (id, ca) = inner.active.as_ref().ok_or(AuthorityError::NoActive)?;
        let now = SystemTime::now();
        // A leaf is clamped to the intermediate's end; below the shortest allowed lifetime
        // that would hand out certificates that are useless or already expired.
        if ca.not_after < now + self.opts.min_leaf_ttl {
            return Err(AuthorityError::IntermediateExpiring(
                *id,
                crate::timefmt::rfc3339(ca.not_after),
            ));
        }
        for _attempt in 0..3 {
            // Each leaf signed alone: one that cannot be built is refused by itself.
            let mut signed: Vec<Result<Issued, LeafRefused>> = Vec::with_capacity(requests.len());
            for r in requests {
                signed.push(
                    match sign_leaf(*id, ca, r, now, self.opts.backdate, inner.sequence) {
                        Ok(i) => Ok(i),
                        Err(AuthorityError::X509(e)) => Err(LeafRefused::Unbuildable(e)),
                        Err(e) => return Err(e),
                    },
                );
            }
            // What goes to the store: the signed leaves, with their index among `requests`.
            let mut at = Vec::with_capacity(signed.len());
            let mut records = Vec::with_capacity(signed.len());
            let mut audit: Vec<AuditEvent> = Vec::with_capacity(signed.len());
            for (i, (s, r)) in signed.iter().zip(requests).enumerate() {
                if let Ok(issued) = s {
                    at.push(i);
                    records.push(issued.record.clone());
                    audit.push(issued_event(&issued.record, &issued.spiffe_id, r.action));
                }
            }
            let refused = if records.is_empty() {
                Vec::new()
            } else {
                match self.store.insert_signed(*id, &records, &audit) {
                    Ok(refused) => refused,
                    // 126 random bits make this all but impossible; draw new serials and
                    // re-sign.
                    Err(StoreError::SerialExists(_)) => continue,
                    Err(e) => return Err(e.into()),
                }
            };
            // A refused leaf was signed but never recorded nor handed out.
            for k in refused {
                let i = at.get(k).copied().ok_or_else(|| {
                    StoreError::Backend("the store refused a record it was not given".into())
                })?;
                let guid = match &signed[i] {
                    Ok(issued) => issued.record.instance_guid.clone(),
                    Err(_) => None,
                }
                .ok_or_else(|| {
                    StoreError::Backend("the store refused a record of no instance".into())
                })?;
                signed[i] = Err(LeafRefused::Bound(guid));
            }
            return Ok(signed);
        }
        Err(StoreError::Backend("could not find a free serial number".into()).into())
    }
}

/// The audit event of an issued certificate: who asked, and every identity it carries
/// (never its key).
fn issued_event(r: &CertificateRecord, spiffe_id: &str, action: &str) -> AuditEvent {
    let mut d = serde_json::Map::new();
    d.insert("serial".into(), r.serial.to_string().into());
    d.insert("kind".into(), r.kind.as_str().into());
    d.insert("spiffe_id".into(), spiffe_id.into());
    d.insert("authority_id".into(), r.authority_id.to_string().into());
    d.insert(
        "not_after".into(),
        crate::timefmt::rfc3339(r.not_after).into(),
    );
    let ids = [
        ("instance_guid", r.instance_guid.as_ref()),
        ("app_guid", r.app_guid.as_ref()),
        ("space_guid", r.space_guid.as_ref()),
        ("organization_guid", r.organization_guid.as_ref()),
    ];
    for (k, v) in ids {
        if let Some(g) = v {
            d.insert(k.into(), g.to_string().into());
        }
    }
    if let Some(n) = &r.name {
        d.insert("name".into(), n.to_string().into());
    }
    AuditEvent::new(
        r.requested_by.clone(),
        action,
        format!("certificate/{}", r.serial),
        d.into(),
    )
}

fn sign_leaf(
    id: AuthorityId,
    ca: &LoadedCa,
    r: &LeafRequest,
    now: SystemTime,
    backdate: Duration,
    sequence: u64,
) -> Result<Issued, AuthorityError> {
    let attrs: Vec<Attr<'_>> = r
        .subject
        .iter()
        .map(|(k, v)| match k {
            SubjectAttr::Ou => Attr::Ou(v),
            SubjectAttr::Cn => Attr::Cn(v),
        })
        .collect();
    let not_before = now - backdate;
    let not_after = (now + r.ttl).min(ca.not_after);
    let serial = Serial::random().map_err(|_| KeyError::Random)?;
    let spec = CertSpec {
        serial,
        subject: build::subject(&attrs)?,
        public_key: r.public_key.clone(),
        not_before,
        not_after,
        profile: Profile::Leaf {
            key_encipherment: r.key_encipherment,
            dns: r.dns.clone(),
            ips: r.ips.clone(),
            uri: r.uri.clone(),
        },
    };
    let leaf = build::sign(
        spec,
        &Signer {
            name: &ca.name,
            key_id: &ca.key_id,
            key: &ca.key,
        },
    )?;
    let mut chain_pem = build::pem_chain([leaf.as_slice()]);
    chain_pem.push_str(&ca.cert_pem);
    // Validity is stored as encoded (whole seconds), so records and certificates agree.
    let secs = |t: SystemTime| {
        let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        SystemTime::UNIX_EPOCH + Duration::from_secs(d.as_secs())
    };
    let inst = r.instance.as_ref();
    let record = CertificateRecord {
        serial,
        kind: r.kind,
        instance_guid: inst.map(|i| i.instance.clone()),
        app_guid: inst.map(|i| i.app.clone()),
        space_guid: inst.map(|i| i.space.clone()),
        organization_guid: inst.map(|i| i.organization.clone()),
        name: r.name.clone(),
        requested_by: r.requested_by.clone(),
        authority_id: id,
        not_before: secs(not_before),
        not_after: secs(not_after),
        revoked_at: None,
        revocation_reason: None,
    };
    Ok(Issued {
        chain_pem,
        record,
        spiffe_id: r.uri.clone(),
        trust_bundle_sequence: sequence,
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::super::tests::{request, setup};
    use crate::x509::inspect::CertInfo;

    #[test]
    fn a_leaf_is_backdated_and_its_record_is_durable() {
        let (store, a) = setup();
        let before = SystemTime::now();
        let issued = a
            .issue(&[request(Duration::from_secs(3600))])
            .unwrap()
            .remove(0)
            .unwrap();
        let info = CertInfo::from_der(
            &crate::x509::inspect::parse_pem_certs(issued.chain_pem.as_bytes()).unwrap()[0],
        )
        .unwrap();
        let nb = before.duration_since(info.not_before).unwrap();
        assert!(
            nb >= Duration::from_secs(59) && nb <= Duration::from_secs(62),
            "{nb:?}"
        );
        let life = info.not_after.duration_since(info.not_before).unwrap();
        assert!(life >= Duration::from_secs(3659) && life <= Duration::from_secs(3661));
        let rec = store
            .get_certificate(&issued.record.serial)
            .unwrap()
            .unwrap();
        assert_eq!(rec.not_after, info.not_after);
    }

    #[test]
    fn a_leaf_never_outlives_its_intermediate() {
        let (_, a) = setup();
        let (_, im_end) = a.active().unwrap();
        let issued = a
            .issue(&[request(Duration::from_secs(400 * 86400))])
            .unwrap()
            .remove(0)
            .unwrap();
        let info = CertInfo::from_der(
            &crate::x509::inspect::parse_pem_certs(issued.chain_pem.as_bytes()).unwrap()[0],
        )
        .unwrap();
        let end = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(end(info.not_after), end(im_end));
    }
}
