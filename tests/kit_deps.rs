//! The mTLS kit stands alone: an app that links `lanyard` with
//! `default-features = false, features = ["mtls"]` gets `lanyard::mtls` and none of the CA's
//! server, storage, CLI or HTTP client dependencies.
//!
//! Both tests run cargo itself on this crate's manifest, so they prove what an app's build
//! would see, not what this test binary happens to link.

use std::process::{Command, Output};

/// This crate's manifest.
const MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");

/// Crates only the full product may pull in. The first six are the heavy ones the kit is
/// promised to avoid; the others would mean an HTTP server, a logger or a config parser
/// slipped into it.
const SERVER_ONLY: &[&str] = &[
    "sled",
    "axum",
    "clap",
    "reqwest",
    "rcgen",
    "toml",
    "hyper",
    "hyper-util",
    "tower",
    "tracing-subscriber",
    "humantime",
    "utoipa",
    "tokio-postgres",
    "deadpool-postgres",
    "tonic",
    "prost",
    "h2",
];

/// Runs the cargo that runs this test with `args`; the lock file is complete, so offline.
fn cargo(args: &[&str]) -> Output {
    Command::new(env!("CARGO"))
        .args(args)
        .args(["--offline", "--manifest-path", MANIFEST])
        .output()
        .expect("cargo runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_kit_depends_on_none_of_the_server_crates() {
    let out = cargo(&[
        "tree",
        "-e",
        "normal",
        "--no-default-features",
        "--features",
        "mtls",
        "--prefix",
        "none",
    ]);
    assert!(
        out.status.success(),
        "cargo tree failed:\n{}",
        text(&out.stderr)
    );
    let tree = text(&out.stdout);
    // Each line is `name vX.Y.Z [(source)] [(*)]`.
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        crates.contains(&"rustls"),
        "the kit's tree should contain rustls; is this the right tree?\n{tree}"
    );
    let leaked: Vec<&&str> = SERVER_ONLY
        .iter()
        .filter(|name| crates.contains(name))
        .collect();
    assert!(
        leaked.is_empty(),
        "the mtls kit depends on {leaked:?}:\n{tree}"
    );
}

#[test]
fn the_kit_compiles_on_its_own_without_warnings() {
    // A target directory of its own: the kit's feature set would otherwise rebuild the
    // crate in the main one, and wait on the lock of a build running there.
    let target_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/target/kit");
    let out = cargo(&[
        "check",
        "--lib",
        "--no-default-features",
        "--features",
        "mtls",
        "--message-format",
        "short",
        "--target-dir",
        target_dir,
    ]);
    let stderr = text(&out.stderr);
    assert!(
        out.status.success(),
        "the kit does not compile alone:\n{stderr}"
    );
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("warning:")).collect();
    assert!(
        warnings.is_empty(),
        "the kit compiles alone only with warnings (code used only by the full crate?):\n{}",
        warnings.join("\n")
    );
}
