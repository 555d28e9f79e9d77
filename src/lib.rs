//! Lanyard: an instance-identity certificate authority for container platforms.
//!
//! See `ARCHITECTURE.md` for the map of this crate.
//!
//! Features: `full` (the default) builds everything. An app that only needs manual mTLS
//! builds `default-features = false, features = ["mtls"]`: [`mtls`] and the [`ids`],
//! [`timefmt`] and [`x509`] modules it stands on, without the server's dependencies.
#![forbid(unsafe_code)]

// The kit: what an app links (`mtls`), and the modules every build shares.
pub mod ids;
#[cfg(feature = "mtls")]
pub mod mtls;
pub mod timefmt;
#[cfg(feature = "mtls")]
pub mod tls_provider;
pub mod x509;

// The product: CA server, agent, CLI and client (`full`).
#[cfg(feature = "full")]
pub(crate) mod activity;
#[cfg(feature = "full")]
pub mod agent;
#[cfg(feature = "full")]
pub mod api;
#[cfg(feature = "full")]
pub(crate) mod atomic_dir;
#[cfg(feature = "full")]
pub mod audit;
#[cfg(feature = "full")]
pub(crate) mod authority;
#[cfg(feature = "full")]
pub(crate) mod bench;
#[cfg(feature = "full")]
pub(crate) mod ca;
#[cfg(feature = "full")]
pub mod cli;
#[cfg(feature = "full")]
pub mod client;
#[cfg(feature = "full")]
pub(crate) mod config;
#[cfg(feature = "full")]
pub(crate) mod console;
#[cfg(feature = "full")]
pub(crate) mod credential_dir;
#[cfg(feature = "full")]
pub(crate) mod duration;
#[cfg(feature = "full")]
pub(crate) mod fsutil;
#[cfg(all(feature = "full", any(test, feature = "fuzzing")))]
pub mod fuzzing;
#[cfg(feature = "full")]
pub mod http;
#[cfg(feature = "full")]
pub(crate) mod keys;
#[cfg(feature = "full")]
pub(crate) mod metrics;
#[cfg(feature = "full")]
pub(crate) mod problem;
#[cfg(all(test, feature = "full"))]
mod reference_doc;
#[cfg(feature = "full")]
pub(crate) mod rotation;
#[cfg(feature = "full")]
pub(crate) mod runtime;
#[cfg(feature = "full")]
pub(crate) mod store;
