//! `lanyard store migrate`: copies a stopped CA's embedded store into an empty PostgreSQL
//! database, keys still sealed under the same KEK.

use super::{StartError, META_INITIALIZED};
use crate::config::Config;
use crate::store::{PostgresStore, SledStore, Store};

/// Certificate records per write: small transactions stay far below the store's call limit.
const PAGE: usize = 200;

/// What was copied.
#[derive(Debug, Default)]
pub(crate) struct MigrateReport {
    /// Authority generations.
    pub generations: usize,
    /// The trust bundle sequence.
    pub bundle_sequence: u64,
    /// Certificate records.
    pub certificates: usize,
    /// Of which revoked.
    pub revoked: usize,
    /// Unspent join tokens.
    pub join_tokens: usize,
    /// Metadata values (the KEK check and the server certificate among them).
    pub meta: usize,
    /// Audit log entries (copied as they are: the chain still verifies).
    pub audit_entries: usize,
    /// Instance ownership bindings.
    pub bindings: usize,
}

/// Copies the embedded store of `config` into the empty database at `url` (its schema
/// brought up to date first). Refuses a database that holds anything, a state that is not
/// initialized, and a store a running server holds (its lock).
pub(crate) fn migrate_to_postgres(config: &Config, url: &str) -> Result<MigrateReport, StartError> {
    if config.storage.backend != "sled" {
        return Err(StartError::Config(
            "store migrate copies the embedded store: --config must name storage.backend = \"sled\" (the source)".into(),
        ));
    }
    PostgresStore::check_url(url).map_err(|e| StartError::Config(format!("--to: {e}")))?;
    let dir = config.state_dir.join("store");
    if !dir.exists() {
        return Err(StartError::Runtime(format!(
            "there is no store in {} to migrate",
            config.state_dir.display()
        )));
    }
    let from = SledStore::open(&dir)?;
    if from.get_meta(META_INITIALIZED)?.is_none() {
        return Err(StartError::Runtime(format!(
            "the state in {} is not initialized; nothing to migrate",
            config.state_dir.display()
        )));
    }
    let to = PostgresStore::open(url)?;
    copy(&from, &to)
}

fn copy(from: &dyn Store, to: &dyn Store) -> Result<MigrateReport, StartError> {
    // The lock `init` takes: a replica starting with `auto_init` against the same database
    // waits for the copy instead of initializing a state of its own beside it.
    let _init = to.lock_init()?;
    let (gens, sequence) = to.load_authorities()?;
    if !gens.is_empty()
        || sequence != 0
        || !to.all_meta()?.is_empty()
        || !to.certificates_after(None, 1)?.is_empty()
        || !to.all_join_tokens()?.is_empty()
        || to.audit_after(0, 1)?.last != 0
        || !to.all_bindings()?.is_empty()
    {
        return Err(StartError::Runtime(
            "the target database is not empty; store migrate only copies into an empty database (create a new one)".into(),
        ));
    }
    let mut report = MigrateReport::default();
    let (gens, sequence) = from.load_authorities()?;
    to.save_authorities(&gens, sequence, &[])?;
    report.generations = gens.len();
    report.bundle_sequence = sequence;

    let mut after = None;
    loop {
        let page = from.certificates_after(after.as_ref(), PAGE)?;
        let Some(last) = page.last() else { break };
        after = Some(last.serial);
        to.insert_certificates(&page)?;
        // Through the update as well, so every backend files the revocation where its
        // revocation lists look.
        for r in page.iter().filter(|r| r.revoked_at.is_some()) {
            to.update_certificate(r)?;
            report.revoked += 1;
        }
        report.certificates += page.len();
    }

    for (hash, token) in from.all_join_tokens()? {
        to.insert_join_token(&hash, &token, &[])?;
        report.join_tokens += 1;
    }

    let mut after = 0;
    loop {
        let page = from.audit_after(after, PAGE)?;
        if page.entries.is_empty() {
            break;
        }
        to.import_audit(&page.entries)?;
        report.audit_entries += page.entries.len();
        after = page.next;
    }
    let bindings = from.all_bindings()?;
    to.import_bindings(&bindings)?;
    report.bindings = bindings.len();

    // `initialized` last: a copy cut short is never taken for a complete state.
    let mut meta = from.all_meta()?;
    meta.sort_by_key(|(k, _)| k == META_INITIALIZED);
    for (key, value) in &meta {
        to.put_meta(key, value)?;
    }
    report.meta = meta.len();
    Ok(report)
}
