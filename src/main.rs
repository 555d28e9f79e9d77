//! The `lanyard` binary; everything lives in the library (`lanyard::cli`).
#![forbid(unsafe_code)]

fn main() {
    std::process::exit(lanyard::cli::run());
}
