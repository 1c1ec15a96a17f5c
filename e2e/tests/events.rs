//! GetContainerEvents, UpdateContainerResources and the container gauges
//! through the real berthd: real images from a local registry, real runc,
//! berth-shim and cgroups. Pods use the host's network (no CNI); each test
//! has its own berthd, registry and cgroup parent, so they run in parallel.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_e2e::cri::runtime_service_client::RuntimeServiceClient;
use berth_e2e::cri::{
    ContainerConfig, ContainerEventResponse, ContainerEventType, ContainerMetadata, ContainerState,
    ContainerStatus, ContainerStatusRequest, CreateContainerRequest, GetEventsRequest, ImageSpec,
    LinuxContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, PullImageRequest, RemoveContainerRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopContainerRequest,
    StopPodSandboxRequest, UpdateContainerResourcesRequest,
};
use berth_e2e::registry::{self, Registry, Security};
use berth_e2e::{Berthd, Options, can_run, have_command, is_root};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Streaming;
use tonic::transport::Channel;

type Client = RuntimeServiceClient<Channel>;

fn can_run_here() -> bool {
    can_run(
        is_root() && have_command("runc") && registry::available(),
        "needs root, runc, docker-registry, skopeo and the fixture tools",
    )
}

struct World {
    _registry: Registry,
    _berthd: Berthd,
    image: String,
    client: Client,
    metrics_port: u16,
    dir: tempfile::TempDir,
    cgroup_parent: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl World {
    async fn new(tag: &str) -> World {
        let registry = Registry::start_empty(Security::Plain);
        registry.push("busybox", "berth/busybox:latest");
        let dir = tempfile::Builder::new()
            .prefix("berth-e2e-events-")
            .tempdir()
            .unwrap();
        let conf = dir.path().join("registries.conf");
        std::fs::write(
            &conf,
            format!(
                "[[registry]]\nlocation = \"{}\"\ninsecure = true\n",
                registry.host()
            ),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("net.d")).unwrap();
        let metrics_port = free_port();
        let berthd = Berthd::start_with(Options {
            config: format!(
                "[image]\nregistries_config = \"{}\"\n[cni]\nconf_dir = \"{}\"\n\
                 [metrics]\nenabled = true\naddress = \"127.0.0.1:{metrics_port}\"\n",
                conf.display(),
                dir.path().join("net.d").display()
            ),
            ..Options::default()
        })
        .await;
        let image = registry.image("busybox");
        berthd
            .images()
            .await
            .pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
        let client = berthd.runtime().await;
        World {
            _registry: registry,
            _berthd: berthd,
            image,
            client,
            metrics_port,
            dir,
            cgroup_parent: format!("/berth-e2e-{}-{tag}", std::process::id()),
        }
    }

    fn pod_config(&self, name: &str) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "e2e".into(),
                attempt: 0,
            }),
            log_directory: self.dir.path().join(name).display().to_string(),
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

    async fn pod(&mut self, name: &str) -> String {
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

    fn container(&self, name: &str, script: &str) -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: self.image.clone(),
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

    /// Creates and starts `config` in pod `pod` (named `pod_name`).
    async fn run(&mut self, pod: &str, pod_name: &str, config: ContainerConfig) -> String {
        let sandbox = self.pod_config(pod_name);
        let id = self
            .client
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(config),
                sandbox_config: Some(sandbox),
            })
            .await
            .unwrap()
            .into_inner()
            .container_id;
        self.client
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap();
        id
    }

    async fn status(&mut self, id: &str) -> (ContainerStatus, serde_json::Value) {
        let response = self
            .client
            .container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner();
        let info = serde_json::from_str(&response.info["info"]).unwrap();
        (response.status.unwrap(), info)
    }

    async fn stop_remove(&mut self, id: &str) {
        self.client
            .stop_container(StopContainerRequest {
                container_id: id.into(),
                timeout: 0,
            })
            .await
            .unwrap();
        self.client
            .remove_container(RemoveContainerRequest {
                container_id: id.into(),
            })
            .await
            .unwrap();
    }

    async fn remove_pod(&mut self, pod: &str) {
        self.client
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.into(),
            })
            .await
            .unwrap();
        self.client
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod.into(),
            })
            .await
            .unwrap();
    }

    async fn subscribe(&self) -> Streaming<ContainerEventResponse> {
        self.client
            .clone()
            .get_container_events(GetEventsRequest {})
            .await
            .unwrap()
            .into_inner()
    }

    /// `berth_<name>{state=…}` gauges from /metrics, through a Prometheus
    /// text parser.
    async fn gauges(&self, name: &str) -> HashMap<String, f64> {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.metrics_port))
            .await
            .unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (_, body) = response.split_once("\r\n\r\n").unwrap();
        let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
            .expect("the page parses");
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .map(|s| {
                let value = match s.value {
                    prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                    ref other => panic!("{name}: not a gauge: {other:?}"),
                };
                (s.labels.get("state").unwrap_or("").to_string(), value)
            })
            .collect()
    }
}

impl Drop for World {
    fn drop(&mut self) {
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

/// The next events of container `id` (others skipped) until `last` came.
async fn events_of(
    stream: &mut Streaming<ContainerEventResponse>,
    id: &str,
    last: ContainerEventType,
) -> Vec<ContainerEventResponse> {
    let mut seen = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(60), stream.message())
            .await
            .unwrap_or_else(|_| panic!("no event for {id} after {seen:?}"))
            .unwrap()
            .expect("the stream stays open");
        if event.container_id == id {
            let done = event.container_event_type == last as i32;
            seen.push(event);
            if done {
                return seen;
            }
        }
    }
}

fn types(events: &[ContainerEventResponse]) -> Vec<ContainerEventType> {
    events
        .iter()
        .map(|e| ContainerEventType::try_from(e.container_event_type).unwrap())
        .collect()
}

fn status_in<'a>(event: &'a ContainerEventResponse, id: &str) -> Option<&'a ContainerStatus> {
    event.containers_statuses.iter().find(|s| s.id == id)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_subscribers_see_each_event_in_order_and_self_exits() {
    if !can_run_here() {
        return;
    }
    let mut w = World::new("events").await;
    let mut first = w.subscribe().await;
    let mut second = w.subscribe().await;
    let pod = w.pod("ev").await;

    let id = w
        .run(&pod, "ev", w.container("ev-sleep", "sleep 1000"))
        .await;
    w.stop_remove(&id).await;
    use ContainerEventType::*;
    for stream in [&mut first, &mut second] {
        let events = events_of(stream, &id, ContainerDeletedEvent).await;
        assert_eq!(
            types(&events),
            [
                ContainerCreatedEvent,
                ContainerStartedEvent,
                ContainerStoppedEvent,
                ContainerDeletedEvent
            ]
        );
        assert!(
            events
                .windows(2)
                .all(|w| w[0].created_at <= w[1].created_at)
        );
        for event in &events {
            let pod_status = event.pod_sandbox_status.as_ref().expect("pod status");
            assert_eq!(pod_status.id, pod);
            assert_eq!(pod_status.metadata.as_ref().unwrap().name, "ev");
            assert!(event.created_at > 0);
        }
        let state_of = |i: usize| status_in(&events[i], &id).map(|s| s.state);
        assert_eq!(state_of(0), Some(ContainerState::ContainerCreated as i32));
        assert_eq!(state_of(1), Some(ContainerState::ContainerRunning as i32));
        assert_eq!(state_of(2), Some(ContainerState::ContainerExited as i32));
        // Deleted: no longer among the pod's containers.
        assert_eq!(state_of(3), None);
    }

    // Exiting by itself: Stopped comes from the exit watcher, with no
    // status call from us.
    let quits = w
        .run(&pod, "ev", w.container("ev-quits", "sleep 1; exit 7"))
        .await;
    let events = events_of(&mut first, &quits, ContainerStoppedEvent).await;
    assert_eq!(
        types(&events),
        [
            ContainerCreatedEvent,
            ContainerStartedEvent,
            ContainerStoppedEvent
        ]
    );
    let stopped = status_in(&events[2], &quits).unwrap();
    assert_eq!(
        (stopped.state, stopped.exit_code),
        (ContainerState::ContainerExited as i32, 7)
    );
    // The second subscriber is behind but loses nothing at this pace.
    let events = events_of(&mut second, &quits, ContainerStoppedEvent).await;
    assert_eq!(types(&events).len(), 3);
    w.stop_remove(&quits).await;
    // One Stopped only: stop and remove of an exited container add Deleted.
    let events = events_of(&mut first, &quits, ContainerDeletedEvent).await;
    assert_eq!(types(&events), [ContainerDeletedEvent]);
    w.remove_pod(&pod).await;
}

/// A memory limit of a cgroup, v1 or v2 ("max": none).
fn memory_limit(cgroup: &Path) -> String {
    let relative = cgroup.strip_prefix("/").unwrap();
    let v1 = Path::new("/sys/fs/cgroup/memory").join(relative);
    let file = if Path::new("/sys/fs/cgroup/memory").is_dir() {
        v1.join("memory.limit_in_bytes")
    } else {
        Path::new("/sys/fs/cgroup")
            .join(relative)
            .join("memory.max")
    };
    std::fs::read_to_string(&file)
        .unwrap_or_else(|err| panic!("{}: {err}", file.display()))
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn update_resources_reaches_the_cgroup_and_metrics_count_containers() {
    if !can_run_here() {
        return;
    }
    let mut w = World::new("update").await;
    let pod = w.pod("up").await;
    let mut config = w.container("up-sleep", "sleep 1000");
    config.linux.as_mut().unwrap().resources = Some(LinuxContainerResources {
        memory_limit_in_bytes: 128 << 20,
        ..Default::default()
    });
    let id = w.run(&pod, "up", config).await;
    let (_, info) = w.status(&id).await;
    let cgroup = PathBuf::from(
        info["runtimeSpec"]["linux"]["cgroupsPath"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(memory_limit(&cgroup), (128u64 << 20).to_string());

    let update = |linux: LinuxContainerResources| UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(linux),
        ..Default::default()
    };
    w.client
        .update_container_resources(update(LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(memory_limit(&cgroup), (64u64 << 20).to_string());
    let (status, info) = w.status(&id).await;
    let resources = status.resources.unwrap().linux.unwrap();
    assert_eq!(
        (
            resources.memory_limit_in_bytes,
            resources.cpu_quota,
            resources.cpu_period
        ),
        (64 << 20, 50_000, 100_000)
    );
    let saved = &info["runtimeSpec"]["linux"]["resources"];
    assert_eq!(saved["memory"]["limit"], 64 << 20);
    assert_eq!(saved["cpu"]["quota"], 50_000);
    // Only what was asked changed in the saved spec: devices stay.
    assert!(saved["devices"].as_array().is_some_and(|d| !d.is_empty()));

    // Bad values: INVALID_ARGUMENT naming the field, nothing changed.
    let mut bad = vec![LinuxContainerResources {
        memory_limit_in_bytes: -1,
        ..Default::default()
    }];
    if !Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        // v1 hierarchies: no v2 keys.
        bad.push(LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            unified: HashMap::from([("memory.high".to_string(), "20M".to_string())]),
            ..Default::default()
        });
    }
    for linux in bad {
        let err = w
            .client
            .update_container_resources(update(linux.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{linux:?}: {err}");
        assert_eq!(memory_limit(&cgroup), (64u64 << 20).to_string());
    }
    let (status, _) = w.status(&id).await;
    assert_eq!(
        status
            .resources
            .unwrap()
            .linux
            .unwrap()
            .memory_limit_in_bytes,
        64 << 20
    );
    let err = w
        .client
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: "f".repeat(64),
            linux: Some(LinuxContainerResources::default()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    // Containers by state and live shims.
    let states = w.gauges("berth_containers").await;
    assert_eq!(states["running"], 1.0, "{states:?}");
    assert_eq!(
        (states["created"], states["exited"], states["unknown"]),
        (0.0, 0.0, 0.0)
    );
    assert_eq!(w.gauges("berth_shims").await[""], 1.0);
    w.client
        .stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await
        .unwrap();
    let states = w.gauges("berth_containers").await;
    assert_eq!((states["running"], states["exited"]), (0.0, 1.0));
    assert_eq!(w.gauges("berth_shims").await[""], 0.0);
    w.stop_remove(&id).await;
    w.remove_pod(&pod).await;
}
