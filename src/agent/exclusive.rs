//! One agent per state directory and per socket: a second `lanyard agent` on the same state
//! or socket refuses to start, and never takes over (or deletes) the first one's socket.
//!
//! The state directory holds `agent.lock`, locked exclusively (an OS file lock, released by
//! the kernel when the process ends, however it ends) and holding the owner's pid for the
//! message. A Unix socket that still answers belongs to a live agent, whatever its state
//! directory; one that refuses connections is left over from a crash and is replaced.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use super::AgentError;

/// The lock on a state directory, held while the agent runs.
#[derive(Debug)]
pub(crate) struct StateLock {
    _file: File,
}

/// Locks `state_dir` for this process, or says which agent holds it.
pub(crate) fn lock_state_dir(state_dir: &Path) -> Result<StateLock, AgentError> {
    std::fs::create_dir_all(state_dir)
        .map_err(|e| AgentError::Runtime(format!("state_dir {}: {e}", state_dir.display())))?;
    let path = state_dir.join("agent.lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| AgentError::Runtime(format!("{}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut owner = String::new();
            let _ = file.read_to_string(&mut owner);
            let owner = match owner.trim() {
                "" => String::new(),
                pid => format!(" (pid {pid})"),
            };
            return Err(AgentError::Runtime(format!(
                "another lanyard agent{owner} is running with the state directory {}; stop it first, or give this agent its own state_dir and listen socket",
                state_dir.display()
            )));
        }
        Err(TryLockError::Error(e)) => {
            return Err(AgentError::Runtime(format!(
                "cannot lock {}: {e}",
                path.display()
            )))
        }
    }
    // Ours now: the pid is only for the other agent's message.
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = write!(file, "{}", std::process::id());
    let _ = file.flush();
    Ok(StateLock { _file: file })
}

/// Clears the way for binding `socket`: refuses when an agent answers on it, removes it when
/// it is a stale socket left by a crash, and refuses to remove anything that is not a socket.
pub(crate) fn claim_socket(socket: &Path) -> Result<(), AgentError> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(socket) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(AgentError::Config(format!(
            "listen: {} exists and is not a socket; refusing to replace it",
            socket.display()
        )));
    }
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        return Err(AgentError::Runtime(format!(
            "another process (a lanyard agent?) is listening on {}; stop it first, or give this agent its own listen socket",
            socket.display()
        )));
    }
    std::fs::remove_file(socket).map_err(|e| {
        AgentError::Runtime(format!(
            "removing the stale socket {}: {e}",
            socket.display()
        ))
    })
}

/// The identity (device, inode) of the socket file this process bound, so that on exit it
/// removes only its own socket, never one a later agent bound at the same path.
pub(crate) fn socket_identity(socket: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(socket)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Removes `socket` if it is still the one this process bound.
pub(crate) fn release_socket(socket: &PathBuf, bound: Option<(u64, u64)>) {
    if bound.is_some() && socket_identity(socket) == bound {
        let _ = std::fs::remove_file(socket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_state_dir_is_refused_with_the_owners_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_state_dir(dir.path()).unwrap();
        let e = lock_state_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("another lanyard agent"), "{e}");
        assert!(e.contains(&std::process::id().to_string()), "{e}");
        drop(first);
        lock_state_dir(dir.path()).unwrap();
    }

    #[test]
    fn a_live_socket_is_refused_and_a_stale_one_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        claim_socket(&path).unwrap();
        let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let e = claim_socket(&path).unwrap_err().to_string();
        assert!(e.contains("listening on"), "{e}");
        assert!(path.exists(), "the live socket stays");
        drop(live);
        claim_socket(&path).unwrap();
        assert!(!path.exists());
        std::fs::write(&path, "x").unwrap();
        assert!(claim_socket(&path).is_err());
    }
}
