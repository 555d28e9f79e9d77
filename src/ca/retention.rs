//! Retention of expired certificate records: records that expired longer ago than
//! `storage.expired_retention` are deleted, a bounded batch at a time, by the server's
//! maintenance task. The audit log is never shortened: it keeps the facts of every issuance
//! and revocation, and records each deletion too.

use std::time::SystemTime;

use super::{Ca, CaError};
use crate::audit::AuditEvent;

/// The most records one deletion removes (one transaction, one audit entry listing them),
/// so a large backlog is worked off in steps that each stay short.
pub(crate) const RETENTION_BATCH: usize = 500;

impl Ca {
    /// Deletes up to [`RETENTION_BATCH`] records that expired before `now` minus the
    /// retention period, earliest expiry first, and returns how many it deleted (fewer than
    /// the batch: nothing more is due now). `actor` names the replica in the audit entry.
    pub(crate) fn delete_expired_records(
        &self,
        actor: &str,
        now: SystemTime,
    ) -> Result<usize, CaError> {
        let retention = self.config.storage.expired_retention.0;
        let Some(before) = now.checked_sub(retention) else {
            return Ok(0);
        };
        let serials = self.store.expired_certificates(before, RETENTION_BATCH)?;
        if serials.is_empty() {
            return Ok(0);
        }
        let audit = AuditEvent::new(
            actor,
            "certificates.deleted",
            "certificates",
            serde_json::json!({
                "reason": "expired longer ago than storage.expired_retention",
                "expired_before": crate::timefmt::rfc3339(before),
                "serials": serials.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }),
        );
        let deleted = self
            .store
            .delete_expired_certificates(&serials, before, &[audit]);
        // A deleted record may have been revoked: the revoked set is read again.
        self.authority.revocations_changed();
        Ok(usize::try_from(deleted?).unwrap_or(usize::MAX))
    }
}
