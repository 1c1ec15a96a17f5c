//! Restart recovery (issue 9, faults): berthd killed with -9, then started
//! again on the same root.
//!
//! With one record of each kind (pod, container, image) damaged on disk, it
//! must start, name each broken record in its log, keep serving every
//! intact object and make new ones. The broken objects are gone from the
//! CRI's view: their IDs answer NOT_FOUND (image status: no image), and
//! Stop/Remove of them succeed as for unknown IDs; what a broken pod or
//! container left (pins, shm, network, infra process; shim, container,
//! rootfs) is torn down.
//!
//! With pods on a real bridge network killed mid-flight, every pod and
//! container is still listed and controllable, and Stop + Remove leave
//! nothing behind: no namespace pins, veths, IPs, mounts or processes.
//!
//! With berthd killed at a failpoint (`BERTH_FAILPOINT`) in the middle of
//! RunPodSandbox or CreateContainer, the kubelet's retry succeeds after a
//! restart and removing everything again leaves nothing behind.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_e2e::cri::image_service_client::ImageServiceClient;
use berth_e2e::cri::runtime_service_client::RuntimeServiceClient;
use berth_e2e::cri::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatusRequest,
    CreateContainerRequest, ImageSpec, LinuxContainerConfig, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, PodSandboxState, PodSandboxStatusRequest,
    RemoveContainerRequest, RemoveImageRequest, RunPodSandboxRequest, StartContainerRequest,
    StopContainerRequest, StopPodSandboxRequest,
};
use berth_e2e::registry::{self, Registry, Security};
use berth_e2e::{Berthd, Options, can_run, have_command, is_root, mounts_under};
use nix::sys::signal::Signal;
use tonic::Code;
use tonic::transport::Channel;

type Runtime = RuntimeServiceClient<Channel>;
type Images = ImageServiceClient<Channel>;

const CNI_BIN_DIR: &str = "/usr/lib/cni";

fn can_run_here() -> bool {
    can_run(
        is_root() && have_command("runc") && registry::available(),
        "needs root, runc, docker-registry, skopeo and the fixture tools",
    )
}

fn can_run_network() -> bool {
    can_run(
        can_run_here() && have_command("ip") && Path::new(CNI_BIN_DIR).join("bridge").exists(),
        "needs root, runc, the registry fixtures, iproute2 and the CNI plugins",
    )
}

/// What the kubelet sends, for the pod and for its containers alike.
fn namespaces(network: NamespaceMode, pid: NamespaceMode) -> NamespaceOption {
    NamespaceOption {
        network: network as i32,
        pid: pid as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// A registry with the fixture images, a log dir, a CNI conf dir and a
/// cgroup parent of the test's own; `network` puts pods in their own
/// network namespace on a bridge of the test's own.
struct Fixture {
    registry: Registry,
    logs: tempfile::TempDir,
    cgroup_parent: String,
    busybox: String,
    network: NamespaceMode,
    /// `Pod`: one PID namespace per pod, with an infra process.
    pid: NamespaceMode,
    /// The bridge (host side of every pod veth), when pods have a network.
    bridge: Option<String>,
    options: Options,
}

impl Fixture {
    /// `index` is unique per test in this file; the pid keeps concurrent
    /// runs of the suite apart.
    fn new(tag: &str, index: u8, network: NamespaceMode, images: &[&str]) -> Fixture {
        let registry = Registry::start_empty(Security::Plain);
        for image in images {
            registry.push(image, &format!("berth/{image}:latest"));
        }
        let logs = tempfile::Builder::new()
            .prefix("berth-e2e-logs-")
            .tempdir()
            .unwrap();
        let conf = logs.path().join("registries.conf");
        std::fs::write(&conf, berth_e2e::registry::insecure_conf(&registry.host())).unwrap();
        let net_d = logs.path().join("net.d");
        std::fs::create_dir(&net_d).unwrap();
        let pid = std::process::id();
        let bridge =
            (network == NamespaceMode::Pod).then(|| format!("br{}x{index}", pid % 100_000));
        if let Some(bridge) = &bridge {
            // No ipMasq or portmap: nothing in the host's iptables to leak.
            let conflist = format!(
                r#"{{"cniVersion": "1.0.0", "name": "berth-e2e-{pid}-r{index}", "plugins": [
  {{"type": "bridge", "bridge": "{bridge}", "isGateway": true,
    "ipam": {{"type": "host-local", "dataDir": "{data}",
      "routes": [{{"dst": "0.0.0.0/0"}}],
      "ranges": [[{{"subnet": "10.{octet}.{index}.0/24"}}]]}}}}]}}"#,
                data = logs.path().join("ipam").display(),
                octet = 240 + pid % 16,
            );
            std::fs::write(net_d.join("10-test.conflist"), conflist).unwrap();
        }
        let options = Options {
            config: format!(
                "[image]\nregistries_config = \"{}\"\n[cni]\nconf_dir = \"{}\"\nbin_dirs = [\"{CNI_BIN_DIR}\"]\n",
                conf.display(),
                net_d.display()
            ),
            ..Options::default()
        };
        Fixture {
            busybox: registry.image("busybox"),
            registry,
            cgroup_parent: format!("/berth-e2e-{pid}-{tag}"),
            logs,
            network,
            pid: NamespaceMode::Container,
            bridge,
            options,
        }
    }

    fn pod_config(&self, name: &str, attempt: u32) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "e2e".into(),
                attempt,
            }),
            log_directory: self.logs.path().join(name).display().to_string(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(namespaces(self.network, self.pid)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn container(&self, name: &str, attempt: u32) -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt,
            }),
            image: Some(ImageSpec {
                image: self.busybox.clone(),
                ..Default::default()
            }),
            command: vec!["sh".into(), "-c".into(), "while :; do sleep 1; done".into()],
            log_path: format!("{name}-{attempt}.log"),
            labels: HashMap::new(),
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(namespaces(self.network, self.pid)),
                    ..Default::default()
                }),
                resources: None,
            }),
            ..Default::default()
        }
    }

    async fn run_pod(
        &self,
        client: &mut Runtime,
        name: &str,
        attempt: u32,
    ) -> Result<String, tonic::Status> {
        client
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(self.pod_config(name, attempt)),
                runtime_handler: String::new(),
            })
            .await
            .map(|r| r.into_inner().pod_sandbox_id)
    }

    /// CreateContainer of `<pod name>-c` in the pod `name`, attempt 0.
    async fn create(
        &self,
        client: &mut Runtime,
        pod: &str,
        name: &str,
        attempt: u32,
    ) -> Result<String, tonic::Status> {
        self.create_in(client, (pod, name, 0), attempt).await
    }

    /// CreateContainer of `<pod name>-c` in the pod (ID, name, attempt).
    async fn create_in(
        &self,
        client: &mut Runtime,
        (pod, name, pod_attempt): (&str, &str, u32),
        attempt: u32,
    ) -> Result<String, tonic::Status> {
        client
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(self.container(&format!("{name}-c"), attempt)),
                sandbox_config: Some(self.pod_config(name, pod_attempt)),
            })
            .await
            .map(|r| r.into_inner().container_id)
    }

    /// A pod with one running busybox container: (pod ID, container ID).
    async fn pod_with_container(&self, client: &mut Runtime, name: &str) -> (String, String) {
        let pod = self.run_pod(client, name, 0).await.unwrap();
        let container = self.create(client, &pod, name, 0).await.unwrap();
        start(client, &container).await;
        (pod, container)
    }

    /// Host ends of pod veths still on the test's bridge.
    fn veths(&self) -> String {
        let Some(bridge) = &self.bridge else {
            return String::new();
        };
        let out = Command::new("ip")
            .args(["-o", "link", "show", "master", bridge])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Addresses host-local still hands to someone.
    fn ips_held(&self) -> Vec<String> {
        let mut held = Vec::new();
        for net in std::fs::read_dir(self.logs.path().join("ipam"))
            .into_iter()
            .flatten()
            .flatten()
        {
            for entry in std::fs::read_dir(net.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name != "lock" && !name.starts_with("last_reserved_ip") {
                    held.push(name);
                }
            }
        }
        held
    }

    /// Processes in the test's cgroups, in any hierarchy.
    fn processes_in_cgroups(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            let dir = entry
                .path()
                .join(self.cgroup_parent.trim_start_matches('/'));
            collect_procs(&dir, &mut pids);
        }
        pids.sort();
        pids.dedup();
        pids
    }

    /// Cgroups (infra's, containers') left under the test's parent.
    fn cgroups_left(&self) -> Vec<PathBuf> {
        let mut left = Vec::new();
        for entry in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            let dir = entry
                .path()
                .join(self.cgroup_parent.trim_start_matches('/'));
            for child in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if child.path().is_dir() {
                    left.push(child.path());
                }
            }
        }
        left
    }

    /// Kills what is left in the test's cgroups (the broken objects' processes
    /// berthd no longer knows) and removes them, deepest first.
    fn clean_cgroups(&self) {
        fn clean(dir: &Path) {
            for child in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if child.path().is_dir() {
                    clean(&child.path());
                }
            }
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            }
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        for entry in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            clean(
                &entry
                    .path()
                    .join(self.cgroup_parent.trim_start_matches('/')),
            );
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.clean_cgroups();
        if let Some(bridge) = &self.bridge {
            let _ = Command::new("ip")
                .args(["link", "del", bridge])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

fn collect_procs(dir: &Path, pids: &mut Vec<i32>) {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    pids.extend(procs.lines().filter_map(|l| l.parse::<i32>().ok()));
    for child in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if child.path().is_dir() {
            collect_procs(&child.path(), pids);
        }
    }
}

/// Processes but `except` whose command line mentions `dir`: shims, runc.
fn processes_naming(dir: &Path, except: u32) -> Vec<String> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id() || pid == except)
        {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline.windows(needle.len()).any(|w| w == needle) {
            found.push(String::from_utf8_lossy(&cmdline).replace('\0', " "));
        }
    }
    found
}

/// Every file below `dir` (namespace pins are files).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(files_under(&entry.path()));
        } else {
            out.push(entry.path());
        }
    }
    out
}

async fn start(client: &mut Runtime, container: &str) {
    client
        .start_container(StartContainerRequest {
            container_id: container.into(),
        })
        .await
        .unwrap();
}

async fn stop_and_remove_container(client: &mut Runtime, container: &str) {
    client
        .stop_container(StopContainerRequest {
            container_id: container.into(),
            timeout: 0,
        })
        .await
        .unwrap();
    client
        .remove_container(RemoveContainerRequest {
            container_id: container.into(),
        })
        .await
        .unwrap();
}

async fn container_state(client: &mut Runtime, container: &str) -> i32 {
    client
        .container_status(ContainerStatusRequest {
            container_id: container.into(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .state
}

async fn pod_state(client: &mut Runtime, pod: &str) -> i32 {
    client
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .state
}

/// Waits for berthd to remove `dir`: what a pod with an unreadable record
/// left is torn down in the background after start-up.
async fn wait_removed(dir: &Path, berthd: &Berthd) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while dir.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} is not removed:\n{}",
            dir.display(),
            berthd.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A graceful restart on the same root.
async fn restart_keeps(berthd: Berthd, f: &Fixture) -> Berthd {
    let (status, paths) = berthd.stop_with(Signal::SIGTERM).await;
    assert!(status.success(), "{status}");
    Berthd::start_in(paths, f.options.clone()).await
}

async fn pull(images: &mut Images, image: &str) -> String {
    berth_e2e::pull(images, image).await.unwrap();
    image_id(images, image)
        .await
        .expect("pulled image is known")
}

async fn image_id(images: &mut Images, image: &str) -> Option<String> {
    berth_e2e::image_status(images, image).await.map(|i| i.id)
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_records_are_reported_and_the_rest_is_served() {
    if !can_run_here() {
        return;
    }
    let f = Fixture::new("recovery", 1, NamespaceMode::Node, &["busybox", "layered"]);
    let layered = f.registry.image("layered");

    let berthd = Berthd::start_with(f.options.clone()).await;
    let mut images = berthd.images().await;
    let mut client = berthd.runtime().await;
    let busybox_id = pull(&mut images, &f.busybox).await;
    let layered_id = pull(&mut images, &layered).await;
    let (pod_a, ctr_a) = f.pod_with_container(&mut client, "keep").await;
    let (pod_b, ctr_b) = f.pod_with_container(&mut client, "broken").await;

    let (_, paths) = berthd.stop_with(Signal::SIGKILL).await;
    let root = paths.root();
    // Pod B's record: garbage. Container A's record: truncated to nothing
    // (a crash before the data reached the disk). The layered image's
    // record: cut in half. Pod A, container B and busybox stay intact, so
    // each store has to serve objects next to a broken one.
    let pod_record = root.join("pods").join(&pod_b).join("pod.json");
    let ctr_record = root
        .join("containers/records")
        .join(format!("{ctr_a}.json"));
    let hex = layered_id.trim_start_matches("sha256:");
    let image_record = root.join("images/images").join(format!("{hex}.json"));
    for path in [&pod_record, &ctr_record, &image_record] {
        assert!(path.is_file(), "{} is not a record", path.display());
    }
    std::fs::write(&pod_record, b"\x00\xffgarbage{{{\x7f").unwrap();
    std::fs::write(&ctr_record, b"").unwrap();
    let bytes = std::fs::read(&image_record).unwrap();
    std::fs::write(&image_record, &bytes[..bytes.len() / 2]).unwrap();

    let berthd = Berthd::start_in(paths, f.options.clone()).await;
    let mut images = berthd.images().await;
    let mut client = berthd.runtime().await;
    // Served: the records are loaded (the socket opens before).
    let served_pods = berth_e2e::pod_ids(&mut client).await;
    let log = berthd.log();
    for (what, path) in [
        ("pod", &pod_record),
        ("container", &ctr_record),
        ("image", &image_record),
    ] {
        let line = log
            .lines()
            .find(|l| l.contains(&path.display().to_string()))
            .unwrap_or_else(|| panic!("{} not named in the log:\n{log}", path.display()));
        assert!(
            line.contains(&format!("unreadable {what} record")),
            "{line}"
        );
    }

    // What the broken pod left (its IPC pin, its shm) is torn down.
    wait_removed(&root.join("pods").join(&pod_b), &berthd).await;
    let run_root = berthd.paths().run_root();
    assert_eq!(
        mounts_under(&run_root.join("pods").join(&pod_b)),
        Vec::<PathBuf>::new()
    );
    assert!(!run_root.join("ns/ipc").join(&pod_b).exists());
    // And what the broken container left: its shim, container, rootfs, dirs.
    wait_removed(&run_root.join("containers").join(&ctr_a), &berthd).await;
    assert!(!ctr_record.exists());
    assert_eq!(processes_naming(Path::new(&ctr_a), 0), Vec::<String>::new());

    // The intact objects are listed; the broken ones are gone.
    assert_eq!(served_pods, vec![pod_a.clone()]);
    assert_eq!(
        berth_e2e::container_ids(&mut client).await,
        vec![ctr_b.clone()]
    );
    assert_eq!(
        berth_e2e::image_ids(&mut images).await,
        vec![busybox_id.clone()]
    );
    let err = client
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod_b.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = client
        .container_status(ContainerStatusRequest {
            container_id: ctr_a.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(image_id(&mut images, &layered).await, None);
    assert_eq!(
        container_state(&mut client, &ctr_b).await,
        ContainerState::ContainerRunning as i32
    );
    assert_eq!(
        pod_state(&mut client, &pod_a).await,
        PodSandboxState::SandboxReady as i32
    );

    // New objects work next to the broken ones; the broken pod's name is
    // free again (the kubelet runs it anew with the same metadata); pulling
    // the broken image again rewrites its record.
    let (pod_c, ctr_c) = f.pod_with_container(&mut client, "fresh").await;
    let pod_d = f.run_pod(&mut client, "broken", 0).await.unwrap();
    assert_eq!(pull(&mut images, &layered).await, layered_id);
    let rewritten: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&image_record).unwrap()).expect("a whole record");
    assert_eq!(rewritten["id"], format!("sha256:{hex}"));
    let berthd = restart_keeps(berthd, &f).await;
    let mut images = berthd.images().await;
    let mut client = berthd.runtime().await;
    assert_eq!(image_id(&mut images, &layered).await, Some(layered_id));

    // The intact ones are controllable: stop and remove them all. Stop and
    // Remove of the broken IDs succeed, as for any unknown ID.
    for ctr in [&ctr_b, &ctr_c, &ctr_a] {
        stop_and_remove_container(&mut client, ctr).await;
    }
    for pod in [&pod_a, &pod_c, &pod_d, &pod_b] {
        berth_e2e::stop_and_remove_pod(&mut client, pod).await;
    }
    assert!(berth_e2e::pod_ids(&mut client).await.is_empty());
    assert!(berth_e2e::container_ids(&mut client).await.is_empty());
    images
        .remove_image(RemoveImageRequest {
            image: Some(ImageSpec {
                image: layered.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    assert_eq!(berth_e2e::image_ids(&mut images).await, vec![busybox_id]);
    assert_no_leftovers(&f, &berthd);
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_outlive_a_killed_berthd_and_tear_down_without_leftovers() {
    if !can_run_network() {
        return;
    }
    let mut f = Fixture::new("killed", 2, NamespaceMode::Pod, &["busybox"]);
    f.pid = NamespaceMode::Pod;
    let berthd = Berthd::start_with(f.options.clone()).await;
    let mut client = berthd.runtime().await;
    pull(&mut berthd.images().await, &f.busybox).await;
    let mut pods = Vec::new();
    for name in ["one", "two"] {
        pods.push(f.pod_with_container(&mut client, name).await);
    }
    // A container created but never started, too.
    let created = f.create(&mut client, &pods[1].0, "two", 1).await.unwrap();
    // A pod whose record the crash damages: berthd forgets it and removes
    // what it left (infra process, network, pins); its container's record
    // is intact, so that one stays listed and removable.
    let (lost, lost_container) = f.pod_with_container(&mut client, "lost").await;
    assert_eq!(f.veths().lines().count(), 3, "{}", f.veths());

    let (_, paths) = berthd.stop_with(Signal::SIGKILL).await;
    let lost_dir = paths.root().join("pods").join(&lost);
    let record = std::fs::read(lost_dir.join("pod.json")).unwrap();
    std::fs::write(lost_dir.join("pod.json"), &record[..record.len() / 2]).unwrap();
    let berthd = Berthd::start_in(paths, f.options.clone()).await;
    let mut client = berthd.runtime().await;
    wait_removed(&lost_dir, &berthd).await;
    assert_eq!(f.veths().lines().count(), 2, "{}", f.veths());
    assert_eq!(f.ips_held().len(), 2, "{:?}", f.ips_held());
    stop_and_remove_container(&mut client, &lost_container).await;
    let mut expected_pods: Vec<String> = pods.iter().map(|(p, _)| p.clone()).collect();
    expected_pods.sort();
    assert_eq!(berth_e2e::pod_ids(&mut client).await, expected_pods);
    for (pod, container) in &pods {
        assert_eq!(
            pod_state(&mut client, pod).await,
            PodSandboxState::SandboxReady as i32
        );
        assert_eq!(
            container_state(&mut client, container).await,
            ContainerState::ContainerRunning as i32
        );
    }
    assert_eq!(
        container_state(&mut client, &created).await,
        ContainerState::ContainerCreated as i32
    );

    // What the kubelet does when it deletes the pods: containers, then pods.
    stop_and_remove_container(&mut client, &created).await;
    for (pod, container) in &pods {
        stop_and_remove_container(&mut client, container).await;
        berth_e2e::stop_and_remove_pod(&mut client, pod).await;
    }
    assert!(berth_e2e::pod_ids(&mut client).await.is_empty());
    assert!(berth_e2e::container_ids(&mut client).await.is_empty());
    assert_no_leftovers(&f, &berthd);
}

#[tokio::test(flavor = "multi_thread")]
async fn crashes_at_failpoints_leave_what_a_retry_and_removal_clean_up() {
    if !can_run_network() {
        return;
    }
    let f = Fixture::new("failpoint", 3, NamespaceMode::Pod, &["busybox"]);
    let armed = |name: &str| Options {
        env: vec![(berth_failpoint::ENV.into(), name.into())],
        ..f.options.clone()
    };

    // RunPodSandbox dies with the network attached but not yet recorded.
    let berthd = Berthd::start_with(armed(berth_failpoint::POD_AFTER_NETWORK)).await;
    pull(&mut berthd.images().await, &f.busybox).await;
    let mut client = berthd.runtime().await;
    f.run_pod(&mut client, "crash", 0).await.unwrap_err();
    let paths = died_at(berthd, berth_failpoint::POD_AFTER_NETWORK).await;

    // Restarted, the half-made pod is listed NotReady. What the kubelet
    // does next: stop it and run the pod again as attempt 1 (its GC
    // removes the old sandbox later).
    let berthd = Berthd::start_in(paths, armed(berth_failpoint::CONTAINER_AFTER_SHIM)).await;
    let mut client = berthd.runtime().await;
    let stale_pods = berth_e2e::pod_ids(&mut client).await;
    assert_eq!(stale_pods.len(), 1);
    let stale_pod = &stale_pods[0];
    assert_eq!(
        pod_state(&mut client, stale_pod).await,
        PodSandboxState::SandboxNotready as i32
    );
    client
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: stale_pod.clone(),
        })
        .await
        .unwrap();
    let pod = f.run_pod(&mut client, "crash", 1).await.unwrap();
    assert_eq!(f.veths().lines().count(), 1, "{}", f.veths());

    // CreateContainer dies with the shim and runc's container made but the
    // record without their pid.
    f.create_in(&mut client, (&pod, "crash", 1), 0)
        .await
        .unwrap_err();
    let paths = died_at(berthd, berth_failpoint::CONTAINER_AFTER_SHIM).await;

    // Restarted, the half-made container is listed Created; the kubelet
    // creates attempt 1, starts it and later removes the stale one.
    let berthd = Berthd::start_in(paths, f.options.clone()).await;
    let mut client = berthd.runtime().await;
    let stale_containers = berth_e2e::container_ids(&mut client).await;
    assert_eq!(stale_containers.len(), 1);
    let stale_container = &stale_containers[0];
    assert_eq!(
        container_state(&mut client, stale_container).await,
        ContainerState::ContainerCreated as i32
    );
    let container = f
        .create_in(&mut client, (&pod, "crash", 1), 1)
        .await
        .unwrap();
    start(&mut client, &container).await;
    assert_eq!(
        container_state(&mut client, &container).await,
        ContainerState::ContainerRunning as i32
    );

    for id in [stale_container, &container] {
        stop_and_remove_container(&mut client, id).await;
    }
    for id in [stale_pod, &pod] {
        berth_e2e::stop_and_remove_pod(&mut client, id).await;
    }
    assert!(berth_e2e::pod_ids(&mut client).await.is_empty());
    assert!(berth_e2e::container_ids(&mut client).await.is_empty());
    assert_no_leftovers(&f, &berthd);
}

/// Waits for berthd to be gone, checks it killed itself at `failpoint`
/// and hands back its paths for a restart.
async fn died_at(berthd: Berthd, failpoint: &str) -> berth_e2e::Paths {
    use std::os::unix::process::ExitStatusExt;
    let (status, paths) = berthd.stop_with(Signal::SIGKILL).await;
    assert_eq!(status.signal(), Some(Signal::SIGKILL as i32), "{status}");
    let log = std::fs::read_to_string(paths.log_file()).unwrap();
    assert!(
        log.contains(&format!("reached failpoint {failpoint}")),
        "{log}"
    );
    paths
}

/// Nothing of any pod or container is left: namespace pins, veths, IPs,
/// mounts, processes (shims, runc, infra, containers).
fn assert_no_leftovers(f: &Fixture, berthd: &Berthd) {
    let paths = berthd.paths();
    assert_eq!(
        files_under(&paths.run_root().join("ns")),
        Vec::<PathBuf>::new()
    );
    assert_eq!(f.veths(), "", "veths left on the bridge");
    assert_eq!(f.ips_held(), Vec::<String>::new(), "IPs still allocated");
    for dir in [paths.root(), paths.run_root()] {
        assert_eq!(mounts_under(&dir), Vec::<PathBuf>::new());
    }
    assert_eq!(
        processes_naming(paths.dir(), berthd.pid().as_raw() as u32),
        Vec::<String>::new()
    );
    assert_eq!(f.processes_in_cgroups(), Vec::<i32>::new());
    assert_eq!(f.cgroups_left(), Vec::<PathBuf>::new());
}
