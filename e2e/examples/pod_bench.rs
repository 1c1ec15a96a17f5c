//! Pod start-up against any CRI socket (berthd or containerd): pull IMAGE,
//! one warm-up pod, then COUNT pods one after another and COUNT pods at
//! once, each pod being RunPodSandbox + CreateContainer + StartContainer of
//! one `sleep` container. While the last 2×COUNT pods run it samples the
//! daemon's RSS (DAEMON_PID) and the RSS of every process named SHIM_COMM;
//! then it stops and removes every pod. While the COUNT pods start at
//! once, another client lists pods and containers every 20 ms, as the
//! kubelet's relist does every second, and their latencies are reported too.
//!
//! usage: pod_bench SOCKET COUNT LABEL IMAGE DAEMON_PID SHIM_COMM
//! POD_BENCH_HANDLER names the pods' runtime handler (default: the
//! daemon's default).
//! prints, per phase (seq, par) and step (run, create, start, ready):
//!   LABEL PHASE STEP p50_ms=.. p90_ms=.. n=..
//! and: LABEL rss daemon_kb=.. shim_kb_per_container=.. containers=..
//! and: LABEL list LIST p50_ms=.. p99_ms=.. n=..

use std::path::PathBuf;
use std::time::Instant;

use berth_e2e::cri::image_service_client::ImageServiceClient;
use berth_e2e::cri::runtime_service_client::RuntimeServiceClient;
use berth_e2e::cri::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ImageSpec, LinuxContainerConfig,
    LinuxContainerSecurityContext, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    ListContainersRequest, ListPodSandboxRequest, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, PullImageRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopPodSandboxRequest,
};
use tonic::transport::Channel;

type Client = RuntimeServiceClient<Channel>;

fn namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..NamespaceOption::default()
    }
}

fn pod_config(name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("bench-{name}-{}", std::process::id()),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        // The script points this into its throw-away dir.
        log_directory: format!(
            "{}/{name}",
            std::env::var("POD_BENCH_LOGS").unwrap_or_else(|_| "/tmp/berth-bench-logs".into())
        ),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: String::new(),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces()),
                ..LinuxSandboxSecurityContext::default()
            }),
            ..LinuxPodSandboxConfig::default()
        }),
        ..PodSandboxConfig::default()
    }
}

fn container_config(image: &str) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "sleeper".into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..ImageSpec::default()
        }),
        command: vec!["sleep".into(), "1000000".into()],
        log_path: "sleeper.log".into(),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(namespaces()),
                ..LinuxContainerSecurityContext::default()
            }),
            resources: None,
        }),
        ..ContainerConfig::default()
    }
}

/// Milliseconds of RunPodSandbox, CreateContainer, StartContainer and the whole.
type Timings = [f64; 4];

async fn start_pod(
    mut client: Client,
    label: String,
    name: String,
    image: String,
) -> (String, Timings) {
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1000.0;
    let config = pod_config(&name);
    let begin = Instant::now();
    let pod = client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: std::env::var("POD_BENCH_HANDLER").unwrap_or_default(),
        })
        .await
        .unwrap_or_else(|e| panic!("{label}: RunPodSandbox {name}: {e}"))
        .into_inner()
        .pod_sandbox_id;
    let run = ms(begin);
    let step = Instant::now();
    let container = client
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config(&image)),
            sandbox_config: Some(config),
        })
        .await
        .unwrap_or_else(|e| panic!("{label}: CreateContainer {name}: {e}"))
        .into_inner()
        .container_id;
    let create = ms(step);
    let step = Instant::now();
    client
        .start_container(StartContainerRequest {
            container_id: container,
        })
        .await
        .unwrap_or_else(|e| panic!("{label}: StartContainer {name}: {e}"));
    let start = ms(step);
    (pod, [run, create, start, ms(begin)])
}

fn rss_kb(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time (user + system) a process used so far, in milliseconds.
fn cpu_ms(pid: &str) -> f64 {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised comm; utime and stime are 14 and 15.
            let rest = s.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) * 1000.0 / ticks)
        })
        .unwrap_or(0.0)
}

/// Total RSS and count of the processes whose comm is `comm`.
fn rss_of_comm(comm: &str) -> (u64, usize) {
    let mut total = (0, 0);
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        // comm is cut at 15 bytes.
        let want = &comm[..comm.len().min(15)];
        if std::fs::read_to_string(entry.path().join("comm")).is_ok_and(|c| c.trim() == want) {
            total.0 += rss_kb(pid);
            total.1 += 1;
        }
    }
    total
}

/// ListPodSandbox and ListContainers, one after the other every 20 ms
/// (fifty times the kubelet's relist rate, yet a fixed load: a daemon that
/// answers faster is not asked more), until `go` turns false; the
/// milliseconds of each call.
async fn list_in_a_loop(
    mut client: Client,
    go: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (Vec<f64>, Vec<f64>) {
    let (mut pods, mut containers) = (Vec::new(), Vec::new());
    let mut every = tokio::time::interval(std::time::Duration::from_millis(20));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while go.load(std::sync::atomic::Ordering::SeqCst) {
        every.tick().await;
        let t = Instant::now();
        client
            .list_pod_sandbox(ListPodSandboxRequest { filter: None })
            .await
            .expect("ListPodSandbox");
        pods.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        client
            .list_containers(ListContainersRequest { filter: None })
            .await
            .expect("ListContainers");
        containers.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    (pods, containers)
}

fn report_list(label: &str, rpc: &str, values: Vec<f64>) {
    if values.is_empty() {
        return;
    }
    let n = values.len();
    let [p50, p99] = berth_e2e::quantiles(values, [0.5, 0.99]);
    println!("{label} list {rpc} p50_ms={p50:.2} p99_ms={p99:.2} n={n}");
}

fn report(label: &str, phase: &str, timings: &[Timings]) {
    for (i, step) in ["run", "create", "start", "ready"].iter().enumerate() {
        let [p50, p90] = berth_e2e::quantiles(timings.iter().map(|t| t[i]).collect(), [0.5, 0.9]);
        println!(
            "{label} {phase} {step} p50_ms={p50:.2} p90_ms={p90:.2} n={}",
            timings.len()
        );
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 7 {
        eprintln!("usage: pod_bench SOCKET COUNT LABEL IMAGE DAEMON_PID SHIM_COMM");
        std::process::exit(2);
    }
    let socket = PathBuf::from(&args[1]);
    let count: usize = args[2].parse().expect("COUNT is a number");
    let (label, image, daemon, shim) = (&args[3], &args[4], &args[5], &args[6]);
    let channel = berth_e2e::connect(&socket).await;
    let client = RuntimeServiceClient::new(channel.clone());
    ImageServiceClient::new(channel)
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.clone(),
                ..ImageSpec::default()
            }),
            ..PullImageRequest::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{label}: PullImage {image}: {e}"));
    let mut pods = Vec::new();
    let cpu_before = cpu_ms(daemon);
    // Pod 0 warms caches and is not counted.
    let (pod, _) = start_pod(client.clone(), label.clone(), "warm".into(), image.clone()).await;
    pods.push(pod);
    let mut sequential = Vec::new();
    for i in 0..count {
        let (pod, t) = start_pod(
            client.clone(),
            label.clone(),
            format!("seq-{i}"),
            image.clone(),
        )
        .await;
        pods.push(pod);
        sequential.push(t);
    }
    let listing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let lister = tokio::spawn(list_in_a_loop(client.clone(), listing.clone()));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        tasks.spawn(start_pod(
            client.clone(),
            label.clone(),
            format!("par-{i}"),
            image.clone(),
        ));
    }
    let mut parallel = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (pod, t) = done.expect("pod task");
        pods.push(pod);
        parallel.push(t);
    }
    listing.store(false, std::sync::atomic::Ordering::SeqCst);
    let (pod_lists, container_lists) = lister.await.expect("list task");
    let daemon_cpu = cpu_ms(daemon) - cpu_before;
    report(label, "seq", &sequential);
    report(label, "par", &parallel);
    report_list(label, "ListPodSandbox", pod_lists);
    report_list(label, "ListContainers", container_lists);
    let (shim_kb, shims) = rss_of_comm(shim);
    println!(
        "{label} rss daemon_kb={} shim_kb_per_container={} shims={shims} containers={}",
        rss_kb(daemon),
        shim_kb / pods.len().max(1) as u64,
        pods.len()
    );
    // The daemon's own CPU per pod started: its plugins, shims and runtime
    // run in processes of their own and are not counted here.
    println!(
        "{label} cpu daemon_ms_per_pod={:.2}",
        daemon_cpu / pods.len().max(1) as f64
    );
    let mut client = client;
    for id in pods {
        client
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("{label}: StopPodSandbox: {e}"));
        client
            .remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
            .await
            .unwrap_or_else(|e| panic!("{label}: RemovePodSandbox: {e}"));
    }
}
