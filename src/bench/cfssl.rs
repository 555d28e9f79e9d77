//! The same issuance load against cfssl (`cfssl serve`, its `/api/v1/cfssl/sign`), over
//! mutual TLS with keep-alive connections like Lanyard's, so throughputs measured in one run
//! compare. cfssl verifies each CSR's signature and signs; it records nothing (no database
//! is configured), so it is the lighter of the two.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{load, BenchOptions};
use crate::client::{new_key_and_csr, ClientError};
use crate::x509::inspect::parse_pem_certs;

fn setup(m: impl std::fmt::Display) -> ClientError {
    ClientError::Setup(format!("cfssl: {m}"))
}

/// A TLS client trusting `ca.pem` and presenting `client.pem` / `client-key.pem` (both
/// from `dir`, as `cfssl gencert` writes them).
fn tls(dir: &std::path::Path) -> Result<rustls::ClientConfig, ClientError> {
    let read = |n: &str| std::fs::read(dir.join(n)).map_err(|e| setup(format!("{n}: {e}")));
    let mut roots = rustls::RootCertStore::empty();
    for der in parse_pem_certs(&read("ca.pem")?).map_err(setup)? {
        roots.add(CertificateDer::from(der)).map_err(setup)?;
    }
    let chain: Vec<CertificateDer<'static>> = parse_pem_certs(&read("client.pem")?)
        .map_err(setup)?
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let key = pem::parse(read("client-key.pem")?).map_err(setup)?;
    let key = match key.tag() {
        "EC PRIVATE KEY" => PrivateKeyDer::Sec1(key.into_contents().into()),
        "RSA PRIVATE KEY" => PrivateKeyDer::Pkcs1(key.into_contents().into()),
        _ => PrivateKeyDer::Pkcs8(key.into_contents().into()),
    };
    rustls::ClientConfig::builder_with_provider(crate::tls_provider::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(setup)?
        .with_root_certificates(Arc::new(roots))
        .with_client_auth_cert(chain, key)
        .map_err(setup)
}

/// Issues `o.requests` certificates from cfssl at `o.target` with `o.concurrency` workers.
pub(super) async fn run(o: &BenchOptions) -> Result<serde_json::Value, ClientError> {
    let base = o
        .target
        .clone()
        .ok_or_else(|| setup("--target (cfssl's URL) is required"))?;
    let dir = o
        .target_dir
        .clone()
        .ok_or_else(|| setup("--target-dir (ca.pem, client.pem, client-key.pem) is required"))?;
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls(&dir)?)
        .build()
        .map_err(setup)?;
    let (_k, csr) = new_key_and_csr()?;
    let url = format!("{}/api/v1/cfssl/sign", base.trim_end_matches('/'));
    let body = Arc::new(serde_json::json!({ "certificate_request": csr }).to_string());
    let one = move |_n: usize| {
        let (http, url, body) = (http.clone(), url.clone(), body.clone());
        async move {
            let r = http
                .post(url)
                .header("Content-Type", "application/json")
                .body(body.as_str().to_owned())
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = r.status();
            let v: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
            let signed = v["success"] == true && v["result"]["certificate"].is_string();
            if status.is_success() && signed {
                Ok(1)
            } else {
                Err(format!("cfssl answered {status}: {v}"))
            }
        }
    };
    let report = load::drive(o.concurrency, o.requests, o.rate, o.server_pid, one).await;
    Ok(report.json(o))
}
