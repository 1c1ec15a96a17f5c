//! The OCI runtime driver: `create` through berth-shim, then `start`,
//! `kill`, `delete`, `state` and `exec` with the runtime binary directly.
//!
//! Blocking calls: the server runs them on `spawn_blocking`.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::Deserialize;

use berth_host::cgroup::Driver;
use berth_shim_protocol::{self as shim, ExitRecord, ShimConfig};

use crate::signal::StopSignal;

/// Output per stream kept by [`OciRuntime::exec_sync`]; the rest is counted, not kept.
pub const EXEC_OUTPUT_CAP: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("container {id}: {message}")]
    Create { id: String, message: String },
    #[error("run {command}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("{command} failed: {message}")]
    Failed { command: String, message: String },
    #[error("container {id}: {source}")]
    Io { id: String, source: std::io::Error },
    #[error("container {id} did not exit within {waited:?} of SIGKILL")]
    StillRunning { id: String, waited: Duration },
    #[error("container {id} has no berth-shim (exit file missing, shim gone)")]
    ShimGone { id: String },
}

/// One OCI runtime handler (runc, crun) and where berth-shim is.
#[derive(Debug, Clone)]
pub struct OciRuntime {
    /// The runtime binary.
    pub path: PathBuf,
    /// The runtime's state dir (`--root`), e.g. `<run_root>/runtimes/<handler>`.
    pub root: PathBuf,
    /// The berth-shim binary.
    pub shim: PathBuf,
    /// The cgroup driver, whose flags every runtime command gets: the
    /// runtime keeps a container's cgroup manager in its state, but
    /// passing it each time keeps every command consistent.
    pub cgroup_driver: Driver,
}

/// What [`OciRuntime::create`] needs beyond the bundle.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub id: String,
    /// The container's run dir, holding `config.json` (see [`crate::spec::write`]).
    pub run_dir: PathBuf,
    pub log_path: PathBuf,
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
}

/// `<runtime> state` output, the parts we use.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct OciState {
    pub status: String,
    pub pid: i32,
}

/// A runtime `exec` ready to spawn, from [`OciRuntime::exec_command`].
pub struct ExecCommand {
    pub command: Command,
    /// Holds `pid_file`; the caller removes it once the exec has ended.
    pub dir: PathBuf,
    pub pid_file: PathBuf,
}

/// What [`OciRuntime::exec_sync`] collected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// 128 + signal when a signal ended it; -1 when it timed out.
    pub exit_code: i32,
    pub timed_out: bool,
    /// Bytes beyond [`EXEC_OUTPUT_CAP`] that were discarded.
    pub stdout_dropped: u64,
    pub stderr_dropped: u64,
}

/// berth-shim next to the running executable (berthd), the default.
pub fn default_shim_path() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.with_file_name("berth-shim"))
}

impl OciRuntime {
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.path);
        cmd.arg("--root").arg(&self.root);
        cmd.args(self.cgroup_driver.runtime_args(&self.path));
        cmd
    }

    fn run(&self, args: &[&str]) -> Result<Vec<u8>, RuntimeError> {
        let command = format!("{} {}", self.path.display(), args.join(" "));
        let output = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| RuntimeError::Spawn {
                command: command.clone(),
                source,
            })?;
        if output.status.success() {
            Ok(output.stdout)
        } else {
            Err(RuntimeError::Failed {
                command,
                message: message_of(&output.stderr, output.status),
            })
        }
    }

    /// Creates the container through a new berth-shim; returns its pid.
    /// On failure the error carries the runtime's own message.
    pub fn create(&self, options: &CreateOptions) -> Result<i32, RuntimeError> {
        let id = options.id.clone();
        let config = ShimConfig {
            id: options.id.clone(),
            runtime: self.path.clone(),
            runtime_root: Some(self.root.clone()),
            runtime_args: self.cgroup_driver.runtime_args(&self.path),
            log_path: options.log_path.clone(),
            stdin: options.stdin,
            stdin_once: options.stdin_once,
            tty: options.tty,
        };
        let io = |source| RuntimeError::Io {
            id: id.clone(),
            source,
        };
        std::fs::create_dir_all(&self.root).map_err(io)?;
        berth_host::atomic::write_private(
            &options.run_dir.join(shim::CONFIG_FILE),
            &serde_json::to_vec(&config).expect("shim config serializes"),
        )
        .map_err(io)?;
        let output = Command::new(&self.shim)
            .arg("monitor")
            .arg(&options.run_dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| RuntimeError::Spawn {
                command: format!("{} monitor", self.shim.display()),
                source,
            })?;
        if !output.status.success() {
            return Err(RuntimeError::Create {
                id,
                message: message_of(&output.stderr, output.status),
            });
        }
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .map_err(|_| RuntimeError::Create {
                id,
                message: "berth-shim reported no pid".into(),
            })
    }

    pub fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.run(&["start", id]).map(drop)
    }

    /// Signals the container's init (or every process with `all`).
    pub fn kill(&self, id: &str, signal: StopSignal, all: bool) -> Result<(), RuntimeError> {
        let sig = signal.number().to_string();
        let mut args = vec!["kill"];
        if all {
            args.push("--all");
        }
        args.extend([id, sig.as_str()]);
        self.run(&args).map(drop)
    }

    /// Applies `resources` (the OCI `linux.resources` fields to change) to
    /// the container's cgroups with `<runtime> update --resources`.
    pub fn update(
        &self,
        id: &str,
        run_dir: &Path,
        resources: &serde_json::Value,
    ) -> Result<(), RuntimeError> {
        let path = run_dir.join("resources-update.json");
        std::fs::write(&path, resources.to_string()).map_err(|source| RuntimeError::Io {
            id: id.to_string(),
            source,
        })?;
        let file = path.to_string_lossy().into_owned();
        let result = self.run(&["update", "--resources", &file, id]);
        let _ = std::fs::remove_file(&path);
        result.map(drop)
    }

    /// Deletes the runtime's state; an unknown container is success.
    pub fn delete(&self, id: &str, force: bool) -> Result<(), RuntimeError> {
        let args: &[&str] = if force {
            &["delete", "--force", id]
        } else {
            &["delete", id]
        };
        match self.run(args) {
            Err(RuntimeError::Failed { message, .. }) if is_not_found(&message) => Ok(()),
            other => other.map(drop),
        }
    }

    /// The runtime's view; `None` when it does not know the container.
    pub fn state(&self, id: &str) -> Result<Option<OciState>, RuntimeError> {
        match self.run(&["state", id]) {
            Ok(out) => serde_json::from_slice(&out)
                .map(Some)
                .map_err(|err| RuntimeError::Failed {
                    command: format!("{} state {id}", self.path.display()),
                    message: format!("unreadable output: {err}"),
                }),
            Err(RuntimeError::Failed { message, .. }) if is_not_found(&message) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Stops a container: `signal`, then SIGKILL once `timeout` passed
    /// (a zero timeout kills at once). Returns how it exited.
    pub fn stop(
        &self,
        id: &str,
        run_dir: &Path,
        signal: StopSignal,
        timeout: Duration,
    ) -> Result<ExitRecord, RuntimeError> {
        let io = |source| RuntimeError::Io {
            id: id.to_string(),
            source,
        };
        if let Some(exit) = ExitRecord::read(run_dir).map_err(io)? {
            return Ok(exit);
        }
        if !timeout.is_zero() && signal != StopSignal::KILL {
            // The container may exit between the check and the kill.
            let _ = self.kill(id, signal, false);
            if let Some(exit) = wait_exit(run_dir, timeout).map_err(io)? {
                return Ok(exit);
            }
        }
        std::fs::write(run_dir.join(berth_shim_protocol::KILLED_FILE), b"").map_err(io)?;
        let _ = self.kill(id, StopSignal::KILL, true);
        let waited = Duration::from_secs(30);
        match wait_exit(run_dir, waited).map_err(io)? {
            Some(exit) => Ok(exit),
            None if !shim_alive(run_dir) => Err(RuntimeError::ShimGone { id: id.into() }),
            None => Err(RuntimeError::StillRunning {
                id: id.into(),
                waited,
            }),
        }
    }

    /// The runtime's `exec` of `args` in container `id`, the one place it is
    /// built (ExecSync and streamed execs). The process's pid goes to
    /// `pid_file` in a fresh dir under the runtime's root, so that an exec
    /// that timed out or lost its client can be killed inside the container
    /// (killing `runc exec` would not); the caller removes `dir`.
    pub fn exec_command(
        &self,
        id: &str,
        args: &[String],
        tty: bool,
    ) -> std::io::Result<ExecCommand> {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = self
            .root
            .join(format!("exec-{id}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let pid_file = dir.join("exec.pid");
        let mut command = self.command();
        command.arg("exec").arg("--pid-file").arg(&pid_file);
        if tty {
            command.arg("--tty");
        }
        command.arg(id).args(args);
        Ok(ExecCommand {
            command,
            dir,
            pid_file,
        })
    }

    /// Runs `args` in the container as its process (user, env, cwd), with
    /// output capped per stream and an optional timeout.
    pub fn exec_sync(
        &self,
        id: &str,
        args: &[String],
        timeout: Option<Duration>,
    ) -> Result<ExecOutput, RuntimeError> {
        let ExecCommand {
            command: mut exec,
            dir: pid_dir,
            pid_file,
        } = self
            .exec_command(id, args, false)
            .map_err(|source| RuntimeError::Io {
                id: id.into(),
                source,
            })?;
        let command = format!("{} exec {id}", self.path.display());
        let mut child = exec
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| RuntimeError::Spawn {
                command: command.clone(),
                source,
            })?;
        let mut out = ExecOutput::default();
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        // A deadline past what an Instant can hold (a hostile timeout of
        // i64::MAX seconds) is no deadline.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut buf = vec![0u8; 64 << 10];
        while stdout.is_some() || stderr.is_some() {
            let wait_ms = match deadline {
                None => -1,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        out.timed_out = true;
                        break;
                    }
                    left.as_millis().min(i32::MAX as u128) as i32
                }
            };
            let mut pfds: Vec<libc::pollfd> = [
                stdout.as_ref().map(|s| s.as_raw_fd()),
                stderr.as_ref().map(|s| s.as_raw_fd()),
            ]
            .iter()
            .map(|fd| libc::pollfd {
                fd: fd.unwrap_or(-1),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
            // SAFETY: two pollfds (negative fds are ignored by poll).
            unsafe { libc::poll(pfds.as_mut_ptr(), 2, wait_ms) };
            if pfds[0].revents != 0 {
                drain(
                    &mut stdout,
                    &mut buf,
                    &mut out.stdout,
                    &mut out.stdout_dropped,
                );
            }
            if pfds[1].revents != 0 {
                drain(
                    &mut stderr,
                    &mut buf,
                    &mut out.stderr,
                    &mut out.stderr_dropped,
                );
            }
        }
        if out.timed_out {
            kill_exec(&pid_file, &mut child);
        }
        let status = child.wait().map_err(|source| RuntimeError::Spawn {
            command: command.clone(),
            source,
        })?;
        let _ = std::fs::remove_dir_all(&pid_dir);
        out.exit_code = if out.timed_out {
            -1
        } else {
            use std::os::unix::process::ExitStatusExt;
            status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
        };
        Ok(out)
    }
}

/// Ends a timed-out exec. Killing runc exec alone would leave the process
/// running in the container. runc's init makes it a session (and group)
/// leader, so its group holds what it forked too (a probe's `sh -c`
/// waiting on a child), unless they left it.
fn kill_exec(pid_file: &Path, runc_exec: &mut std::process::Child) {
    if let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-pid), Signal::SIGKILL);
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = runc_exec.kill();
}

/// Reads what is ready on `stream` into `keep` up to the cap, counting the
/// rest; closes the stream at EOF.
fn drain<R: Read>(stream: &mut Option<R>, buf: &mut [u8], keep: &mut Vec<u8>, dropped: &mut u64) {
    let Some(reader) = stream.as_mut() else {
        return;
    };
    match reader.read(buf) {
        Ok(0) | Err(_) => *stream = None,
        Ok(n) => {
            let room = EXEC_OUTPUT_CAP.saturating_sub(keep.len()).min(n);
            keep.extend_from_slice(&buf[..room]);
            *dropped += (n - room) as u64;
        }
    }
}

/// Polls for the exit file; `None` if `timeout` passed first (a timeout
/// too large for an `Instant` never passes).
pub fn wait_exit(run_dir: &Path, timeout: Duration) -> std::io::Result<Option<ExitRecord>> {
    let deadline = Instant::now().checked_add(timeout);
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(exit) = ExitRecord::read(run_dir)? {
            return Ok(Some(exit));
        }
        if deadline.is_some_and(|d| Instant::now() >= d)
            || !shim_alive(run_dir) && ExitRecord::read(run_dir)?.is_none()
        {
            return Ok(None);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Whether the container's berth-shim still runs (per its pid file).
pub fn shim_alive(run_dir: &Path) -> bool {
    let Some(pid) = std::fs::read_to_string(run_dir.join(shim::SHIM_PID_FILE))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return false;
    };
    // A zombie (not yet reaped by its parent) has exited for our purposes.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
            && std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmd| cmd.contains("berth-shim"))
    })
}

/// The runtime's message: the last JSON log `msg`, else the stderr text.
fn message_of(stderr: &[u8], status: std::process::ExitStatus) -> String {
    let text = String::from_utf8_lossy(stderr);
    let from_json = text.lines().rev().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        v.get("msg")?.as_str().map(str::to_owned)
    });
    let message = from_json.unwrap_or_else(|| text.trim().to_string());
    if message.is_empty() {
        status.to_string()
    } else {
        message
    }
}

fn is_not_found(message: &str) -> bool {
    message.contains("does not exist")
        || message.contains("not found")
        || message.contains("No such file")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_past_what_an_instant_holds_is_no_deadline() {
        // StopContainer with `timeout: i64::MAX` once panicked adding it to
        // an Instant. With no shim, the wait ends at once.
        let dir = tempfile::tempdir().unwrap();
        let secs = Duration::from_secs(i64::MAX as u64);
        assert!(wait_exit(dir.path(), secs).unwrap().is_none());
        assert!(wait_exit(dir.path(), Duration::MAX).unwrap().is_none());
    }

    #[test]
    fn every_runtime_command_carries_the_drivers_flags() {
        let runtime = |path: &str, cgroup_driver| OciRuntime {
            path: path.into(),
            root: "/run/berth/runtimes/x".into(),
            shim: "berth-shim".into(),
            cgroup_driver,
        };
        let args = |r: &OciRuntime| -> Vec<String> {
            let exec = r.exec_command("c1", &["true".into()], false).unwrap();
            let _ = std::fs::remove_dir_all(&exec.dir);
            let exec: Vec<String> = exec
                .command
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            let plain: Vec<String> = r
                .command()
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            assert_eq!(exec[..plain.len()], plain[..]);
            plain
        };
        let dir = tempfile::tempdir().unwrap();
        let root = |r: OciRuntime| OciRuntime {
            root: dir.path().to_path_buf(),
            ..r
        };
        let root_arg = dir.path().display().to_string();
        assert_eq!(
            args(&root(runtime("runc", Driver::Systemd))),
            ["--root", &root_arg, "--systemd-cgroup"]
        );
        assert_eq!(
            args(&root(runtime("/usr/bin/crun", Driver::Systemd))),
            ["--root", &root_arg, "--cgroup-manager=systemd"]
        );
        assert_eq!(
            args(&root(runtime("runc", Driver::Cgroupfs))),
            ["--root", &root_arg]
        );
    }
}
