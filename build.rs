//! Generates the SPIFFE Workload API's gRPC code (agent, `full` feature only) from
//! `proto/spiffe/workload/workload.proto` with protox, a protobuf compiler written in Rust, so
//! a build needs no system `protoc`. The `mtls` kit alone generates nothing.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "full")]
    workload_api();
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
