//! Build script, one function per job: `git_revision` stamps the revision that `--version`
//! prints; `workload_api` generates the SPIFFE Workload API's gRPC code (agent, `full` feature
//! only) from `proto/spiffe/workload/workload.proto` with protox, a protobuf compiler written
//! in Rust, so a build needs no system `protoc`. The `mtls` kit alone generates nothing.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    git_revision();
    #[cfg(feature = "full")]
    workload_api();
}

/// `BUILD_GIT_REVISION`: the short commit hash of the checkout being built, for
/// `lanyard --version`; "unknown" outside a git checkout or without git (a crate tarball).
/// Cargo runs this again when HEAD moves (a commit, a checkout) so the revision stays true.
fn git_revision() {
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let revision = run(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=BUILD_GIT_REVISION={revision}");
    // HEAD names the branch; the branch's ref file (or packed-refs) moves on a commit. In a
    // worktree these live in the worktree's own git dir and the common dir respectively. Only
    // files that exist are named: cargo reruns the script on every build for a missing one.
    let git_path = |p: &str| run(&["rev-parse", "--path-format=absolute", "--git-path", p]);
    let reference = run(&["symbolic-ref", "-q", "HEAD"]);
    let watched = [
        git_path("HEAD"),
        reference.as_deref().and_then(git_path),
        git_path("packed-refs"),
    ];
    for path in watched.into_iter().flatten() {
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}

#[cfg(feature = "full")]
fn workload_api() {
    println!("cargo:rerun-if-changed=proto");
    let fds = match protox::compile(["spiffe/workload/workload.proto"], ["proto"]) {
        Ok(f) => f,
        Err(e) => panic!("proto/spiffe/workload/workload.proto: {e}"),
    };
    if let Err(e) = tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .compile_fds(fds)
    {
        panic!("generating the Workload API code: {e}");
    }
}
