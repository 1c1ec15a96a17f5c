//! Opening a path of an image or rootfs as the container would see it:
//! `openat2` with `RESOLVE_IN_ROOT`, so the kernel resolves every component
//! as if `root` were `/` (an absolute symlink or a `..` never leaves it).

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Opens `path` (relative; empty means `root` itself) below the open dir
/// `root` with open(2) `flags`; magic links (`/proc/<pid>/fd/...`) are
/// refused too.
pub fn open(root: &File, path: &Path, flags: libc::c_int) -> std::io::Result<OwnedFd> {
    let path = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // The kernel's struct open_how: flags, mode, resolve (libc's is non-exhaustive).
    let how: [u64; 3] = [
        (flags | libc::O_CLOEXEC) as u64,
        0,
        libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    ];
    // SAFETY: openat2 with a valid dirfd, NUL-terminated path and open_how.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c_path.as_ptr(),
            how.as_ptr(),
            std::mem::size_of_val(&how),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openat2 returned a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
