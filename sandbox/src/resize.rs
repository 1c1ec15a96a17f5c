//! UpdatePodSandboxResources (in-place pod resize): the pod-level limits
//! written to the pod's own cgroup, its `cgroup_parent`. The kubelet has
//! already written them when it calls (the CRI says so); writing them again
//! is harmless and makes a resize asked by another client take effect.
//!
//! Only a parent of the pod's own is touched: the default parent
//! ([`crate::Options::default_cgroup_parent`]) holds every pod that names
//! none, and one pod's limits must not bind them all. With cgroupfs the
//! files are written directly (v1 or v2 alike); with systemd, the slice's
//! unit properties are set over D-Bus, so systemd stays the owner of its
//! tree.

use std::path::{Path, PathBuf};

use berth_host::cgroup::{Driver, Layout};

/// A pod's limits; `None` changes nothing, `Some(None)` lifts the limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodLimits {
    /// Bytes.
    pub memory: Option<Option<u64>>,
    /// CFS quota and period in microseconds.
    pub cpu: Option<Option<(u64, u64)>>,
    /// cgroup v1 shares (2..=262144).
    pub cpu_shares: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ResizeError {
    #[error("cannot write {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        source: std::io::Error,
    },
    #[error("no {controller} controller mounted for the pod cgroup {parent}")]
    NoController {
        controller: &'static str,
        parent: String,
    },
}

/// What was applied where, for the log.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    Files(Vec<PathBuf>),
    Unit(String),
    /// The pod sits in the shared default parent.
    SharedParent,
}

/// The files and values that set `limits` on cgroupfs, per the host's
/// layout.
pub fn cgroupfs_writes(
    layout: &Layout,
    parent: &Path,
    limits: &PodLimits,
) -> Result<Vec<(PathBuf, String)>, ResizeError> {
    let missing = |controller| ResizeError::NoController {
        controller,
        parent: parent.display().to_string(),
    };
    let v1 = |controller: &str| layout.v1(controller).map(|m| m.join(strip(parent)));
    let v2 = layout.unified().map(|m| m.join(strip(parent)));
    let mut writes = Vec::new();
    if let Some(memory) = limits.memory {
        if let Some(dir) = v1("memory") {
            // -1: no limit, in v1's words.
            let value = memory.map_or("-1".to_string(), |b| b.to_string());
            writes.push((dir.join("memory.limit_in_bytes"), value));
        } else {
            let dir = v2.clone().ok_or_else(|| missing("memory"))?;
            let value = memory.map_or("max".to_string(), |b| b.to_string());
            writes.push((dir.join("memory.max"), value));
        }
    }
    if let Some(cpu) = limits.cpu {
        if let Some(dir) = v1("cpu") {
            if let Some((_, period)) = cpu {
                writes.push((dir.join("cpu.cfs_period_us"), period.to_string()));
            }
            let quota = cpu.map_or("-1".to_string(), |(q, _)| q.to_string());
            writes.push((dir.join("cpu.cfs_quota_us"), quota));
        } else {
            let dir = v2.clone().ok_or_else(|| missing("cpu"))?;
            let value = match cpu {
                Some((quota, period)) => format!("{quota} {period}"),
                None => "max".to_string(),
            };
            writes.push((dir.join("cpu.max"), value));
        }
    }
    if let Some(shares) = limits.cpu_shares {
        if let Some(dir) = v1("cpu") {
            writes.push((dir.join("cpu.shares"), shares.to_string()));
        } else {
            let dir = v2.ok_or_else(|| missing("cpu"))?;
            writes.push((
                dir.join("cpu.weight"),
                berth_host::cgroup::shares_to_weight(shares).to_string(),
            ));
        }
    }
    Ok(writes)
}

fn strip(parent: &Path) -> &Path {
    parent.strip_prefix("/").unwrap_or(parent)
}

/// Applies `limits` to the pod cgroup `parent` (see the module doc).
pub async fn apply(
    parent: &str,
    default_parent: &str,
    limits: &PodLimits,
) -> Result<Applied, crate::Error> {
    if parent == default_parent {
        return Ok(Applied::SharedParent);
    }
    match Driver::of_parent(parent) {
        Driver::Systemd => {
            crate::systemd::set_slice_limits(parent, limits).await?;
            Ok(Applied::Unit(parent.to_string()))
        }
        Driver::Cgroupfs => {
            let writes = cgroupfs_writes(Layout::host(), Path::new(parent), limits)?;
            let mut written = Vec::new();
            for (path, value) in writes {
                std::fs::write(&path, &value).map_err(|source| ResizeError::Write {
                    path: path.clone(),
                    value,
                    source,
                })?;
                written.push(path);
            }
            Ok(Applied::Files(written))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(mountinfo: &str) -> Layout {
        Layout::from_mounts(&berth_host::mountinfo::parse(mountinfo))
    }

    #[test]
    fn v2_gets_memory_max_cpu_max_and_weight() {
        let v2 = layout("1 1 0:1 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n")
            .with_v2_controllers(&["memory", "cpu"]);
        let limits = PodLimits {
            memory: Some(Some(256 << 20)),
            cpu: Some(Some((150_000, 100_000))),
            cpu_shares: Some(1024),
        };
        let writes = cgroupfs_writes(&v2, Path::new("/kubepods/pod1"), &limits).unwrap();
        let dir = Path::new("/sys/fs/cgroup/kubepods/pod1");
        assert_eq!(
            writes,
            [
                (dir.join("memory.max"), (256u64 << 20).to_string()),
                (dir.join("cpu.max"), "150000 100000".to_string()),
                (dir.join("cpu.weight"), "39".to_string()),
            ]
        );
        let lifted = PodLimits {
            memory: Some(None),
            cpu: Some(None),
            cpu_shares: None,
        };
        let writes = cgroupfs_writes(&v2, Path::new("/kubepods/pod1"), &lifted).unwrap();
        assert_eq!(writes[0].1, "max");
        assert_eq!(writes[1].1, "max");
    }

    #[test]
    fn v1_gets_its_own_files() {
        let v1 = layout(
            "1 1 0:1 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
             2 1 0:2 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n",
        );
        let limits = PodLimits {
            memory: Some(None),
            cpu: Some(Some((50_000, 100_000))),
            cpu_shares: Some(512),
        };
        let writes = cgroupfs_writes(&v1, Path::new("/kubepods/pod1"), &limits).unwrap();
        let names: Vec<(String, &str)> = writes
            .iter()
            .map(|(p, v)| (p.display().to_string(), v.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                (
                    "/sys/fs/cgroup/memory/kubepods/pod1/memory.limit_in_bytes".into(),
                    "-1"
                ),
                (
                    "/sys/fs/cgroup/cpu,cpuacct/kubepods/pod1/cpu.cfs_period_us".into(),
                    "100000"
                ),
                (
                    "/sys/fs/cgroup/cpu,cpuacct/kubepods/pod1/cpu.cfs_quota_us".into(),
                    "50000"
                ),
                (
                    "/sys/fs/cgroup/cpu,cpuacct/kubepods/pod1/cpu.shares".into(),
                    "512"
                ),
            ]
        );
    }
}
