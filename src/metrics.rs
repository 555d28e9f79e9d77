//! Counters for `GET /metrics` (Prometheus text format). Owned by the `Ca`, never global.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::CertificateKind;

const KINDS: [CertificateKind; 5] = [
    CertificateKind::Instance,
    CertificateKind::Cell,
    CertificateKind::Operator,
    CertificateKind::Component,
    CertificateKind::Server,
];

fn kind_index(k: CertificateKind) -> usize {
    KINDS.iter().position(|x| *x == k).unwrap_or(0)
}

/// The CA's counters.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    issued: [AtomicU64; 5],
    responses: [AtomicU64; 6],
    join_tokens_created: AtomicU64,
    join_failures: AtomicU64,
}

impl Metrics {
    /// Counts one issued certificate.
    pub(crate) fn issued(&self, kind: CertificateKind) {
        self.issued[kind_index(kind)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one HTTP response by status class (1xx..5xx).
    pub(crate) fn response(&self, status: u16) {
        let class = (status / 100).min(5) as usize;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a created join token.
    pub(crate) fn join_token_created(&self) {
        self.join_tokens_created.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a refused join.
    pub(crate) fn join_failed(&self) {
        self.join_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters as Prometheus text, with `extra` gauges appended.
    pub(crate) fn render(&self, gauges: &[(String, f64)]) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP lanyard_certificates_issued_total Certificates issued since start, by kind."
        );
        let _ = writeln!(out, "# TYPE lanyard_certificates_issued_total counter");
        for k in KINDS {
            let _ = writeln!(
                out,
                "lanyard_certificates_issued_total{{kind=\"{}\"}} {}",
                k.as_str(),
                self.issued[kind_index(k)].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP lanyard_http_responses_total API responses since start, by status class."
        );
        let _ = writeln!(out, "# TYPE lanyard_http_responses_total counter");
        for (i, c) in self.responses.iter().enumerate().skip(1) {
            let _ = writeln!(
                out,
                "lanyard_http_responses_total{{class=\"{i}xx\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(out, "# TYPE lanyard_join_tokens_created_total counter");
        let _ = writeln!(
            out,
            "lanyard_join_tokens_created_total {}",
            self.join_tokens_created.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# TYPE lanyard_join_failures_total counter");
        let _ = writeln!(
            out,
            "lanyard_join_failures_total {}",
            self.join_failures.load(Ordering::Relaxed)
        );
        for (name, v) in gauges {
            let _ = writeln!(out, "{name} {v}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_as_prometheus_text() {
        let m = Metrics::default();
        m.issued(CertificateKind::Instance);
        m.issued(CertificateKind::Instance);
        m.response(201);
        m.response(422);
        let text = m.render(&[("lanyard_trust_bundle_sequence".into(), 3.0)]);
        assert!(text.contains("lanyard_certificates_issued_total{kind=\"instance\"} 2"));
        assert!(text.contains("lanyard_http_responses_total{class=\"4xx\"} 1"));
        assert!(text.contains("lanyard_trust_bundle_sequence 3"));
    }
}
