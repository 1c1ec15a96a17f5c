//! The modes of berthd's state dirs, set at every start so a root made by
//! an older version (everything 0755) is tightened before anything runs.
//! See `berth_runtime::private` for what a host user could do otherwise.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use berth_runtime::private::{self, PRIVATE};

/// Traversal without listing: a user-namespaced container's root resolves
/// its rootfs, `<run_root>/containers/<id>/rootfs`, as a host user, so the
/// run root and its `containers/` must let it pass; each container's dir
/// then admits only that container's root (see `lifecycle`).
const TRAVERSE: u32 = 0o711;

#[derive(Debug, thiserror::Error)]
#[error("cannot make state directory {path} private: {source}")]
pub struct StateDirError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// Creates the roots and their subtrees with their modes, and tightens
/// every container's run dir and spec an older version left open.
pub fn secure(root: &Path, run_root: &Path) -> Result<(), StateDirError> {
    let dirs = [
        (root.to_path_buf(), TRAVERSE),
        (root.join("images"), PRIVATE),
        (root.join("containers"), PRIVATE),
        (root.join("pods"), PRIVATE),
        (root.join("logs"), PRIVATE),
        (root.join("cni"), PRIVATE),
        (run_root.to_path_buf(), TRAVERSE),
        (run_root.join("containers"), TRAVERSE),
        (run_root.join("pods"), PRIVATE),
        (run_root.join("ns"), PRIVATE),
        (run_root.join("runtimes"), PRIVATE),
    ];
    for (path, mode) in dirs {
        private::dir(&path, mode).map_err(|source| StateDirError { path, source })?;
    }
    let containers = run_root.join("containers");
    let entries = std::fs::read_dir(&containers).map_err(|source| StateDirError {
        path: containers.clone(),
        source,
    })?;
    for entry in entries.flatten() {
        let path = entry.path();
        let fail = |source| StateDirError {
            path: path.clone(),
            source,
        };
        let meta = std::fs::symlink_metadata(&path).map_err(fail)?;
        if !meta.is_dir() {
            continue;
        }
        // A dir owned by a pod's root is a user-namespaced container's.
        let mode = match meta.uid() {
            0 => PRIVATE,
            _ => berth_runtime::lifecycle::USERNS_RUN_DIR_MODE,
        };
        private::dir(&path, mode).map_err(fail)?;
        let spec = path.join("config.json");
        match std::fs::set_permissions(&spec, std::os::unix::fs::PermissionsExt::from_mode(0o600)) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(StateDirError {
                    path: spec,
                    source: err,
                });
            }
            _ => {}
        }
    }
    Ok(())
}
