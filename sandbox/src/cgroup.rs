//! The infra process's cgroup under the pod's cgroup parent (cgroupfs
//! driver; systemd's is a scope, see [`crate::systemd`]):
//! `<parent>/berth-<pod-id>` ([`berth_host::cgroup::infra_dir`]) in every mounted hierarchy, the v1
//! controllers and the v2 unified one alike, so it works on v1, hybrid and
//! pure v2 hosts.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot create cgroup {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot move infra process {pid} into cgroup {path}: {source}")]
    Attach {
        pid: i32,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot remove cgroup {path}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Mount points of every cgroup hierarchy (v1 and v2).
fn hierarchies() -> Vec<&'static Path> {
    berth_host::cgroup::Layout::host().hierarchies()
}

/// Creates `relative` in every hierarchy and moves `pid` into it.
pub fn attach(relative: &Path, pid: i32) -> Result<(), CgroupError> {
    for mount in hierarchies() {
        let path = mount.join(relative);
        create(mount, relative)?;
        std::fs::write(path.join("cgroup.procs"), pid.to_string()).map_err(|source| {
            CgroupError::Attach {
                pid,
                path: path.clone(),
                source,
            }
        })?;
    }
    Ok(())
}

/// mkdir -p below `mount`; a new v1 cpuset level starts empty and accepts
/// no process, so it inherits its parent's cpus and mems.
fn create(mount: &Path, relative: &Path) -> Result<(), CgroupError> {
    let mut path = mount.to_path_buf();
    for part in relative.components() {
        let parent = path.clone();
        path.push(part);
        if path.is_dir() {
            continue;
        }
        let err = |source| CgroupError::Create {
            path: path.clone(),
            source,
        };
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(err(e)),
        }
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let here = path.join(file);
            if here.exists() && std::fs::read_to_string(&here).is_ok_and(|v| v.trim().is_empty()) {
                let value = std::fs::read_to_string(parent.join(file)).map_err(err)?;
                std::fs::write(&here, value.trim()).map_err(err)?;
            }
        }
    }
    Ok(())
}

/// Removes `relative` from every hierarchy (the parent stays: it is the
/// kubelet's or shared by every pod). Missing is fine.
pub fn remove(relative: &Path) -> Vec<CgroupError> {
    let mut errors = Vec::new();
    for mount in hierarchies() {
        let path = mount.join(relative);
        // The kernel may still be unlinking the just-exited infra process.
        let mut attempts = 0;
        loop {
            match std::fs::remove_dir(&path) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) && attempts < 100 => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(source) => {
                    errors.push(CgroupError::Remove { path, source });
                    break;
                }
            }
        }
    }
    errors
}
