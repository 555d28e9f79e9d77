//! CRLs: one per intermediate of a generation, each signed by that intermediate and cached,
//! so a public endpoint can neither make the server decrypt keys and sign at will nor read
//! the store per request.
//!
//! Every unexpired revoked certificate is on the CRL of its own issuer. A record does not
//! say which of its generation's intermediates signed it, but the issuer's validity always
//! contains the leaf's (a leaf is signed after its intermediate was made and never outlives
//! it), so each intermediate's CRL lists the generation's revoked leaves that fit in its
//! validity. A leaf that fits in two lists on both; serials are unique across the CA's
//! history, so an extra entry on a CRL of another issuer never matches another certificate.

use std::time::{Duration, SystemTime};

use der::Decode;
use x509_cert::Certificate;

use super::keys::{load_ca, purpose_intermediate};
use super::revocations::RevokedList;
use super::{read_lock, Authority, AuthorityError};
use crate::ids::{AuthorityId, Serial};
use crate::rotation::RotationError;
use crate::store::AuthorityRecord;
use crate::x509::build::{self, Signer};

/// Slack for the validity comparison: records keep whole seconds, certificates too, but a
/// clock step between signing an intermediate and a leaf must not drop an entry.
const FIT_SLACK: Duration = Duration::from_secs(5);

/// A signed CRL and what it was made from.
pub(super) struct CachedCrl {
    /// The generation's revoked list it lists (compared by pointer, then by value).
    revoked: RevokedList,
    generated: SystemTime,
    der: Vec<u8>,
}

/// Which intermediate of a generation.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Intermediate<'a> {
    /// The newest (the one that signs now, for the active generation).
    Newest,
    /// The one whose subject key identifier is this.
    KeyId(&'a [u8]),
}

/// An intermediate's place in its generation (0 = first) and its validity.
struct Found {
    index: usize,
    not_before: SystemTime,
    not_after: SystemTime,
}

fn find_intermediate(
    g: &AuthorityRecord,
    which: Intermediate<'_>,
) -> Result<Option<Found>, AuthorityError> {
    let candidates: Vec<usize> = match which {
        Intermediate::Newest => g.intermediates.len().checked_sub(1).into_iter().collect(),
        Intermediate::KeyId(_) => (0..g.intermediates.len()).collect(),
    };
    for index in candidates {
        let cert = Certificate::from_der(&g.intermediates[index].certificate).map_err(|e| {
            AuthorityError::Damaged(g.id, format!("intermediate does not parse: {e}"))
        })?;
        let tbs = &cert.tbs_certificate;
        if let Intermediate::KeyId(want) = which {
            if build::key_identifier(&tbs.subject_public_key_info) != want {
                continue;
            }
        }
        return Ok(Some(Found {
            index,
            not_before: tbs.validity.not_before.to_system_time(),
            not_after: tbs.validity.not_after.to_system_time(),
        }));
    }
    Ok(None)
}

impl Authority {
    /// A DER CRL for intermediate `which` of generation `id`, signed by it, valid for
    /// `validity`; `None` when the generation has no such intermediate. Any generation
    /// still on record can publish one.
    ///
    /// The signed CRL is cached per intermediate until the generation's revoked list changes
    /// or half its validity passed. The list comes from the revocation snapshot in memory,
    /// so a request reads the store only after a revocation.
    pub(crate) fn crl(
        &self,
        id: AuthorityId,
        which: Intermediate<'_>,
        validity: Duration,
    ) -> Result<Option<Vec<u8>>, AuthorityError> {
        let rec = {
            let inner = read_lock(&self.inner);
            inner
                .generations
                .iter()
                .find(|g| g.id == id)
                .cloned()
                .ok_or(RotationError::NotFound(id))?
        };
        let Some(found) = find_intermediate(&rec, which)? else {
            return Ok(None);
        };
        let snapshot = self.revoked_snapshot()?;
        let revoked: RevokedList = snapshot.by_generation.get(&id).cloned().unwrap_or_default();
        let now = SystemTime::now();
        let key = (id, found.index);
        {
            let cache = self.crl_cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = cache.get(&key) {
                let same = std::sync::Arc::ptr_eq(&c.revoked, &revoked) || c.revoked == revoked;
                if same && now < c.generated + validity / 2 {
                    return Ok(Some(c.der.clone()));
                }
            }
        }
        let details = self.revoked_details(&snapshot, &revoked)?;
        let entries: Vec<(Serial, SystemTime, Option<String>)> = revoked
            .iter()
            .filter_map(|(serial, at)| {
                let d = details.get(serial)?;
                let fits = d.not_before + FIT_SLACK >= found.not_before
                    && d.not_after <= found.not_after + FIT_SLACK;
                (fits && d.not_after > now).then(|| (*serial, *at, d.reason.clone()))
            })
            .collect();
        let n = found.index + 1;
        let ca = load_ca(
            &self.kek,
            id,
            &rec.intermediates[found.index],
            &purpose_intermediate(id, n),
        )?;
        let number = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let der = build::sign_crl(
            &Signer {
                name: &ca.name,
                key_id: &ca.key_id,
                key: &ca.key,
            },
            &entries,
            now - self.opts.backdate,
            now + validity,
            number,
        )?;
        self.crl_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                key,
                CachedCrl {
                    revoked,
                    generated: now,
                    der: der.clone(),
                },
            );
        Ok(Some(der))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use der::Decode;
    use x509_cert::crl::CertificateList;

    use super::super::tests::{by, request, setup};
    use super::Intermediate;
    use crate::ids::{AuthorityId, Serial};
    use crate::x509::inspect::{parse_pem_certs, CertInfo};

    const HOUR: Duration = Duration::from_secs(3600);

    fn listed(der: &[u8]) -> Vec<String> {
        CertificateList::from_der(der)
            .unwrap()
            .tbs_cert_list
            .revoked_certificates
            .unwrap_or_default()
            .iter()
            .map(|r| hex::encode(r.serial_number.as_bytes()))
            .collect()
    }

    fn aki_of_crl(der: &[u8]) -> Vec<u8> {
        use x509_cert::ext::pkix::AuthorityKeyIdentifier;
        let crl = CertificateList::from_der(der).unwrap();
        let ext = crl
            .tbs_cert_list
            .crl_extensions
            .unwrap()
            .into_iter()
            .find(|e| e.extn_id == const_oid::db::rfc5280::ID_CE_AUTHORITY_KEY_IDENTIFIER)
            .unwrap();
        AuthorityKeyIdentifier::from_der(ext.extn_value.as_bytes())
            .unwrap()
            .key_identifier
            .unwrap()
            .as_bytes()
            .to_vec()
    }

    fn hex_serial(s: &Serial) -> String {
        hex::encode(s.as_bytes())
    }

    #[test]
    fn each_intermediate_signs_a_crl_listing_the_revoked_leaves_it_issued() {
        let (store, a) = setup();
        let old = a.issue(&[request(HOUR)]).unwrap().remove(0).unwrap();
        let old_issuer_aki =
            CertInfo::from_der(&parse_pem_certs(old.chain_pem.as_bytes()).unwrap()[0])
                .unwrap()
                .authority_key_id
                .unwrap();
        a.renew_intermediate(AuthorityId(1), &by()).unwrap();
        let new = a.issue(&[request(HOUR)]).unwrap().remove(0).unwrap();
        for s in [&old.record.serial, &new.record.serial] {
            store
                .revoke(s, SystemTime::now(), Some("keyCompromise"), &[])
                .unwrap();
        }
        a.revocations_changed();

        let newest = a
            .crl(AuthorityId(1), Intermediate::Newest, HOUR)
            .unwrap()
            .unwrap();
        assert!(listed(&newest).contains(&hex_serial(&new.record.serial)));
        let old_key = hex::decode(old_issuer_aki.replace(':', "")).unwrap();
        let older = a
            .crl(AuthorityId(1), Intermediate::KeyId(&old_key), HOUR)
            .unwrap()
            .unwrap();
        assert_eq!(
            aki_of_crl(&older),
            old_key,
            "signed by the old intermediate"
        );
        assert_ne!(aki_of_crl(&newest), old_key);
        assert!(listed(&older).contains(&hex_serial(&old.record.serial)));
        assert!(a
            .crl(AuthorityId(1), Intermediate::KeyId(&[1, 2, 3]), HOUR)
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_cached_crl_is_served_until_a_revocation_moves_the_counter() {
        let (store, a) = setup();
        let issued = a.issue(&[request(HOUR)]).unwrap().remove(0).unwrap();
        let first = a
            .crl(AuthorityId(1), Intermediate::Newest, HOUR)
            .unwrap()
            .unwrap();
        // Revoked behind the authority's back: the same CRL comes back (no store read).
        store
            .revoke(&issued.record.serial, SystemTime::now(), None, &[])
            .unwrap();
        let again = a
            .crl(AuthorityId(1), Intermediate::Newest, HOUR)
            .unwrap()
            .unwrap();
        assert_eq!(first, again);
        a.revocations_changed();
        let after = a
            .crl(AuthorityId(1), Intermediate::Newest, HOUR)
            .unwrap()
            .unwrap();
        assert_eq!(listed(&after), vec![hex_serial(&issued.record.serial)]);
    }
}
