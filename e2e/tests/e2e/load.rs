//! Load: many pods with real runc containers and real CNI (bridge,
//! host-local, portmap) set up and torn down in parallel, twice over, with
//! the List RPCs called all the while; after each round nothing may be
//! left: no records, shims, mounts, namespace pins, veths, addresses or
//! cgroups. `BERTH_LOAD_LONG=1` runs 110 pods of 2 containers at once.
//!
//! Also per-object locking: a CNI plugin hung on one pod, or a stalled
//! image pull, blocks only the RPCs about that pod or that pull.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use berth_e2e::cri::runtime_service_client::RuntimeServiceClient;
use berth_e2e::cri::{
    ContainerConfig, ContainerMetadata, ContainerState, CreateContainerRequest, ImageSpec,
    LinuxContainerConfig, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, ListContainerStatsRequest, ListContainersRequest,
    ListImagesRequest, ListPodSandboxRequest, ListPodSandboxStatsRequest, NamespaceMode,
    NamespaceOption, PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest,
    PullImageRequest, RemoveImageRequest, RemovePodSandboxRequest, StartContainerRequest,
    StopPodSandboxRequest,
};
use berth_e2e::fault_registry::{self, FaultRegistry};
use berth_e2e::net::{BIN_DIR, Net};
use berth_e2e::registry::{self, Registry, Security};
use berth_e2e::{Berthd, Options, can_run, have_command, is_root, mounts_under};
use tonic::transport::Channel;

type Client = RuntimeServiceClient<Channel>;

/// Pods per round in CI, and rounds.
const PODS: usize = 50;
const ROUNDS: usize = 2;
/// `BERTH_LOAD_LONG=1`: the kubelet's default max-pods, 2 containers each.
const LONG_PODS: usize = 110;
const LONG_CONTAINERS: usize = 2;

fn can_run_here() -> bool {
    can_run(
        is_root()
            && have_command("runc")
            && have_command("jq")
            && have_command("iptables-save")
            && registry::available()
            && Path::new(BIN_DIR).join("bridge").exists(),
        "root, runc, jq, iptables, the CNI plugins in /usr/lib/cni and the registry tools",
    )
}

/// Fault-injecting plugins go here, searched before the real ones.
fn bin_dir(net: &Net) -> PathBuf {
    let dir = net.dir().join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A berthd on a private network with the busybox fixture pulled from a
/// local registry, its pods under their own cgroup parent.
struct Fixture {
    _registry: Registry,
    net: Net,
    /// None only while it restarts.
    berthd: Option<Berthd>,
    options: Options,
    image: String,
    logs: tempfile::TempDir,
    cgroup_parent: String,
}

impl Fixture {
    async fn new(net: Net, tag: &str, plugin_timeout: u64) -> Fixture {
        let registry = Registry::start_empty(Security::Plain);
        registry.push("busybox", "berth/busybox:latest");
        let logs = tempfile::Builder::new()
            .prefix("berth-e2e-load-logs-")
            .tempdir()
            .unwrap();
        let conf = logs.path().join("registries.conf");
        std::fs::write(
            &conf,
            format!(
                "[[registry]]\nlocation = \"{}\"\ninsecure = true\n",
                registry.host()
            ),
        )
        .unwrap();
        let options = Options {
            config: format!(
                "[image]\nregistries_config = \"{}\"\n[cni]\nconf_dir = \"{}\"\n\
                 bin_dirs = [\"{}\", \"{BIN_DIR}\"]\nplugin_timeout = {plugin_timeout}\n",
                conf.display(),
                net.conf_dir().display(),
                bin_dir(&net).display(),
            ),
            ..Options::default()
        };
        let berthd = Berthd::start_with(options.clone()).await;
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
        Fixture {
            _registry: registry,
            net,
            berthd: Some(berthd),
            options,
            image,
            logs,
            cgroup_parent: format!("/berth-e2e-{}-{tag}", std::process::id()),
        }
    }

    fn berthd(&self) -> &Berthd {
        self.berthd.as_ref().expect("berthd runs")
    }

    /// kill -9 and a restart on the same root and run root.
    async fn kill_and_restart(&mut self) {
        let berthd = self.berthd.take().expect("berthd runs");
        let (_, paths) = berthd.stop_with(nix::sys::signal::Signal::SIGKILL).await;
        self.berthd = Some(Berthd::start_in(paths, self.options.clone()).await);
    }

    /// A pod as the kubelet sends it: own network, PID per container
    /// (every fifth pod shares one PID namespace, so it has an infra process).
    fn pod(&self, name: &str, host_network: bool) -> PodSandboxConfig {
        let shared_pid = name.bytes().last().is_some_and(|b| b % 5 == 0);
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "load".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: self.logs.path().join(name).display().to_string(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(namespaces(host_network, shared_pid)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn container(&self, pod: &PodSandboxConfig, name: &str) -> ContainerConfig {
        let pod_options = pod
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone());
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: self.image.clone(),
                ..Default::default()
            }),
            command: vec!["sleep".into(), "3600".into()],
            log_path: format!("{name}.log"),
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: pod_options,
                    ..Default::default()
                }),
                resources: None,
            }),
            ..Default::default()
        }
    }

    /// Processes berthd started that still run: shims, runtimes, infra.
    fn leftover_processes(&self) -> Vec<String> {
        let needle = self.berthd().paths().dir().as_os_str().as_encoded_bytes();
        let skip = [std::process::id() as i32, self.berthd().pid().as_raw()];
        let mut left = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            if skip.contains(&pid) {
                continue;
            }
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            if cmdline.windows(needle.len()).any(|w| w == needle) {
                left.push(format!(
                    "{pid}: {}",
                    String::from_utf8_lossy(&cmdline).replace('\0', " ")
                ));
            }
        }
        left
    }

    /// Cgroup dirs left under the pods' cgroup parent, in any hierarchy.
    fn cgroups_left(&self) -> Vec<PathBuf> {
        berth_e2e::cgroups_under(&self.cgroup_parent)
    }

    /// Everything pods and containers could leave behind; `ids` are the
    /// pods that existed.
    async fn assert_nothing_left(&self, client: &mut Client, ids: &[String]) {
        let pods = client
            .list_pod_sandbox(ListPodSandboxRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .items;
        assert!(pods.is_empty(), "pods left: {pods:?}");
        let containers = client
            .list_containers(ListContainersRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .containers;
        assert!(containers.is_empty(), "containers left: {containers:?}");
        let paths = self.berthd().paths();
        assert_eq!(self.leftover_processes(), Vec::<String>::new());
        // Namespace pins, shm and rootfs overlays are all mounts.
        assert_eq!(mounts_under(&paths.run_root()), Vec::<PathBuf>::new());
        assert_eq!(mounts_under(&paths.root()), Vec::<PathBuf>::new());
        assert_eq!(
            self.net.ports().trim(),
            "",
            "veths left on {}",
            self.net.bridge
        );
        assert_eq!(self.net.allocated(), Vec::<String>::new(), "IPs left");
        assert_eq!(self.cgroups_left(), Vec::<PathBuf>::new());
        let out = Command::new("iptables-save").output().unwrap();
        let rules = String::from_utf8_lossy(&out.stdout);
        for id in ids {
            assert!(!rules.contains(id.as_str()), "iptables rules for {id} left");
        }
        // Records, CNI cache, shim sockets and exit files.
        let mut files = berth_e2e::files_under(&paths.run_root());
        for sub in ["pods", "cni", "containers"] {
            files.extend(berth_e2e::files_under(&paths.root().join(sub)));
        }
        files.retain(|f| {
            let name = f.file_name().unwrap().to_string_lossy();
            !(name == "berth.sock" || name == "berth.sock.lock")
        });
        assert_eq!(files, Vec::<PathBuf>::new(), "files left behind");
    }
}

impl Drop for Fixture {
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

fn namespaces(host_network: bool, shared_pid: bool) -> NamespaceOption {
    let mode = |m: NamespaceMode| m as i32;
    NamespaceOption {
        network: mode(if host_network {
            NamespaceMode::Node
        } else {
            NamespaceMode::Pod
        }),
        pid: mode(if shared_pid {
            NamespaceMode::Pod
        } else {
            NamespaceMode::Container
        }),
        ipc: mode(NamespaceMode::Pod),
        ..Default::default()
    }
}

async fn stop_and_remove(client: &mut Client, id: &str) -> Result<(), tonic::Status> {
    client
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await?;
    client
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await?;
    Ok(())
}

/// RunPodSandbox, then CreateContainer and StartContainer for each
/// container, as the kubelet does for one pod.
async fn start_pod(
    client: &mut Client,
    pod: PodSandboxConfig,
    containers: Vec<ContainerConfig>,
) -> Result<String, String> {
    let name = pod.metadata.as_ref().unwrap().name.clone();
    let id = berth_e2e::run_pod(client, pod.clone())
        .await
        .map_err(|e| format!("RunPodSandbox {name}: {e:?}"))?;
    for config in containers {
        let cname = config.metadata.as_ref().unwrap().name.clone();
        let cid = client
            .create_container(CreateContainerRequest {
                pod_sandbox_id: id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.clone()),
            })
            .await
            .map_err(|e| format!("CreateContainer {name}/{cname}: {e:?}"))?
            .into_inner()
            .container_id;
        client
            .start_container(StartContainerRequest { container_id: cid })
            .await
            .map_err(|e| format!("StartContainer {name}/{cname}: {e:?}"))?;
    }
    Ok(id)
}

/// Latencies of one List RPC, called over and over.
#[derive(Default)]
struct Latency {
    calls: u32,
    total: Duration,
    max: Duration,
}

impl Latency {
    fn add(&mut self, took: Duration) {
        self.calls += 1;
        self.total += took;
        self.max = self.max.max(took);
    }
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mean = self.total / self.calls.max(1);
        write!(f, "{} calls, mean {mean:?}, max {:?}", self.calls, self.max)
    }
}

/// Calls ListContainers, ListPodSandbox and ListContainerStats in turn
/// until `stop`; every call must succeed. Returns their latencies.
fn spawn_listers(
    client: Client,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<[(&'static str, Latency); 3]> {
    tokio::spawn(async move {
        let mut client = client;
        let mut lat: [(&'static str, Latency); 3] = [
            ("ListContainers", Latency::default()),
            ("ListPodSandbox", Latency::default()),
            ("ListContainerStats", Latency::default()),
        ];
        loop {
            let start = Instant::now();
            client
                .list_containers(ListContainersRequest { filter: None })
                .await
                .expect("ListContainers under load");
            lat[0].1.add(start.elapsed());
            let start = Instant::now();
            client
                .list_pod_sandbox(ListPodSandboxRequest { filter: None })
                .await
                .expect("ListPodSandbox under load");
            lat[1].1.add(start.elapsed());
            let start = Instant::now();
            client
                .list_container_stats(ListContainerStatsRequest { filter: None })
                .await
                .expect("ListContainerStats under load");
            lat[2].1.add(start.elapsed());
            if stop.load(Ordering::SeqCst) {
                return lat;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

fn print_latencies(phase: &str, lat: &[(&'static str, Latency); 3]) {
    for (rpc, l) in lat {
        eprintln!("load: {phase}: {rpc}: {l}");
    }
}

/// One round: `pods` pods of `per_pod` containers started in parallel,
/// checked, then all torn down in parallel; nothing may be left.
async fn round(fx: &Fixture, round: usize, pods: usize, per_pod: usize) {
    let client = fx.berthd().runtime().await;
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let listers = spawn_listers(fx.berthd().runtime().await, stop.clone());
    let mut tasks = Vec::new();
    for i in 0..pods {
        let pod = fx.pod(&format!("load{round}x{i}"), false);
        let containers = (0..per_pod)
            .map(|c| fx.container(&pod, &format!("c{c}")))
            .collect();
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            start_pod(&mut client, pod, containers).await
        }));
    }
    let mut ids = Vec::new();
    let mut errors = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(id) => ids.push(id),
            Err(err) => errors.push(err),
        }
    }
    stop.store(true, Ordering::SeqCst);
    let lat = listers.await.unwrap();
    assert_eq!(errors, Vec::<String>::new(), "set-up failed");
    eprintln!(
        "load: round {round}: {pods} pods x {per_pod} containers up in {:?}",
        started.elapsed()
    );
    print_latencies("during set-up", &lat);

    // Everything runs, each pod has its address.
    let mut c = client.clone();
    let containers = c
        .list_containers(ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(containers.len(), pods * per_pod);
    assert!(
        containers
            .iter()
            .all(|c| c.state == ContainerState::ContainerRunning as i32),
        "{containers:?}"
    );
    assert_eq!(fx.net.allocated().len(), pods);
    let mut by_pod: HashMap<&str, usize> = HashMap::new();
    for container in &containers {
        *by_pod.entry(container.pod_sandbox_id.as_str()).or_default() += 1;
    }
    assert!(
        ids.iter()
            .all(|id| by_pod.get(id.as_str()) == Some(&per_pod))
    );

    // The List RPCs answer with every pod running (latency printed, not asserted).
    let mut steady: [(&'static str, Latency); 3] = [
        ("ListContainers", Latency::default()),
        ("ListPodSandbox", Latency::default()),
        ("ListContainerStats", Latency::default()),
    ];
    let (mut a, mut b, mut s) = (client.clone(), client.clone(), client.clone());
    let timed = |start: Instant| start.elapsed();
    let (ra, rb, rs) = tokio::join!(
        async {
            let t = Instant::now();
            let r = a
                .list_containers(ListContainersRequest { filter: None })
                .await;
            (r.map(|r| r.into_inner().containers.len()), timed(t))
        },
        async {
            let t = Instant::now();
            let r = b
                .list_pod_sandbox(ListPodSandboxRequest { filter: None })
                .await;
            (r.map(|r| r.into_inner().items.len()), timed(t))
        },
        async {
            let t = Instant::now();
            let r = s
                .list_container_stats(ListContainerStatsRequest { filter: None })
                .await;
            (r.map(|r| r.into_inner().stats.len()), timed(t))
        },
    );
    assert_eq!(ra.0.unwrap(), pods * per_pod);
    assert_eq!(rb.0.unwrap(), pods);
    assert_eq!(rs.0.unwrap(), pods * per_pod);
    steady[0].1.add(ra.1);
    steady[1].1.add(rb.1);
    steady[2].1.add(rs.1);
    print_latencies("all running, concurrent", &steady);

    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let listers = spawn_listers(fx.berthd().runtime().await, stop.clone());
    let mut tasks = Vec::new();
    for id in ids.clone() {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            stop_and_remove(&mut client, &id)
                .await
                .map_err(|e| format!("teardown of {id}: {e:?}"))
        }));
    }
    for task in tasks {
        if let Err(err) = task.await.unwrap() {
            errors.push(err);
        }
    }
    stop.store(true, Ordering::SeqCst);
    let lat = listers.await.unwrap();
    assert_eq!(errors, Vec::<String>::new(), "teardown failed");
    eprintln!(
        "load: round {round}: {pods} pods torn down in {:?}",
        started.elapsed()
    );
    print_latencies("during teardown", &lat);
    fx.assert_nothing_left(&mut client.clone(), &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_with_containers_in_parallel_rounds_leave_nothing() {
    if !can_run_here() {
        return;
    }
    let long = std::env::var("BERTH_LOAD_LONG").is_ok_and(|v| v == "1");
    let (pods, per_pod) = if long {
        (LONG_PODS, LONG_CONTAINERS)
    } else {
        (PODS, 1)
    };
    let started = Instant::now();
    let fx = Fixture::new(Net::new(100), "load", 30).await;
    for r in 0..ROUNDS {
        round(&fx, r, pods, per_pod).await;
    }
    eprintln!(
        "load: {ROUNDS} rounds of {pods} pods x {per_pod} containers in {:?} (with set-up)",
        started.elapsed()
    );
}

/// Installs `berth-hang`, a plugin chained after bridge and portmap that
/// hangs ADD or DEL of pod `<pod>` while `<net dir>/hang-<COMMAND>-<pod>`
/// exists (in a `sleep` whose command line is the returned marker), and
/// otherwise passes the previous result through.
fn hang_plugin(net: &Net) -> String {
    let marker = format!("6000.{}", std::process::id());
    berth_e2e::write_script(
        &bin_dir(net).join("berth-hang"),
        &format!(
            "#!/bin/sh\n\
             input=$(cat)\n\
             pod=$(echo \"$CNI_ARGS\" | tr ';' '\\n' | sed -n 's/^K8S_POD_NAME=//p')\n\
             if [ -e \"{dir}/hang-$CNI_COMMAND-$pod\" ]; then exec sleep {marker}; fi\n\
             if [ \"$CNI_COMMAND\" = ADD ]; then echo \"$input\" | jq -c .prevResult; fi\n",
            dir = net.dir().display(),
        ),
    );
    marker
}

/// Fails fast when an RPC is stuck behind another object's hung plugin or
/// stalled pull, rather than waiting for that step's timeout.
async fn answers<T>(what: &str, call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .unwrap_or_else(|_| panic!("{what} is blocked behind another object's slow step"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_cni_plugin_blocks_only_its_own_pod() {
    if !can_run_here() {
        return;
    }
    let net = Net::with_plugins(101, Some(r#"{ "type": "berth-hang" }"#));
    let marker = hang_plugin(&net);
    let hang_file = |command: &str, pod: &str| net.dir().join(format!("hang-{command}-{pod}"));
    let (hang_add, hang_del) = (hang_file("ADD", "slowadd"), hang_file("DEL", "slowdel"));
    // Long enough that nothing below can finish by the plugin timing out.
    let fx = Fixture::new(net, "hang", 300).await;
    let mut client = fx.berthd().runtime().await;
    let slowdel = berth_e2e::run_pod(&mut client, fx.pod("slowdel", false))
        .await
        .unwrap();
    let other_config = fx.pod("other", false);
    let other = start_pod(
        &mut client,
        other_config.clone(),
        vec![fx.container(&other_config, "c0")],
    )
    .await
    .unwrap();

    std::fs::write(&hang_add, "").unwrap();
    std::fs::write(&hang_del, "").unwrap();
    let adding = {
        let (mut client, config) = (client.clone(), fx.pod("slowadd", false));
        tokio::spawn(async move { berth_e2e::run_pod(&mut client, config).await })
    };
    let stopping = {
        let (mut client, id) = (client.clone(), slowdel.clone());
        tokio::spawn(async move { stop_and_remove(&mut client, &id).await })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while berth_e2e::pids_mentioning(&[marker.as_bytes()]).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "ADD and DEL never reached the hanging plugin"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Reads of every pod, including the one stuck in DEL.
    let listed = answers(
        "ListPodSandbox",
        client.list_pod_sandbox(ListPodSandboxRequest { filter: None }),
    )
    .await
    .unwrap()
    .into_inner()
    .items;
    let mut ids: Vec<&str> = listed.iter().map(|p| p.id.as_str()).collect();
    ids.sort();
    let mut expected = vec![slowdel.as_str(), other.as_str()];
    expected.sort();
    assert_eq!(ids, expected);
    answers(
        "PodSandboxStatus of the pod stuck in DEL",
        client.pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: slowdel.clone(),
            verbose: false,
        }),
    )
    .await
    .unwrap();
    answers(
        "ListContainers",
        client.list_containers(ListContainersRequest { filter: None }),
    )
    .await
    .unwrap();
    answers(
        "ListContainerStats",
        client.list_container_stats(ListContainerStatsRequest { filter: None }),
    )
    .await
    .unwrap();
    answers(
        "ListPodSandboxStats",
        client.list_pod_sandbox_stats(ListPodSandboxStatsRequest { filter: None }),
    )
    .await
    .unwrap();
    // Whole lifecycles of other pods: one on the host's network, one on
    // the same network whose plugins (the hanging one too) run meanwhile.
    for (name, host_network) in [("hostnet", true), ("fresh", false)] {
        let config = fx.pod(name, host_network);
        let containers = vec![fx.container(&config, "c0")];
        let id = answers(name, start_pod(&mut client, config, containers))
            .await
            .unwrap();
        answers(name, stop_and_remove(&mut client, &id))
            .await
            .unwrap();
    }
    answers(
        "teardown of another pod",
        stop_and_remove(&mut client, &other),
    )
    .await
    .unwrap();
    assert!(
        !adding.is_finished() && !stopping.is_finished(),
        "the hung plugin returned early"
    );

    // Unstuck: both fail on the killed plugin; Stop and Remove again converge.
    std::fs::remove_file(&hang_add).unwrap();
    std::fs::remove_file(&hang_del).unwrap();
    berth_e2e::kill_processes_under(Path::new(&marker));
    let err = adding.await.unwrap().unwrap_err();
    assert!(err.message().contains("berth-hang ADD"), "{err:?}");
    let err = stopping.await.unwrap().unwrap_err();
    assert!(err.message().contains("berth-hang DEL"), "{err:?}");
    stop_and_remove(&mut client, &slowdel).await.unwrap();
    fx.assert_nothing_left(&mut client, &[slowdel, other]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_stop_and_remove_of_a_pod_leave_no_record() {
    if !can_run_here() {
        return;
    }
    let fx = Fixture::new(Net::new(102), "race", 30).await;
    let mut client = fx.berthd().runtime().await;
    let (mut tasks, mut ids) = (Vec::new(), Vec::new());
    for i in 0..10 {
        let config = fx.pod(&format!("race{i}"), false);
        let containers = vec![fx.container(&config, "c0")];
        let id = start_pod(&mut client, config, containers).await.unwrap();
        ids.push(id.clone());
        let (mut a, mut b) = (client.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            let stop = a.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            });
            let remove = b.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.clone(),
            });
            let (stopped, removed) = tokio::join!(stop, remove);
            stopped.unwrap();
            removed.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    fx.assert_nothing_left(&mut client, &ids).await;
}

#[tokio::test]
async fn a_stalled_pull_blocks_no_other_image_rpc() {
    if !can_run_here() {
        return;
    }
    let fault = FaultRegistry::start(registry::fixtures(), fault_registry::Auth::None);
    // The last layer is the layered image's own: no other image waits on it.
    fault.stall_once(&registry::fixture_layer("layered", 2));
    let conf = tempfile::tempdir().unwrap();
    let registries = conf.path().join("registries.conf");
    std::fs::write(
        &registries,
        format!(
            "[[registry]]\nlocation = \"{}\"\ninsecure = true\n",
            fault.host()
        ),
    )
    .unwrap();
    let berthd = Berthd::start_with(Options {
        config: format!(
            "[image]\nregistries_config = \"{}\"\n",
            registries.display()
        ),
        ..Options::default()
    })
    .await;
    let mut images = berthd.images().await;
    let (stalled, other) = (fault.image("layered"), fault.image("busybox"));
    let pulling = {
        let (mut images, name) = (images.clone(), stalled.clone());
        tokio::spawn(async move { berth_e2e::pull(&mut images, &name).await })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !fault.stalled() {
        assert!(Instant::now() < deadline, "the pull never stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    answers(
        "PullImage of another image",
        berth_e2e::pull(&mut images, &other),
    )
    .await
    .unwrap();
    let status = answers("ImageStatus", berth_e2e::image_status(&mut images, &other)).await;
    assert!(status.is_some(), "{other} not found after its pull");
    // The stalled image is not there yet: an empty answer, not an error.
    let status = answers(
        "ImageStatus",
        berth_e2e::image_status(&mut images, &stalled),
    )
    .await;
    assert!(status.is_none(), "{status:?}");
    let listed = answers(
        "ListImages",
        images.list_images(ListImagesRequest { filter: None }),
    )
    .await
    .unwrap()
    .into_inner()
    .images;
    assert_eq!(listed.len(), 1, "{listed:?}");
    answers(
        "RemoveImage of another image",
        images.remove_image(RemoveImageRequest {
            image: Some(ImageSpec {
                image: other.clone(),
                ..Default::default()
            }),
        }),
    )
    .await
    .unwrap();
    assert!(berth_e2e::image_status(&mut images, &other).await.is_none());
    assert!(!pulling.is_finished(), "the stalled pull finished");
}

/// Whether a CNI plugin berthd started on this run root still runs (a
/// kill -9 of berthd leaves its plugins running to completion).
fn plugins_running(run_root: &Path) -> bool {
    let needle = format!("CNI_NETNS={}", run_root.display());
    std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        std::fs::read(entry.path().join("environ")).is_ok_and(|env| {
            env.split(|b| *b == 0)
                .any(|var| var.starts_with(needle.as_bytes()))
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_amid_parallel_set_up_then_teardown_leaves_nothing() {
    if !can_run_here() {
        return;
    }
    const N: usize = 20;
    let mut fx = Fixture::new(Net::new(103), "kill", 30).await;
    let client = fx.berthd().runtime().await;
    let mut tasks = Vec::new();
    for i in 0..N {
        let pod = fx.pod(&format!("kill{i}"), false);
        let containers = vec![fx.container(&pod, "c0")];
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            start_pod(&mut client, pod, containers).await
        }));
    }
    // Killed with some pods done, some containers made and some pods half
    // set up (results of the RPCs in flight are lost with berthd).
    let mut watcher = client.clone();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let made = watcher
            .list_containers(ListContainersRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .containers
            .len();
        if made >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "no containers were made");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fx.kill_and_restart().await;
    for task in tasks {
        let _ = task.await.unwrap();
    }
    let run_root = fx.berthd().paths().run_root();
    let deadline = Instant::now() + Duration::from_secs(120);
    while plugins_running(&run_root) {
        assert!(Instant::now() < deadline, "orphaned CNI plugins still run");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut client = fx.berthd().runtime().await;
    let pods = client
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(pods.len() >= 2, "{pods:?}");
    let containers = client
        .list_containers(ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    let count = |state: ContainerState| {
        containers
            .iter()
            .filter(|c| c.state == state as i32)
            .count()
    };
    eprintln!(
        "load: after kill -9: {} pods, {} containers: {} created, {} running, {} exited",
        pods.len(),
        containers.len(),
        count(ContainerState::ContainerCreated),
        count(ContainerState::ContainerRunning),
        count(ContainerState::ContainerExited),
    );
    let ids: Vec<String> = pods.iter().map(|p| p.id.clone()).collect();
    let mut tasks = Vec::new();
    for id in ids.clone() {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            stop_and_remove(&mut client, &id)
                .await
                .map_err(|e| format!("teardown of {id}: {e:?}"))
        }));
    }
    let mut errors = Vec::new();
    for task in tasks {
        if let Err(err) = task.await.unwrap() {
            errors.push(err);
        }
    }
    assert_eq!(errors, Vec::<String>::new());
    fx.assert_nothing_left(&mut client, &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_started_just_before_kill_9_is_running_after_restart() {
    if !can_run_here() {
        return;
    }
    let mut fx = Fixture::new(Net::new(104), "started", 30).await;
    let mut client = fx.berthd().runtime().await;
    let pod_config = fx.pod("started", false);
    let pod = berth_e2e::run_pod(&mut client, pod_config.clone())
        .await
        .unwrap();
    let container = client
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(fx.container(&pod_config, "c0")),
            sandbox_config: Some(pod_config),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    // StartContainer cut short after the runtime started the container and
    // before berthd saved that: the runtime's start, then kill -9.
    let runtimes = fx.berthd().paths().run_root().join("runtimes/runc");
    let out = Command::new("runc")
        .arg("--root")
        .arg(&runtimes)
        .args(["start", &container])
        .output()
        .unwrap();
    assert!(out.status.success(), "runc start: {out:?}");
    fx.kill_and_restart().await;

    let mut client = fx.berthd().runtime().await;
    let status = client
        .container_status(berth_e2e::cri::ContainerStatusRequest {
            container_id: container.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(status.state, ContainerState::ContainerRunning as i32);
    assert!(status.started_at > 0);
    stop_and_remove(&mut client, &pod).await.unwrap();
    fx.assert_nothing_left(&mut client, &[pod]).await;
}
