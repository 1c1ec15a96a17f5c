//! Unpacks a layer tar into a directory as an overlayfs lower layer.
//!
//! Every entry is created relative to a directory fd: parents are resolved
//! with `openat2(RESOLVE_BENEATH)`, so neither `..`, an absolute path, nor a
//! symlink (even one the layer itself just created) can make the kernel
//! step outside the layer dir; the final component is always created with
//! `*at` calls that do not follow it. Any attempt fails the whole layer.

use std::ffi::OsStr;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{
    AtFlags, FileType, Mode, OFlags, RawMode, ResolveFlags, Timespec, Timestamps, XattrFlags,
};
use rustix::io::Errno;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const PAX_XATTR: &str = "SCHILY.xattr.";

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer entry {path:?} would be written outside the layer dir ({why})")]
    Escape { path: String, why: &'static str },
    #[error("layer entry {path:?}: {source}")]
    Entry { path: String, source: io::Error },
    #[error("reading layer tar: {0}")]
    Read(#[source] io::Error),
}

/// What was unpacked, measured on disk afterwards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub inodes: u64,
}

/// Unpacks the tar stream `reader` into the existing empty dir `dest`.
pub fn unpack(reader: impl Read, dest: &Path) -> Result<(), UnpackError> {
    let root = rustix::fs::open(
        dest,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| UnpackError::Entry {
        path: dest.display().to_string(),
        source: e.into(),
    })?;
    let mut archive = tar::Archive::new(reader);
    let mut block = vec![0u8; HOLE_BLOCK];
    let mut dir_times: Vec<(PathBuf, i64)> = Vec::new();
    for entry in archive.entries().map_err(UnpackError::Read)? {
        let mut entry = entry.map_err(UnpackError::Read)?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let rel = clean(&raw).map_err(|why| UnpackError::Escape {
            path: shown.clone(),
            why,
        })?;
        let at = |source: io::Error| UnpackError::Entry {
            path: shown.clone(),
            source,
        };
        let escape = |e: Errno| -> UnpackError {
            if e == Errno::XDEV || e == Errno::LOOP {
                UnpackError::Escape {
                    path: shown.clone(),
                    why: "resolves through a symlink",
                }
            } else {
                at(e.into())
            }
        };
        let Some(rel) = rel else {
            // The layer root itself ("./"): keep its owner, mode and mtime.
            let header = entry.header();
            set_owner_mode(&root, header).map_err(at)?;
            dir_times.push((PathBuf::new(), header.mtime().unwrap_or(0) as i64));
            continue;
        };
        let (parent_rel, name) = split(&rel);
        let parent = open_parent(&root, parent_rel).map_err(escape)?;
        let header = entry.header().clone();
        let mtime = header.mtime().unwrap_or(0) as i64;

        if name.as_bytes() == OPAQUE.as_bytes() {
            rustix::fs::fsetxattr(&parent, OPAQUE_XATTR, b"y", XattrFlags::empty())
                .map_err(|e| at(e.into()))?;
            continue;
        }
        if let Some(hidden) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            let hidden = OsStr::from_bytes(hidden);
            // overlayfs whiteout: a 0:0 character device with the hidden name.
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(UnpackError::Escape {
                    path: shown,
                    why: "whiteout of an invalid name",
                });
            }
            remove_existing(&parent, hidden).map_err(at)?;
            rustix::fs::mknodat(
                &parent,
                hidden,
                FileType::CharacterDevice,
                Mode::empty(),
                rustix::fs::makedev(0, 0),
            )
            .map_err(|e| at(e.into()))?;
            continue;
        }

        let kind = header.entry_type();
        let mode = Mode::from_raw_mode((header.mode().unwrap_or(0o644) & 0o7777) as RawMode);
        match kind {
            tar::EntryType::Directory => {
                let dir = match rustix::fs::openat(
                    &parent,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                ) {
                    Ok(dir) => dir,
                    Err(_) => {
                        remove_existing(&parent, name).map_err(at)?;
                        rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o700))
                            .map_err(|e| at(e.into()))?;
                        rustix::fs::openat(
                            &parent,
                            name,
                            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                            Mode::empty(),
                        )
                        .map_err(|e| at(e.into()))?
                    }
                };
                set_owner_mode(&dir, &header).map_err(at)?;
                set_xattrs(&dir, &mut entry).map_err(at)?;
                dir_times.push((rel.clone(), mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                remove_existing(&parent, name).map_err(at)?;
                let fd = rustix::fs::openat(
                    &parent,
                    name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| at(e.into()))?;
                let mut file = std::fs::File::from(fd);
                copy_sparse(&mut entry, &mut file, &mut block).map_err(at)?;
                set_owner_mode(&file, &header).map_err(at)?;
                set_xattrs(&file, &mut entry).map_err(at)?;
                rustix::fs::futimens(&file, &times(mtime)).map_err(|e| at(e.into()))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| at(io::Error::other("symlink without a target")))?
                    .into_owned();
                remove_existing(&parent, name).map_err(at)?;
                rustix::fs::symlinkat(OsStr::from_bytes(&target), &parent, name)
                    .map_err(|e| at(e.into()))?;
                chown_at(&parent, name, &header).map_err(at)?;
                rustix::fs::utimensat(&parent, name, &times(mtime), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| at(e.into()))?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| at(io::Error::other("hardlink without a target")))?
                    .into_owned();
                let target_rel = clean(&target)
                    .and_then(|t| t.ok_or("links to the layer root"))
                    .map_err(|why| UnpackError::Escape {
                        path: shown.clone(),
                        why,
                    })?;
                let (tparent_rel, tname) = split(&target_rel);
                let tparent = open_parent(&root, tparent_rel).map_err(escape)?;
                remove_existing(&parent, name).map_err(at)?;
                // Flags 0: link the target entry itself, never what it points to.
                rustix::fs::linkat(&tparent, tname, &parent, name, AtFlags::empty())
                    .map_err(|e| at(e.into()))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let file_type = match kind {
                    tar::EntryType::Char => FileType::CharacterDevice,
                    tar::EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let dev = rustix::fs::makedev(
                    header.device_major().ok().flatten().unwrap_or(0),
                    header.device_minor().ok().flatten().unwrap_or(0),
                );
                remove_existing(&parent, name).map_err(at)?;
                rustix::fs::mknodat(&parent, name, file_type, mode, dev)
                    .map_err(|e| at(e.into()))?;
                chown_at(&parent, name, &header).map_err(at)?;
                rustix::fs::chmodat(&parent, name, mode, AtFlags::empty())
                    .map_err(|e| at(e.into()))?;
                rustix::fs::utimensat(&parent, name, &times(mtime), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| at(e.into()))?;
            }
            // PAX and GNU long-name headers are consumed by the tar reader;
            // anything else carries no file.
            _ => {}
        }
    }
    // Directory mtimes last: creating entries inside a dir changes its mtime.
    for (rel, mtime) in dir_times.iter().rev() {
        let dir = if rel.as_os_str().is_empty() {
            rustix::io::dup(&root)
        } else {
            open_beneath(&root, rel, OFlags::RDONLY | OFlags::DIRECTORY)
        };
        if let Ok(dir) = dir {
            let _ = rustix::fs::futimens(&dir, &times(*mtime));
        }
    }
    Ok(())
}

/// The granularity of holes [`copy_sparse`] leaves.
const HOLE_BLOCK: usize = 64 * 1024;
static ZEROS: [u8; HOLE_BLOCK] = [0; HOLE_BLOCK];

/// Copies a file's content, leaving every all-zero block as a hole: a
/// sparse entry (whose holes the tar reader hands out as zeros) or a
/// zero-filled one takes only the disk space of its data, so a 10 GB
/// sparse file in a layer cannot fill the disk. Slice equality is memcmp.
fn copy_sparse(
    reader: &mut impl Read,
    file: &mut std::fs::File,
    block: &mut [u8],
) -> io::Result<()> {
    let mut len = 0u64;
    loop {
        let mut filled = 0;
        while filled < block.len() {
            match reader.read(&mut block[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            break;
        }
        if block[..filled] == ZEROS[..filled] {
            file.seek(io::SeekFrom::Current(filled as i64))?;
        } else {
            file.write_all(&block[..filled])?;
        }
        len += filled as u64;
    }
    // A trailing hole is only a seek: the length makes it part of the file.
    file.set_len(len)
}

/// Measures a layer dir: bytes allocated and inodes, each hardlinked inode once.
pub fn usage(dir: &Path) -> io::Result<Usage> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut usage = Usage::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert(meta.ino()) {
            continue;
        }
        usage.inodes += 1;
        usage.bytes += meta.blocks() * 512;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(usage)
}

/// Normalises a tar path to components under the layer root. `Ok(None)` is
/// the root itself. `..` and absolute paths are refused outright: layer
/// builders never emit them, so they only appear in attacks.
fn clean(raw: &[u8]) -> Result<Option<PathBuf>, &'static str> {
    if raw.starts_with(b"/") {
        return Err("absolute path");
    }
    let mut out = PathBuf::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("'..' component"),
            part => out.push(OsStr::from_bytes(part)),
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

fn split(rel: &Path) -> (&Path, &OsStr) {
    let parent = rel.parent().unwrap_or(Path::new(""));
    (parent, rel.file_name().unwrap_or_default())
}

fn open_beneath(root: &OwnedFd, rel: &Path, flags: OFlags) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat2(
        root,
        rel,
        flags | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    )
}

/// Opens (creating missing dirs, as tar does) the parent dir of an entry.
fn open_parent(root: &OwnedFd, rel: &Path) -> Result<OwnedFd, Errno> {
    if rel.as_os_str().is_empty() {
        return rustix::io::dup(root);
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY;
    match open_beneath(root, rel, flags) {
        Err(Errno::NOENT) => {}
        other => return other,
    }
    let mut cur = rustix::io::dup(root)?;
    for part in rel.components() {
        let next = match rustix::fs::openat2(
            &cur,
            part.as_os_str(),
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        ) {
            Err(Errno::NOENT) => {
                rustix::fs::mkdirat(&cur, part.as_os_str(), Mode::from_raw_mode(0o755))?;
                open_beneath(&cur, Path::new(part.as_os_str()), flags)?
            }
            other => other?,
        };
        cur = next;
    }
    // The per-component walk is only for creating; the final answer must
    // also resolve beneath the root as a whole.
    open_beneath(root, rel, flags)
}

/// Removes whatever `name` is, so a later layer entry replaces it.
fn remove_existing(parent: &OwnedFd, name: &OsStr) -> io::Result<()> {
    match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
            remove_tree(parent, name)
        }
        Ok(_) => rustix::fs::unlinkat(parent, name, AtFlags::empty()).map_err(Into::into),
    }
}

fn remove_tree(parent: &OwnedFd, name: &OsStr) -> io::Result<()> {
    let dir = rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(&dir)? {
        let entry = entry?;
        let n = entry.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push((OsStr::from_bytes(n).to_owned(), entry.file_type()));
        }
    }
    for (n, t) in names {
        if t == FileType::Directory {
            remove_tree(&dir, &n)?;
        } else {
            rustix::fs::unlinkat(&dir, &n, AtFlags::empty())?;
        }
    }
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR).map_err(Into::into)
}

fn owner(header: &tar::Header) -> (rustix::fs::Uid, rustix::fs::Gid) {
    let uid = header.uid().unwrap_or(0) as u32;
    let gid = header.gid().unwrap_or(0) as u32;
    (
        rustix::fs::Uid::from_raw(uid),
        rustix::fs::Gid::from_raw(gid),
    )
}

/// Owner before mode: chown clears the setuid and setgid bits.
fn set_owner_mode(fd: impl AsFd, header: &tar::Header) -> io::Result<()> {
    let (uid, gid) = owner(header);
    rustix::fs::fchown(&fd, Some(uid), Some(gid))?;
    let mode = (header.mode().unwrap_or(0o644) & 0o7777) as RawMode;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
    Ok(())
}

fn chown_at(parent: &OwnedFd, name: &OsStr, header: &tar::Header) -> io::Result<()> {
    let (uid, gid) = owner(header);
    rustix::fs::chownat(
        parent,
        name,
        Some(uid),
        Some(gid),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(Into::into)
}

/// The xattrs an image may set: its own `user.*` ones and file
/// capabilities. Never `trusted.*` (an image's `trusted.overlay.*` would
/// forge whiteouts, opaque dirs or redirects in the container's overlay)
/// nor other `security.*` labels, which belong to the host's policy.
fn xattr_allowed(name: &str) -> bool {
    name.starts_with("user.") || name == "security.capability"
}

fn set_xattrs<R: Read>(fd: impl AsFd, entry: &mut tar::Entry<'_, R>) -> io::Result<()> {
    let Some(exts) = entry.pax_extensions()? else {
        return Ok(());
    };
    for ext in exts {
        let ext = ext?;
        let Ok(key) = ext.key() else { continue };
        if let Some(name) = key.strip_prefix(PAX_XATTR)
            && xattr_allowed(name)
        {
            rustix::fs::fsetxattr(&fd, name, ext.value_bytes(), XattrFlags::empty())?;
        }
    }
    Ok(())
}

fn times(mtime: i64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_refuses_escapes() {
        assert_eq!(clean(b"./a/b/").unwrap(), Some(PathBuf::from("a/b")));
        assert_eq!(clean(b"./").unwrap(), None);
        assert!(clean(b"a/../../b").is_err());
        assert!(clean(b"/etc/passwd").is_err());
    }

    fn tar_of(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o755);
            h.set_size(0);
            // set_path refuses '..'; write the raw name like an attacker would.
            let name = &mut h.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            if !link.is_empty() {
                h.set_link_name(link).unwrap();
            }
            h.set_cksum();
            b.append(&h, &[][..]).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn symlink_escape_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        let dest = tempfile::tempdir().unwrap();
        let link = outside.path().display().to_string();
        let data = tar_of(&[
            ("esc", tar::EntryType::Symlink, &link),
            ("esc/pwned", tar::EntryType::Regular, ""),
        ]);
        let err = unpack(&data[..], dest.path()).unwrap_err();
        assert!(matches!(err, UnpackError::Escape { .. }), "{err}");
        assert!(!outside.path().join("pwned").exists());
    }

    #[test]
    fn relative_symlink_escape_is_refused() {
        let dest = tempfile::tempdir().unwrap();
        let data = tar_of(&[
            ("a", tar::EntryType::Directory, ""),
            ("a/up", tar::EntryType::Symlink, "../../.."),
            ("a/up/x", tar::EntryType::Directory, ""),
        ]);
        let err = unpack(&data[..], dest.path()).unwrap_err();
        assert!(matches!(err, UnpackError::Escape { .. }), "{err}");
    }

    #[test]
    fn hardlink_escape_is_refused() {
        let dest = tempfile::tempdir().unwrap();
        let data = tar_of(&[("l", tar::EntryType::Link, "../../../../etc/hostname")]);
        assert!(matches!(
            unpack(&data[..], dest.path()).unwrap_err(),
            UnpackError::Escape { .. }
        ));
        let data = tar_of(&[
            ("s", tar::EntryType::Symlink, "/etc"),
            ("l", tar::EntryType::Link, "s/hostname"),
        ]);
        assert!(matches!(
            unpack(&data[..], dest.path()).unwrap_err(),
            UnpackError::Escape { .. }
        ));
    }

    #[test]
    fn whiteouts_cannot_name_dot_dot_or_reach_outside() {
        for bad in [".wh..", ".wh...", "a/.wh..", "a/.wh..."] {
            let dest = tempfile::tempdir().unwrap();
            let data = tar_of(&[
                ("a", tar::EntryType::Directory, ""),
                (bad, tar::EntryType::Regular, ""),
            ]);
            let err = unpack(&data[..], dest.path()).unwrap_err();
            assert!(matches!(err, UnpackError::Escape { .. }), "{bad}: {err}");
            assert!(dest.path().join("a").is_dir(), "{bad}");
        }
        // A whiteout or an opaque marker under a symlink to the host would
        // delete a host file or mark a host dir: refused, the host intact.
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("passwd"), "host\n").unwrap();
        let link = outside.path().display().to_string();
        for marker in ["esc/.wh.passwd", "esc/.wh..wh..opq"] {
            let dest = tempfile::tempdir().unwrap();
            let data = tar_of(&[
                ("esc", tar::EntryType::Symlink, &link),
                (marker, tar::EntryType::Regular, ""),
            ]);
            let err = unpack(&data[..], dest.path()).unwrap_err();
            assert!(matches!(err, UnpackError::Escape { .. }), "{marker}: {err}");
            assert_eq!(
                std::fs::read_to_string(outside.path().join("passwd")).unwrap(),
                "host\n"
            );
            assert!(
                rustix::fs::getxattr(outside.path(), OPAQUE_XATTR, &mut [0u8; 8]).is_err(),
                "{marker}"
            );
        }
        // The same through a relative link climbing out.
        let dest = tempfile::tempdir().unwrap();
        let data = tar_of(&[
            ("up", tar::EntryType::Symlink, "../../../../../../../.."),
            ("up/etc/.wh.passwd", tar::EntryType::Regular, ""),
        ]);
        let err = unpack(&data[..], dest.path()).unwrap_err();
        assert!(matches!(err, UnpackError::Escape { .. }), "{err}");
        assert!(Path::new("/etc/passwd").is_file());
    }

    #[test]
    fn absolute_symlinks_are_kept_verbatim_and_never_followed_here() {
        // `etc/passwd -> /etc/passwd` is a link into the container's own
        // root once it runs; unpacking stores it without following it, and
        // a later entry replaces the link, not the host file.
        let dest = tempfile::tempdir().unwrap();
        let data = tar_of(&[
            ("etc", tar::EntryType::Directory, ""),
            ("etc/passwd", tar::EntryType::Symlink, "/etc/passwd"),
            ("etc/passwd", tar::EntryType::Regular, ""),
            ("etc/shadow", tar::EntryType::Symlink, "/etc/shadow"),
        ]);
        let before = std::fs::read("/etc/passwd").unwrap();
        unpack(&data[..], dest.path()).unwrap();
        assert_eq!(std::fs::read("/etc/passwd").unwrap(), before);
        let passwd = std::fs::symlink_metadata(dest.path().join("etc/passwd")).unwrap();
        assert!(passwd.is_file() && passwd.len() == 0);
        assert_eq!(
            std::fs::read_link(dest.path().join("etc/shadow")).unwrap(),
            Path::new("/etc/shadow")
        );
    }

    #[test]
    fn only_user_xattrs_and_file_capabilities_are_kept() {
        let mut builder = tar::Builder::new(Vec::new());
        builder
            .append_pax_extensions([
                ("SCHILY.xattr.user.note", &b"kept"[..]),
                ("SCHILY.xattr.trusted.overlay.opaque", &b"y"[..]),
                ("SCHILY.xattr.trusted.overlay.redirect", &b"/etc"[..]),
                ("SCHILY.xattr.trusted.other", &b"x"[..]),
            ])
            .unwrap();
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        builder
            .append_data(&mut header, "forged", std::io::empty())
            .unwrap();
        let data = builder.into_inner().unwrap();
        let dest = tempfile::tempdir().unwrap();
        unpack(&data[..], dest.path()).unwrap();
        let dir = dest.path().join("forged");
        let mut buf = [0u8; 16];
        let n = rustix::fs::getxattr(&dir, "user.note", &mut buf).unwrap();
        assert_eq!(&buf[..n], b"kept");
        for name in [
            "trusted.overlay.opaque",
            "trusted.overlay.redirect",
            "trusted.other",
        ] {
            assert!(
                rustix::fs::getxattr(&dir, name, &mut buf).is_err(),
                "{name} was set"
            );
        }
        assert!(xattr_allowed("security.capability"));
        assert!(!xattr_allowed("security.selinux"));
    }

    #[test]
    fn inner_symlinks_and_missing_parents_work() {
        let dest = tempfile::tempdir().unwrap();
        let data = tar_of(&[
            ("usr/lib", tar::EntryType::Directory, ""),
            ("lib", tar::EntryType::Symlink, "usr/lib"),
            ("lib/x", tar::EntryType::Regular, ""),
            ("deep/er/file", tar::EntryType::Regular, ""),
        ]);
        unpack(&data[..], dest.path()).unwrap();
        assert!(dest.path().join("usr/lib/x").is_file());
        assert!(dest.path().join("deep/er/file").is_file());
    }
}
