//! berthd's side of NRI (berth-nri): its pods and containers as plugins
//! see them, and the updates plugins ask for, applied as
//! UpdateContainerResources applies them.

use std::collections::HashMap;

use berth_nri::api;
use berth_runtime::record::{ContainerRecord, ContainerState};
use berth_runtime::spec::Resources;
use serde_json::Value;

use crate::cri::CriService;

pub fn pod(pod: &berth_sandbox::Pod) -> api::PodSandbox {
    let ns = &pod.namespaces;
    let namespaces = [
        ("network", &ns.net),
        ("ipc", &ns.ipc),
        ("uts", &ns.uts),
        ("pid", &ns.pid),
        ("user", &ns.user),
    ]
    .into_iter()
    .filter_map(|(typ, path)| {
        path.as_ref().map(|p| api::LinuxNamespace {
            r#type: typ.to_string(),
            path: p.display().to_string(),
        })
    })
    .collect();
    api::PodSandbox {
        id: pod.id.to_string(),
        name: pod.spec.name.clone(),
        uid: pod.spec.uid.clone(),
        namespace: pod.spec.namespace.clone(),
        labels: map(&pod.spec.labels),
        annotations: map(&pod.spec.annotations),
        runtime_handler: pod.runtime_handler.clone(),
        linux: Some(api::LinuxPodSandbox {
            cgroup_parent: pod.cgroup_parent.clone(),
            cgroups_path: pod
                .infra
                .map(|_| pod.infra_cgroup().display().to_string())
                .unwrap_or_default(),
            namespaces,
            ..Default::default()
        }),
        pid: pod.infra.map(|i| i.pid as u32).unwrap_or_default(),
        ips: pod
            .network
            .as_ref()
            .map(|n| n.ips.iter().map(ToString::to_string).collect())
            .unwrap_or_default(),
    }
}

fn map(from: &std::collections::BTreeMap<String, String>) -> HashMap<String, String> {
    from.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The container from its record and the OCI spec in its run dir (read
/// here: call it off the async workers). A spec that cannot be read leaves
/// what it would tell empty.
pub fn container_of(record: &ContainerRecord) -> api::Container {
    let spec = berth_runtime::spec::read(&record.run_dir)
        .ok()
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or_default();
    container(record, &spec)
}

/// The container from its record and its OCI spec (as JSON).
fn container(record: &ContainerRecord, spec: &Value) -> api::Container {
    let process = &spec["process"];
    let linux = &spec["linux"];
    let mounts = spec["mounts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| api::Mount {
            destination: m["destination"].as_str().unwrap_or_default().to_string(),
            r#type: m["type"].as_str().unwrap_or_default().to_string(),
            source: m["source"].as_str().unwrap_or_default().to_string(),
            options: strings(&m["options"]),
        })
        .collect();
    let namespaces = linux["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| api::LinuxNamespace {
            r#type: n["type"].as_str().unwrap_or_default().to_string(),
            path: n["path"].as_str().unwrap_or_default().to_string(),
        })
        .collect();
    let rlimits = process["rlimits"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| api::PosixRlimit {
            r#type: r["type"].as_str().unwrap_or_default().to_string(),
            hard: r["hard"].as_u64().unwrap_or_default(),
            soft: r["soft"].as_u64().unwrap_or_default(),
        })
        .collect();
    let state = match record.state {
        ContainerState::Created => api::ContainerState::ContainerCreated,
        ContainerState::Running => api::ContainerState::ContainerRunning,
        ContainerState::Exited => api::ContainerState::ContainerStopped,
    };
    let user = &process["user"];
    api::Container {
        id: record.id.clone(),
        pod_sandbox_id: record.pod_id.clone(),
        name: record.name.clone(),
        state: state as i32,
        labels: map(&record.labels),
        annotations: map(&record.annotations),
        args: strings(&process["args"]),
        env: strings(&process["env"]),
        mounts,
        linux: Some(api::LinuxContainer {
            namespaces,
            resources: Some(resources_of_spec(&linux["resources"])),
            oom_score_adj: process["oomScoreAdj"]
                .as_i64()
                .map(|value| api::OptionalInt { value }),
            cgroups_path: linux["cgroupsPath"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            ..Default::default()
        }),
        pid: record.pid.max(0) as u32,
        rlimits,
        created_at: record.created_at,
        started_at: record.started_at.unwrap_or_default(),
        finished_at: record.exit.map(|e| e.finished_at).unwrap_or_default(),
        exit_code: record.exit.map(|e| e.exit_code).unwrap_or_default(),
        user: user.is_object().then(|| api::User {
            uid: user["uid"].as_u64().unwrap_or_default() as u32,
            gid: user["gid"].as_u64().unwrap_or_default() as u32,
            additional_gids: user["additionalGids"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|g| g.as_u64().map(|g| g as u32))
                .collect(),
        }),
        image: Some(api::Image {
            name: record.image.clone(),
            digest: record.image_ref.clone(),
            config_digest: record.image_id.clone(),
        }),
        ..Default::default()
    }
}

/// The container about to be made, from its record and spec (before
/// CreateContainer's plugins adjust it; the OCI spec does not exist yet).
pub fn container_to_create(
    record: &ContainerRecord,
    spec: &berth_runtime::spec::ContainerSpec,
) -> api::Container {
    let mut env: Vec<String> = spec.image.env.clone();
    env.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));
    let mounts = spec
        .mounts
        .iter()
        .map(|m| api::Mount {
            destination: m.container_path.display().to_string(),
            r#type: "bind".into(),
            source: m.host_path.display().to_string(),
            options: if m.readonly {
                vec!["rbind".into(), "ro".into()]
            } else {
                vec!["rbind".into()]
            },
        })
        .collect();
    let mut container = container(record, &Value::Null);
    container.args = berth_runtime::spec::process_args(&spec.image, &spec.command, &spec.args);
    container.env = env;
    container.mounts = mounts;
    container.annotations = spec.annotations.clone().into_iter().collect();
    container.linux = Some(api::LinuxContainer {
        resources: Some(resources_to_nri(&spec.resources)),
        oom_score_adj: spec.resources.oom_score_adj.map(|v| api::OptionalInt {
            value: i64::from(v),
        }),
        cgroups_path: spec.cgroups_path.display().to_string(),
        ..Default::default()
    });
    container
}

fn resources_of_spec(r: &Value) -> api::LinuxResources {
    let i64_of = |v: &Value| v.as_i64().map(|value| api::OptionalInt64 { value });
    let u64_of = |v: &Value| v.as_u64().map(|value| api::OptionalUInt64 { value });
    let (memory, cpu) = (&r["memory"], &r["cpu"]);
    api::LinuxResources {
        memory: memory.is_object().then(|| api::LinuxMemory {
            limit: i64_of(&memory["limit"]),
            reservation: i64_of(&memory["reservation"]),
            swap: i64_of(&memory["swap"]),
            swappiness: u64_of(&memory["swappiness"]),
            ..Default::default()
        }),
        cpu: cpu.is_object().then(|| api::LinuxCpu {
            shares: u64_of(&cpu["shares"]),
            quota: i64_of(&cpu["quota"]),
            period: u64_of(&cpu["period"]),
            cpus: cpu["cpus"].as_str().unwrap_or_default().to_string(),
            mems: cpu["mems"].as_str().unwrap_or_default().to_string(),
            ..Default::default()
        }),
        hugepage_limits: r["hugepageLimits"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| api::HugepageLimit {
                page_size: l["pageSize"].as_str().unwrap_or_default().to_string(),
                limit: l["limit"].as_u64().unwrap_or_default(),
            })
            .collect(),
        unified: r["unified"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect(),
        pids: r["pids"]["limit"]
            .as_i64()
            .map(|limit| api::LinuxPids { limit }),
        ..Default::default()
    }
}

/// Berth's resources as NRI's.
pub fn resources_to_nri(r: &Resources) -> api::LinuxResources {
    let memory = (r.memory_limit.is_some() || r.memory_swap.is_some()).then(|| api::LinuxMemory {
        limit: r.memory_limit.map(|value| api::OptionalInt64 { value }),
        swap: r.memory_swap.map(|value| api::OptionalInt64 { value }),
        ..Default::default()
    });
    api::LinuxResources {
        memory,
        cpu: Some(api::LinuxCpu {
            shares: r.cpu_shares.map(|value| api::OptionalUInt64 { value }),
            quota: r.cpu_quota.map(|value| api::OptionalInt64 { value }),
            period: r.cpu_period.map(|value| api::OptionalUInt64 { value }),
            cpus: r.cpuset_cpus.clone().unwrap_or_default(),
            mems: r.cpuset_mems.clone().unwrap_or_default(),
            ..Default::default()
        }),
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .map(|(page_size, limit)| api::HugepageLimit {
                page_size: page_size.clone(),
                limit: *limit,
            })
            .collect(),
        unified: r.unified.clone().into_iter().collect(),
        pids: r.pids_limit.map(|limit| api::LinuxPids { limit }),
        ..Default::default()
    }
}

/// A CRI request's resources as NRI's (UpdatePodSandbox).
pub fn cri_resources_to_nri(r: &berth_proto::cri::LinuxContainerResources) -> api::LinuxResources {
    let positive = |v: i64| (v > 0).then_some(v);
    api::LinuxResources {
        memory: positive(r.memory_limit_in_bytes).map(|value| api::LinuxMemory {
            limit: Some(api::OptionalInt64 { value }),
            ..Default::default()
        }),
        cpu: Some(api::LinuxCpu {
            shares: positive(r.cpu_shares).map(|v| api::OptionalUInt64 { value: v as u64 }),
            quota: (r.cpu_quota != 0).then_some(api::OptionalInt64 { value: r.cpu_quota }),
            period: positive(r.cpu_period).map(|v| api::OptionalUInt64 { value: v as u64 }),
            cpus: r.cpuset_cpus.clone(),
            mems: r.cpuset_mems.clone(),
            ..Default::default()
        }),
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .map(|l| api::HugepageLimit {
                page_size: l.page_size.clone(),
                limit: l.limit,
            })
            .collect(),
        unified: r.unified.clone(),
        ..Default::default()
    }
}

/// What of `r` an update cannot apply, by name: Berth's updates carry
/// no memory reservation or swappiness, realtime CPU or kernel memory.
pub fn not_updatable(r: &api::LinuxResources) -> Option<&'static str> {
    let memory = r.memory.as_ref();
    let cpu = r.cpu.as_ref();
    if memory.is_some_and(|m| m.reservation.is_some() || m.swappiness.is_some()) {
        Some("a memory reservation or swappiness")
    } else if memory.is_some_and(|m| m.kernel.is_some() || m.kernel_tcp.is_some()) {
        Some("a kernel memory limit")
    } else if cpu.is_some_and(|c| c.realtime_period.is_some() || c.realtime_runtime.is_some()) {
        Some("realtime CPU limits")
    } else {
        None
    }
}

/// NRI's resources as Berth's (what [`not_updatable`] names left out).
pub fn resources_from_nri(r: &api::LinuxResources) -> Resources {
    let mut out = Resources::default();
    if let Some(memory) = &r.memory {
        out.memory_limit = memory.limit.map(|v| v.value);
        out.memory_swap = memory.swap.map(|v| v.value);
    }
    if let Some(cpu) = &r.cpu {
        out.cpu_shares = cpu.shares.map(|v| v.value);
        out.cpu_quota = cpu.quota.map(|v| v.value);
        out.cpu_period = cpu.period.map(|v| v.value);
        out.cpuset_cpus = Some(cpu.cpus.clone()).filter(|s| !s.is_empty());
        out.cpuset_mems = Some(cpu.mems.clone()).filter(|s| !s.is_empty());
    }
    out.hugepage_limits = r
        .hugepage_limits
        .iter()
        .map(|l| (l.page_size.clone(), l.limit))
        .collect();
    out.unified = r.unified.clone().into_iter().collect();
    out.pids_limit = r.pids.map(|p| p.limit);
    out
}

/// What berth-nri asks of berthd.
pub struct Bridge {
    pub service: CriService,
}

#[async_trait::async_trait]
impl berth_nri::Runtime for Bridge {
    async fn snapshot(&self) -> (Vec<api::PodSandbox>, Vec<api::Container>) {
        self.service.nri_snapshot().await
    }

    async fn update(&self, updates: Vec<api::ContainerUpdate>) -> Vec<api::ContainerUpdate> {
        let mut failed = Vec::new();
        let host = berth_cri::resources::Host::probe();
        for update in updates {
            let asked = update
                .linux
                .as_ref()
                .and_then(|l| l.resources.clone())
                .unwrap_or_default();
            let result = match not_updatable(&asked) {
                Some(what) => Err(format!("Berth cannot update {what}")),
                None => self
                    .service
                    .apply_resources(
                        &update.container_id,
                        resources_from_nri(&asked),
                        host.clone(),
                    )
                    .await
                    .map_err(|status| status.message().to_string()),
            };
            match result {
                Ok(()) => {
                    tracing::info!(container = %update.container_id, "resources updated for an NRI plugin")
                }
                Err(reason) => {
                    tracing::warn!(container = %update.container_id, "NRI update failed: {reason}");
                    if !update.ignore_failure {
                        failed.push(update);
                    }
                }
            }
        }
        failed
    }
}

/// Starts NRI when `[nri] enable` is set.
pub fn start(
    config: &crate::config::NriConfig,
    service: &CriService,
) -> Result<(), berth_nri::Error> {
    if !config.enable {
        return Ok(());
    }
    let duration =
        |text: &str| crate::config::parse_duration(text).expect("the config was validated at load");
    let nri = berth_nri::Nri::start(
        berth_nri::Config {
            socket_path: config.socket_path.clone(),
            plugin_path: config.plugin_path.clone(),
            plugin_config_path: config.plugin_config_path.clone(),
            registration_timeout: duration(&config.registration_timeout),
            request_timeout: duration(&config.request_timeout),
            runtime_name: "berth".into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
        },
        std::sync::Arc::new(Bridge {
            service: service.clone(),
        }),
    )?;
    service.set_nri(nri);
    Ok(())
}
