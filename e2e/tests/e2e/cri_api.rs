//! What cri-api v0.36 (kubelet 1.36) added since the CRI Berth first
//! spoke: the `Stream*` list RPCs (each agreeing with its List RPC on 500
//! containers), UpdatePodSandboxResources on the pod's own cgroup, and
//! per-container stop signals (KEP-4960).

use std::path::PathBuf;

use berth_e2e::cri::image_service_client::ImageServiceClient;
use berth_e2e::cri::runtime_service_client::RuntimeServiceClient;
use berth_e2e::cri::{
    self, ContainerFilter, ContainerStatsFilter, ContainerStatusRequest, LinuxContainerResources,
    ListContainerStatsRequest, ListContainersRequest, ListImagesRequest,
    ListPodSandboxMetricsRequest, ListPodSandboxRequest, ListPodSandboxStatsRequest,
    PodSandboxFilter, PodSandboxStatsFilter, Signal, StreamContainerStatsRequest,
    StreamContainersRequest, StreamImagesRequest, StreamPodSandboxMetricsRequest,
    StreamPodSandboxStatsRequest, StreamPodSandboxesRequest, UpdatePodSandboxResourcesRequest,
};
use berth_e2e::world::{World, can_run_here};
use tonic::transport::Channel;

const PODS: usize = 20;
const PER_POD: usize = 25;

/// Every message of a server stream.
async fn collect<T>(stream: Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>) -> Vec<T> {
    let mut stream = stream.expect("stream RPC").into_inner();
    let mut out = Vec::new();
    while let Some(message) = stream.message().await.expect("stream message") {
        out.push(message);
    }
    out
}

async fn streams_agree(
    client: &mut RuntimeServiceClient<Channel>,
    images: &mut ImageServiceClient<Channel>,
    pod: &str,
) {
    // Pods, unfiltered and by label.
    for filter in [
        None,
        Some(PodSandboxFilter {
            label_selector: [("group".to_string(), "odd".to_string())].into(),
            ..Default::default()
        }),
    ] {
        let listed = client
            .list_pod_sandbox(ListPodSandboxRequest {
                filter: filter.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .items;
        let streamed: Vec<_> = collect(
            client
                .stream_pod_sandboxes(StreamPodSandboxesRequest { filter })
                .await,
        )
        .await
        .into_iter()
        .flat_map(|m| m.pod_sandboxes)
        .collect();
        assert_eq!(streamed, listed);
    }
    // Containers: all 500, one pod's, one label's.
    for filter in [
        None,
        Some(ContainerFilter {
            pod_sandbox_id: pod.into(),
            ..Default::default()
        }),
        Some(ContainerFilter {
            label_selector: [("app".to_string(), "sp3-c7".to_string())].into(),
            ..Default::default()
        }),
    ] {
        let listed = client
            .list_containers(ListContainersRequest {
                filter: filter.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .containers;
        let responses = collect(
            client
                .stream_containers(StreamContainersRequest {
                    filter: filter.clone(),
                })
                .await,
        )
        .await;
        let streamed: Vec<_> = responses.into_iter().flat_map(|m| m.containers).collect();
        assert_eq!(streamed, listed, "filter {filter:?}");
        if filter.is_none() {
            assert_eq!(listed.len(), PODS * PER_POD);
        }
    }
    // Stats carry readings of their moment: the same items, in order.
    let ids = |stats: &[cri::ContainerStats]| -> Vec<String> {
        stats
            .iter()
            .map(|s| s.attributes.as_ref().unwrap().id.clone())
            .collect()
    };
    for filter in [
        None,
        Some(ContainerStatsFilter {
            pod_sandbox_id: pod.into(),
            ..Default::default()
        }),
    ] {
        let listed = client
            .list_container_stats(ListContainerStatsRequest {
                filter: filter.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .stats;
        let streamed: Vec<_> = collect(
            client
                .stream_container_stats(StreamContainerStatsRequest { filter })
                .await,
        )
        .await
        .into_iter()
        .flat_map(|m| m.container_stats)
        .collect();
        assert_eq!(ids(&streamed), ids(&listed));
    }
    let pod_ids = |stats: &[cri::PodSandboxStats]| -> Vec<String> {
        stats
            .iter()
            .map(|s| s.attributes.as_ref().unwrap().id.clone())
            .collect()
    };
    for filter in [
        None,
        Some(PodSandboxStatsFilter {
            id: pod.into(),
            ..Default::default()
        }),
    ] {
        let listed = client
            .list_pod_sandbox_stats(ListPodSandboxStatsRequest {
                filter: filter.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .stats;
        let streamed: Vec<_> = collect(
            client
                .stream_pod_sandbox_stats(StreamPodSandboxStatsRequest { filter })
                .await,
        )
        .await
        .into_iter()
        .flat_map(|m| m.pod_sandbox_stats)
        .collect();
        assert_eq!(pod_ids(&streamed), pod_ids(&listed));
        assert!(!listed.is_empty());
    }
    let listed: Vec<String> = client
        .list_pod_sandbox_metrics(ListPodSandboxMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pod_metrics
        .into_iter()
        .map(|m| m.pod_sandbox_id)
        .collect();
    let streamed: Vec<String> = collect(
        client
            .stream_pod_sandbox_metrics(StreamPodSandboxMetricsRequest {})
            .await,
    )
    .await
    .into_iter()
    .flat_map(|m| m.pod_sandbox_metrics)
    .map(|m| m.pod_sandbox_id)
    .collect();
    assert_eq!(streamed, listed);
    assert_eq!(listed.len(), PODS);
    let listed = images
        .list_images(ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .images;
    let streamed: Vec<_> = collect(
        images
            .stream_images(StreamImagesRequest { filter: None })
            .await,
    )
    .await
    .into_iter()
    .flat_map(|m| m.images)
    .collect();
    assert_eq!(streamed, listed);
    assert!(!listed.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_rpcs_agree_with_their_list_rpcs_on_500_containers() {
    if !can_run_here() {
        return;
    }
    let mut w = World::new("streamlist").await;
    let mut pods = Vec::new();
    for p in 0..PODS {
        let mut config = w.pod_config(&format!("sp{p}"));
        let group = if p % 2 == 1 { "odd" } else { "even" };
        config.labels.insert("group".into(), group.into());
        let id = berth_e2e::run_pod(&mut w.client, config).await.unwrap();
        pods.push(id);
    }
    // Created, not started: a container needs no process to be listed.
    let mut tasks = tokio::task::JoinSet::new();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(8));
    for (p, pod) in pods.iter().enumerate() {
        for c in 0..PER_POD {
            let mut client = w.client.clone();
            let config = w.container(&format!("sp{p}-c{c}"), "sleep 600");
            let sandbox = w.pod_config(&format!("sp{p}"));
            let pod = pod.clone();
            let slots = slots.clone();
            tasks.spawn(async move {
                let _slot = slots.acquire().await.unwrap();
                client
                    .create_container(cri::CreateContainerRequest {
                        pod_sandbox_id: pod,
                        config: Some(config),
                        sandbox_config: Some(sandbox),
                    })
                    .await
                    .unwrap();
            });
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let mut images = w.berthd().images().await;
    let mut client = w.client.clone();
    streams_agree(&mut client, &mut images, &pods[3]).await;
    for pod in &pods {
        w.remove_pod(pod).await;
    }
}

/// The v1 or v2 file of `controller` for cgroup `relative`, read as the
/// node's mount table lays it out.
fn cgroup_file(controller: &str, relative: &str, v1: &str, v2: &str) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut v2_dir = None;
    for line in info.lines() {
        let (left, right) = line.split_once(" - ").unwrap();
        let mount = PathBuf::from(left.split(' ').nth(4).unwrap());
        let mut fields = right.split(' ');
        let fstype = fields.next().unwrap();
        let options = fields.nth(1).unwrap_or_default();
        if fstype == "cgroup" && options.split(',').any(|o| o == controller) {
            let path = mount.join(relative).join(v1);
            return std::fs::read_to_string(path)
                .ok()
                .map(|s| s.trim().to_string());
        }
        if fstype == "cgroup2" {
            v2_dir = Some(mount.join(relative));
        }
    }
    std::fs::read_to_string(v2_dir?.join(v2))
        .ok()
        .map(|s| s.trim().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn update_pod_sandbox_resources_sets_the_pods_own_cgroup() {
    if !can_run_here() {
        return;
    }
    let mut w = World::new("podresize").await;
    // Its own parent, as the kubelet's pod<uid> cgroup (which Berth made
    // for its infra process below it, so it exists).
    let parent = format!("/berth-e2e-{}-podresize-own", std::process::id());
    let mut config = w.pod_config("podresize");
    config.linux.as_mut().unwrap().cgroup_parent = parent.clone();
    let pod = berth_e2e::run_pod(&mut w.client, config).await.unwrap();
    let id = w.run(&pod, w.container("podresize-c", "sleep 600")).await;
    let request = |resources, overhead| UpdatePodSandboxResourcesRequest {
        pod_sandbox_id: pod.clone(),
        overhead,
        resources,
    };
    w.client
        .update_pod_sandbox_resources(request(
            Some(LinuxContainerResources {
                memory_limit_in_bytes: 256 << 20,
                cpu_period: 100_000,
                cpu_quota: 150_000,
                cpu_shares: 1024,
                ..Default::default()
            }),
            Some(LinuxContainerResources {
                memory_limit_in_bytes: 64 << 20,
                ..Default::default()
            }),
        ))
        .await
        .expect("UpdatePodSandboxResources");
    let relative = parent.trim_start_matches('/');
    assert_eq!(
        cgroup_file("memory", relative, "memory.limit_in_bytes", "memory.max").as_deref(),
        Some((320u64 << 20).to_string().as_str())
    );
    let quota = cgroup_file("cpu", relative, "cpu.cfs_quota_us", "cpu.max").unwrap();
    assert!(quota == "150000" || quota == "150000 100000", "{quota}");
    let weight = cgroup_file("cpu", relative, "cpu.shares", "cpu.weight").unwrap();
    assert!(weight == "1024" || weight == "39", "{weight}");

    // Bad values change nothing and name the field; unknown pods are NOT_FOUND.
    let err = w
        .client
        .update_pod_sandbox_resources(request(
            Some(LinuxContainerResources {
                memory_limit_in_bytes: -1,
                ..Default::default()
            }),
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("resources.memory_limit_in_bytes"),
        "{err:?}"
    );
    assert_eq!(
        cgroup_file("memory", relative, "memory.limit_in_bytes", "memory.max").as_deref(),
        Some((320u64 << 20).to_string().as_str())
    );
    let err = w
        .client
        .update_pod_sandbox_resources(UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: "f".repeat(64),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");

    // A pod in the shared default parent: accepted, and no pod's limits
    // reach the parent every such pod shares.
    let mut config = w.pod_config("podshared");
    config.linux.as_mut().unwrap().cgroup_parent = String::new();
    let shared = berth_e2e::run_pod(&mut w.client, config).await.unwrap();
    w.client
        .update_pod_sandbox_resources(UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: shared.clone(),
            resources: Some(LinuxContainerResources {
                memory_limit_in_bytes: 1 << 20,
                ..Default::default()
            }),
            overhead: None,
        })
        .await
        .expect("UpdatePodSandboxResources of a pod in the shared parent");
    // berthd's default parent for pods that name none.
    let limit = cgroup_file("memory", "berth", "memory.limit_in_bytes", "memory.max");
    assert_ne!(limit.as_deref(), Some((1u64 << 20).to_string().as_str()));

    w.stop(&id, 0).await;
    w.remove(&id).await;
    w.remove_pod(&pod).await;
    w.remove_pod(&shared).await;
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let _ = std::fs::remove_dir(hierarchy.path().join(relative));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_containers_stop_signal_is_sent_and_reported() {
    if !can_run_here() {
        return;
    }
    let mut w = World::new("stopsig").await;
    let pod = w.pod("stopsig").await;
    // The busybox fixture's image says StopSignal SIGUSR1; the config's
    // SIGINT wins. Exits 0 only on SIGINT (SIGUSR1 would end it with 138).
    let script = "trap 'echo got-int; exit 0' INT; echo ready; while true; do sleep 0.1; done";
    let mut config = w.container("stopsig-int", script);
    config.stop_signal = Signal::Sigint as i32;
    let int = w.run(&pod, config).await;
    let plain = w.run(&pod, w.container("stopsig-plain", "sleep 600")).await;
    let status = |w: &mut World, id: &str| {
        let id = id.to_string();
        let mut client = w.client.clone();
        async move {
            client
                .container_status(ContainerStatusRequest {
                    container_id: id,
                    verbose: false,
                })
                .await
                .unwrap()
                .into_inner()
                .status
                .unwrap()
        }
    };
    assert_eq!(
        status(&mut w, &int).await.stop_signal,
        Signal::Sigint as i32
    );
    // No signal in the config: the image's.
    assert_eq!(
        status(&mut w, &plain).await.stop_signal,
        Signal::Sigusr1 as i32
    );
    let log = w.logs.path().join("stopsig").join("stopsig-int.log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !World::log_text(&log).iter().any(|(_, t)| t == "ready") {
        assert!(std::time::Instant::now() < deadline, "the trap was not set");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    w.stop(&int, 30).await;
    let stopped = status(&mut w, &int).await;
    assert_eq!(stopped.exit_code, 0, "{stopped:?}");
    assert!(World::log_text(&log).iter().any(|(_, t)| t == "got-int"));

    // An unknown enum value is refused naming the field.
    let mut bad = w.container("stopsig-bad", "sleep 1");
    bad.stop_signal = 999;
    let err = w.create(&pod, bad).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().starts_with("stop_signal: "), "{err:?}");
    w.remove_pod(&pod).await;
}

/// `Seccomp:` of the container's first process: 0 unconfined, 2 filtered.
async fn seccomp_mode(w: &mut World, id: &str) -> String {
    let (code, out, err) = w.exec(id, "grep '^Seccomp:' /proc/1/status", 60).await;
    assert_eq!(code, 0, "{err}");
    out.split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unset_seccomp_profile_is_unconfined_unless_configured() {
    if !can_run_here() {
        return;
    }
    // As the CRI says: no profile, no filter.
    let mut w = World::new("seccompunset").await;
    let pod = w.pod("seccompunset").await;
    let id = w
        .run(&pod, w.container("seccompunset-c", "sleep 600"))
        .await;
    assert_eq!(seccomp_mode(&mut w, &id).await, "0");
    w.remove_pod(&pod).await;
    drop(w);

    // CRI-O's seccomp_use_default_when_empty: RuntimeDefault instead.
    let mut w = World::with_config(
        "seccompdefault",
        "[container]\nseccomp_use_default_when_empty = true\n",
    )
    .await;
    let pod = w.pod("seccompdefault").await;
    let id = w
        .run(&pod, w.container("seccompdefault-c", "sleep 600"))
        .await;
    assert_eq!(seccomp_mode(&mut w, &id).await, "2");
    w.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn image_fs_info_reports_containers_apart_on_a_filesystem_of_their_own() {
    if !berth_e2e::can_run(berth_e2e::is_root(), "needs root (mounts a tmpfs)") {
        return;
    }
    use berth_e2e::cri::ImageFsInfoRequest;
    // One filesystem: the image one stands for both.
    let berthd = berth_e2e::Berthd::start().await;
    let info = berthd
        .images()
        .await
        .image_fs_info(ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.image_filesystems.len(), 1);
    assert!(info.container_filesystems.is_empty(), "{info:?}");
    drop(berthd);

    // The containers' state on a tmpfs of its own.
    let paths = berth_e2e::Paths::create();
    let containers = paths.root().join("containers");
    std::fs::create_dir_all(&containers).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(&containers)
        .status()
        .unwrap();
    assert!(status.success());
    let berthd = berth_e2e::Berthd::start_in(paths, berth_e2e::Options::default()).await;
    let info = berthd
        .images()
        .await
        .image_fs_info(ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.container_filesystems.len(), 1, "{info:?}");
    let fs = &info.container_filesystems[0];
    assert_eq!(
        fs.fs_id.as_ref().unwrap().mountpoint,
        containers.display().to_string()
    );
    assert!(fs.inodes_used.as_ref().unwrap().value >= 1);
    assert_ne!(
        info.image_filesystems[0].fs_id.as_ref().unwrap().mountpoint,
        fs.fs_id.as_ref().unwrap().mountpoint
    );
}
