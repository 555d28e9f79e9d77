//! A directory whose files are replaced together, atomically, Kubernetes atomic-writer style.
//!
//! ```text
//! <dir>/..2026_11_26_01_02_03.123456789_1a2b3c4d/{cert.pem,key.pem,...}
//! <dir>/..data -> ..2026_11_26_01_02_03.123456789_1a2b3c4d
//! <dir>/cert.pem -> ..data/cert.pem      (one link per file)
//! ```
//!
//! A new version is written into a fresh directory and synced, then `..data` is switched by a
//! rename, which is atomic. The agent writes every instance's credentials this way, so no
//! app ever reads a half-written set.

use std::path::{Path, PathBuf};

const DATA_LINK: &str = "..data";

/// One file of a set: name (may include one subdirectory, `certs/ca.pem`), content, mode.
pub(crate) type SetFile<'a> = (&'a str, &'a [u8], u32);

fn version_name() -> String {
    let now = time::OffsetDateTime::now_utc();
    let mut r = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut r);
    format!(
        "..{:04}_{:02}_{:02}_{:02}_{:02}_{:02}.{:09}_{}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.nanosecond(),
        hex::encode(r)
    )
}

/// Writes a new version of the set and switches to it atomically. Returns the previous
/// version directory; the caller removes it once readers are done with it.
pub(crate) fn write_set(dir: &Path, files: &[SetFile<'_>]) -> std::io::Result<Option<PathBuf>> {
    let new_dir = !dir.exists();
    std::fs::create_dir_all(dir)?;
    let version = version_name();
    let vdir = dir.join(&version);
    std::fs::create_dir(&vdir)?;
    // Every directory holding a new file is synced, not only the version directory: a file in
    // a subdirectory (`system-certs/`) is durable only once that subdirectory's entry is.
    let mut dirs = vec![vdir.clone()];
    for (name, data, mode) in files {
        let path = vdir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
            // The parent and every directory between it and the version directory.
            for d in parent.ancestors().take_while(|d| *d != vdir) {
                if !dirs.iter().any(|known| known == d) {
                    dirs.push(d.to_path_buf());
                }
            }
        }
        crate::fsutil::write_new_file(&path, data, *mode)?;
    }
    // Deepest first, so each directory is synced after the entries inside it.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in &dirs {
        std::fs::File::open(d)?.sync_all()?;
    }

    let data = dir.join(DATA_LINK);
    let old = std::fs::read_link(&data).ok().map(|t| dir.join(t));
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&version, &tmp)?;
    std::fs::rename(&tmp, &data)?;
    // One link per top-level entry: a file, or a subdirectory such as `system-certs`.
    let mut tops: Vec<&str> = files
        .iter()
        .map(|(name, _, _)| name.split('/').next().unwrap_or(name))
        .collect();
    tops.dedup();
    for name in tops {
        let link = dir.join(name);
        let target = format!("{DATA_LINK}/{name}");
        if std::fs::read_link(&link).ok().as_deref() != Some(Path::new(&target)) {
            let tmp = dir.join(format!(".{name}.tmp"));
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(&target, &tmp)?;
            std::fs::rename(&tmp, &link)?;
        }
    }
    std::fs::File::open(dir)?.sync_all()?;
    if new_dir {
        // A first set: the set's directory itself must be in its parent durably too.
        crate::fsutil::sync_parent(dir)?;
    }
    Ok(old.filter(|o| o != &vdir))
}

/// Removes version directories other than the current one (left by earlier writes or a
/// crash).
pub(crate) fn remove_stale_versions(dir: &Path) {
    let current = std::fs::read_link(dir.join(DATA_LINK)).ok();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let n = name.to_string_lossy();
        if n.starts_with("..") && n != DATA_LINK && current.as_deref() != Some(Path::new(&*n)) {
            let _ = if e.path().is_dir() {
                std::fs::remove_dir_all(e.path())
            } else {
                std::fs::remove_file(e.path())
            };
        }
    }
}

/// Reads one file of the current version.
pub(crate) fn read(dir: &Path, name: &str) -> std::io::Result<String> {
    std::fs::read_to_string(dir.join(DATA_LINK).join(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_new_set_replaces_the_old_one_through_the_data_link() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("i1");
        let set = |c: &'static str| {
            vec![
                ("a.pem", c.as_bytes(), 0o644),
                ("k.pem", c.as_bytes(), 0o600),
            ]
        };
        assert!(write_set(&dir, &set("one")).unwrap().is_none());
        let old = write_set(&dir, &set("two")).unwrap().unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("a.pem")).unwrap(), "two");
        assert_eq!(std::fs::read_to_string(dir.join("k.pem")).unwrap(), "two");
        assert!(old.exists());
        let mode = std::fs::metadata(dir.join("k.pem"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        remove_stale_versions(&dir);
        assert!(!old.exists());
        assert_eq!(read(&dir, "a.pem").unwrap(), "two");
    }

    #[test]
    fn plain_files_from_before_are_replaced_by_links() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.pem"), "plain").unwrap();
        write_set(d.path(), &[("a.pem", b"new", 0o644)]).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("a.pem")).unwrap(),
            "new"
        );
    }
}
