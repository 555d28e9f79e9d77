//! Schemathesis (PyPI `schemathesis`), a property-based API tester written outside this
//! project, against the live server: it reads the OpenAPI document the server serves at
//! `GET /v1/openapi.json`, generates requests from it (schema-valid and schema-violating),
//! sends them over TLS verified with the trust bundle, as each role, and checks every answer
//! with `--checks all`: no 5xx, status codes, content types, headers and bodies as documented,
//! schema-violating data refused, schema-valid data accepted, and the rest of its list.
//!
//! Schemathesis runs in a virtual environment under `target/schemathesis`, made on first use
//! (or by `scripts/test.sh`). The inputs the document cannot give (a real CSR, a join token)
//! are in `tests/schemathesis.toml`, which says why each one is there.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::*;
use lanyard::api;
use lanyard::client::new_key_and_csr;
use serde_json::Value;

/// The Schemathesis release the test uses: its checks and generators change between
/// releases, so a new one is a deliberate upgrade.
const SCHEMATHESIS: &str = "schemathesis==4.32.5";

/// Test cases per operation and phase: a minute or so in all on a small machine
/// (two cores, debug build).
const MAX_EXAMPLES: &str = "300";

/// The seed of every run (so a failure can be replayed); `LANYARD_SCHEMATHESIS_SEED` picks
/// another.
const DEFAULT_SEED: &str = "20261205";

/// The `schemathesis` command of the virtual environment (made once per test run).
fn schemathesis() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/schemathesis");
        let bin = venv.join("bin/schemathesis");
        let ready = || {
            Command::new(&bin).arg("--version").output().is_ok_and(|o| {
                o.status.success()
                    && String::from_utf8_lossy(&o.stdout)
                        .contains(SCHEMATHESIS.trim_start_matches("schemathesis=="))
            })
        };
        if !ready() {
            let st = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .unwrap();
            assert!(st.success(), "python3 -m venv failed");
            let out = Command::new(venv.join("bin/python"))
                .args(["-m", "pip", "install", "--quiet", SCHEMATHESIS])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "pip install {SCHEMATHESIS}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(ready(), "{SCHEMATHESIS} does not run");
        }
        bin
    })
    .clone()
}

/// What one run of Schemathesis reported.
struct Outcome {
    /// HTTP requests sent (entries of its HAR report).
    requests: usize,
    /// Test cases generated.
    cases: u64,
    /// Test cases with a failed check, and errors (a run that could not go on counts too).
    failures: u64,
    /// Its exit code.
    exit: i32,
    /// Its console report, for the failure message.
    console: String,
}

/// One run as the caller whose certificate and key are at `cert` and `key`, with `token` for
/// the bearer scheme, over the operations `filter` selects (`--include-operation-id` /
/// `--exclude-operation-id` flags).
fn run(
    ca: &TestCa,
    name: &str,
    (cert, key): (&Path, &Path),
    token: &str,
    filter: &[&str],
) -> Outcome {
    let dir = ca.dir.path().join(format!("schemathesis-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let bundle = file(&dir, "bundle.pem", &ca.bundle_pem());
    let seed =
        std::env::var("LANYARD_SCHEMATHESIS_SEED").unwrap_or_else(|_| DEFAULT_SEED.to_string());
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis.toml");
    let out = Command::new(schemathesis())
        .current_dir(&dir)
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(format!("{}/v1/openapi.json", ca.url()))
        .arg("--tls-verify")
        .arg(&bundle)
        .arg("--request-cert")
        .arg(cert)
        .arg("--request-cert-key")
        .arg(key)
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--seed", &seed])
        .args(["--request-timeout", "30"])
        .args(["--generation-database", "none"])
        .args(["--report", "json,har", "--report-dir"])
        .arg(dir.join("report"))
        .arg("--no-color")
        .args(filter)
        .env("LANYARD_TEST_CSR", new_key_and_csr().unwrap().1)
        .env("LANYARD_TEST_JOIN_TOKEN", token)
        .output()
        .unwrap();
    let console =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let report = |prefix: &str| -> Value {
        let entry = std::fs::read_dir(dir.join("report"))
            .unwrap_or_else(|e| panic!("no report from schemathesis ({e}):\n{console}"))
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
            })
            .unwrap_or_else(|| panic!("no {prefix} report from schemathesis:\n{console}"));
        serde_json::from_slice(&std::fs::read(entry).unwrap()).unwrap()
    };
    let summary = report("json-");
    let har = report("har-");
    let count = |v: &Value| v.as_u64().unwrap_or(0);
    let errors = summary["errors"].as_array().map_or(0, Vec::len) as u64;
    Outcome {
        requests: har["log"]["entries"].as_array().map_or(0, Vec::len),
        cases: count(&summary["test_cases"]["generated"]),
        failures: count(&summary["test_cases"]["with_failures"]) + errors,
        exit: out.status.code().unwrap_or(-1),
        console,
    }
}

/// A fresh join token (one use) for the bearer scheme of `POST /v1/join`.
async fn join_token(ca: &TestCa) -> String {
    let t: api::JoinTokenResponse = ca
        .operator()
        .post(
            "/v1/join-tokens",
            &api::JoinTokenRequest {
                role: "cell".into(),
                name: "schemathesis-joiner".into(),
                ttl_seconds: None,
            },
            None,
        )
        .await
        .unwrap();
    t.token
}

/// The operations only a cell may call, and only a component.
const CELL_OPERATIONS: &[&str] = &[
    "instance_certificate",
    "instance_batch",
    "cell_credential",
    "release",
];
const COMPONENT_OPERATIONS: &[&str] = &["component_credential"];

fn flags(flag: &str, ids: &[&'static str]) -> Vec<&'static str> {
    let flag: &'static str = if flag == "include" {
        "--include-operation-id"
    } else {
        "--exclude-operation-id"
    };
    ids.iter().flat_map(|id| [flag, *id]).collect()
}

#[tokio::test]
async fn schemathesis_finds_no_failure_in_any_operation_as_any_role() {
    let ca = TestCa::start();
    let op = ca.operator_dir();

    // A cell and a component, each with its own credential.
    let cell = ca.join_cell("schemathesis-cell").await;
    let (component_key, csr) = new_key_and_csr().unwrap();
    let component: api::IssuedCertificate = ca
        .operator()
        .post(
            "/v1/component-certificates",
            &api::ComponentCertificateRequest {
                csr,
                name: "schemathesis-component".into(),
                ttl_seconds: None,
            },
            None,
        )
        .await
        .unwrap();
    let dir = ca.dir.path();
    let passes = [
        (
            "operator",
            op.join("cert.pem"),
            op.join("key.pem"),
            flags("exclude", &[CELL_OPERATIONS, COMPONENT_OPERATIONS].concat()),
        ),
        (
            "cell",
            file(dir, "cell.pem", &cell.chain_pem),
            file(dir, "cell-key.pem", &cell.key_pem),
            flags("include", CELL_OPERATIONS),
        ),
        (
            "component",
            file(dir, "component.pem", &component.certificate_chain),
            file(dir, "component-key.pem", &component_key),
            flags("include", COMPONENT_OPERATIONS),
        ),
    ];
    let (mut requests, mut cases, mut failures) = (0, 0, 0);
    let mut reports = String::new();
    for (name, cert, key, filter) in &passes {
        let token = join_token(&ca).await;
        let o = run(&ca, name, (cert, key), &token, filter);
        println!(
            "schemathesis as {name}: {} requests, {} test cases, {} failures (exit {})",
            o.requests, o.cases, o.failures, o.exit
        );
        requests += o.requests;
        cases += o.cases;
        failures += o.failures;
        if o.failures > 0 || o.exit != 0 {
            reports += &format!("--- as {name} ---\n{}\n", o.console);
        }
        assert!(
            o.requests > 0,
            "schemathesis sent nothing as {name}:\n{}",
            o.console
        );
    }
    println!("schemathesis in all: {requests} requests, {cases} test cases, {failures} failures");
    assert!(
        failures == 0 && reports.is_empty(),
        "schemathesis reports failures:\n{reports}"
    );
}
