//! `lanyard bench`: the load generator and the benchmarks `scripts/bench.sh` runs. Each mode
//! measures one thing and prints a paragraph, or one JSON object with `--json`:
//!
//! - `issue` (default): joins as a throw-away cell (with the operator credential), then issues
//!   instance certificates over mutual TLS from `concurrency` keep-alive workers, one per
//!   request or in batches, closed loop or paced (`rate`); with the server's pid, its CPU per
//!   certificate from /proc.
//! - `cfssl`: the same load against cfssl's `/api/v1/cfssl/sign` ([`cfssl`]).
//! - `floor`: the crypto floor in process, a P-256 CSR verification plus one signature
//!   ([`floor`]).
//! - `in-process`: issuances through the API router without sockets, for instruction counts
//!   ([`in_process`]).
//! - `agent`: PUTs at once to an agent until every credential is on disk ([`agent`]).
//! - `watchers`: bundle long polls released by a rotation step ([`watchers`]).

mod agent;
mod cfssl;
mod floor;
mod in_process;
mod load;
mod procstat;
mod watchers;

use std::sync::Arc;
use std::time::Duration;

use crate::api;
use crate::cli::BenchMode;
use crate::client::{new_key_and_csr, tls_config, ApiClient, ClientError};

pub(crate) use load::LoadReport;

/// What to measure.
#[derive(Debug, Clone)]
pub(crate) struct BenchOptions {
    /// The workload.
    pub mode: BenchMode,
    /// Total certificates to issue, iterations, or PUTs (see the CLI's `--requests`).
    pub requests: usize,
    /// Concurrent workers (connections).
    pub concurrency: usize,
    /// Certificates per request; 1 uses `/v1/instance-certificates`, more uses `/batch`.
    pub batch_size: usize,
    /// Trust bundle long polls held open.
    pub watchers: usize,
    /// Paced requests per second (open loop), if given.
    pub rate: Option<f64>,
    /// The measured server's pid, for CPU and RSS from /proc.
    pub server_pid: Option<u32>,
    /// cfssl's or the agent's URL.
    pub target: Option<String>,
    /// cfssl's credential directory or the agent's credentials root.
    pub target_dir: Option<std::path::PathBuf>,
}

/// Runs a mode that needs no CA client (`cfssl`, `floor`, `in-process`, `agent`) and
/// returns its JSON figures.
pub(crate) async fn run_local(o: &BenchOptions) -> Result<serde_json::Value, ClientError> {
    match o.mode {
        BenchMode::Cfssl => cfssl::run(o).await,
        BenchMode::Floor => {
            let n = o.requests;
            tokio::task::spawn_blocking(move || floor::run(n))
                .await
                .map_err(|e| ClientError::Setup(e.to_string()))?
        }
        BenchMode::InProcess => in_process::run(o.requests).await,
        BenchMode::Agent => agent::run(o).await,
        BenchMode::Issue | BenchMode::Watchers => Err(ClientError::Setup(
            "this mode runs against a CA (give --server and --credential)".into(),
        )),
    }
}

/// Runs a mode against a CA (`issue`, `watchers`) with the operator client.
pub(crate) async fn run_against_ca(
    server: &str,
    operator: &ApiClient,
    bundle_pem: &str,
    o: &BenchOptions,
) -> Result<serde_json::Value, ClientError> {
    let cell = join_as_cell(server, operator, bundle_pem).await?;
    match o.mode {
        BenchMode::Watchers => watchers::run(server, operator, &cell, o).await,
        _ => issue(server, &cell, o).await,
    }
}

/// A throw-away cell's client: mutual TLS with a fresh cell credential.
pub(crate) struct CellClient {
    /// Its TLS configuration (bundle and cell credential), for more connections.
    pub tls: rustls::ClientConfig,
    /// A client over it.
    pub client: ApiClient,
}

async fn join_as_cell(
    server: &str,
    operator: &ApiClient,
    bundle_pem: &str,
) -> Result<CellClient, ClientError> {
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
    let tls = tls_config(bundle_pem.as_bytes(), Some((&cell.certificate_chain, &key)))?;
    Ok(CellClient {
        client: ApiClient::new(server, tls.clone())?,
        tls,
    })
}

/// The `issue` mode: instance certificates from `concurrency` workers.
async fn issue(
    server: &str,
    cell: &CellClient,
    o: &BenchOptions,
) -> Result<serde_json::Value, ClientError> {
    // Watchers hold long polls the whole time, as apps and proxies do in production; the
    // clock starts once they are held, so their handshakes are not measured.
    let held = watchers::hold(server, &cell.tls, o.watchers).await?;
    // One CSR for every request: the CA verifies each one anyway, and client-side key
    // generation would only measure the load generator.
    let (_k, csr) = new_key_and_csr()?;
    let batch = o.batch_size.max(1);
    // Instance GUIDs of this run only: each run joins as a new cell, and an instance stays
    // bound to the cell that first obtained it, so reusing another run's GUIDs is a 409.
    let run = crate::ids::Serial::random()
        .map_err(|_| ClientError::Setup("no random run id".into()))?
        .to_string();
    let run: Arc<str> = Arc::from(&run[..8.min(run.len())]);
    let client = cell.client.clone();
    let one = move |n: usize| {
        let (client, csr, run) = (client.clone(), csr.clone(), run.clone());
        async move {
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
            if batch == 1 {
                client
                    .post::<_, api::IssuedCertificate>("/v1/instance-certificates", &req(0), None)
                    .await
                    .map(|_| 1)
                    .map_err(|e| e.to_string())
            } else {
                let body = api::BatchRequest {
                    requests: (0..batch).map(req).collect(),
                };
                client
                    .post::<_, api::BatchResponse>("/v1/instance-certificates/batch", &body, None)
                    .await
                    .map(|r| r.results.iter().filter(|x| x.status == 201).count())
                    .map_err(|e| e.to_string())
            }
        }
    };
    let report = load::drive(
        o.concurrency,
        o.requests.div_ceil(batch),
        o.rate,
        o.server_pid,
        one,
    )
    .await;
    drop(held);
    Ok(report.json(o))
}

/// The text form of a mode's JSON figures.
pub(crate) fn render(o: &BenchOptions, v: &serde_json::Value) -> String {
    match o.mode {
        BenchMode::Issue | BenchMode::Cfssl => LoadReport::render_json(o, v),
        _ => {
            let mut out = String::new();
            if let Some(m) = v.as_object() {
                for (k, x) in m {
                    out.push_str(&format!("{k}: {x}\n"));
                }
            }
            out
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
