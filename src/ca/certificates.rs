//! Issued certificate records: listing, revocation, and the revocation status that client
//! certificates are checked against.

use std::time::SystemTime;

use super::{Ca, CaError};
use crate::ids::Serial;
use crate::store::{CertificateQuery, CertificateRecord};

impl Ca {
    /// `GET /v1/certificates`.
    pub(crate) fn list_certificates(
        &self,
        q: &CertificateQuery,
    ) -> Result<Vec<CertificateRecord>, CaError> {
        Ok(self.store.query_certificates(q)?)
    }

    /// Is this serial revoked? (Client certificates of revoked credentials are refused.)
    pub(crate) fn is_revoked(&self, serial: &Serial) -> Result<bool, CaError> {
        Ok(self
            .store
            .get_certificate(serial)?
            .is_some_and(|r| r.revoked_at.is_some()))
    }

    /// `POST /v1/certificates/{serial}/revoke`.
    pub(crate) fn revoke(
        &self,
        serial: &Serial,
        reason: Option<String>,
    ) -> Result<CertificateRecord, CaError> {
        let mut rec = self
            .store
            .get_certificate(serial)?
            .ok_or_else(|| CaError::NotFound(format!("no certificate with serial {serial}")))?;
        if rec.revoked_at.is_some() {
            return Err(CaError::Conflict(format!(
                "certificate {serial} is already revoked"
            )));
        }
        if let Some(r) = &reason {
            if r.len() > 1024 {
                return Err(CaError::invalid("reason", "at most 1024 characters"));
            }
        }
        rec.revoked_at = Some(SystemTime::now());
        rec.revocation_reason = reason;
        self.store.update_certificate(&rec)?;
        Ok(rec)
    }
}
