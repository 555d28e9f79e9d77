//! Binding a Unix socket at a path of any length.
//!
//! `sockaddr_un` holds at most 107 bytes of path. A longer path is bound through its directory:
//! the directory is opened and the socket bound at `/proc/self/fd/<fd>/<name>`, which the
//! kernel resolves through the open directory (no `chdir`, which is process-wide and would
//! race with every other thread).

use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// The longest path `bind` takes directly (the 108-byte `sun_path`, less its NUL).
pub(crate) const MAX_SOCKET_PATH: usize = 107;

/// A bound listener (and, for a long path, the directory it was bound through).
#[derive(Debug)]
pub(crate) struct Bound {
    /// The listener.
    pub(crate) listener: std::os::unix::net::UnixListener,
    /// The directory, held open for as long as the listener lives.
    _dir: Option<std::fs::File>,
}

/// Binds a listening socket at `dir/name` with permissions `mode`, replacing a stale socket
/// left there by an earlier run.
pub(crate) fn bind(dir: &Path, name: &str, mode: u32) -> std::io::Result<Bound> {
    use std::os::unix::fs::PermissionsExt;
    let full = dir.join(name);
    let (path, dir_file): (PathBuf, Option<std::fs::File>) =
        if full.as_os_str().len() <= MAX_SOCKET_PATH {
            (full, None)
        } else {
            let d = std::fs::File::open(dir)?;
            let p = PathBuf::from(format!("/proc/self/fd/{}/{name}", d.as_raw_fd()));
            (p, Some(d))
        };
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = std::os::unix::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    listener.set_nonblocking(true)?;
    Ok(Bound {
        listener,
        _dir: dir_file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_socket_binds_at_a_path_longer_than_sun_path_allows() {
        let d = tempfile::tempdir().unwrap();
        let deep = d.path().join("a".repeat(60)).join("b".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        assert!(deep.join("spiffe.sock").as_os_str().len() > MAX_SOCKET_PATH);
        let bound = bind(&deep, "spiffe.sock", 0o666).unwrap();
        let meta = std::fs::metadata(deep.join("spiffe.sock")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o666);
        use std::os::unix::fs::FileTypeExt;
        assert!(meta.file_type().is_socket());
        // A second bind replaces the stale socket.
        drop(bound);
        let _again = bind(&deep, "spiffe.sock", 0o666).unwrap();
    }
}
