//! What a streaming session runs: the [`Backend`] trait, and
//! [`RuntimeBackend`], its implementation over the OCI runtime and
//! berth-shim.
//!
//! berthd resolves the container (or pod) when it answers the CRI RPC and
//! puts what is needed to reach it in the request; the backend runs it
//! when the client connects.

use std::future::Future;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;

use berth_runtime::oci::OciRuntime;
use berth_shim_protocol as shim;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::protocol::TermSize;
use crate::pty::PtyMaster;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A running container, as berthd found it when it made the URL.
#[derive(Debug, Clone)]
pub struct Container {
    pub id: String,
    /// The handler that runs it (`runc exec` goes through it).
    pub runtime: OciRuntime,
    /// Its run dir: berth-shim's `attach` and `ctl` sockets.
    pub run_dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct ExecRequest {
    pub container: Container,
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

#[derive(Debug, Clone)]
pub struct AttachRequest {
    pub container: Container,
    /// The container has a terminal (resize goes to it).
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

#[derive(Debug, Clone)]
pub struct PortForwardRequest {
    pub pod_id: String,
    /// The pod's pinned network namespace; `None` for a pod on the host's
    /// network, reached from berthd's own namespace.
    pub netns: Option<PathBuf>,
    /// The ports of the CRI request. WebSocket clients get these channels
    /// (as the kubelet's server does); when empty, the URL's `port` query
    /// parameters name them. SPDY clients name a port per stream.
    pub ports: Vec<u16>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("exec in container {id}: {source}")]
    Exec { id: String, source: std::io::Error },
    #[error("attach to container {id}: {source}")]
    Attach { id: String, source: std::io::Error },
    #[error("port-forward to port {port} of pod {pod}: {source}")]
    PortForward {
        pod: String,
        port: u16,
        source: std::io::Error,
    },
}

pub type Reader = Box<dyn AsyncRead + Send + Unpin>;
pub type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// A started exec or attach session.
pub struct Process {
    pub stdin: Option<Writer>,
    pub stdout: Option<Reader>,
    pub stderr: Option<Reader>,
    /// Applies a terminal size (tty only). Blocking, briefly.
    pub resize: Option<Arc<dyn Fn(TermSize) -> std::io::Result<()> + Send + Sync>>,
    /// Resolves when it ends: the exit code of an exec, `None` for attach.
    pub exit: BoxFuture<'static, std::io::Result<Option<i32>>>,
    /// Ends it early (the client went away).
    pub kill: Box<dyn FnOnce() + Send>,
}

/// Runs sessions; implemented for real by [`RuntimeBackend`].
pub trait Backend: Send + Sync + 'static {
    fn exec(&self, req: &ExecRequest) -> BoxFuture<'static, Result<Process, BackendError>>;
    fn attach(&self, req: &AttachRequest) -> BoxFuture<'static, Result<Process, BackendError>>;
    /// A connection to `127.0.0.1:port` inside the pod's network namespace.
    fn port_forward(
        &self,
        req: &PortForwardRequest,
        port: u16,
    ) -> BoxFuture<'static, Result<tokio::net::TcpStream, BackendError>>;
}

/// Exec through the OCI runtime, attach through berth-shim, port-forward
/// through `setns` into the pod's network namespace.
#[derive(Debug, Clone, Copy, Default)]
pub struct RuntimeBackend;

impl Backend for RuntimeBackend {
    fn exec(&self, req: &ExecRequest) -> BoxFuture<'static, Result<Process, BackendError>> {
        let req = req.clone();
        Box::pin(async move {
            let id = req.container.id.clone();
            exec(req).map_err(|source| BackendError::Exec { id, source })
        })
    }

    fn attach(&self, req: &AttachRequest) -> BoxFuture<'static, Result<Process, BackendError>> {
        let req = req.clone();
        Box::pin(async move {
            let id = req.container.id.clone();
            attach(req).map_err(|source| BackendError::Attach { id, source })
        })
    }

    fn port_forward(
        &self,
        req: &PortForwardRequest,
        port: u16,
    ) -> BoxFuture<'static, Result<tokio::net::TcpStream, BackendError>> {
        let req = req.clone();
        Box::pin(async move {
            let netns = req.netns.clone();
            let (tx, rx) = tokio::sync::oneshot::channel();
            // setns changes only the calling thread: a thread of our own,
            // which ends right after, keeps every other one in berthd's
            // namespace. The socket stays in the pod's.
            let spawned = std::thread::Builder::new()
                .name("berth-portfwd".into())
                .spawn(move || {
                    let _ = tx.send(connect_in_netns(netns.as_deref(), port));
                });
            let result = match spawned {
                Err(err) => Err(err),
                Ok(_) => rx
                    .await
                    .unwrap_or_else(|_| Err(std::io::Error::other("connect thread died"))),
            };
            result
                .and_then(|s| {
                    s.set_nonblocking(true)?;
                    tokio::net::TcpStream::from_std(s)
                })
                .map_err(|source| BackendError::PortForward {
                    pod: req.pod_id.clone(),
                    port,
                    source,
                })
        })
    }
}

fn connect_in_netns(
    netns: Option<&std::path::Path>,
    port: u16,
) -> std::io::Result<std::net::TcpStream> {
    if let Some(netns) = netns {
        let ns = std::fs::File::open(netns)?;
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
    }
    std::net::TcpStream::connect(("127.0.0.1", port))
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Starts `runc exec` in the foreground: its exit status is the process's.
/// With a tty, runc gets a pty of ours as its terminal and relays it to the
/// container's own pty (runc's `--console-socket` hand-off needs `--detach`,
/// and then nobody but a subreaper could collect the exit code); a resize of
/// our pty reaches runc as SIGWINCH and runc applies it inside.
fn exec(req: ExecRequest) -> std::io::Result<Process> {
    let c = &req.container;
    let exec = c.runtime.exec_command(&c.id, &req.cmd, req.tty)?;
    let (dir, pid_file) = (exec.dir, exec.pid_file);
    let mut cmd = tokio::process::Command::from(exec.command);
    cmd.kill_on_drop(true);
    let mut pty = None;
    if req.tty {
        let winsize = nix::pty::Winsize {
            ws_row: 24,
            ws_col: 80,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pair = nix::pty::openpty(Some(&winsize), None)?;
        let slave = pair.slave;
        cmd.stdin(Stdio::from(slave.try_clone()?));
        cmd.stdout(Stdio::from(slave.try_clone()?));
        cmd.stderr(Stdio::from(slave));
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        pty = Some(pair.master);
    } else {
        let pipe = |wanted: bool| {
            if wanted {
                Stdio::piped()
            } else {
                Stdio::null()
            }
        };
        cmd.stdin(pipe(req.stdin));
        cmd.stdout(pipe(req.stdout));
        cmd.stderr(pipe(req.stderr));
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(err) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(err);
        }
    };
    // The parent's copies of the slave are gone with `cmd`: the master then
    // reads EOF (EIO) once runc exits.
    drop(cmd);
    let mut process = Process {
        stdin: None,
        stdout: None,
        stderr: None,
        resize: None,
        exit: Box::pin(async { Ok(None) }),
        kill: Box::new(|| {}),
    };
    if let Some(master) = pty {
        let writer = PtyMaster::new(master.try_clone()?)?;
        let reader = PtyMaster::new(master)?;
        let resize_fd = Arc::new(reader.fd().try_clone()?);
        if req.stdin {
            process.stdin = Some(Box::new(writer));
        }
        if req.stdout {
            process.stdout = Some(Box::new(reader));
        }
        process.resize = Some(Arc::new(move |size: TermSize| {
            set_winsize(&resize_fd, size)
        }));
    } else {
        process.stdin = child.stdin.take().map(|s| Box::new(s) as Writer);
        process.stdout = child.stdout.take().map(|s| Box::new(s) as Reader);
        process.stderr = child.stderr.take().map(|s| Box::new(s) as Reader);
    }
    let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
    process.kill = Box::new(move || {
        let _ = kill_tx.send(());
    });
    process.exit = Box::pin(async move {
        let status = tokio::select! {
            status = child.wait() => status,
            Ok(()) = kill_rx => kill_exec(&pid_file, &mut child).await,
        };
        let _ = std::fs::remove_dir_all(&dir);
        Ok(Some(exit_code(status?)))
    });
    Ok(process)
}

/// How long runc may take to name the exec'd process, and then to exit
/// after it was killed.
const KILL_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Ends a `runc exec` whose client went away. Killing runc alone would
/// leave the process running in the container, and runc names it (in the
/// pid file) only once it started: so wait for the name, kill the process
/// and everything it started (runc waits for the last holder of its
/// output pipes), and runc exits with them. A runc that never names one
/// is stuck in set-up and is killed itself.
async fn kill_exec(
    pid_file: &std::path::Path,
    runc: &mut tokio::process::Child,
) -> std::io::Result<std::process::ExitStatus> {
    let deadline = tokio::time::Instant::now() + KILL_GRACE;
    while tokio::time::Instant::now() < deadline {
        // runc writes the file by rename: it is whole or absent.
        let pid = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        if let Some(pid) = pid {
            let _ = tokio::task::spawn_blocking(move || kill_tree(pid)).await;
            break;
        }
        let poll = std::time::Duration::from_millis(10);
        if let Ok(status) = tokio::time::timeout(poll, runc.wait()).await {
            return status;
        }
    }
    match tokio::time::timeout(KILL_GRACE, runc.wait()).await {
        Ok(status) => status,
        Err(_) => {
            runc.start_kill()?;
            runc.wait().await
        }
    }
}

/// SIGKILLs `root` and its descendants. They are stopped first, scan after
/// scan, until no new one appears: a stopped process cannot fork, so none
/// escapes to the container's init.
fn kill_tree(root: i32) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let mut stopped = std::collections::BTreeSet::new();
    loop {
        let tree = descendants(root);
        let new: Vec<i32> = tree.difference(&stopped).copied().collect();
        if new.is_empty() {
            break;
        }
        for pid in new {
            let _ = kill(Pid::from_raw(pid), Signal::SIGSTOP);
            stopped.insert(pid);
        }
    }
    for pid in stopped {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// `root` (if alive) and every process below it, from /proc.
fn descendants(root: i32) -> std::collections::BTreeSet<i32> {
    let mut children: std::collections::HashMap<i32, Vec<i32>> = Default::default();
    let mut alive = false;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parens.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if pid == root {
            alive = true;
        }
        if let Some(ppid) = ppid {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut tree = std::collections::BTreeSet::new();
    if !alive {
        return tree;
    }
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        if tree.insert(pid) {
            todo.extend(children.get(&pid).into_iter().flatten().copied());
        }
    }
    tree
}

fn set_winsize(fd: &OwnedFd, size: TermSize) -> std::io::Result<()> {
    let ws = libc::winsize {
        ws_row: size.height,
        ws_col: size.width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Joins berth-shim's attach socket: its frames (tag, u32 length, bytes)
/// are split into stdout and stderr; input goes straight to it.
fn attach(req: AttachRequest) -> std::io::Result<Process> {
    let socket = shim::connect_unix(&req.container.run_dir.join(shim::ATTACH_SOCKET))?;
    socket.set_nonblocking(true)?;
    let socket = tokio::net::UnixStream::from_std(socket)?;
    let (mut from_shim, to_shim) = socket.into_split();
    let (out_r, out_w) = tokio::io::simplex(64 << 10);
    let (err_r, err_w) = tokio::io::simplex(64 << 10);
    let mut out_w = req.stdout.then_some(out_w);
    let mut err_w = req.stderr.then_some(err_w);
    let demux = tokio::spawn(async move {
        let mut buf = vec![0u8; 32 << 10];
        loop {
            let mut head = [0u8; 5];
            if from_shim.read_exact(&mut head).await.is_err() {
                break;
            }
            let mut left = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            let sink = if head[0] == shim::STREAM_STDERR {
                &mut err_w
            } else {
                &mut out_w
            };
            while left > 0 {
                let n = left.min(buf.len());
                if from_shim.read_exact(&mut buf[..n]).await.is_err() {
                    return;
                }
                left -= n;
                // A client that stopped reading a stream loses only it.
                if let Some(w) = sink.as_mut()
                    && w.write_all(&buf[..n]).await.is_err()
                {
                    *sink = None;
                }
            }
        }
    });
    let abort = demux.abort_handle();
    let run_dir = req.container.run_dir.clone();
    // Dropping the write half shuts it down, which the shim takes as the
    // client detaching: without stdin it is held until the session ends.
    let (stdin, idle_write_half) = if req.stdin {
        (Some(Box::new(to_shim) as Writer), None)
    } else {
        (None, Some(to_shim))
    };
    Ok(Process {
        stdin,
        stdout: req.stdout.then(|| Box::new(out_r) as Reader),
        stderr: req.stderr.then(|| Box::new(err_r) as Reader),
        resize: req.tty.then(|| {
            Arc::new(move |size: TermSize| {
                shim::control(&run_dir, &format!("resize {} {}", size.height, size.width))
            }) as Arc<dyn Fn(TermSize) -> std::io::Result<()> + Send + Sync>
        }),
        // The shim closes attach sockets when the container exits.
        exit: Box::pin(async move {
            let _ = demux.await;
            drop(idle_write_half);
            Ok(None)
        }),
        kill: Box::new(move || abort.abort()),
    })
}
