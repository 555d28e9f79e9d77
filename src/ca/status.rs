//! What the CA reports about itself: counters and gauges for `/metrics`.

use std::time::SystemTime;

use super::{Ca, CaError};
use crate::metrics::Metrics;
use crate::store::GenerationState;

impl Ca {
    /// Whether the store answers now (for readiness; quick either way).
    pub(crate) fn check_store(&self) -> Result<(), CaError> {
        Ok(self.store.ping()?)
    }

    /// The counters, for the layers that count events the CA does not see (HTTP responses,
    /// refused joins).
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// `GET /metrics`: the counters and the authority gauges as Prometheus text.
    pub(crate) fn render_metrics(&self) -> Result<String, CaError> {
        let (gens, seq) = self.authority.generations()?;
        let mut gauges = vec![("lanyard_trust_bundle_sequence".to_string(), seq as f64)];
        for state in [
            GenerationState::Prepared,
            GenerationState::Active,
            GenerationState::Retiring,
            GenerationState::Retired,
        ] {
            let n = gens.iter().filter(|(g, _)| g.state == state).count();
            gauges.push((
                format!(
                    "lanyard_authority_generations{{state=\"{}\"}}",
                    state.as_str()
                ),
                n as f64,
            ));
        }
        let unix = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0)
        };
        if let Some((g, _)) = gens
            .iter()
            .find(|(g, _)| g.state == GenerationState::Active)
        {
            gauges.push((
                "lanyard_active_root_not_after_seconds".into(),
                unix(g.root.not_after),
            ));
            if let Some(im) = g.intermediates.last() {
                gauges.push((
                    "lanyard_active_intermediate_not_after_seconds".into(),
                    unix(im.not_after),
                ));
            }
        }
        Ok(self.metrics.render(&gauges))
    }
}
