//! Atomic file replacement: a reader never sees half a file, and after a
//! durable write a crash at any instant leaves the old content or the new.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Whether the content must survive a crash of the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync the file before the rename and the directory after it:
    /// records, specs, exit files.
    Durable,
    /// Rename only: files that die with the run root at a reboot anyway.
    Volatile,
}

/// Writes `bytes` to `path` with `mode` through a temporary file in the same
/// directory, renamed over `path`. The directory must exist.
pub fn write(path: &Path, bytes: &[u8], mode: u32, durability: Durability) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let tmp = temporary_name(path)?;
    let result = (|| {
        // create_new: a stale file of that name must not lend us its mode.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        if durability == Durability::Durable {
            file.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if durability == Durability::Durable {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A durable [`write`] of a private file (0600): specs and records carry the
/// process env and the pod's config, its secrets included.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write(path, bytes, 0o600, Durability::Durable)
}

/// `.<name>.tmp<pid>-<n>`: unique among this process's concurrent writers,
/// and recognisable by [`is_temporary`] after a crash.
fn temporary_name(path: &Path) -> std::io::Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} has no file name", path.display())))?;
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(format!(
        ".tmp{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    Ok(path.with_file_name(tmp))
}

/// Whether `path` is a temporary file of [`write`]: one left in a directory
/// nothing is writing to is what a kill left half written. `.<name>.tmp<pid>`
/// is the name older versions used.
pub fn is_temporary(path: &Path) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix('.'))
        .and_then(|n| n.rsplit_once(".tmp"))
        .is_some_and(|(_, suffix)| match suffix.split_once('-') {
            Some((pid, n)) => digits(pid) && digits(n),
            None => digits(suffix),
        })
}

/// Removes the temporary files a crash left in `dir` (not below it) and
/// returns how many; a missing `dir` holds none.
pub fn remove_temporaries(dir: &Path) -> std::io::Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let path = entry?.path();
        if is_temporary(&path) {
            std::fs::remove_file(&path)?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn replaces_content_with_its_mode_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record.json");
        write_private(&path, b"one").unwrap();
        write(&path, b"two", 0o644, Durability::Volatile).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644 & !umask());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    fn umask() -> u32 {
        let probe = tempfile::tempdir().unwrap();
        let path = probe.path().join("probe");
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o777)
            .open(&path)
            .unwrap();
        !std::fs::metadata(&path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn concurrent_writers_of_one_path_do_not_collide() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.json");
        std::thread::scope(|s| {
            for n in 0..8u8 {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..50 {
                        write_private(path, &[n; 64]).unwrap();
                    }
                });
            }
        });
        let content = std::fs::read(&path).unwrap();
        assert!(
            content.iter().all(|b| *b == content[0]),
            "one writer's bytes"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn temporaries_are_recognised_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pod.json");
        let tmp = temporary_name(&path).unwrap();
        assert!(is_temporary(&tmp), "{}", tmp.display());
        std::fs::write(&tmp, "{\"half").unwrap();
        let old = dir.path().join(".pod.json.tmp4242");
        assert!(is_temporary(&old));
        std::fs::write(&old, "").unwrap();
        std::fs::write(&path, "{}").unwrap();
        for name in [
            "abc.json",
            ".abc.json.tmp",
            "abc.json.tmp12-1",
            ".x.tmpy-1",
            ".x.tmp1-",
        ] {
            assert!(!is_temporary(Path::new(name)), "{name}");
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        assert_eq!(remove_temporaries(dir.path()).unwrap(), 2);
        assert!(!tmp.exists() && !old.exists() && path.exists());
        assert_eq!(remove_temporaries(&dir.path().join("missing")).unwrap(), 0);
    }
}
