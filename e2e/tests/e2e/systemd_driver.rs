//! The systemd cgroup driver through the real berthd, runc and systemd: a
//! pod in the kubelet's slice form, its infra process in a scope Berth asks
//! systemd for, containers in the transient scopes runc creates, limits
//! seen by systemd (`systemctl show`) and in the cgroup files, stats,
//! updates, OOM, a berthd restart, and a teardown that leaves no unit.
//!
//! Only a host with systemd as PID 1 can run the driver: there the test is
//! run with `--ignored` (the node VM, `hack/vm`). The image comes from a
//! registry the harness starts, or from `BERTH_E2E_REGISTRY=<host:port>`
//! (holding `berth/busybox:latest`), as in the node VM, which reaches a
//! registry on the host's loopback as 10.0.2.2.
//!
//! What any host can check (a systemd driver refused where systemd is not
//! PID 1) runs everywhere.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_e2e::cri::runtime_service_client::RuntimeServiceClient;
use berth_e2e::cri::{
    CgroupDriver, ContainerState, ContainerStatsRequest, ContainerStatusRequest,
    CreateContainerRequest, LinuxContainerResources, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, PodSandboxStatsRequest, RemoveContainerRequest, RunPodSandboxRequest,
    RuntimeConfigRequest, StartContainerRequest, StopContainerRequest,
    UpdateContainerResourcesRequest,
};
use berth_e2e::registry::{self, Registry, Security};
use berth_e2e::systemd::{scopes_and_slices_with, show, units_with};
use berth_e2e::world::container_config;
use berth_e2e::{Berthd, Options, Paths, can_run, have_command, is_root};
use nix::sys::signal::Signal;
use tonic::transport::Channel;

type Client = RuntimeServiceClient<Channel>;

const MIB: i64 = 1024 * 1024;

fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// Stops the test pod's slice (and so every scope in it) when the test
/// fails half way: systemd would keep them after berthd is gone.
struct StopSliceOnPanic(String);

impl Drop for StopSliceOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new("systemctl").args(["stop", &self.0]).status();
        }
    }
}

fn cgroup_file(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(Path::new("/sys/fs/cgroup").join(dir).join(file))
        .unwrap_or_else(|e| panic!("read {file} of cgroup {}: {e}", dir.display()))
        .trim()
        .to_string()
}

/// Waits for `what` to hold, up to `secs` (the node VM is slow).
async fn eventually(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The registry holding `berth/busybox:latest`: the one named by
/// `BERTH_E2E_REGISTRY`, or one the harness starts (kept alive by the
/// returned handle).
fn busybox_registry() -> (Option<Registry>, String) {
    if let Ok(host) = std::env::var("BERTH_E2E_REGISTRY") {
        return (None, host);
    }
    let registry = Registry::start_empty(Security::Plain);
    registry.push("busybox", "berth/busybox:latest");
    let host = registry.host();
    (Some(registry), host)
}

fn pod_config(uid: &str, cgroup_parent: &str, logs: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "sd".into(),
            uid: uid.into(),
            namespace: "e2e".into(),
            attempt: 0,
        }),
        log_directory: logs.join("sd").display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.into(),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    // A shared PID namespace: the pod gets an infra process,
                    // whose scope is Berth's own.
                    pid: NamespaceMode::Pod as i32,
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

async fn create_and_start(
    client: &mut Client,
    pod: &str,
    sandbox: &PodSandboxConfig,
    image: &str,
    name: &str,
    script: &str,
    resources: LinuxContainerResources,
) -> String {
    let mut config = container_config(image, name, script);
    if let Some(linux) = config.linux.as_mut() {
        linux.resources = Some(resources);
        if let Some(modes) = linux
            .security_context
            .as_mut()
            .and_then(|context| context.namespace_options.as_mut())
        {
            modes.pid = NamespaceMode::Pod as i32;
        }
    }
    let id = client
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(sandbox.clone()),
        })
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e:?}"))
        .into_inner()
        .container_id;
    client
        .start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("start {name}: {e:?}"));
    id
}

async fn state(client: &mut Client, id: &str) -> (i32, String) {
    let status = client
        .container_status(ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    (status.state, status.reason)
}

/// This test runs long (the node VM is 10-20x slower than a host): one pod
/// and berthd carry every check of the driver, in the order a node lives.
#[tokio::test]
#[ignore = "needs systemd as PID 1: runs in the node VM"]
async fn systemd_driver_runs_pods_in_slices_and_containers_in_scopes() {
    let ready = is_root()
        && systemd_running()
        && have_command("runc")
        && have_command("crun")
        && have_command("systemctl")
        && (std::env::var_os("BERTH_E2E_REGISTRY").is_some() || registry::available());
    if !can_run(
        ready,
        "needs root, systemd as PID 1, runc, crun, and a registry (BERTH_E2E_REGISTRY or docker-registry and skopeo)",
    ) {
        return;
    }
    let (_registry, host) = busybox_registry();
    let image = format!("{host}/berth/busybox:latest");
    let logs = tempfile::tempdir().unwrap();
    let conf = logs.path().join("registries.conf");
    std::fs::write(&conf, registry::insecure_conf(&host)).unwrap();
    std::fs::create_dir(logs.path().join("net.d")).unwrap();
    // No cgroup_driver key: the default follows the host.
    let options = Options {
        config: format!(
            "[image]\nregistries_config = \"{}\"\n[cni]\nconf_dir = \"{}\"\n[runtimes.crun]\npath = \"crun\"\n",
            conf.display(),
            logs.path().join("net.d").display()
        ),
        ..Options::default()
    };
    let berthd = Berthd::start_with(options.clone()).await;
    berth_e2e::pull(&mut berthd.images().await, &image)
        .await
        .unwrap();
    let mut client = berthd.runtime().await;

    let driver = client
        .runtime_config(RuntimeConfigRequest {})
        .await
        .unwrap()
        .into_inner()
        .linux
        .unwrap()
        .cgroup_driver();
    assert_eq!(driver, CgroupDriver::Systemd);

    // The kubelet's pod UID with its dashes as underscores, as in its slices.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let uid = format!("e2e_{}_{nanos:x}", std::process::id());
    let slice = format!("kubepods-burstable-pod{uid}.slice");
    let _stop = StopSliceOnPanic(slice.clone());
    let slice_dir = PathBuf::from(format!("kubepods.slice/kubepods-burstable.slice/{slice}"));

    // Malformed parents change nothing and name the field.
    for bad in [
        "/kubepods/burstable",
        "kubepods-burstable-pod--x.slice",
        "kube pods.slice",
    ] {
        let err = berth_e2e::run_pod(&mut client, pod_config(&uid, bad, logs.path()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}: {err:?}");
        assert!(
            err.message().contains("linux.cgroup_parent"),
            "{bad}: {err:?}"
        );
    }
    assert!(berth_e2e::pod_ids(&mut client).await.is_empty());
    assert!(units_with(&[&uid]).is_empty(), "{:?}", units_with(&[&uid]));

    let sandbox = pod_config(&uid, &slice, logs.path());
    let pod = client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(sandbox.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    assert_eq!(show(&slice, "ActiveState"), "active");
    let infra_scope = format!("berth-{pod}.scope");
    assert_eq!(show(&infra_scope, "ActiveState"), "active");
    assert_eq!(show(&infra_scope, "Slice"), slice);
    assert_eq!(
        show(&infra_scope, "ControlGroup"),
        format!("/{}/{infra_scope}", slice_dir.display())
    );

    // Limits: memory, CPU, and pids (the CRI's only way to it is `unified`).
    let id = create_and_start(
        &mut client,
        &pod,
        &sandbox,
        &image,
        "limited",
        "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exec sleep 3600",
        LinuxContainerResources {
            memory_limit_in_bytes: 64 * MIB,
            cpu_period: 100_000,
            cpu_quota: 50_000,
            unified: HashMap::from([("pids.max".to_string(), "50".to_string())]),
            ..Default::default()
        },
    )
    .await;
    let scope = format!("berth-{id}.scope");
    let dir = slice_dir.join(&scope);
    assert_eq!(show(&scope, "ActiveState"), "active");
    assert_eq!(show(&scope, "ControlGroup"), format!("/{}", dir.display()));
    assert_eq!(show(&scope, "MemoryMax"), (64 * MIB).to_string());
    assert_eq!(show(&scope, "CPUQuotaPerSecUSec"), "500ms");
    assert_eq!(show(&scope, "TasksMax"), "50");
    assert_eq!(cgroup_file(&dir, "memory.max"), (64 * MIB).to_string());
    assert_eq!(cgroup_file(&dir, "cpu.max"), "50000 100000");
    assert_eq!(cgroup_file(&dir, "pids.max"), "50");
    println!(
        "scope {scope}: MemoryMax={} CPUQuotaPerSecUSec={} TasksMax={}",
        show(&scope, "MemoryMax"),
        show(&scope, "CPUQuotaPerSecUSec"),
        show(&scope, "TasksMax")
    );

    // Stats read the scope's files; the pod's include the infra scope.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (cpu_ns, working_set) = loop {
        let stats = client
            .container_stats(ContainerStatsRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .stats
            .unwrap();
        let cpu_ns = stats
            .cpu
            .and_then(|c| c.usage_core_nano_seconds)
            .map_or(0, |v| v.value);
        let working_set = stats
            .memory
            .and_then(|m| m.working_set_bytes)
            .map_or(0, |v| v.value);
        if cpu_ns > 0 && working_set > 0 {
            break (cpu_ns, working_set);
        }
        assert!(
            Instant::now() < deadline,
            "stats stay zero: {cpu_ns} ns, {working_set} B"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let pod_stats = client
        .pod_sandbox_stats(PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap()
        .linux
        .unwrap();
    let pod_cpu = pod_stats
        .cpu
        .and_then(|c| c.usage_core_nano_seconds)
        .map_or(0, |v| v.value);
    let processes = pod_stats
        .process
        .and_then(|p| p.process_count)
        .map_or(0, |v| v.value);
    assert!(
        pod_cpu >= cpu_ns,
        "pod cpu {pod_cpu} < container's {cpu_ns}"
    );
    assert!(processes >= 2, "infra and sleep: {processes}");
    assert_eq!(pod_stats.containers.len(), 1);
    println!(
        "stats: container cpu {cpu_ns} ns, working set {working_set} B; pod cpu {pod_cpu} ns, {processes} processes"
    );

    // runc update with the systemd driver sets the unit's properties too.
    client
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(LinuxContainerResources {
                memory_limit_in_bytes: 128 * MIB,
                cpu_period: 100_000,
                cpu_quota: 20_000,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(cgroup_file(&dir, "memory.max"), (128 * MIB).to_string());
    assert_eq!(cgroup_file(&dir, "cpu.max"), "20000 100000");
    assert_eq!(show(&scope, "MemoryMax"), (128 * MIB).to_string());
    assert_eq!(show(&scope, "CPUQuotaPerSecUSec"), "200ms");

    // OOM: the shim finds memory.events in the scope it is in.
    let oom = create_and_start(
        &mut client,
        &pod,
        &sandbox,
        &image,
        "oom",
        "dd if=/dev/zero of=/dev/null bs=64M count=1",
        LinuxContainerResources {
            memory_limit_in_bytes: 16 * MIB,
            ..Default::default()
        },
    )
    .await;
    let mut oom_state = (0, String::new());
    for _ in 0..1200 {
        oom_state = state(&mut client, &oom).await;
        if oom_state.0 == ContainerState::ContainerExited as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(oom_state.0, ContainerState::ContainerExited as i32);
    assert_eq!(oom_state.1, "OOMKilled");

    // A restart of berthd: the scopes are the containers', not berthd's.
    let (status, paths): (_, Paths) = berthd.stop_with(Signal::SIGTERM).await;
    assert!(status.success(), "berthd stop: {status}");
    assert_eq!(show(&scope, "ActiveState"), "active");
    let berthd = Berthd::start_in(paths, options).await;
    let mut client = berthd.runtime().await;
    assert_eq!(
        state(&mut client, &id).await.0,
        ContainerState::ContainerRunning as i32
    );
    let after = client
        .container_stats(ContainerStatsRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert!(
        after
            .cpu
            .and_then(|c| c.usage_core_nano_seconds)
            .is_some_and(|v| v.value >= cpu_ns)
    );
    assert_eq!(show(&scope, "MemoryMax"), (128 * MIB).to_string());

    // Teardown: container scopes, the infra scope and the slice Berth
    // started all go.
    for c in [&id, &oom] {
        client
            .stop_container(StopContainerRequest {
                container_id: c.to_string(),
                timeout: 0,
            })
            .await
            .unwrap();
        client
            .remove_container(RemoveContainerRequest {
                container_id: c.to_string(),
            })
            .await
            .unwrap();
    }
    eventually(60, "container scopes gone", || {
        units_with(&[&id, &oom]).is_empty()
    })
    .await;
    berth_e2e::stop_and_remove_pod(&mut client, &pod).await;
    // Berth's scopes and the slices it caused (this VM has no kubelet to
    // own kubepods.slice).
    let left = scopes_and_slices_with(&["berth-", "kubepods", &uid]);
    assert!(left.is_empty(), "units left: {left:?}");
    assert!(
        !Path::new("/sys/fs/cgroup").join(&slice_dir).exists(),
        "{} left",
        slice_dir.display()
    );
    println!("after teardown: no unit names berth or {uid}");

    // crun as a second handler: `--cgroup-manager=systemd`, the same scope.
    let uid = format!("{uid}_crun");
    let slice = format!("kubepods-besteffort-pod{uid}.slice");
    let _stop = StopSliceOnPanic(slice.clone());
    let sandbox = pod_config(&uid, &slice, logs.path());
    let pod = client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(sandbox.clone()),
            runtime_handler: "crun".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let id = create_and_start(
        &mut client,
        &pod,
        &sandbox,
        &image,
        "crun",
        "exec sleep 3600",
        LinuxContainerResources {
            memory_limit_in_bytes: 32 * MIB,
            ..Default::default()
        },
    )
    .await;
    let scope = format!("berth-{id}.scope");
    let dir = PathBuf::from(format!(
        "kubepods.slice/kubepods-besteffort.slice/{slice}/{scope}"
    ));
    assert_eq!(show(&scope, "ActiveState"), "active");
    assert_eq!(show(&scope, "ControlGroup"), format!("/{}", dir.display()));
    // crun (1.8, bookworm's) asks for a delegated scope, runs the
    // container in its `container` subgroup (crun's run.oci.systemd.subgroup
    // default on v2) and writes the limits there itself, leaving the unit's
    // MemoryMax unset. Usage counts up through the scope all the same.
    assert_eq!(show(&scope, "Delegate"), "yes");
    let limited = if Path::new("/sys/fs/cgroup")
        .join(&dir)
        .join("container")
        .is_dir()
    {
        dir.join("container")
    } else {
        dir.clone()
    };
    assert_eq!(cgroup_file(&limited, "memory.max"), (32 * MIB).to_string());
    let crun_memory_max = show(&scope, "MemoryMax");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = client
            .container_stats(ContainerStatsRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .stats
            .unwrap();
        let memory = stats
            .memory
            .and_then(|m| m.working_set_bytes)
            .map_or(0, |v| v.value);
        if memory > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "crun container's stats stay zero"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    client
        .stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await
        .unwrap();
    client
        .remove_container(RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    berth_e2e::stop_and_remove_pod(&mut client, &pod).await;
    let left = scopes_and_slices_with(&["berth-", "kubepods", &uid]);
    assert!(left.is_empty(), "units left after the crun pod: {left:?}");
    println!(
        "crun: scope {scope}, {} memory.max={} (unit MemoryMax={crun_memory_max}); no unit left",
        limited.display(),
        32 * MIB
    );
}

/// Where systemd is not PID 1, asking for its driver stops berthd at
/// start, naming the key; a slice parent is refused with cgroupfs.
#[tokio::test]
async fn systemd_driver_is_refused_where_systemd_is_not_pid_1() {
    if systemd_running() {
        // The node VM: the driver works there (the test above).
        return;
    }
    if !can_run(is_root(), "needs root") {
        return;
    }
    let paths = Paths::create();
    let options = Options {
        config: "cgroup_driver = \"systemd\"\n".into(),
        ..Options::default()
    };
    let out = berth_e2e::command(&paths, &options)
        .output()
        .expect("run berthd");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`cgroup_driver`"), "{stderr}");
    assert!(stderr.contains("systemd is not PID 1"), "{stderr}");
    assert!(!paths.socket().exists());

    let berthd = Berthd::start().await;
    let mut client = berthd.runtime().await;
    let driver = client
        .runtime_config(RuntimeConfigRequest {})
        .await
        .unwrap()
        .into_inner()
        .linux
        .unwrap()
        .cgroup_driver();
    assert_eq!(driver, CgroupDriver::Cgroupfs);
    let logs = tempfile::tempdir().unwrap();
    let err = berth_e2e::run_pod(
        &mut client,
        pod_config("u1", "kubepods-burstable-podu1.slice", logs.path()),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("linux.cgroup_parent"), "{err:?}");
    assert!(
        err.message().contains("cgroup driver is cgroupfs"),
        "{err:?}"
    );
}
