//! Lanyard: an instance-identity certificate authority for container platforms.
//!
//! See `ARCHITECTURE.md` for the map of this crate.
#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod atomic_dir;
pub mod authority;
pub mod bench;
pub mod ca;
pub mod cli;
pub mod client;
pub mod config;
pub mod credential_dir;
pub mod duration;
pub mod fsutil;
pub mod http;
pub mod ids;
pub mod keys;
pub mod metrics;
pub mod mtls;
pub mod problem;
pub mod rotation;
pub mod runtime;
pub mod store;
pub mod timefmt;
pub mod tls_provider;
pub mod x509;
