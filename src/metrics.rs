//! The CA's metrics for `GET /metrics`, in the Prometheus text format (0.0.4) through
//! prometheus-client, and the recent activity the console shows ([`Activity`]). Owned by the
//! `Ca`, never global.
//!
//! Counters and the histogram are atomics updated where things happen; the authority gauges
//! are read at scrape time from the generations the process holds in memory, so a scrape
//! never reads the store.

use std::time::{Duration, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::activity::Activity;
use crate::store::{AuthorityRecord, CertificateKind, CertificateRecord, GenerationState};

/// The `Content-Type` of `GET /metrics`.
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Issuance latency buckets, in seconds: a signature and a durable write take milliseconds; a
/// queue behind a busy pool or a slow database takes longer.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabel {
    class: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Why a CSR was refused, as the `reason` label of `lanyard_csr_rejects_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CsrReject {
    /// Not PEM, not DER, or not a PKCS#10 request.
    Malformed,
    /// Its signature does not verify with its own key.
    BadSignature,
    /// A key type or size the CA does not accept.
    UnsupportedKey,
}

impl CsrReject {
    fn as_str(self) -> &'static str {
        match self {
            CsrReject::Malformed => "malformed",
            CsrReject::BadSignature => "bad_signature",
            CsrReject::UnsupportedKey => "unsupported_key",
        }
    }
}

/// The CA's metrics.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    issued: Family<KindLabel, Counter>,
    issuances: Family<OutcomeLabels, Counter>,
    issuance_seconds: Family<EndpointLabel, Histogram, fn() -> Histogram>,
    csr_rejects: Family<ReasonLabel, Counter>,
    responses: Family<ClassLabel, Counter>,
    join_tokens_created: Counter,
    join_failures: Counter,
    bundle_watchers: Gauge,
    activity: Activity,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let issued = Family::<KindLabel, Counter>::default();
        registry.register(
            "lanyard_certificates_issued",
            "Certificates issued since start, by kind",
            issued.clone(),
        );
        let issuances = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "lanyard_issuances",
            "Certificate requests since start, by kind and outcome (issued; rejected: the \
             caller's fault, 4xx; failed: the CA's, 5xx or 503); a batch counts each item",
            issuances.clone(),
        );
        let issuance_seconds =
            Family::<EndpointLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "lanyard_issuance_duration_seconds",
            "Time from an issuing request's arrival to its answer, by endpoint",
            issuance_seconds.clone(),
        );
        let csr_rejects = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "lanyard_csr_rejects",
            "CSRs refused since start, by reason",
            csr_rejects.clone(),
        );
        let responses = Family::<ClassLabel, Counter>::default();
        registry.register(
            "lanyard_http_responses",
            "API responses since start, by status class",
            responses.clone(),
        );
        let join_tokens_created = Counter::default();
        registry.register(
            "lanyard_join_tokens_created",
            "Join tokens created since start",
            join_tokens_created.clone(),
        );
        let join_failures = Counter::default();
        registry.register(
            "lanyard_join_failures",
            "Refused joins since start",
            join_failures.clone(),
        );
        let bundle_watchers = Gauge::default();
        registry.register(
            "lanyard_trust_bundle_watchers",
            "Trust bundle long polls held open now",
            bundle_watchers.clone(),
        );
        // Every series exists from the start at zero, so rates and alerts need no
        // `absent()`: the kinds an API caller can ask for, every outcome and reason.
        for kind in [
            CertificateKind::Instance,
            CertificateKind::Cell,
            CertificateKind::Operator,
            CertificateKind::Component,
            CertificateKind::Server,
        ] {
            let _ = issued.get_or_create(&KindLabel {
                kind: kind.as_str(),
            });
            for outcome in ["issued", "rejected", "failed"] {
                let _ = issuances.get_or_create(&OutcomeLabels {
                    kind: kind.as_str(),
                    outcome,
                });
            }
        }
        for r in [
            CsrReject::Malformed,
            CsrReject::BadSignature,
            CsrReject::UnsupportedKey,
        ] {
            let _ = csr_rejects.get_or_create(&ReasonLabel { reason: r.as_str() });
        }
        for class in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
            let _ = responses.get_or_create(&ClassLabel { class });
        }
        Metrics {
            registry,
            issued,
            issuances,
            issuance_seconds,
            csr_rejects,
            responses,
            join_tokens_created,
            join_failures,
            bundle_watchers,
            activity: Activity::default(),
        }
    }
}

/// Decrements the watcher gauge when a held long poll ends, however it ends.
#[derive(Debug)]
pub(crate) struct WatcherGuard(Gauge);

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    /// Counts issued certificates (by kind, and as `issued` outcomes) and tells the activity.
    pub(crate) fn issued(&self, records: &[&CertificateRecord]) {
        for r in records {
            let kind = r.kind.as_str();
            self.issued.get_or_create(&KindLabel { kind }).inc();
            self.issuances
                .get_or_create(&OutcomeLabels {
                    kind,
                    outcome: "issued",
                })
                .inc();
        }
        self.activity.issued(records, SystemTime::now());
    }

    /// Counts `n` certificate requests of `kind` answered with `status` (not a success).
    /// `kind` is a [`CertificateKind`]'s name (`instance`, `cell`, ...).
    pub(crate) fn issuance_refused(&self, kind: &'static str, status: u16, n: u64) {
        let outcome = if status >= 500 { "failed" } else { "rejected" };
        self.issuances
            .get_or_create(&OutcomeLabels { kind, outcome })
            .inc_by(n);
        self.activity.refused(n, SystemTime::now());
    }

    /// Records how long an issuing request to `endpoint` took.
    pub(crate) fn issuance_latency(&self, endpoint: &'static str, took: Duration) {
        self.issuance_seconds
            .get_or_create(&EndpointLabel { endpoint })
            .observe(took.as_secs_f64());
    }

    /// Counts a refused CSR.
    pub(crate) fn csr_rejected(&self, why: CsrReject) {
        self.csr_rejects
            .get_or_create(&ReasonLabel {
                reason: why.as_str(),
            })
            .inc();
    }

    /// Counts one HTTP response by status class (1xx..5xx).
    pub(crate) fn response(&self, status: u16) {
        let class = match status / 100 {
            0 | 1 => "1xx",
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            _ => "5xx",
        };
        self.responses.get_or_create(&ClassLabel { class }).inc();
    }

    /// Counts a created join token.
    pub(crate) fn join_token_created(&self) {
        self.join_tokens_created.inc();
    }

    /// Counts a refused join.
    pub(crate) fn join_failed(&self) {
        self.join_failures.inc();
    }

    /// Counts a held trust bundle long poll until the guard is dropped.
    pub(crate) fn bundle_watcher(&self) -> WatcherGuard {
        self.bundle_watchers.inc();
        WatcherGuard(self.bundle_watchers.clone())
    }

    /// What this replica saw lately, for the console.
    pub(crate) fn activity(&self) -> &Activity {
        &self.activity
    }

    /// The metrics as Prometheus text, with the gauges of `generations` (as held in memory)
    /// and the bundle `sequence`.
    pub(crate) fn render(
        &self,
        generations: Vec<AuthorityRecord>,
        sequence: u64,
    ) -> Result<String, std::fmt::Error> {
        use prometheus_client::encoding::prometheus_text::encode;
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        // The authority gauges are made per scrape from a snapshot: a registry of their own.
        let mut scrape = Registry::default();
        scrape.register_collector(Box::new(AuthorityGauges {
            generations,
            sequence,
        }));
        encode(&mut out, &scrape)?;
        Ok(out)
    }
}

/// The gauges of the authority generations, from one snapshot.
#[derive(Debug)]
struct AuthorityGauges {
    generations: Vec<AuthorityRecord>,
    sequence: u64,
}

const STATES: [GenerationState; 4] = [
    GenerationState::Prepared,
    GenerationState::Active,
    GenerationState::Retiring,
    GenerationState::Retired,
];

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as f64)
        .unwrap_or(0.0)
}

fn gauge<N: prometheus_client::encoding::EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: Vec<(Vec<(&'static str, String)>, N)>,
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in series {
        // An empty label set writes no braces.
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for AuthorityGauges {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        gauge(
            &mut e,
            "lanyard_trust_bundle_sequence",
            "The trust bundle's sequence: it increases by one whenever its set of roots changes",
            vec![(vec![], self.sequence as i64)],
        )?;
        gauge(
            &mut e,
            "lanyard_authority_generations",
            "Authority generations, by state",
            STATES
                .iter()
                .map(|s| {
                    let n = self.generations.iter().filter(|g| g.state == *s).count();
                    (vec![("state", s.as_str().to_string())], n as i64)
                })
                .collect(),
        )?;
        // Per generation (retired ones left out: their number only grows and their dates
        // no longer matter): its state as a 0/1 set, and its certificates' expiries.
        let live: Vec<&AuthorityRecord> = self
            .generations
            .iter()
            .filter(|g| g.state != GenerationState::Retired)
            .collect();
        gauge(
            &mut e,
            "lanyard_authority_state",
            "1 for the state each prepared, active or retiring generation is in, 0 for the others",
            live.iter()
                .flat_map(|g| {
                    STATES.iter().map(|s| {
                        (
                            vec![
                                ("authority", g.id.to_string()),
                                ("state", s.as_str().to_string()),
                            ],
                            i64::from(g.state == *s),
                        )
                    })
                })
                .collect(),
        )?;
        gauge(
            &mut e,
            "lanyard_authority_root_not_after_seconds",
            "When each prepared, active or retiring generation's root expires (Unix time)",
            live.iter()
                .map(|g| {
                    (
                        vec![("authority", g.id.to_string())],
                        unix(g.root.not_after),
                    )
                })
                .collect(),
        )?;
        gauge(
            &mut e,
            "lanyard_authority_intermediate_not_after_seconds",
            "When each prepared, active or retiring generation's current intermediate expires (Unix time)",
            live.iter()
                .filter_map(|g| {
                    let im = g.intermediates.last()?;
                    Some((vec![("authority", g.id.to_string())], unix(im.not_after)))
                })
                .collect(),
        )?;
        if let Some(g) = self
            .generations
            .iter()
            .find(|g| g.state == GenerationState::Active)
        {
            gauge(
                &mut e,
                "lanyard_active_root_not_after_seconds",
                "When the active generation's root expires (Unix time)",
                vec![(vec![], unix(g.root.not_after))],
            )?;
            if let Some(im) = g.intermediates.last() {
                gauge(
                    &mut e,
                    "lanyard_active_intermediate_not_after_seconds",
                    "When the active generation's intermediate expires (Unix time)",
                    vec![(vec![], unix(im.not_after))],
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_as_prometheus_text_with_type_lines() {
        let m = Metrics::default();
        m.response(201);
        m.response(422);
        m.issuance_refused("instance", 422, 2);
        m.csr_rejected(CsrReject::BadSignature);
        m.issuance_latency("/v1/instance-certificates", Duration::from_millis(3));
        let w = m.bundle_watcher();
        let text = m.render(vec![], 3).unwrap();
        assert!(
            text.contains("# TYPE lanyard_certificates_issued_total counter"),
            "{text}"
        );
        assert!(
            text.contains("lanyard_certificates_issued_total{kind=\"instance\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("lanyard_http_responses_total{class=\"4xx\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("lanyard_issuances_total{kind=\"instance\",outcome=\"rejected\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("lanyard_csr_rejects_total{reason=\"bad_signature\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE lanyard_issuance_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains(
                "lanyard_issuance_duration_seconds_bucket{endpoint=\"/v1/instance-certificates\",le=\"0.005\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("lanyard_trust_bundle_watchers 1"), "{text}");
        drop(w);
        let text = m.render(vec![], 3).unwrap();
        assert!(text.contains("lanyard_trust_bundle_watchers 0"), "{text}");
        assert!(
            text.contains("# TYPE lanyard_trust_bundle_sequence gauge"),
            "{text}"
        );
        assert!(text.contains("lanyard_trust_bundle_sequence 3"), "{text}");
        assert!(
            text.contains("lanyard_authority_generations{state=\"active\"} 0"),
            "{text}"
        );
    }
}
