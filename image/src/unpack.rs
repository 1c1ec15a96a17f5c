//! Unpacks a layer tar into a directory as an overlayfs lower layer.
//!
//! Every entry is created relative to a directory fd: parents are resolved
//! with `openat2(RESOLVE_BENEATH)`, so neither `..`, an absolute path, nor a
//! symlink (even one the layer itself just created) can make the kernel
//! step outside the layer dir; the final component is always created with
//! `*at` calls that do not follow it. Any attempt fails the whole layer.
//!
//! A layer is parsed while it downloads, before its digest is checked, so
//! even a digest-pinned image's mirror can send any bytes: what the unpack
//! may cost is bounded here. A [`Guard`] between the decompressor and the
//! tar reader refuses extension headers and sparse maps above fixed caps by
//! their declared size, before the tar crate reads them into memory, counts
//! the layer against [`Limits::max_size`], and stops when the pull is
//! cancelled.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{
    AtFlags, FileType, Mode, OFlags, RawMode, ResolveFlags, Timespec, Timestamps, XattrFlags,
};
use rustix::io::Errno;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const PAX_XATTR: &str = "SCHILY.xattr.";

/// The most a GNU long name or long link name may hold. Linux's PATH_MAX
/// is 4096; sixteen times that leaves room for any real path.
pub const MAX_LONG_NAME: u64 = 64 * 1024;
/// The most a PAX header may hold: Go's archive/tar (containerd's and
/// CRI-O's unpacker) caps it at 1 MiB too, so a layer they take passes
/// here. Room for many 64 KiB xattrs.
pub const MAX_PAX: u64 = 1024 * 1024;
/// The most slots a GNU sparse map may have (4 in the header, 21 in each
/// extension block). The tar crate takes segments off the front of a list,
/// so a map costs the square of its length; real sparse files have few.
pub const MAX_SPARSE_ENTRIES: u64 = 4096;
/// The default of [`Limits::max_size`].
pub const DEFAULT_MAX_LAYER_SIZE: u64 = 64 << 30;

const BLOCK: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer entry {path:?} would be written outside the layer dir ({why})")]
    Escape { path: String, why: &'static str },
    #[error("layer entry {path:?}: {source}")]
    Entry { path: String, source: io::Error },
    #[error("reading layer tar: {0}")]
    Read(#[source] io::Error),
    #[error("a {kind} header of {size} bytes is over the limit of {limit} bytes")]
    HeaderTooLarge {
        kind: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("sparse file {path:?} has a map of more than {limit} entries")]
    SparseMapTooLarge { path: String, limit: u64 },
    #[error(
        "the layer unpacks to more than the limit of {limit} bytes \
         (image.max_layer_size; the holes of sparse files count)"
    )]
    TooLarge { limit: u64 },
    #[error("the unpack was stopped: its pull was cancelled")]
    Cancelled,
}

impl UnpackError {
    /// The guard's and the copy's refusals travel through the tar crate as
    /// an `io::Error` carrying an `UnpackError`: unwrapped here, any other
    /// error is made into one by `other`.
    fn from_io(e: io::Error, other: impl FnOnce(io::Error) -> UnpackError) -> UnpackError {
        if e.get_ref().is_some_and(|inner| inner.is::<UnpackError>()) {
            let inner = e.into_inner().expect("checked above");
            *inner.downcast::<UnpackError>().expect("checked above")
        } else {
            other(e)
        }
    }

    fn read(e: io::Error) -> UnpackError {
        UnpackError::from_io(e, UnpackError::Read)
    }
}

/// What one unpack may cost, and its stop switch.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Bytes the decompressed layer may hold, the holes its sparse files
    /// declare included: the tar reader hands those out as zeros, so they
    /// cost time like data.
    pub max_size: u64,
    /// Set (from any thread) to stop the unpack at its next read or block
    /// written, with [`UnpackError::Cancelled`].
    pub cancel: Arc<AtomicBool>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_size: DEFAULT_MAX_LAYER_SIZE,
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Limits {
    fn check_cancelled(&self) -> Result<(), UnpackError> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(UnpackError::Cancelled);
        }
        Ok(())
    }
}

/// What was unpacked, measured on disk afterwards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub inodes: u64,
}

/// Unpacks the tar stream `reader` into the existing empty dir `dest`,
/// within `limits`, and reads `reader` to its end.
///
/// Long: one loop over the entries with every kind handled inline, so each
/// defence against a hostile layer (paths, links, sizes, whiteouts, cancel)
/// is seen where the entry is written.
pub fn unpack(reader: impl Read, dest: &Path, limits: &Limits) -> Result<(), UnpackError> {
    let root = rustix::fs::open(
        dest,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| UnpackError::Entry {
        path: dest.display().to_string(),
        source: e.into(),
    })?;
    let mut guard = Guard::new(reader, limits);
    let mut archive = tar::Archive::new(&mut guard);
    let mut block = vec![0u8; HOLE_BLOCK];
    // By path, so a layer repeating one dir entry costs no memory per copy.
    let mut dir_times: HashMap<PathBuf, i64> = HashMap::new();
    for entry in archive.entries().map_err(UnpackError::read)? {
        let mut entry = entry.map_err(UnpackError::read)?;
        limits.check_cancelled()?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let rel = clean(&raw).map_err(|why| UnpackError::Escape {
            path: shown.clone(),
            why,
        })?;
        let at = |source: io::Error| {
            UnpackError::from_io(source, |source| UnpackError::Entry {
                path: shown.clone(),
                source,
            })
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
            dir_times.insert(PathBuf::new(), header.mtime().unwrap_or(0) as i64);
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
                dir_times.insert(rel.clone(), mtime);
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
                copy_sparse(&mut entry, &mut file, &mut block, limits).map_err(at)?;
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
    // Trailing zero blocks after the end-of-archive marker count in the diff
    // ID, and in the layer's size.
    io::copy(archive.into_inner(), &mut io::sink()).map_err(UnpackError::read)?;
    // Directory mtimes last: creating entries inside a dir changes its mtime
    // (setting a dir's own times does not change its parent's).
    for (rel, mtime) in &dir_times {
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
/// A run of zero blocks costs one seek, or none if it ends the file.
fn copy_sparse(
    reader: &mut impl Read,
    file: &mut std::fs::File,
    block: &mut [u8],
    limits: &Limits,
) -> io::Result<()> {
    let mut len = 0u64;
    let mut in_hole = false;
    loop {
        // Holes never pass through the guard: check here too.
        limits.check_cancelled().map_err(io::Error::other)?;
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
            in_hole = true;
        } else {
            if in_hole {
                file.seek(io::SeekFrom::Start(len))?;
                in_hole = false;
            }
            file.write_all(&block[..filled])?;
        }
        len += filled as u64;
    }
    // A trailing hole is not even a seek: the length makes it part of the file.
    file.set_len(len)
}

/// Reads the tar's structure alongside the tar crate, header by header
/// (with the tar crate's own header parsing, so both find the same
/// headers), to refuse what the tar crate would otherwise read into memory
/// whole: long names, PAX headers and sparse maps, by their declared
/// sizes, before their content is read. Also counts the layer's size and
/// checks for cancellation at every read.
struct Guard<'a, R> {
    inner: R,
    limits: &'a Limits,
    /// Bytes read so far plus the holes declared by sparse headers.
    size: u64,
    state: Scan,
    block: [u8; BLOCK],
    filled: usize,
    /// The content of the PAX header that applies to the next entry, if
    /// `pax_pending`: it may override the entry's size.
    pax: Vec<u8>,
    pax_pending: bool,
}

enum Scan {
    /// Reading a header block.
    Header,
    /// Reading a sparse map's extension block: `slots` seen so far, then
    /// `data` bytes of the entry (padding included).
    SparseExt { path: String, slots: u64, data: u64 },
    /// Inside an entry: `left` bytes (padding included) before the next
    /// header, of which the first `keep` are a PAX header's, kept.
    Data { left: u64, keep: u64 },
    /// Past the end of the archive, or at a header the tar crate refuses:
    /// only counted.
    Done,
}

impl<'a, R: Read> Guard<'a, R> {
    fn new(inner: R, limits: &'a Limits) -> Self {
        Guard {
            inner,
            limits,
            size: 0,
            state: Scan::Header,
            block: [0; BLOCK],
            filled: 0,
            pax: Vec::new(),
            pax_pending: false,
        }
    }

    fn grow(&mut self, by: u64) -> Result<(), UnpackError> {
        self.size = self.size.saturating_add(by);
        if self.size > self.limits.max_size {
            return Err(UnpackError::TooLarge {
                limit: self.limits.max_size,
            });
        }
        Ok(())
    }

    fn scan(&mut self, mut bytes: &[u8]) -> Result<(), UnpackError> {
        while !bytes.is_empty() {
            match &mut self.state {
                Scan::Done => return Ok(()),
                Scan::Data { left, keep } => {
                    let n = (*left).min(bytes.len() as u64) as usize;
                    let kept = (*keep).min(n as u64) as usize;
                    self.pax.extend_from_slice(&bytes[..kept]);
                    *keep -= kept as u64;
                    *left -= n as u64;
                    if *left == 0 {
                        self.state = Scan::Header;
                    }
                    bytes = &bytes[n..];
                }
                Scan::Header | Scan::SparseExt { .. } => {
                    let n = (BLOCK - self.filled).min(bytes.len());
                    self.block[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
                    self.filled += n;
                    bytes = &bytes[n..];
                    if self.filled == BLOCK {
                        self.filled = 0;
                        self.state = match std::mem::replace(&mut self.state, Scan::Done) {
                            Scan::SparseExt { path, slots, data } => {
                                self.sparse_ext(path, slots, data)?
                            }
                            _ => self.header()?,
                        };
                    }
                }
            }
        }
        Ok(())
    }

    /// What follows the header in `block`; mirrors the tar crate's
    /// `next_entry` and `next_entry_raw`.
    fn header(&mut self) -> Result<Scan, UnpackError> {
        let block = self.block;
        if block.iter().all(|b| *b == 0) {
            return Ok(Scan::Done);
        }
        let header = tar::Header::from_byte_slice(&block);
        let sum = block[..148]
            .iter()
            .chain(&block[156..])
            .fold(8 * 32, |a, b| a + u32::from(*b));
        if header.cksum().ok() != Some(sum) {
            return Ok(Scan::Done);
        }
        let kind = header.entry_type();
        let recognized = header.as_gnu().is_some() || header.as_ustar().is_some();
        let long_name = kind.is_gnu_longname() || kind.is_gnu_longlink();
        let extension =
            long_name || kind.is_pax_local_extensions() || kind.is_pax_global_extensions();
        let pax_size = match (extension, self.pax_pending) {
            (false, true) => pax_size(&self.pax),
            _ => None,
        };
        let Some(size) = pax_size.or_else(|| header.entry_size().ok()) else {
            return Ok(Scan::Done);
        };
        let Some(padded) = size
            .checked_add(BLOCK as u64 - 1)
            .map(|s| s & !(BLOCK as u64 - 1))
        else {
            return Ok(Scan::Done);
        };
        let limit = |kind: &'static str, limit: u64| {
            if size > limit {
                return Err(UnpackError::HeaderTooLarge { kind, size, limit });
            }
            Ok(())
        };
        let data = |keep: u64| {
            if padded == 0 {
                Scan::Header
            } else {
                Scan::Data { left: padded, keep }
            }
        };
        // The tar crate reads these three whole, and keeps the PAX header
        // for the next entry that is none of them.
        if recognized && long_name {
            let name = if kind.is_gnu_longname() {
                "GNU long name"
            } else {
                "GNU long link name"
            };
            limit(name, MAX_LONG_NAME)?;
            return Ok(data(0));
        }
        if recognized && kind.is_pax_local_extensions() {
            limit("PAX", MAX_PAX)?;
            self.pax.clear();
            self.pax_pending = true;
            return Ok(data(size));
        }
        // Anything else the tar crate hands out as an entry.
        self.pax.clear();
        self.pax_pending = false;
        if kind.is_pax_global_extensions() {
            limit("PAX global", MAX_PAX)?;
        }
        if kind.is_gnu_sparse()
            && let Some(gnu) = header.as_gnu()
        {
            let Ok(real) = gnu.real_size() else {
                return Ok(Scan::Done);
            };
            self.grow(real.saturating_sub(size))?;
            if gnu.is_extended() {
                return Ok(Scan::SparseExt {
                    path: String::from_utf8_lossy(&header.path_bytes()).into_owned(),
                    slots: gnu.sparse.len() as u64,
                    data: padded,
                });
            }
        }
        Ok(data(0))
    }

    fn sparse_ext(&mut self, path: String, slots: u64, data: u64) -> Result<Scan, UnpackError> {
        let mut ext = tar::GnuExtSparseHeader::new();
        ext.as_mut_bytes().copy_from_slice(&self.block);
        let slots = slots + ext.sparse.len() as u64;
        if slots > MAX_SPARSE_ENTRIES {
            return Err(UnpackError::SparseMapTooLarge {
                path,
                limit: MAX_SPARSE_ENTRIES,
            });
        }
        Ok(match (ext.is_extended(), data) {
            (true, _) => Scan::SparseExt { path, slots, data },
            (false, 0) => Scan::Header,
            (false, left) => Scan::Data { left, keep: 0 },
        })
    }
}

impl<R: Read> Read for Guard<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.limits.check_cancelled().map_err(io::Error::other)?;
        let n = self.inner.read(buf)?;
        self.grow(n as u64)
            .and_then(|()| self.scan(&buf[..n]))
            .map_err(io::Error::other)?;
        Ok(n)
    }
}

/// The entry size a PAX header gives, as the tar crate reads it.
fn pax_size(pax: &[u8]) -> Option<u64> {
    for ext in tar::PaxExtensions::new(pax) {
        let ext = ext.ok()?;
        if ext.key() == Ok("size") {
            return ext.value().ok()?.parse().ok();
        }
    }
    None
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
pub(crate) mod tests {
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
        let err = unpack(&data[..], dest.path(), &Limits::default()).unwrap_err();
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
        let err = unpack(&data[..], dest.path(), &Limits::default()).unwrap_err();
        assert!(matches!(err, UnpackError::Escape { .. }), "{err}");
    }

    #[test]
    fn hardlink_escape_is_refused() {
        let dest = tempfile::tempdir().unwrap();
        let data = tar_of(&[("l", tar::EntryType::Link, "../../../../etc/hostname")]);
        assert!(matches!(
            unpack(&data[..], dest.path(), &Limits::default()).unwrap_err(),
            UnpackError::Escape { .. }
        ));
        let data = tar_of(&[
            ("s", tar::EntryType::Symlink, "/etc"),
            ("l", tar::EntryType::Link, "s/hostname"),
        ]);
        assert!(matches!(
            unpack(&data[..], dest.path(), &Limits::default()).unwrap_err(),
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
            let err = unpack(&data[..], dest.path(), &Limits::default()).unwrap_err();
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
            let err = unpack(&data[..], dest.path(), &Limits::default()).unwrap_err();
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
        let err = unpack(&data[..], dest.path(), &Limits::default()).unwrap_err();
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
        unpack(&data[..], dest.path(), &Limits::default()).unwrap();
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
        unpack(&data[..], dest.path(), &Limits::default()).unwrap();
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
        unpack(&data[..], dest.path(), &Limits::default()).unwrap();
        assert!(dest.path().join("usr/lib/x").is_file());
        assert!(dest.path().join("deep/er/file").is_file());
    }

    /// A header block of `kind` for `name` declaring `size` bytes.
    fn header(kind: tar::EntryType, name: &str, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_path(name).unwrap();
        h.set_mode(0o644);
        h.set_size(size);
        h.set_cksum();
        h
    }

    /// `prefix`, then `len` copies of `fill` made as they are read, counting
    /// every byte handed out in `read`.
    struct Lazy {
        prefix: Vec<u8>,
        at: usize,
        fill: u8,
        len: u64,
        read: Arc<std::sync::atomic::AtomicU64>,
    }

    impl Lazy {
        fn new(prefix: Vec<u8>, fill: u8, len: u64) -> Lazy {
            Lazy {
                prefix,
                at: 0,
                fill,
                len,
                read: Default::default(),
            }
        }
    }

    impl Read for Lazy {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = if self.at < self.prefix.len() {
                let n = buf.len().min(self.prefix.len() - self.at);
                buf[..n].copy_from_slice(&self.prefix[self.at..self.at + n]);
                self.at += n;
                n
            } else {
                let n = (buf.len() as u64).min(self.len) as usize;
                buf[..n].fill(self.fill);
                self.len -= n as u64;
                n
            };
            self.read.fetch_add(n as u64, Ordering::Relaxed);
            Ok(n)
        }
    }

    /// Runs `f` on a thread and fails if it takes longer than `secs`: on
    /// an unbounded unpack the test fails instead of hanging.
    fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(f()).unwrap());
        rx.recv_timeout(std::time::Duration::from_secs(secs))
            .unwrap_or_else(|_| panic!("still running after {secs}s"))
    }

    fn unpack_lazy(data: Lazy, limits: Limits) -> (Result<(), UnpackError>, u64) {
        let read = data.read.clone();
        let result = within(10, move || {
            let dest = tempfile::tempdir().unwrap();
            unpack(data, dest.path(), &limits)
        });
        (result, read.load(Ordering::Relaxed))
    }

    #[test]
    fn huge_gnu_long_names_are_refused_before_they_are_read() {
        for (kind, shown) in [
            (tar::EntryType::GNULongName, "GNU long name"),
            (tar::EntryType::GNULongLink, "GNU long link name"),
        ] {
            // 2 GiB declared, and there: the tar crate would buffer all of it.
            let data = Lazy::new(
                header(kind, "././@LongLink", 2 << 30).as_bytes().to_vec(),
                b'a',
                2 << 30,
            );
            let (result, read) = unpack_lazy(data, Limits::default());
            let err = result.unwrap_err();
            assert!(
                matches!(err, UnpackError::HeaderTooLarge { kind, size, limit }
                    if kind == shown && size == 2 << 30 && limit == MAX_LONG_NAME),
                "{err}"
            );
            assert!(read <= MAX_LONG_NAME, "{read} bytes read");
        }
    }

    #[test]
    fn huge_pax_headers_are_refused_before_they_are_read() {
        for (kind, shown) in [
            (tar::EntryType::XHeader, "PAX"),
            (tar::EntryType::XGlobalHeader, "PAX global"),
        ] {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(kind);
            h.set_path("pax").unwrap();
            h.set_size(2 << 30);
            h.set_cksum();
            let data = Lazy::new(h.as_bytes().to_vec(), b'a', 2 << 30);
            let (result, read) = unpack_lazy(data, Limits::default());
            let err = result.unwrap_err();
            assert!(
                matches!(err, UnpackError::HeaderTooLarge { kind, limit, .. }
                    if kind == shown && limit == MAX_PAX),
                "{err}"
            );
            assert!(read <= MAX_PAX, "{read} bytes read");
        }
    }

    #[test]
    fn headers_under_the_caps_and_pax_sizes_are_followed() {
        // A long name, a long link and a PAX header that sets the size of the
        // entry after it: the guard must find the same headers as the tar
        // crate, or the 4 KiB of data that looks like a header of 2 GiB
        // would be taken for one.
        let mut b = tar::Builder::new(Vec::new());
        let long = format!("dir/{}", "n".repeat(200));
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, "dir", io::empty()).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(3);
        b.append_data(&mut h, &long, &b"abc"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "link", format!("/{}", "t".repeat(300)))
            .unwrap();
        let fake = header(tar::EntryType::GNULongName, "fake", 2 << 30);
        let content = fake.as_bytes().repeat(8);
        b.append_pax_extensions([("size", content.len().to_string().as_bytes())])
            .unwrap();
        // The ustar size field says 0; PAX's 4096 wins, as in the tar crate.
        let mut h = header(tar::EntryType::Regular, "paxed", 0);
        b.append(&h, &content[..]).unwrap();
        h = header(tar::EntryType::Regular, "after", 1);
        b.append(&h, &b"z"[..]).unwrap();
        let data = b.into_inner().unwrap();
        let dest = tempfile::tempdir().unwrap();
        unpack(&data[..], dest.path(), &Limits::default()).unwrap();
        assert_eq!(std::fs::read(dest.path().join(&long)).unwrap(), b"abc");
        assert_eq!(std::fs::read(dest.path().join("paxed")).unwrap(), content);
        assert_eq!(std::fs::read(dest.path().join("after")).unwrap(), b"z");
        assert_eq!(
            std::fs::read_link(dest.path().join("link")).unwrap(),
            Path::new(&format!("/{}", "t".repeat(300)))
        );
    }

    /// A GNU sparse header for `name`: `real` bytes, one data segment of
    /// 512 bytes at its end, `ext` extension blocks of empty-length segments
    /// before it.
    pub(crate) fn sparse(name: &str, real: u64, ext: usize) -> Vec<u8> {
        let mut h = header(tar::EntryType::GNUSparse, name, 512);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.set_real_size(real);
        gnu.sparse[0].set_offset(real - 512);
        gnu.sparse[0].set_length(512);
        gnu.set_is_extended(ext > 0);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        for n in 0..ext {
            let mut e = tar::GnuExtSparseHeader::new();
            for slot in e.sparse.iter_mut() {
                slot.set_offset(real);
                slot.set_length(0);
            }
            e.set_is_extended(n + 1 < ext);
            out.extend_from_slice(e.as_bytes());
        }
        out.extend_from_slice(&[b'd'; 512]);
        out.extend_from_slice(&[0; 1024]);
        out
    }

    #[test]
    fn a_sparse_file_of_2_63_bytes_is_refused_at_its_header() {
        let data = Lazy::new(sparse("huge", 1 << 63, 0), 0, 0);
        let (result, _) = unpack_lazy(data, Limits::default());
        let err = result.unwrap_err();
        assert!(
            matches!(err, UnpackError::TooLarge { limit } if limit == DEFAULT_MAX_LAYER_SIZE),
            "{err}"
        );
    }

    #[test]
    fn a_sparse_map_of_too_many_entries_is_refused() {
        // 5000 extension blocks: 105004 slots, 2.5 MiB of map.
        let data = Lazy::new(sparse("many", 1 << 20, 5000), 0, 0);
        let (result, read) = unpack_lazy(data, Limits::default());
        let err = result.unwrap_err();
        assert!(
            matches!(&err, UnpackError::SparseMapTooLarge { path, limit }
                if path == "many" && *limit == MAX_SPARSE_ENTRIES),
            "{err}"
        );
        assert!(read < 512 * 300, "{read} bytes read");
        // Within the cap it unpacks, and sparse.
        let data = sparse("some", 1 << 30, 100);
        let dest = tempfile::tempdir().unwrap();
        unpack(&data[..], dest.path(), &Limits::default()).unwrap();
        let meta = std::fs::metadata(dest.path().join("some")).unwrap();
        assert_eq!(meta.len(), 1 << 30);
        assert!(std::os::unix::fs::MetadataExt::blocks(&meta) * 512 <= 64 * 1024);
    }

    #[test]
    fn a_layer_over_max_size_is_refused() {
        let limits = Limits {
            max_size: 1 << 20,
            ..Limits::default()
        };
        let too_large = |result: Result<(), UnpackError>| {
            let err = result.unwrap_err();
            assert!(
                matches!(err, UnpackError::TooLarge { limit } if limit == 1 << 20),
                "{err}"
            );
        };
        // File data, 1 TiB of it on offer.
        let data = Lazy::new(
            header(tar::EntryType::Regular, "big", 1 << 40)
                .as_bytes()
                .to_vec(),
            b'x',
            1 << 40,
        );
        let (result, read) = unpack_lazy(data, limits.clone());
        too_large(result);
        assert!(read <= (1 << 20) + HOLE_BLOCK as u64, "{read} bytes read");
        // Zeros after the end of the archive.
        let mut end = header(tar::EntryType::Regular, "small", 1)
            .as_bytes()
            .to_vec();
        end.extend_from_slice(&[b'y'; 512]);
        let (result, _) = unpack_lazy(Lazy::new(end, 0, 1 << 40), limits.clone());
        too_large(result);
        // The holes of a sparse file: 2 MiB of them in 3 KiB of tar.
        let data = Lazy::new(sparse("holes", 2 << 20, 0), 0, 0);
        let (result, _) = unpack_lazy(data, limits.clone());
        too_large(result);
        // Exactly at the limit is fine.
        let mut b = tar::Builder::new(Vec::new());
        let body = vec![b'z'; (1 << 20) - 1536];
        b.append(
            &header(tar::EntryType::Regular, "fits", body.len() as u64),
            &body[..],
        )
        .unwrap();
        let data = b.into_inner().unwrap();
        assert_eq!(data.len(), 1 << 20);
        let dest = tempfile::tempdir().unwrap();
        unpack(&data[..], dest.path(), &limits).unwrap();
    }

    #[test]
    fn cancelling_stops_the_unpack_within_a_read_or_a_block() {
        // One that reads on (1 TiB of file data), one that walks a hole (a
        // sparse file of 60 GiB, under the default cap).
        let endless = || {
            Lazy::new(
                header(tar::EntryType::Regular, "endless", 1 << 40)
                    .as_bytes()
                    .to_vec(),
                b'x',
                1 << 40,
            )
        };
        let hole = || Lazy::new(sparse("hole", 60 << 30, 0), 0, 0);
        for data in [endless(), hole()] {
            let limits = Limits::default();
            let cancel = limits.cancel.clone();
            let started = std::time::Instant::now();
            let running = std::thread::spawn(move || {
                let dest = tempfile::tempdir().unwrap();
                unpack(data, dest.path(), &limits)
            });
            std::thread::sleep(std::time::Duration::from_millis(200));
            assert!(!running.is_finished());
            cancel.store(true, Ordering::Relaxed);
            let result = within(5, move || running.join().unwrap());
            assert!(matches!(result, Err(UnpackError::Cancelled)), "{result:?}");
            assert!(started.elapsed() < std::time::Duration::from_secs(5));
        }
    }
}
