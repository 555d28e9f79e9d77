//! The conformance suite on PostgreSQL, plus what only this backend has: URL parsing,
//! migrations, and calls from inside an async context.
//!
//! Tests that need a server take it from `LANYARD_TEST_POSTGRES_URL` (a superuser or a role
//! that may create databases, no TLS) and work in a fresh database each. Without it they are
//! skipped with a note, except where `CI` is set or `LANYARD_REQUIRE_POSTGRES=1`: there they
//! fail, so a CI run can never pass by skipping them. `scripts/test.sh` starts a throwaway
//! server and sets both variables.

use super::*;
use crate::store::conformance::Harness;

/// The test server's URL, or `None` (after a note) where skipping is allowed.
fn server_url() -> Option<String> {
    if let Ok(url) = std::env::var("LANYARD_TEST_POSTGRES_URL") {
        if !url.is_empty() {
            return Some(url);
        }
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    let required = std::env::var("LANYARD_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
    if ci || required {
        panic!(
            "LANYARD_TEST_POSTGRES_URL is not set, and PostgreSQL tests may not be skipped here \
             (CI or LANYARD_REQUIRE_POSTGRES=1). Run scripts/test.sh (it starts a throwaway \
             PostgreSQL) or set LANYARD_TEST_POSTGRES_URL=postgres://USER@HOST:PORT/postgres \
             for a role that may create databases."
        );
    }
    eprintln!(
        "note: PostgreSQL test skipped: LANYARD_TEST_POSTGRES_URL is not set \
         (scripts/test.sh starts a throwaway server)"
    );
    None
}

/// `url` with its database replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let authority_end = base[scheme_end..]
        .find('/')
        .map(|i| scheme_end + i)
        .unwrap_or(base.len());
    let mut out = format!("{}/{db}", &base[..authority_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Runs administrative SQL (CREATE/DROP DATABASE) on the test server.
/// On a thread of its own, so that it works from async tests too.
fn admin(server: &str, sql: &str) -> Result<(), String> {
    let (server, sql) = (server.to_string(), sql.to_string());
    std::thread::spawn(move || admin_here(&server, &sql))
        .join()
        .map_err(|_| "the admin thread panicked".to_string())?
}

fn admin_here(server: &str, sql: &str) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(server, tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("connecting to LANYARD_TEST_POSTGRES_URL: {e}"))?;
        let driver = tokio::spawn(connection);
        let result = client
            .batch_execute(sql)
            .await
            .map_err(|e| format!("{sql}: {e}"));
        drop(client);
        let _ = driver.await;
        result
    })
}

/// A fresh, uniquely named database on the test server; dropped with the harness.
fn fresh_database(server: &str) -> String {
    let name = format!(
        "lanyard_test_{}",
        hex::encode(Serial::random().unwrap().as_bytes())
    );
    admin(server, &format!("CREATE DATABASE {name}")).unwrap();
    name
}

/// Fresh databases on the test server, dropped when the harness is.
struct PgHarness {
    server: String,
    databases: Vec<String>,
}

impl PgHarness {
    fn from_env() -> Option<Self> {
        server_url().map(|server| PgHarness {
            server,
            databases: Vec::new(),
        })
    }

    fn current_url(&self) -> String {
        let db = self.databases.last().expect("reopen after open_fresh");
        with_database(&self.server, db)
    }
}

impl Drop for PgHarness {
    fn drop(&mut self) {
        for db in &self.databases {
            // Best effort: a database left behind by a crashed test is harmless.
            let _ = admin(
                &self.server,
                &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
            );
        }
    }
}

impl Harness for PgHarness {
    type Store = PostgresStore;

    fn open_fresh(&mut self) -> Result<PostgresStore, StoreError> {
        let db = fresh_database(&self.server);
        self.databases.push(db);
        PostgresStore::open(&self.current_url())
    }

    fn reopen(&mut self, store: PostgresStore) -> Result<PostgresStore, StoreError> {
        drop(store);
        PostgresStore::open(&self.current_url())
    }
}

mod conformance {
    use super::PgHarness;
    crate::store_conformance_tests!(match PgHarness::from_env() {
        Some(h) => h,
        None => return,
    });
}

// ---------------------------------------------------------------------------------------
// URLs (no server needed).

#[test]
fn urls_name_the_tls_mode_and_refuse_what_is_not_supported() {
    let o = ConnectOptions::parse("postgres://u:p@db.example:5433/lanyard").unwrap();
    assert_eq!(o.ssl_mode, SslMode::Prefer);
    assert_eq!(o.config.get_dbname(), Some("lanyard"));
    assert_eq!(o.config.get_user(), Some("u"));

    let o = ConnectOptions::parse("postgresql://u@h/db?sslmode=disable&connect_timeout=3").unwrap();
    assert_eq!(o.ssl_mode, SslMode::Disable);
    assert_eq!(
        o.config.get_connect_timeout(),
        Some(&Duration::from_secs(3))
    );

    let o = ConnectOptions::parse(
        "postgres://u@h/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fpg%20ca.pem",
    )
    .unwrap();
    assert_eq!(o.ssl_mode, SslMode::Require);
    assert_eq!(o.root_cert, Some(PathBuf::from("/etc/pg ca.pem")));

    let e = ConnectOptions::parse("postgres://u@h/db?sslmode=require").unwrap_err();
    assert!(e.contains("sslrootcert"), "{e}");
    let e = ConnectOptions::parse("postgres://u@h/db?sslmode=verify-ca").unwrap_err();
    assert!(e.contains("not supported"), "{e}");
    let e = ConnectOptions::parse("mysql://u@h/db").unwrap_err();
    assert!(e.contains("postgres://"), "{e}");
    let e = ConnectOptions::parse("postgres://u:secret@h/db?bogus=1").unwrap_err();
    assert!(!e.contains("secret"), "errors never show the password: {e}");
}

#[test]
fn a_missing_root_file_is_named() {
    let e = PostgresStore::open(
        "postgres://u@127.0.0.1:1/db?sslmode=require&sslrootcert=/nonexistent/ca.pem",
    )
    .unwrap_err();
    assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
}

#[test]
fn an_unreachable_server_is_unavailable_not_a_backend_failure() {
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let e = PostgresStore::open("postgres://u@127.0.0.1:1/db?sslmode=disable").unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
}

#[test]
fn test_urls_get_their_database_replaced() {
    assert_eq!(
        with_database("postgres://u@127.0.0.1:5/postgres", "x"),
        "postgres://u@127.0.0.1:5/x"
    );
    assert_eq!(
        with_database("postgres://u@127.0.0.1:5?sslmode=disable", "x"),
        "postgres://u@127.0.0.1:5/x?sslmode=disable"
    );
}

// ---------------------------------------------------------------------------------------
// Migrations and runtime (server needed).

#[test]
fn replicas_starting_together_migrate_once() {
    let Some(mut h) = PgHarness::from_env() else {
        return;
    };
    let db = fresh_database(&h.server);
    h.databases.push(db);
    let url = h.current_url();
    let start = std::sync::Barrier::new(4);
    let opened: Vec<Result<PostgresStore, StoreError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    start.wait();
                    PostgresStore::open(&url)
                })
            })
            .collect();
        handles.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let stores: Vec<PostgresStore> = opened.into_iter().map(|s| s.unwrap()).collect();
    let versions = stores[0]
        .run({
            let pool = stores[0].pool();
            async move {
                let c = pool.get().await.map_err(pool_error)?;
                let rows = c
                    .query(
                        "SELECT version FROM schema_migrations ORDER BY version",
                        &[],
                    )
                    .await
                    .map_err(db_error)?;
                Ok(rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>())
            }
        })
        .unwrap();
    let expected = migrations::known_versions();
    assert_eq!(versions, expected, "each migration applied once");
    assert_eq!(stores[1].load_authorities().unwrap().1, 0);
}

#[test]
fn a_database_newer_than_the_binary_is_refused() {
    let Some(mut h) = PgHarness::from_env() else {
        return;
    };
    let store = h.open_fresh().unwrap();
    let future = migrations::latest_version() + 1;
    let pool = store.pool();
    store
        .run(async move {
            let c = pool.get().await.map_err(pool_error)?;
            c.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, 'from the future')",
                &[&future],
            )
            .await
            .map_err(db_error)?;
            Ok(())
        })
        .unwrap();
    drop(store);
    let e = PostgresStore::open(&h.current_url()).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains(&format!("version {future}")) && text.contains("newer"),
        "{text}"
    );
}

/// A parameter of a statement whose plan a test reads.
type Param = Box<dyn ToSql + Sync + Send>;

/// The plan of `sql` with seq scans ruled out: what an index can do for it.
fn plan(store: &PostgresStore, sql: String, params: Vec<Param>) -> String {
    let pool = store.pool();
    store
        .run(async move {
            let mut c = pool.get().await.map_err(pool_error)?;
            let tx = c.transaction().await.map_err(db_error)?;
            tx.batch_execute("SET LOCAL enable_seqscan = off")
                .await
                .map_err(db_error)?;
            let refs: Vec<&(dyn ToSql + Sync)> = params
                .iter()
                .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                .collect();
            let rows = tx
                .query(&format!("EXPLAIN {sql}"), &refs)
                .await
                .map_err(db_error)?;
            Ok(rows
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
                .join("\n"))
        })
        .unwrap()
}

#[test]
fn a_page_of_certificates_and_a_batch_of_expired_ones_are_read_from_an_index_in_order() {
    let Some(mut h) = PgHarness::from_env() else {
        return;
    };
    let store = h.open_fresh().unwrap();
    let serial = || -> Param { Box::new(vec![7u8; 16]) };
    let guid = || -> Param { Box::new("6f1e0c9a".to_string()) };
    let time = || -> Param { Box::new(SystemTime::now()) };
    let limit = || -> Param { Box::new(1i64) };
    let cases: Vec<(&str, String, Vec<Param>)> = vec![
        (
            "certificates_by_app",
            certificates_statement(false, false, true, true),
            vec![guid(), time(), serial(), limit()],
        ),
        (
            "certificates_by_app",
            certificates_statement(false, false, true, false),
            vec![guid(), limit()],
        ),
        (
            "certificates_by_instance",
            certificates_statement(false, true, false, true),
            vec![guid(), time(), serial(), limit()],
        ),
        (
            "certificates_by_time",
            certificates_statement(false, false, false, true),
            vec![time(), serial(), limit()],
        ),
        (
            "certificates_pkey",
            certificates_statement(true, false, false, false),
            vec![serial(), limit()],
        ),
        (
            "certificates_by_expiry",
            "SELECT serial FROM certificates WHERE not_after < $1 ORDER BY not_after, serial LIMIT $2"
                .to_string(),
            vec![time(), limit()],
        ),
    ];
    for (index, sql, params) in cases {
        let p = plan(&store, sql.clone(), params);
        assert!(p.contains(index), "{sql}:\n{p}");
        // By serial there is at most one row to order; otherwise the index gives the order,
        // so the limit stops the scan.
        if index != "certificates_pkey" {
            assert!(
                !p.contains("Sort"),
                "the index gives the order: {sql}:\n{p}"
            );
        }
    }
}

#[tokio::test]
async fn calls_from_inside_an_async_task_neither_panic_nor_deadlock() {
    // A current-thread runtime, the strictest case: `block_on` here would panic, and work
    // that needed this thread to make progress would never finish.
    let Some(mut h) = PgHarness::from_env() else {
        return;
    };
    let store = h.open_fresh().unwrap();
    store.put_meta("k", b"v").unwrap();
    assert_eq!(store.get_meta("k").unwrap().as_deref(), Some(&b"v"[..]));
    drop(store);
}
