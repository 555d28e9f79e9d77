//! What the CA reports about itself: counters and gauges for `/metrics`.

use super::{Ca, CaError};
use crate::metrics::Metrics;

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

    /// `GET /metrics`: the counters and the authority gauges as Prometheus text, from
    /// memory only (a scrape never reads the store).
    pub(crate) fn render_metrics(&self) -> Result<String, CaError> {
        let (gens, seq) = self.authority.cached_generations();
        self.metrics
            .render(gens, seq)
            .map_err(|e| CaError::Internal(format!("encoding metrics: {e}")))
    }
}
