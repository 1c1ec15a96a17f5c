//! The container rootfs: an overlay of the image's layer dirs with a
//! per-container upper and work dir.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("an overlay needs at least one lower dir")]
    NoLayers,
    #[error("overlay options for {target} are {len} bytes, over the kernel's page-sized limit")]
    TooLong { target: PathBuf, len: usize },
    #[error("a lower dir path contains ':' or ',': {0}")]
    BadPath(PathBuf),
    #[error("create {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mount overlay on {target}: {source}")]
    Mount { target: PathBuf, source: nix::Error },
    #[error("unmount {target}: {source}")]
    Unmount { target: PathBuf, source: nix::Error },
}

/// Mounts an overlay on `target`: `lowers` topmost first (the image's top
/// layer first), `upper` and `work` created when missing (same filesystem).
pub fn mount(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), OverlayError> {
    if lowers.is_empty() {
        return Err(OverlayError::NoLayers);
    }
    for dir in [upper, work, target] {
        std::fs::create_dir_all(dir).map_err(|source| OverlayError::Create {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let mut lowerdir = String::new();
    for (i, lower) in lowers.iter().enumerate() {
        let s = lower.to_string_lossy();
        if s.contains([':', ',']) {
            return Err(OverlayError::BadPath(lower.clone()));
        }
        if i > 0 {
            lowerdir.push(':');
        }
        lowerdir.push_str(&s);
    }
    let options = format!(
        "lowerdir={lowerdir},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    if options.len() >= 4096 {
        return Err(OverlayError::TooLong {
            target: target.to_path_buf(),
            len: options.len(),
        });
    }
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|source| OverlayError::Mount {
        target: target.to_path_buf(),
        source,
    })
}

/// Unmounts `target`; nothing mounted there (or no `target`) is success.
pub fn unmount(target: &Path) -> Result<(), OverlayError> {
    match nix::mount::umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL | nix::Error::ENOENT) => Ok(()),
        Err(source) => Err(OverlayError::Unmount {
            target: target.to_path_buf(),
            source,
        }),
    }
}
