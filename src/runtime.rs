//! What every long-running command (`serve`, `agent`) shares: the stop signals and the line
//! that tells a supervisor (or a test) where the server listens.

use std::io::Write;

/// Completes on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            // Without a SIGTERM handler, Ctrl-C still stops the process.
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Prints `listening on <url>` as one line on stdout and flushes it, after the socket is
/// bound: with `127.0.0.1:0` only the bound address tells callers where to connect. A closed
/// stdout is not a reason to stop serving, so write errors are ignored.
pub(crate) fn announce_listening(url: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on {url}");
    let _ = out.flush();
}
