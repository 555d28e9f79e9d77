//! `lanyard bench`: a load generator against a running CA. It joins as a throw-away cell
//! (with the operator credential), then issues instance certificates from `concurrency`
//! workers, one per request or in batches, and prints throughput and latency percentiles.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api;
use crate::client::{new_key_and_csr, tls_config, ApiClient, ClientError};

/// What to measure.
#[derive(Debug, Clone)]
pub(crate) struct BenchOptions {
    /// Total certificates to issue.
    pub requests: usize,
    /// Concurrent workers (connections).
    pub concurrency: usize,
    /// Certificates per request; 1 uses `/v1/instance-certificates`, more uses `/batch`.
    pub batch_size: usize,
    /// Trust bundle long polls held open (each on its own connection) during the run.
    pub watchers: usize,
}

/// The measured figures.
#[derive(Debug, Clone)]
pub(crate) struct BenchReport {
    /// Certificates issued.
    pub issued: usize,
    /// Requests that failed.
    pub failures: usize,
    /// Wall time.
    pub elapsed: Duration,
    /// Per-request latencies, sorted.
    pub latencies: Vec<Duration>,
}

impl BenchReport {
    fn pct(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i.min(self.latencies.len() - 1)]
    }

    /// One readable paragraph.
    pub(crate) fn render(&self, o: &BenchOptions) -> String {
        let rate = self.issued as f64 / self.elapsed.as_secs_f64().max(1e-9);
        format!(
            "issued {} certificates ({} failed requests) in {:.2}s with {} workers, {} per request, {} bundle watchers: {:.0} certificates/s\n\
             request latency: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms\n",
            self.issued,
            self.failures,
            self.elapsed.as_secs_f64(),
            o.concurrency,
            o.batch_size,
            o.watchers,
            rate,
            ms(self.pct(0.5)),
            ms(self.pct(0.9)),
            ms(self.pct(0.99)),
            ms(self.latencies.last().copied().unwrap_or_default()),
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Joins as a bench cell with `operator`, then runs the load against `server`.
pub(crate) async fn run(
    server: &str,
    operator: &ApiClient,
    bundle_pem: &str,
    o: &BenchOptions,
) -> Result<BenchReport, ClientError> {
    let name = format!("bench-{}", std::process::id());
    let t: api::JoinTokenResponse = operator
        .post(
            "/v1/join-tokens",
            &api::JoinTokenRequest {
                role: "cell".into(),
                name,
                ttl_seconds: Some(300.into()),
            },
            None,
        )
        .await?;
    let (key, csr) = new_key_and_csr()?;
    let anon = ApiClient::new(server, tls_config(bundle_pem.as_bytes(), None)?)?;
    let cell: api::IssuedCertificate = anon
        .post("/v1/join", &api::CsrRequest { csr }, Some(&t.token))
        .await?;
    let client = ApiClient::new(
        server,
        tls_config(bundle_pem.as_bytes(), Some((&cell.certificate_chain, &key)))?,
    )?;
    // One CSR for every request: the CA verifies each one anyway, and client-side key
    // generation would only measure the load generator.
    let (_k, csr) = new_key_and_csr()?;
    let batch = o.batch_size.max(1);
    let total_requests = o.requests.div_ceil(batch);
    let next = Arc::new(AtomicUsize::new(0));
    // Instance GUIDs of this run only: each run joins as a new cell, and an instance stays
    // bound to the cell that first obtained it, so reusing another run's GUIDs is a 409.
    let run = crate::ids::Serial::random()
        .map_err(|_| ClientError::Setup("no random run id".into()))?
        .to_string();
    let run: Arc<str> = Arc::from(&run[..8.min(run.len())]);
    // Watchers hold long polls the whole time, as apps and proxies do in production.
    // The clock starts once they are connected, so their handshakes are not measured.
    let mut held = Vec::with_capacity(o.watchers);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(o.watchers.max(1));
    for _ in 0..o.watchers {
        let c = ApiClient::new(server, tls_config(bundle_pem.as_bytes(), None)?)?;
        let ready = ready_tx.clone();
        held.push(tokio::spawn(async move {
            let seq = match c.trust_bundle(None, 0, false).await {
                Ok(Some((seq, _))) => seq,
                _ => return,
            };
            let _ = ready.send(()).await;
            let _ = c.trust_bundle(Some(seq), 300, false).await;
        }));
    }
    drop(ready_tx);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for _ in 0..o.watchers {
        if tokio::time::timeout_at(deadline, ready_rx.recv())
            .await
            .ok()
            .flatten()
            .is_none()
        {
            break;
        }
    }
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..o.concurrency.max(1) {
        let (client, next, csr, run) = (client.clone(), next.clone(), csr.clone(), run.clone());
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let (mut issued, mut failures) = (0usize, 0usize);
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total_requests {
                    break;
                }
                let req = |i: usize| api::InstanceCertificateRequest {
                    csr: csr.clone(),
                    instance_guid: format!("be{run}-{:014x}", n * batch + i),
                    app_guid: "be0c9a2b3d4c5e8f7a1b2c3d4e5f60".into(),
                    space_guid: "be0d9b8a1a2c4b4d9e6f0a1b2c3d4e5f".into(),
                    organization_guid: "be9c8a7b0f1b4a3c8d5ef90a1b2c3d4e".into(),
                    container_ip: None,
                    internal_routes: None,
                    ttl_seconds: Some(3600.into()),
                };
                let t0 = Instant::now();
                if batch == 1 {
                    match client
                        .post::<_, api::IssuedCertificate>(
                            "/v1/instance-certificates",
                            &req(0),
                            None,
                        )
                        .await
                    {
                        Ok(_) => issued += 1,
                        Err(_) => failures += 1,
                    }
                } else {
                    let body = api::BatchRequest {
                        requests: (0..batch).map(req).collect(),
                    };
                    match client
                        .post::<_, api::BatchResponse>(
                            "/v1/instance-certificates/batch",
                            &body,
                            None,
                        )
                        .await
                    {
                        Ok(r) => issued += r.results.iter().filter(|x| x.status == 201).count(),
                        Err(_) => failures += 1,
                    }
                }
                lat.push(t0.elapsed());
            }
            (lat, issued, failures)
        }));
    }
    let mut report = BenchReport {
        issued: 0,
        failures: 0,
        elapsed: Duration::ZERO,
        latencies: vec![],
    };
    for w in workers {
        if let Ok((lat, issued, failures)) = w.await {
            report.latencies.extend(lat);
            report.issued += issued;
            report.failures += failures;
        }
    }
    report.elapsed = start.elapsed();
    report.latencies.sort();
    for h in held {
        h.abort();
    }
    Ok(report)
}
