//! The command line as people meet it: errors that say what to do next, usage errors for
//! values out of range, readable output with `--json` for machines, `--version`, completions
//! and the systemd units.

mod common;

use std::process::Command;

use common::{TestCa, BIN};

/// Runs the CLI in `dir` with no `LANYARD_*` configuration from the environment.
fn run_in(dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("LANYARD_CONFIG")
        .env_remove("LANYARD_KEK")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn without_a_config_file_the_error_says_to_pass_config_or_set_lanyard_config() {
    let empty = tempfile::tempdir().unwrap();
    let (code, _, err) = run_in(empty.path(), &["authority", "list"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("ca-config/lanyard.toml")
            && err.contains("--config")
            && err.contains("LANYARD_CONFIG"),
        "{err}"
    );
    let (code, _, err) = run_in(empty.path(), &["agent"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("ca-config/agent.toml") && err.contains("--config"),
        "{err}"
    );
}

#[test]
fn without_an_operator_credential_the_error_says_to_run_serve_or_init_first() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(dir.path(), &[]);
    let (code, _, err) = run_in(
        dir.path(),
        &["authority", "list", "--config", config.to_str().unwrap()],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("lanyard serve")
            && err.contains("lanyard init")
            && err.contains("--credential"),
        "{err}"
    );
}

#[test]
fn a_join_token_ttl_out_of_range_is_a_usage_error_naming_the_range() {
    let empty = tempfile::tempdir().unwrap();
    let (code, _, err) = run_in(
        empty.path(),
        &["token", "create", "--name", "c1", "--ttl", "2d"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--ttl 2d") && err.contains("1s to 24h"),
        "{err}"
    );
}

#[test]
fn version_names_the_git_revision_and_completions_come_for_three_shells() {
    let empty = tempfile::tempdir().unwrap();
    let (code, out, _) = run_in(empty.path(), &["--version"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with(&format!("lanyard {} (git ", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    let revision = out
        .trim()
        .rsplit_once("git ")
        .unwrap()
        .1
        .trim_end_matches(')');
    assert!(
        revision == "unknown" || revision.chars().all(|c| c.is_ascii_hexdigit()),
        "{out}"
    );
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef lanyard"),
        ("fish", "complete -c lanyard"),
    ] {
        let (code, out, err) = run_in(empty.path(), &["completions", shell]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(marker), "{shell}: {out}");
        assert!(out.contains("authority"), "{shell} completes subcommands");
    }
    let (code, _, _) = run_in(empty.path(), &["completions", "tcsh"]);
    assert_eq!(code, 2);
}

#[test]
fn a_reader_that_stops_reading_ends_the_command_quietly_not_with_a_panic() {
    // `lanyard ... | head`: the pipe's reader is gone before the command writes.
    let mut child = Command::new(BIN)
        .args(["bench", "--mode", "floor", "--requests", "200"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

#[test]
fn the_systemd_units_pass_systemd_analyze_verify_when_systemd_is_there() {
    let units = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/systemd");
    let dir = tempfile::tempdir().unwrap();
    for unit in ["lanyard.service", "lanyard-agent.service"] {
        let text = std::fs::read_to_string(format!("{units}/{unit}")).unwrap();
        for option in [
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ReadWritePaths=",
            "PrivateTmp=yes",
            "ProtectHome=yes",
            "CapabilityBoundingSet=\n",
            "RestrictAddressFamilies=",
            "SystemCallFilter=@system-service",
            "LimitNOFILE=65536",
        ] {
            assert!(text.contains(option), "{unit} lacks {option:?}");
        }
        // The installed path does not exist here: point the unit at the built binary.
        std::fs::write(
            dir.path().join(unit),
            text.replace("/usr/local/bin/lanyard", BIN),
        )
        .unwrap();
    }
    let Ok(out) = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.path().join("lanyard.service"))
        .arg(dir.path().join("lanyard-agent.service"))
        .output()
    else {
        eprintln!("systemd-analyze is not installed: the units were not verified");
        return;
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_errors_and_output_say_what_happened_and_what_to_do_next() {
    let mut ca = TestCa::start();

    // A refused activation names the flag that overrides it.
    let (code, _, err) = ca.cli(&["authority", "prepare"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = ca.cli(&["authority", "activate", "2"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("409") && err.contains("use --force to override"),
        "{err}"
    );
    // The API says the same in its own terms.
    let r = common::raw(
        &ca,
        Some(op_identity(&ca).as_pair()),
        "POST",
        "/v1/authorities/2/activate",
        Some(b"{}".to_vec()),
        &[],
    )
    .await;
    assert_eq!(r.0, 409);
    assert!(
        String::from_utf8_lossy(&r.2).contains("\\\"force\\\": true"),
        "{}",
        String::from_utf8_lossy(&r.2)
    );

    // `authority list` says when the prepared generation may be activated, and what is next.
    let (code, out, err) = ca.cli(&["authority", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("authority 2 may be activated from"), "{out}");
    assert!(
        out.contains("next automatic step: renew-intermediate authority 1"),
        "{out}"
    );
    let list: lanyard::api::AuthoritiesResponse =
        ca.operator().get("/v1/authorities").await.unwrap();
    assert!(list.authorities[1].activatable_at.is_some());
    assert!(list.authorities[0].activatable_at.is_none());
    assert_eq!(
        list.next_automatic_step.unwrap().action,
        "renew-intermediate"
    );

    // A component --ttl beyond this CA's range is a usage error in the CLI's units.
    let out_dir = ca.dir.path().join("gorouter");
    let (code, _, err) = ca.cli(&[
        "cert",
        "component",
        "--name",
        "gorouter",
        "--out",
        out_dir.to_str().unwrap(),
        "--ttl",
        "30d",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--ttl 30d") && err.contains("1m to 7d"),
        "{err}"
    );
    let (code, _, err) = ca.cli(&[
        "cert",
        "component",
        "--name",
        "gorouter",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");

    // inspect --json uses the API's field names.
    let cert = out_dir.join("cert.pem");
    let (code, out, err) = ca.cli(&["inspect", cert.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["name"], "gorouter");
    assert_eq!(
        v["spiffe_id"],
        "spiffe://lanyard.internal/component/gorouter"
    );
    assert!(v["instance_guid"].is_null() && v["serial"].is_string() && v["not_after"].is_string());

    // revoke: RFC 5280 reason names only (in any spelling), refused before any request; a
    // line for people, JSON on request.
    let serial = v["serial"].as_str().unwrap().to_string();
    let (code, _, err) = ca.cli(&["revoke", &serial, "--reason", "lost"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("keyCompromise"), "{err}");
    let (code, out, err) = ca.cli(&["revoke", &serial, "--reason", "keycompromise"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(&format!("revoked {serial} (component gorouter) at "))
            && out.contains("(keyCompromise)"),
        "{out}"
    );
    let (code, out, err) = ca.cli(&["revoke", &serial, "--json"]);
    assert_eq!(code, 0, "{err}");
    let rec: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rec["revocation_reason"], "keyCompromise");
    // The API refuses a reason with a control character, naming the field.
    let r = common::raw(
        &ca,
        Some(op_identity(&ca).as_pair()),
        "POST",
        &format!("/v1/certificates/{serial}/revoke"),
        Some(br#"{"reason":"lost\u0007"}"#.to_vec()),
        &[],
    )
    .await;
    assert_eq!(r.0, 422);
    assert!(
        String::from_utf8_lossy(&r.2).contains("reason"),
        "{:?}",
        r.2
    );

    // A server that is not running: the URL, and what to try.
    ca.stop();
    let (code, _, err) = ca.cli(&["authority", "list"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&ca.url()) && err.contains("lanyard serve") && err.contains("--server"),
        "{err}"
    );
}

/// The operator credential's files.
struct Identity(String, String);

impl Identity {
    fn as_pair(&self) -> (&str, &str) {
        (&self.0, &self.1)
    }
}

fn op_identity(ca: &TestCa) -> Identity {
    let dir = ca.operator_dir();
    Identity(
        std::fs::read_to_string(dir.join("cert.pem")).unwrap(),
        std::fs::read_to_string(dir.join("key.pem")).unwrap(),
    )
}
