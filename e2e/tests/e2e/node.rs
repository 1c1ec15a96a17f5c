//! The node suite: what only a real node shows (systemd as PID 1 running
//! berthd from `dist/berth.service`, cgroup v2 only, crun beside runc).
//! `hack/vm/suite.sh` runs these cases in the node VM with `--ignored`,
//! against the berthd that `systemctl start berth` started there; on any
//! other host they are listed as ignored, never passed.
//!
//! Environment (set by the suite):
//! - `BERTH_NODE_IMAGE`: the busybox fixture in the host's registry
//!   (`10.0.2.2:<port>/berth/busybox:latest`); required, so a stray
//!   `--ignored` run elsewhere fails instead of testing nothing;
//! - `BERTH_NODE_SOCKET`: berthd's socket (default `/run/berth/berth.sock`);
//! - `BERTH_NODE_RUN_ROOT`: berthd's run root (default `/run/berth`);
//! - `BERTH_NODE_CGROUP_DRIVER`: the driver the suite configured berthd
//!   with; it must be the one `RuntimeConfig` reports;
//! - `BERTH_NODE_UNIT` (default `berth`), `BERTH_NODE_CRUN_HANDLER`
//!   (default `crun`).
//!
//! Every case runs under the driver berthd reports, cgroupfs or systemd;
//! the suite runs them once per driver.
//!
//! The restart case restarts berthd under the other cases' feet: the suite
//! runs it on its own (`--exact restart_keeps_running_containers`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_e2e::cri::image_service_client::ImageServiceClient;
use berth_e2e::cri::runtime_service_client::RuntimeServiceClient;
use berth_e2e::cri::{
    self, ContainerState, ContainerStatsRequest, ContainerStatusRequest, CreateContainerRequest,
    ExecSyncRequest, LinuxContainerResources, PodSandboxConfig, PodSandboxStatsRequest,
    RemoveContainerRequest, RunPodSandboxRequest, RuntimeConfigRequest, StartContainerRequest,
    StopContainerRequest, UpdateContainerResourcesRequest,
};
use berth_e2e::systemd::{scopes_and_slices_with, show, systemctl};
use tonic::transport::Channel;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// How the configured cgroup driver places pods and containers, written
/// out here from the kubelet's and systemd's conventions rather than asked
/// of Berth's own code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Driver {
    Cgroupfs,
    Systemd,
}

impl Driver {
    fn from_runtime_config(reported: i32) -> Driver {
        match cri::CgroupDriver::try_from(reported) {
            Ok(cri::CgroupDriver::Cgroupfs) => Driver::Cgroupfs,
            Ok(cri::CgroupDriver::Systemd) => Driver::Systemd,
            Err(e) => panic!("berthd reports an unknown cgroup driver {reported}: {e}"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Driver::Cgroupfs => "cgroupfs",
            Driver::Systemd => "systemd",
        }
    }

    /// The `cgroup_parent` a kubelet with this driver sends for a Burstable
    /// pod with `uid` (the systemd form has the UID's dashes as
    /// underscores: a dash nests slices).
    fn pod_parent(self, uid: &str) -> String {
        match self {
            Driver::Cgroupfs => format!("/kubepods/burstable/pod{uid}"),
            Driver::Systemd => format!("kubepods-burstable-pod{}.slice", uid.replace('-', "_")),
        }
    }

    /// The pod's cgroup dir: the parent path, or the slice as systemd
    /// nests it by the dashes in its name.
    fn pod_dir(self, parent: &str) -> PathBuf {
        match self {
            Driver::Cgroupfs => Path::new(CGROUP_ROOT).join(parent.trim_start_matches('/')),
            Driver::Systemd => Path::new(CGROUP_ROOT)
                .join("kubepods.slice")
                .join("kubepods-burstable.slice")
                .join(parent),
        }
    }

    /// Where container `id` of a pod with `parent` has its cgroup: a dir
    /// named by the ID, or the transient scope `berth-<id>.scope`.
    fn container_dir(self, parent: &str, id: &str) -> PathBuf {
        match self {
            Driver::Cgroupfs => self.pod_dir(parent).join(id),
            Driver::Systemd => self.pod_dir(parent).join(scope(id)),
        }
    }
}

/// The transient unit of container `id` under the systemd driver.
fn scope(id: &str) -> String {
    format!("berth-{id}.scope")
}

/// Where the container's limits are written: its cgroup, or the
/// `container` subgroup that crun (1.8) makes in a delegated systemd
/// scope and runs the container in.
fn limits_dir(dir: &Path) -> PathBuf {
    let sub = dir.join("container");
    if sub.is_dir() { sub } else { dir.to_path_buf() }
}

/// Waits up to a minute (the node VM is slow) for `path` to be gone.
async fn wait_gone(path: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} left after {what}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pod_uid(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// The systemd-started berthd of the node, and what the suite told us.
struct Node {
    client: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    image: String,
    driver: Driver,
    run_root: PathBuf,
    /// Pod log dirs, removed at the end.
    logs: tempfile::TempDir,
}

impl Node {
    async fn connect() -> Node {
        let image = std::env::var("BERTH_NODE_IMAGE").unwrap_or_else(|_| {
            panic!(
                "BERTH_NODE_IMAGE is not set: the node cases run in the node VM (hack/vm/suite.sh)"
            )
        });
        assert!(
            Path::new(CGROUP_ROOT).join("cgroup.controllers").exists(),
            "{CGROUP_ROOT} is not a cgroup v2 root: the node cases need a v2-only node"
        );
        let socket = PathBuf::from(env_or("BERTH_NODE_SOCKET", "/run/berth/berth.sock"));
        let channel = berth_e2e::connect(&socket).await;
        let mut client = RuntimeServiceClient::new(channel.clone());
        let config = client
            .runtime_config(RuntimeConfigRequest {})
            .await
            .expect("RuntimeConfig")
            .into_inner();
        let reported = config.linux.expect("RuntimeConfig.linux").cgroup_driver;
        let driver = Driver::from_runtime_config(reported);
        if let Ok(wanted) = std::env::var("BERTH_NODE_CGROUP_DRIVER") {
            assert_eq!(driver.name(), wanted, "berthd runs another cgroup driver");
        }
        let mut images = ImageServiceClient::new(channel);
        berth_e2e::pull(&mut images, &image)
            .await
            .unwrap_or_else(|e| panic!("pull {image}: {e:?}"));
        let logs = tempfile::Builder::new()
            .prefix("berth-node-logs-")
            .tempdir()
            .unwrap();
        Node {
            client,
            images,
            image,
            driver,
            run_root: PathBuf::from(env_or("BERTH_NODE_RUN_ROOT", "/run/berth")),
            logs,
        }
    }

    /// A Burstable pod as the kubelet sends it, with the node's network
    /// (no CNI config needed); returns its ID and cgroup parent.
    async fn pod(&mut self, name: &str, handler: &str) -> (String, String) {
        let parent = self.driver.pod_parent(&pod_uid(name));
        let config = self.pod_config(name, &parent);
        let id = self
            .client
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: handler.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox {name}: {e:?}"))
            .into_inner()
            .pod_sandbox_id;
        (id, parent)
    }

    /// What the kubelet sends for pod `name`: the node's network, a PID
    /// namespace per container, the pod's IPC namespace.
    fn pod_config(&self, name: &str, parent: &str) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: pod_uid(name),
                namespace: "node".into(),
                attempt: 0,
            }),
            log_directory: self.logs.path().join(name).display().to_string(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: parent.into(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: cri::NamespaceMode::Node as i32,
                        pid: cri::NamespaceMode::Container as i32,
                        ipc: cri::NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Creates and starts `sh -c script` in `pod`, with `resources`.
    async fn run(
        &mut self,
        pod: &str,
        pod_name: &str,
        parent: &str,
        script: &str,
        resources: Option<LinuxContainerResources>,
    ) -> String {
        let name = format!("{pod_name}-c");
        let mut config = berth_e2e::world::container_config(&self.image, &name, script);
        let linux = config.linux.as_mut().unwrap();
        linux.resources = resources;
        // No AppArmor profile asked for: on an AppArmor node that is
        // berth-default, as the kubelet's pods get.
        let id = self
            .client
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(config),
                sandbox_config: Some(self.pod_config(pod_name, parent)),
            })
            .await
            .unwrap_or_else(|e| panic!("CreateContainer in {pod_name}: {e:?}"))
            .into_inner()
            .container_id;
        self.client
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("StartContainer {id}: {e:?}"));
        id
    }

    async fn status(&mut self, id: &str) -> (cri::ContainerStatus, HashMap<String, String>) {
        let reply = self
            .client
            .container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: true,
            })
            .await
            .unwrap_or_else(|e| panic!("ContainerStatus {id}: {e:?}"))
            .into_inner();
        (reply.status.expect("status"), reply.info)
    }

    /// The container's pid from the verbose status.
    async fn pid(&mut self, id: &str) -> i64 {
        let (_, info) = self.status(id).await;
        let info: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
        info["pid"].as_i64().expect("verbose info has the pid")
    }

    async fn wait_exit(&mut self, id: &str) -> cri::ContainerStatus {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (status, _) = self.status(id).await;
            if status.state == ContainerState::ContainerExited as i32 {
                return status;
            }
            assert!(Instant::now() < deadline, "{id} did not exit: {status:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn exec(&mut self, id: &str, script: &str) -> (i32, String) {
        let reply = self
            .client
            .exec_sync(ExecSyncRequest {
                container_id: id.into(),
                cmd: vec!["sh".into(), "-c".into(), script.into()],
                timeout: 60,
            })
            .await
            .unwrap_or_else(|e| panic!("ExecSync in {id}: {e:?}"))
            .into_inner();
        (
            reply.exit_code,
            String::from_utf8_lossy(&reply.stdout).into_owned(),
        )
    }

    /// Stops and removes the pod; then nothing of it may be left below its
    /// cgroup parent. With cgroupfs the kubelet (here: the test) removes
    /// the parent itself; with systemd Berth stops the pod's slice, which
    /// it caused systemd to start, and no unit of the pod may be left.
    async fn remove_pod(&mut self, pod: &str, parent: &str) {
        berth_e2e::stop_and_remove_pod(&mut self.client, pod).await;
        let dir = self.driver.pod_dir(parent);
        match self.driver {
            Driver::Cgroupfs => {
                let left: Vec<String> = berth_e2e::entries(&dir)
                    .into_iter()
                    .filter(|e| dir.join(e).is_dir())
                    .collect();
                assert!(
                    left.is_empty(),
                    "cgroups left in {}: {left:?}",
                    dir.display()
                );
                remove_kubelet_cgroups(&dir);
            }
            Driver::Systemd => {
                wait_gone(&dir, "RemovePodSandbox").await;
                let stem = parent.trim_end_matches(".slice");
                let left = scopes_and_slices_with(&[stem]);
                assert!(left.is_empty(), "units left: {left:?}");
                let left = scopes_and_slices_with(&[pod]);
                assert!(left.is_empty(), "units left: {left:?}");
            }
        }
    }
}

/// Removes the pod's cgroup, as the kubelet would: rmdir fails on a cgroup
/// that still has children or tasks. (Its `kubepods` ancestors stay: other
/// cases' pods are made below them meanwhile.)
fn remove_kubelet_cgroups(pod_dir: &Path) {
    if pod_dir.exists() {
        std::fs::remove_dir(pod_dir).unwrap_or_else(|e| panic!("rmdir {}: {e}", pod_dir.display()));
    }
}

fn cgroup_file(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.join(file).display()))
        .trim()
        .to_string()
}

fn limits(memory: i64, cpu_quota: i64, pids: &str) -> LinuxContainerResources {
    LinuxContainerResources {
        memory_limit_in_bytes: memory,
        cpu_period: 100_000,
        cpu_quota,
        cpu_shares: 512,
        unified: HashMap::from([("pids.max".to_string(), pids.to_string())]),
        ..Default::default()
    }
}

fn unit() -> String {
    env_or("BERTH_NODE_UNIT", "berth")
}

#[tokio::test]
#[ignore = "runs in the node VM: hack/vm/suite.sh"]
async fn berthd_runs_as_a_notify_service() {
    let node = Node::connect().await;
    let show = systemctl(&[
        "show",
        &unit(),
        "-p",
        "Type,ActiveState,SubState,KillMode,Delegate,MainPID",
    ]);
    for want in [
        "Type=notify",
        "ActiveState=active",
        "SubState=running",
        "KillMode=process",
        "Delegate=yes",
    ] {
        assert!(show.lines().any(|l| l == want), "want {want}: {show}");
    }
    // berthd raised its soft open-file limit to the unit's hard one.
    let pid = show
        .lines()
        .find_map(|l| l.strip_prefix("MainPID="))
        .unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let numbers: Vec<&str> = files.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, ["1048576", "1048576"], "{files}");
    drop(node);
}

#[tokio::test]
#[ignore = "runs in the node VM: hack/vm/suite.sh"]
async fn pull_and_run_a_pod_under_the_kubelet_cgroup_parent() {
    let mut node = Node::connect().await;
    let status = node
        .images
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: node.image.clone(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(status.image.is_some(), "pulled image not found: {status:?}");
    let (pod, parent) = node.pod("parent", "").await;
    let id = node.run(&pod, "parent", &parent, "sleep 600", None).await;
    let dir = node.driver.container_dir(&parent, &id);
    let pid = node.pid(&id).await;
    let procs = cgroup_file(&dir, "cgroup.procs");
    assert!(
        procs.lines().any(|p| p == pid.to_string()),
        "container pid {pid} not in {}: {procs}",
        dir.display()
    );
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let relative = dir.strip_prefix(CGROUP_ROOT).unwrap();
    assert_eq!(own.trim(), format!("0::/{}", relative.display()));
    node.remove_pod(&pod, &parent).await;
}

#[tokio::test]
#[ignore = "runs in the node VM: hack/vm/suite.sh"]
async fn limits_are_in_the_cgroup_v2_files() {
    let mut node = Node::connect().await;
    let (pod, parent) = node.pod("limits", "").await;
    let resources = limits(64 << 20, 50_000, "64");
    let id = node
        .run(&pod, "limits", &parent, "sleep 600", Some(resources))
        .await;
    let dir = node.driver.container_dir(&parent, &id);
    assert_eq!(cgroup_file(&dir, "memory.max"), (64u64 << 20).to_string());
    assert_eq!(cgroup_file(&dir, "cpu.max"), "50000 100000");
    assert_eq!(cgroup_file(&dir, "pids.max"), "64");
    if node.driver == Driver::Systemd {
        // runc also gives the limits to systemd, as properties of the scope.
        assert_eq!(show(&scope(&id), "MemoryMax"), (64u64 << 20).to_string());
        assert_eq!(show(&scope(&id), "CPUQuotaPerSecUSec"), "500ms");
        assert_eq!(show(&scope(&id), "TasksMax"), "64");
    }
    node.remove_pod(&pod, &parent).await;
}

#[tokio::test]
#[ignore = "runs in the node VM: hack/vm/suite.sh"]
async fn exec_logs_and_stats_have_figures() {
    let mut node = Node::connect().await;
    let (pod, parent) = node.pod("stats", "").await;
    // Some CPU time and memory to account for, then idle.
    let script = "echo started; i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; \
                  head -c 8m /dev/zero > /tmp/fill; sleep 600";
    let id = node
        .run(
            &pod,
            "stats",
            &parent,
            script,
            Some(limits(256 << 20, 0, "max")),
        )
        .await;
    let (code, out) = node.exec(&id, "echo from-exec; id -u").await;
    assert_eq!((code, out.as_str()), (0, "from-exec\n0\n"));
    let log = node.logs.path().join("stats").join("stats-c.log");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("stdout F started")
    {
        assert!(
            Instant::now() < deadline,
            "no 'started' in {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Wait for the loop and the 8 MiB file (tmpfs-less /tmp: page cache).
    let deadline = Instant::now() + Duration::from_secs(120);
    while node.exec(&id, "test -s /tmp/fill && echo y").await.1 != "y\n" {
        assert!(Instant::now() < deadline, "the script did not fill /tmp");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let stats = node
        .client
        .container_stats(ContainerStatsRequest {
            container_id: id.clone(),
        })
        .await
        .expect("ContainerStats")
        .into_inner()
        .stats
        .expect("stats");
    // Pressure stall information, from the v2 cgroup's *.pressure files
    // (cri-api v0.36's PSI fields), where the kernel keeps it.
    if Path::new("/proc/pressure/cpu").exists() {
        let cpu_psi = stats.cpu.as_ref().and_then(|c| c.psi.as_ref());
        assert!(
            cpu_psi.and_then(|p| p.some.as_ref()).is_some(),
            "{:?}",
            stats.cpu
        );
        assert!(stats.memory.as_ref().and_then(|m| m.psi.as_ref()).is_some());
        let io = stats.io.as_ref().expect("io usage");
        assert!(
            io.psi.as_ref().and_then(|p| p.full.as_ref()).is_some(),
            "{io:?}"
        );
    }
    let cpu = stats.cpu.expect("cpu");
    let memory = stats.memory.expect("memory");
    assert!(cpu.usage_core_nano_seconds.unwrap().value > 0, "{cpu:?}");
    assert!(memory.working_set_bytes.unwrap().value > 0, "{memory:?}");
    assert!(memory.usage_bytes.unwrap().value > 0, "{memory:?}");
    let pod_stats = node
        .client
        .pod_sandbox_stats(PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("PodSandboxStats")
        .into_inner()
        .stats
        .expect("pod stats");
    let linux = pod_stats.linux.expect("linux pod stats");
    let pod_cpu = linux.cpu.expect("pod cpu");
    let pod_memory = linux.memory.expect("pod memory");
    assert!(
        pod_cpu.usage_core_nano_seconds.unwrap().value > 0,
        "{pod_cpu:?}"
    );
    assert!(
        pod_memory.working_set_bytes.unwrap().value > 0,
        "{pod_memory:?}"
    );
    assert_eq!(linux.containers.len(), 1, "{:?}", linux.containers);
    node.remove_pod(&pod, &parent).await;
}

#[tokio::test]
#[ignore = "runs in the node VM: hack/vm/suite.sh"]
async fn update_resources_changes_the_cgroup_files() {
    let mut node = Node::connect().await;
    let (pod, parent) = node.pod("update", "").await;
    let id = node
        .run(
            &pod,
            "update",
            &parent,
            "sleep 600",
            Some(limits(64 << 20, 50_000, "64")),
        )
        .await;
    let dir = node.driver.container_dir(&parent, &id);
    let mut new = limits(128 << 20, 200_000, "128");
    new.cpu_shares = 1024;
    node.client
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(new),
            ..Default::default()
        })
        .await
        .expect("UpdateContainerResources");
    assert_eq!(cgroup_file(&dir, "memory.max"), (128u64 << 20).to_string());
    assert_eq!(cgroup_file(&dir, "cpu.max"), "200000 100000");
    assert_eq!(cgroup_file(&dir, "pids.max"), "128");
    if node.driver == Driver::Systemd {
        assert_eq!(show(&scope(&id), "MemoryMax"), (128u64 << 20).to_string());
        assert_eq!(show(&scope(&id), "CPUQuotaPerSecUSec"), "2s");
    }
    let (status, _) = node.status(&id).await;
    let reported = status.resources.and_then(|r| r.linux).expect("resources");
    assert_eq!(reported.memory_limit_in_bytes, 128 << 20);
    assert_eq!(reported.cpu_quota, 200_000);
    node.remove_pod(&pod, &parent).await;
}

#[tokio::test]
#[ignore = "runs in the node VM: hack/vm/suite.sh"]
async fn an_oom_killed_container_says_oomkilled() {
    let mut node = Node::connect().await;
    let (pod, parent) = node.pod("oom", "").await;
    // 16 MiB limit, a 64 MiB buffer: the memory cgroup kills dd.
    let script = "dd if=/dev/zero of=/dev/null bs=64M count=1";
    let id = node
        .run(
            &pod,
            "oom",
            &parent,
            script,
            Some(limits(16 << 20, 0, "max")),
        )
        .await;
    let status = node.wait_exit(&id).await;
    assert_eq!(status.reason, "OOMKilled", "{status:?}");
    assert_eq!(status.exit_code, 137, "{status:?}");
    node.remove_pod(&pod, &parent).await;
}

#[tokio::test]
#[ignore = "runs in the node VM: hack/vm/suite.sh"]
async fn stop_and_remove_leave_no_cgroup() {
    let mut node = Node::connect().await;
    let (pod, parent) = node.pod("teardown", "").await;
    let id = node
        .run(
            &pod,
            "teardown",
            &parent,
            "sleep 600",
            Some(limits(64 << 20, 0, "64")),
        )
        .await;
    let dir = node.driver.container_dir(&parent, &id);
    assert!(dir.is_dir(), "{} missing", dir.display());
    node.client
        .stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await
        .expect("StopContainer");
    node.client
        .remove_container(RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("RemoveContainer");
    wait_gone(&dir, "RemoveContainer").await;
    if node.driver == Driver::Systemd {
        let left = scopes_and_slices_with(&[&id]);
        assert!(
            left.is_empty(),
            "units left after RemoveContainer: {left:?}"
        );
    }
    node.remove_pod(&pod, &parent).await;
    assert!(!node.driver.pod_dir(&parent).exists());
}

#[tokio::test]
#[ignore = "runs in the node VM: hack/vm/suite.sh"]
async fn crun_runs_a_container_as_a_second_handler() {
    let mut node = Node::connect().await;
    let handler = env_or("BERTH_NODE_CRUN_HANDLER", "crun");
    let (pod, parent) = node.pod("crun", &handler).await;
    let id = node
        .run(
            &pod,
            "crun",
            &parent,
            "sleep 600",
            Some(limits(64 << 20, 50_000, "64")),
        )
        .await;
    let (_, info) = node.status(&id).await;
    let info: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
    assert_eq!(info["runtimeHandler"], handler.as_str());
    // crun keeps its state under the handler's root: it, not runc, made it.
    let state = node.run_root.join("runtimes").join(&handler).join(&id);
    assert!(
        state.join("status").exists(),
        "no crun state in {}",
        state.display()
    );
    let (code, out) = node.exec(&id, "echo crun-exec").await;
    assert_eq!((code, out.as_str()), (0, "crun-exec\n"));
    let dir = limits_dir(&node.driver.container_dir(&parent, &id));
    assert_eq!(cgroup_file(&dir, "memory.max"), (64u64 << 20).to_string());
    assert_eq!(cgroup_file(&dir, "pids.max"), "64");
    node.remove_pod(&pod, &parent).await;
}

#[tokio::test]
#[ignore = "runs in the node VM: hack/vm/suite.sh"]
async fn restart_keeps_running_containers() {
    let mut node = Node::connect().await;
    let (pod, parent) = node.pod("restart", "").await;
    let id = node.run(&pod, "restart", &parent, "sleep 600", None).await;
    let pid = node.pid(&id).await;
    let main_pid = || systemctl(&["show", &unit(), "-p", "MainPID", "--value"]);
    let before = main_pid();
    // An open connection would hold the old berthd's graceful shutdown for
    // its whole grace period; the pod's log dir stays.
    let Node {
        client,
        images,
        logs,
        ..
    } = node;
    drop((client, images));
    // Type=notify: restart returns once the new berthd said READY=1. Off
    // the test's runtime, which must stay free to close the connection when
    // the old berthd's graceful shutdown sends GOAWAY.
    let t = Instant::now();
    tokio::task::spawn_blocking(|| systemctl(&["restart", &unit()]))
        .await
        .unwrap();
    eprintln!(
        "figure: systemctl restart {} took {:?}",
        unit(),
        t.elapsed()
    );
    let after = main_pid();
    assert_ne!(before, after, "berthd was not restarted");
    assert_eq!(systemctl(&["is-active", &unit()]), "active");
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "container process {pid} died with the restart"
    );
    // A new connection to the new berthd.
    let mut node = Node::connect().await;
    node.logs = logs;
    let (status, _) = node.status(&id).await;
    assert_eq!(
        status.state,
        ContainerState::ContainerRunning as i32,
        "{status:?}"
    );
    assert_eq!(node.pid(&id).await, pid);
    let (code, out) = node.exec(&id, "echo after-restart").await;
    assert_eq!((code, out.as_str()), (0, "after-restart\n"));
    node.remove_pod(&pod, &parent).await;
}

#[tokio::test]
#[ignore = "runs in the node VM: hack/vm/suite.sh"]
async fn update_pod_sandbox_resources_sets_the_pod_cgroup() {
    let mut node = Node::connect().await;
    let (pod, parent) = node.pod("podresize", "").await;
    // A container, so the pod's cgroup exists with either driver.
    let _id = node
        .run(&pod, "podresize", &parent, "sleep 600", None)
        .await;
    node.client
        .update_pod_sandbox_resources(cri::UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: pod.clone(),
            resources: Some(LinuxContainerResources {
                memory_limit_in_bytes: 200 << 20,
                cpu_period: 100_000,
                cpu_quota: 150_000,
                cpu_shares: 1024,
                ..Default::default()
            }),
            overhead: Some(LinuxContainerResources {
                memory_limit_in_bytes: 56 << 20,
                ..Default::default()
            }),
        })
        .await
        .expect("UpdatePodSandboxResources");
    let dir = node.driver.pod_dir(&parent);
    assert_eq!(cgroup_file(&dir, "memory.max"), (256u64 << 20).to_string());
    assert_eq!(cgroup_file(&dir, "cpu.max"), "150000 100000");
    assert_eq!(cgroup_file(&dir, "cpu.weight"), "39");
    if node.driver == Driver::Systemd {
        // Set as the slice's properties, so systemd keeps them.
        assert_eq!(show(&parent, "MemoryMax"), (256u64 << 20).to_string());
        assert_eq!(show(&parent, "CPUWeight"), "39");
    }
    node.remove_pod(&pod, &parent).await;
}
