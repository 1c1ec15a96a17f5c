//! The contract between berthd and `berth-shim monitor`: the run dir's
//! files, `shim.json`, the exit record, and the attach and control sockets.
//! A crate of its own so that berthd links this and none of the monitor.
//!
//! berthd prepares a container's run dir, which is also its OCI bundle
//! (`config.json`), writes [`ShimConfig`] to `shim.json` in it and runs
//! `berth-shim monitor <run dir>`. That first process waits until the
//! detached monitor has asked the OCI runtime to create the container, then
//! exits 0 printing the container's pid, or exits 1 printing the runtime's
//! error on stderr. The monitor lives on, re-parented away from berthd, until
//! the container exits; then it writes [`ExitRecord`] to `exit` atomically.
//!
//! Files in the run dir (names are fixed so a restarted berthd finds them):
//! `shim.json`, `config.json`, `pid` (container pid, written by the runtime),
//! `shim.pid`, `attach` and `ctl` (unix sockets), `console.sock` (tty only,
//! transient), `runtime.log` (the OCI runtime's own JSON log), `exit`.
//!
//! The attach socket is a stream socket. Output goes to every attached client
//! as frames: one byte (1 stdout, 2 stderr), a big-endian u32 length, the
//! bytes. Whatever a client writes goes to the container's stdin. The control
//! socket takes one command line per connection and answers `ok\n` or
//! `error <message>\n`: `reopen` (reopen the log file) or `resize <rows>
//! <cols>` (tty only).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const CONFIG_FILE: &str = "shim.json";
pub const PID_FILE: &str = "pid";
pub const SHIM_PID_FILE: &str = "shim.pid";
pub const ATTACH_SOCKET: &str = "attach";
pub const CONTROL_SOCKET: &str = "ctl";
pub const CONSOLE_SOCKET: &str = "console.sock";
pub const RUNTIME_LOG: &str = "runtime.log";
pub const EXIT_FILE: &str = "exit";
/// Written (empty) by berthd before it sends SIGKILL to stop the container:
/// a death by SIGKILL after it is the stop's, never an OOM kill that the
/// shim infers from an ancestor cgroup's count.
pub const KILLED_FILE: &str = "killed";

/// Attach frame stream tags.
pub const STREAM_STDOUT: u8 = 1;
pub const STREAM_STDERR: u8 = 2;

/// What berthd tells the monitor, as `shim.json` in the run dir.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShimConfig {
    /// The container ID, as given to the OCI runtime.
    pub id: String,
    /// The OCI runtime binary (runc, crun, ...).
    pub runtime: PathBuf,
    /// The runtime's state dir (`--root`); its default when absent.
    pub runtime_root: Option<PathBuf>,
    /// Global flags for the runtime, before `create` (the cgroup driver's).
    #[serde(default)]
    pub runtime_args: Vec<String>,
    /// The CRI log file; its directory must exist.
    pub log_path: PathBuf,
    /// Keep the container's stdin open for attach.
    pub stdin: bool,
    /// Close stdin once the first attach session detaches.
    pub stdin_once: bool,
    /// Give the container a pty (`--console-socket`) instead of pipes.
    pub tty: bool,
}

/// How a container ended, written by the monitor as `exit` in the run dir.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitRecord {
    /// The exit code; 128 + signal number when a signal killed it.
    pub exit_code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Nanoseconds since the epoch.
    pub finished_at: i64,
    /// The container's memory cgroup recorded an OOM kill.
    pub oom_killed: bool,
}

impl ExitRecord {
    /// The record in `run_dir`, or `None` while the container has not exited.
    pub fn read(run_dir: &Path) -> std::io::Result<Option<ExitRecord>> {
        match std::fs::read(run_dir.join(EXIT_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidData, err)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }
}

/// Connects to a unix socket at `path`, also when the path is longer than
/// `sun_path` allows: then through `/proc/self/fd/<dir fd>/<name>`.
pub fn connect_unix(path: &Path) -> std::io::Result<std::os::unix::net::UnixStream> {
    use std::os::fd::AsRawFd;
    const SUN_PATH_MAX: usize = 107;
    if path.as_os_str().len() <= SUN_PATH_MAX {
        return std::os::unix::net::UnixStream::connect(path);
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return std::os::unix::net::UnixStream::connect(path);
    };
    let dir = std::fs::File::open(dir)?;
    let short = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
    std::os::unix::net::UnixStream::connect(short)
}

/// Sends one control command and returns the monitor's answer.
pub fn control(run_dir: &Path, command: &str) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut stream = connect_unix(&run_dir.join(CONTROL_SOCKET))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    stream.write_all(command.as_bytes())?;
    stream.write_all(b"\n")?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    match answer.trim_end().strip_prefix("error ") {
        None if answer == "ok\n" => Ok(()),
        None => Err(std::io::Error::other(format!(
            "berth-shim answered {answer:?} to {command:?}"
        ))),
        Some(message) => Err(std::io::Error::other(message.to_string())),
    }
}
