//! The audit log as use cases: reading it page by page, and the entries that record no
//! other change (a server start). Every other entry is written by the store in the same
//! write as the change it records.

use super::{Ca, CaError};
use crate::audit::AuditEvent;
use crate::store::AuditPage;

/// The most entries one page answers.
pub(crate) const MAX_AUDIT_PAGE: usize = 1000;

impl Ca {
    /// `GET /v1/audit`: up to `limit` entries after `after`, in order.
    pub(crate) fn audit_entries(&self, after: u64, limit: usize) -> Result<AuditPage, CaError> {
        Ok(self
            .store
            .audit_after(after, limit.clamp(1, MAX_AUDIT_PAGE))?)
    }

    /// Appends `server.started` for `replica`, once it serves.
    pub(crate) fn record_server_start(&self, replica: &str) -> Result<(), CaError> {
        let event = AuditEvent::new(
            "lanyard server",
            "server.started",
            format!("replica/{replica}"),
            serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "storage": self.config.storage.backend,
            }),
        );
        Ok(self.store.append_audit(&[event])?)
    }
}
