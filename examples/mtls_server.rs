//! An app server that speaks only mutual TLS with Lanyard instance credentials.
//!
//! It presents its instance certificate, requires a client certificate from the trust
//! bundle (anything else fails the handshake), and serves callers its policy allows:
//! `200` with the caller's identity and its own, `403` with the reason otherwise. Its
//! certificate and bundle follow the files on disk without a restart.
//!
//! ```sh
//! # as the backend of a route: only the router may call it
//! cargo run --example mtls_server -- --credentials /path/to/instance-dir \
//!     --allow-component gorouter --listen 127.0.0.1:9443
//! # app to app: only instances of one app (CF_INSTANCE_* variables name the files)
//! cargo run --example mtls_server -- --allow-app 6f1e0c9a-2b3d-4c5e-8f7a-1b2c3d4e5f60
//! ```
//!
//! It prints `listening on <address>` once it accepts connections (with `--listen
//! 127.0.0.1:0` the address carries the port the system chose).

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use lanyard::ids::{Guid, Name};
use lanyard::mtls::{CredentialPaths, Credentials, PeerIdentity, Policy};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// A handshake that takes longer than this is dropped, so idle sockets cannot pile up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Command line; every option can also come from the environment.
#[derive(Debug, Parser)]
#[command(about = "An app server that requires Lanyard mutual TLS and applies an allow-list")]
struct Args {
    /// Address to listen on (port 0: any free port).
    #[arg(long, env = "MTLS_LISTEN", default_value = "127.0.0.1:9443")]
    listen: SocketAddr,
    /// Credential directory (instance.crt, instance.key, trust-bundle.crt, or a component's
    /// cert.pem, key.pem, trust-bundle.pem). Without it: CF_INSTANCE_CERT, CF_INSTANCE_KEY
    /// and CF_SYSTEM_CERT_PATH.
    #[arg(long, env = "MTLS_CREDENTIALS")]
    credentials: Option<PathBuf>,
    /// Allow every instance of this app (repeatable, or comma-separated).
    #[arg(long, env = "MTLS_ALLOW_APPS", value_delimiter = ',')]
    allow_app: Vec<Guid>,
    /// Allow every app in this space.
    #[arg(long, env = "MTLS_ALLOW_SPACES", value_delimiter = ',')]
    allow_space: Vec<Guid>,
    /// Allow every app in this organization.
    #[arg(long, env = "MTLS_ALLOW_ORGS", value_delimiter = ',')]
    allow_org: Vec<Guid>,
    /// Allow this system component, e.g. gorouter.
    #[arg(long, env = "MTLS_ALLOW_COMPONENTS", value_delimiter = ',')]
    allow_component: Vec<Name>,
}

impl Args {
    fn policy(&self) -> Policy {
        let mut p = Policy::new();
        for g in &self.allow_app {
            p = p.allow_app(g.clone());
        }
        for g in &self.allow_space {
            p = p.allow_space(g.clone());
        }
        for g in &self.allow_org {
            p = p.allow_organization(g.clone());
        }
        for n in &self.allow_component {
            p = p.allow_component(n.clone());
        }
        p
    }
}

fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MTLS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mtls_server: error: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(args)) {
        eprintln!("mtls_server: error: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let paths = match &args.credentials {
        Some(dir) => CredentialPaths::detect(dir)?,
        None => CredentialPaths::from_env()?,
    };
    let creds = Credentials::open(paths, Some(lanyard::mtls::DEFAULT_POLL_INTERVAL))?;
    let policy = Arc::new(args.policy());
    let me = creds.identity()?;
    let mut config = creds.server_config()?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));

    let listener = TcpListener::bind(args.listen).await?;
    eprintln!(
        "mtls_server: {} serving; {}",
        me.describe(),
        policy.as_ref()
    );
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;

    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: pause rather than spin.
                eprintln!("mtls_server: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let creds = creds.clone();
        let policy = policy.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    eprintln!("mtls_server: {addr}: handshake refused: {e}");
                    return;
                }
                Err(_) => return,
            };
            // The handshake verified the chain; what remains is whether this peer may call.
            let verdict = match PeerIdentity::from_connection(tls.get_ref().1) {
                Ok(peer) => match policy.check(&peer) {
                    Ok(()) => Ok(peer),
                    Err(refusal) => Err(refusal.to_string()),
                },
                Err(e) => Err(e.to_string()),
            };
            if let Err(reason) = &verdict {
                eprintln!("mtls_server: {addr}: refused: {reason}");
            }
            let verdict = Arc::new(verdict);
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let answer = respond(&req, &verdict, &creds);
                async move { Ok::<_, Infallible>(answer) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                eprintln!("mtls_server: {addr}: {e}");
            }
        });
    }
}

/// `200` with both identities, or `403` with the refusal.
fn respond(
    req: &Request<hyper::body::Incoming>,
    verdict: &Result<PeerIdentity, String>,
    creds: &Credentials,
) -> Response<Full<Bytes>> {
    let (status, body) = match verdict {
        Ok(caller) => {
            let me = creds.identity().ok();
            (
                StatusCode::OK,
                serde_json::json!({
                    "caller": caller,
                    "server": {
                        "instance_guid": me.as_ref().and_then(|m| m.instance_guid.clone()),
                        "spiffe_id": me.as_ref().map(|m| m.spiffe_id.clone()),
                        "serial": creds.status().serial,
                    },
                    "path": req.uri().path(),
                }),
            )
        }
        Err(reason) => (
            StatusCode::FORBIDDEN,
            serde_json::json!({ "error": "forbidden", "reason": reason }),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string() + "\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}
