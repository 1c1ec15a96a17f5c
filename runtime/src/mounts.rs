//! Host-side preparation of a container's bind mounts, as CRI-O does at
//! create time: a missing host path becomes a directory, a symlink is
//! followed (the CRI asks for the link's target to be mounted), and the
//! host mount holding a path with propagation is made shared if it is not.

use std::path::{Path, PathBuf};

use berth_host::mountinfo;
use nix::mount::MsFlags;

use crate::spec::{BindMount, Propagation};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mount host path {path}: {source}")]
    HostPath {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("read /proc/self/mountinfo: {0}")]
    MountInfo(std::io::Error),
    #[error("no mount holds {0}")]
    NoMount(PathBuf),
    #[error("mount host path {path} in the pod's user namespace: {source}")]
    Idmap {
        path: PathBuf,
        source: crate::overlay::OverlayError,
    },
    #[error("make {mount_point} (holding {path}) a shared mount for its propagation: {source}")]
    MakeShared {
        path: PathBuf,
        mount_point: PathBuf,
        source: nix::Error,
    },
}

/// For a container in a pod's user namespace: stages under `dir` an
/// id-mapped copy of each (prepared) host path, with its submounts, and
/// points the mount at it, so files keep their host owners inside the pod
/// (host uid 0 is the pod's root). runc binds the staged copy, which the
/// caller detaches once the container is created. Propagation needs the
/// host's own mount and is refused before this (`cri_spec`).
pub fn idmap(mounts: &mut [BindMount], dir: &Path, userns: &Path) -> Result<(), MountError> {
    for (i, m) in mounts.iter_mut().enumerate() {
        let err = |source| MountError::HostPath {
            path: m.host_path.clone(),
            source,
        };
        let staged = dir.join(i.to_string());
        std::fs::create_dir_all(dir).map_err(err)?;
        if std::fs::metadata(&m.host_path).map_err(err)?.is_dir() {
            std::fs::create_dir(&staged).map_err(err)?;
        } else {
            std::fs::File::create(&staged).map_err(err)?;
        }
        // runc binds the staged copy with its flags: nosuid or nodev here
        // would change the volume the container asked for.
        crate::overlay::bind_idmapped(&m.host_path, &staged, userns, true, false).map_err(
            |source| MountError::Idmap {
                path: m.host_path.clone(),
                source,
            },
        )?;
        m.host_path = staged;
    }
    Ok(())
}

/// Resolves and prepares `mounts` in place.
pub fn prepare(mounts: &mut [BindMount]) -> Result<(), MountError> {
    for m in mounts.iter_mut() {
        let err = |source| MountError::HostPath {
            path: m.host_path.clone(),
            source,
        };
        match std::fs::metadata(&m.host_path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&m.host_path).map_err(err)?;
            }
            Err(e) => return Err(err(e)),
            Ok(_) => {}
        }
        m.host_path = std::fs::canonicalize(&m.host_path).map_err(err)?;
        if m.propagation == Propagation::Private {
            continue;
        }
        let mounts = mountinfo::read().map_err(MountError::MountInfo)?;
        let holding = mountinfo::holding(&mounts, &m.host_path)
            .ok_or_else(|| MountError::NoMount(m.host_path.clone()))?;
        let (mount_point, shared, slave) = (
            &holding.mount_point,
            holding.is_shared(),
            holding.is_slave(),
        );
        // rshared needs a shared host mount; rslave a shared or slave one.
        let ok = shared || (slave && m.propagation == Propagation::HostToContainer);
        if !ok {
            nix::mount::mount(
                None::<&str>,
                mount_point,
                None::<&str>,
                MsFlags::MS_SHARED,
                None::<&str>,
            )
            .map_err(|source| MountError::MakeShared {
                path: m.host_path.clone(),
                mount_point: mount_point.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_are_created_and_symlinks_followed() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        let mut mounts = vec![
            BindMount {
                container_path: "/a".into(),
                host_path: dir.path().join("link"),
                readonly: false,
                recursive_readonly: false,
                propagation: Propagation::Private,
            },
            BindMount {
                container_path: "/b".into(),
                host_path: dir.path().join("new/dir"),
                readonly: false,
                recursive_readonly: false,
                propagation: Propagation::Private,
            },
        ];
        prepare(&mut mounts).unwrap();
        assert_eq!(mounts[0].host_path, real.canonicalize().unwrap());
        assert!(dir.path().join("new/dir").is_dir());
    }
}
