//! The container rootfs: an overlay of the image's layer dirs with a
//! per-container upper and work dir.
//!
//! In a pod with its own user namespace, the layer dirs enter the overlay
//! through id-mapped mounts of that namespace (as containerd's overlay
//! snapshotter does): the image's root-owned files show as the pod's root,
//! while the upper dir is plain, owned by the pod's host root uid, so what a
//! container writes lands there under its host ids (uid 0 in the pod is
//! the mapped host uid on disk). runc 1.1 cannot make id-mapped mounts;
//! berth makes them with `open_tree` + `mount_setattr` + `move_mount`.

use std::path::{Path, PathBuf};

use nix::libc;
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
    #[error("the user namespace maps no root (uid and gid 0) to own the rootfs")]
    Unmapped,
    #[error("id-mapped mount of {path} ({step}): {source}")]
    Idmap {
        path: PathBuf,
        step: &'static str,
        source: std::io::Error,
    },
}

/// `struct mount_attr` of mount_setattr(2) (`MOUNT_ATTR_SIZE_VER0`).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;

/// Attaches at `target` (an existing dir, or file for a file) a bind mount
/// of `source` (with its submounts when `recursive`) whose ids are mapped
/// through the user namespace `userns`; `nosuid_nodev` also sets those.
pub fn bind_idmapped(
    source: &Path,
    target: &Path,
    userns: &Path,
    recursive: bool,
    nosuid_nodev: bool,
) -> Result<(), OverlayError> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    let fail = |step: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| OverlayError::Idmap { path, step, source }
    };
    let cstr = |path: &Path| {
        std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| fail("path", path)(std::io::ErrorKind::InvalidInput.into()))
    };
    let userns_file = std::fs::File::open(userns).map_err(fail("open user namespace", userns))?;
    let (source_c, target_c) = (cstr(source)?, cstr(target)?);
    let at_recursive = if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: open_tree(2) with a valid path; the fd is owned right away.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            source_c.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | at_recursive as libc::c_uint,
        )
    };
    if tree < 0 {
        return Err(fail("open_tree", source)(std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh fd nobody else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as i32) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP
            | match nosuid_nodev {
                true => MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                false => 0,
            },
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns_file.as_raw_fd() as u64,
    };
    // SAFETY: mount_setattr(2) on our detached tree with a valid attr.
    let set = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | at_recursive,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if set != 0 {
        return Err(fail("mount_setattr MOUNT_ATTR_IDMAP", source)(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: move_mount(2) of our detached tree onto a valid path.
    let moved = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target_c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if moved != 0 {
        return Err(fail("move_mount", target)(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// [`mount`] with every lower dir id-mapped through `userns` (see the
/// module doc) and `upper` owned by `root` (the pod root's host uid and
/// gid). The id-mapped lowers are attached under `scratch` only while the
/// overlay is mounted: the overlay keeps its own private copies.
pub fn mount_idmapped(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
    scratch: &Path,
    userns: &Path,
    root: (u32, u32),
) -> Result<(), OverlayError> {
    std::fs::create_dir_all(upper).map_err(|source| OverlayError::Create {
        path: upper.to_path_buf(),
        source,
    })?;
    std::os::unix::fs::chown(upper, Some(root.0), Some(root.1)).map_err(|source| {
        OverlayError::Create {
            path: upper.to_path_buf(),
            source,
        }
    })?;
    let mut mapped = Vec::with_capacity(lowers.len());
    let result = (|| {
        for (i, lower) in lowers.iter().enumerate() {
            let dir = scratch.join(i.to_string());
            std::fs::create_dir_all(&dir).map_err(|source| OverlayError::Create {
                path: dir.clone(),
                source,
            })?;
            // Staged layers are nobody's root: nosuid,nodev, so a setuid
            // binary or device node of the image is inert through them.
            // The overlay over them is the container's root and stays
            // suid and dev: exec and device opens are checked against the
            // overlay's own mount, so in-container setuid keeps working.
            bind_idmapped(lower, &dir, userns, false, true)?;
            mapped.push(dir);
        }
        mount(&mapped, upper, work, target)
    })();
    for dir in &mapped {
        let _ = nix::mount::umount2(dir, MntFlags::MNT_DETACH);
    }
    let _ = std::fs::remove_dir_all(scratch);
    result
}

/// `lowerdir=` of `lowers`, topmost first.
fn lowerdir(lowers: &[PathBuf]) -> Result<String, OverlayError> {
    if lowers.is_empty() {
        return Err(OverlayError::NoLayers);
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
    Ok(lowerdir)
}

/// Mounts `lowers` (topmost first) read-only on `target`, made when
/// missing: an overlay without an upper dir, or, for one layer, a
/// read-only bind mount of it (older kernels want two lower dirs for an
/// overlay without an upper one). nosuid and nodev, as image volumes are.
pub fn mount_readonly(lowers: &[PathBuf], target: &Path) -> Result<(), OverlayError> {
    let lowerdir = lowerdir(lowers)?;
    std::fs::create_dir_all(target).map_err(|source| OverlayError::Create {
        path: target.to_path_buf(),
        source,
    })?;
    let err = |source| OverlayError::Mount {
        target: target.to_path_buf(),
        source,
    };
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if let [only] = lowers {
        nix::mount::mount(
            Some(only),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(err)?;
        return nix::mount::mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
            None::<&str>,
        )
        .map_err(err);
    }
    mount_overlay(target, flags, &format!("lowerdir={lowerdir}"))
}

/// The overlay mount itself, its options within the kernel's one page.
fn mount_overlay(target: &Path, flags: MsFlags, options: &str) -> Result<(), OverlayError> {
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
        flags,
        Some(options),
    )
    .map_err(|source| OverlayError::Mount {
        target: target.to_path_buf(),
        source,
    })
}

/// Mounts an overlay on `target`: `lowers` topmost first (the image's top
/// layer first), `upper` and `work` created when missing (same filesystem).
pub fn mount(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), OverlayError> {
    let lowerdir = lowerdir(lowers)?;
    for dir in [upper, work, target] {
        std::fs::create_dir_all(dir).map_err(|source| OverlayError::Create {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let options = format!(
        "lowerdir={lowerdir},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    mount_overlay(target, MsFlags::empty(), &options)
}

/// Unmounts every mount at or below `dir`, deepest first (the rootfs, and
/// id-mapped mounts a crash left staged): a dir still holding a mount must
/// never be removed recursively, as that would delete through the mount.
pub fn unmount_all_under(dir: &Path) -> Result<(), OverlayError> {
    let mounts = mounts_under(dir).map_err(|source| OverlayError::Create {
        path: "/proc/self/mountinfo".into(),
        source,
    })?;
    for target in mounts {
        unmount(&target)?;
    }
    Ok(())
}

/// The mount points at or below `dir` in this mount namespace, deepest
/// first, each once.
pub fn mounts_under(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mounts = berth_host::mountinfo::read()?;
    Ok(berth_host::mountinfo::mount_points_under(&mounts, dir))
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
