//! A cell restart as the agent sees it: `requests` instance PUTs arrive at once on its local
//! API; the clock stops when every PUT is answered and every credential (certificate and
//! key) is on disk. The agent batches what arrives together into batch calls to the CA.

use std::time::Instant;

use super::{ms, BenchOptions};
use crate::agent::files;
use crate::client::ClientError;

fn setup(m: impl std::fmt::Display) -> ClientError {
    ClientError::Setup(format!("agent bench: {m}"))
}

/// PUTs `o.requests` instances to the agent at `o.target` at once.
pub(super) async fn run(o: &BenchOptions) -> Result<serde_json::Value, ClientError> {
    let base = o
        .target
        .clone()
        .ok_or_else(|| setup("--target (the agent's local API URL) is required"))?;
    let root = o
        .target_dir
        .clone()
        .ok_or_else(|| setup("--target-dir (the agent's credentials root) is required"))?;
    let n = o.requests;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(n)
        .build()
        .map_err(setup)?;
    let run_id = std::process::id() & 0xffff;
    let guid = |i: usize| format!("a9e{run_id:04x}-0000-4000-8000-{i:012x}");
    let start = Instant::now();
    let mut puts = Vec::with_capacity(n);
    for i in 0..n {
        let (http, url) = (
            http.clone(),
            format!("{}/v1/instances/{}", base.trim_end_matches('/'), guid(i)),
        );
        puts.push(tokio::spawn(async move {
            let body = serde_json::json!({
                "app_guid": "6f1e0c9a-2b3d-4c5e-8f7a-1b2c3d4e5f60",
                "space_guid": "5e0d9b8a-1a2c-4b4d-9e6f-0a1b2c3d4e5f",
                "organization_guid": "4d9c8a7b-0f1b-4a3c-8d5e-f90a1b2c3d4e",
                "container_ip": format!("10.254.{}.{}", i / 250, i % 250 + 1),
            });
            let r = http.put(url).json(&body).send().await;
            match r {
                Ok(r) if r.status().is_success() => Ok(start.elapsed()),
                Ok(r) => Err(format!(
                    "{}: {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                )),
                Err(e) => Err(e.to_string()),
            }
        }));
    }
    let (mut answered, mut slowest, mut first_failure) = (0usize, std::time::Duration::ZERO, None);
    for p in puts {
        match p.await {
            Ok(Ok(t)) => {
                answered += 1;
                slowest = slowest.max(t);
            }
            Ok(Err(e)) => {
                first_failure.get_or_insert(e);
            }
            Err(e) => {
                first_failure.get_or_insert(e.to_string());
            }
        }
    }
    let on_disk = (0..n)
        .filter(|i| {
            let dir = root.join(guid(*i));
            [files::CERT_FILE, files::KEY_FILE]
                .iter()
                .all(|f| std::fs::metadata(dir.join(f)).is_ok_and(|m| m.len() > 0))
        })
        .count();
    let elapsed = start.elapsed();
    Ok(serde_json::json!({
        "mode": "agent",
        "puts": n,
        "answered": answered,
        "on_disk": on_disk,
        "first_failure": first_failure,
        "all_on_disk_ms": (on_disk == n).then(|| ms(elapsed)),
        "slowest_put_ms": ms(slowest),
    }))
}
