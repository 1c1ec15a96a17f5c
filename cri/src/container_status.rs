//! A container record → the CRI's `Container` (ListContainers) and
//! `ContainerStatus`, and the image facts CreateContainer reads.

use berth_proto::cri::{
    self, Container, ContainerMetadata, ContainerResources, ContainerState, ContainerStatus,
    ImageSpec, LinuxContainerResources, MountPropagation,
};
use berth_runtime::record::{ContainerRecord, ContainerState as State};
use berth_runtime::spec::{BindMount, ImageConfig, Propagation, Resources};

use crate::to_map;

/// What a record of an older berthd kept instead of `mounts` and
/// `resources`: the CreateContainer config, as the JSON of the CRI types of
/// that time (field names as in the proto, enums as numbers). Read field by
/// field, so that no CRI type needs to deserialize and a field that changed
/// type since is read as it was written.
mod legacy {
    use berth_proto::cri::{HugepageLimit, LinuxContainerResources, Mount};
    use serde_json::Value;

    fn text(v: &Value, key: &str) -> String {
        v[key].as_str().unwrap_or_default().to_string()
    }

    fn int(v: &Value, key: &str) -> i64 {
        v[key].as_i64().unwrap_or_default()
    }

    pub fn mounts(legacy: &Value) -> Vec<Mount> {
        let Some(mounts) = legacy["config"]["mounts"].as_array() else {
            return Vec::new();
        };
        mounts
            .iter()
            .map(|m| Mount {
                container_path: text(m, "container_path"),
                host_path: text(m, "host_path"),
                readonly: m["readonly"].as_bool().unwrap_or_default(),
                selinux_relabel: m["selinux_relabel"].as_bool().unwrap_or_default(),
                propagation: int(m, "propagation") as i32,
                recursive_read_only: m["recursive_read_only"].as_bool().unwrap_or_default(),
                ..Default::default()
            })
            .collect()
    }

    pub fn resources(legacy: &Value) -> Option<LinuxContainerResources> {
        let r = &legacy["config"]["linux"]["resources"];
        if !r.is_object() {
            return None;
        }
        let hugepage_limits = r["hugepage_limits"]
            .as_array()
            .map(|limits| {
                limits
                    .iter()
                    .map(|l| HugepageLimit {
                        page_size: text(l, "page_size"),
                        limit: l["limit"].as_u64().unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let unified = r["unified"]
            .as_object()
            .map(|map| {
                map.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        Some(LinuxContainerResources {
            cpu_period: int(r, "cpu_period"),
            cpu_quota: int(r, "cpu_quota"),
            cpu_shares: int(r, "cpu_shares"),
            memory_limit_in_bytes: int(r, "memory_limit_in_bytes"),
            oom_score_adj: int(r, "oom_score_adj"),
            cpuset_cpus: text(r, "cpuset_cpus"),
            cpuset_mems: text(r, "cpuset_mems"),
            hugepage_limits,
            unified,
            memory_swap_limit_in_bytes: int(r, "memory_swap_limit_in_bytes"),
        })
    }
}

/// The CRI's `ContainerState` value.
pub fn state_value(state: State) -> i32 {
    match state {
        State::Created => ContainerState::ContainerCreated,
        State::Running => ContainerState::ContainerRunning,
        State::Exited => ContainerState::ContainerExited,
    }
    .into()
}

pub fn metadata(record: &ContainerRecord) -> ContainerMetadata {
    ContainerMetadata {
        name: record.name.clone(),
        attempt: record.attempt,
    }
}

fn image_spec(record: &ContainerRecord) -> ImageSpec {
    ImageSpec {
        image: record.image.clone(),
        user_specified_image: record.image.clone(),
        ..Default::default()
    }
}

/// What a container takes from its image's config.
pub fn image_config(image: &berth_image::Image) -> ImageConfig {
    let run = &image.config.config;
    ImageConfig {
        entrypoint: run.entrypoint.clone().unwrap_or_default(),
        cmd: run.cmd.clone().unwrap_or_default(),
        env: run.env.clone().unwrap_or_default(),
        working_dir: run.working_dir.clone(),
        user: run.user.clone(),
        stop_signal: (!run.stop_signal.is_empty()).then(|| run.stop_signal.clone()),
    }
}

/// The image's repo digest the kubelet reports as the container's image
/// (CRI-O's image_ref), else its ID.
pub fn image_ref(image: &berth_image::Image) -> String {
    image
        .repo_digests
        .first()
        .cloned()
        .unwrap_or_else(|| image.id_hex())
}

/// ListContainers' item for `record`.
pub fn container(record: &ContainerRecord) -> Container {
    Container {
        id: record.id.clone(),
        pod_sandbox_id: record.pod_id.clone(),
        metadata: Some(metadata(record)),
        image: Some(image_spec(record)),
        image_ref: record.image_ref.clone(),
        state: state_value(record.state),
        created_at: record.created_at,
        labels: to_map(&record.labels),
        annotations: to_map(&record.annotations),
        image_id: record.image_id.clone(),
    }
}

fn mount(m: &BindMount) -> cri::Mount {
    cri::Mount {
        container_path: m.container_path.display().to_string(),
        host_path: m.host_path.display().to_string(),
        readonly: m.readonly,
        recursive_read_only: m.recursive_readonly,
        propagation: match m.propagation {
            Propagation::Private => MountPropagation::PropagationPrivate,
            Propagation::HostToContainer => MountPropagation::PropagationHostToContainer,
            Propagation::Bidirectional => MountPropagation::PropagationBidirectional,
        }
        .into(),
        // An image volume says which image, by the name it was asked as and
        // its ID, as the kubelet reports it in the pod's status.
        image: m.image.as_ref().map(|v| ImageSpec {
            image: v.image.clone(),
            image_ref: v.image_id.clone(),
            ..Default::default()
        }),
        image_sub_path: m
            .image
            .as_ref()
            .map(|v| v.sub_path.display().to_string())
            .unwrap_or_default(),
        ..Default::default()
    }
}

/// The CRI form of limits; an unset one is 0, as the CRI has it.
pub fn cri_resources(r: &Resources) -> LinuxContainerResources {
    LinuxContainerResources {
        cpu_period: r.cpu_period.unwrap_or_default() as i64,
        cpu_quota: r.cpu_quota.unwrap_or_default(),
        cpu_shares: r.cpu_shares.unwrap_or_default() as i64,
        memory_limit_in_bytes: r.memory_limit.unwrap_or_default(),
        oom_score_adj: r.oom_score_adj.unwrap_or_default().into(),
        cpuset_cpus: r.cpuset_cpus.clone().unwrap_or_default(),
        cpuset_mems: r.cpuset_mems.clone().unwrap_or_default(),
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .map(|(page_size, limit)| cri::HugepageLimit {
                page_size: page_size.clone(),
                limit: *limit,
            })
            .collect(),
        unified: to_map(&r.unified),
        memory_swap_limit_in_bytes: r.memory_swap.unwrap_or_default(),
    }
}

/// The limits `record` was created with (and updated to since).
fn status_resources(record: &ContainerRecord) -> Option<LinuxContainerResources> {
    match &record.resources {
        Some(resources) => Some(cri_resources(resources)),
        None => legacy::resources(&record.legacy),
    }
}

/// Where UpdateContainerResources merges its new limits: the record's,
/// or, in a record of an older berthd, those its CreateContainer asked
/// for (checked again by today's rules; what they refuse is dropped).
pub fn resources_to_update(record: &ContainerRecord, host: &crate::resources::Host) -> Resources {
    if let Some(resources) = &record.resources {
        return resources.clone();
    }
    legacy::resources(&record.legacy)
        .and_then(|r| crate::resources::check(&r, host, crate::resources::Mode::Create).ok())
        .unwrap_or_default()
}

/// The CRI status of `record`; `user` comes from its saved `config.json`
/// ([`container_user`]).
pub fn status(record: &ContainerRecord, user: Option<cri::ContainerUser>) -> ContainerStatus {
    let exit = record.exit.filter(|_| record.state == State::Exited);
    let mounts = match &record.mounts {
        Some(mounts) => mounts.iter().map(mount).collect(),
        None => legacy::mounts(&record.legacy),
    };
    ContainerStatus {
        id: record.id.clone(),
        metadata: Some(metadata(record)),
        state: state_value(record.state),
        created_at: record.created_at,
        started_at: record.started_at.unwrap_or_default(),
        finished_at: exit.map(|e| e.finished_at).unwrap_or_default(),
        exit_code: exit.map(|e| e.exit_code).unwrap_or_default(),
        image: Some(image_spec(record)),
        image_ref: record.image_ref.clone(),
        reason: record.reason().unwrap_or_default().to_string(),
        message: record.message.clone().unwrap_or_default(),
        labels: to_map(&record.labels),
        annotations: to_map(&record.annotations),
        mounts,
        log_path: record.log_path.display().to_string(),
        resources: status_resources(record).map(|linux| ContainerResources {
            linux: Some(linux),
            windows: None,
        }),
        image_id: record.image_id.clone(),
        user,
        stop_signal: crate::signal::status_value(record.stop_signal.as_deref()),
    }
}

/// The identity a created container runs as, for `ContainerStatus.user`.
pub fn container_user(spec: &oci_spec::runtime::Spec) -> Option<cri::ContainerUser> {
    let user = spec.process().as_ref()?.user();
    Some(cri::ContainerUser {
        linux: Some(cri::LinuxContainerUser {
            uid: i64::from(user.uid()),
            gid: i64::from(user.gid()),
            supplemental_groups: user
                .additional_gids()
                .iter()
                .flatten()
                .map(|g| i64::from(*g))
                .collect(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use serde_json::json;

    /// A record as berthd saves it, with `fields` over a minimal one.
    fn record(fields: serde_json::Value) -> ContainerRecord {
        let mut value = json!({
            "id": "c1", "pod_id": "p1", "name": "app", "attempt": 2,
            "runtime_handler": "runc", "state": "running", "created_at": 5,
            "started_at": 6, "exit": null, "pid": 42, "image": "busybox",
            "image_ref": "busybox@sha256:ab", "image_id": "ab",
            "labels": {"k": "v"}, "annotations": {}, "log_path": "/l/app.log",
            "run_dir": "/r", "rootfs": "/f", "stop_signal": null,
        });
        for (key, field) in fields.as_object().unwrap() {
            value[key] = field.clone();
        }
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_record_gives_its_status() {
        let mounts = vec![
            BindMount {
                container_path: "/data".into(),
                host_path: "/srv".into(),
                readonly: true,
                recursive_readonly: false,
                propagation: Propagation::HostToContainer,
                image: None,
            },
            BindMount {
                container_path: "/tools".into(),
                host_path: PathBuf::new(),
                readonly: true,
                recursive_readonly: false,
                propagation: Propagation::Private,
                image: Some(berth_runtime::spec::ImageVolume {
                    image: "registry.example/tools:1".into(),
                    image_id: "ab".repeat(32),
                    sub_path: "bin".into(),
                    layers: Vec::new(),
                }),
            },
        ];
        let resources = Resources {
            memory_limit: Some(64 << 20),
            memory_swap: Some(64 << 20),
            cpu_quota: Some(-1),
            hugepage_limits: vec![("2MB".into(), 0)],
            ..Default::default()
        };
        let record = record(json!({
            "mounts": serde_json::to_value(&mounts).unwrap(),
            "resources": serde_json::to_value(&resources).unwrap(),
        }));
        let status = status(&record, None);
        assert_eq!(status.state, ContainerState::ContainerRunning as i32);
        assert_eq!(
            status.metadata,
            Some(ContainerMetadata {
                name: "app".into(),
                attempt: 2
            })
        );
        assert_eq!((status.created_at, status.started_at), (5, 6));
        assert_eq!(status.labels["k"], "v");
        assert_eq!(status.mounts.len(), 2);
        let mount = &status.mounts[0];
        assert_eq!(
            (mount.container_path.as_str(), mount.host_path.as_str()),
            ("/data", "/srv")
        );
        assert!(mount.readonly);
        assert_eq!(
            mount.propagation,
            MountPropagation::PropagationHostToContainer as i32
        );
        assert_eq!(mount.image, None);
        // An image volume: no host path, the image by name and ID.
        let image = &status.mounts[1];
        assert_eq!(image.host_path, "");
        let spec = image.image.as_ref().unwrap();
        assert_eq!(
            (spec.image.as_str(), spec.image_ref.as_str()),
            ("registry.example/tools:1", "ab".repeat(32).as_str())
        );
        assert_eq!(image.image_sub_path, "bin");
        // The layers are not kept in the record.
        let saved = serde_json::to_value(&record).unwrap();
        assert!(
            saved["mounts"][1]["image"].get("layers").is_none(),
            "{saved}"
        );
        let linux = status.resources.unwrap().linux.unwrap();
        assert_eq!(linux.memory_limit_in_bytes, 64 << 20);
        assert_eq!(linux.cpu_quota, -1);
        assert_eq!(linux.cpu_shares, 0);
        assert_eq!(linux.hugepage_limits[0].page_size, "2MB");
        assert_eq!(container(&record).image_ref, "busybox@sha256:ab");
    }

    /// Records of an older berthd kept the CreateContainer config instead.
    #[test]
    fn a_legacy_record_gives_its_request_s_mounts_and_limits() {
        // As an older berthd wrote it: the whole request's config, as
        // k8s-cri's serde derives rendered it (env values as strings).
        let config = json!({
            "metadata": {"name": "c", "attempt": 0},
            "envs": [{"key": "A", "value": "b"}],
            "mounts": [{
                "container_path": "/data", "host_path": "/srv", "readonly": true,
                "selinux_relabel": false, "propagation": 0, "uid_mappings": [],
                "gid_mappings": [], "recursive_read_only": false, "image": null
            }],
            "linux": {"resources": {
                "cpu_period": 0, "cpu_quota": 0, "cpu_shares": 512,
                "memory_limit_in_bytes": 33554432, "oom_score_adj": 0,
                "cpuset_cpus": "", "cpuset_mems": "", "hugepage_limits": [],
                "unified": {}, "memory_swap_limit_in_bytes": 0
            }, "security_context": null}
        });
        let record = record(json!({"extra": {"config": config}}));
        let status = status(&record, None);
        assert_eq!(status.mounts[0].container_path, "/data");
        assert_eq!(status.mounts[0].host_path, "/srv");
        assert!(status.mounts[0].readonly);
        let linux = status.resources.unwrap().linux.unwrap();
        assert_eq!(
            (linux.memory_limit_in_bytes, linux.cpu_shares),
            (32 << 20, 512)
        );
        let host = crate::resources::Host {
            v2: false,
            swap: false,
            hugetlb: false,
        };
        let base = resources_to_update(&record, &host);
        assert_eq!(
            (base.memory_limit, base.cpu_shares),
            (Some(32 << 20), Some(512))
        );
        // Saved again, it keeps what it had, under the same key.
        let saved = serde_json::to_value(&record).unwrap();
        assert_eq!(
            saved["extra"]["config"]["linux"]["resources"]["cpu_shares"],
            512
        );
        assert!(saved.get("mounts").is_none());
    }

    #[test]
    fn an_exit_shows_only_once_exited() {
        let exit = json!({"exit_code": 137, "signal": 9, "finished_at": 9, "oom_killed": true});
        let running = status(&record(json!({"exit": exit})), None);
        assert_eq!((running.exit_code, running.finished_at), (0, 0));
        let exited = status(&record(json!({"exit": exit, "state": "exited"})), None);
        assert_eq!((exited.exit_code, exited.finished_at), (137, 9));
        assert_eq!(exited.reason, "OOMKilled");
    }
}
