//! NRI through the real berthd: the test plugin (e2e/src/bin/
//! nri-test-plugin.rs, over berth-nri's stub) on the real socket, real
//! runc and cgroups. Each test has its own berthd, NRI socket and plugins,
//! so they run in parallel. Pods use the host's network. `node` holds the
//! cases the node VM suite runs too (hack/vm/suite.sh).

mod node;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use berth_e2e::cri::{
    ListContainersRequest, ListPodSandboxRequest, RemoveContainerRequest, StopPodSandboxRequest,
    UpdateContainerResourcesRequest,
};
use berth_e2e::world::{World, can_run_here};
use serde_json::{Value, json};

/// The test plugin: beside berthd where the harness takes prebuilt
/// binaries (the node VM), else the one cargo built with this test.
fn plugin_binary() -> PathBuf {
    match std::env::var_os("BERTH_BIN_DIR") {
        Some(dir) => PathBuf::from(dir).join("nri-test-plugin"),
        None => PathBuf::from(env!("CARGO_BIN_EXE_nri-test-plugin")),
    }
}

struct Nri {
    dir: tempfile::TempDir,
}

impl Nri {
    fn new() -> Nri {
        let dir = tempfile::Builder::new()
            .prefix("berth-nri-")
            .tempdir()
            .unwrap();
        std::fs::create_dir(dir.path().join("plugins")).unwrap();
        std::fs::create_dir(dir.path().join("conf.d")).unwrap();
        Nri { dir }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("nri.sock")
    }

    /// berthd's `[nri]` table, NRI on, with `request_timeout`.
    fn table(&self, enable: bool, request_timeout: &str) -> String {
        let d = self.dir.path().display();
        format!(
            "[nri]\nenable = {enable}\nsocket_path = \"{d}/nri.sock\"\nplugin_path = \"{d}/plugins\"\n\
             plugin_config_path = \"{d}/conf.d\"\nrequest_timeout = \"{request_timeout}\"\n"
        )
    }

    async fn world(&self, tag: &str, request_timeout: &str) -> World {
        World::with_config(tag, &self.table(true, request_timeout)).await
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.jsonl"))
    }

    /// Starts the test plugin `idx-name` on the socket and waits until it
    /// is synchronized. `behaviour` gets its `log`.
    fn connect(&self, name: &str, idx: &str, mut behaviour: Value) -> TestPlugin {
        let log = self.log(name);
        behaviour["log"] = json!(log);
        let file = self.dir.path().join(format!("{name}.json"));
        std::fs::write(&file, behaviour.to_string()).unwrap();
        let child = Command::new(plugin_binary())
            .args(["--socket", &self.socket().display().to_string()])
            .args(["--name", name, "--idx", idx])
            .args(["--behaviour", &file.display().to_string()])
            .spawn()
            .unwrap();
        let plugin = TestPlugin { child, log };
        plugin.wait_for("Synchronize");
        plugin
    }
}

struct TestPlugin {
    child: Child,
    log: PathBuf,
}

impl Drop for TestPlugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn events(log: &Path) -> Vec<Value> {
    // A line the plugin is still writing is not read yet.
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn names(log: &Path) -> Vec<String> {
    events(log)
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect()
}

impl TestPlugin {
    fn events(&self) -> Vec<Value> {
        events(&self.log)
    }

    fn names(&self) -> Vec<String> {
        names(&self.log)
    }

    fn wait_for(&self, event: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.names().iter().any(|n| n == event) {
            assert!(
                Instant::now() < deadline,
                "no {event} in {:?}",
                self.names()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process has ended: the runtime hung up on it.
    fn exited_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

/// RunPodSandbox of the world's pod config `name`, its error kept.
async fn run_pod(w: &mut World, name: &str) -> Result<String, tonic::Status> {
    let config = w.pod_config(name);
    berth_e2e::run_pod(&mut w.client, config).await
}

async fn pods_listed(w: &World) -> usize {
    w.client
        .clone()
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items
        .len()
}

async fn containers_listed(w: &World) -> usize {
    w.client
        .clone()
        .list_containers(ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_table_nri_is_off() {
    if !can_run_here() {
        return;
    }
    // No [nri] table: berthd makes no socket at the default path.
    let default_socket = Path::new("/var/run/nri/nri.sock");
    let there_before = default_socket.exists();
    let mut w = World::new("nri-absent").await;
    let pod = w.pod("nri-absent").await;
    w.run(&pod, w.container("c", "sleep 60")).await;
    assert_eq!(default_socket.exists(), there_before);
    w.remove_pod(&pod).await;
    // The table, not enabled: no socket, and a plugin cannot register.
    let nri = Nri::new();
    let mut w = World::with_config("nri-off", &nri.table(false, "2s")).await;
    let pod = w.pod("nri-off").await;
    w.run(&pod, w.container("c", "sleep 60")).await;
    assert!(!nri.socket().exists());
    let refused = Command::new(plugin_binary())
        .args(["--socket", &nri.socket().display().to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!refused.success());
    w.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_a_plugin_in_index_order_with_their_metadata() {
    if !can_run_here() {
        return;
    }
    let nri = Nri::new();
    let mut w = nri.world("nri-order", "2s").await;
    let late = nri.connect("late", "90", json!({}));
    let early = nri.connect(
        "early",
        "05",
        json!({"events": ["RunPodSandbox", "StopPodSandbox"]}),
    );
    assert_eq!(early.names(), ["Configure", "Synchronize"]);
    let pod = w.pod("nri-order").await;
    let mut config = w.container("ctr", "sleep 60");
    config.labels.insert("app".into(), "nri".into());
    let id = w.run(&pod, config).await;
    w.client
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(berth_e2e::cri::LinuxContainerResources {
                cpu_shares: 512,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    w.client
        .update_pod_sandbox_resources(berth_e2e::cri::UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: pod.clone(),
            resources: Some(berth_e2e::cri::LinuxContainerResources {
                memory_limit_in_bytes: 256 << 20,
                ..Default::default()
            }),
            overhead: None,
        })
        .await
        .unwrap();
    w.stop(&id, 0).await;
    // Stopping an exited container again tells plugins nothing new.
    w.stop(&id, 0).await;
    w.remove(&id).await;
    w.remove_pod(&pod).await;
    assert_eq!(
        late.names(),
        [
            "Configure",
            "Synchronize",
            "RunPodSandbox",
            "CreateContainer",
            // Subscribed to every event: validators' too.
            "ValidateContainerAdjustment",
            "PostCreateContainer",
            "StartContainer",
            "PostStartContainer",
            "UpdateContainer",
            "PostUpdateContainer",
            "UpdatePodSandbox",
            "PostUpdatePodSandbox",
            "StopContainer",
            "RemoveContainer",
            "StopPodSandbox",
            "RemovePodSandbox",
        ]
    );
    assert_eq!(
        early.names(),
        [
            "Configure",
            "Synchronize",
            "RunPodSandbox",
            "StopPodSandbox"
        ]
    );
    let events = late.events();
    let run = &events[2];
    assert_eq!(run["pod"]["id"], json!(pod));
    assert_eq!(run["pod"]["name"], json!("nri-order"));
    assert_eq!(run["pod"]["uid"], json!("uid-nri-order"));
    assert_eq!(run["pod"]["namespace"], json!("e2e"));
    assert_eq!(run["pod"]["runtime_handler"], json!("runc"));
    let create = &events[3];
    assert_eq!(create["container"]["name"], json!("ctr"));
    assert_eq!(create["container"]["pod"], json!(pod));
    assert_eq!(create["container"]["labels"]["app"], json!("nri"));
    assert!(create["container"]["args"].to_string().contains("sleep 60"));
    let post_start = &events[7];
    assert_eq!(post_start["container"]["id"], json!(id));
    assert!(post_start["container"]["pid"].as_u64().unwrap() > 0);
    assert_eq!(post_start["container"]["state"], json!(3), "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_plugins_and_a_validator_refuse_the_container_by_name() {
    if !can_run_here() {
        return;
    }
    let nri = Nri::new();
    let mut w = nri.world("nri-conflict", "2s").await;
    let a = nri.connect("alpha", "10", json!({"adjust": {"memory_limit": 64 << 20}}));
    let b = nri.connect("beta", "20", json!({"adjust": {"memory_limit": 32 << 20}}));
    let pod = w.pod("nri-conflict").await;
    let err = w
        .create(&pod, w.container("c", "sleep 60"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unknown, "{err:?}");
    assert!(
        err.message().contains("\"10-alpha\"") && err.message().contains("\"20-beta\""),
        "{err:?}"
    );
    assert_eq!(containers_listed(&w).await, 0);
    drop(b);
    // A validator sees alpha's adjustment and refuses it.
    let validator = nri.connect(
        "gate",
        "30",
        json!({"events": ["ValidateContainerAdjustment"], "reject": "memory limits are not allowed"}),
    );
    let err = w
        .create(&pod, w.container("c", "sleep 60"))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("30-gate") && err.message().contains("not allowed"),
        "{err:?}"
    );
    drop((a, validator));
    // Neither left anything: the same name is free at once.
    w.create(&pod, w.container("c", "sleep 60"))
        .await
        .expect("the name stayed taken");
    w.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsupported_adjustment_is_refused_not_dropped() {
    if !can_run_here() {
        return;
    }
    let nri = Nri::new();
    let mut w = nri.world("nri-cdi", "2s").await;
    let _p = nri.connect(
        "cdi",
        "10",
        json!({"adjust": {"cdi_devices": ["vendor.com/gpu=0"]}}),
    );
    let pod = w.pod("nri-cdi").await;
    let err = w.create(&pod, w.container("c", "true")).await.unwrap_err();
    assert!(
        err.message().contains("CDI devices") && err.message().contains("10-cdi"),
        "{err:?}"
    );
    w.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_hook_fails_the_request_cleanly_and_a_retry_succeeds() {
    if !can_run_here() {
        return;
    }
    let nri = Nri::new();
    let mut w = nri.world("nri-fail", "2s").await;
    let failing = nri.connect(
        "failing",
        "10",
        json!({"fail": {"RunPodSandbox": "no pods today", "CreateContainer": "no containers today"}}),
    );
    let err = run_pod(&mut w, "nri-fail").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unknown, "{err:?}");
    assert!(
        err.message().contains("10-failing") && err.message().contains("no pods today"),
        "{err:?}"
    );
    assert_eq!(pods_listed(&w).await, 0);
    let ns = w.berthd().paths().run_root().join("ns");
    let pinned: usize = std::fs::read_dir(&ns)
        .into_iter()
        .flatten()
        .flatten()
        .map(|kind| {
            std::fs::read_dir(kind.path())
                .map(|d| d.count())
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(pinned, 0, "namespaces left pinned under {}", ns.display());
    drop(failing);
    // The name is free: the first retry makes the pod.
    let pod = run_pod(&mut w, "nri-fail").await.expect("the retry failed");
    let failing = nri.connect(
        "failing-again",
        "10",
        json!({"fail": {"CreateContainer": "no containers today"}}),
    );
    let err = w.create(&pod, w.container("c", "true")).await.unwrap_err();
    assert!(err.message().contains("no containers today"), "{err:?}");
    assert_eq!(containers_listed(&w).await, 0);
    drop(failing);
    w.create(&pod, w.container("c", "true"))
        .await
        .expect("the container's retry failed");
    w.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_visible_or_started_while_its_hook_runs() {
    if !can_run_here() {
        return;
    }
    let nri = Nri::new();
    let mut w = nri.world("nri-slow", "10s").await;
    let _slow = nri.connect(
        "slow",
        "10",
        json!({"slow_ms": {"RunPodSandbox": 1500, "CreateContainer": 1500}}),
    );
    let mut creating = w.client.clone();
    let config = w.pod_config("nri-slow");
    let run = tokio::spawn(async move { berth_e2e::run_pod(&mut creating, config).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        pods_listed(&w).await,
        0,
        "the pod is listed while its hook runs"
    );
    let pod = run.await.unwrap().unwrap();
    assert_eq!(pods_listed(&w).await, 1);
    let mut creating = w.client.clone();
    let request = berth_e2e::cri::CreateContainerRequest {
        pod_sandbox_id: pod.clone(),
        config: Some(w.container("c", "sleep 60")),
        sandbox_config: Some(w.pod_config("nri-slow")),
    };
    let create = tokio::spawn(async move { creating.create_container(request).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        containers_listed(&w).await,
        0,
        "the container is listed while its hook runs"
    );
    create.await.unwrap().unwrap();
    assert_eq!(containers_listed(&w).await, 1);
    w.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_pod_sandbox_stops_the_containers_first_and_is_idempotent() {
    if !can_run_here() {
        return;
    }
    let nri = Nri::new();
    let mut w = nri.world("nri-stop", "10s").await;
    let plugin = nri.connect(
        "stopper",
        "10",
        json!({"events": ["StopContainer", "RemoveContainer", "StopPodSandbox", "RemovePodSandbox"],
               "slow_ms": {"StopPodSandbox": 1500}}),
    );
    let pod = w.pod("nri-stop").await;
    // One exits on its own: plugins hear of it as of a stopped one.
    let quick = w.run(&pod, w.container("quick", "true")).await;
    plugin.wait_for("StopContainer");
    let id = w.run(&pod, w.container("c", "sleep 600")).await;
    let mut stopping = w.client.clone();
    let pod_id = pod.clone();
    let stop = tokio::spawn(async move {
        stopping
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod_id,
            })
            .await
    });
    plugin.wait_for("StopPodSandbox");
    // The hook runs: the container has already stopped.
    assert_eq!(w.status(&id).await.state, 2, "exited");
    stop.await.unwrap().unwrap();
    w.client
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    w.remove_pod(&pod).await;
    let events = plugin.events();
    let seen: Vec<(String, String)> = events[2..]
        .iter()
        .map(|e| {
            let who = e["container"]["id"].as_str().or(e["pod"]["id"].as_str());
            (
                e["event"].as_str().unwrap().to_string(),
                who.unwrap_or("").to_string(),
            )
        })
        .collect();
    let pair = |event: &str, who: &str| (event.to_string(), who.to_string());
    assert_eq!(
        seen[..3],
        [
            pair("StopContainer", &quick),
            pair("StopContainer", &id),
            pair("StopPodSandbox", &pod)
        ]
    );
    let mut removed: Vec<_> = seen[3..5].to_vec();
    removed.sort();
    let mut expected = vec![
        pair("RemoveContainer", &quick),
        pair("RemoveContainer", &id),
    ];
    expected.sort();
    assert_eq!(removed, expected);
    assert_eq!(seen[5..], [pair("RemovePodSandbox", &pod)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_connecting_while_pods_are_made_learns_of_each_once() {
    if !can_run_here() {
        return;
    }
    let nri = Nri::new();
    let w = nri.world("nri-race", "5s").await;
    // Two clients make pods without pause until the plugin has seen a few
    // as events: the plugin connects while creations are in flight.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let makers: Vec<_> = (0..2)
        .map(|maker| {
            let mut client = w.client.clone();
            let configs: Vec<_> = (0..200)
                .map(|i| w.pod_config(&format!("nri-race-{maker}-{i}")))
                .collect();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for config in configs {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    ids.push(berth_e2e::run_pod(&mut client, config).await.unwrap());
                }
                ids
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let late = nri.connect("late", "10", json!({"events": ["RunPodSandbox"]}));
    let deadline = Instant::now() + Duration::from_secs(30);
    while late
        .names()
        .iter()
        .filter(|n| *n == "RunPodSandbox")
        .count()
        < 4
    {
        assert!(
            Instant::now() < deadline,
            "no pods made after the plugin connected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut ids = Vec::new();
    for maker in makers {
        ids.extend(maker.await.unwrap());
    }
    let synchronized = late.events()[1]["pods"].as_array().unwrap().len();
    assert!(
        synchronized > 0,
        "the plugin connected before any pod was made"
    );
    let events = late.events();
    for id in &ids {
        let synced = events
            .iter()
            .filter(|e| e["event"] == "Synchronize")
            .flat_map(|e| e["pods"].as_array().cloned().unwrap_or_default())
            .filter(|p| p == id)
            .count();
        let told = events
            .iter()
            .filter(|e| e["event"] == "RunPodSandbox" && e["pod"]["id"] == json!(id))
            .count();
        assert_eq!(
            synced + told,
            1,
            "pod {id}: synchronized {synced}, told {told}: {events:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_hangs_is_disconnected_and_the_request_goes_on() {
    if !can_run_here() {
        return;
    }
    let nri = Nri::new();
    let mut w = nri.world("nri-hang", "1s").await;
    let mut hanging = nri.connect("hanging", "10", json!({"hang": ["RunPodSandbox"]}));
    let started = Instant::now();
    let pod = run_pod(&mut w, "nri-hang").await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(
        hanging.exited_within(Duration::from_secs(10)),
        "berthd kept the hanging plugin"
    );
    // Without it, the next pod is made.
    let second = run_pod(&mut w, "nri-hang-2").await.unwrap();
    w.remove_pod(&second).await;
    w.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_crashes_is_dropped_and_berthd_keeps_serving() {
    if !can_run_here() {
        return;
    }
    let nri = Nri::new();
    let mut w = nri.world("nri-crash", "2s").await;
    let mut crashing = nri.connect("crashing", "10", json!({"crash": ["CreateContainer"]}));
    let watcher = nri.connect(
        "watcher",
        "20",
        json!({"events": ["CreateContainer", "RemoveContainer"]}),
    );
    let pod = w.pod("nri-crash").await;
    let id = w.run(&pod, w.container("c", "sleep 60")).await;
    assert!(crashing.exited_within(Duration::from_secs(5)));
    w.stop(&id, 0).await;
    w.client
        .remove_container(RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(watcher.names()[2..], ["CreateContainer", "RemoveContainer"]);
    w.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_installed_plugin_is_started_with_its_configuration() {
    if !can_run_here() {
        return;
    }
    let nri = Nri::new();
    let plugins = nri.dir.path().join("plugins");
    std::fs::copy(plugin_binary(), plugins.join("30-installed")).unwrap();
    let log = nri.log("installed");
    std::fs::write(
        nri.dir.path().join("conf.d/30-installed.conf"),
        json!({"log": log, "events": ["RunPodSandbox"]}).to_string(),
    )
    .unwrap();
    let mut w = nri.world("nri-installed", "2s").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !names(&log).iter().any(|n| n == "Synchronize") {
        assert!(
            Instant::now() < deadline,
            "the installed plugin did not register"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pod = run_pod(&mut w, "nri-installed").await.unwrap();
    assert_eq!(names(&log), ["Configure", "Synchronize", "RunPodSandbox"]);
    assert_eq!(events(&log)[0]["runtime"], json!("berth"));
    w.remove_pod(&pod).await;
}
