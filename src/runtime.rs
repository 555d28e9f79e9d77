//! What every long-running command (`serve`, `agent`, `console`) shares: the listening
//! socket, the stop signals and the line that tells a supervisor (or a test) where the server
//! listens.

use std::io::Write;

/// Connections the kernel queues for `accept` (capped by `net.core.somaxconn`).
///
/// Not the standard library's 128: when a cell restarts, its executor PUTs every instance
/// to the agent at once, and after a CA restart every agent reconnects at once. Past a full
/// queue the kernel drops the handshakes, and each dropped client waits a whole second
/// before it tries again (seen with 128: of 250 PUTs sent to an agent at once, 200 were
/// accepted within 50 ms and the other 50 one second later).
pub(crate) const LISTEN_BACKLOG: u32 = 4096;

/// Binds a TCP listener on `addr` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as the
/// standard library's bind sets it, so a restarted server can bind at once).
pub(crate) fn listen_tcp(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

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
