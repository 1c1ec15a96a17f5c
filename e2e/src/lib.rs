//! The end-to-end harness: the real `berthd` binary on a throw-away root,
//! run root and socket, driven over CRI gRPC as the kubelet and crictl drive
//! it.
//!
//! A [`Berthd`] cleans up after itself when dropped, also when the test
//! panicked: it kills berthd and every process whose command line names its
//! temporary dir (shims, runtimes), detaches every mount below that dir, and
//! prints berthd's log so a failure explains itself.

pub mod stream_client;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use berth_proto::cri::image_service_client::ImageServiceClient;
use berth_proto::cri::runtime_service_client::RuntimeServiceClient;
use hyper_util::rt::TokioIo;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tonic::transport::{Channel, Endpoint};

pub use berth_proto::cri;

pub mod bundles;
pub mod fault_registry;
pub mod net;
pub mod registry;
pub mod systemd;
pub mod world;

/// The benchmarks' quantiles (`0.5` for p50, ...) of `values`, by nearest
/// rank; `values` must not be empty.
pub fn quantiles<const N: usize>(mut values: Vec<f64>, qs: [f64; N]) -> [f64; N] {
    values.sort_by(f64::total_cmp);
    qs.map(|q| values[((values.len() - 1) as f64 * q).round() as usize])
}

/// Whether a test can run here. When it cannot, it says why on stderr and
/// returns false so the test returns early; under `CI=true` it panics
/// instead, so CI never counts a test that did not run as passed.
pub fn can_run(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("cannot run this test under CI: {what}");
    }
    eprintln!("SKIPPED (not counted as a pass under CI=true): {what}");
    false
}

/// Real containers, mounts and namespaces need root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether `name` is an executable in `PATH` (or an existing path).
pub fn have_command(name: &str) -> bool {
    let direct = Path::new(name);
    if direct.is_absolute() {
        return direct.exists();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
}

/// Writes an executable script (a fault-injecting fake) through `install`,
/// so this process never holds it open for writing: a test thread forking
/// meanwhile would inherit that descriptor and make its exec fail with
/// ETXTBSY.
pub fn write_script(path: &Path, script: &str) {
    let source = path.with_extension("src");
    std::fs::write(&source, script).unwrap();
    let status = Command::new("install")
        .args(["-m", "0755"])
        .arg(&source)
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "install {}", path.display());
    std::fs::remove_file(&source).unwrap();
}

const START_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// The directory holding the workspace's freshly built binaries.
///
/// The first call builds `berthd` and `berth-shim` with the cargo that runs
/// the tests, so `cargo test` alone always tests the current source.
/// `BERTH_BIN_DIR=<dir>` uses the binaries in `<dir>` as they are and runs
/// no cargo: for test binaries run where there is no workspace (the node VM,
/// `hack/vm/smoke.sh`).
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("BERTH_BIN_DIR") {
            return PathBuf::from(dir);
        }
        // Test executables live in <target>/<profile>/deps; the binaries are
        // built with the same profile so a `--release` run tests release ones.
        let exe = std::env::current_exe().expect("test executable path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("<target>/<profile>")
            .to_path_buf();
        let profile = match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev".to_string(),
            Some(name) => name.to_string(),
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("e2e sits in the workspace");
        let status = Command::new(cargo)
            .current_dir(workspace)
            .args([
                "build",
                "--quiet",
                "--profile",
                &profile,
                "-p",
                "berthd",
                "-p",
                "berth-shim",
                "--bins",
            ])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building berthd and berth-shim failed");
        dir
    })
}

pub fn berthd_bin() -> PathBuf {
    bin_dir().join("berthd")
}

/// How to start a berthd under test.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Written to the temporary config file passed with `--config`.
    pub config: String,
    /// Extra command-line arguments.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Use this socket instead of one inside the temporary dir.
    pub socket: Option<PathBuf>,
}

/// Throw-away paths for one berthd.
pub struct Paths {
    dir: tempfile::TempDir,
}

impl Paths {
    pub fn create() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("berth-e2e-")
            .tempdir()
            .expect("create temp dir");
        Paths { dir }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn root(&self) -> PathBuf {
        self.dir().join("root")
    }

    /// Puts [`Paths::root`] on a tmpfs of `bytes` (before berthd starts),
    /// so a test can fill it; dropping the paths unmounts it.
    pub fn mount_root_tmpfs(&self, bytes: u64) {
        std::fs::create_dir_all(self.root()).expect("create root dir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(self.root())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mount a tmpfs on {}",
            self.root().display()
        );
    }

    /// Resizes the tmpfs of [`Paths::mount_root_tmpfs`].
    pub fn resize_root_tmpfs(&self, bytes: u64) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={bytes}")])
            .arg(self.root())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "resize the tmpfs on {}",
            self.root().display()
        );
    }

    pub fn run_root(&self) -> PathBuf {
        self.dir().join("run")
    }

    pub fn socket(&self) -> PathBuf {
        self.run_root().join("berth.sock")
    }

    pub fn config_file(&self) -> PathBuf {
        self.dir().join("berth.toml")
    }

    pub fn log_file(&self) -> PathBuf {
        self.dir().join("berthd.log")
    }
}

/// A `berthd` command for `paths` with `options`, not yet started: flags
/// point every path into the temporary dir and keep host config out.
pub fn command(paths: &Paths, options: &Options) -> Command {
    std::fs::write(paths.config_file(), &options.config).expect("write config");
    let socket = options.socket.clone().unwrap_or_else(|| paths.socket());
    let mut cmd = Command::new(berthd_bin());
    cmd.arg("--config")
        .arg(paths.config_file())
        .arg("--config-dir")
        .arg(paths.dir().join("berth.d"))
        .arg("--root")
        .arg(paths.root())
        .arg("--run-root")
        .arg(paths.run_root())
        .arg("--listen")
        .arg(socket)
        .args(&options.args)
        .envs(options.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null());
    cmd
}

/// A running berthd and everything it made.
pub struct Berthd {
    child: Option<Child>,
    socket: PathBuf,
    /// Taken by [`Berthd::stop_with`], which hands them back to the test.
    paths: Option<Paths>,
}

impl Berthd {
    pub async fn start() -> Berthd {
        Self::start_with(Options::default()).await
    }

    /// berthd with `registries` as its registries.conf (in the returned
    /// dir, which must outlive it) and more `[image]` keys.
    pub async fn start_with_registries(
        registries: &str,
        image_keys: &str,
    ) -> (Berthd, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("a temp dir");
        let conf = dir.path().join("registries.conf");
        std::fs::write(&conf, registries).expect("write registries.conf");
        let berthd = Berthd::start_with(Options {
            config: format!(
                "[image]\nregistries_config = \"{}\"\n{image_keys}",
                conf.display()
            ),
            ..Options::default()
        })
        .await;
        (berthd, dir)
    }

    pub async fn start_with(options: Options) -> Berthd {
        Self::start_in(Paths::create(), options).await
    }

    /// Starts berthd on existing paths: how a test restarts it on the same state.
    pub async fn start_in(paths: Paths, options: Options) -> Berthd {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(paths.log_file())
            .expect("open log file");
        let child = command(&paths, &options)
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn berthd");
        let socket = options.socket.clone().unwrap_or_else(|| paths.socket());
        let mut berthd = Berthd {
            child: Some(child),
            socket,
            paths: Some(paths),
        };
        berthd.wait_ready().await;
        berthd
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "berthd exited during start-up with {status}; its log:\n{}",
                    self.log()
                );
            }
            if tokio::net::UnixStream::connect(&self.socket).await.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "berthd did not listen on {} within {START_TIMEOUT:?}; its log:\n{}",
                self.socket.display(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn paths(&self) -> &Paths {
        self.paths.as_ref().expect("paths are kept until stop_with")
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("berthd running").id() as i32)
    }

    /// Everything berthd wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.paths().log_file()).unwrap_or_default()
    }

    pub async fn channel(&self) -> Channel {
        connect(&self.socket).await
    }

    pub async fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel().await)
    }

    pub async fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel().await)
    }

    /// Sends `signal` and waits for berthd to exit; returns its exit status
    /// and hands back the paths so the test can inspect or reuse them.
    pub async fn stop_with(mut self, signal: Signal) -> (ExitStatus, Paths) {
        let mut child = self.child.take().expect("berthd running");
        let status = signal_and_wait(&mut child, signal).await;
        let paths = self.paths.take().expect("paths are kept until stop_with");
        (status, paths)
    }
}

/// Connects a CRI gRPC channel to a unix socket.
pub async fn connect(socket: &Path) -> Channel {
    let socket = socket.to_path_buf();
    Endpoint::try_from("http://[::1]:50051")
        .expect("static URI")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .expect("connect to berthd socket")
}

/// Polls rather than blocks, so the test's own runtime keeps serving its
/// gRPC connections (berthd's graceful shutdown talks to them).
async fn signal_and_wait(child: &mut Child, signal: Signal) -> ExitStatus {
    let pid = Pid::from_raw(child.id() as i32);
    let _ = kill(pid, signal);
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("wait for berthd") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("berthd did not exit within {STOP_TIMEOUT:?} of {signal}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Drop for Berthd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(paths) = &self.paths
            && std::thread::panicking()
        {
            eprintln!(
                "---- berthd log ({}) ----\n{}",
                paths.log_file().display(),
                self.log()
            );
        }
    }
}

impl Drop for Paths {
    fn drop(&mut self) {
        kill_processes_under(self.dir());
        unmount_under(self.dir());
    }
}

/// The names in `dir`, sorted; none when it does not exist.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// PullImage of `name` without credentials; the image ref on success.
pub async fn pull(
    images: &mut ImageServiceClient<tonic::transport::Channel>,
    name: &str,
) -> Result<String, tonic::Status> {
    images
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: name.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

/// ImageStatus of `name`: the image, `None` when the store has none.
pub async fn image_status(
    images: &mut ImageServiceClient<tonic::transport::Channel>,
    name: &str,
) -> Option<cri::Image> {
    images
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: name.into(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
        .filter(|i| !i.id.is_empty())
}

/// The IDs ListPodSandbox answers, sorted.
pub async fn pod_ids(client: &mut RuntimeServiceClient<tonic::transport::Channel>) -> Vec<String> {
    let listed = client.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None });
    let items = listed.await.expect("ListPodSandbox").into_inner().items;
    sorted(items.into_iter().map(|p| p.id))
}

/// The IDs ListContainers answers, sorted.
pub async fn container_ids(
    client: &mut RuntimeServiceClient<tonic::transport::Channel>,
) -> Vec<String> {
    let listed = client.list_containers(cri::ListContainersRequest { filter: None });
    let containers = listed
        .await
        .expect("ListContainers")
        .into_inner()
        .containers;
    sorted(containers.into_iter().map(|c| c.id))
}

/// The IDs ListImages answers, sorted.
pub async fn image_ids(images: &mut ImageServiceClient<tonic::transport::Channel>) -> Vec<String> {
    let listed = images.list_images(cri::ListImagesRequest { filter: None });
    let all = listed.await.expect("ListImages").into_inner().images;
    sorted(all.into_iter().map(|i| i.id))
}

fn sorted(ids: impl Iterator<Item = String>) -> Vec<String> {
    let mut ids: Vec<String> = ids.collect();
    ids.sort();
    ids
}

/// StopPodSandbox then RemovePodSandbox, both required to succeed: how
/// a test ends a pod (and the kubelet removes one).
pub async fn stop_and_remove_pod(
    client: &mut RuntimeServiceClient<tonic::transport::Channel>,
    id: &str,
) {
    client
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("stop pod {id}: {e:?}"));
    client
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("remove pod {id}: {e:?}"));
}

/// Pids of the processes whose command line holds every one of `needles`.
pub fn pids_mentioning(needles: &[&[u8]]) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let all = needles
                .iter()
                .all(|n| cmd.windows(n.len()).any(|w| w == *n));
            all.then_some(pid)
        })
        .collect()
}

/// How many berth-shim processes have `dir` in their command line: the
/// shims of a berthd whose paths are under `dir`.
pub fn shims_under(dir: &Path) -> usize {
    pids_mentioning(&[b"berth-shim", dir.as_os_str().as_encoded_bytes()]).len()
}

/// Kills every process whose command line mentions `dir`: shims and OCI
/// runtimes that berthd under test left behind.
pub fn kill_processes_under(dir: &Path) {
    let me = std::process::id() as i32;
    for pid in pids_mentioning(&[dir.as_os_str().as_encoded_bytes()]) {
        if pid != me {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Every file (not dir) below `dir`, recursively; none when it does not exist.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    files
}

/// Cgroup dirs left below the cgroup parent `parent`, in any hierarchy.
pub fn cgroups_under(parent: &str) -> Vec<PathBuf> {
    let mut left = Vec::new();
    for entry in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let dir = entry.path().join(parent.trim_start_matches('/'));
        if let Ok(children) = std::fs::read_dir(&dir) {
            left.extend(
                children
                    .flatten()
                    .filter(|c| c.path().is_dir())
                    .map(|c| c.path()),
            );
        }
    }
    left
}

/// RunPodSandbox with the default handler; the pod's ID.
pub async fn run_pod(
    client: &mut RuntimeServiceClient<tonic::transport::Channel>,
    config: cri::PodSandboxConfig,
) -> Result<String, tonic::Status> {
    client
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
}

/// Every mount point at or below `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    berth_runtime::overlay::mounts_under(dir).unwrap_or_default()
}

fn unmount_under(dir: &Path) {
    for mount in mounts_under(dir) {
        let _ = nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH);
    }
}
