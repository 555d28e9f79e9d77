//! A PostgreSQL server for the shared-store tests: the one `LANYARD_TEST_POSTGRES_URL` names
//! (a role that may create databases, no TLS), and a fresh database per test on it.
//!
//! Without the variable the tests are skipped with a note, except where `CI` is set or
//! `LANYARD_REQUIRE_POSTGRES=1`, where they fail: CI never skips them silently.
//! `scripts/test.sh` starts a throwaway server and sets both variables.

/// The test server's URL, or `None` (after a note) where skipping is allowed.
pub(crate) fn server_url() -> Option<String> {
    if let Ok(url) = std::env::var("LANYARD_TEST_POSTGRES_URL") {
        if !url.is_empty() {
            return Some(url);
        }
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    let required = std::env::var("LANYARD_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
    assert!(
        !(ci || required),
        "LANYARD_TEST_POSTGRES_URL is not set, and PostgreSQL tests may not be skipped here \
         (CI or LANYARD_REQUIRE_POSTGRES=1). Run scripts/test.sh (it starts a throwaway \
         PostgreSQL) or set LANYARD_TEST_POSTGRES_URL=postgres://USER@HOST:PORT/postgres"
    );
    eprintln!("note: PostgreSQL test skipped: LANYARD_TEST_POSTGRES_URL is not set");
    None
}

/// `url` with its database replaced by `db`.
pub(crate) fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let end = base[start..]
        .find('/')
        .map(|i| start + i)
        .unwrap_or(base.len());
    match query {
        Some(q) => format!("{}/{db}?{q}", &base[..end]),
        None => format!("{}/{db}", &base[..end]),
    }
}

pub(crate) async fn admin(server: &str, sql: &str) -> Result<(), tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(server, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    let result = client.batch_execute(sql).await;
    drop(client);
    let _ = driver.await;
    result
}

/// A fresh database on the test server, dropped (with any session still on it) at the end.
pub(crate) struct Database {
    server: String,
    /// The database's name.
    pub(crate) name: String,
    /// Its URL.
    pub(crate) url: String,
}

impl Database {
    pub(crate) async fn fresh(server: &str) -> Database {
        let name = format!(
            "lanyard_test_{}",
            hex::encode(lanyard::ids::Serial::random().unwrap().as_bytes())
        );
        admin(server, &format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        Database {
            server: server.to_string(),
            url: with_database(server, &name),
            name,
        }
    }

    pub(crate) async fn count(&self, sql: &str) -> i64 {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let driver = tokio::spawn(connection);
        let n: i64 = client.query_one(sql, &[]).await.unwrap().get(0);
        drop(client);
        let _ = driver.await;
        n
    }

    pub(crate) async fn drop_it(self) {
        let _ = admin(
            &self.server,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        )
        .await;
    }
}
