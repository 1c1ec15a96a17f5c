//! Host-side preparation of a container's bind mounts, as CRI-O does at
//! create time: a missing host path becomes a directory, a symlink is
//! followed (the CRI asks for the link's target to be mounted), and the
//! host mount holding a path with propagation is made shared if it is not.

use std::os::fd::AsRawFd;
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
    #[error("image volume {image}: {source}")]
    Image {
        image: String,
        source: crate::overlay::OverlayError,
    },
    #[error("mounts[{index}].image_sub_path: {sub_path:?} of image {image} {reason}")]
    SubPath {
        index: usize,
        image: String,
        sub_path: PathBuf,
        reason: String,
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

/// Mounts each image volume's image read-only at `dir/<n>` and points the
/// mount at it, or at its sub-path resolved inside it (symlinks as the
/// image means them, never out of it). runc binds the staged copy, which
/// the caller detaches once the container is created.
pub fn stage_images(mounts: &mut [BindMount], dir: &Path) -> Result<(), MountError> {
    for (i, m) in mounts.iter_mut().enumerate() {
        let Some(volume) = &m.image else {
            continue;
        };
        let root = dir.join(i.to_string());
        crate::overlay::mount_readonly(&volume.layers, &root).map_err(|source| {
            MountError::Image {
                image: volume.image.clone(),
                source,
            }
        })?;
        m.host_path =
            resolve_in_root(&root, &volume.sub_path).map_err(|reason| MountError::SubPath {
                index: i,
                image: volume.image.clone(),
                sub_path: volume.sub_path.clone(),
                reason,
            })?;
    }
    Ok(())
}

/// `sub` below `root` as the image resolves it (the kernel's
/// `RESOLVE_IN_ROOT`: symlinks followed as if `root` were `/`, never out of
/// it); it must exist.
fn resolve_in_root(root: &Path, sub: &Path) -> Result<PathBuf, String> {
    let root = std::fs::File::open(root).map_err(|e| e.to_string())?;
    let fd = crate::in_root::open(&root, sub, libc::O_PATH).map_err(|e| {
        match (e.kind(), e.raw_os_error()) {
            (std::io::ErrorKind::NotFound, _) => "does not exist in the image".to_string(),
            (_, Some(libc::ELOOP)) => "too many levels of symbolic links".to_string(),
            _ => e.to_string(),
        }
    })?;
    // Where it led, as a path runc can bind: the O_PATH descriptor's target.
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(|e| e.to_string())
}

/// Resolves and prepares `mounts` in place (image volumes are staged by
/// [`stage_images`]).
pub fn prepare(mounts: &mut [BindMount]) -> Result<(), MountError> {
    for m in mounts.iter_mut().filter(|m| m.image.is_none()) {
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
    fn image_sub_paths_resolve_inside_the_image_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("usr/share/data")).unwrap();
        std::fs::create_dir_all(dir.path().join("outside")).unwrap();
        std::os::unix::fs::symlink("/usr/share", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("usr/share/up")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        let resolve = |sub: &str| resolve_in_root(&root, Path::new(sub));
        assert_eq!(resolve("usr/share/data"), Ok(root.join("usr/share/data")));
        assert_eq!(resolve(""), Ok(root.clone()));
        // An absolute link means the image's root, not the host's.
        assert_eq!(resolve("abs/data"), Ok(root.join("usr/share/data")));
        // `..` and links up stop at the image's root.
        assert_eq!(
            resolve("../../outside"),
            Err("does not exist in the image".into())
        );
        assert_eq!(
            resolve("usr/share/up/up/outside"),
            Err("does not exist in the image".into())
        );
        assert_eq!(resolve("usr/share/up"), Ok(root.clone()));
        assert_eq!(
            resolve("missing"),
            Err("does not exist in the image".into())
        );
        assert_eq!(
            resolve("loop"),
            Err("too many levels of symbolic links".into())
        );
    }

    #[test]
    fn host_paths_are_created_and_symlinks_followed() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        let mut mounts = vec![
            BindMount {
                image: None,
                container_path: "/a".into(),
                host_path: dir.path().join("link"),
                readonly: false,
                recursive_readonly: false,
                propagation: Propagation::Private,
            },
            BindMount {
                image: None,
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
