//! The infra process of a pod that shares one PID namespace:
//! `berth-shim init`, PID 1 of a new PID namespace that has joined the pod's
//! network, IPC and UTS namespaces.
//!
//! In a pod with its own user namespace the PID namespace must belong to
//! that user namespace (its containers, which run inside it, could not join
//! it otherwise): a first child joins the user namespace, becomes its root
//! and joins the others, then clones PID 1 with `CLONE_NEWPID |
//! CLONE_PARENT` (so berthd stays its parent), reports its pid and exits.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::libc;
use nix::sched::CloneFlags;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// How long the infra process gets to exit on SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum InfraError {
    #[error("cannot open namespace {path} for the infra process: {source}")]
    OpenNs {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start infra process {shim}: {source}")]
    Start { shim: PathBuf, source: nix::Error },
    #[error("infra process {shim} init exited at once (cannot join the pod's namespaces or exec)")]
    Exited { shim: PathBuf },
    #[error("infra process {pid} did not exit after SIGKILL")]
    Stuck { pid: i32 },
}

/// A running infra process, identified by pid and start time so a recycled
/// pid is never signalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Infra {
    pub pid: i32,
    pub start_time: u64,
}

impl Infra {
    pub fn alive(&self) -> bool {
        start_time(self.pid).is_some_and(|t| t == self.start_time)
    }
}

/// Field 22 of /proc/<pid>/stat, or None when the process is gone or a zombie.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parens: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    if fields.next()? == "Z" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// Starts `shim init` joined to each namespace in `join` and in a new PID
/// namespace. `user`, when given, is joined first and owns that PID
/// namespace (see the module doc).
///
/// Long: fork, the child's setns calls and exec, and the parent's wait for
/// it form one sequence of raw syscalls that must stay in this order.
pub fn start(shim: &Path, user: Option<&Path>, join: &[PathBuf]) -> Result<Infra, InfraError> {
    let fds: Vec<OwnedFd> = user
        .into_iter()
        .chain(join.iter().map(PathBuf::as_path))
        .map(|path| {
            std::fs::File::open(path)
                .map(OwnedFd::from)
                .map_err(|source| InfraError::OpenNs {
                    path: path.to_path_buf(),
                    source,
                })
        })
        .collect::<Result<_, _>>()?;
    let start_err = |source| InfraError::Start {
        shim: shim.to_path_buf(),
        source,
    };
    let devnull = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|err| start_err(nix::Error::from_raw(err.raw_os_error().unwrap_or(0))))?;
    // Everything the child touches is built here: after clone(2) in a
    // threaded process the child must not allocate.
    let path =
        CString::new(shim.as_os_str().as_bytes()).map_err(|_| start_err(nix::Error::EINVAL))?;
    let arg0 = CString::new("berth-shim").expect("no NUL");
    let arg1 = CString::new("init").expect("no NUL");
    let argv = [arg0.as_ptr(), arg1.as_ptr(), std::ptr::null()];
    let raw_fds: Vec<i32> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let null_fd = devnull.as_raw_fd();
    let in_userns = user.is_some();
    // The first child reports PID 1's pid here when it cloned it itself.
    let mut report = [0; 2];
    // SAFETY: pipe2 fills two fds that are owned right away.
    if unsafe { libc::pipe2(report.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(start_err(nix::Error::last()));
    }
    // SAFETY: fresh fds nobody else owns.
    let (report_r, report_w) = unsafe {
        (
            OwnedFd::from_raw_fd(report[0]),
            OwnedFd::from_raw_fd(report[1]),
        )
    };
    let report_w_raw = report_w.as_raw_fd();
    let mut stack = vec![0u8; 64 * 1024];
    let child = Box::new(|| -> isize {
        // SAFETY: only async-signal-safe calls on data prepared above.
        unsafe {
            for (i, &fd) in raw_fds.iter().enumerate() {
                if libc::setns(fd, 0) != 0 {
                    libc::_exit(126);
                }
                // Root of the pod's user namespace before joining the
                // namespaces it owns.
                if in_userns && i == 0 && !crate::ns::become_root() {
                    libc::_exit(126);
                }
            }
            if in_userns {
                // fork(2)-like: a null stack runs the child on a copy of ours.
                let pid = libc::syscall(
                    libc::SYS_clone,
                    libc::CLONE_NEWPID | libc::CLONE_PARENT | libc::SIGCHLD,
                    0usize,
                    0usize,
                    0usize,
                    0usize,
                );
                if pid < 0 {
                    libc::_exit(125);
                }
                if pid > 0 {
                    let pid = pid as i32;
                    libc::write(report_w_raw, (&pid as *const i32).cast(), 4);
                    libc::_exit(0);
                }
            }
            libc::setsid();
            for target in 0..3 {
                libc::dup2(null_fd, target);
            }
            libc::execv(path.as_ptr(), argv.as_ptr());
            libc::_exit(127)
        }
    });
    let flags = if in_userns {
        CloneFlags::empty()
    } else {
        CloneFlags::CLONE_NEWPID
    };
    // SAFETY: the callback only makes raw syscalls on pre-built data (see
    // above) and never returns into Rust code of the parent.
    let first = unsafe { nix::sched::clone(child, &mut stack, flags, Some(libc::SIGCHLD)) }
        .map_err(start_err)?;
    drop(report_w);
    let pid = if in_userns {
        let _ = waitpid(first, None);
        let mut bytes = [0u8; 4];
        match std::io::Read::read_exact(&mut std::fs::File::from(report_r), &mut bytes) {
            Ok(()) => Pid::from_raw(i32::from_ne_bytes(bytes)),
            Err(_) => {
                return Err(InfraError::Exited {
                    shim: shim.to_path_buf(),
                });
            }
        }
    } else {
        first
    };
    // The start time is readable as soon as the pid exists; none means it
    // already died (setns or exec failed) and is a zombie.
    let Some(start_time) = start_time(pid.as_raw()) else {
        let _ = waitpid(pid, None);
        return Err(InfraError::Exited {
            shim: shim.to_path_buf(),
        });
    };
    Ok(Infra {
        pid: pid.as_raw(),
        start_time,
    })
}

/// SIGTERM, then SIGKILL after a grace period; reaps it when berthd is its
/// parent. An infra process that is already gone is fine.
pub fn stop(infra: &Infra) -> Result<(), InfraError> {
    if !infra.alive() {
        reap(infra.pid);
        return Ok(());
    }
    let pid = Pid::from_raw(infra.pid);
    let _ = kill(pid, Signal::SIGTERM);
    let mut deadline = Instant::now() + STOP_GRACE;
    let mut killed = false;
    loop {
        reap(infra.pid);
        if !infra.alive() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            if killed {
                return Err(InfraError::Stuck { pid: infra.pid });
            }
            let _ = kill(pid, Signal::SIGKILL);
            killed = true;
            deadline = Instant::now() + STOP_GRACE;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Collects the exit status if berthd is the parent (ECHILD after a restart,
/// when init reaps it instead).
fn reap(pid: i32) {
    let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
}
