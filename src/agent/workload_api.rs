//! The SPIFFE Workload API on the agent: one gRPC server per instance, on a Unix socket in the
//! instance's directory (`<credentials_root>/<guid>/spiffe.sock`, mode 0666).
//!
//! The caller's identity is the socket it reached: the platform mounts only the instance's
//! own directory into its container. Each instance has a `watch` channel holding its current
//! [`Svid`]; the agent replaces the value after every renewal and bundle change, and each open
//! stream sends the latest value when its client reads. A slow or gone client therefore never
//! holds up the agent or another client (a `watch` send never waits), and an idle stream is a
//! receiver and a parked future, with no task of its own.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures_util::Stream;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::svid::Svid;
use super::workload_proto as pb;
use super::workload_proto::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};
use crate::ids::Guid;

/// The socket's file name in the instance directory.
pub const SOCKET_FILE: &str = "spiffe.sock";
/// The socket's mode: any user in the container may connect; the directory is what the
/// platform hands to one instance only.
const SOCKET_MODE: u32 = 0o666;
/// The metadata header every Workload API request carries (the SPIFFE specification's guard
/// against a server-side request forgery reaching the socket).
const SECURITY_HEADER: &str = "workload.spiffe.io";

/// What an instance's channel holds: its SVID, or `None` once the instance is deleted (every
/// open stream then ends).
type Current = Option<Arc<Svid>>;

/// One instance's endpoint: the channel its streams follow and the server task.
struct Endpoint {
    tx: watch::Sender<Current>,
    server: tokio::task::JoinHandle<()>,
}

/// The Workload API endpoints of every instance.
#[derive(Default)]
pub(crate) struct Endpoints {
    by_instance: Mutex<HashMap<Guid, Endpoint>>,
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoints")
            .field("instances", &self.lock().len())
            .finish()
    }
}

impl Endpoints {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Guid, Endpoint>> {
        self.by_instance.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes the instance's current credential set to its streams, and serves its socket
    /// in `dir` if it does not yet. Called after every write of the set.
    pub(crate) fn publish(&self, guid: &Guid, dir: &Path, chain: &str, key: &str, bundle: &str) {
        let Some(svid) = Svid::from_pem(chain, key, bundle) else {
            tracing::warn!(instance = %guid, "the instance's credential set is not an X509-SVID; the Workload API keeps the previous one");
            return;
        };
        let svid = Some(Arc::new(svid));
        let mut m = self.lock();
        if let Some(e) = m.get(guid) {
            if !e.server.is_finished() {
                e.tx.send_replace(svid);
                return;
            }
        }
        let (tx, rx) = watch::channel(svid);
        match serve(dir, rx) {
            Ok(server) => {
                m.insert(guid.clone(), Endpoint { tx, server });
            }
            Err(e) => {
                tracing::warn!(instance = %guid, error = %e, "cannot serve the Workload API socket");
            }
        }
    }

    /// Ends the instance's open streams, stops its server and removes its socket.
    pub(crate) fn remove(&self, guid: &Guid, dir: &Path) {
        if let Some(e) = self.lock().remove(guid) {
            e.tx.send_replace(None);
            e.server.abort();
        }
        remove_socket(dir);
    }

    /// Stops every server and removes every socket (the agent is stopping).
    pub(crate) fn close_all(&self, root: &Path) {
        for (guid, e) in self.lock().drain() {
            e.tx.send_replace(None);
            e.server.abort();
            remove_socket(&root.join(guid.as_str()));
        }
    }
}

/// The socket path of an instance directory.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET_FILE)
}

fn remove_socket(dir: &Path) {
    let path = socket_path(dir);
    let r = if path.as_os_str().len() <= super::unix_bind::MAX_SOCKET_PATH {
        std::fs::remove_file(&path)
    } else {
        std::fs::File::open(dir).and_then(|d| {
            use std::os::unix::io::AsRawFd;
            std::fs::remove_file(format!("/proc/self/fd/{}/{SOCKET_FILE}", d.as_raw_fd()))
        })
    };
    if let Err(e) = r {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(socket = %path.display(), error = %e, "cannot remove the Workload API socket");
        }
    }
}

/// Binds the socket in `dir` and serves the Workload API on it for the instance behind `rx`.
fn serve(dir: &Path, rx: watch::Receiver<Current>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let bound = super::unix_bind::bind(dir, SOCKET_FILE, SOCKET_MODE)?;
    let listener = tokio::net::UnixListener::from_std(bound.listener.try_clone()?)?;
    // Every connection passes through the authority fix (see `h2_authority`).
    let incoming = futures_util::stream::unfold(listener, |l| async move {
        loop {
            match l.accept().await {
                Ok((client, _)) => {
                    let (ours, theirs) = tokio::io::duplex(16 * 1024);
                    tokio::spawn(super::h2_authority::relay(client, theirs));
                    return Some((Ok::<_, std::io::Error>(ours), l));
                }
                // A failed accept (a client gone already, or out of descriptors for a
                // moment) must not stop the server.
                Err(e) => {
                    tracing::debug!(error = %e, "Workload API accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    });
    let service = SpiffeWorkloadApiServer::new(Workload { rx });
    let path = socket_path(dir);
    Ok(tokio::spawn(async move {
        // The directory (for a long path) stays open as long as the server runs.
        let _bound = bound;
        let r = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = r {
            tracing::warn!(socket = %path.display(), error = %e, "Workload API server stopped");
        }
    }))
}

/// The service of one instance.
struct Workload {
    rx: watch::Receiver<Current>,
}

type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The SPIFFE specification's check: the security header must be there, with `true`.
fn check_header<T>(req: &Request<T>) -> Result<(), Status> {
    match req.metadata().get(SECURITY_HEADER).map(|v| v.to_str()) {
        Some(Ok("true")) => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header missing from request: `workload.spiffe.io: true`",
        )),
    }
}

fn gone() -> Status {
    Status::permission_denied("this instance no longer runs on this cell")
}

/// A stream of `make(svid)` for the value at once and after every change for which
/// `make` gives something; an error and the end once the instance is deleted.
fn follow<T: Clone + Send + 'static>(
    rx: watch::Receiver<Current>,
    make: impl Fn(&Svid, Option<&T>) -> Option<T> + Send + Sync + 'static,
) -> Streamed<T> {
    struct State<T> {
        rx: watch::Receiver<Current>,
        first: bool,
        last: Option<T>,
        done: bool,
    }
    let make = Arc::new(make);
    let start = State {
        rx,
        first: true,
        last: None,
        done: false,
    };
    Box::pin(futures_util::stream::unfold(start, move |mut st| {
        let make = make.clone();
        async move {
            if st.done {
                return None;
            }
            loop {
                if !st.first && st.rx.changed().await.is_err() {
                    return None;
                }
                st.first = false;
                let current = st.rx.borrow_and_update().clone();
                let Some(svid) = current else {
                    st.done = true;
                    return Some((Err(gone()), st));
                };
                if let Some(msg) = make(&svid, st.last.as_ref()) {
                    st.last = Some(msg.clone());
                    return Some((Ok(msg), st));
                }
            }
        }
    }))
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for Workload {
    type FetchX509SVIDStream = Streamed<pb::X509svidResponse>;
    type FetchX509BundlesStream = Streamed<pb::X509BundlesResponse>;
    type FetchJWTBundlesStream = Streamed<pb::JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<pb::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        check_header(&request)?;
        if self.rx.borrow().is_none() {
            return Err(gone());
        }
        // Every renewal and bundle change is a new SVID message.
        Ok(Response::new(follow(self.rx.clone(), |s, _| {
            Some(s.svid_response())
        })))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<pb::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        check_header(&request)?;
        if self.rx.borrow().is_none() {
            return Err(gone());
        }
        // Only a change of the roots is a new message (a renewal is not).
        Ok(Response::new(follow(self.rx.clone(), |s, last| {
            let next = s.bundles_response();
            (last != Some(&next)).then_some(next)
        })))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<pb::JwtsvidRequest>,
    ) -> Result<Response<pb::JwtsvidResponse>, Status> {
        check_header(&request)?;
        Err(Status::unimplemented("Lanyard issues X509-SVIDs only"))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<pb::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        check_header(&request)?;
        Err(Status::unimplemented("Lanyard issues X509-SVIDs only"))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<Response<pb::ValidateJwtsvidResponse>, Status> {
        check_header(&request)?;
        Err(Status::unimplemented("Lanyard issues X509-SVIDs only"))
    }
}
