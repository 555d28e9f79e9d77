//! Mutual TLS for apps with Lanyard instance credentials: the "manual mTLS" option.
//!
//! An app instance finds three files on its cell, written by the cell agent and replaced
//! atomically as a set when the certificate is renewed or the trust bundle changes:
//! `instance.crt` (leaf, then intermediate), `instance.key` (PKCS#8) and `trust-bundle.crt`
//! (every published root), also named by `CF_INSTANCE_CERT`, `CF_INSTANCE_KEY` and
//! `CF_SYSTEM_CERT_PATH`. This module turns them into rustls configurations that follow the
//! files without a restart:
//!
//! - [`Credentials`] loads the files, checks the key matches the certificate, and (by default)
//!   polls them and swaps in a new set when they change;
//! - [`Credentials::server_config`] requires and verifies client certificates against the
//!   current bundle; [`Credentials::client_config`] presents the current certificate and
//!   verifies servers against the current bundle;
//! - [`PeerIdentity`] says who is on the other end of a verified connection (instance, app,
//!   space, org, or system component such as the router);
//! - [`Policy`] decides which peers an app serves, and its [`Refusal`] says why not.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use lanyard::mtls::{Credentials, PeerIdentity, Policy};
//!
//! let creds = Credentials::from_env()?; // CF_INSTANCE_CERT, CF_INSTANCE_KEY, CF_SYSTEM_CERT_PATH
//! let policy = Policy::new().allow_component("gorouter".parse()?);
//! let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(creds.server_config()?));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let (tcp, _) = listener.accept().await?;
//! let tls = acceptor.accept(tcp).await?; // refused here without a certificate from the bundle
//! let peer = PeerIdentity::from_connection(tls.get_ref().1)?;
//! match policy.check(&peer) {
//!     Ok(()) => println!("serving {}", peer.describe()),
//!     Err(refusal) => println!("403: {refusal}"),
//! }
//! # Ok(()) }
//! ```
//!
//! Guide for apps in other languages and for nginx: `docs/apps.md`.

mod credentials;
mod files;
mod identity;
mod policy;
mod verify;

use std::path::PathBuf;

pub use credentials::{CertificateStatus, Credentials, DEFAULT_POLL_INTERVAL};
pub use files::{
    CredentialPaths, BUNDLE_FILE, CERT_FILE, ENV_INSTANCE_CERT, ENV_INSTANCE_KEY,
    ENV_SYSTEM_CERT_PATH, KEY_FILE,
};
pub use identity::PeerIdentity;
pub use policy::{Policy, PolicyRule, Refusal};

/// What can go wrong loading credentials, building TLS configurations or reading a peer.
#[derive(Debug, thiserror::Error)]
pub enum MtlsError {
    /// A credential file could not be read.
    #[error("{path}: {source}", path = .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A credential file was read but its content is not what it should be.
    #[error("{path}: {message}", path = .path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The private key does not belong to the certificate, even after re-reading (a writer
    /// that replaces the files one by one instead of as a set can cause this).
    #[error("{key} does not match the certificate in {certificate}", key = .key.display(), certificate = .certificate.display())]
    KeyMismatch {
        /// The certificate file.
        certificate: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The environment does not name the credential files.
    #[error("environment: {0}")]
    Environment(String),
    /// The connection has no peer certificate (not handshaken, or no client certificate).
    #[error("the peer presented no certificate")]
    NoPeerCertificate,
    /// The peer's certificate does not carry a Lanyard identity.
    #[error("peer certificate: {0}")]
    PeerCertificate(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The background thread that watches the files could not be started.
    #[error("cannot start the credential watcher: {0}")]
    Watcher(std::io::Error),
}

/// The guide for apps, compiled so that its Rust snippets stay true (`cargo test --doc`).
#[doc = include_str!("../../docs/apps.md")]
#[cfg(doctest)]
pub struct AppsGuide;
