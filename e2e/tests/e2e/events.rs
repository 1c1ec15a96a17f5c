//! GetContainerEvents, UpdateContainerResources and the container gauges
//! through the real berthd: real images from a local registry, real runc,
//! berth-shim and cgroups. Pods use the host's network (no CNI); each test
//! has its own berthd, registry and cgroup parent, so they run in parallel.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_e2e::cri::{
    ContainerEventResponse, ContainerEventType, ContainerState, ContainerStatus,
    ContainerStatusRequest, GetEventsRequest, LinuxContainerResources, PodSandboxStatusRequest,
    StopContainerRequest, UpdateContainerResourcesRequest,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Streaming;

use berth_e2e::world::{World, can_run_here};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A [`World`] whose berthd serves /metrics on the returned port.
async fn world(tag: &str) -> (World, u16) {
    let port = free_port();
    let metrics = format!("[metrics]\nenabled = true\naddress = \"127.0.0.1:{port}\"\n");
    (World::with_config(tag, &metrics).await, port)
}

async fn subscribe(w: &World) -> Streaming<ContainerEventResponse> {
    w.client
        .clone()
        .get_container_events(GetEventsRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// ContainerStatus with its verbose info.
async fn status_info(w: &mut World, id: &str) -> (ContainerStatus, serde_json::Value) {
    let response = w
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

async fn stop_remove(w: &mut World, id: &str) {
    w.stop(id, 0).await;
    w.remove(id).await;
}

/// `berth_<name>{state=…}` gauges from /metrics, through a Prometheus
/// text parser.
async fn gauges(metrics_port: u16, name: &str) -> HashMap<String, f64> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", metrics_port))
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
    let (mut w, _) = world("events").await;
    let mut first = subscribe(&w).await;
    let mut second = subscribe(&w).await;
    let pod = w.pod("ev").await;

    let id = w.run(&pod, w.container("ev-sleep", "sleep 1000")).await;
    // PodSandboxStatus carries its containers' statuses too (EventedPLEG).
    let statuses = w
        .client
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .containers_statuses;
    let states: Vec<_> = statuses.iter().map(|s| (s.id.as_str(), s.state)).collect();
    assert_eq!(
        states,
        [(id.as_str(), ContainerState::ContainerRunning as i32)]
    );
    stop_remove(&mut w, &id).await;
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
        .run(&pod, w.container("ev-quits", "sleep 1; exit 7"))
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
    stop_remove(&mut w, &quits).await;
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
    let (mut w, metrics_port) = world("update").await;
    let pod = w.pod("up").await;
    let mut config = w.container("up-sleep", "sleep 1000");
    config.linux.as_mut().unwrap().resources = Some(LinuxContainerResources {
        memory_limit_in_bytes: 128 << 20,
        ..Default::default()
    });
    let id = w.run(&pod, config).await;
    let (_, info) = status_info(&mut w, &id).await;
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
    let (status, info) = status_info(&mut w, &id).await;
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
    let (status, _) = status_info(&mut w, &id).await;
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
    let states = gauges(metrics_port, "berth_containers").await;
    assert_eq!(states["running"], 1.0, "{states:?}");
    assert_eq!(
        (states["created"], states["exited"], states["unknown"]),
        (0.0, 0.0, 0.0)
    );
    assert_eq!(gauges(metrics_port, "berth_shims").await[""], 1.0);
    w.client
        .stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await
        .unwrap();
    let states = gauges(metrics_port, "berth_containers").await;
    assert_eq!((states["running"], states["exited"]), (0.0, 1.0));
    assert_eq!(gauges(metrics_port, "berth_shims").await[""], 0.0);
    stop_remove(&mut w, &id).await;
    w.remove_pod(&pod).await;
}
