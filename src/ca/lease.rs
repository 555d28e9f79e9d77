//! The schedule lease: on a shared store, the automatic rotation schedule and intermediate
//! renewal run on one replica at a time, the one that holds this lease.

use std::time::Duration;

use super::{Ca, CaError};
use crate::store::{Lease, LeaseGrant};

/// The name of the lease in the store.
const SCHEDULE_LEASE: &str = "rotation-schedule";

impl Ca {
    /// Takes or renews the schedule lease for `replica` for `period` (see
    /// [`crate::store::Store::acquire_lease`]).
    pub(crate) fn acquire_schedule_lease(
        &self,
        replica: &str,
        period: Duration,
    ) -> Result<LeaseGrant, CaError> {
        Ok(self.store.acquire_lease(SCHEDULE_LEASE, replica, period)?)
    }

    /// Who holds the schedule lease now (`None` on an unshared store or when nobody does).
    pub(crate) fn schedule_lease(&self) -> Result<Option<Lease>, CaError> {
        Ok(self.store.current_lease(SCHEDULE_LEASE)?)
    }
}
