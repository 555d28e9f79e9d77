//! The agent's own metrics for `GET /metrics` on its local API (Prometheus text format 0.0.4,
//! through prometheus-client): counters updated where renewals happen, gauges read from the
//! agent's memory at scrape time.

use std::time::SystemTime;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// The agent's counters.
#[derive(Debug)]
pub(crate) struct AgentMetrics {
    registry: Registry,
    renewals: Family<OutcomeLabel, Counter>,
    cell_renewals: Family<OutcomeLabel, Counter>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let renewals = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "lanyard_agent_renewals",
            "Instance certificate renewals since start, by outcome (success, failure)",
            renewals.clone(),
        );
        let cell_renewals = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "lanyard_agent_cell_credential_renewals",
            "Cell credential renewals since start, by outcome (success, failure)",
            cell_renewals.clone(),
        );
        for outcome in ["success", "failure"] {
            let _ = renewals.get_or_create(&OutcomeLabel { outcome });
            let _ = cell_renewals.get_or_create(&OutcomeLabel { outcome });
        }
        AgentMetrics {
            registry,
            renewals,
            cell_renewals,
        }
    }
}

fn outcome(ok: bool) -> OutcomeLabel {
    OutcomeLabel {
        outcome: if ok { "success" } else { "failure" },
    }
}

/// What the gauges show, read from the agent when scraped.
#[derive(Debug, Clone, Default)]
pub(crate) struct AgentGauges {
    /// Instances the agent keeps credentials for.
    pub instances: usize,
    /// The earliest notAfter among the instances' certificates, if any has one.
    pub earliest_expiry: Option<SystemTime>,
    /// The cell credential's notAfter.
    pub cell_not_after: Option<SystemTime>,
    /// The trust bundle sequence last received from the CA (0 before the first).
    pub bundle_sequence: u64,
}

impl AgentMetrics {
    /// Counts an instance certificate renewal.
    pub(crate) fn renewal(&self, ok: bool) {
        self.renewals.get_or_create(&outcome(ok)).inc();
    }

    /// Counts a cell credential renewal.
    pub(crate) fn cell_renewal(&self, ok: bool) {
        self.cell_renewals.get_or_create(&outcome(ok)).inc();
    }

    /// The counters and `gauges` as Prometheus text.
    pub(crate) fn render(&self, gauges: AgentGauges) -> Result<String, std::fmt::Error> {
        use prometheus_client::encoding::prometheus_text::encode;
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        let mut scrape = Registry::default();
        scrape.register_collector(Box::new(Snapshot {
            gauges,
            now: SystemTime::now(),
        }));
        encode(&mut out, &scrape)?;
        Ok(out)
    }
}

#[derive(Debug)]
struct Snapshot {
    gauges: AgentGauges,
    now: SystemTime,
}

/// Seconds from `now` to `t`, negative once `t` has passed.
fn seconds_until(t: SystemTime, now: SystemTime) -> f64 {
    match t.duration_since(now) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

fn gauge<N: prometheus_client::encoding::EncodeGaugeValue>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: N,
) -> Result<(), std::fmt::Error> {
    let m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(v).encode(m)
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let g = &self.gauges;
        gauge(
            &mut e,
            "lanyard_agent_instances",
            "Instances the agent keeps credentials for",
            g.instances as i64,
        )?;
        // Absent while no instance has a certificate: a 0 would read as "expired now".
        if let Some(t) = g.earliest_expiry {
            gauge(
                &mut e,
                "lanyard_agent_earliest_expiry_seconds",
                "Seconds until the first instance certificate expires (negative once expired)",
                seconds_until(t, self.now),
            )?;
        }
        if let Some(t) = g.cell_not_after {
            gauge(
                &mut e,
                "lanyard_agent_cell_credential_expiry_seconds",
                "Seconds until the cell credential expires (negative once expired)",
                seconds_until(t, self.now),
            )?;
        }
        gauge(
            &mut e,
            "lanyard_agent_trust_bundle_sequence",
            "The trust bundle sequence last received from the CA (0 before the first)",
            g.bundle_sequence as i64,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_agent_renders_its_counters_and_gauges_with_type_lines() {
        let m = AgentMetrics::default();
        m.renewal(true);
        m.renewal(false);
        m.renewal(true);
        let text = m
            .render(AgentGauges {
                instances: 2,
                earliest_expiry: Some(SystemTime::now() + Duration::from_secs(600)),
                cell_not_after: None,
                bundle_sequence: 4,
            })
            .unwrap();
        assert!(
            text.contains("# TYPE lanyard_agent_renewals_total counter"),
            "{text}"
        );
        assert!(
            text.contains("lanyard_agent_renewals_total{outcome=\"success\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("lanyard_agent_renewals_total{outcome=\"failure\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE lanyard_agent_instances gauge"),
            "{text}"
        );
        assert!(text.contains("lanyard_agent_instances 2"), "{text}");
        assert!(
            text.contains("lanyard_agent_trust_bundle_sequence 4"),
            "{text}"
        );
        let secs: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("lanyard_agent_earliest_expiry_seconds "))
            .unwrap()
            .parse()
            .unwrap();
        assert!((500.0..=600.0).contains(&secs), "{secs}");
        assert!(!text.contains("lanyard_agent_cell_credential_expiry_seconds"));
    }
}
