//! The runtime side and the stub over a real unix socket: registration,
//! Synchronize, events in order, a hook's error, and a plugin that hangs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_nri::api;
use berth_nri::stub::{self, Connection, Plugin};
use berth_nri::{Config, Nri, Runtime};
use prost::Message;

/// One pod, and `containers` containers of about 2 KiB each.
struct OnePod {
    containers: usize,
}

#[async_trait::async_trait]
impl Runtime for OnePod {
    async fn snapshot(&self) -> (Vec<api::PodSandbox>, Vec<api::Container>) {
        let pod = api::PodSandbox {
            id: "pod-1".into(),
            ..Default::default()
        };
        let containers = (0..self.containers)
            .map(|i| api::Container {
                id: format!("ctr-{i}"),
                env: vec!["X".repeat(2048)],
                ..Default::default()
            })
            .collect();
        (vec![pod], containers)
    }
    async fn update(&self, updates: Vec<api::ContainerUpdate>) -> Vec<api::ContainerUpdate> {
        updates
    }
}

#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<String>>,
    hang_on: Option<&'static str>,
    fail_on: Option<&'static str>,
}

#[async_trait::async_trait]
impl Plugin for Recorder {
    async fn handle(&self, method: &'static str, request: Vec<u8>) -> Result<Vec<u8>, String> {
        let entry = match method {
            "Synchronize" => {
                let sync: api::SynchronizeRequest = stub::decode(method, &request)?;
                let entry = format!("Synchronize {} {}", sync.pods.len(), sync.containers.len());
                self.seen.lock().unwrap().push(entry);
                return Ok(api::SynchronizeResponse {
                    more: sync.more,
                    ..Default::default()
                }
                .encode_to_vec());
            }
            other => other.to_string(),
        };
        self.seen.lock().unwrap().push(entry);
        if self.hang_on == Some(method) {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        if self.fail_on == Some(method) {
            return Err("refused by the test".into());
        }
        Ok(match method {
            "Configure" => api::ConfigureResponse { events: 0 }.encode_to_vec(),
            "Synchronize" => api::SynchronizeResponse::default().encode_to_vec(),
            "CreateContainer" => api::CreateContainerResponse::default().encode_to_vec(),
            _ => api::Empty {}.encode_to_vec(),
        })
    }
}

fn config(dir: &std::path::Path) -> Config {
    Config {
        socket_path: dir.join("nri.sock"),
        plugin_path: dir.join("plugins"),
        plugin_config_path: dir.join("conf.d"),
        registration_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_millis(300),
        runtime_name: "berth".into(),
        runtime_version: "test".into(),
    }
}

async fn connect(nri: &Nri, dir: &std::path::Path, idx: &str, plugin: Arc<Recorder>) -> Connection {
    let stream = tokio::net::UnixStream::connect(dir.join("nri.sock"))
        .await
        .unwrap();
    let before = nri.plugins().await.len();
    let connection = Connection::register(stream, "rec", idx, plugin)
        .await
        .unwrap();
    // Registration answers before Configure and Synchronize are done.
    for _ in 0..100 {
        if nri.plugins().await.len() > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    connection
}

#[tokio::test]
async fn a_plugin_registers_synchronizes_and_sees_events_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let nri = Nri::start(config(dir.path()), Arc::new(OnePod { containers: 0 })).unwrap();
    let first = Arc::new(Recorder::default());
    let failing = Arc::new(Recorder {
        fail_on: Some("RunPodSandbox"),
        ..Default::default()
    });
    let _a = connect(&nri, dir.path(), "20", Arc::clone(&first)).await;
    let _b = connect(&nri, dir.path(), "10", Arc::clone(&failing)).await;
    assert_eq!(nri.plugins().await, ["10-rec", "20-rec"]);
    let pod = api::PodSandbox {
        id: "pod-2".into(),
        ..Default::default()
    };
    let err = nri.hooks().await.run_pod_sandbox(&pod).await.unwrap_err();
    assert!(
        err.to_string().contains("10-rec") && err.to_string().contains("refused by the test"),
        "{err}"
    );
    // Index order: 10 failed first, so 20 never saw it.
    assert_eq!(
        *first.seen.lock().unwrap(),
        ["Configure", "Synchronize 1 0"]
    );
    nri.hooks().await.stop_pod_sandbox(&pod).await.unwrap();
    assert_eq!(
        *first.seen.lock().unwrap(),
        ["Configure", "Synchronize 1 0", "StopPodSandbox"]
    );
}

/// Run often: the plugin's ttrpc server answers DEADLINE_EXCEEDED at the
/// same deadline the runtime's own wait ends, and whichever comes first,
/// the plugin is dropped and the call goes on.
#[tokio::test]
async fn a_plugin_that_hangs_is_dropped_and_the_call_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let nri = Nri::start(config(dir.path()), Arc::new(OnePod { containers: 0 })).unwrap();
    let hanging = Arc::new(Recorder {
        hang_on: Some("RunPodSandbox"),
        ..Default::default()
    });
    let connection = connect(&nri, dir.path(), "10", hanging).await;
    let pod = api::PodSandbox::default();
    let started = std::time::Instant::now();
    nri.hooks().await.run_pod_sandbox(&pod).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    tokio::time::timeout(Duration::from_secs(5), connection.closed())
        .await
        .expect("the runtime hung up on the plugin");
    for _ in 0..100 {
        if nri.plugins().await.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the plugin is still registered");
}

#[tokio::test]
async fn a_snapshot_over_the_message_limit_arrives_in_parts() {
    let dir = tempfile::tempdir().unwrap();
    // About 6 MiB: more than one ttrpc message may carry.
    let nri = Nri::start(config(dir.path()), Arc::new(OnePod { containers: 3000 })).unwrap();
    let plugin = Arc::new(Recorder::default());
    let _connection = connect(&nri, dir.path(), "10", Arc::clone(&plugin)).await;
    assert_eq!(nri.plugins().await, ["10-rec"]);
    let seen = plugin.seen.lock().unwrap().clone();
    let parts: Vec<&String> = seen
        .iter()
        .filter(|s| s.starts_with("Synchronize"))
        .collect();
    assert!(parts.len() >= 2, "{parts:?}");
    let containers: usize = parts
        .iter()
        .map(|s| s.rsplit(' ').next().unwrap().parse::<usize>().unwrap())
        .sum();
    assert_eq!(containers, 3000);
}
