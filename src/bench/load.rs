//! The load loop: `concurrency` workers take request numbers from one counter and send them,
//! either as fast as they are answered (closed loop) or each at its scheduled time (paced,
//! open loop: latency counts from the scheduled time, so a stalled server is not hidden by
//! workers that stopped sending). Around the run, the server's CPU time and RSS are read
//! from /proc when its pid is given.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::procstat::{self, ProcSample};
use super::{ms, BenchOptions};

/// The figures of one load run.
#[derive(Debug, Clone)]
pub(crate) struct LoadReport {
    /// Certificates issued.
    pub issued: usize,
    /// Requests that failed.
    pub failures: usize,
    /// The first failure, to say why.
    pub first_failure: Option<String>,
    /// Wall time.
    pub elapsed: Duration,
    /// Per-request latencies, sorted.
    pub latencies: Vec<Duration>,
    /// The server's CPU time during the run.
    pub server_cpu: Option<Duration>,
    /// The server's RSS at the end, in bytes.
    pub server_rss: Option<u64>,
    /// The server's context switches during the run (threads alive at both ends).
    pub server_switches: Option<u64>,
    /// The server's threads at the end.
    pub server_threads: Option<u64>,
}

impl LoadReport {
    fn pct(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i.min(self.latencies.len() - 1)]
    }

    /// The figures as JSON (times in milliseconds and microseconds).
    pub(crate) fn json(&self, o: &BenchOptions) -> serde_json::Value {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        serde_json::json!({
            "mode": format!("{:?}", o.mode).to_lowercase(),
            "issued": self.issued,
            "failures": self.failures,
            "first_failure": self.first_failure,
            "seconds": secs,
            "workers": o.concurrency,
            "batch_size": o.batch_size.max(1),
            "watchers": o.watchers,
            "rate_target": o.rate,
            "certificates_per_second": self.issued as f64 / secs,
            "p50_ms": ms(self.pct(0.5)),
            "p90_ms": ms(self.pct(0.9)),
            "p99_ms": ms(self.pct(0.99)),
            "max_ms": ms(self.latencies.last().copied().unwrap_or_default()),
            "server_cpu_seconds": self.server_cpu.map(|c| c.as_secs_f64()),
            "server_cpu_us_per_certificate": self.server_cpu
                .filter(|_| self.issued > 0)
                .map(|c| c.as_secs_f64() * 1e6 / self.issued as f64),
            "server_rss_bytes": self.server_rss,
            "server_context_switches_per_request": self.server_switches
                .map(|c| c as f64 / self.latencies.len().max(1) as f64),
            "server_threads": self.server_threads,
        })
    }

    /// One readable paragraph from [`LoadReport::json`]'s figures.
    pub(crate) fn render_json(o: &BenchOptions, v: &serde_json::Value) -> String {
        let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
        let mut s = format!(
            "issued {} certificates ({} failed requests) in {:.2}s with {} workers, {} per request, {} bundle watchers: {:.0} certificates/s\n\
             request latency: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms\n",
            v["issued"],
            v["failures"],
            f("seconds"),
            o.concurrency,
            o.batch_size.max(1),
            o.watchers,
            f("certificates_per_second"),
            f("p50_ms"),
            f("p90_ms"),
            f("p99_ms"),
            f("max_ms"),
        );
        if let Some(us) = v["server_cpu_us_per_certificate"].as_f64() {
            s.push_str(&format!("server CPU: {us:.1} µs per certificate\n"));
        }
        if let Some(e) = v["first_failure"].as_str() {
            s.push_str(&format!("first failure: {e}\n"));
        }
        s
    }
}

/// Sends `requests` requests with `one(n)` (which answers the certificates it got) from
/// `concurrency` workers, paced at `rate` per second if given.
pub(crate) async fn drive<F, Fut>(
    concurrency: usize,
    requests: usize,
    rate: Option<f64>,
    server_pid: Option<u32>,
    one: F,
) -> LoadReport
where
    F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<usize, String>> + Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let before = server_pid.and_then(|p| ProcSample::read(p).ok());
    let start = Instant::now();
    let interval = rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(1.0 / r));
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (next, one) = (next.clone(), one.clone());
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let (mut issued, mut failures, mut first) = (0usize, 0usize, None);
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= requests {
                    break;
                }
                let t0 = match interval {
                    Some(i) => {
                        let at = start + i.mul_f64(n as f64);
                        tokio::time::sleep_until(at.into()).await;
                        at
                    }
                    None => Instant::now(),
                };
                match one(n).await {
                    Ok(k) => issued += k,
                    Err(e) => {
                        failures += 1;
                        first.get_or_insert(e);
                    }
                }
                lat.push(t0.elapsed());
            }
            (lat, issued, failures, first)
        }));
    }
    let mut report = LoadReport {
        issued: 0,
        failures: 0,
        first_failure: None,
        elapsed: Duration::ZERO,
        latencies: vec![],
        server_cpu: None,
        server_rss: None,
        server_switches: None,
        server_threads: None,
    };
    for w in workers {
        if let Ok((lat, issued, failures, first)) = w.await {
            report.latencies.extend(lat);
            report.issued += issued;
            report.failures += failures;
            if report.first_failure.is_none() {
                report.first_failure = first;
            }
        }
    }
    report.elapsed = start.elapsed();
    report.latencies.sort();
    if let (Some(pid), Some(b)) = (server_pid, before) {
        if let Ok(a) = ProcSample::read(pid) {
            report.server_cpu = Some(procstat::cpu_between(&b, &a));
            report.server_rss = Some(a.rss_bytes);
            report.server_switches = Some(a.context_switches.saturating_sub(b.context_switches));
            report.server_threads = Some(a.threads);
        }
    }
    report
}
