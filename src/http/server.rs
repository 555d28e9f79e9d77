//! The accept loop: TLS handshakes, the peer's identity, HTTP/1.1 connections, and a graceful
//! stop. The background duties it starts live in [`super::maintenance`].

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::handlers::{router, AppState};
use super::maintenance::{lease_loop, maintenance_loop, renew_schedule_lease, rotation_loop};
use super::tls::{identify, server_config, Caller, ServerCert};
use super::ServeError;
use crate::ca::Ca;

/// Most connections served at once; beyond it, accepting waits (back-pressure instead of
/// running out of file descriptors).
const MAX_CONNECTIONS: usize = 8192;

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the API on `listener` until `shutdown` completes.
pub(crate) async fn serve(
    ca: Arc<Ca>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let cred = {
        let ca = ca.clone();
        tokio::task::spawn_blocking(move || ca.load_or_issue_server_certificate()).await??
    };
    let server_cert = Arc::new(ServerCert::new(&cred)?);
    let tls = server_config(server_cert.clone())?;
    let acceptor = TlsAcceptor::from(tls);
    let port = listener.local_addr()?.port();
    let replica = ca.config().replica_name(port);
    tracing::info!(replica = %replica, "replica name");
    let state = Arc::new(AppState::new(ca.clone(), server_cert, replica));
    let app = router(state.clone());
    // The first lease attempt before the first refresh, so that a single replica (or the
    // holder) renews a due intermediate at once, as before leases.
    renew_schedule_lease(&state).await;
    let lease = tokio::spawn(lease_loop(state.clone()));
    state.refresh_local_credentials().await;

    let maintenance = tokio::spawn(maintenance_loop(state.clone()));
    let scheduler = ca
        .config()
        .rotation
        .automatic
        .then(|| tokio::spawn(rotation_loop(state.clone())));

    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let (tcp, addr) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let ca = ca.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%addr, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%addr, "TLS handshake timed out");
                    return;
                }
            };
            let certs = Arc::new(
                tls.get_ref()
                    .1
                    .peer_certificates()
                    .map(|c| c.to_vec())
                    .unwrap_or_default(),
            );
            let identity = {
                let (ca, certs) = (ca.clone(), certs.clone());
                match tokio::task::spawn_blocking(move || identify(&ca, &certs)).await {
                    Ok(i) => i,
                    Err(_) => return,
                }
            };
            let caller = Caller {
                addr,
                identity,
                certs,
            };
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(caller.clone());
                    app.clone().oneshot(req.map(axum::body::Body::new))
                },
            );
            // HTTP/1.1 only (ALPN says so); idle keep-alive connections end on shutdown.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(tls), svc);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%addr, error = %e, "connection ended with an error");
            }
        });
    }
    maintenance.abort();
    lease.abort();
    if let Some(s) = scheduler {
        s.abort();
    }
    // Idle keep-alive connections close at once; requests in flight finish (long polls are
    // answered 304 by the shutdown signal), within a grace period.
    state.shutdown();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
    Ok(())
}

/// How long a stopping server waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
