//! The HTTPS API: routes, handlers, the TLS accept loop.
//!
//! This layer talks to [`crate::ca::Ca`] only: `handlers/` (one file per resource) parse and
//! authorize requests, `views.rs` turns the CA's data into wire types, `problem.rs` maps
//! errors to statuses, `tls.rs` holds the server certificate and identifies peers,
//! `server.rs` is the accept loop and `maintenance.rs` the background duties.

pub(crate) mod handlers;
mod maintenance;
pub(crate) mod problem;
pub(crate) mod server;
pub(crate) mod tls;
pub(crate) mod views;

pub use handlers::ApiDoc;
pub(crate) use server::serve;

/// Failures of the HTTP layer outside a request (start-up, credential refresh, rotation
/// steps); request failures are [`crate::ca::CaError`]s rendered by [`problem`].
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A CA use case failed: one of the server's own credentials, or a rotation step.
    #[error(transparent)]
    Ca(#[from] crate::ca::CaError),
    /// A certificate or key could not be loaded into rustls.
    #[error("TLS credential: {0}")]
    Credential(String),
    /// rustls refused the configuration.
    #[error(transparent)]
    Tls(#[from] rustls::Error),
    /// Reading or writing a credential file failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A worker thread failed.
    #[error("worker failed: {0}")]
    Worker(#[from] tokio::task::JoinError),
}
