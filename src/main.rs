//! The `lanyard` binary; everything lives in the library (`lanyard::cli`).
#![forbid(unsafe_code)]

/// mimalloc instead of glibc's allocator: every request allocates and frees many small
/// objects (TLS records, JSON, X.509 structures, sled nodes) across threads, and with
/// mimalloc the server spends about a fifth less CPU per certificate (README, Performance).
/// Built without transparent huge pages (`no_thp`): with them an idle server held 68 MB
/// instead of 20.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(lanyard::cli::run());
}
