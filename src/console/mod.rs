//! `lanyard console`: a read-only web console for operators, served on a local address.
//!
//! Like `kubectl proxy`, the console holds the operator credential and talks to the CA with
//! it, so the browser needs no client certificate. The browser gets the page (embedded in
//! the binary, `assets`) and, through an allow-list of GET requests (`routes`), the CA's
//! answers about generations, activity, audit and certificates; never a key, and nothing that
//! changes the CA. `listen` decides where it may listen and which `Host` it answers;
//! `upstream` is the CA client that follows the credential files.

mod assets;
mod listen;
mod routes;
mod upstream;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::client::ClientError;

/// Why the console could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConsoleError {
    /// A bad flag or credential (exit 2).
    #[error("{0}")]
    Usage(String),
    /// Listening or serving failed (exit 1).
    #[error("{0}")]
    Runtime(String),
}

impl ConsoleError {
    /// The command's exit code for this failure.
    pub(crate) fn exit_code(&self) -> i32 {
        match self {
            ConsoleError::Usage(_) => 2,
            ConsoleError::Runtime(_) => 1,
        }
    }
}

/// What `lanyard console` was asked to do.
#[derive(Debug, Clone)]
pub(crate) struct ConsoleOptions {
    /// The CA URLs, in order.
    pub(crate) servers: Vec<String>,
    /// The operator credential directory.
    pub(crate) credential_dir: PathBuf,
    /// `--listen`.
    pub(crate) listen: String,
    /// `--allow-remote`.
    pub(crate) allow_remote: bool,
    /// `--accept-host` values.
    pub(crate) accept_hosts: Vec<String>,
}

/// How long, once asked to stop, open requests may take to finish.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Checks the flags alone, with nothing read or bound, so that a usage error comes first.
pub(crate) fn check_flags(
    listen: &str,
    allow_remote: bool,
    accept_hosts: &[String],
) -> Result<(), ConsoleError> {
    let addr = listen::parse_listen(listen)?;
    listen::check_exposure(addr, allow_remote)?;
    listen::HostCheck::new(addr, accept_hosts)?;
    Ok(())
}

/// Serves the console until SIGINT or SIGTERM.
pub(crate) async fn run(o: ConsoleOptions) -> Result<(), ConsoleError> {
    check_flags(&o.listen, o.allow_remote, &o.accept_hosts)?;
    let addr = listen::parse_listen(&o.listen)?;
    let upstream = upstream::Upstream::new(&o.servers, &o.credential_dir).map_err(|e| match e {
        ClientError::Setup(m) => ConsoleError::Usage(format!(
            "the credential in {}: {m}",
            o.credential_dir.display()
        )),
        other => ConsoleError::Usage(other.to_string()),
    })?;
    let listener = crate::runtime::listen_tcp(addr)
        .map_err(|e| ConsoleError::Runtime(format!("cannot listen on {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| ConsoleError::Runtime(e.to_string()))?;
    let hosts = listen::HostCheck::new(bound, &o.accept_hosts)?;
    // Say at once if the CA does not answer or refuses the credential; the console serves
    // all the same and shows it, as it does when the CA goes away later.
    let reachable = match upstream
        .get::<crate::api::AuthoritiesResponse>(routes::ALLOWED[0].0)
        .await
    {
        Ok(_) => true,
        Err(ClientError::Api(p)) => {
            tracing::warn!(status = p.status, detail = %p.detail, "the CA refuses the console's request (is the credential an operator's?)");
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "the CA cannot be reached yet; the page shows it as unreachable until it answers");
            false
        }
    };
    let url = match bound.ip() {
        std::net::IpAddr::V6(ip) => format!("http://[{ip}]:{}", bound.port()),
        std::net::IpAddr::V4(ip) => format!("http://{ip}:{}", bound.port()),
    };
    tracing::info!(
        console = %url,
        ca = %upstream.current_server(),
        hosts = %hosts.describe(),
        "operator console serving (read-only)"
    );
    crate::runtime::announce_listening(&url);
    let app = routes::router(Arc::new(routes::Console {
        upstream,
        hosts,
        reachable: std::sync::atomic::AtomicBool::new(reachable),
    }));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let mut rx = stop_rx;
        let _ = rx.wait_for(|stop| *stop).await;
    });
    let mut server = std::pin::pin!(std::future::IntoFuture::into_future(server));
    tokio::select! {
        r = &mut server => return r.map_err(|e| ConsoleError::Runtime(e.to_string())),
        _ = crate::runtime::shutdown_signal() => {}
    }
    let _ = stop_tx.send(true);
    // A long request to a slow CA must not hold the stop for long.
    let _ = tokio::time::timeout(STOP_GRACE, server).await;
    tracing::info!("console stopped");
    Ok(())
}
