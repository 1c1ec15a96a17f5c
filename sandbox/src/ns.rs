//! Pinned namespaces, as CRI-O's pinns makes them but without a helper
//! binary: a fresh thread unshares, configures the new namespaces from the
//! inside (hostname, sysctls, `lo` up) and bind-mounts its own
//! `/proc/thread-self/ns/*` onto files under the run root. The thread then
//! exits; the mounts keep the namespaces alive until they are unpinned.
//!
//! A fresh thread, never a pooled one: a thread that unshared is never
//! reused for anything else.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

#[derive(Debug, thiserror::Error)]
pub enum NsError {
    #[error("cannot create {what} namespace: {source}")]
    Unshare { what: String, source: nix::Error },
    #[error("cannot set hostname {hostname:?} in the pod's UTS namespace: {source}")]
    Hostname {
        hostname: String,
        source: nix::Error,
    },
    #[error("cannot set sysctl {key}={value} in the pod: {source}")]
    Sysctl {
        key: String,
        value: String,
        source: std::io::Error,
    },
    #[error("cannot bring up lo in the pod's network namespace: {0}")]
    Loopback(std::io::Error),
    #[error("cannot pin namespace at {path}: {source}")]
    Pin {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot unpin namespace at {path}: {source}")]
    Unpin { path: PathBuf, source: nix::Error },
    #[error("namespace thread failed: {0}")]
    Thread(String),
}

/// Which namespaces to create and where to pin them.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    /// Set inside the new UTS namespace.
    pub hostname: String,
    /// `/proc/sys` relative paths and values, applied from inside.
    pub sysctls: Vec<(String, String)>,
}

/// Creates and pins the requested namespaces. On error, whatever was pinned
/// stays pinned: the caller's teardown unpins every path.
pub fn create(request: Request) -> Result<(), NsError> {
    std::thread::Builder::new()
        .name("berth-pinns".into())
        .spawn(move || create_in_this_thread(&request))
        .map_err(|err| NsError::Thread(err.to_string()))?
        .join()
        .map_err(|_| NsError::Thread("panicked".into()))?
}

fn create_in_this_thread(request: &Request) -> Result<(), NsError> {
    let mut flags = CloneFlags::empty();
    let mut names = Vec::new();
    for (path, flag, name) in [
        (&request.net, CloneFlags::CLONE_NEWNET, "net"),
        (&request.ipc, CloneFlags::CLONE_NEWIPC, "ipc"),
        (&request.uts, CloneFlags::CLONE_NEWUTS, "uts"),
    ] {
        if path.is_some() {
            flags |= flag;
            names.push(name);
        }
    }
    if flags.is_empty() {
        return Ok(());
    }
    nix::sched::unshare(flags).map_err(|source| NsError::Unshare {
        what: names.join("+"),
        source,
    })?;
    if request.uts.is_some() {
        nix::unistd::sethostname(&request.hostname).map_err(|source| NsError::Hostname {
            hostname: request.hostname.clone(),
            source,
        })?;
    }
    if request.net.is_some() {
        loopback_up().map_err(NsError::Loopback)?;
    }
    // /proc/sys/{net,kernel/shm*,...} resolve against the opening thread's
    // namespaces, which are now the pod's.
    for (key, value) in &request.sysctls {
        std::fs::write(Path::new("/proc/sys").join(key), value).map_err(|source| {
            NsError::Sysctl {
                key: key.replace('/', "."),
                value: value.clone(),
                source,
            }
        })?;
    }
    for (path, name) in [
        (&request.net, "net"),
        (&request.ipc, "ipc"),
        (&request.uts, "uts"),
    ] {
        if let Some(path) = path {
            pin(Path::new("/proc/thread-self/ns").join(name).as_path(), path)?;
        }
    }
    Ok(())
}

/// Bind-mounts a namespace file (`/proc/<pid>/ns/<kind>`) onto `target`.
pub fn pin(source: &Path, target: &Path) -> Result<(), NsError> {
    let err = |source| NsError::Pin {
        path: target.to_path_buf(),
        source,
    };
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(target)
        .map_err(err)?;
    nix::mount::mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|errno| err(errno.into()))
}

/// Unmounts and removes a pin; a path that is not there (or not mounted)
/// is fine, so teardown can run any number of times.
pub fn unpin(path: &Path) -> Result<(), NsError> {
    match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(source) => {
            return Err(NsError::Unpin {
                path: path.to_path_buf(),
                source,
            });
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(NsError::Unpin {
            path: path.to_path_buf(),
            source: nix::Error::from_raw(err.raw_os_error().unwrap_or(0)),
        }),
    }
}

/// Sets IFF_UP on `lo` with two ioctls: no netlink socket, no fork.
fn loopback_up() -> std::io::Result<()> {
    use nix::libc;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: plain socket(2); the fd is owned right away.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh, valid fd nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write an ifreq we own.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
