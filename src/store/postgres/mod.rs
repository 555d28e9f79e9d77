//! The shared store: PostgreSQL through a connection pool, one transaction per write.
//!
//! This is the only module that talks to PostgreSQL. Records are kept whole as JSON (the
//! encoding the embedded store writes) beside the columns that queries search and that the
//! database constrains: serials are the primary key of `certificates`, so uniqueness holds
//! across every process that writes to the database, and a join token is taken with
//! `DELETE ... RETURNING`, so of any number of takers exactly one gets it.
//!
//! # Sync calls over an async client
//!
//! [`Store`] is synchronous; `tokio-postgres` is async. Each `PostgresStore` owns a small
//! tokio runtime of its own that runs the pool, the connections and every query. A call
//! spawns its work onto that runtime and waits for the answer on a `std::sync::mpsc`
//! channel. The calling thread never enters a runtime, so no call ever runs `block_on`
//! inside another runtime's async context (which panics): a call is safe from a plain
//! thread, from `spawn_blocking`, and even from inside an async task (where it blocks that
//! task's thread, as any blocking call does, but cannot panic or deadlock, since the work
//! runs on the store's own threads). Dropping the store shuts its runtime down in the
//! background, which is allowed in any context too.

mod audit_log;
mod export;
mod ha;
mod migrations;

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{Json, ToSql};

use super::{
    AuditPage, AuthorityRecord, CertificateQuery, CertificateRecord, Generations, InitLock,
    InstanceBinding, JoinTokenRecord, Lease, LeaseGrant, ReleaseOutcome, RevokeOutcome, Store,
    StoreError,
};
use crate::audit::AuditEvent;
use crate::ids::{AuthorityId, Guid, Serial};

/// Connections per process. Writes are short transactions; a handful covers the CA's
/// blocking threads without crowding the server's `max_connections` when several replicas
/// share it.
const POOL_SIZE: usize = 8;

/// How long to wait for a new connection (TCP, TLS and authentication). Short: while the
/// database is unreachable a request must get its 503 within two seconds, not hang.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);

/// How long a call waits for a free connection of the pool (as short, for the same reason:
/// a pool that stays exhausted that long is overload, answered 503 with `Retry-After`).
const POOL_WAIT_TIMEOUT: Duration = Duration::from_millis(1500);

/// The longest any one call may take, waiting for a connection included. Past it the call
/// answers [`StoreError::Unavailable`] instead of holding a request on a database that
/// stopped answering (a connection whose peer vanished without closing it). The CA's writes
/// are single-row or small-batch transactions, far below it on a healthy database.
const CALL_TIMEOUT: Duration = Duration::from_millis(1500);

/// Calls that may legitimately take longer: opening (schema migrations wait for another
/// replica's) and the bulk copy of `lanyard store migrate`.
const LONG_CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Unacknowledged data older than this makes the kernel drop the connection, so a connection
/// whose peer vanished (a call that timed out on it) is closed and not handed out again, and
/// the pool reconnects when the database is back.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(5);

/// Idle connections are probed after this long, and dropped after three unanswered probes
/// two seconds apart, for the same reason.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);

/// The channel every committed change of the generations or a revocation is announced on.
const CHANGES_CHANNEL: &str = "lanyard_changes";

/// Announces a change to every replica's listener; inside a transaction it is delivered only
/// if (and when) the transaction commits.
const NOTIFY_CHANGES: &str = "SELECT pg_notify('lanyard_changes', '')";

/// The first and the longest wait before the listener connects again.
const LISTEN_BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(5));

/// The advisory lock that lets one process initialize an empty database ("lanyinit").
const INIT_LOCK: i64 = 0x6c61_6e79_696e_6974;

/// How long one attempt to take the init lock waits (below [`CALL_TIMEOUT`]).
const INIT_LOCK_WAIT: Duration = Duration::from_secs(20);

/// Where the change listener connects, and who hears from it.
struct ChangeFeed {
    /// The connection settings of the pool (TLS included).
    config: tokio_postgres::Config,
    /// TLS for the listener's connection, as the pool's.
    tls: Option<rustls::ClientConfig>,
    /// Receivers handed out by [`Store::change_feed`]; one message pending is enough.
    subscribers: std::sync::Mutex<Vec<std::sync::mpsc::SyncSender<()>>>,
    /// Whether the listener task runs.
    started: std::sync::atomic::AtomicBool,
}

impl ChangeFeed {
    /// Wakes every subscriber (a full channel already has a wake-up pending) and forgets
    /// those that went away.
    fn notify(&self) {
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain(|tx| {
            !matches!(
                tx.try_send(()),
                Err(std::sync::mpsc::TrySendError::Disconnected(_))
            )
        });
    }
}

/// PostgreSQL-backed [`Store`].
pub(crate) struct PostgresStore {
    pool: Pool,
    /// The `LISTEN` side: a dedicated connection, started by the first [`Store::change_feed`].
    feed: std::sync::Arc<ChangeFeed>,
    /// Runs every query; `None` only while dropping (see the module documentation).
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: it is never printed.
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.pool.close();
        if let Some(rt) = self.runtime.take() {
            // Every write has committed before its call returned, so nothing is lost by not
            // waiting; and unlike a plain drop this never blocks, so it is allowed inside an
            // async context too.
            rt.shutdown_background();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The connection URL.

/// How the connection is protected, from the URL's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it; only with `sslrootcert` (a TLS connection that is not
    /// authenticated is not offered).
    Prefer,
    /// TLS, verified against `sslrootcert`, host name included.
    Require,
}

/// A `postgres://` URL split into what tokio-postgres understands and what is ours
/// (`sslmode` with `verify-full`, `sslrootcert`).
#[derive(Debug)]
struct ConnectOptions {
    config: tokio_postgres::Config,
    ssl_mode: SslMode,
    root_cert: Option<PathBuf>,
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-escape in `{s}`"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{s}` is not UTF-8 once decoded"))
}

impl ConnectOptions {
    /// Parses the URL without touching the network or the file system.
    fn parse(url: &str) -> Result<Self, String> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err("must be a postgres:// or postgresql:// URL".into());
        }
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, q),
            None => (url, ""),
        };
        let mut ssl_mode = None;
        let mut root_cert = None;
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "sslmode" => ssl_mode = Some(percent_decode(v)?),
                "sslrootcert" => root_cert = Some(PathBuf::from(percent_decode(v)?)),
                _ => rest.push(pair),
            }
        }
        let ssl_mode = match ssl_mode.as_deref() {
            None | Some("prefer") => SslMode::Prefer,
            Some("disable") => SslMode::Disable,
            Some("require") | Some("verify-full") => SslMode::Require,
            Some(other) => {
                return Err(format!(
                    "sslmode={other} is not supported; use disable, prefer, require or verify-full"
                ))
            }
        };
        if ssl_mode == SslMode::Require && root_cert.is_none() {
            return Err(
                "sslmode=require and verify-full need sslrootcert=<PEM file of the CA that signed the server's certificate>"
                    .into(),
            );
        }
        let plain = if rest.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        // tokio-postgres's own messages never echo the URL, so no password leaks here.
        let mut config = tokio_postgres::Config::from_str(&plain).map_err(|e| e.to_string())?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(TCP_USER_TIMEOUT);
        }
        config
            .keepalives(true)
            .keepalives_idle(KEEPALIVE_IDLE)
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3);
        if config.get_application_name().is_none() {
            config.application_name("lanyard");
        }
        Ok(ConnectOptions {
            config,
            ssl_mode,
            root_cert,
        })
    }

    /// The TLS client configuration, trusting only the roots in `sslrootcert`.
    fn tls_config(&self) -> Result<Option<rustls::ClientConfig>, StoreError> {
        let Some(path) = &self.root_cert else {
            return Ok(None);
        };
        if self.ssl_mode == SslMode::Disable {
            return Ok(None);
        }
        let text = std::fs::read(path).map_err(|e| {
            StoreError::Backend(format!("storage.url sslrootcert {}: {e}", path.display()))
        })?;
        let mut roots = rustls::RootCertStore::empty();
        let blocks = pem::parse_many(&text).map_err(|e| {
            StoreError::Backend(format!("storage.url sslrootcert {}: {e}", path.display()))
        })?;
        for block in blocks.iter().filter(|b| b.tag() == "CERTIFICATE") {
            roots.add(block.contents().to_vec().into()).map_err(|e| {
                StoreError::Backend(format!("storage.url sslrootcert {}: {e}", path.display()))
            })?;
        }
        if roots.is_empty() {
            return Err(StoreError::Backend(format!(
                "storage.url sslrootcert {} holds no certificate",
                path.display()
            )));
        }
        let config = rustls::ClientConfig::builder_with_provider(crate::tls_provider::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::Backend(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Some(config))
    }
}

// ---------------------------------------------------------------------------------------
// Errors.

/// A tokio-postgres error: what the server refused is a backend error; a connection that
/// failed, closed or timed out means the database is unavailable (the CA answers 503).
fn db_error(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        // Connection-level refusals (the server is shutting down, too many clients) are
        // unavailability too: a retry later may succeed.
        let code = db.code();
        if code == &SqlState::ADMIN_SHUTDOWN
            || code == &SqlState::CRASH_SHUTDOWN
            || code == &SqlState::CANNOT_CONNECT_NOW
            || code == &SqlState::TOO_MANY_CONNECTIONS
        {
            return StoreError::Unavailable(e.to_string());
        }
        return StoreError::Backend(e.to_string());
    }
    let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
    if e.is_closed() || io || e.to_string().contains("timeout") {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Backend(e.to_string())
    }
}

fn pool_error(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => db_error(e),
        PoolError::Timeout(_) | PoolError::Closed => {
            StoreError::Unavailable(format!("no database connection: {e}"))
        }
        other => StoreError::Backend(other.to_string()),
    }
}

fn decode<T: DeserializeOwned>(key: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        message: e.to_string(),
    })
}

/// JSON for a `jsonb` parameter.
fn json<T: Serialize>(v: &T) -> Result<Json<serde_json::Value>, StoreError> {
    serde_json::to_value(v)
        .map(Json)
        .map_err(|e| StoreError::Backend(format!("encoding: {e}")))
}

fn serial_of(bytes: &[u8]) -> Result<Serial, StoreError> {
    Serial::from_bytes(bytes).ok_or_else(|| StoreError::Corrupt {
        key: "certificates.serial".into(),
        message: format!("{} bytes, not 16", bytes.len()),
    })
}

// ---------------------------------------------------------------------------------------
// The store.

impl PostgresStore {
    /// Checks a `storage.url` without connecting: the form, `sslmode` and `sslrootcert`.
    pub(crate) fn check_url(url: &str) -> Result<(), String> {
        ConnectOptions::parse(url).map(|_| ())
    }

    /// Connects to the database at `url` (`postgres://user:password@host:port/db`, with
    /// `sslmode=disable|prefer|require|verify-full` and `sslrootcert=<PEM file>`), and brings
    /// its schema up to date (or refuses a schema newer than this binary).
    pub(crate) fn open(url: &str) -> Result<Self, StoreError> {
        let options = ConnectOptions::parse(url)
            .map_err(|e| StoreError::Backend(format!("storage.url: {e}")))?;
        let tls = options.tls_config()?;
        let mut config = options.config.clone();
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let tls = match (options.ssl_mode, tls) {
            (SslMode::Prefer, Some(tls)) => {
                config.ssl_mode(tokio_postgres::config::SslMode::Prefer);
                Some(tls)
            }
            (SslMode::Require, Some(tls)) => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                Some(tls)
            }
            _ => {
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                None
            }
        };
        let feed = std::sync::Arc::new(ChangeFeed {
            config: config.clone(),
            tls: tls.clone(),
            subscribers: Default::default(),
            started: Default::default(),
        });
        let manager = match tls {
            Some(tls) => Manager::from_config(
                config,
                tokio_postgres_rustls::MakeRustlsConnect::new(tls),
                manager_config,
            ),
            None => Manager::from_config(config, tokio_postgres::NoTls, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Backend(format!("connection pool: {e}")))?;
        // Two threads: one can wait on the network while the other runs a query, and the
        // CA process keeps its own runtime for HTTP.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("lanyard-postgres")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend(format!("store runtime: {e}")))?;
        let store = PostgresStore {
            pool,
            feed,
            runtime: Some(runtime),
        };
        let pool = store.pool.clone();
        let before = store.run_with_timeout(LONG_CALL_TIMEOUT, async move {
            let client = pool.get().await.map_err(pool_error)?;
            migrations::apply(client).await
        })?;
        let latest = migrations::latest_version();
        if before < latest {
            tracing::info!(from = before, to = latest, "migrated the database schema");
        }
        Ok(store)
    }

    /// Runs `work` on the store's runtime and waits for its answer (see the module
    /// documentation for why this is safe from any thread).
    fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        self.run_with_timeout(CALL_TIMEOUT, work)
    }

    /// [`Self::run`] with another limit than [`CALL_TIMEOUT`].
    fn run_with_timeout<T, F>(&self, limit: Duration, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let Some(runtime) = &self.runtime else {
            return Err(StoreError::Unavailable("the store is closed".into()));
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let answer = match tokio::time::timeout(limit, work).await {
                Ok(answer) => answer,
                Err(_) => Err(StoreError::Unavailable(format!(
                    "the database did not answer within {limit:?}"
                ))),
            };
            // The caller waits on `rx` until this send; it cannot be gone.
            let _ = tx.send(answer);
        });
        rx.recv()
            .unwrap_or_else(|_| Err(StoreError::Unavailable("the store is closed".into())))
    }

    /// A clone of the pool, to move into a call's future.
    fn pool(&self) -> Pool {
        self.pool.clone()
    }
}

/// A batch of certificate records with their JSON, refusing a serial named twice: the
/// primary key would refuse it too, but could not say it was this batch's own.
fn checked_rows(
    records: &[CertificateRecord],
) -> Result<Vec<(CertificateRecord, Json<serde_json::Value>)>, StoreError> {
    let mut seen = HashSet::with_capacity(records.len());
    for r in records {
        if !seen.insert(r.serial) {
            return Err(StoreError::SerialExists(r.serial));
        }
    }
    records.iter().map(|r| Ok((r.clone(), json(r)?))).collect()
}

/// Inserts certificate rows inside `tx`; a taken serial is [`StoreError::SerialExists`].
async fn insert_rows(
    tx: &deadpool_postgres::Transaction<'_>,
    rows: &[(CertificateRecord, Json<serde_json::Value>)],
) -> Result<(), StoreError> {
    let insert = tx
        .prepare_cached(
            "INSERT INTO certificates (serial, kind, instance_guid, app_guid,
                 authority_id, not_before, not_after, revoked_at, record)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .await
        .map_err(db_error)?;
    for (r, record) in rows {
        let serial: &[u8] = r.serial.as_bytes();
        let params: [&(dyn ToSql + Sync); 9] = [
            &serial,
            &r.kind.as_str(),
            &r.instance_guid.as_ref().map(|g| g.as_str()),
            &r.app_guid.as_ref().map(|g| g.as_str()),
            &i64::from(r.authority_id.0),
            &r.not_before,
            &r.not_after,
            &r.revoked_at,
            record,
        ];
        if let Err(e) = tx.execute(&insert, &params).await {
            if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                return Err(StoreError::SerialExists(r.serial));
            }
            return Err(db_error(e));
        }
    }
    Ok(())
}

/// The columns of `instance_bindings`, in the order [`binding_of`] reads them.
const BINDING_COLUMNS: &str =
    "instance_guid, owner, app_guid, space_guid, organization_guid, not_after";

/// A binding from a row of [`BINDING_COLUMNS`].
fn binding_of(row: &tokio_postgres::Row) -> Result<InstanceBinding, StoreError> {
    let guid = |i: usize| -> Result<Guid, StoreError> {
        let text: String = row.try_get(i).map_err(db_error)?;
        text.parse()
            .map_err(|e: crate::ids::IdError| StoreError::Corrupt {
                key: format!("instance_bindings/{text}"),
                message: e.0,
            })
    };
    Ok(InstanceBinding {
        instance_guid: guid(0)?,
        owner: row.try_get(1).map_err(db_error)?,
        app_guid: guid(2)?,
        space_guid: guid(3)?,
        organization_guid: guid(4)?,
        not_after: row.try_get(5).map_err(db_error)?,
    })
}

/// Binds the instances of `rows` inside `tx` (judged at `now`), and returns the indices of
/// the rows refused because their instance is bound elsewhere, in increasing order.
///
/// One conditional upsert per instance record: it inserts a free binding, replaces an
/// expired one, extends the holder's own, and matches nothing (no row returned) for a live
/// binding of someone else. Under a concurrent insert of the same instance it waits for that
/// transaction and then judges the row it left, so exactly one owner wins. Rows are taken in
/// instance order, so two batches binding the same instances lock them in the same order.
async fn bind_instances(
    tx: &deadpool_postgres::Transaction<'_>,
    rows: &[(CertificateRecord, Json<serde_json::Value>)],
    now: SystemTime,
) -> Result<Vec<usize>, StoreError> {
    let mut wanted: Vec<(usize, InstanceBinding)> = rows
        .iter()
        .enumerate()
        .filter_map(|(i, (r, _))| InstanceBinding::of(r).map(|b| (i, b)))
        .collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    // Stable: two records for one instance keep their order, so the first decides.
    wanted.sort_by(|a, b| a.1.instance_guid.cmp(&b.1.instance_guid));
    let upsert = tx
        .prepare_cached(
            "INSERT INTO instance_bindings AS b
                 (instance_guid, owner, app_guid, space_guid, organization_guid, not_after)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (instance_guid) DO UPDATE SET
                 owner = EXCLUDED.owner, app_guid = EXCLUDED.app_guid,
                 space_guid = EXCLUDED.space_guid,
                 organization_guid = EXCLUDED.organization_guid,
                 not_after = CASE WHEN b.not_after <= $7 THEN EXCLUDED.not_after
                                  ELSE GREATEST(b.not_after, EXCLUDED.not_after) END
             WHERE b.not_after <= $7
                OR (b.owner = EXCLUDED.owner AND b.app_guid = EXCLUDED.app_guid
                    AND b.space_guid = EXCLUDED.space_guid
                    AND b.organization_guid = EXCLUDED.organization_guid)
             RETURNING 1",
        )
        .await
        .map_err(db_error)?;
    let mut refused = Vec::new();
    for (i, b) in &wanted {
        let params: [&(dyn ToSql + Sync); 7] = [
            &b.instance_guid.as_str(),
            &b.owner,
            &b.app_guid.as_str(),
            &b.space_guid.as_str(),
            &b.organization_guid.as_str(),
            &b.not_after,
            &now,
        ];
        if tx
            .query_opt(&upsert, &params)
            .await
            .map_err(db_error)?
            .is_none()
        {
            refused.push(*i);
        }
    }
    refused.sort_unstable();
    Ok(refused)
}

const SELECT_CERTIFICATES: &str = "SELECT record::text FROM certificates";

/// The statement of a certificate query with the given filters, its parameters in this
/// order: serial, instance GUID, app GUID, the cursor's notBefore and serial, the limit.
/// One statement per combination of filters, so each uses its index: by serial (the key),
/// by instance or app (newest first, starting at the cursor), or by time alone; the cursor
/// is a row comparison in the order those indexes keep, so a page reads only what it answers.
fn certificates_statement(serial: bool, instance: bool, app: bool, after: bool) -> String {
    let mut conditions = Vec::new();
    let mut n = 0;
    let mut next = || {
        n += 1;
        n
    };
    if serial {
        conditions.push(format!("serial = ${}", next()));
    }
    if instance {
        conditions.push(format!("instance_guid = ${}", next()));
    }
    if app {
        conditions.push(format!("app_guid = ${}", next()));
    }
    if after {
        let (t, s) = (next(), next());
        conditions.push(format!("(not_before, serial) < (${t}, ${s})"));
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    format!(
        "{SELECT_CERTIFICATES} {filter} {NEWEST_FIRST} LIMIT ${}",
        next()
    )
}
const NEWEST_FIRST: &str = "ORDER BY not_before DESC, serial DESC";

impl Store for PostgresStore {
    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let pool = self.pool();
        let key = key.to_string();
        self.run(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let st = c
                .prepare_cached("SELECT value FROM meta WHERE key = $1")
                .await
                .map_err(db_error)?;
            let row = c.query_opt(&st, &[&key]).await.map_err(db_error)?;
            row.map(|r| r.try_get::<_, Vec<u8>>(0))
                .transpose()
                .map_err(db_error)
        })
    }

    fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let pool = self.pool();
        let key = key.to_string();
        let value = value.to_vec();
        self.run(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let st = c
                .prepare_cached(
                    "INSERT INTO meta (key, value) VALUES ($1, $2)
                     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                )
                .await
                .map_err(db_error)?;
            c.execute(&st, &[&key, &value]).await.map_err(db_error)?;
            Ok(())
        })
    }

    fn load_authorities(&self) -> Result<(Vec<AuthorityRecord>, u64), StoreError> {
        let g = self.load_generations()?;
        Ok((g.records, g.bundle_sequence))
    }

    fn save_authorities(
        &self,
        changed: &[AuthorityRecord],
        bundle_sequence: u64,
        audit: &[AuditEvent],
    ) -> Result<(), StoreError> {
        self.save_generations(changed, bundle_sequence, None, audit)
            .map(|_| ())
    }

    fn load_generations(&self) -> Result<Generations, StoreError> {
        let pool = self.pool();
        self.run(async move {
            let c = pool.get().await.map_err(pool_error)?;
            // One statement, so one snapshot: the generations, the sequence and the version
            // that a save wrote together are read together.
            let st = c
                .prepare_cached(
                    "SELECT s.value, s.version, a.id, a.record::text
                     FROM bundle_sequence s LEFT JOIN authorities a ON true
                     ORDER BY a.id",
                )
                .await
                .map_err(db_error)?;
            let rows = c.query(&st, &[]).await.map_err(db_error)?;
            let mut out = Generations {
                records: Vec::with_capacity(rows.len()),
                bundle_sequence: 0,
                version: 0,
            };
            for row in rows {
                out.bundle_sequence = non_negative("bundle_sequence", row.try_get(0))?;
                out.version = non_negative("bundle_sequence.version", row.try_get(1))?;
                let id: Option<i64> = row.try_get(2).map_err(db_error)?;
                let record: Option<String> = row.try_get(3).map_err(db_error)?;
                if let (Some(id), Some(record)) = (id, record) {
                    out.records.push(decode::<AuthorityRecord>(
                        &format!("authorities/{id}"),
                        &record,
                    )?);
                }
            }
            Ok(out)
        })
    }

    fn save_generations_if(
        &self,
        changed: &[AuthorityRecord],
        bundle_sequence: u64,
        expected_version: u64,
        audit: &[AuditEvent],
    ) -> Result<u64, StoreError> {
        self.save_generations(changed, bundle_sequence, Some(expected_version), audit)
    }

    fn new_authority_id(&self) -> Result<AuthorityId, StoreError> {
        let pool = self.pool();
        self.run(async move {
            let c = pool.get().await.map_err(pool_error)?;
            // The row lock of the update orders concurrent callers, and each computes from
            // the row as the previous one left it: no id is handed out twice.
            let st = c
                .prepare_cached(
                    "UPDATE bundle_sequence SET last_authority_id =
                         GREATEST(last_authority_id,
                                  (SELECT COALESCE(max(id), 0) FROM authorities)) + 1
                     RETURNING last_authority_id",
                )
                .await
                .map_err(db_error)?;
            let id: i64 = c
                .query_one(&st, &[])
                .await
                .map_err(db_error)?
                .try_get(0)
                .map_err(db_error)?;
            u32::try_from(id)
                .map(AuthorityId)
                .map_err(|_| StoreError::Backend("generation ids are exhausted".into()))
        })
    }

    fn insert_certificates(&self, records: &[CertificateRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let rows = checked_rows(records)?;
        let pool = self.pool();
        self.run(async move {
            let mut c = pool.get().await.map_err(pool_error)?;
            // All or none: a taken serial aborts the transaction, and dropping it rolls back
            // what the batch had inserted.
            let tx = c.transaction().await.map_err(db_error)?;
            insert_rows(&tx, &rows).await?;
            tx.commit().await.map_err(db_error)
        })
    }

    fn insert_signed(
        &self,
        signer: AuthorityId,
        records: &[CertificateRecord],
        audit: &[AuditEvent],
    ) -> Result<Vec<usize>, StoreError> {
        if !audit.is_empty() && audit.len() != records.len() {
            return Err(StoreError::Backend(
                "one audit event per certificate record, or none".into(),
            ));
        }
        let rows = checked_rows(records)?;
        let audit = audit.to_vec();
        let pool = self.pool();
        let now = SystemTime::now();
        self.run(async move {
            let mut c = pool.get().await.map_err(pool_error)?;
            let tx = c.transaction().await.map_err(db_error)?;
            // The share lock is held until commit: a save that changes the signer (it takes
            // the row `FOR UPDATE`) waits for this insert, and an insert that comes after
            // such a save sees its new state here and refuses.
            let st = tx
                .prepare_cached("SELECT state FROM authorities WHERE id = $1 FOR SHARE")
                .await
                .map_err(db_error)?;
            let state: Option<String> = tx
                .query_opt(&st, &[&i64::from(signer.0)])
                .await
                .map_err(db_error)?
                .map(|row| row.try_get(0))
                .transpose()
                .map_err(db_error)?;
            if state.as_deref() != Some("active") {
                return Err(StoreError::NotActive(signer));
            }
            let refused = bind_instances(&tx, &rows, now).await?;
            let kept: Vec<_> = rows
                .into_iter()
                .enumerate()
                .filter(|(i, _)| refused.binary_search(i).is_err())
                .map(|(_, r)| r)
                .collect();
            insert_rows(&tx, &kept).await?;
            let events: Vec<AuditEvent> = audit
                .into_iter()
                .enumerate()
                .filter(|(i, _)| refused.binary_search(i).is_err())
                .map(|(_, e)| e)
                .collect();
            audit_log::append_tx(&tx, &events).await?;
            tx.commit().await.map_err(db_error)?;
            Ok(refused)
        })
    }

    fn get_binding(
        &self,
        instance: &Guid,
        now: SystemTime,
    ) -> Result<Option<InstanceBinding>, StoreError> {
        let pool = self.pool();
        let guid = instance.as_str().to_string();
        self.run(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let st = c
                .prepare_cached(&format!(
                    "SELECT {BINDING_COLUMNS} FROM instance_bindings
                     WHERE instance_guid = $1 AND not_after > $2"
                ))
                .await
                .map_err(db_error)?;
            c.query_opt(&st, &[&guid, &now])
                .await
                .map_err(db_error)?
                .map(|row| binding_of(&row))
                .transpose()
        })
    }

    fn release_binding(
        &self,
        instance: &Guid,
        owner: Option<&str>,
        now: SystemTime,
        audit: &[AuditEvent],
    ) -> Result<ReleaseOutcome, StoreError> {
        let pool = self.pool();
        let guid = instance.as_str().to_string();
        let owner = owner.map(str::to_string);
        let audit = audit.to_vec();
        self.run(async move {
            let mut c = pool.get().await.map_err(pool_error)?;
            let tx = c.transaction().await.map_err(db_error)?;
            // The row lock orders a release against a concurrent issuance or release.
            let st = tx
                .prepare_cached(&format!(
                    "SELECT {BINDING_COLUMNS} FROM instance_bindings
                     WHERE instance_guid = $1 FOR UPDATE"
                ))
                .await
                .map_err(db_error)?;
            let Some(row) = tx.query_opt(&st, &[&guid]).await.map_err(db_error)? else {
                return Ok(ReleaseOutcome::NotBound);
            };
            let b = binding_of(&row)?;
            let outcome = if b.expired(now) {
                ReleaseOutcome::NotBound
            } else if owner.as_deref().is_some_and(|o| o != b.owner) {
                return Ok(ReleaseOutcome::OwnedElsewhere);
            } else {
                ReleaseOutcome::Released(b)
            };
            tx.execute(
                "DELETE FROM instance_bindings WHERE instance_guid = $1",
                &[&guid],
            )
            .await
            .map_err(db_error)?;
            if matches!(outcome, ReleaseOutcome::Released(_)) {
                audit_log::append_tx(&tx, &audit).await?;
            }
            tx.commit().await.map_err(db_error)?;
            Ok(outcome)
        })
    }

    fn get_certificate(&self, serial: &Serial) -> Result<Option<CertificateRecord>, StoreError> {
        let pool = self.pool();
        let serial = *serial;
        self.run(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let st = c
                .prepare_cached("SELECT record::text FROM certificates WHERE serial = $1")
                .await
                .map_err(db_error)?;
            let key: &[u8] = serial.as_bytes();
            match c.query_opt(&st, &[&key]).await.map_err(db_error)? {
                Some(row) => {
                    let text: String = row.try_get(0).map_err(db_error)?;
                    Ok(Some(decode(&format!("certificates/{serial}"), &text)?))
                }
                None => Ok(None),
            }
        })
    }

    fn update_certificate(&self, record: &CertificateRecord) -> Result<(), StoreError> {
        let pool = self.pool();
        let r = record.clone();
        let value = json(record)?;
        self.run(async move {
            let mut c = pool.get().await.map_err(pool_error)?;
            // The notification goes out only if the update commits.
            let tx = c.transaction().await.map_err(db_error)?;
            // Every searched column follows the record, so queries keep finding it as it is.
            let st = tx
                .prepare_cached(
                    "UPDATE certificates SET kind = $2, instance_guid = $3, app_guid = $4,
                         authority_id = $5, not_before = $6, not_after = $7, revoked_at = $8,
                         record = $9
                     WHERE serial = $1",
                )
                .await
                .map_err(db_error)?;
            let serial: &[u8] = r.serial.as_bytes();
            let params: [&(dyn ToSql + Sync); 9] = [
                &serial,
                &r.kind.as_str(),
                &r.instance_guid.as_ref().map(|g| g.as_str()),
                &r.app_guid.as_ref().map(|g| g.as_str()),
                &i64::from(r.authority_id.0),
                &r.not_before,
                &r.not_after,
                &r.revoked_at,
                &value,
            ];
            if tx.execute(&st, &params).await.map_err(db_error)? == 0 {
                return Err(StoreError::NotFound(r.serial));
            }
            tx.execute(NOTIFY_CHANGES, &[]).await.map_err(db_error)?;
            tx.commit().await.map_err(db_error)
        })
    }

    fn revoke(
        &self,
        serial: &Serial,
        at: SystemTime,
        reason: Option<&str>,
        audit: &[AuditEvent],
    ) -> Result<RevokeOutcome, StoreError> {
        let pool = self.pool();
        let serial = *serial;
        let audit = audit.to_vec();
        let reason = reason.map(str::to_string);
        self.run(async move {
            let mut c = pool.get().await.map_err(pool_error)?;
            let tx = c.transaction().await.map_err(db_error)?;
            // The row lock makes concurrent revokes of one serial take turns: the second
            // reads the first one's committed record and leaves it alone.
            let st = tx
                .prepare_cached(
                    "SELECT record::text FROM certificates WHERE serial = $1 FOR UPDATE",
                )
                .await
                .map_err(db_error)?;
            let key: &[u8] = serial.as_bytes();
            let Some(row) = tx.query_opt(&st, &[&key]).await.map_err(db_error)? else {
                return Err(StoreError::NotFound(serial));
            };
            let text: String = row.try_get(0).map_err(db_error)?;
            let mut record: CertificateRecord = decode(&format!("certificates/{serial}"), &text)?;
            if record.revoked_at.is_some() {
                return Ok(RevokeOutcome::AlreadyRevoked(record));
            }
            record.revoked_at = Some(at);
            record.revocation_reason = reason;
            let value = json(&record)?;
            // The searched column and the record change in the same statement, so the
            // revocation index (`revoked_at`) never disagrees with the record.
            let st = tx
                .prepare_cached(
                    "UPDATE certificates SET revoked_at = $2, record = $3 WHERE serial = $1",
                )
                .await
                .map_err(db_error)?;
            tx.execute(&st, &[&key, &record.revoked_at, &value])
                .await
                .map_err(db_error)?;
            // The notification goes out only if the revocation commits.
            tx.execute(NOTIFY_CHANGES, &[]).await.map_err(db_error)?;
            audit_log::append_tx(&tx, &audit).await?;
            tx.commit().await.map_err(db_error)?;
            Ok(RevokeOutcome::Revoked(record))
        })
    }

    fn query_certificates(
        &self,
        q: &CertificateQuery,
    ) -> Result<Vec<CertificateRecord>, StoreError> {
        let pool = self.pool();
        let instance = q.instance_guid.as_ref().map(|g| g.as_str().to_string());
        let app = q.app_guid.as_ref().map(|g| g.as_str().to_string());
        let serial = q.serial.map(|s| s.as_bytes().to_vec());
        let after = q
            .after
            .map(|c| (c.not_before, c.serial.as_bytes().to_vec()));
        let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
        self.run(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
            if let Some(s) = &serial {
                params.push(s);
            }
            if let Some(i) = &instance {
                params.push(i);
            }
            if let Some(a) = &app {
                params.push(a);
            }
            if let Some((nb, s)) = &after {
                params.push(nb);
                params.push(s);
            }
            params.push(&limit);
            let sql = certificates_statement(
                serial.is_some(),
                instance.is_some(),
                app.is_some(),
                after.is_some(),
            );
            let st = c.prepare_cached(&sql).await.map_err(db_error)?;
            let rows = c.query(&st, &params).await.map_err(db_error)?;
            rows.iter()
                .map(|row| {
                    let text: String = row.try_get(0).map_err(db_error)?;
                    decode("certificates", &text)
                })
                .collect()
        })
    }

    fn revoked(&self, id: AuthorityId) -> Result<Vec<(Serial, SystemTime)>, StoreError> {
        let pool = self.pool();
        self.run(async move {
            let c = pool.get().await.map_err(pool_error)?;
            // The times come from the records, so the list says what the records say.
            let st = c
                .prepare_cached(
                    "SELECT serial, record::text FROM certificates
                     WHERE authority_id = $1 AND revoked_at IS NOT NULL",
                )
                .await
                .map_err(db_error)?;
            let rows = c.query(&st, &[&i64::from(id.0)]).await.map_err(db_error)?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let serial = serial_of(&row.try_get::<_, Vec<u8>>(0).map_err(db_error)?)?;
                let text: String = row.try_get(1).map_err(db_error)?;
                let r: CertificateRecord = decode(&format!("certificates/{serial}"), &text)?;
                if let Some(at) = r.revoked_at {
                    out.push((serial, at));
                }
            }
            Ok(out)
        })
    }

    fn last_leaf_not_after(&self, id: AuthorityId) -> Result<Option<SystemTime>, StoreError> {
        let pool = self.pool();
        self.run(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let st = c
                // Deleted records (retention) count through what their deletion kept.
                .prepare_cached(
                    "SELECT GREATEST(
                         (SELECT max(not_after) FROM certificates WHERE authority_id = $1),
                         (SELECT not_after FROM deleted_last_leaf WHERE authority_id = $1))",
                )
                .await
                .map_err(db_error)?;
            c.query_one(&st, &[&i64::from(id.0)])
                .await
                .map_err(db_error)?
                .try_get::<_, Option<SystemTime>>(0)
                .map_err(db_error)
        })
    }

    fn insert_join_token(
        &self,
        hash: &[u8],
        token: &JoinTokenRecord,
        audit: &[AuditEvent],
    ) -> Result<(), StoreError> {
        let pool = self.pool();
        let hash = hash.to_vec();
        let expires_at = token.expires_at;
        let record = json(token)?;
        let audit = audit.to_vec();
        self.run(async move {
            let mut c = pool.get().await.map_err(pool_error)?;
            let tx = c.transaction().await.map_err(db_error)?;
            let st = tx
                .prepare_cached(
                    "INSERT INTO join_tokens (hash, expires_at, record) VALUES ($1, $2, $3)
                     ON CONFLICT (hash) DO UPDATE
                     SET expires_at = EXCLUDED.expires_at, record = EXCLUDED.record",
                )
                .await
                .map_err(db_error)?;
            tx.execute(&st, &[&hash, &expires_at, &record])
                .await
                .map_err(db_error)?;
            audit_log::append_tx(&tx, &audit).await?;
            tx.commit().await.map_err(db_error)
        })
    }

    fn get_join_token(&self, hash: &[u8]) -> Result<Option<JoinTokenRecord>, StoreError> {
        self.join_token_query("SELECT record::text FROM join_tokens WHERE hash = $1", hash)
    }

    fn take_join_token(
        &self,
        hash: &[u8],
        audit: &[AuditEvent],
    ) -> Result<Option<JoinTokenRecord>, StoreError> {
        let pool = self.pool();
        let hash = hash.to_vec();
        let audit = audit.to_vec();
        self.run(async move {
            let mut c = pool.get().await.map_err(pool_error)?;
            let tx = c.transaction().await.map_err(db_error)?;
            // The row lock of the delete decides: of concurrent takers, in this process or
            // another, exactly one deletes the row and gets it back.
            let st = tx
                .prepare_cached("DELETE FROM join_tokens WHERE hash = $1 RETURNING record::text")
                .await
                .map_err(db_error)?;
            let Some(row) = tx.query_opt(&st, &[&hash]).await.map_err(db_error)? else {
                return Ok(None);
            };
            let text: String = row.try_get(0).map_err(db_error)?;
            let rec: JoinTokenRecord = decode("join_token", &text)?;
            audit_log::append_tx(&tx, &audit).await?;
            tx.commit().await.map_err(db_error)?;
            Ok(Some(rec))
        })
    }

    fn append_audit(&self, audit: &[AuditEvent]) -> Result<(), StoreError> {
        self.append_audit_now(audit)
    }

    fn audit_after(&self, after: u64, limit: usize) -> Result<AuditPage, StoreError> {
        self.audit_after_now(after, limit)
    }

    fn import_audit(&self, entries: &[crate::audit::AuditEntry]) -> Result<(), StoreError> {
        self.import_audit_now(entries)
    }

    fn all_bindings(&self) -> Result<Vec<InstanceBinding>, StoreError> {
        let pool = self.pool();
        self.run_with_timeout(LONG_CALL_TIMEOUT, async move {
            let c = pool.get().await.map_err(pool_error)?;
            let rows = c
                .query(
                    &format!("SELECT {BINDING_COLUMNS} FROM instance_bindings"),
                    &[],
                )
                .await
                .map_err(db_error)?;
            rows.iter().map(binding_of).collect()
        })
    }

    fn import_bindings(&self, bindings: &[InstanceBinding]) -> Result<(), StoreError> {
        let pool = self.pool();
        let bindings = bindings.to_vec();
        self.run_with_timeout(LONG_CALL_TIMEOUT, async move {
            let mut c = pool.get().await.map_err(pool_error)?;
            let tx = c.transaction().await.map_err(db_error)?;
            let st = tx
                .prepare_cached(
                    "INSERT INTO instance_bindings
                         (instance_guid, owner, app_guid, space_guid, organization_guid, not_after)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (instance_guid) DO UPDATE SET owner = EXCLUDED.owner,
                         app_guid = EXCLUDED.app_guid, space_guid = EXCLUDED.space_guid,
                         organization_guid = EXCLUDED.organization_guid,
                         not_after = EXCLUDED.not_after",
                )
                .await
                .map_err(db_error)?;
            for b in &bindings {
                let params: [&(dyn ToSql + Sync); 6] = [
                    &b.instance_guid.as_str(),
                    &b.owner,
                    &b.app_guid.as_str(),
                    &b.space_guid.as_str(),
                    &b.organization_guid.as_str(),
                    &b.not_after,
                ];
                tx.execute(&st, &params).await.map_err(db_error)?;
            }
            tx.commit().await.map_err(db_error)
        })
    }

    fn lock_init(&self) -> Result<InitLock, StoreError> {
        loop {
            let pool = self.pool();
            // Waiting for another replica to finish initializing is expected here, so this
            // call has the lock wait as its limit, not the short limit of ordinary calls.
            let held = self.run_with_timeout(INIT_LOCK_WAIT + CALL_TIMEOUT, async move {
                let c = pool.get().await.map_err(pool_error)?;
                let deadline = tokio::time::Instant::now() + INIT_LOCK_WAIT;
                loop {
                    let got: bool = c
                        .query_one("SELECT pg_try_advisory_lock($1)", &[&INIT_LOCK])
                        .await
                        .map_err(db_error)?
                        .try_get(0)
                        .map_err(db_error)?;
                    if got {
                        // A session lock: the connection leaves the pool and holds it until
                        // it is closed (on drop, or when the process dies).
                        return Ok(Some(deadpool_postgres::Object::take(c)));
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Ok(None);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })?;
            if let Some(client) = held {
                return Ok(InitLock::new(Box::new(client)));
            }
            tracing::info!("waiting for another process to finish initializing the database");
        }
    }

    fn change_feed(&self) -> Option<std::sync::mpsc::Receiver<()>> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.feed
            .subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        let runtime = self.runtime.as_ref()?;
        if !self
            .feed
            .started
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            runtime.spawn(listen_forever(std::sync::Arc::downgrade(&self.feed)));
        }
        Some(rx)
    }

    fn purge_expired_join_tokens(&self, now: SystemTime) -> Result<u64, StoreError> {
        let pool = self.pool();
        self.run(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let st = c
                .prepare_cached("DELETE FROM join_tokens WHERE expires_at < $1")
                .await
                .map_err(db_error)?;
            c.execute(&st, &[&now]).await.map_err(db_error)
        })
    }

    fn expired_certificates(
        &self,
        before: SystemTime,
        limit: usize,
    ) -> Result<Vec<Serial>, StoreError> {
        let pool = self.pool();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let st = c
                .prepare_cached(
                    "SELECT serial FROM certificates WHERE not_after < $1
                     ORDER BY not_after, serial LIMIT $2",
                )
                .await
                .map_err(db_error)?;
            c.query(&st, &[&before, &limit])
                .await
                .map_err(db_error)?
                .iter()
                .map(|row| serial_of(row.try_get(0).map_err(db_error)?))
                .collect()
        })
    }

    fn delete_expired_certificates(
        &self,
        serials: &[Serial],
        before: SystemTime,
        audit: &[AuditEvent],
    ) -> Result<u64, StoreError> {
        let pool = self.pool();
        let serials: Vec<Vec<u8>> = serials.iter().map(|s| s.as_bytes().to_vec()).collect();
        let audit = audit.to_vec();
        self.run(async move {
            let mut c = pool.get().await.map_err(pool_error)?;
            let tx = c.transaction().await.map_err(db_error)?;
            // Delete, keep each generation's latest deleted notAfter, and audit, together.
            let st = tx
                .prepare_cached(
                    "WITH gone AS (
                         DELETE FROM certificates
                         WHERE serial = ANY($1) AND not_after < $2
                         RETURNING authority_id, not_after
                     ), latest AS (
                         INSERT INTO deleted_last_leaf (authority_id, not_after)
                         SELECT authority_id, max(not_after) FROM gone GROUP BY authority_id
                         ON CONFLICT (authority_id) DO UPDATE
                         SET not_after = GREATEST(deleted_last_leaf.not_after, EXCLUDED.not_after)
                     )
                     SELECT count(*) FROM gone",
                )
                .await
                .map_err(db_error)?;
            let deleted = non_negative(
                "deleted",
                tx.query_one(&st, &[&serials, &before])
                    .await
                    .map_err(db_error)?
                    .try_get::<_, i64>(0),
            )?;
            if deleted > 0 {
                audit_log::append_tx(&tx, &audit).await?;
            }
            tx.commit().await.map_err(db_error)?;
            Ok(deleted)
        })
    }

    fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        period: Duration,
    ) -> Result<LeaseGrant, StoreError> {
        self.acquire_lease_now(name, holder, period)
    }

    fn current_lease(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        self.current_lease_now(name)
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.ping_now()
    }

    fn all_meta(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.all_meta_now()
    }

    fn certificates_after(
        &self,
        after: Option<&Serial>,
        limit: usize,
    ) -> Result<Vec<CertificateRecord>, StoreError> {
        self.certificates_after_now(after, limit)
    }

    fn all_join_tokens(&self) -> Result<Vec<(Vec<u8>, JoinTokenRecord)>, StoreError> {
        self.all_join_tokens_now()
    }
}

impl PostgresStore {
    /// Runs `sql` (one `$1` for the token's hash, answering at most one `record::text`) and
    /// decodes the join token it answers, if any.
    fn join_token_query(
        &self,
        sql: &'static str,
        hash: &[u8],
    ) -> Result<Option<JoinTokenRecord>, StoreError> {
        let pool = self.pool();
        let hash = hash.to_vec();
        self.run(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let st = c.prepare_cached(sql).await.map_err(db_error)?;
            match c.query_opt(&st, &[&hash]).await.map_err(db_error)? {
                Some(row) => {
                    let text: String = row.try_get(0).map_err(db_error)?;
                    Ok(Some(decode("join_token", &text)?))
                }
                None => Ok(None),
            }
        })
    }

    /// One transaction: optionally compare the version, then the generations, the sequence
    /// and the version change together and every listener is notified on commit.
    fn save_generations(
        &self,
        changed: &[AuthorityRecord],
        bundle_sequence: u64,
        expected_version: Option<u64>,
        audit: &[AuditEvent],
    ) -> Result<u64, StoreError> {
        let pool = self.pool();
        let audit = audit.to_vec();
        let rows = changed
            .iter()
            .map(|a| Ok((i64::from(a.id.0), a.state.as_str(), json(a)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let sequence = i64::try_from(bundle_sequence)
            .map_err(|_| StoreError::Backend(format!("sequence {bundle_sequence} too large")))?;
        let expected = expected_version
            .map(i64::try_from)
            .transpose()
            .map_err(|_| StoreError::Conflict)?;
        self.run(async move {
            let mut c = pool.get().await.map_err(pool_error)?;
            let tx = c.transaction().await.map_err(db_error)?;
            // The row lock orders concurrent saves; under READ COMMITTED a waiting save
            // re-checks the condition against the row the winner left, and then matches
            // nothing.
            let st = tx
                .prepare_cached(
                    "UPDATE bundle_sequence SET value = $1, version = version + 1
                     WHERE $2::bigint IS NULL OR version = $2
                     RETURNING version",
                )
                .await
                .map_err(db_error)?;
            let Some(row) = tx
                .query_opt(&st, &[&sequence, &expected])
                .await
                .map_err(db_error)?
            else {
                return Err(StoreError::Conflict);
            };
            let version = non_negative("bundle_sequence.version", row.try_get(0))?;
            // Waits for every certificate insert that checked one of these generations
            // (`FOR SHARE`), so none of them commits against the state replaced here.
            let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
            tx.execute(
                "SELECT id FROM authorities WHERE id = ANY($1) FOR UPDATE",
                &[&ids],
            )
            .await
            .map_err(db_error)?;
            let upsert = tx
                .prepare_cached(
                    "INSERT INTO authorities (id, state, record) VALUES ($1, $2, $3)
                     ON CONFLICT (id) DO UPDATE
                     SET state = EXCLUDED.state, record = EXCLUDED.record",
                )
                .await
                .map_err(db_error)?;
            for (id, state, record) in &rows {
                tx.execute(&upsert, &[id, state, record])
                    .await
                    .map_err(db_error)?;
            }
            tx.execute(NOTIFY_CHANGES, &[]).await.map_err(db_error)?;
            audit_log::append_tx(&tx, &audit).await?;
            tx.commit().await.map_err(db_error)?;
            Ok(version)
        })
    }
}

/// A stored counter that may not be negative.
fn non_negative(key: &str, value: Result<i64, tokio_postgres::Error>) -> Result<u64, StoreError> {
    let v = value.map_err(db_error)?;
    u64::try_from(v).map_err(|_| StoreError::Corrupt {
        key: key.into(),
        message: format!("negative value {v}"),
    })
}

/// The listener: one dedicated connection that `LISTEN`s on the changes channel and wakes
/// the subscribers on every notification, connecting again with backoff when it is lost.
/// Ends when the store is dropped.
async fn listen_forever(feed: std::sync::Weak<ChangeFeed>) {
    let mut backoff = LISTEN_BACKOFF.0;
    loop {
        let Some(f) = feed.upgrade() else { return };
        let (config, tls) = (f.config.clone(), f.tls.clone());
        drop(f);
        let ended = match tls {
            Some(tls) => {
                listen_once(
                    &config,
                    tokio_postgres_rustls::MakeRustlsConnect::new(tls),
                    &feed,
                    &mut backoff,
                )
                .await
            }
            None => listen_once(&config, tokio_postgres::NoTls, &feed, &mut backoff).await,
        };
        if let Err(e) = ended {
            tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64,
                "the change listener lost its database connection");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(LISTEN_BACKOFF.1);
    }
}

/// One listening connection, until it ends. Once `LISTEN` is in place it wakes every
/// subscriber (notifications sent while no listener ran are lost: reload once) and resets the
/// backoff.
async fn listen_once<T>(
    config: &tokio_postgres::Config,
    tls: T,
    feed: &std::sync::Weak<ChangeFeed>,
    backoff: &mut Duration,
) -> Result<(), tokio_postgres::Error>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + Unpin + 'static,
{
    use tokio_postgres::AsyncMessage;
    let (client, mut connection) = config.connect(tls).await?;
    let listen_sql = format!("LISTEN {CHANGES_CHANNEL}");
    let listen = client.batch_execute(&listen_sql);
    tokio::pin!(listen);
    // The connection only moves while it is polled: drive it until LISTEN is acknowledged.
    loop {
        tokio::select! {
            done = &mut listen => { done?; break; }
            msg = std::future::poll_fn(|cx| connection.poll_message(cx)) => match msg {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    }
    *backoff = LISTEN_BACKOFF.0;
    let wake = |feed: &std::sync::Weak<ChangeFeed>| match feed.upgrade() {
        Some(f) => {
            f.notify();
            true
        }
        None => false,
    };
    if !wake(feed) {
        return Ok(());
    }
    loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(_))) => {
                if !wake(feed) {
                    return Ok(());
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e),
            None => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
