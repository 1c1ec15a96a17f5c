//! Resolving a container's user against the image's `/etc/passwd` and
//! `/etc/group`, never following a symlink out of the rootfs (the kernel
//! resolves every path as if the rootfs were `/`: `openat2` with
//! `RESOLVE_IN_ROOT`).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// What the CRI request asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserRequest {
    /// CRI `run_as_user`: overrides the image's user.
    pub run_as_user: Option<u32>,
    /// CRI `run_as_username`: overrides the image's user.
    pub run_as_username: Option<String>,
    /// CRI `run_as_group`: overrides the primary group.
    pub run_as_group: Option<u32>,
    /// CRI `supplemental_groups`, added to the image's.
    pub supplemental_groups: Vec<u32>,
    /// CRI `supplemental_groups_policy` `Strict`: only the primary group and
    /// `supplemental_groups`, not the user's memberships in the image's
    /// `/etc/group` (`Merge`, the default).
    pub strict_supplemental_groups: bool,
}

/// The process identity for the OCI spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// From `/etc/passwd`, used for `HOME` when the image sets none.
    pub home: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("user {user:?} not found in the image's /etc/passwd")]
    UnknownUser { user: String },
    #[error("group {group:?} not found in the image's /etc/group")]
    UnknownGroup { group: String },
    #[error("read {path} in the rootfs {rootfs}: {source}")]
    Read {
        path: &'static str,
        rootfs: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} in the rootfs {rootfs} is not a regular file")]
    NotRegular { path: &'static str, rootfs: PathBuf },
    #[error("{path} in the rootfs {rootfs} is larger than {MAX_DB_SIZE} bytes")]
    TooLarge { path: &'static str, rootfs: PathBuf },
}

/// The most of `/etc/passwd` or `/etc/group` read; any sane image's is far
/// smaller.
const MAX_DB_SIZE: u64 = 4 << 20;

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Resolves the image config's `User` (`user`, `uid`, `user:group` or
/// `uid:gid`) and the CRI `request` against the rootfs at `rootfs`.
pub fn resolve(
    rootfs: &Path,
    image_user: &str,
    request: &UserRequest,
) -> Result<ResolvedUser, UserError> {
    let passwd = read_in_root(rootfs, "etc/passwd")?;
    let group = read_in_root(rootfs, "etc/group")?;
    let users: Vec<PasswdEntry> = passwd.as_deref().map(parse_passwd).unwrap_or_default();
    let groups: Vec<GroupEntry> = group.as_deref().map(parse_group).unwrap_or_default();

    let (image_user, image_group) = match image_user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (image_user, None),
    };
    // CRI fields win over the image's user, as in CRI-O.
    let user_spec: String = match (&request.run_as_username, request.run_as_user) {
        (Some(name), _) if !name.is_empty() => name.clone(),
        (_, Some(uid)) => uid.to_string(),
        _ if image_user.is_empty() => "0".to_string(),
        _ => image_user.to_string(),
    };
    let entry = match user_spec.parse::<u32>() {
        Ok(uid) => users.iter().find(|u| u.uid == uid),
        Err(_) => Some(users.iter().find(|u| u.name == user_spec).ok_or_else(|| {
            UserError::UnknownUser {
                user: user_spec.clone(),
            }
        })?),
    };
    let uid = match entry {
        Some(e) => e.uid,
        None => user_spec.parse().expect("checked numeric above"),
    };
    // The image's group goes with the image's user only.
    let image_user_used = request.run_as_user.is_none()
        && request.run_as_username.as_deref().is_none_or(str::is_empty);
    let gid = if let Some(gid) = request.run_as_group {
        gid
    } else if let Some(group) = image_group.filter(|g| !g.is_empty() && image_user_used) {
        match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                groups
                    .iter()
                    .find(|g| g.name == group)
                    .ok_or_else(|| UserError::UnknownGroup {
                        group: group.to_string(),
                    })?
                    .gid
            }
        }
    } else {
        entry.map_or(0, |e| e.gid)
    };
    // The primary group first, as the process's groups list holds it (as
    // containerd sets them): ContainerStatus.user then says what `id -G`
    // says, under either supplemental groups policy.
    let mut additional_gids = vec![gid];
    if let Some(entry) = entry.filter(|_| !request.strict_supplemental_groups) {
        for g in &groups {
            if g.members.contains(&entry.name) && !additional_gids.contains(&g.gid) {
                additional_gids.push(g.gid);
            }
        }
    }
    for gid in &request.supplemental_groups {
        if !additional_gids.contains(gid) {
            additional_gids.push(*gid);
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home: entry.map(|e| e.home.clone()),
    })
}

/// Reads `path` (relative) with every component resolved inside `rootfs`;
/// `None` when it does not exist. The image chooses what sits there, and we
/// read it as host root: only a regular file of bounded size is read, and
/// the open never blocks (a FIFO) nor reaches a device's driver.
fn read_in_root(rootfs: &Path, path: &'static str) -> Result<Option<String>, UserError> {
    let err = |source| UserError::Read {
        path,
        rootfs: rootfs.to_path_buf(),
        source,
    };
    let root = File::open(rootfs).map_err(err)?;
    // O_NONBLOCK: opening a FIFO without a writer must not hang.
    let flags = libc::O_RDONLY | libc::O_NONBLOCK;
    let mut file = match crate::in_root::open(&root, Path::new(path), flags) {
        Ok(fd) => File::from(fd),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e)),
    };
    let meta = file.metadata().map_err(err)?;
    if !meta.file_type().is_file() {
        return Err(UserError::NotRegular {
            path,
            rootfs: rootfs.to_path_buf(),
        });
    }
    let too_large = || UserError::TooLarge {
        path,
        rootfs: rootfs.to_path_buf(),
    };
    if meta.len() > MAX_DB_SIZE {
        return Err(too_large());
    }
    let mut text = String::new();
    // The cap holds even if the file grows after the fstat.
    (&mut file)
        .take(MAX_DB_SIZE + 1)
        .read_to_string(&mut text)
        .map_err(err)?;
    if text.len() as u64 > MAX_DB_SIZE {
        return Err(too_large());
    }
    Ok(Some(text))
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5).unwrap_or(&"").to_string(),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            Some(GroupEntry {
                name: f.first()?.to_string(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nalice:x:1000:\nwheel:x:10:alice,bob\nstaff:x:50:\n",
        )
        .unwrap();
        dir
    }

    fn image(root: &Path, image_user: &str) -> Result<ResolvedUser, UserError> {
        resolve(root, image_user, &UserRequest::default())
    }

    #[test]
    fn names_resolve_through_passwd_and_group() {
        let root = rootfs();
        let user = image(root.path(), "alice").unwrap();
        assert_eq!((user.uid, user.gid), (1000, 1000));
        assert_eq!(user.additional_gids, vec![1000, 10]);
        assert_eq!(user.home.as_deref(), Some("/home/alice"));
        let user = image(root.path(), "alice:staff").unwrap();
        assert_eq!((user.uid, user.gid), (1000, 50));
        let user = image(root.path(), "").unwrap();
        assert_eq!((user.uid, user.gid), (0, 0));
    }

    #[test]
    fn cri_fields_override_the_image() {
        let root = rootfs();
        let request = UserRequest {
            run_as_user: Some(0),
            run_as_group: Some(7),
            supplemental_groups: vec![99, 10],
            ..Default::default()
        };
        let user = resolve(root.path(), "alice", &request).unwrap();
        assert_eq!((user.uid, user.gid), (0, 7));
        assert_eq!(user.additional_gids, vec![7, 99, 10]);
        let request = UserRequest {
            run_as_username: Some("alice".into()),
            ..Default::default()
        };
        assert_eq!(resolve(root.path(), "alice", &request).unwrap().uid, 1000);
        // A numeric uid absent from passwd is used as is, with gid 0.
        let user = image(root.path(), "4242").unwrap();
        assert_eq!((user.uid, user.gid), (4242, 0));
    }

    #[test]
    fn strict_policy_leaves_out_image_memberships_and_run_as_user_drops_the_image_group() {
        let root = rootfs();
        let request = UserRequest {
            supplemental_groups: vec![99],
            strict_supplemental_groups: true,
            ..Default::default()
        };
        let user = resolve(root.path(), "alice", &request).unwrap();
        assert_eq!(user.additional_gids, vec![1000, 99]);
        let request = UserRequest {
            run_as_user: Some(1000),
            ..Default::default()
        };
        let user = resolve(root.path(), "0:staff", &request).unwrap();
        assert_eq!((user.uid, user.gid), (1000, 1000));
        let user = image(root.path(), "1000:10").unwrap();
        assert_eq!((user.uid, user.gid), (1000, 10));
    }

    #[test]
    fn unknown_names_are_errors() {
        let root = rootfs();
        assert!(matches!(
            image(root.path(), "mallory"),
            Err(UserError::UnknownUser { .. })
        ));
        assert!(matches!(
            image(root.path(), "alice:nogroup"),
            Err(UserError::UnknownGroup { .. })
        ));
    }

    #[test]
    fn symlinks_resolve_inside_the_rootfs_never_to_the_host() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("passwd"), "evil:x:0:0::/:/bin/sh\n").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        // An absolute link means the rootfs's own path, not the host's.
        std::os::unix::fs::symlink(
            outside.path().join("passwd"),
            root.path().join("etc/passwd"),
        )
        .unwrap();
        assert!(matches!(
            image(root.path(), "evil"),
            Err(UserError::UnknownUser { .. })
        ));
        std::os::unix::fs::symlink(
            "../../../../../../etc/shadow-nope",
            root.path().join("etc/group"),
        )
        .unwrap();
        assert!(image(root.path(), "0:0").is_ok());
    }

    /// Runs `resolve` on a thread, so a hang fails the test instead of
    /// stalling it.
    fn resolve_soon(root: &Path) -> Result<ResolvedUser, UserError> {
        let root = root.to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(image(&root, "0")));
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("resolve returns instead of blocking")
    }

    #[test]
    fn fifos_devices_and_huge_files_at_etc_passwd_are_refused() {
        use std::os::unix::fs::FileTypeExt;
        let root = rootfs();
        let passwd = root.path().join("etc/passwd");
        std::fs::remove_file(&passwd).unwrap();
        let c_path = std::ffi::CString::new(passwd.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo on a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
        assert!(std::fs::metadata(&passwd).unwrap().file_type().is_fifo());
        let err = resolve_soon(root.path()).unwrap_err();
        assert!(matches!(err, UserError::NotRegular { .. }), "{err}");
        assert!(err.to_string().contains("etc/passwd"), "{err}");
        std::fs::remove_file(&passwd).unwrap();

        // A device node an image ships: /dev/zero's numbers (1, 5), which
        // would read forever if it were opened and read. Needs root.
        // SAFETY: mknod on a NUL-terminated path.
        let made =
            unsafe { libc::mknod(c_path.as_ptr(), libc::S_IFCHR | 0o644, libc::makedev(1, 5)) }
                == 0;
        if made {
            let err = resolve_soon(root.path()).unwrap_err();
            // Where /tmp is mounted nodev the open itself is refused.
            assert!(
                matches!(err, UserError::NotRegular { .. } | UserError::Read { .. }),
                "{err}"
            );
            assert!(err.to_string().contains("etc/passwd"), "{err}");
            std::fs::remove_file(&passwd).unwrap();
        } else {
            eprintln!("skipping the device node case: mknod needs root");
        }

        let group = root.path().join("etc/group");
        let file = std::fs::File::options().write(true).open(&group).unwrap();
        file.set_len(MAX_DB_SIZE + 1).unwrap();
        let err = resolve_soon(root.path()).unwrap_err();
        assert!(matches!(err, UserError::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("etc/group"), "{err}");
    }
}
