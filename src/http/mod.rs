//! The HTTPS API: routes, handlers, the TLS accept loop.

pub mod handlers;
pub mod problem;
pub mod server;
pub mod tls;

pub use handlers::{router, AppState};
pub use server::serve;
