//! The HTTPS API: routes, handlers, the TLS accept loop.

pub mod handlers;
pub mod problem;
pub mod server;
pub mod tls;

pub use handlers::{router, AppState};
pub use server::serve;

/// Failures of the HTTP layer outside a request (start-up, credential refresh, rotation
/// steps); request failures are [`crate::ca::CaError`]s rendered by [`problem`].
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Issuing or storing one of the server's own credentials failed.
    #[error(transparent)]
    Ca(#[from] crate::ca::CaError),
    /// A rotation step failed.
    #[error(transparent)]
    Authority(#[from] crate::authority::AuthorityError),
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
