//! One agent per state directory and per socket, black-box: a second `lanyard agent` refuses
//! to start with a clear message and leaves the first one serving.

mod common;

use std::process::Command;

use common::agent::TestAgent;
use common::{spawn_reporting, ChildGuard, TestCa, BIN};

/// Runs `lanyard agent --config <config>` to its end and returns (exit code, stderr).
fn second_agent(config: &std::path::Path) -> (i32, String) {
    let out = Command::new(BIN)
        .args(["agent", "--config"])
        .arg(config)
        .env_remove("LANYARD_JOIN_TOKEN")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_second_agent_on_the_same_state_directory_refuses_to_start() {
    let ca = TestCa::start();
    let agent = TestAgent::start(&ca, "cell-x", "1h");
    let (code, err) = second_agent(&agent.config);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("another lanyard agent") && err.contains("state directory"),
        "{err}"
    );
    // The first one still serves.
    let r = agent.http.get(agent.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_second_agent_on_the_same_socket_refuses_and_leaves_the_socket_in_place() {
    let ca = TestCa::start();
    // The first agent listens on a Unix socket.
    let mut first = TestAgent::start(&ca, "cell-y", "1h");
    first.stop();
    let socket = first.dir.path().join("agent.sock");
    let text = std::fs::read_to_string(&first.config).unwrap().replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"unix:{}\"", socket.display()),
    );
    std::fs::write(&first.config, &text).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["agent", "--config"]).arg(&first.config);
    let (child, at) =
        spawn_reporting(cmd, std::io::sink(), std::time::Duration::from_secs(60)).unwrap();
    let _first = ChildGuard(child);
    assert_eq!(at, format!("unix:{}", socket.display()));

    // Another agent with its own state directory but the same socket.
    let other = tempfile::tempdir().unwrap();
    let config2 = other.path().join("agent.toml");
    let state = first.dir.path().join("state").display().to_string();
    std::fs::write(
        &config2,
        text.replace(&state, &other.path().join("state").display().to_string()),
    )
    .unwrap();
    let (code, err) = second_agent(&config2);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("is listening on"), "{err}");
    assert!(socket.exists(), "the first agent's socket was removed");
    // The first agent still answers on it.
    let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    use std::io::{Read, Write};
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
