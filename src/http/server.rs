//! The accept loop and the server's background duties: keeping its own certificate and the
//! local operator credential fresh, and running the automatic rotation schedule.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::handlers::{router, AppState};
use super::tls::{identify, server_config, Caller, ServerCert};
use super::ServeError;
use crate::ca::Ca;
use crate::rotation::Step;

/// Most connections served at once; beyond it, accepting waits (back-pressure instead of
/// running out of file descriptors).
const MAX_CONNECTIONS: usize = 8192;

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
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
    let state = Arc::new(AppState::new(ca.clone(), server_cert));
    let app = router(state.clone());
    refresh_local_credentials(&state).await;

    let maintenance = tokio::spawn(maintenance_loop(state.clone()));
    let scheduler = ca
        .config
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

/// Re-issues the server certificate and the local operator credential when they are past
/// two thirds of their life or signed by a generation that is no longer active, and keeps
/// the operator's `trust-bundle.pem` equal to the published bundle.
pub async fn refresh_local_credentials(st: &Arc<AppState>) {
    let st2 = st.clone();
    let res = tokio::task::spawn_blocking(move || refresh_blocking(&st2)).await;
    match res {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "refreshing local credentials failed; will retry"),
        Err(e) => tracing::warn!(error = %e, "refresh task failed"),
    }
}

/// Renews the active intermediate under the same root when a third of its life is left, so
/// issuance never runs into its end, whether or not the rotation schedule is on.
fn renew_intermediate_if_due(st: &AppState) -> Result<(), ServeError> {
    let (gens, _) = st.ca.authority.generations()?;
    let now = std::time::SystemTime::now();
    let due = gens
        .iter()
        .find(|(g, _)| g.state == crate::store::GenerationState::Active)
        .and_then(|(g, _)| crate::rotation::intermediate_due(g, now).map(|why| (g.id, why)));
    if let Some((id, why)) = due {
        st.ca.authority.renew_intermediate(id)?;
        tracing::info!(authority = %id, reason = %why, "intermediate renewed");
    }
    Ok(())
}

fn refresh_blocking(st: &AppState) -> Result<(), ServeError> {
    // The activate handler and the maintenance loop may both refresh at once; one at a time,
    // or both would reissue and their files could interleave.
    let _one_at_a_time = st.refresh_lock.lock().unwrap_or_else(|p| p.into_inner());
    renew_intermediate_if_due(st)?;
    let ca = &st.ca;
    if !ca.credential_is_fresh(&st.server_cert.record()) {
        let cred = ca.issue_server_certificate()?;
        ca.store_server_certificate(&cred)?;
        st.server_cert.replace(&cred)?;
        tracing::info!(serial = %cred.record.serial, authority = %cred.record.authority_id, "server certificate renewed");
    }
    let dir = ca.config.operator_credential_dir();
    let cert_path = dir.join("cert.pem");
    let Ok(pem_text) = std::fs::read(&cert_path) else {
        return Ok(());
    };
    let bundle_pem = ca.authority.bundle().pem();
    let needs_new = match crate::x509::inspect::parse_pem_certs(&pem_text)
        .ok()
        .and_then(|c| c.into_iter().next())
        .and_then(|d| crate::x509::inspect::CertInfo::from_der(&d).ok())
        .and_then(|i| i.serial.parse::<crate::ids::Serial>().ok())
        .and_then(|s| ca.store.get_certificate(&s).ok().flatten())
    {
        Some(rec) => {
            if ca.credential_is_fresh(&rec) {
                None
            } else {
                rec.name
            }
        }
        None => None,
    };
    if let Some(name) = needs_new {
        let rec = ca.write_operator_credential(&dir, &name, "lanyard server")?;
        tracing::info!(serial = %rec.serial, authority = %rec.authority_id, dir = %dir.display(), "local operator credential renewed");
    } else if std::fs::read_to_string(dir.join("trust-bundle.pem"))
        .ok()
        .as_deref()
        != Some(bundle_pem.as_str())
    {
        crate::fsutil::write_atomic(&dir.join("trust-bundle.pem"), bundle_pem.as_bytes(), 0o644)?;
    }
    Ok(())
}

async fn maintenance_loop(st: Arc<AppState>) {
    let mut rx = st.ca.authority.subscribe();
    let every = st
        .ca
        .config
        .rotation
        .check_interval
        .0
        .min(Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            r = rx.changed() => if r.is_err() { return },
        }
        refresh_local_credentials(&st).await;
    }
}

async fn rotation_loop(st: Arc<AppState>) {
    let every = st.ca.config.rotation.check_interval.0;
    loop {
        tokio::time::sleep(every).await;
        let ca = st.ca.clone();
        let res = tokio::task::spawn_blocking(move || -> Result<Option<Step>, ServeError> {
            let step = ca.authority.next_scheduled_step()?;
            match &step {
                Some(Step::Prepare(why)) => {
                    let g = ca.authority.prepare()?;
                    tracing::info!(authority = %g.id, reason = %why, "automatic rotation: prepared");
                }
                Some(Step::Activate(id, why, deadline)) => {
                    // The rules are checked again under the authority's lock; only the
                    // five-sixths deadline may override the propagation delay.
                    ca.authority.activate(*id, *deadline)?;
                    tracing::info!(authority = %id, reason = %why, "automatic rotation: activated");
                }
                Some(Step::Retire(id, why)) => {
                    ca.authority.retire(*id, false)?;
                    tracing::info!(authority = %id, reason = %why, "automatic rotation: retired");
                }
                Some(Step::RenewIntermediate(id, why)) => {
                    ca.authority.renew_intermediate(*id)?;
                    tracing::info!(authority = %id, reason = %why, "automatic rotation: intermediate renewed");
                }
                None => {}
            }
            Ok(step)
        })
        .await;
        match res {
            Ok(Ok(Some(_))) => refresh_local_credentials(&st).await,
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "automatic rotation step failed; will retry"),
            Err(e) => tracing::warn!(error = %e, "rotation task failed"),
        }
    }
}
