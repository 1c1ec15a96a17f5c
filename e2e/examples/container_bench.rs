//! Pod start-up against any CRI socket (berthd or containerd): pods with one
//! `sleep` container each, first one after another, then all at once. Each
//! pod is timed per RPC (RunPodSandbox, CreateContainer, StartContainer) and
//! as a whole ("ready": request of the pod to its container running, which is
//! when the kubelet reports the pod started). With the sequential pods still
//! running it reads the daemon's RSS and its shims' (processes whose `comm`
//! starts with SHIM_COMM).
//!
//! usage: container_bench SOCKET COUNT LABEL IMAGE DAEMON_PID SHIM_COMM
//! prints, per phase (`seq`, `par`):
//!   LABEL PHASE run_p50_ms=.. run_p90_ms=.. create_p50_ms=.. ... ready_p90_ms=.. n=..
//! and once:
//!   LABEL rss daemon_kib=.. shim_kib=.. shims=..

use std::path::PathBuf;
use std::time::Instant;

use berth_e2e::cri::image_service_client::ImageServiceClient;
use berth_e2e::cri::runtime_service_client::RuntimeServiceClient;
use berth_e2e::cri::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ImageSpec, LinuxContainerConfig,
    LinuxContainerSecurityContext, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata, PullImageRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
};
use tonic::transport::Channel;

fn pod_config(name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("bench-{name}-{}", std::process::id()),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: format!("/tmp/berth-bench-logs/{name}"),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: String::new(),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Pod as i32,
                    pid: NamespaceMode::Container as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..NamespaceOption::default()
                }),
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
        command: vec!["sleep".into(), "3600".into()],
        log_path: "sleeper.log".into(),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext::default()),
            ..LinuxContainerConfig::default()
        }),
        ..ContainerConfig::default()
    }
}

/// Milliseconds of each step of one pod.
#[derive(Debug, Clone, Copy)]
struct Timing {
    run: f64,
    create: f64,
    start: f64,
    ready: f64,
}

async fn start_pod(
    client: &mut RuntimeServiceClient<Channel>,
    label: &str,
    name: &str,
    image: &str,
) -> (String, Timing) {
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1000.0;
    let config = pod_config(name);
    let begin = Instant::now();
    let pod = client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
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
            config: Some(container_config(image)),
            sandbox_config: Some(config),
        })
        .await
        .unwrap_or_else(|e| panic!("{label}: CreateContainer in {name}: {e}"))
        .into_inner()
        .container_id;
    let create = ms(step);
    let step = Instant::now();
    client
        .start_container(StartContainerRequest {
            container_id: container,
        })
        .await
        .unwrap_or_else(|e| panic!("{label}: StartContainer in {name}: {e}"));
    let start = ms(step);
    let timing = Timing {
        run,
        create,
        start,
        ready: ms(begin),
    };
    (pod, timing)
}

async fn remove_pods(client: &mut RuntimeServiceClient<Channel>, label: &str, pods: Vec<String>) {
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

fn report(label: &str, phase: &str, timings: &[Timing]) {
    let quantiles = |pick: fn(&Timing) -> f64| {
        let mut values: Vec<f64> = timings.iter().map(pick).collect();
        values.sort_by(f64::total_cmp);
        let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
        (at(0.5), at(0.9))
    };
    let mut line = format!("{label} {phase}");
    for (name, pick) in [
        ("run", (|t: &Timing| t.run) as fn(&Timing) -> f64),
        ("create", |t: &Timing| t.create),
        ("start", |t: &Timing| t.start),
        ("ready", |t: &Timing| t.ready),
    ] {
        let (p50, p90) = quantiles(pick);
        line.push_str(&format!(" {name}_p50_ms={p50:.2} {name}_p90_ms={p90:.2}"));
    }
    println!("{line} n={}", timings.len());
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// PIDs of the processes whose `comm` starts with `prefix`.
fn processes(prefix: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.starts_with(prefix))
        })
        .collect()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 7 {
        eprintln!("usage: container_bench SOCKET COUNT LABEL IMAGE DAEMON_PID SHIM_COMM");
        std::process::exit(2);
    }
    let socket = PathBuf::from(&args[1]);
    let count: usize = args[2].parse().expect("COUNT is a number");
    let label = args[3].clone();
    let image = args[4].clone();
    let daemon: u32 = args[5].parse().expect("DAEMON_PID is a number");
    let shim_comm = &args[6];
    let channel = berth_e2e::connect(&socket).await;
    let mut client = RuntimeServiceClient::new(channel.clone());
    ImageServiceClient::new(channel.clone())
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.clone(),
                ..ImageSpec::default()
            }),
            ..PullImageRequest::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{label}: PullImage {image}: {e}"));

    // Pod 0 warms caches and is not counted.
    let mut pods = Vec::new();
    let mut timings = Vec::new();
    for i in 0..=count {
        let (pod, timing) = start_pod(&mut client, &label, &format!("seq-{i}"), &image).await;
        pods.push(pod);
        if i > 0 {
            timings.push(timing);
        }
    }
    report(&label, "seq", &timings);
    let shims = processes(shim_comm);
    let shim_total: u64 = shims.iter().filter_map(|&pid| rss_kib(pid)).sum();
    println!(
        "{label} rss daemon_kib={} shim_kib={} shims={}",
        rss_kib(daemon).unwrap_or(0),
        shim_total / shims.len().max(1) as u64,
        shims.len()
    );
    remove_pods(&mut client, &label, pods).await;

    let tasks: Vec<_> = (0..count)
        .map(|i| {
            let mut client = RuntimeServiceClient::new(channel.clone());
            let label = label.clone();
            let image = image.clone();
            tokio::spawn(async move {
                start_pod(&mut client, &label, &format!("par-{i}"), &image).await
            })
        })
        .collect();
    let mut pods = Vec::new();
    let mut timings = Vec::new();
    for task in tasks {
        let (pod, timing) = task.await.expect("pod task");
        pods.push(pod);
        timings.push(timing);
    }
    report(&label, "par", &timings);
    remove_pods(&mut client, &label, pods).await;
}
