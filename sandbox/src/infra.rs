//! The infra process of a pod that shares one PID namespace:
//! `berth-shim init`, PID 1 of a new PID namespace that has joined the pod's
//! network, IPC and UTS namespaces.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
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
/// namespace.
pub fn start(shim: &Path, join: &[PathBuf]) -> Result<Infra, InfraError> {
    let fds: Vec<OwnedFd> = join
        .iter()
        .map(|path| {
            std::fs::File::open(path)
                .map(OwnedFd::from)
                .map_err(|source| InfraError::OpenNs {
                    path: path.clone(),
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
    let mut stack = vec![0u8; 64 * 1024];
    let child = Box::new(|| -> isize {
        // SAFETY: only async-signal-safe calls on data prepared above.
        unsafe {
            for &fd in &raw_fds {
                if libc::setns(fd, 0) != 0 {
                    libc::_exit(126);
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
    // SAFETY: the callback only makes raw syscalls on pre-built data (see
    // above) and never returns into Rust code of the parent.
    let pid = unsafe {
        nix::sched::clone(
            child,
            &mut stack,
            CloneFlags::CLONE_NEWPID,
            Some(libc::SIGCHLD),
        )
    }
    .map_err(start_err)?;
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
