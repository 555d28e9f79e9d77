//! The accept loop: TLS handshakes, the peer's identity, HTTP/1.1 connections, and a graceful
//! stop. The background duties it starts live in [`super::maintenance`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::IntoResponse;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::handlers::{router, AppState};
use super::maintenance::{lease_loop, maintenance_loop, renew_schedule_lease, rotation_loop};
use super::problem::ApiError;
use super::tls::{identify, server_config, Caller, PeerIdentity, ServerCert};
use super::ServeError;
use crate::ca::{Ca, CaError};
use crate::config::ListenConfig;

/// How long a client has to finish the TLS handshake; a connection being refused also gets
/// this long to read its 503.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connection budgets. Every accepted connection first takes a handshake slot (and, per
/// source address, an address slot); after the handshake it moves to the authenticated
/// budget if its client certificate verified against the bundle, otherwise to the anonymous
/// one (keeping its address slot). A connection that finds no room is answered 503 with
/// `Retry-After` on its first request and closed, within [`HANDSHAKE_TIMEOUT`]. Nothing
/// here waits, so the accept loop never stops accepting: anonymous clients cannot keep
/// cells and operators out, and a single address cannot take the handshake slots.
#[derive(Debug)]
struct Admission {
    handshakes: Arc<Semaphore>,
    authenticated: Arc<Semaphore>,
    anonymous: Arc<Semaphore>,
    per_address: Mutex<HashMap<IpAddr, usize>>,
    per_address_cap: usize,
}

/// One connection's place in [`Admission`]'s count for its address; given back on drop.
struct AddressSlot {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut m = self
            .admission
            .per_address
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl Admission {
    fn new(l: &ListenConfig) -> Arc<Self> {
        let sem = |n: usize| Arc::new(Semaphore::new(n.min(Semaphore::MAX_PERMITS)));
        Arc::new(Admission {
            handshakes: sem(l.max_handshakes),
            authenticated: sem(l.max_authenticated_connections),
            anonymous: sem(l.max_anonymous_connections),
            per_address: Mutex::new(HashMap::new()),
            per_address_cap: l.max_connections_per_address,
        })
    }

    /// A place for one more connection from `ip`, if it has fewer than the cap.
    fn address_slot(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let mut m = self.per_address.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= self.per_address_cap {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            admission: self.clone(),
            ip,
        })
    }
}

/// What a connection holds while it is served; dropped when it closes.
enum Place {
    Authenticated(#[allow(dead_code)] OwnedSemaphorePermit),
    Anonymous(
        #[allow(dead_code)] OwnedSemaphorePermit,
        #[allow(dead_code)] AddressSlot,
    ),
}

/// Serves the API on `listener` until `shutdown` completes.
pub(crate) async fn serve(
    ca: Arc<Ca>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let port = listener.local_addr()?.port();
    let replica = ca.config().replica_name(port);
    tracing::info!(replica = %replica, "replica name");
    // The certificate is this replica's own (stored under its name), so replicas sharing a
    // database never present, or overwrite, each other's key.
    let cred = {
        let (ca, replica) = (ca.clone(), replica.clone());
        tokio::task::spawn_blocking(move || ca.load_or_issue_server_certificate(&replica)).await??
    };
    {
        let (ca, replica) = (ca.clone(), replica.clone());
        match tokio::task::spawn_blocking(move || ca.record_server_start(&replica)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not record the server start in the audit log")
            }
            Err(e) => tracing::warn!(error = %e, "audit task failed"),
        }
    }
    let server_cert = Arc::new(ServerCert::new(&cred)?);
    let tls = server_config(server_cert.clone())?;
    let acceptor = TlsAcceptor::from(tls);
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

    let admission = Admission::new(&ca.config().listen);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
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
        // No room for another handshake, or this address has its share: closed at once
        // (dropping the socket) rather than waiting, so accepting never stops.
        let Ok(handshake) = admission.handshakes.clone().try_acquire_owned() else {
            tracing::debug!(%addr, "too many handshakes in progress; connection closed");
            continue;
        };
        let Some(address_slot) = admission.address_slot(addr.ip()) else {
            tracing::debug!(%addr, "too many connections from this address; connection closed");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let conn = Connection {
            acceptor: acceptor.clone(),
            app: app.clone(),
            state: state.clone(),
            admission: admission.clone(),
            addr,
        };
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            conn.serve(tcp, handshake, address_slot, watcher).await;
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

/// One accepted connection on its way through the handshake and admission.
struct Connection {
    acceptor: TlsAcceptor,
    app: axum::Router,
    state: Arc<AppState>,
    admission: Arc<Admission>,
    addr: SocketAddr,
}

impl Connection {
    /// Handshakes, identifies the peer, moves it to its budget (or refuses it) and serves
    /// HTTP/1.1 until the connection closes.
    async fn serve(
        self,
        tcp: TcpStream,
        handshake: OwnedSemaphorePermit,
        address_slot: AddressSlot,
        watcher: hyper_util::server::graceful::Watcher,
    ) {
        let addr = self.addr;
        let started = tokio::time::Instant::now();
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp)).await {
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
        // Chain verification is CPU work (and a revocation lookup): on the bounded pool,
        // so a flood of certificate-bearing handshakes queues there or is refused.
        let identity = if certs.is_empty() {
            Ok(PeerIdentity::Anonymous)
        } else {
            let (ca, certs) = (self.state.ca.clone(), certs.clone());
            let job = self.state.pool.run(move || identify(&ca, &certs));
            match tokio::time::timeout_at(started + HANDSHAKE_TIMEOUT, job).await {
                Ok(r) => r,
                Err(_) => Err(CaError::Busy(
                    "the server could not check the client certificate in time".into(),
                )),
            }
        };
        let identity = match identity {
            Ok(i) => i,
            Err(e) => {
                refuse(tls, addr, e).await;
                return;
            }
        };
        let place = if matches!(identity, PeerIdentity::Verified { .. }) {
            match self.admission.authenticated.clone().try_acquire_owned() {
                Ok(p) => {
                    // Cells behind one NAT are not limited per address.
                    drop(address_slot);
                    Place::Authenticated(p)
                }
                Err(_) => {
                    tracing::warn!(%addr, "authenticated connection budget exhausted");
                    refuse(
                        tls,
                        addr,
                        CaError::Busy(
                            "too many authenticated connections; retry in a moment".into(),
                        ),
                    )
                    .await;
                    return;
                }
            }
        } else {
            match self.admission.anonymous.clone().try_acquire_owned() {
                Ok(p) => Place::Anonymous(p, address_slot),
                Err(_) => {
                    tracing::debug!(%addr, "anonymous connection budget exhausted");
                    refuse(
                        tls,
                        addr,
                        CaError::Busy(
                            "too many connections without a client certificate; retry in a \
                         moment, or present a client certificate issued by this CA"
                                .into(),
                        ),
                    )
                    .await;
                    return;
                }
            }
        };
        // Admitted: the handshake slot is free for the next connection.
        drop(handshake);
        let caller = Caller {
            addr,
            identity,
            certs,
        };
        let app = self.app;
        let svc =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(caller.clone());
                app.clone().oneshot(req.map(axum::body::Body::new))
            });
        // HTTP/1.1 only (ALPN says so); idle keep-alive connections end on shutdown.
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30))
            .serve_connection(TokioIo::new(tls), svc);
        if let Err(e) = watcher.watch(conn).await {
            tracing::debug!(%addr, error = %e, "connection ended with an error");
        }
        drop(place);
    }
}

/// Answers the first request of a connection that found no room with `why` (a 503 with
/// `Retry-After`), then closes it; the whole exchange is bounded by [`HANDSHAKE_TIMEOUT`].
/// The caller still holds the connection's handshake slot, so refusals are counted too.
async fn refuse(tls: tokio_rustls::server::TlsStream<TcpStream>, addr: SocketAddr, why: CaError) {
    let why = Arc::new(why.to_string());
    let svc = hyper::service::service_fn(move |_req: hyper::Request<hyper::body::Incoming>| {
        let why = why.clone();
        async move {
            let r = ApiError(CaError::Busy(why.to_string())).into_response();
            Ok::<_, std::convert::Infallible>(r)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(false)
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .serve_connection(TokioIo::new(tls), svc);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(%addr, error = %e, "refused connection ended with an error"),
        Err(_) => tracing::debug!(%addr, "refused connection timed out"),
    }
}
