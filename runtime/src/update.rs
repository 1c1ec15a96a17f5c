//! UpdateContainerResources' new limits (already checked: crate
//! `berth-cri`) as the OCI `linux.resources` fields the runtime's `update`
//! takes, merged into the saved `config.json`.
//!
//! As in CRI-O, a field left unset means "leave as is".

use std::path::{Path, PathBuf};

use berth_host::cgroup::Layout;
use serde_json::{Map, Value, json};

use crate::spec::Resources;

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("container {id}: write {path}: {source}")]
    Io {
        id: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The OCI `linux.resources` fields that `r` changes.
pub fn resources(r: &Resources) -> Value {
    let mut cpu = Map::new();
    let put = |section: &mut Map<String, Value>, key: &str, value: Option<Value>| {
        if let Some(value) = value {
            section.insert(key.into(), value);
        }
    };
    put(&mut cpu, "shares", r.cpu_shares.map(|v| json!(v)));
    put(&mut cpu, "quota", r.cpu_quota.map(|v| json!(v)));
    put(&mut cpu, "period", r.cpu_period.map(|v| json!(v)));
    put(&mut cpu, "cpus", r.cpuset_cpus.as_ref().map(|v| json!(v)));
    put(&mut cpu, "mems", r.cpuset_mems.as_ref().map(|v| json!(v)));
    let mut memory = Map::new();
    put(&mut memory, "limit", r.memory_limit.map(|v| json!(v)));
    put(&mut memory, "swap", r.memory_swap.map(|v| json!(v)));
    let unified: Map<String, Value> = r
        .unified
        .iter()
        .map(|(key, value)| (key.clone(), json!(value)))
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
    Value::Object(out)
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

    #[test]
    fn unset_fields_are_left_out() {
        let r = Resources {
            memory_limit: Some(64 << 20),
            memory_swap: Some(64 << 20),
            cpu_shares: Some(512),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            cpuset_cpus: Some("0-1".into()),
            unified: [("memory.high".to_string(), "1M".to_string())].into(),
            hugepage_limits: vec![("2MB".into(), 1 << 21)],
            ..Default::default()
        };
        assert_eq!(
            resources(&r),
            json!({
                "cpu": {"shares": 512, "quota": 50_000, "period": 100_000, "cpus": "0-1"},
                "memory": {"limit": 64 << 20, "swap": 64 << 20},
                "unified": {"memory.high": "1M"},
                "hugepageLimits": [{"pageSize": "2MB", "limit": 1 << 21}],
            })
        );
        assert_eq!(resources(&Resources::default()), json!({}));
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
