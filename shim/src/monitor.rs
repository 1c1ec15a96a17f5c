//! `berth-shim monitor <run dir>`: one per container, outlives berthd.
//!
//! Single-threaded: one `poll` loop over the container's output, the attach
//! and control sockets and a signalfd for SIGCHLD. The only buffers are
//! allocated once at start-up.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, pipe2, setsid};

use berth_host::atomic::write_private;
use berth_shim_protocol::{
    ATTACH_SOCKET, CONFIG_FILE, CONSOLE_SOCKET, CONTROL_SOCKET, EXIT_FILE, ExitRecord, KILLED_FILE,
    PID_FILE, RUNTIME_LOG, SHIM_PID_FILE, STREAM_STDERR, STREAM_STDOUT, ShimConfig,
};

use crate::logfmt::LogFile;

/// Bytes read from the container per chunk (as conmon's buffer).
const CHUNK: usize = 8192;
/// Attach frame header: stream tag and big-endian u32 length.
const HEADER: usize = 5;
/// More attach clients than this are refused.
const MAX_CLIENTS: usize = 16;

/// Runs in the process berthd started; returns its exit code once the
/// detached monitor reported the outcome of `<runtime> create`.
pub fn run(run_dir: &Path) -> i32 {
    let run_dir = match std::path::absolute(run_dir) {
        Ok(dir) => dir,
        Err(err) => return fail_early(&format!("bad run dir {}: {err}", run_dir.display())),
    };
    let config: ShimConfig = match std::fs::read(run_dir.join(CONFIG_FILE))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(config) => config,
        Err(err) => {
            return fail_early(&format!(
                "cannot read {}: {err}",
                run_dir.join(CONFIG_FILE).display()
            ));
        }
    };
    let (report_rx, report_tx) = match pipe2(OFlag::O_CLOEXEC) {
        Ok(pair) => pair,
        Err(err) => return fail_early(&format!("pipe: {err}")),
    };
    // SAFETY: the shim is single-threaded here, so the child may run any code.
    match unsafe { fork() } {
        Err(err) => fail_early(&format!("fork: {err}")),
        Ok(ForkResult::Parent { child }) => {
            drop(report_tx);
            let mut report = String::new();
            let _ = File::from(report_rx).read_to_string(&mut report);
            let _ = waitpid(child, None);
            if let Some(pid) = report.strip_prefix("ok ") {
                println!("{pid}");
                0
            } else if let Some(message) = report.strip_prefix("error ") {
                eprintln!("{message}");
                1
            } else {
                eprintln!(
                    "berth-shim: the monitor of {} died before reporting",
                    config.id
                );
                1
            }
        }
        Ok(ForkResult::Child) => {
            drop(report_rx);
            // A new session, then a second fork so the monitor is no session
            // leader (never gets a controlling tty) and is re-parented to
            // init (or the nearest subreaper), not to berthd.
            let _ = setsid();
            // SAFETY: still single-threaded.
            match unsafe { fork() } {
                Ok(ForkResult::Child) => {
                    let mut report = File::from(report_tx);
                    let code = monitor(&run_dir, &config, &mut report);
                    std::process::exit(code)
                }
                Ok(ForkResult::Parent { .. }) => std::process::exit(0),
                Err(err) => {
                    let _ = write!(File::from(report_tx), "error berth-shim: fork: {err}");
                    std::process::exit(1)
                }
            }
        }
    }
}

fn fail_early(message: &str) -> i32 {
    eprintln!("berth-shim: {message}");
    1
}

/// A stream the shim reads container output from.
struct Output {
    fd: OwnedFd,
    tag: u8,
    name: &'static [u8],
}

struct Monitor {
    config: ShimConfig,
    run_dir: PathBuf,
    log: LogFile,
    outputs: Vec<Output>,
    /// Where attach input goes: the stdin pipe, or the pty master.
    stdin: Option<OwnedFd>,
    /// The pty master, for resize.
    console: Option<RawFd>,
    clients: Vec<UnixStream>,
    attach: UnixListener,
    control: UnixListener,
    signals: SignalFd,
    pid: Pid,
    memory_events: Option<(PathBuf, &'static str)>,
    /// v2's `memory.events`, open and polled for changes: with the systemd
    /// driver the scope (and this file) is gone as soon as the container's
    /// last process is, so the OOM kill must be seen while it happens.
    oom_watch: Option<File>,
    /// An OOM kill the watch saw.
    oom_seen: bool,
    /// The `oom_kill` counts of the v2 cgroup's ancestors when the
    /// container was created, nearest first. v2 counts an OOM kill in every
    /// ancestor too, so when the container's own cgroup is already gone
    /// (a systemd scope, removed before this shim ran) a kill that its
    /// nearest remaining ancestor counted since is the container's, if its
    /// process died of SIGKILL meanwhile.
    oom_ancestors: Vec<(PathBuf, u64)>,
    buf: Box<[u8]>,
    pollfds: Vec<libc::pollfd>,
    had_attach: bool,
}

/// The monitor proper: creates the container, reports, and follows it until
/// it exits. Returns the shim's exit code.
fn monitor(run_dir: &Path, config: &ShimConfig, report: &mut File) -> i32 {
    let setup = setup(run_dir, config);
    let mut monitor = match setup {
        Ok(monitor) => monitor,
        Err(message) => {
            let _ = write!(report, "error {message}");
            return 1;
        }
    };
    let _ = write!(report, "ok {}", monitor.pid);
    // Closing the pipe releases the process berthd is waiting on.
    drop(std::mem::replace(report, File::from(devnull())));
    monitor.run()
}

fn devnull() -> OwnedFd {
    File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .expect("/dev/null")
        .into()
}

/// Everything before the container runs: stdio (pipes or a pty), the log,
/// the attach and control sockets, and `runtime create`. Long because each
/// step's descriptors feed the next and must be closed on every failure.
fn setup(run_dir: &Path, config: &ShimConfig) -> Result<Monitor, String> {
    // Keep nothing of berthd's: its stdout would hold `Command::output` open.
    let null = devnull();
    let shim_log = File::options()
        .create(true)
        .append(true)
        .open(run_dir.join("shim.log"))
        .map(OwnedFd::from)
        .unwrap_or_else(|_| devnull());
    for (from, to) in [(&null, 0), (&null, 1), (&shim_log, 2)] {
        nix::unistd::dup2(from.as_raw_fd(), to).map_err(|e| format!("berth-shim: dup2: {e}"))?;
    }
    drop((null, shim_log));
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| format!("berth-shim: PR_SET_CHILD_SUBREAPER: {e}"))?;
    std::env::set_current_dir(run_dir)
        .map_err(|e| format!("berth-shim: chdir {}: {e}", run_dir.display()))?;
    std::fs::write(SHIM_PID_FILE, std::process::id().to_string())
        .map_err(|e| format!("berth-shim: write {SHIM_PID_FILE}: {e}"))?;

    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.thread_block()
        .map_err(|e| format!("berth-shim: block SIGCHLD: {e}"))?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| format!("berth-shim: signalfd: {e}"))?;

    // Relative names: the run dir's absolute path may exceed sun_path.
    let listen = |name: &str| {
        let _ = std::fs::remove_file(name);
        UnixListener::bind(name).map_err(|e| format!("berth-shim: bind {name}: {e}"))
    };
    let attach = listen(ATTACH_SOCKET)?;
    let control = listen(CONTROL_SOCKET)?;
    let log = LogFile::open(&config.log_path, CHUNK)
        .map_err(|e| format!("open log file {}: {e}", config.log_path.display()))?;

    let mut cmd = Command::new(&config.runtime);
    if let Some(root) = &config.runtime_root {
        cmd.arg("--root").arg(root);
    }
    cmd.args(&config.runtime_args);
    cmd.arg("--log")
        .arg(run_dir.join(RUNTIME_LOG))
        .args(["--log-format", "json", "create", "--bundle"])
        .arg(run_dir)
        .arg("--pid-file")
        .arg(run_dir.join(PID_FILE))
        .current_dir(run_dir);

    let mut outputs = Vec::with_capacity(2);
    let mut stdin = None;
    let pipe = || pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("berth-shim: pipe: {e}"));
    // The runtime's own stderr, read only when create fails.
    let (err_rx, err_tx);
    let console_listener;
    if config.tty {
        let _ = std::fs::remove_file(CONSOLE_SOCKET);
        console_listener = Some(
            UnixListener::bind(CONSOLE_SOCKET)
                .map_err(|e| format!("berth-shim: bind {CONSOLE_SOCKET}: {e}"))?,
        );
        // runc resolves the socket path after changing into the bundle,
        // which is the run dir.
        cmd.args(["--console-socket", CONSOLE_SOCKET]);
        (err_rx, err_tx) = pipe()?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(err_tx));
    } else {
        console_listener = None;
        if config.stdin {
            let (rx, tx) = pipe()?;
            cmd.stdin(Stdio::from(rx));
            stdin = Some(tx);
        } else {
            cmd.stdin(Stdio::null());
        }
        let (out_rx, out_tx) = pipe()?;
        (err_rx, err_tx) = pipe()?;
        cmd.stdout(Stdio::from(out_tx)).stderr(Stdio::from(err_tx));
        outputs.push(Output {
            fd: out_rx,
            tag: STREAM_STDOUT,
            name: b"stdout",
        });
    }
    cmd.arg(&config.id);

    let mut child = cmd
        .spawn()
        .map_err(|e| format!("run {} create: {e}", config.runtime.display()))?;
    // The child's ends of the pipes must not stay open here, or EOF never comes.
    drop(cmd);
    let mut console = None;
    let status = match &console_listener {
        None => child.wait(),
        Some(listener) => receive_console(listener, &mut child, &mut console),
    }
    .map_err(|e| format!("wait for {} create: {e}", config.runtime.display()))?;
    if let Some(listener) = console_listener {
        drop(listener);
        let _ = std::fs::remove_file(CONSOLE_SOCKET);
    }
    set_nonblocking(err_rx.as_raw_fd());
    if !status.success() {
        return Err(create_error(&config.runtime, status, &err_rx));
    }
    if config.tty {
        let master = console.ok_or_else(|| {
            format!(
                "{} create did not send the console's pty master",
                config.runtime.display()
            )
        })?;
        set_nonblocking(master.as_raw_fd());
        outputs.push(Output {
            fd: master
                .try_clone()
                .map_err(|e| format!("berth-shim: dup: {e}"))?,
            tag: STREAM_STDOUT,
            name: b"stdout",
        });
        if config.stdin {
            stdin = Some(master);
        }
    } else {
        outputs.push(Output {
            fd: err_rx,
            tag: STREAM_STDERR,
            name: b"stderr",
        });
    }
    for output in &outputs {
        set_nonblocking(output.fd.as_raw_fd());
    }
    let pid = std::fs::read_to_string(run_dir.join(PID_FILE))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .map(Pid::from_raw)
        .ok_or_else(|| format!("{} create wrote no pid file", config.runtime.display()))?;
    attach.set_nonblocking(true).ok();
    control.set_nonblocking(true).ok();
    let console_fd = if config.tty {
        outputs.first().map(|o| o.fd.as_raw_fd())
    } else {
        None
    };
    Ok(Monitor {
        config: config.clone(),
        run_dir: run_dir.to_path_buf(),
        log,
        outputs,
        stdin,
        console: console_fd,
        clients: Vec::with_capacity(MAX_CLIENTS),
        attach,
        control,
        signals,
        pid,
        oom_watch: memory_events(pid)
            .filter(|(file, _)| file.ends_with("memory.events"))
            .and_then(|(file, _)| File::open(file).ok()),
        memory_events: memory_events(pid),
        oom_seen: false,
        oom_ancestors: oom_ancestors(pid),
        buf: vec![0; HEADER + CHUNK].into_boxed_slice(),
        pollfds: Vec::with_capacity(4 + MAX_CLIENTS + 2),
        had_attach: false,
    })
}

/// Waits for the runtime's create while accepting the pty master it sends
/// over the console socket.
fn receive_console(
    listener: &UnixListener,
    child: &mut std::process::Child,
    console: &mut Option<OwnedFd>,
) -> std::io::Result<std::process::ExitStatus> {
    listener.set_nonblocking(true)?;
    loop {
        if console.is_none()
            && let Ok((stream, _)) = listener.accept()
        {
            *console = recv_fd(&stream);
        }
        if let Some(status) = child.try_wait()? {
            if console.is_none()
                && let Ok((stream, _)) = listener.accept()
            {
                *console = recv_fd(&stream);
            }
            return Ok(status);
        }
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; the timeout re-checks the child.
        unsafe { libc::poll(&mut pfd, 1, 20) };
    }
}

fn recv_fd(stream: &UnixStream) -> Option<OwnedFd> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut data = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut data)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ok()?;
    for message in msg.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(fds) = message
            && let Some(&fd) = fds.first()
        {
            // SAFETY: SCM_RIGHTS hands us a fresh descriptor we now own.
            return Some(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    None
}

/// The runtime's message for a failed create: the last error in its JSON
/// log, else what it wrote to stderr, else its exit status.
fn create_error(runtime: &Path, status: std::process::ExitStatus, stderr: &OwnedFd) -> String {
    let from_log = std::fs::read_to_string(RUNTIME_LOG).ok().and_then(|log| {
        log.lines().rev().find_map(|line| {
            let entry: serde_json::Value = serde_json::from_str(line).ok()?;
            (entry.get("level")?.as_str()? == "error")
                .then(|| entry.get("msg")?.as_str().map(str::to_owned))
                .flatten()
        })
    });
    // runc's own messages already say what failed ("runc create failed: ...").
    if let Some(message) = from_log {
        return message;
    }
    let message = {
        let mut buf = vec![0u8; 4096];
        // SAFETY: reading into our own buffer from a fd we own.
        let n = unsafe { libc::read(stderr.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        let text = String::from_utf8_lossy(&buf[..n.max(0) as usize])
            .trim()
            .to_string();
        if text.is_empty() {
            status.to_string()
        } else {
            text
        }
    };
    format!("{} create failed: {message}", runtime.display())
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

/// Where the container's memory cgroup counts OOM kills: v1's
/// `memory.oom_control` or v2's `memory.events`, both with an `oom_kill` line.
fn memory_events(pid: Pid) -> Option<(PathBuf, &'static str)> {
    let layout = berth_host::cgroup::Layout::host();
    let dir = layout.dir_of_process(pid.as_raw(), "memory")?;
    let file = if layout.v1("memory").is_some() {
        dir.join("memory.oom_control")
    } else {
        dir.join("memory.events")
    };
    file.exists().then_some((file, "oom_kill"))
}

/// See [`Monitor::oom_ancestors`]: the v2 ancestors' `memory.events` and
/// their `oom_kill` counts now, nearest first, below the root.
fn oom_ancestors(pid: Pid) -> Vec<(PathBuf, u64)> {
    let layout = berth_host::cgroup::Layout::host();
    let (Some(root), Some(dir)) = (
        layout.unified(),
        layout.dir_of_process(pid.as_raw(), "memory"),
    ) else {
        return Vec::new();
    };
    if layout.v1("memory").is_some() {
        return Vec::new();
    }
    dir.ancestors()
        .skip(1)
        .take_while(|a| a.starts_with(root) && *a != root)
        .map(|a| a.join("memory.events"))
        .filter_map(|file| {
            let text = std::fs::read_to_string(&file).ok()?;
            let count = oom_kill_count(&text, "oom_kill");
            Some((file, count))
        })
        .collect()
}

/// Whether the nearest ancestor that still reads counted an OOM kill since
/// [`oom_ancestors`] read it.
fn ancestor_counted_oom(ancestors: &[(PathBuf, u64)]) -> bool {
    ancestors.iter().find_map(|(file, before)| {
        let text = std::fs::read_to_string(file).ok()?;
        Some(oom_kill_count(&text, "oom_kill") > *before)
    }) == Some(true)
}

fn oom_kills(file: &Path, key: &str) -> u64 {
    std::fs::read_to_string(file)
        .map(|text| oom_kill_count(&text, key))
        .unwrap_or(0)
}

fn oom_kill_count(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|line| {
            let (k, v) = line.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0)
}

impl Monitor {
    fn run(&mut self) -> i32 {
        let status = loop {
            self.pollfds.clear();
            let fixed = [
                self.signals.as_raw_fd(),
                self.control.as_raw_fd(),
                self.attach.as_raw_fd(),
            ];
            for fd in fixed
                .into_iter()
                .chain(self.outputs.iter().map(|o| o.fd.as_raw_fd()))
                .chain(self.clients.iter().map(|c| c.as_raw_fd()))
            {
                self.pollfds.push(libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            // cgroup v2 signals a changed file with POLLPRI (and POLLERR).
            if let Some(watch) = &self.oom_watch {
                self.pollfds.push(libc::pollfd {
                    fd: watch.as_raw_fd(),
                    events: libc::POLLPRI,
                    revents: 0,
                });
            }
            // SAFETY: the vector holds valid pollfds for fds we own.
            let n = unsafe {
                libc::poll(
                    self.pollfds.as_mut_ptr(),
                    self.pollfds.len() as libc::nfds_t,
                    -1,
                )
            };
            if n < 0 {
                continue;
            }
            let ready =
                |pollfds: &[libc::pollfd], i: usize| pollfds.get(i).is_some_and(|p| p.revents != 0);
            // Output first, so everything written before exit is logged.
            let n_outputs = self.outputs.len();
            for i in (0..n_outputs).rev() {
                if ready(&self.pollfds, 3 + i) && !self.pump(i) {
                    self.outputs.remove(i);
                }
            }
            for i in (0..self.clients.len()).rev() {
                if ready(&self.pollfds, 3 + n_outputs + i) {
                    self.client_input(i);
                }
            }
            if ready(&self.pollfds, 2) {
                self.accept_attach();
            }
            if ready(&self.pollfds, 1) {
                self.serve_control();
            }
            if self.oom_watch.is_some() && ready(&self.pollfds, self.pollfds.len() - 1) {
                self.check_oom();
            }
            if ready(&self.pollfds, 0)
                && let Some(status) = self.reap()
            {
                break status;
            }
        };
        self.finish(status)
    }

    /// Re-reads the watched `memory.events` (which re-arms its poll); a
    /// file that no longer reads (its cgroup is gone) is not watched again.
    fn check_oom(&mut self) {
        let Some(watch) = &self.oom_watch else {
            return;
        };
        let mut text = [0u8; 512];
        match std::os::unix::fs::FileExt::read_at(watch, &mut text, 0) {
            Ok(n) if n > 0 => {
                let text = String::from_utf8_lossy(&text[..n]);
                self.oom_seen |= oom_kill_count(&text, "oom_kill") > 0;
            }
            _ => self.oom_watch = None,
        }
    }

    /// Reads one chunk from output `i` to the log and attached clients;
    /// false at EOF (or a pty's EIO once its last user closed it).
    fn pump(&mut self, i: usize) -> bool {
        let output = &self.outputs[i];
        let fd = output.fd.as_raw_fd();
        let (tag, name) = (output.tag, output.name);
        // SAFETY: reading into our own buffer past the frame header.
        let n = unsafe { libc::read(fd, self.buf[HEADER..].as_mut_ptr().cast(), CHUNK) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            return matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            );
        }
        if n == 0 {
            return false;
        }
        let n = n as usize;
        if let Err(err) = self.log.write_chunk(name, &self.buf[HEADER..HEADER + n]) {
            eprintln!("berth-shim {}: write log: {err}", self.config.id);
        }
        if !self.clients.is_empty() {
            self.buf[0] = tag;
            self.buf[1..HEADER].copy_from_slice(&(n as u32).to_be_bytes());
            let frame = &self.buf[..HEADER + n];
            self.clients.retain_mut(|c| c.write_all(frame).is_ok());
        }
        true
    }

    fn accept_attach(&mut self) {
        let Ok((stream, _)) = self.attach.accept() else {
            return;
        };
        if self.clients.len() >= MAX_CLIENTS {
            return;
        }
        // Blocking with a timeout: a stuck client is dropped, not waited on forever.
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
        self.clients.push(stream);
        self.had_attach = true;
    }

    fn client_input(&mut self, i: usize) {
        let mut input = [0u8; 4096];
        let n = match self.clients[i].read(&mut input) {
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(_) => 0,
        };
        if n == 0 {
            self.clients.remove(i);
            // stdin_once: the first attach session owns stdin; its end is EOF.
            if self.config.stdin_once && !self.config.tty {
                self.stdin = None;
            }
            return;
        }
        if let Some(stdin) = &self.stdin {
            let mut file = std::mem::ManuallyDrop::new(
                // SAFETY: borrowed for the write only; ManuallyDrop never closes it.
                unsafe { File::from_raw_fd(stdin.as_raw_fd()) },
            );
            if file.write_all(&input[..n]).is_err() && !self.config.tty {
                self.stdin = None;
            }
        }
    }

    fn serve_control(&mut self) {
        let Ok((mut stream, _)) = self.control.accept() else {
            return;
        };
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let mut line = [0u8; 128];
        let mut len = 0;
        while len < line.len() {
            match stream.read(&mut line[len..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    len += n;
                    if line[..len].contains(&b'\n') {
                        break;
                    }
                }
            }
        }
        let command = std::str::from_utf8(&line[..len]).unwrap_or("").trim();
        let answer = match command.split_whitespace().collect::<Vec<_>>().as_slice() {
            // On failure the old file stays in use, so no output is lost.
            ["reopen"] => self.log.reopen().map_err(|e| {
                let message = format!(
                    "reopen log file {} (still writing to the old one): {e}",
                    self.config.log_path.display()
                );
                eprintln!("berth-shim {}: {message}", self.config.id);
                message
            }),
            ["resize", rows, cols] => self.resize(rows, cols),
            _ => Err(format!("unknown command {command:?}")),
        };
        let _ = match answer {
            Ok(()) => stream.write_all(b"ok\n"),
            Err(message) => stream.write_all(format!("error {message}\n").as_bytes()),
        };
    }

    fn resize(&self, rows: &str, cols: &str) -> Result<(), String> {
        let fd = self.console.ok_or("the container has no tty")?;
        let (Ok(rows), Ok(cols)) = (rows.parse::<u16>(), cols.parse::<u16>()) else {
            return Err(format!("bad size {rows}x{cols}"));
        };
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
        if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &size) } < 0 {
            return Err(format!("resize: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Reaps every exited child; the container's status once it exited.
    fn reap(&mut self) -> Option<WaitStatus> {
        while let Ok(Some(_)) = self.signals.read_signal() {}
        let mut container = None;
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return container,
                Ok(status) if status.pid() == Some(self.pid) => container = Some(status),
                Ok(_) => {}
            }
        }
    }

    fn finish(&mut self, status: WaitStatus) -> i32 {
        let finished_at = {
            let (secs, nanos) = crate::logfmt::now();
            secs * 1_000_000_000 + i64::from(nanos)
        };
        // Whatever is already in the pipes belongs in the log; later writers
        // (processes that outlive a shared PID namespace's member) are not waited for.
        for i in (0..self.outputs.len()).rev() {
            while self.pump(i) {
                // SAFETY: probing readiness of a fd we own, without blocking.
                let mut pfd = libc::pollfd {
                    fd: self.outputs[i].fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                if unsafe { libc::poll(&mut pfd, 1, 0) } <= 0 || pfd.revents & libc::POLLIN == 0 {
                    break;
                }
            }
        }
        let (exit_code, signal) = match status {
            WaitStatus::Exited(_, code) => (code, None),
            WaitStatus::Signaled(_, sig, _) => (128 + sig as i32, Some(sig as i32)),
            _ => (255, None),
        };
        // A kill just before the exit may not have woken the loop yet.
        self.check_oom();
        let own_gone = self
            .memory_events
            .as_ref()
            .is_some_and(|(file, _)| !file.exists());
        let oom_killed = self.oom_seen
            || self
                .memory_events
                .as_ref()
                .is_some_and(|(file, key)| oom_kills(file, key) > 0)
            || (own_gone
                && signal == Some(libc::SIGKILL)
                && !self.run_dir.join(KILLED_FILE).exists()
                && ancestor_counted_oom(&self.oom_ancestors));
        let record = ExitRecord {
            exit_code,
            signal,
            finished_at,
            oom_killed,
        };
        let bytes = serde_json::to_vec(&record).expect("exit record serializes");
        let _ = std::fs::remove_file(ATTACH_SOCKET);
        let _ = std::fs::remove_file(CONTROL_SOCKET);
        match write_private(&self.run_dir.join(EXIT_FILE), &bytes) {
            Ok(()) => 0,
            Err(err) => {
                eprintln!("berth-shim {}: write exit file: {err}", self.config.id);
                1
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oom_kill_counted_by_the_nearest_remaining_ancestor_since_create() {
        let dir = tempfile::tempdir().unwrap();
        let slice = dir.path().join("pod.slice");
        let outer = dir.path().join("kubepods.slice");
        std::fs::create_dir_all(&slice).unwrap();
        std::fs::create_dir_all(&outer).unwrap();
        let events = |n: u64| format!("low 0\nhigh 0\nmax 3\noom 1\noom_kill {n}\n");
        std::fs::write(slice.join("memory.events"), events(2)).unwrap();
        std::fs::write(outer.join("memory.events"), events(7)).unwrap();
        let ancestors = vec![
            (slice.join("memory.events"), 2),
            (outer.join("memory.events"), 7),
        ];
        assert!(!ancestor_counted_oom(&ancestors));
        std::fs::write(slice.join("memory.events"), events(3)).unwrap();
        assert!(ancestor_counted_oom(&ancestors));
        // The pod's slice gone too: the next one up decides.
        std::fs::remove_dir_all(&slice).unwrap();
        assert!(!ancestor_counted_oom(&ancestors));
        std::fs::write(outer.join("memory.events"), events(8)).unwrap();
        assert!(ancestor_counted_oom(&ancestors));
        assert!(!ancestor_counted_oom(&[]));
    }

    #[test]
    fn oom_kill_counters_parse_in_v1_and_v2_formats() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = dir.path().join("memory.oom_control");
        std::fs::write(&v1, "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n").unwrap();
        assert_eq!(oom_kills(&v1, "oom_kill"), 2);
        let v2 = dir.path().join("memory.events");
        std::fs::write(
            &v2,
            "low 0\nhigh 0\nmax 4\noom 1\noom_kill 0\noom_group_kill 0\n",
        )
        .unwrap();
        assert_eq!(oom_kills(&v2, "oom_kill"), 0);
        assert_eq!(oom_kills(&dir.path().join("gone"), "oom_kill"), 0);
    }
}
