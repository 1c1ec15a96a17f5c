//! UpdateContainerResources: the CRI's new limits checked (bad values change
//! nothing), turned into the OCI `linux.resources` fields the runtime's
//! `update` takes, and merged into the saved `config.json`.
//!
//! As in CRI-O, a zero field means "leave as is".

use std::path::{Path, PathBuf};

use berth_host::cgroup::Layout;
use berth_proto::cri::LinuxContainerResources;
use serde_json::{Map, Value, json};

pub use crate::resources::Host;
use crate::resources::{Mode, check};

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("container {id}: write {path}: {source}")]
    Io {
        id: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The OCI `linux.resources` fields to change, checked against the host
/// by the rules CreateContainer uses ([`crate::resources::check`]).
pub fn resources(cri: &LinuxContainerResources, host: &Host) -> Result<Value, UpdateError> {
    let r = check(cri, host, Mode::Update).map_err(|e| UpdateError::Invalid {
        field: e.field,
        message: e.message,
    })?;
    let mut cpu = Map::new();
    let put = |section: &mut Map<String, Value>, key: &str, value: Option<Value>| {
        if let Some(value) = value {
            section.insert(key.into(), value);
        }
    };
    put(&mut cpu, "shares", r.cpu_shares.map(|v| json!(v)));
    put(&mut cpu, "quota", r.cpu_quota.map(|v| json!(v)));
    put(&mut cpu, "period", r.cpu_period.map(|v| json!(v)));
    put(&mut cpu, "cpus", r.cpuset_cpus.map(|v| json!(v)));
    put(&mut cpu, "mems", r.cpuset_mems.map(|v| json!(v)));
    let mut memory = Map::new();
    put(&mut memory, "limit", r.memory_limit.map(|v| json!(v)));
    put(&mut memory, "swap", r.memory_swap.map(|v| json!(v)));
    let unified: Map<String, Value> = r
        .unified
        .into_iter()
        .map(|(key, value)| (key, json!(value)))
        .collect();
    let mut out = Map::new();
    for (key, section) in [("cpu", cpu), ("memory", memory), ("unified", unified)] {
        if !section.is_empty() {
            out.insert(key.into(), Value::Object(section));
        }
    }
    if !r.hugepage_limits.is_empty() {
        let pages = r
            .hugepage_limits
            .iter()
            .map(|(size, limit)| json!({ "pageSize": size, "limit": limit }))
            .collect();
        out.insert("hugepageLimits".into(), Value::Array(pages));
    }
    Ok(Value::Object(out))
}

/// Merges the fields [`resources`] made into a spec's `linux.resources`:
/// hugepage limits by page size, objects key by key, anything else replaced.
pub fn merge_resources(target: &mut Value, patch: &Value) {
    let mut patch = patch.clone();
    if let Some(Value::Array(new)) = patch
        .as_object_mut()
        .and_then(|fields| fields.remove("hugepageLimits"))
    {
        let limits = &mut target["hugepageLimits"];
        if !limits.is_array() {
            *limits = Value::Array(Vec::new());
        }
        if let Value::Array(limits) = limits {
            for page in new {
                limits.retain(|old| old["pageSize"] != page["pageSize"]);
                limits.push(page);
            }
        }
    }
    merge(target, &patch);
}

/// Merges `patch` into `target`: objects key by key, anything else replaced.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                merge(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

/// Writes the hugetlb limits into the container's cgroup (`runc update`
/// does not take them).
pub fn apply_hugepages(id: &str, cgroups_path: &Path, limits: &[Value]) -> Result<(), UpdateError> {
    let layout = Layout::host();
    let Some(dir) = layout.dir("hugetlb", cgroups_path) else {
        return Ok(());
    };
    for limit in limits {
        let size = limit["pageSize"].as_str().unwrap_or_default();
        let bytes = limit["limit"].as_u64().unwrap_or_default();
        let path = if layout.v1("hugetlb").is_some() {
            dir.join(format!("hugetlb.{size}.limit_in_bytes"))
        } else {
            dir.join(format!("hugetlb.{size}.max"))
        };
        std::fs::write(&path, bytes.to_string()).map_err(|source| UpdateError::Io {
            id: id.to_string(),
            path,
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::cri::HugepageLimit;

    const V1: Host = Host {
        v2: false,
        swap: true,
        hugetlb: false,
    };

    fn field_of(err: UpdateError) -> String {
        match err {
            UpdateError::Invalid { field, .. } => field,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn zero_fields_are_left_out_and_swap_follows_the_limit() {
        let cri = LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            cpu_shares: 512,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            cpuset_cpus: "0-1".into(),
            ..Default::default()
        };
        let json = resources(&cri, &V1).unwrap();
        assert_eq!(
            json,
            json!({
                "cpu": {"shares": 512, "quota": 50_000, "period": 100_000, "cpus": "0-1"},
                "memory": {"limit": 64 << 20, "swap": 64 << 20},
            })
        );
        assert_eq!(
            resources(&LinuxContainerResources::default(), &V1).unwrap(),
            json!({})
        );
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases: Vec<(LinuxContainerResources, &str)> = vec![
            (
                LinuxContainerResources {
                    memory_limit_in_bytes: -5,
                    ..Default::default()
                },
                "memory_limit_in_bytes",
            ),
            (
                LinuxContainerResources {
                    memory_limit_in_bytes: 4096,
                    ..Default::default()
                },
                "memory_limit_in_bytes",
            ),
            (
                LinuxContainerResources {
                    cpu_shares: -1,
                    ..Default::default()
                },
                "cpu_shares",
            ),
            (
                LinuxContainerResources {
                    cpu_quota: -7,
                    ..Default::default()
                },
                "cpu_quota",
            ),
            (
                LinuxContainerResources {
                    cpu_period: 10,
                    ..Default::default()
                },
                "cpu_period",
            ),
            (
                LinuxContainerResources {
                    cpuset_cpus: "0-x".into(),
                    ..Default::default()
                },
                "cpuset_cpus",
            ),
            (
                LinuxContainerResources {
                    memory_limit_in_bytes: 64 << 20,
                    memory_swap_limit_in_bytes: 32 << 20,
                    ..Default::default()
                },
                "memory_swap_limit_in_bytes",
            ),
            (
                LinuxContainerResources {
                    unified: [("memory.high".to_string(), "1M".to_string())].into(),
                    ..Default::default()
                },
                "unified[\"memory.high\"]",
            ),
            (
                LinuxContainerResources {
                    hugepage_limits: vec![HugepageLimit {
                        page_size: "2MB".into(),
                        limit: 1 << 21,
                    }],
                    ..Default::default()
                },
                "hugepage_limits[0].page_size",
            ),
        ];
        for (cri, field) in cases {
            assert_eq!(field_of(resources(&cri, &V1).unwrap_err()), field);
        }
        let v2 = Host {
            v2: true,
            swap: true,
            hugetlb: true,
        };
        let bad_key = LinuxContainerResources {
            unified: [("../memory.max".to_string(), "1".to_string())].into(),
            ..Default::default()
        };
        assert!(resources(&bad_key, &v2).is_err());
        let good = LinuxContainerResources {
            unified: [("memory.high".to_string(), "1M".to_string())].into(),
            ..Default::default()
        };
        assert_eq!(
            resources(&good, &v2).unwrap(),
            json!({"unified": {"memory.high": "1M"}})
        );
    }

    #[test]
    fn merge_replaces_leaves_and_keeps_the_rest() {
        let mut spec = json!({"memory": {"limit": 1, "swap": 1}, "devices": [1]});
        merge(
            &mut spec,
            &json!({"memory": {"limit": 2}, "cpu": {"shares": 3}}),
        );
        assert_eq!(
            spec,
            json!({"memory": {"limit": 2, "swap": 1}, "devices": [1], "cpu": {"shares": 3}})
        );
        let mut resources = json!({"hugepageLimits": [
            {"pageSize": "2MB", "limit": 1},
            {"pageSize": "1GB", "limit": 2},
        ]});
        merge_resources(
            &mut resources,
            &json!({"hugepageLimits": [{"pageSize": "2MB", "limit": 3}], "memory": {"limit": 4}}),
        );
        assert_eq!(
            resources,
            json!({"hugepageLimits": [
                {"pageSize": "1GB", "limit": 2},
                {"pageSize": "2MB", "limit": 3},
            ], "memory": {"limit": 4}})
        );
    }
}
