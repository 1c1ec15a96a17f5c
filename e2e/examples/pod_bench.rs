//! RunPodSandbox latency against any CRI socket (berthd or containerd):
//! one warm-up pod, then N pods one after another, each timed from request
//! to response; then every pod is stopped and removed.
//!
//! usage: pod_bench SOCKET COUNT LABEL
//! prints: LABEL p50_ms=.. p90_ms=.. mean_ms=.. n=..

use std::path::PathBuf;
use std::time::Instant;

use berth_e2e::cri::runtime_service_client::RuntimeServiceClient;
use berth_e2e::cri::{
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, RemovePodSandboxRequest, RunPodSandboxRequest,
    StopPodSandboxRequest,
};

fn config(name: &str) -> PodSandboxConfig {
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

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: pod_bench SOCKET COUNT LABEL");
        std::process::exit(2);
    }
    let socket = PathBuf::from(&args[1]);
    let count: usize = args[2].parse().expect("COUNT is a number");
    let label = &args[3];
    let mut client = RuntimeServiceClient::new(berth_e2e::connect(&socket).await);
    let mut ids = Vec::new();
    let mut latencies = Vec::new();
    for i in 0..=count {
        let start = Instant::now();
        let id = client
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config(&format!("bench-{i}"))),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("{label}: RunPodSandbox {i}: {e}"))
            .into_inner()
            .pod_sandbox_id;
        let elapsed = start.elapsed().as_secs_f64() * 1000.0;
        // Pod 0 warms caches (and containerd's image) and is not counted.
        if i > 0 {
            latencies.push(elapsed);
        }
        ids.push(id);
    }
    for id in ids {
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
    latencies.sort_by(f64::total_cmp);
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    let mean = latencies.iter().sum::<f64>() / latencies.len() as f64;
    println!(
        "{label} p50_ms={:.2} p90_ms={:.2} mean_ms={mean:.2} n={}",
        pick(0.5),
        pick(0.9),
        latencies.len()
    );
}
