//! CRLs: signed by a generation's newest intermediate and cached, so a public endpoint
//! cannot make the server decrypt keys and sign at will.

use std::time::{Duration, SystemTime};

use super::keys::load_intermediate;
use super::{read_lock, Authority, AuthorityError};
use crate::ids::{AuthorityId, Serial};
use crate::rotation::RotationError;
use crate::x509::build::{self, Signer};

/// A signed CRL and what it was made from.
pub(super) struct CachedCrl {
    revoked: usize,
    generated: SystemTime,
    der: Vec<u8>,
}

impl Authority {
    /// A DER CRL for generation `id`, signed by its newest intermediate, valid for
    /// `validity`. Any generation still on record can publish one.
    ///
    /// The signed CRL is cached until a revocation is added or half its validity passed, so
    /// a public endpoint cannot make the server decrypt keys and sign at will.
    pub(crate) fn crl(
        &self,
        id: AuthorityId,
        validity: Duration,
    ) -> Result<Vec<u8>, AuthorityError> {
        let revoked = self.store.revoked(id)?;
        let now = SystemTime::now();
        {
            let cache = self.crl_cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = cache.get(&id) {
                if c.revoked == revoked.len() && now < c.generated + validity / 2 {
                    return Ok(c.der.clone());
                }
            }
        }
        let rec = {
            let inner = read_lock(&self.inner);
            inner
                .generations
                .iter()
                .find(|g| g.id == id)
                .cloned()
                .ok_or(RotationError::NotFound(id))?
        };
        let ca = load_intermediate(&self.kek, &rec)?;
        // Reason codes come from the records (the revocation index keeps serials and times).
        let entries: Vec<(Serial, SystemTime, Option<String>)> = revoked
            .iter()
            .map(|(serial, at)| {
                let reason = self
                    .store
                    .get_certificate(serial)
                    .ok()
                    .flatten()
                    .and_then(|r| r.revocation_reason);
                (*serial, *at, reason)
            })
            .collect();
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
                id,
                CachedCrl {
                    revoked: revoked.len(),
                    generated: now,
                    der: der.clone(),
                },
            );
        Ok(der)
    }
}
