//! A berthd with a local registry holding the `busybox` fixture (pulled),
//! its own log dir and cgroup parent, and helpers for pods with the host's
//! network and containers running `sh -c` scripts: the set-up the container
//! tests share.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_proto::cri::runtime_service_client::RuntimeServiceClient;
use berth_proto::cri::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatus, ContainerStatusRequest,
    CreateContainerRequest, ExecSyncRequest, ImageSpec, LinuxContainerConfig,
    LinuxContainerSecurityContext, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata, RemoveContainerRequest,
    RunPodSandboxRequest, StartContainerRequest, StopContainerRequest,
};
use tonic::transport::Channel;

use crate::registry::{self, Registry, Security};
use crate::{Berthd, Options, Paths, can_run, have_command, is_root};

pub type Client = RuntimeServiceClient<Channel>;

pub fn can_run_here() -> bool {
    can_run(
        is_root()
            && have_command("runc")
            && (external_registry().is_some() || registry::available()),
        "needs root, runc, docker-registry, skopeo and the fixture tools \
         (or BERTH_E2E_REGISTRY)",
    )
}

/// `BERTH_E2E_REGISTRY=<host:port>`: a plain-HTTP registry that already
/// holds the busybox fixture as `berth/busybox:latest`, used instead of
/// starting one. For the node VM, which has no registry of its own and
/// reaches the host's loopback as 10.0.2.2.
pub fn external_registry() -> Option<String> {
    std::env::var("BERTH_E2E_REGISTRY")
        .ok()
        .filter(|host| !host.is_empty())
}

pub struct World {
    /// The registry this world started; `None` with [`external_registry`].
    _registry: Option<Registry>,
    pub berthd: Option<Berthd>,
    pub options: Options,
    pub image: String,
    pub client: Client,
    pub logs: tempfile::TempDir,
    pub cgroup_parent: String,
}

/// The world's berthd runs the cgroupfs driver on every host: its pods name
/// path-form cgroup parents. (The systemd driver, the default where systemd
/// is PID 1, has its own test: systemd_driver.rs.)
fn options(registries_conf: &Path, conf_dir: &Path, extra: &str) -> Options {
    Options {
        config: format!(
            "cgroup_driver = \"cgroupfs\"\n[image]\nregistries_config = \"{}\"\n[cni]\nconf_dir = \"{}\"\n{extra}",
            registries_conf.display(),
            conf_dir.display()
        ),
        ..Options::default()
    }
}

impl World {
    pub async fn new(tag: &str) -> World {
        World::with_config(tag, "").await
    }

    /// [`World::new`] with `extra` appended to berthd's config file.
    pub async fn with_config(tag: &str, extra: &str) -> World {
        World::in_paths(tag, extra, Paths::create()).await
    }

    /// [`World::new`] with berthd logging at `level` (`--log-level`).
    pub async fn with_log_level(tag: &str, level: &str) -> World {
        World::start(tag, "", Paths::create(), &["--log-level", level]).await
    }

    /// [`World::with_config`] with berthd's state in `paths`.
    pub async fn in_paths(tag: &str, extra: &str, paths: Paths) -> World {
        World::start(tag, extra, paths, &[]).await
    }

    async fn start(tag: &str, extra: &str, paths: Paths, args: &[&str]) -> World {
        let (registry, host) = match external_registry() {
            Some(host) => (None, host),
            None => {
                let registry = Registry::start_empty(Security::Plain);
                registry.push("busybox", "berth/busybox:latest");
                let host = registry.host();
                (Some(registry), host)
            }
        };
        let logs = tempfile::Builder::new()
            .prefix("berth-e2e-logs-")
            .tempdir()
            .unwrap();
        let conf = logs.path().join("registries.conf");
        std::fs::write(&conf, registry::insecure_conf(&host)).unwrap();
        std::fs::create_dir(logs.path().join("net.d")).unwrap();
        let mut options = options(&conf, &logs.path().join("net.d"), extra);
        options.args = args.iter().map(|a| a.to_string()).collect();
        let berthd = Berthd::start_in(paths, options.clone()).await;
        let image = format!("{host}/berth/busybox:latest");
        crate::pull(&mut berthd.images().await, &image)
            .await
            .unwrap();
        let client = berthd.runtime().await;
        World {
            _registry: registry,
            berthd: Some(berthd),
            options,
            image,
            client,
            cgroup_parent: format!("/berth-e2e-{}-{tag}", std::process::id()),
            logs,
        }
    }

    /// Pushes fixture `fixture` to this world's registry and pulls it;
    /// its name. (A world on an external registry has busybox only.)
    pub async fn pull_fixture(&self, fixture: &str) -> String {
        let registry = self
            ._registry
            .as_ref()
            .expect("a world with its own registry (not BERTH_E2E_REGISTRY)");
        registry.push(fixture, &format!("berth/{fixture}:latest"));
        let name = registry.image(fixture);
        crate::pull(&mut self.berthd().images().await, &name)
            .await
            .unwrap();
        name
    }

    pub fn berthd(&self) -> &Berthd {
        self.berthd.as_ref().unwrap()
    }

    pub fn pod_config(&self, name: &str) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "e2e".into(),
                attempt: 0,
            }),
            log_directory: self.logs.path().join(name).display().to_string(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Node as i32,
                        pid: NamespaceMode::Container as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// [`World::pod_config`] with the pod's own network namespace, for a
    /// world that joined a network.
    pub fn networked_pod_config(&self, name: &str) -> PodSandboxConfig {
        let mut config = self.pod_config(name);
        let context = config
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut());
        if let Some(modes) = context.and_then(|c| c.namespace_options.as_mut()) {
            modes.network = NamespaceMode::Pod as i32;
        }
        config
    }

    /// Makes `net` this world's CNI network and waits until berthd says
    /// NetworkReady.
    pub async fn join_network(&mut self, net: &crate::net::Net) {
        for entry in std::fs::read_dir(net.conf_dir()).unwrap().flatten() {
            std::fs::copy(
                entry.path(),
                self.logs.path().join("net.d").join(entry.file_name()),
            )
            .unwrap();
        }
        crate::net::wait_network_ready(&mut self.client, |m| m.is_none()).await;
    }

    pub async fn pod(&mut self, name: &str) -> String {
        let config = self.pod_config(name);
        self.client
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .pod_sandbox_id
    }

    pub fn container(&self, name: &str, script: &str) -> ContainerConfig {
        container_config(&self.image, name, script)
    }

    pub async fn create(
        &mut self,
        pod: &str,
        config: ContainerConfig,
    ) -> Result<String, tonic::Status> {
        let sandbox = self.pod_config(&pod_name_of(&config));
        self.client
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(config),
                sandbox_config: Some(sandbox),
            })
            .await
            .map(|r| r.into_inner().container_id)
    }

    pub async fn run(&mut self, pod: &str, config: ContainerConfig) -> String {
        let id = self.create(pod, config).await.unwrap();
        self.client
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap();
        id
    }

    pub async fn status(&mut self, id: &str) -> ContainerStatus {
        self.client
            .container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap()
    }

    pub async fn wait_exit(&mut self, id: &str) -> ContainerStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = self.status(id).await;
            if status.state == ContainerState::ContainerExited as i32 {
                return status;
            }
            assert!(Instant::now() < deadline, "{id} did not exit: {status:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(&mut self, id: &str, timeout: i64) {
        self.client
            .stop_container(StopContainerRequest {
                container_id: id.into(),
                timeout,
            })
            .await
            .unwrap();
    }

    pub async fn remove(&mut self, id: &str) {
        self.client
            .remove_container(RemoveContainerRequest {
                container_id: id.into(),
            })
            .await
            .unwrap();
    }

    pub async fn remove_pod(&mut self, pod: &str) {
        crate::stop_and_remove_pod(&mut self.client, pod).await;
    }

    pub async fn exec(&mut self, id: &str, script: &str, timeout: i64) -> (i32, String, String) {
        let out = self
            .client
            .exec_sync(ExecSyncRequest {
                container_id: id.into(),
                cmd: vec!["sh".into(), "-c".into(), script.into()],
                timeout,
            })
            .await
            .unwrap()
            .into_inner();
        (
            out.exit_code,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The container's log lines' text (CRI format checked on the way).
    pub fn log_text(path: &Path) -> Vec<(String, String)> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines()
            .map(|line| {
                let parts: Vec<&str> = line.splitn(4, ' ').collect();
                assert_eq!(parts.len(), 4, "not a CRI log line: {line:?}");
                assert!(
                    parts[0].contains('T') && parts[0].ends_with('Z'),
                    "{line:?}"
                );
                assert!(parts[1] == "stdout" || parts[1] == "stderr", "{line:?}");
                assert_eq!(parts[2], "F", "{line:?}");
                (parts[1].to_string(), parts[3].to_string())
            })
            .collect()
    }

    /// Cgroup dirs left under this world's cgroup parent, in any hierarchy.
    pub fn cgroups_left(&self) -> Vec<PathBuf> {
        crate::cgroups_under(&self.cgroup_parent)
    }

    pub fn paths(&self) -> &Paths {
        self.berthd().paths()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // Only the (empty) parent dirs remain once every container is gone.
        if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
            for entry in entries.flatten() {
                let _ = std::fs::remove_dir(
                    entry
                        .path()
                        .join(self.cgroup_parent.trim_start_matches('/')),
                );
            }
        }
    }
}

/// Containers here are named `<pod>-<rest>`: the pod's name.
fn pod_name_of(config: &ContainerConfig) -> String {
    let name = &config.metadata.as_ref().unwrap().name;
    name.split('-').next().unwrap().to_string()
}

/// A container of `image` running `sh -c script`, logging to `<name>.log`,
/// labelled `app=<name>`, with what the kubelet sends for a pod whose
/// containers each have their own PID namespace.
pub fn container_config(image: &str, name: &str, script: &str) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: vec!["sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}.log"),
        labels: HashMap::from([("app".to_string(), name.to_string())]),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    pid: NamespaceMode::Container as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            resources: None,
        }),
        ..Default::default()
    }
}
