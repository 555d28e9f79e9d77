//! Issued certificate records: listing, revocation, and the revocation status that client
//! certificates are checked against.

use std::time::SystemTime;

use super::{Ca, CaError};
use crate::audit::AuditEvent;
use crate::ids::{Role, Serial};
use crate::store::{
    CertificateCursor, CertificateKind, CertificateQuery, CertificateRecord, StoreError,
};

/// One page of certificate records.
#[derive(Debug)]
pub(crate) struct CertificatePage {
    /// The records, newest first.
    pub records: Vec<CertificateRecord>,
    /// The position of the last record when more match (the next page starts after it).
    pub next: Option<CertificateCursor>,
}

impl Ca {
    /// `GET /v1/certificates`: one page, and where the next starts when more match (asked
    /// as one record more than the page holds).
    pub(crate) fn list_certificates(
        &self,
        q: &CertificateQuery,
    ) -> Result<CertificatePage, CaError> {
        let mut records = self.store.query_certificates(&CertificateQuery {
            limit: q.limit.saturating_add(1),
            ..q.clone()
        })?;
        let next = if records.len() > q.limit {
            records.truncate(q.limit);
            records.last().map(CertificateCursor::of)
        } else {
            None
        };
        Ok(CertificatePage { records, next })
    }

    /// Is this serial revoked? (Client certificates of revoked credentials are refused.)
    /// Answered from the authority's revoked set in memory, read again after a revocation.
    pub(crate) fn is_revoked(&self, serial: &Serial) -> Result<bool, CaError> {
        Ok(self.authority.is_revoked(serial)?)
    }

    /// Whether a serial is revoked, from memory; `None` when the revoked set must be read
    /// from the store first (a revocation happened since the last read).
    pub(crate) fn is_revoked_in_memory(&self, serial: &Serial) -> Option<bool> {
        self.authority.is_revoked_in_memory(serial)
    }

    /// `POST /v1/certificates/{serial}/revoke`. Retrying is harmless: a certificate already
    /// revoked is answered as it is (its first revocation time and reason stay).
    ///
    /// The CA's own credentials are refused: revoking the server's TLS certificate would
    /// leave it presenting a revoked certificate, and revoking the local operator credential
    /// would lock out every operator who relies on it.
    pub(crate) fn revoke(
        &self,
        caller: &Role,
        serial: &Serial,
        reason: Option<String>,
    ) -> Result<CertificateRecord, CaError> {
        let reason = reason
            .map(|r| {
                crate::api::revocation_reason(&r).map_err(|why| CaError::invalid("reason", why))
            })
            .transpose()?;
        let rec = self
            .store
            .get_certificate(serial)?
            .ok_or_else(|| CaError::NotFound(format!("no certificate with serial {serial}")))?;
        if rec.revoked_at.is_some() {
            return Ok(rec);
        }
        self.refuse_own_credential(&rec)?;
        let mut details = serde_json::Map::new();
        details.insert("kind".into(), rec.kind.as_str().into());
        details.insert("authority_id".into(), rec.authority_id.to_string().into());
        if let Some(r) = &reason {
            details.insert("reason".into(), r.clone().into());
        }
        if let Some(g) = &rec.instance_guid {
            details.insert("instance_guid".into(), g.to_string().into());
        }
        if let Some(n) = &rec.name {
            details.insert("name".into(), n.to_string().into());
        }
        let audit = AuditEvent::new(
            caller.spiffe_id(self.td()),
            "certificate.revoked",
            format!("certificate/{serial}"),
            details.into(),
        );
        let revoked = self
            .store
            .revoke(serial, SystemTime::now(), reason.as_deref(), &[audit]);
        // Whatever the outcome (a failed write may have committed), the next check re-reads.
        self.authority.revocations_changed();
        match revoked {
            Ok(outcome) => Ok(outcome.into_record()),
            Err(StoreError::NotFound(_)) => Err(CaError::NotFound(format!(
                "no certificate with serial {serial}"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// A `409` when `rec` is a server certificate still in its lifetime (any replica's: each
    /// has its own, and each presents it until its next refresh) or the local operator
    /// credential.
    fn refuse_own_credential(&self, rec: &CertificateRecord) -> Result<(), CaError> {
        let serial = &rec.serial;
        if rec.kind == CertificateKind::Server && rec.not_after > SystemTime::now() {
            return Err(CaError::Conflict(format!(
                "certificate {serial} is this CA's own TLS server certificate (each replica has its own); revoking it would leave a server presenting a revoked certificate. It is not revoked: the server re-issues it automatically (past two thirds of its life or after a root rotation)"
            )));
        }
        if self.local_operator_serial().as_ref() == Some(serial) {
            let dir = self.config.operator_credential_dir();
            return Err(CaError::Conflict(format!(
                "certificate {serial} is the local operator credential in {}; revoking it would lock out every operator who uses it. It is not revoked: to replace its key, run `lanyard credential renew --credential {}`",
                dir.display(),
                dir.display()
            )));
        }
        Ok(())
    }
}
