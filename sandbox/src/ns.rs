//! Pinned namespaces, as CRI-O's pinns makes them but without a helper
//! binary: a fresh thread unshares, configures the new namespaces from the
//! inside (hostname, sysctls, `lo` up) and bind-mounts its own
//! `/proc/thread-self/ns/*` onto files under the run root. The thread then
//! exits; the mounts keep the namespaces alive until they are unpinned.
//!
//! A fresh thread, never a pooled one: a thread that unshared is never
//! reused for anything else.
//!
//! A pod in its own user namespace is different: a thread of a
//! multithreaded process cannot unshare or join a user namespace. A forked
//! helper process is cloned into a new user namespace together with the new
//! network, IPC and UTS namespaces (the kernel makes the user namespace
//! first, so it owns the others); berthd writes its uid and gid maps, the
//! helper becomes the namespace's root and configures the namespaces as
//! that root, and berthd pins all four from `/proc/<helper>/ns/*` before
//! killing the helper.

use std::path::{Path, PathBuf};

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::libc;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use crate::spec::IdMapping;

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
    #[error("cannot start the user namespace helper: {0}")]
    Helper(std::io::Error),
    #[error("cannot write {file} of the pod's user namespace: {source}")]
    Map {
        file: &'static str,
        source: std::io::Error,
    },
    #[error("cannot become root of the pod's user namespace: {0}")]
    BecomeRoot(std::io::Error),
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
    /// A new user namespace owning the others (mode `POD`).
    pub user: Option<UserRequest>,
}

/// A pod's own user namespace: where to pin it and its mappings.
#[derive(Debug, Clone)]
pub struct UserRequest {
    pub pin: PathBuf,
    pub uids: Vec<IdMapping>,
    pub gids: Vec<IdMapping>,
}

/// Creates and pins the requested namespaces. On error, whatever was pinned
/// stays pinned: the caller's teardown unpins every path.
pub fn create(request: Request) -> Result<(), NsError> {
    if let Some(user) = &request.user {
        return create_in_user_namespace(&request, user);
    }
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

/// The helper's report (8 bytes): the failed step (0: none), the index of
/// the failed sysctl (u16 at 2..4) and errno (i32 at 4..8).
const STEP_ROOT: u8 = 1;
const STEP_HOSTNAME: u8 = 2;
const STEP_LOOPBACK: u8 = 3;
const STEP_SYSCTL: u8 = 4;

fn pipe() -> Result<(OwnedFd, OwnedFd), NsError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds that are owned right away.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(NsError::Helper(std::io::Error::last_os_error()));
    }
    // SAFETY: fresh fds nobody else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The map file's text: one `container host length` line per mapping.
fn map_text(maps: &[IdMapping]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.container_id, m.host_id, m.length))
        .collect()
}

/// See the module doc: a helper process in new user + other namespaces.
fn create_in_user_namespace(request: &Request, user: &UserRequest) -> Result<(), NsError> {
    let mut flags = CloneFlags::CLONE_NEWUSER;
    for (path, flag) in [
        (&request.net, CloneFlags::CLONE_NEWNET),
        (&request.ipc, CloneFlags::CLONE_NEWIPC),
        (&request.uts, CloneFlags::CLONE_NEWUTS),
    ] {
        if path.is_some() {
            flags |= flag;
        }
    }
    // Everything the helper touches is built here: after clone(2) in a
    // threaded process the child must not allocate.
    let hostname = request.hostname.as_bytes().to_vec();
    let set_hostname = request.uts.is_some();
    let loopback = request.net.is_some();
    let sysctls: Vec<(CString, Vec<u8>)> = request
        .sysctls
        .iter()
        .map(|(key, value)| {
            let path = Path::new("/proc/sys").join(key);
            let path = CString::new(path.as_os_str().as_bytes())
                .map_err(|_| NsError::Helper(std::io::ErrorKind::InvalidInput.into()))?;
            Ok((path, value.as_bytes().to_vec()))
        })
        .collect::<Result<_, NsError>>()?;
    let (go_r, go_w) = pipe()?;
    let (report_r, report_w) = pipe()?;
    let (go_r_raw, report_w_raw) = (go_r.as_raw_fd(), report_w.as_raw_fd());
    let parent = std::process::id() as libc::pid_t;
    let mut stack = vec![0u8; 64 * 1024];
    let child = Box::new(|| -> isize {
        // SAFETY: only async-signal-safe calls on data prepared above.
        unsafe {
            // Never outlive berthd (killed mid-way): nothing else would
            // end the pause below.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 || libc::getppid() != parent
            {
                libc::_exit(1);
            }
            let report = |step: u8, index: usize| -> isize {
                let errno = *libc::__errno_location();
                let mut msg = [step, 0, 0, 0, 0, 0, 0, 0];
                msg[2..4].copy_from_slice(&(index as u16).to_ne_bytes());
                msg[4..].copy_from_slice(&errno.to_ne_bytes());
                libc::write(report_w_raw, msg.as_ptr().cast(), msg.len());
                libc::_exit(1)
            };
            // Wait until berthd wrote the maps (EOF: it gave up).
            let mut byte = 0u8;
            if libc::read(go_r_raw, (&mut byte as *mut u8).cast(), 1) != 1 {
                libc::_exit(1);
            }
            if !become_root() {
                return report(STEP_ROOT, 0);
            }
            if set_hostname && libc::sethostname(hostname.as_ptr().cast(), hostname.len()) != 0 {
                return report(STEP_HOSTNAME, 0);
            }
            if loopback && loopback_up().is_err() {
                return report(STEP_LOOPBACK, 0);
            }
            for (i, (path, value)) in sysctls.iter().enumerate() {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return report(STEP_SYSCTL, i);
                }
                let written = libc::write(fd, value.as_ptr().cast(), value.len());
                if written != value.len() as isize {
                    return report(STEP_SYSCTL, i);
                }
                libc::close(fd);
            }
            let done = [0u8; 8];
            libc::write(report_w_raw, done.as_ptr().cast(), done.len());
            // Hold the namespaces until berthd has pinned them and kills us.
            loop {
                libc::pause();
            }
        }
    });
    // SAFETY: the callback only makes raw syscalls on pre-built data (see
    // above) and never returns into Rust code of the parent.
    let pid = unsafe { nix::sched::clone(child, &mut stack, flags, Some(libc::SIGCHLD)) }
        .map_err(|errno| NsError::Helper(errno.into()))?;
    drop(go_r);
    drop(report_w);
    let result = drive_helper(pid, request, user, go_w, report_r);
    let _ = kill(pid, Signal::SIGKILL);
    let _ = waitpid(pid, None);
    result
}

/// berthd's side of the helper: maps, go, wait for its report, pin.
fn drive_helper(
    pid: Pid,
    request: &Request,
    user: &UserRequest,
    go: OwnedFd,
    report: OwnedFd,
) -> Result<(), NsError> {
    use std::io::{Read, Write};
    let proc = PathBuf::from(format!("/proc/{pid}"));
    // Written by a privileged process of the parent namespace: no need to
    // deny setgroups first.
    for (file, maps) in [("uid_map", &user.uids), ("gid_map", &user.gids)] {
        std::fs::write(proc.join(file), map_text(maps))
            .map_err(|source| NsError::Map { file, source })?;
    }
    std::fs::File::from(go)
        .write_all(&[1])
        .map_err(NsError::Helper)?;
    let mut msg = [0u8; 8];
    std::fs::File::from(report)
        .read_exact(&mut msg)
        .map_err(|err| {
            NsError::Helper(std::io::Error::other(format!(
                "it exited without reporting: {err}"
            )))
        })?;
    let index = usize::from(u16::from_ne_bytes([msg[2], msg[3]]));
    let errno =
        std::io::Error::from_raw_os_error(i32::from_ne_bytes([msg[4], msg[5], msg[6], msg[7]]));
    match msg[0] {
        0 => {}
        STEP_ROOT => return Err(NsError::BecomeRoot(errno)),
        STEP_HOSTNAME => {
            return Err(NsError::Hostname {
                hostname: request.hostname.clone(),
                source: nix::Error::from_raw(errno.raw_os_error().unwrap_or(0)),
            });
        }
        STEP_LOOPBACK => return Err(NsError::Loopback(errno)),
        _ => {
            let (key, value) = request.sysctls.get(index).cloned().unwrap_or_default();
            return Err(NsError::Sysctl {
                key: key.replace('/', "."),
                value,
                source: errno,
            });
        }
    }
    pin(&proc.join("ns/user"), &user.pin)?;
    for (path, name) in [
        (&request.net, "net"),
        (&request.ipc, "ipc"),
        (&request.uts, "uts"),
    ] {
        if let Some(path) = path {
            pin(&proc.join("ns").join(name), path)?;
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

/// Makes the calling process root (uid, gid, no groups) of the user
/// namespace it is in, for the children cloned from berthd's threads.
///
/// Raw syscalls, not glibc's wrappers: those broadcast the change to every
/// thread glibc believes exists, under a lock that another berthd thread may
/// have held at the moment of the clone, so the child would wait forever.
///
/// # Safety
/// Only for a single-threaded child; it changes just the calling thread.
pub(crate) unsafe fn become_root() -> bool {
    // SAFETY: plain syscalls on integer arguments.
    unsafe {
        libc::syscall(libc::SYS_setresgid, 0, 0, 0) == 0
            && libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) == 0
            && libc::syscall(libc::SYS_setresuid, 0, 0, 0) == 0
    }
}

/// Sets IFF_UP on `lo` with two ioctls: no netlink socket, no fork, no
/// allocation (the user namespace helper calls it after clone).
fn loopback_up() -> std::io::Result<()> {
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
