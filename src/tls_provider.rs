//! The one crypto provider (ring) of every TLS configuration in the crate: the server, the
//! clients and the mTLS kit.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// The ring provider: the one the whole process installs, so no config can pick another.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
