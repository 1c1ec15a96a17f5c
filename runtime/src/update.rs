//! UpdateContainerResources: the CRI's new limits checked (bad values change
//! nothing), turned into the OCI `linux.resources` fields the runtime's
//! `update` takes, and merged into the saved `config.json`.
//!
//! As in CRI-O, a zero field means "leave as is".

use std::path::{Path, PathBuf};

use berth_proto::cri::LinuxContainerResources;
use serde_json::{Map, Value, json};

/// CRI-O's lower bound for a memory limit.
pub const MIN_MEMORY_LIMIT: i64 = 12 << 20;

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

fn invalid(field: impl Into<String>, message: impl Into<String>) -> UpdateError {
    UpdateError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// What the host's cgroups offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Only cgroup v2 (no v1 hierarchies): the `unified` keys apply.
    pub v2: bool,
    /// The kernel accounts swap (v1 `memory.memsw.*`, or v2).
    pub swap: bool,
    /// The hugetlb controller is there.
    pub hugetlb: bool,
}

impl Host {
    pub fn probe() -> Host {
        let root = Path::new("/sys/fs/cgroup");
        let v2 = root.join("cgroup.controllers").exists();
        let v2_controllers =
            std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        Host {
            v2,
            swap: v2 || root.join("memory/memory.memsw.limit_in_bytes").exists(),
            hugetlb: if v2 {
                v2_controllers.split_whitespace().any(|c| c == "hugetlb")
            } else {
                root.join("hugetlb").is_dir()
            },
        }
    }
}

/// A cpuset list: `0`, `0-3`, `0,2-4`.
fn valid_cpuset(list: &str) -> bool {
    list.split(',').all(|part| {
        let mut ends = part.splitn(2, '-');
        let first = ends.next().unwrap_or_default();
        let number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        match ends.next() {
            None => number(first),
            Some(last) => {
                number(first)
                    && number(last)
                    && first.parse::<u32>().ok() <= last.parse::<u32>().ok()
            }
        }
    })
}

/// `2MB`, `1GB`, `64KB` → the size in kB the kernel names its files with.
fn page_size_kb(size: &str) -> Option<u64> {
    let split = size.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = size.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor = match unit {
        "KB" => 1,
        "MB" => 1 << 10,
        "GB" => 1 << 20,
        _ => return None,
    };
    Some(number * factor).filter(|kb| *kb > 0)
}

/// The OCI `linux.resources` fields to change, checked against the host.
pub fn resources(cri: &LinuxContainerResources, host: &Host) -> Result<Value, UpdateError> {
    let mut cpu = Map::new();
    if cri.cpu_shares < 0 {
        return Err(invalid("cpu_shares", "must not be negative"));
    }
    if cri.cpu_shares > 0 {
        cpu.insert("shares".into(), json!(cri.cpu_shares));
    }
    // The kernel takes periods of 1 ms to 1 s and quotas of at least 1 ms.
    match cri.cpu_period {
        0 => {}
        1_000..=1_000_000 => {
            cpu.insert("period".into(), json!(cri.cpu_period));
        }
        other => {
            return Err(invalid(
                "cpu_period",
                format!("{other} is outside 1000..=1000000 µs"),
            ));
        }
    }
    match cri.cpu_quota {
        0 => {}
        -1 | 1_000.. => {
            cpu.insert("quota".into(), json!(cri.cpu_quota));
        }
        other => {
            return Err(invalid(
                "cpu_quota",
                format!("{other} is neither -1 (no limit) nor at least 1000 µs"),
            ));
        }
    }
    for (field, key, list) in [
        ("cpuset_cpus", "cpus", &cri.cpuset_cpus),
        ("cpuset_mems", "mems", &cri.cpuset_mems),
    ] {
        if list.is_empty() {
            continue;
        }
        if !valid_cpuset(list) {
            return Err(invalid(field, format!("{list:?} is not a cpu list")));
        }
        cpu.insert(key.into(), json!(list));
    }

    let mut memory = Map::new();
    let limit = cri.memory_limit_in_bytes;
    if limit < 0 {
        return Err(invalid("memory_limit_in_bytes", "must not be negative"));
    }
    if limit > 0 && limit < MIN_MEMORY_LIMIT {
        return Err(invalid(
            "memory_limit_in_bytes",
            format!("{limit} is too low: it must be at least {MIN_MEMORY_LIMIT} bytes"),
        ));
    }
    let swap = cri.memory_swap_limit_in_bytes;
    if swap < -1 {
        return Err(invalid(
            "memory_swap_limit_in_bytes",
            "must be -1 (no limit), 0 or a byte count",
        ));
    }
    if swap > 0 && limit > 0 && swap < limit {
        return Err(invalid(
            "memory_swap_limit_in_bytes",
            format!("{swap} is below memory_limit_in_bytes {limit} (it counts memory plus swap)"),
        ));
    }
    if limit > 0 {
        memory.insert("limit".into(), json!(limit));
    }
    if swap != 0 {
        if !host.swap {
            return Err(invalid(
                "memory_swap_limit_in_bytes",
                "this host's kernel does not account swap",
            ));
        }
        memory.insert("swap".into(), json!(swap));
    } else if limit > 0 && host.swap {
        // No swapping past the limit, as at creation.
        memory.insert("swap".into(), json!(limit));
    }

    let mut hugepages = Vec::new();
    for (i, page) in cri.hugepage_limits.iter().enumerate() {
        let field = format!("hugepage_limits[{i}].page_size");
        let Some(kb) = page_size_kb(&page.page_size) else {
            return Err(invalid(
                field,
                format!("{:?} is not a page size like 2MB", page.page_size),
            ));
        };
        if !host.hugetlb {
            return Err(invalid(field, "this host has no hugetlb cgroup controller"));
        }
        if !Path::new(&format!("/sys/kernel/mm/hugepages/hugepages-{kb}kB")).exists() {
            return Err(invalid(
                field,
                format!("this host has no {} huge pages", page.page_size),
            ));
        }
        hugepages.push(json!({ "pageSize": page.page_size, "limit": page.limit }));
    }

    let mut unified = Map::new();
    for (key, value) in &cri.unified {
        if !host.v2 {
            return Err(invalid(
                format!("unified[{key:?}]"),
                "cgroup v2 keys need a host with only cgroup v2; this one has v1 hierarchies",
            ));
        }
        let well_formed = key.split_once('.').is_some_and(|(controller, file)| {
            !controller.is_empty() && !file.is_empty() && !key.contains('/')
        });
        if !well_formed || key.starts_with("cgroup.") {
            return Err(invalid(
                format!("unified[{key:?}]"),
                "not a controller file like memory.high",
            ));
        }
        unified.insert(key.clone(), json!(value));
    }

    let mut out = Map::new();
    for (key, section) in [("cpu", cpu), ("memory", memory), ("unified", unified)] {
        if !section.is_empty() {
            out.insert(key.into(), Value::Object(section));
        }
    }
    if !hugepages.is_empty() {
        out.insert("hugepageLimits".into(), Value::Array(hugepages));
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
pub fn apply_hugepages(
    id: &str,
    cgroups_path: &Path,
    limits: &[Value],
    host: &Host,
) -> Result<(), UpdateError> {
    let relative = cgroups_path.strip_prefix("/").unwrap_or(cgroups_path);
    for limit in limits {
        let size = limit["pageSize"].as_str().unwrap_or_default();
        let bytes = limit["limit"].as_u64().unwrap_or_default();
        let path = if host.v2 {
            Path::new("/sys/fs/cgroup")
                .join(relative)
                .join(format!("hugetlb.{size}.max"))
        } else {
            Path::new("/sys/fs/cgroup/hugetlb")
                .join(relative)
                .join(format!("hugetlb.{size}.limit_in_bytes"))
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
        assert_eq!(page_size_kb("2MB"), Some(2048));
        assert_eq!(page_size_kb("1GB"), Some(1 << 20));
        assert_eq!(page_size_kb("2M"), None);
    }
}
