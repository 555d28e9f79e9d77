//! Black-box tests of failover between CA URLs: an agent with `servers = [dead, real]` and
//! the CLI with `--server dead --server real`. One CA process stands for the live replica
//! (sled is one process on one disk); the dead replica is a port nothing listens on.

mod common;

use std::time::{Duration, Instant};

use common::agent::TestAgent;
use common::*;

const APP: &str = "6f1e0c9a-2b3d-4c5e-8f7a-1b2c3d4e5f60";

/// A CA URL that refuses connections: a port the kernel gave out, then released.
fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("https://127.0.0.1:{port}")
}

/// Starts an agent like [`TestAgent::start`], but configured with `servers`.
fn agent_with_servers(ca: &TestCa, name: &str, servers: &[&str]) -> (TestAgent, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (code, token, err) = ca.cli(&[
        "token", "create", "--role", "cell", "--name", name, "--ttl", "10m",
    ]);
    assert_eq!(code, 0, "{err}");
    let token = token.trim().to_string();
    std::fs::write(dir.path().join("join-token"), &token).unwrap();
    std::fs::copy(
        ca.operator_dir().join("trust-bundle.pem"),
        dir.path().join("bootstrap.pem"),
    )
    .unwrap();
    let d = dir.path().display();
    let list = servers
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        "servers = [{list}]\ntrust_bundle_file = \"{d}/bootstrap.pem\"\njoin_token_file = \"{d}/join-token\"\n\
         credentials_root = \"{d}/instances\"\nstate_dir = \"{d}/state\"\nlisten = \"127.0.0.1:0\"\n\
         instance_ttl = \"1h\"\nmax_backoff = \"2s\"\n"
    );
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, text).unwrap();
    let log = dir.path().join("agent.log");
    let mut agent = TestAgent {
        root: dir.path().join("instances"),
        dir,
        config,
        port: 0,
        child: None,
        log,
        http: reqwest::Client::new(),
    };
    agent.spawn();
    (agent, token)
}

fn roots_in(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.matches("BEGIN CERTIFICATE").count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_whose_first_url_is_dead_joins_issues_and_follows_the_bundle() {
    let ca = TestCa::start();
    let dead = dead_url();
    let real = ca.url();
    let (agent, token) = agent_with_servers(&ca, "cell-failover", &[&dead, &real]);

    let guid = "9a1c2f3e-5b6d-4e7f-8a9b-0c1d";
    let (status, body) = agent.put(guid, APP).await;
    assert_eq!(status, 200, "{body}\n{}", agent.log_text());
    let dir = agent.instance_dir(guid);
    for f in ["instance.crt", "instance.key", "trust-bundle.crt"] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    let log = agent.log_text();
    assert!(
        log.contains("now using CA replica") && log.contains(&real),
        "the agent says which replica it moved to:\n{log}"
    );
    assert!(!log.contains(&token), "the join token is never logged");

    // The long poll goes to the live replica as well: a prepared root reaches the instance.
    assert_eq!(roots_in(&dir.join("trust-bundle.crt")), 1);
    let (code, out, err) = ca.cli(&["--server", &dead, "authority", "prepare", "--server", &real]);
    assert_eq!(code, 0, "{out}{err}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while roots_in(&dir.join("trust-bundle.crt")) != 2 {
        assert!(
            Instant::now() < deadline,
            "the bundle change did not reach the instance:\n{}",
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn the_cli_tries_each_server_in_turn() {
    let ca = TestCa::start();
    let dead = dead_url();
    let real = ca.url();

    let (code, out, err) = ca.cli(&["authority", "list", "--server", &dead, "--server", &real]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("active"), "{out}");
    assert!(err.contains("trying the next"), "{err}");

    // Before and after the subcommand, in that order.
    let (code, out, err) = ca.cli(&[
        "--server",
        &dead,
        "authority",
        "list",
        "--json",
        "--server",
        &real,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"authorities\""), "{out}");

    // Only dead URLs: a runtime failure naming the URL.
    let (code, _, err) = ca.cli(&["authority", "list", "--server", &dead]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&dead), "{err}");

    // A URL that is not https is a usage error.
    let (code, _, err) = ca.cli(&[
        "authority",
        "list",
        "--server",
        &real,
        "--server",
        "http://127.0.0.1:1",
    ]);
    assert_eq!(code, 2, "{err}");
}
