//! Instance ownership: the first cell that obtains a certificate for an instance owns it
//! (the binding is written with the issuance record, in the store); here a binding is
//! released, by its owner or by an operator.

use std::time::SystemTime;

use super::issuance::bound_elsewhere;
use super::{Ca, CaError};
use crate::audit::AuditEvent;
use crate::ids::{Guid, Role};
use crate::store::{InstanceBinding, ReleaseOutcome};

impl Ca {
    /// `DELETE /v1/instances/{guid}`: the owning cell releases its binding, or an operator
    /// releases anyone's. Idempotent: an instance that is not bound (never, no more, or its
    /// last certificate expired) is answered the same as a release, so an agent may retry.
    /// A cell that does not own a live binding gets the 409 an issuance would get. Releasing
    /// does not revoke.
    pub(crate) fn release_instance(&self, caller: &Role, guid: &str) -> Result<(), CaError> {
        let guid = parse_guid(guid)?;
        let owner = match caller {
            Role::Cell(_) => Some(caller.spiffe_id(self.td())),
            Role::Operator(_) => None,
            _ => {
                return Err(CaError::Forbidden(
                    "only the owning cell or an operator releases an instance".into(),
                ))
            }
        };
        let audit = release_event(&self.td_caller(caller), &guid, owner.is_some());
        match self
            .store
            .release_binding(&guid, owner.as_deref(), SystemTime::now(), &[audit])?
        {
            ReleaseOutcome::Released(b) => {
                tracing::info!(instance = %guid, owner = %b.owner, by = %caller.spiffe_id(self.td()), "instance binding released");
                Ok(())
            }
            ReleaseOutcome::NotBound => Ok(()),
            ReleaseOutcome::OwnedElsewhere => Err(bound_elsewhere(&guid)),
        }
    }

    /// `POST /v1/instances/{guid}/release` (operators): releases whatever binding the
    /// instance has and answers it; 404 when it has none.
    pub(crate) fn release_instance_by_operator(
        &self,
        caller: &Role,
        guid: &str,
    ) -> Result<InstanceBinding, CaError> {
        let guid = parse_guid(guid)?;
        let audit = release_event(&self.td_caller(caller), &guid, false);
        match self
            .store
            .release_binding(&guid, None, SystemTime::now(), &[audit])?
        {
            ReleaseOutcome::Released(b) => {
                tracing::info!(instance = %guid, owner = %b.owner, by = %caller.spiffe_id(self.td()), "instance binding released");
                Ok(b)
            }
            ReleaseOutcome::NotBound | ReleaseOutcome::OwnedElsewhere => Err(CaError::NotFound(
                format!("instance {guid} is not bound (never bound, released, or its last certificate expired)"),
            )),
        }
    }
}

impl Ca {
    fn td_caller(&self, caller: &Role) -> String {
        caller.spiffe_id(self.td())
    }
}

/// The audit event of a release (appended only if a binding was released).
fn release_event(actor: &str, guid: &Guid, by_owner: bool) -> AuditEvent {
    AuditEvent::new(
        actor,
        "instance.released",
        format!("instance/{guid}"),
        serde_json::json!({"released_by": if by_owner { "owner" } else { "operator" }}),
    )
}

fn parse_guid(guid: &str) -> Result<Guid, CaError> {
    guid.parse()
        .map_err(|e| CaError::invalid("instance_guid", e))
}
