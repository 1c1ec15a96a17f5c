//! Container and pod stats, and the cAdvisor-named metrics, through the real
//! berthd over CRI: real images from a local registry, real runc, real
//! cgroups (whatever layout the host has), real CNI bridge networking for
//! the network counters. Each test has its own berthd, cgroup parent and
//! (for the network) bridge and subnet.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::cri::runtime_service_client::RuntimeServiceClient;
use berth_e2e::cri::{
    ContainerStats, ContainerStatsFilter, ContainerStatsRequest, CreateContainerRequest,
    ExecSyncRequest, LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListContainerStatsRequest,
    ListMetricDescriptorsRequest, ListPodSandboxMetricsRequest, ListPodSandboxStatsRequest,
    NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata, PodSandboxStats,
    PodSandboxStatsFilter, PodSandboxStatsRequest, PodSandboxStatusRequest, RunPodSandboxRequest,
    StartContainerRequest,
};
use berth_e2e::cri::{LinuxContainerResources, Metric, PodSandboxMetrics};
use berth_e2e::net::{Net, can_run_network};
use berth_e2e::registry::{self, Registry, Security};
use berth_e2e::world::{World, can_run_here};
use berth_e2e::{Berthd, Options, can_run, have_command, is_root};
use tonic::transport::Channel;

type Client = RuntimeServiceClient<Channel>;

const BIN_DIR: &str = "/usr/lib/cni";
const MIB: u64 = 1024 * 1024;

fn pod_config(
    name: &str,
    network: NamespaceMode,
    cgroup_parent: &str,
    logs: &Path,
) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "e2e".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: logs.join(name).display().to_string(),
        labels: HashMap::from([("pod".to_string(), name.to_string())]),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.into(),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: network as i32,
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

async fn run_pod(client: &mut Client, config: PodSandboxConfig) -> String {
    client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id
}

/// The test's cgroup parent: on drop (a failed assertion included) kills
/// what still runs below it, so a busy loop never outlives its test, and
/// removes the dirs.
struct CgroupParent(String);

impl Drop for CgroupParent {
    fn drop(&mut self) {
        let relative = self.0.trim_start_matches('/').to_string();
        let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        let dirs: Vec<_> = hierarchies
            .flatten()
            .map(|h| h.path().join(&relative))
            .collect();
        for dir in &dirs {
            for child in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let procs = std::fs::read_to_string(child.path().join("cgroup.procs"));
                for pid in procs.unwrap_or_default().lines() {
                    if let Ok(pid) = pid.parse() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        for dir in &dirs {
            for child in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let _ = std::fs::remove_dir(child.path());
            }
            let _ = std::fs::remove_dir(dir);
        }
    }
}

async fn list_containers(client: &mut Client, filter: ContainerStatsFilter) -> Vec<ContainerStats> {
    client
        .list_container_stats(ListContainerStatsRequest {
            filter: Some(filter),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
}

async fn container(client: &mut Client, id: &str) -> ContainerStats {
    client
        .container_stats(ContainerStatsRequest {
            container_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap()
}

async fn pod_stats(client: &mut Client, id: &str) -> PodSandboxStats {
    client
        .pod_sandbox_stats(PodSandboxStatsRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap()
}

fn cpu_ns(stats: &ContainerStats) -> u64 {
    stats
        .cpu
        .as_ref()
        .unwrap()
        .usage_core_nano_seconds
        .unwrap()
        .value
}

fn working_set(stats: &ContainerStats) -> u64 {
    stats
        .memory
        .as_ref()
        .unwrap()
        .working_set_bytes
        .unwrap()
        .value
}

fn layer_bytes(stats: &ContainerStats) -> u64 {
    stats
        .writable_layer
        .as_ref()
        .unwrap()
        .used_bytes
        .unwrap()
        .value
}

/// Polls `read` until `done` holds (a minute at most).
async fn until<T: std::fmt::Debug, F: std::future::Future<Output = T>>(
    mut read: impl FnMut() -> F,
    done: impl Fn(&T) -> bool,
    what: &str,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let value = read().await;
        if done(&value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: {value:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn container_and_pod_stats_follow_cpu_memory_and_the_writable_layer() {
    if !can_run(
        is_root() && have_command("runc") && registry::available(),
        "needs root, runc, docker-registry, skopeo and the fixture tools",
    ) {
        return;
    }
    let registry = Registry::start_empty(Security::Plain);
    registry.push("busybox", "berth/busybox:latest");
    let logs = tempfile::Builder::new()
        .prefix("berth-e2e-stats-")
        .tempdir()
        .unwrap();
    let conf = logs.path().join("registries.conf");
    std::fs::write(&conf, berth_e2e::registry::insecure_conf(&registry.host())).unwrap();
    std::fs::create_dir(logs.path().join("net.d")).unwrap();
    let berthd = Berthd::start_with(Options {
        config: format!(
            "[image]\nregistries_config = \"{}\"\n[cni]\nconf_dir = \"{}\"\n",
            conf.display(),
            logs.path().join("net.d").display()
        ),
        ..Options::default()
    })
    .await;
    let image = registry.image("busybox");
    berth_e2e::pull(&mut berthd.images().await, &image)
        .await
        .unwrap();
    let mut client = berthd.runtime().await;
    let cgroup_parent = format!("/berth-e2e-stats-{}", std::process::id());
    let _cleanup = CgroupParent(cgroup_parent.clone());

    let sandbox = pod_config("stats", NamespaceMode::Node, &cgroup_parent, logs.path());
    let pod = run_pod(&mut client, sandbox.clone()).await;
    let mut ids = HashMap::new();
    for (name, script) in [
        ("busy", "while :; do :; done"),
        (
            "mem",
            "dd if=/dev/zero of=/dev/shm/x bs=1M count=40 2>/dev/null; exec sleep 1000",
        ),
    ] {
        let id = client
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(berth_e2e::world::container_config(&image, name, script)),
                sandbox_config: Some(sandbox.clone()),
            })
            .await
            .unwrap()
            .into_inner()
            .container_id;
        client
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap();
        ids.insert(name, id);
    }
    let (busy, mem) = (ids["busy"].clone(), ids["mem"].clone());

    // CPU: the busy loop's usage rises between two samples, and the second
    // reports the cores used since the first.
    let first = container(&mut client, &busy).await;
    let second = until(
        || {
            let mut client = client.clone();
            let busy = busy.clone();
            async move { container(&mut client, &busy).await }
        },
        |s| cpu_ns(s) > cpu_ns(&first),
        "busy CPU usage rises",
    )
    .await;
    assert!(second.cpu.as_ref().unwrap().timestamp > first.cpu.as_ref().unwrap().timestamp);
    assert!(
        second.cpu.as_ref().unwrap().usage_nano_cores.unwrap().value > 0,
        "{second:?}"
    );
    assert_eq!(second.attributes.as_ref().unwrap().id, busy);
    assert_eq!(
        second
            .attributes
            .as_ref()
            .unwrap()
            .metadata
            .as_ref()
            .unwrap()
            .name,
        "busy"
    );

    // Memory: 40 MiB in the pod's shm count in the writer's working set.
    let stats = until(
        || {
            let mut client = client.clone();
            let mem = mem.clone();
            async move { container(&mut client, &mem).await }
        },
        |s| working_set(s) > 30 * MIB,
        "the working set shows the 40 MiB written to /dev/shm",
    )
    .await;
    let memory = stats.memory.as_ref().unwrap();
    assert!(memory.usage_bytes.unwrap().value >= working_set(&stats));
    assert!(memory.page_faults.unwrap().value > 0, "{memory:?}");
    assert_eq!(memory.available_bytes, None, "no limit, nothing available");

    // The writable layer grows by a file written into the rootfs.
    let before = layer_bytes(&stats);
    let inodes_before = stats
        .writable_layer
        .as_ref()
        .unwrap()
        .inodes_used
        .unwrap()
        .value;
    let out = client
        .exec_sync(ExecSyncRequest {
            container_id: mem.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "dd if=/dev/urandom of=/written bs=1M count=5 2>/dev/null".into(),
            ],
            timeout: 30,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.exit_code, 0, "{out:?}");
    let after = container(&mut client, &mem).await;
    assert!(
        layer_bytes(&after) >= before + 5 * MIB,
        "{before} -> {after:?}"
    );
    assert!(
        after
            .writable_layer
            .as_ref()
            .unwrap()
            .inodes_used
            .unwrap()
            .value
            > inodes_before
    );

    // List filters: ID prefix, pod, labels; an unknown pod matches nothing.
    let all = list_containers(&mut client, ContainerStatsFilter::default()).await;
    assert_eq!(all.len(), 2);
    let by_id = list_containers(
        &mut client,
        ContainerStatsFilter {
            id: busy[..12].into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_id.len(), 1);
    assert_eq!(by_id[0].attributes.as_ref().unwrap().id, busy);
    let by_pod = list_containers(
        &mut client,
        ContainerStatsFilter {
            pod_sandbox_id: pod.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_pod.len(), 2);
    let by_label = list_containers(
        &mut client,
        ContainerStatsFilter {
            label_selector: HashMap::from([("app".into(), "mem".into())]),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_label.len(), 1);
    assert_eq!(by_label[0].attributes.as_ref().unwrap().id, mem);
    let none = list_containers(
        &mut client,
        ContainerStatsFilter {
            pod_sandbox_id: "f".repeat(64),
            ..Default::default()
        },
    )
    .await;
    assert!(none.is_empty());
    let unknown = client
        .container_stats(ContainerStatsRequest {
            container_id: "0".repeat(64),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    // The pod: both containers' usage summed with the infra process's, its
    // processes counted; a host-network pod reports no interfaces.
    let stats = pod_stats(&mut client, &pod).await;
    let linux = stats.linux.as_ref().unwrap();
    assert_eq!(linux.containers.len(), 2);
    let pod_cpu = linux
        .cpu
        .as_ref()
        .unwrap()
        .usage_core_nano_seconds
        .unwrap()
        .value;
    assert!(pod_cpu >= cpu_ns(&second), "{pod_cpu} < {second:?}");
    let pod_memory = linux
        .memory
        .as_ref()
        .unwrap()
        .working_set_bytes
        .unwrap()
        .value;
    assert!(pod_memory > 30 * MIB, "{linux:?}");
    let processes = linux.process.as_ref().unwrap().process_count.unwrap().value;
    // No infra process: the pod shares the host's network and has no PID
    // namespace of its own to hold.
    assert_eq!(processes, 2, "the busy loop and sleep");
    assert!(linux.network.is_none(), "{:?}", linux.network);
    let listed = client
        .list_pod_sandbox_stats(ListPodSandboxStatsRequest {
            filter: Some(PodSandboxStatsFilter {
                id: String::new(),
                label_selector: HashMap::from([("pod".into(), "stats".into())]),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].attributes.as_ref().unwrap().id, pod);
    let unknown = client
        .pod_sandbox_stats(PodSandboxStatsRequest {
            pod_sandbox_id: "0".repeat(64),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    // The same figures as cAdvisor-named metrics, labelled as described.
    let descriptors: HashMap<String, usize> = client
        .list_metric_descriptors(ListMetricDescriptorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .descriptors
        .into_iter()
        .map(|d| (d.name, d.label_keys.len()))
        .collect();
    for name in [
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        "container_fs_usage_bytes",
        "container_network_receive_bytes_total",
    ] {
        assert!(descriptors.contains_key(name), "{name}: {descriptors:?}");
    }
    let pods = client
        .list_pod_sandbox_metrics(ListPodSandboxMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pod_metrics;
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].pod_sandbox_id, pod);
    let mem_metrics = &pods[0]
        .container_metrics
        .iter()
        .find(|c| c.container_id == mem)
        .unwrap()
        .metrics;
    for metric in mem_metrics {
        assert_eq!(
            metric.label_values.len(),
            descriptors[&metric.name],
            "{metric:?}"
        );
    }
    let working = mem_metrics
        .iter()
        .find(|m| m.name == "container_memory_working_set_bytes")
        .unwrap();
    assert_eq!(working.label_values, [mem.as_str(), "mem", image.as_str()]);
    assert!(working.value.unwrap().value > 30 * MIB, "{working:?}");

    berth_e2e::stop_and_remove_pod(&mut client, &pod).await;
}

fn sh(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {args:?}: {e}"))
}

/// A bridge, deleted at the end.
struct Bridge(String);

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

async fn default_interface(client: &mut Client, pod: &str) -> (u64, u64) {
    let stats = client
        .list_pod_sandbox_stats(ListPodSandboxStatsRequest {
            filter: Some(PodSandboxStatsFilter {
                id: pod[..12].into(),
                label_selector: HashMap::new(),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(stats.len(), 1);
    let network = stats[0].linux.as_ref().unwrap().network.as_ref().unwrap();
    let eth0 = network.default_interface.as_ref().unwrap();
    assert_eq!(eth0.name, "eth0");
    assert_eq!(network.interfaces.len(), 1, "{network:?}");
    (eth0.rx_bytes.unwrap().value, eth0.tx_bytes.unwrap().value)
}

#[tokio::test]
async fn pod_network_bytes_grow_after_traffic_between_two_pods() {
    if !can_run(
        is_root()
            && have_command("nsenter")
            && have_command("busybox")
            && Path::new(BIN_DIR).join("bridge").exists(),
        "root, nsenter, busybox and the CNI plugins in /usr/lib/cni",
    ) {
        return;
    }
    let pid = std::process::id();
    let dir = tempfile::Builder::new()
        .prefix("berth-e2e-statsnet-")
        .tempdir()
        .unwrap();
    let bridge = Bridge(format!("bs{}", pid % 100_000));
    let prefix = format!("10.{}.77", 240 + pid % 16);
    let conf_dir = dir.path().join("net.d");
    std::fs::create_dir(&conf_dir).unwrap();
    std::fs::write(
        conf_dir.join("10-stats.conflist"),
        format!(
            r#"{{"cniVersion":"1.0.0","name":"berth-e2e-stats-{pid}","plugins":[{{"type":"bridge","bridge":"{}","isGateway":true,
"ipam":{{"type":"host-local","dataDir":"{}","ranges":[[{{"subnet":"{prefix}.0/24"}}]]}}}}]}}"#,
            bridge.0,
            dir.path().join("ipam").display()
        ),
    )
    .unwrap();
    let berthd = Berthd::start_with(Options {
        config: format!(
            "[cni]\nconf_dir = \"{}\"\nbin_dirs = [\"{BIN_DIR}\"]\nplugin_timeout = 30\n",
            conf_dir.display()
        ),
        ..Options::default()
    })
    .await;
    let mut client = berthd.runtime().await;
    let cgroup_parent = format!("/berth-e2e-statsnet-{pid}");
    let _cleanup = CgroupParent(cgroup_parent.clone());
    let a = run_pod(
        &mut client,
        pod_config("neta", NamespaceMode::Pod, &cgroup_parent, dir.path()),
    )
    .await;
    let b = run_pod(
        &mut client,
        pod_config("netb", NamespaceMode::Pod, &cgroup_parent, dir.path()),
    )
    .await;
    let status = client
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: a.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&status.info["info"]).unwrap();
    let netns_a = info["namespaces"]["net"].as_str().unwrap().to_string();
    let b_ip = client
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: b.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .network
        .unwrap()
        .ip;

    let (a_rx, a_tx) = default_interface(&mut client, &a).await;
    let (b_rx, b_tx) = default_interface(&mut client, &b).await;
    // 5 pings of 1000 bytes from pod a to pod b.
    let out = sh(&[
        "nsenter",
        &format!("--net={netns_a}"),
        "busybox",
        "ping",
        "-c",
        "5",
        "-i",
        "0.2",
        "-s",
        "1000",
        "-W",
        "5",
        &b_ip,
    ]);
    assert!(out.status.success(), "ping {b_ip}: {out:?}");
    let (a_rx2, a_tx2) = default_interface(&mut client, &a).await;
    let (b_rx2, b_tx2) = default_interface(&mut client, &b).await;
    assert!(a_tx2 >= a_tx + 5000, "a sent: {a_tx} -> {a_tx2}");
    assert!(a_rx2 >= a_rx + 5000, "a got the replies: {a_rx} -> {a_rx2}");
    assert!(b_rx2 >= b_rx + 5000, "b received: {b_rx} -> {b_rx2}");
    assert!(b_tx2 >= b_tx + 5000, "b replied: {b_tx} -> {b_tx2}");
    let metrics = client
        .list_pod_sandbox_metrics(ListPodSandboxMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pod_metrics;
    let a_metrics = &metrics
        .iter()
        .find(|m| m.pod_sandbox_id == a)
        .unwrap()
        .metrics;
    let received = a_metrics
        .iter()
        .find(|m| m.name == "container_network_receive_bytes_total")
        .unwrap();
    assert_eq!(received.label_values, [a.as_str(), "POD", "", "eth0"]);
    assert!(received.value.unwrap().value >= a_rx2, "{received:?}");

    berth_e2e::stop_and_remove_pod(&mut client, &a).await;
    berth_e2e::stop_and_remove_pod(&mut client, &b).await;
}

/// Seconds since the epoch now.
fn now_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Whether the container's cgroup `relative` has `file` in the v1
/// hierarchy `controller` or in the v2 tree: what this host can give.
fn cgroup_has(relative: &str, controller: &str, file: &str) -> bool {
    let relative = relative.trim_start_matches('/');
    [
        Path::new("/sys/fs/cgroup").join(controller),
        Path::new("/sys/fs/cgroup").to_path_buf(),
    ]
    .iter()
    .any(|root| root.join(relative).join(file).exists())
}

/// The (labels after id/name/image, value) of each `name` metric.
fn metric_values(metrics: &[Metric], name: &str) -> Vec<(Vec<String>, u64)> {
    metrics
        .iter()
        .filter(|m| m.name == name)
        .map(|m| (m.label_values[3..].to_vec(), m.value.unwrap().value))
        .collect()
}

/// The one unlabelled `name` metric, if reported.
fn metric(metrics: &[Metric], name: &str) -> Option<u64> {
    let values = metric_values(metrics, name);
    assert!(values.len() <= 1, "{name}: {values:?}");
    values.first().map(|(_, v)| *v)
}

async fn pod_metrics(client: &mut Client, pod: &str) -> PodSandboxMetrics {
    client
        .list_pod_sandbox_metrics(ListPodSandboxMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pod_metrics
        .into_iter()
        .find(|p| p.pod_sandbox_id == pod)
        .expect("the pod's metrics")
}

fn of_container<'a>(pod: &'a PodSandboxMetrics, id: &str) -> &'a [Metric] {
    &pod.container_metrics
        .iter()
        .find(|c| c.container_id == id)
        .expect("the container's metrics")
        .metrics
}

/// The cAdvisor names ListPodSandboxMetrics added to usage, working set,
/// RSS, the writable layer's usage and the pod's bytes and errors.
const NEW_METRICS: &[&str] = &[
    "container_cpu_cfs_periods_total",
    "container_cpu_cfs_throttled_periods_total",
    "container_cpu_cfs_throttled_seconds_total",
    "container_memory_mapped_file",
    "container_memory_kernel_usage",
    "container_memory_failcnt",
    "container_memory_failures_total",
    "container_oom_events_total",
    "container_blkio_device_usage_total",
    "container_fs_inodes_free",
    "container_fs_inodes_total",
    "container_fs_limit_bytes",
    "container_network_receive_packets_total",
    "container_network_receive_packets_dropped_total",
    "container_network_transmit_packets_total",
    "container_network_transmit_packets_dropped_total",
    "container_processes",
    "container_threads",
    "container_threads_max",
    "container_file_descriptors",
    "container_sockets",
    "container_ulimits_soft",
    "container_last_seen",
    "container_start_time_seconds",
    "container_spec_cpu_period",
    "container_spec_cpu_quota",
    "container_spec_cpu_shares",
    "container_spec_memory_limit_bytes",
    "container_spec_memory_reservation_limit_bytes",
    "container_spec_memory_swap_limit_bytes",
    "container_pressure_cpu_stalled_seconds_total",
    "container_pressure_cpu_waiting_seconds_total",
    "container_pressure_memory_stalled_seconds_total",
    "container_pressure_memory_waiting_seconds_total",
    "container_pressure_io_stalled_seconds_total",
    "container_pressure_io_waiting_seconds_total",
];

#[tokio::test(flavor = "multi_thread")]
async fn pod_metrics_serve_the_cadvisor_set_from_the_kernel() {
    if !can_run_here() || !can_run_network() {
        return;
    }
    let started = now_seconds();
    let net = Net::new(30);
    let mut w = World::new("cadvisor").await;
    let _cleanup = CgroupParent(w.cgroup_parent.clone());
    w.join_network(&net).await;
    let sandbox = w.networked_pod_config("cadvisor");
    let pod = run_pod(&mut w.client, sandbox.clone()).await;
    let run = async |w: &mut World, name: &str, script: &str, resources| {
        let mut config = w.container(name, script);
        config.linux.as_mut().unwrap().resources = Some(resources);
        let id = w
            .client
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(config),
                sandbox_config: Some(sandbox.clone()),
            })
            .await
            .unwrap()
            .into_inner()
            .container_id;
        w.client
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap();
        id
    };
    // A tenth of a core, spinning, beside a listening socket.
    let spin = run(
        &mut w,
        "spin",
        "nc -l -p 8080 & while :; do :; done",
        LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 10_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 64 * MIB as i64,
            ..Default::default()
        },
    )
    .await;
    // A child that outgrows 32 MiB and is OOM killed; the shell lives on.
    let oom = run(
        &mut w,
        "oom",
        "dd if=/dev/zero bs=1M count=200 2>/dev/null | tail -c 200000000 >/dev/null; \
         exec sleep 1000",
        LinuxContainerResources {
            memory_limit_in_bytes: 32 * MIB as i64,
            ..Default::default()
        },
    )
    .await;
    let spin_cgroup = format!("{}/{spin}", w.cgroup_parent);

    // Traffic to the pod: 3 pings from the host over the bridge.
    let ip = w
        .client
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .network
        .unwrap()
        .ip;
    let out = berth_e2e::net::sh(&["busybox", "ping", "-c", "3", "-W", "5", &ip]);
    assert!(out.status.success(), "ping {ip}: {out:?}");

    // Until the spinner was throttled for a second and the OOM kill came.
    let client = w.client.clone();
    let metrics = until(
        || {
            let mut client = client.clone();
            let pod = pod.clone();
            async move { pod_metrics(&mut client, &pod).await }
        },
        |m| {
            metric(
                of_container(m, &spin),
                "container_cpu_cfs_throttled_seconds_total",
            )
            .is_some_and(|s| s >= 1)
                && metric(of_container(m, &oom), "container_oom_events_total")
                    .is_some_and(|n| n >= 1)
        },
        "the spinner is throttled and the OOM killer struck",
    )
    .await;
    let scraped = now_seconds();

    // Every name is described, and every metric has its descriptor's labels.
    let descriptors: HashMap<String, Vec<String>> = w
        .client
        .list_metric_descriptors(ListMetricDescriptorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .descriptors
        .into_iter()
        .map(|d| (d.name, d.label_keys))
        .collect();
    for name in NEW_METRICS {
        assert!(descriptors.contains_key(*name), "{name}: {descriptors:?}");
    }
    let all = metrics
        .metrics
        .iter()
        .chain(metrics.container_metrics.iter().flat_map(|c| &c.metrics));
    for m in all {
        let keys = descriptors
            .get(&m.name)
            .unwrap_or_else(|| panic!("{} has no descriptor", m.name));
        assert_eq!(keys.len(), m.label_values.len(), "{m:?}");
        assert!(m.value.is_some(), "{m:?}");
    }

    let spin_metrics = of_container(&metrics, &spin);
    let oom_metrics = of_container(&metrics, &oom);
    for (what, metrics) in [
        ("spin", spin_metrics),
        ("oom", oom_metrics),
        ("the pod", &metrics.metrics),
    ] {
        println!("one scrape of {what}: {:#?}", values_for_report(metrics));
    }
    let get = |name: &str| {
        metric(spin_metrics, name).unwrap_or_else(|| panic!("{name}: {spin_metrics:?}"))
    };
    // CPU: a tenth of a core for a spinner is throttled nearly every period.
    let periods = get("container_cpu_cfs_periods_total");
    let throttled = get("container_cpu_cfs_throttled_periods_total");
    assert!(
        throttled > 0 && throttled <= periods,
        "{throttled}/{periods}"
    );
    assert!(get("container_cpu_cfs_throttled_seconds_total") >= 1);
    // The limits asked for, as the kernel holds them.
    assert_eq!(get("container_spec_cpu_period"), 100_000);
    assert_eq!(get("container_spec_cpu_quota"), 10_000);
    // v2 keeps a weight, which maps back to about the shares asked for.
    let shares = get("container_spec_cpu_shares");
    assert!((490..=512).contains(&shares), "{shares}");
    assert_eq!(get("container_spec_memory_limit_bytes"), 64 * MIB);
    assert!(
        metric(
            spin_metrics,
            "container_spec_memory_reservation_limit_bytes"
        )
        .is_some()
    );
    assert_eq!(
        metric(spin_metrics, "container_spec_memory_swap_limit_bytes").is_some(),
        cgroup_has(&spin_cgroup, "memory", "memory.memsw.limit_in_bytes")
            || cgroup_has(&spin_cgroup, "memory", "memory.swap.max"),
    );
    // Processes: the shell and nc, with their descriptors and nc's socket.
    let processes = get("container_processes");
    assert!(processes >= 2, "{processes}");
    assert!(get("container_threads") >= processes);
    assert!(get("container_file_descriptors") >= 3);
    assert!(get("container_sockets") >= 1);
    assert!(get("container_ulimits_soft") >= 3);
    assert_eq!(
        metric(spin_metrics, "container_threads_max").is_some(),
        cgroup_has(&spin_cgroup, "pids", "pids.max")
    );
    // Times: within the test's window.
    for name in ["container_start_time_seconds", "container_last_seen"] {
        let at = get(name);
        assert!(
            (started..=scraped).contains(&at),
            "{name} {at} not in {started}..={scraped}"
        );
    }
    // Memory: faults by type and scope, the mapped files' figure.
    let faults = metric_values(spin_metrics, "container_memory_failures_total");
    assert_eq!(faults.len(), 4, "{faults:?}");
    for (labels, value) in &faults {
        if labels[0] == "pgfault" {
            assert!(*value > 0, "{labels:?}");
        }
    }
    assert!(metric(spin_metrics, "container_memory_mapped_file").is_some());
    // v1's kmem files, or v2's `kernel` key (kernels 5.18+).
    let v2_stat = Path::new("/sys/fs/cgroup")
        .join(spin_cgroup.trim_start_matches('/'))
        .join("memory.stat");
    let kernel_kept = cgroup_has(&spin_cgroup, "memory", "memory.kmem.usage_in_bytes")
        || std::fs::read_to_string(v2_stat)
            .is_ok_and(|s| s.lines().any(|l| l.starts_with("kernel ")));
    let kernel = metric(spin_metrics, "container_memory_kernel_usage");
    assert_eq!(kernel.is_some(), kernel_kept, "{kernel:?}");
    assert!(kernel.is_none_or(|bytes| bytes > 0), "{kernel:?}");
    // The writable layer's filesystem.
    let device = |name: &str| {
        let values = metric_values(spin_metrics, name);
        assert_eq!(values.len(), 1, "{name}: {values:?}");
        values[0].1
    };
    let (total, free) = (
        device("container_fs_inodes_total"),
        device("container_fs_inodes_free"),
    );
    assert!(total >= free && free > 0, "{free}/{total}");
    assert!(device("container_fs_limit_bytes") > device("container_fs_usage_bytes"));
    // Pressure where the kernel keeps it (v2, or the hybrid v2 tree).
    assert_eq!(
        metric(spin_metrics, "container_pressure_cpu_waiting_seconds_total").is_some(),
        cgroup_has(&spin_cgroup, "unified", "cpu.pressure"),
    );

    // The OOM kill, and the limit hits before it.
    assert!(metric(oom_metrics, "container_oom_events_total").unwrap() >= 1);
    // v2 counts each time usage reached memory.max; v1's memory.failcnt
    // only those where the memory counter, not memory+swap's, refused.
    let failcnt = metric(oom_metrics, "container_memory_failcnt").unwrap();
    let oom_cgroup = format!("{}/{oom}", w.cgroup_parent);
    if cgroup_has(&oom_cgroup, "memory", "memory.events") {
        assert!(failcnt >= 1, "{failcnt}");
    }
    assert_eq!(
        metric(oom_metrics, "container_spec_cpu_quota"),
        None,
        "no quota"
    );
    assert!(
        metric(spin_metrics, "container_oom_events_total") == Some(0),
        "the spinner was not OOM killed"
    );

    // The pod's interface: the pings in, the replies out.
    for (name, at_least) in [
        ("container_network_receive_packets_total", 3),
        ("container_network_transmit_packets_total", 3),
        ("container_network_receive_packets_dropped_total", 0),
        ("container_network_transmit_packets_dropped_total", 0),
    ] {
        let values = metric_values(&metrics.metrics, name);
        assert_eq!(values.len(), 1, "{name}: {values:?}");
        assert_eq!(values[0].0, ["eth0"], "{name}");
        assert!(values[0].1 >= at_least, "{name}: {values:?}");
    }

    berth_e2e::stop_and_remove_pod(&mut w.client, &pod).await;
}

fn values_for_report(metrics: &[Metric]) -> Vec<String> {
    metrics
        .iter()
        .map(|m| {
            format!(
                "{}{:?}={}",
                m.name,
                &m.label_values[3..],
                m.value.unwrap().value
            )
        })
        .collect()
}
