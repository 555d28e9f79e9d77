//! Authority generations as use cases: listing, the operator's rotation steps, the automatic
//! schedule, intermediate renewal, the published trust bundle and CRLs.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::{Ca, CaError};
use crate::authority::{GenerationStatus, Intermediate, StepBy, TrustBundle};
use crate::ids::AuthorityId;
use crate::ids::Role;
use crate::rotation::{intermediate_due, next_due, Due, Step};
use crate::store::GenerationState;

impl Ca {
    /// The current trust bundle.
    pub(crate) fn bundle(&self) -> Arc<TrustBundle> {
        self.authority.bundle()
    }

    /// A receiver that sees every new bundle (long polls, the server's background duties).
    pub(crate) fn subscribe_bundle(&self) -> watch::Receiver<Arc<TrustBundle>> {
        self.authority.subscribe()
    }

    /// The active generation, if there is one (readiness).
    pub(crate) fn active_authority(&self) -> Option<AuthorityId> {
        self.authority.active().map(|(id, _)| id)
    }

    /// `GET /v1/authorities`: every generation, oldest first, with the latest notAfter each
    /// one signed, and the bundle sequence.
    pub(crate) fn generations(&self) -> Result<(Vec<GenerationStatus>, u64), CaError> {
        Ok(self.authority.generations()?)
    }

    /// When the prepared generation `g` may be activated without `force`; `None` for any
    /// other state.
    pub(crate) fn activatable_at(&self, g: &crate::store::AuthorityRecord) -> Option<SystemTime> {
        crate::rotation::activatable_at(g, self.config.rotation.propagation_delay.0)
    }

    /// The next step the server takes by itself among `gens`, and when it is due.
    pub(crate) fn next_automatic_step(&self, gens: &[GenerationStatus]) -> Option<Due> {
        let last_leaf =
            |id: AuthorityId| gens.iter().find(|(g, _)| g.id == id).and_then(|(_, l)| *l);
        let r = &self.config.rotation;
        next_due(
            &gens.iter().map(|(g, _)| g.clone()).collect::<Vec<_>>(),
            last_leaf,
            r.propagation_delay.0,
            r.automatic,
            SystemTime::now(),
        )
    }

    /// One generation with the latest notAfter it signed, or 404.
    pub(crate) fn generation(&self, id: AuthorityId) -> Result<GenerationStatus, CaError> {
        let (gens, _) = self.authority.generations()?;
        gens.into_iter()
            .find(|(g, _)| g.id == id)
            .ok_or_else(|| CaError::NotFound(format!("authority {id} does not exist")))
    }

    /// `POST /v1/authorities/prepare`: a new generation, published at once.
    pub(crate) fn prepare(&self, caller: &Role) -> Result<GenerationStatus, CaError> {
        let rec = self.authority.prepare(&self.by_operator(caller))?;
        self.generation(rec.id)
    }

    /// `POST /v1/authorities/{id}/activate`: the prepared generation `id` starts signing;
    /// `force` overrides the propagation delay.
    pub(crate) fn activate(
        &self,
        caller: &Role,
        id: AuthorityId,
        force: bool,
    ) -> Result<GenerationStatus, CaError> {
        self.authority
            .activate(id, force, &self.by_operator(caller))?;
        self.generation(id)
    }

    /// `POST /v1/authorities/{id}/retire`: the retiring generation `id` leaves the bundle;
    /// `force` overrides the wait for its certificates to expire.
    pub(crate) fn retire(
        &self,
        caller: &Role,
        id: AuthorityId,
        force: bool,
    ) -> Result<GenerationStatus, CaError> {
        self.authority
            .retire(id, force, &self.by_operator(caller))?;
        self.generation(id)
    }

    /// `GET /v1/crl/{id}`: the DER CRL of generation `id`'s newest intermediate, or of the
    /// one whose key identifier is `intermediate`, valid for `validity` (cached by the
    /// authority).
    pub(crate) fn crl(
        &self,
        id: AuthorityId,
        intermediate: Option<&[u8]>,
        validity: Duration,
    ) -> Result<Vec<u8>, CaError> {
        let which = intermediate.map_or(Intermediate::Newest, Intermediate::KeyId);
        self.authority.crl(id, which, validity)?.ok_or_else(|| {
            CaError::NotFound(format!(
                "intermediate: authority {id} has no intermediate with key identifier {}",
                hex::encode(intermediate.unwrap_or_default())
            ))
        })
    }

    /// Renews the active intermediate under the same root when a third of its life is left,
    /// so issuance never runs into its end, whether or not the rotation schedule is on.
    /// Returns the generation whose intermediate was renewed.
    pub(crate) fn renew_intermediate_if_due(
        &self,
        replica: &str,
    ) -> Result<Option<AuthorityId>, CaError> {
        let (gens, _) = self.authority.generations()?;
        let now = SystemTime::now();
        let due = gens
            .iter()
            .find(|(g, _)| g.state == GenerationState::Active)
            .and_then(|(g, _)| intermediate_due(g, now).map(|why| (g.id, why)));
        let Some((id, why)) = due else {
            return Ok(None);
        };
        self.authority
            .renew_intermediate(id, &by_schedule(&why.to_string(), replica))?;
        tracing::info!(authority = %id, reason = %why, "intermediate renewed");
        Ok(Some(id))
    }

    /// Takes the step the automatic rotation schedule wants now, if any (at most one per
    /// call). Returns whether a step was taken.
    pub(crate) fn run_scheduled_rotation_step(&self, replica: &str) -> Result<bool, CaError> {
        let step = self.authority.next_scheduled_step()?;
        match &step {
            Some(Step::Prepare(why)) => {
                let g = self
                    .authority
                    .prepare(&by_schedule(&why.to_string(), replica))?;
                tracing::info!(authority = %g.id, reason = %why, "automatic rotation: prepared");
            }
            Some(Step::Activate(id, why, deadline)) => {
                // The rules are checked again under the authority's lock; only the
                // five-sixths deadline may override the propagation delay.
                self.authority
                    .activate(*id, *deadline, &by_schedule(&why.to_string(), replica))?;
                tracing::info!(authority = %id, reason = %why, "automatic rotation: activated");
            }
            Some(Step::Retire(id, why)) => {
                self.authority
                    .retire(*id, false, &by_schedule(&why.to_string(), replica))?;
                tracing::info!(authority = %id, reason = %why, "automatic rotation: retired");
            }
            Some(Step::RenewIntermediate(id, why)) => {
                self.authority
                    .renew_intermediate(*id, &by_schedule(&why.to_string(), replica))?;
                tracing::info!(authority = %id, reason = %why, "automatic rotation: intermediate renewed");
            }
            None => {}
        }
        Ok(step.is_some())
    }
}

impl Ca {
    /// An operator's rotation step, for its audit entry.
    fn by_operator(&self, caller: &Role) -> StepBy {
        StepBy {
            actor: caller.spiffe_id(self.td()),
            reason: None,
            replica: None,
        }
    }
}

/// A step of the automatic schedule on `replica`, with the schedule's reason.
fn by_schedule(why: &str, replica: &str) -> StepBy {
    StepBy {
        actor: "schedule".into(),
        reason: Some(why.to_string()),
        replica: Some(replica.to_string()),
    }
}
