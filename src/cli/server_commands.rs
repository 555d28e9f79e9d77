//! Commands that run the CA itself: `init` and `serve`.

use std::sync::Arc;

use super::args::Cli;
use super::{load_config, Failure};
use crate::ca::Ca;

/// `lanyard init`.
pub(super) fn init(cli: &Cli) -> Result<(), Failure> {
    let config = load_config(cli)?;
    let (_, report) = Ca::init(&config)?;
    print_init_report(&report);
    Ok(())
}

fn print_init_report(r: &crate::ca::InitReport) {
    if let Some(k) = &r.generated_kek {
        eprintln!(
            "lanyard: generated a new key-encryption key in {} (mode 0600); keep it safe, the state cannot be opened without it",
            k.display()
        );
    }
    eprintln!(
        "lanyard: initialized; operator credential in {}",
        r.operator_credential.display()
    );
}

/// `lanyard store migrate --to URL`: copies the stopped CA's embedded store into an empty
/// PostgreSQL database.
pub(super) async fn store_migrate(cli: &Cli, to: &str) -> Result<(), Failure> {
    let config = load_config(cli)?;
    let url = to.to_string();
    let r = tokio::task::spawn_blocking(move || crate::ca::migrate_to_postgres(&config, &url))
        .await
        .map_err(Failure::runtime)??;
    // The URL may carry a password: it is not echoed.
    eprintln!(
        "lanyard: migrated {} generation(s) (bundle sequence {}), {} certificate record(s) ({} revoked), {} join token(s), {} audit entries, {} instance binding(s) and {} metadata value(s); serve with storage.backend = \"postgres\" and the same key-encryption key",
        r.generations, r.bundle_sequence, r.certificates, r.revoked, r.join_tokens, r.audit_entries, r.bindings, r.meta
    );
    Ok(())
}

/// `lanyard serve`: opens the CA and serves until SIGINT/SIGTERM.
pub(super) async fn serve(cli: &Cli) -> Result<(), Failure> {
    let config = load_config(cli)?;
    let addr = config.listen.address;
    let (ca, report) = tokio::task::spawn_blocking(move || Ca::open(&config))
        .await
        .map_err(Failure::runtime)??;
    if let Some(r) = &report {
        // A server's output is its log (JSON lines with `--log-format json`).
        if let Some(k) = &r.generated_kek {
            tracing::warn!(kek_file = %k.display(), "generated a new key-encryption key (mode 0600); keep it safe, the state cannot be opened without it");
        }
        tracing::info!(operator_credential = %r.operator_credential.display(), "initialized");
    }
    let listener = crate::runtime::listen_tcp(addr)
        .map_err(|e| Failure::runtime(format!("cannot listen on {addr}: {e}")))?;
    let local = listener.local_addr().map_err(Failure::runtime)?;
    tracing::info!(address = %local, trust_domain = %ca.config().trust_domain, "lanyard serving on https://{local}");
    crate::runtime::announce_listening(&format!("https://{local}"));
    crate::http::serve(Arc::new(ca), listener, crate::runtime::shutdown_signal())
        .await
        .map_err(Failure::runtime)?;
    tracing::info!("lanyard stopped");
    Ok(())
}
