//! The rules for a container's cgroup limits, one copy for CreateContainer
//! and UpdateContainerResources: bad values are refused naming their field,
//! and a zero field means "not set" (at update: "leave as is"), as in CRI-O.

use std::collections::BTreeMap;
use std::path::Path;

use berth_host::cgroup::{self, Layout};
use berth_proto::cri::LinuxContainerResources;

use berth_runtime::spec::Resources;

/// CRI-O's lower bound for a memory limit: a lower one would kill the
/// container as it starts.
pub const MIN_MEMORY_LIMIT: i64 = 12 << 20;

/// Which request the limits come in; the rules are the same, the fields
/// taken differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Create,
    /// `oom_score_adj` is left as it is (CRI-O ignores it on update too).
    Update,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ResourceError {
    /// The CRI field, relative to `LinuxContainerResources`.
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ResourceError {
    ResourceError {
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
        let layout = Layout::host();
        Host {
            v2: layout.mode() == cgroup::Mode::Unified,
            swap: layout.swap_accounted(),
            hugetlb: layout.has_controller("hugetlb"),
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

/// The limits `cri` asks for, checked against `host`.
pub fn check(
    cri: &LinuxContainerResources,
    host: &Host,
    mode: Mode,
) -> Result<Resources, ResourceError> {
    let positive = |v: i64| (v > 0).then_some(v);
    if cri.cpu_shares < 0 {
        return Err(invalid("cpu_shares", "must not be negative"));
    }
    // The kernel takes periods of 1 ms to 1 s and quotas of at least 1 ms.
    if !matches!(cri.cpu_period, 0 | 1_000..=1_000_000) {
        return Err(invalid(
            "cpu_period",
            format!("{} is outside 1000..=1000000 µs", cri.cpu_period),
        ));
    }
    if !matches!(cri.cpu_quota, 0 | -1 | 1_000..) {
        return Err(invalid(
            "cpu_quota",
            format!(
                "{} is neither -1 (no limit) nor at least 1000 µs",
                cri.cpu_quota
            ),
        ));
    }
    for (field, list) in [
        ("cpuset_cpus", &cri.cpuset_cpus),
        ("cpuset_mems", &cri.cpuset_mems),
    ] {
        if !list.is_empty() && !valid_cpuset(list) {
            return Err(invalid(field, format!("{list:?} is not a cpu list")));
        }
    }
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
    Ok(Resources {
        cpu_shares: positive(cri.cpu_shares).map(|v| v as u64),
        cpu_quota: (cri.cpu_quota != 0).then_some(cri.cpu_quota),
        cpu_period: positive(cri.cpu_period).map(|v| v as u64),
        cpuset_cpus: Some(cri.cpuset_cpus.clone()).filter(|s| !s.is_empty()),
        cpuset_mems: Some(cri.cpuset_mems.clone()).filter(|s| !s.is_empty()),
        memory_limit: positive(limit),
        memory_swap: swap(cri, host)?,
        hugepage_limits: hugepages(cri, host)?,
        unified: unified(cri, host)?,
        pids_limit: None,
        oom_score_adj: match mode {
            Mode::Create => Some(cri.oom_score_adj.clamp(-1000, 1000) as i32),
            Mode::Update => None,
        },
    })
}

/// Memory plus swap. Unset with a memory limit: the limit, so nothing swaps
/// past it (as CRI-O), where the kernel accounts swap.
fn swap(cri: &LinuxContainerResources, host: &Host) -> Result<Option<i64>, ResourceError> {
    let (limit, swap) = (cri.memory_limit_in_bytes, cri.memory_swap_limit_in_bytes);
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
    if swap != 0 {
        if !host.swap {
            return Err(invalid(
                "memory_swap_limit_in_bytes",
                "this host's kernel does not account swap",
            ));
        }
        return Ok(Some(swap));
    }
    Ok((limit > 0 && host.swap).then_some(limit))
}

/// Page size (`2MB`) and limit. The kubelet sends a zero limit for every
/// size the node has; a zero limit the host cannot apply is dropped, as
/// CRI-O drops all of them on a host without the hugetlb controller.
fn hugepages(
    cri: &LinuxContainerResources,
    host: &Host,
) -> Result<Vec<(String, u64)>, ResourceError> {
    let mut out = Vec::new();
    for (i, page) in cri.hugepage_limits.iter().enumerate() {
        let field = format!("hugepage_limits[{i}].page_size");
        let Some(kb) = page_size_kb(&page.page_size) else {
            return Err(invalid(
                field,
                format!("{:?} is not a page size like 2MB", page.page_size),
            ));
        };
        let missing = if !host.hugetlb {
            Some("this host has no hugetlb cgroup controller".to_string())
        } else if !Path::new(&format!("/sys/kernel/mm/hugepages/hugepages-{kb}kB")).exists() {
            Some(format!("this host has no {} huge pages", page.page_size))
        } else {
            None
        };
        match missing {
            Some(_) if page.limit == 0 => {}
            Some(message) => return Err(invalid(field, message)),
            None => out.push((page.page_size.clone(), page.limit)),
        }
    }
    Ok(out)
}

/// cgroup v2 files by name (`memory.high`), only on a v2-only host.
fn unified(
    cri: &LinuxContainerResources,
    host: &Host,
) -> Result<BTreeMap<String, String>, ResourceError> {
    let mut out = BTreeMap::new();
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
        out.insert(key.clone(), value.clone());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2: Host = Host {
        v2: true,
        swap: true,
        hugetlb: false,
    };

    fn field(cri: &LinuxContainerResources, host: &Host, mode: Mode) -> Option<String> {
        check(cri, host, mode).err().map(|e| e.field)
    }

    /// Create and Update once disagreed on each of these: Create dropped a
    /// negative cpu_shares, passed any cpu_period and refused unified and
    /// swap. Now both modes take the same rules.
    #[test]
    fn create_and_update_apply_the_same_rules() {
        let refused = [
            (
                LinuxContainerResources {
                    cpu_shares: -1,
                    ..Default::default()
                },
                "cpu_shares",
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
                    cpu_quota: -7,
                    ..Default::default()
                },
                "cpu_quota",
            ),
            (
                LinuxContainerResources {
                    cpuset_mems: "1-0".into(),
                    ..Default::default()
                },
                "cpuset_mems",
            ),
            (
                LinuxContainerResources {
                    unified: [("cgroup.procs".to_string(), "1".to_string())].into(),
                    ..Default::default()
                },
                "unified[\"cgroup.procs\"]",
            ),
            (
                LinuxContainerResources {
                    hugepage_limits: vec![berth_proto::cri::HugepageLimit {
                        page_size: "2MB".into(),
                        limit: 1 << 21,
                    }],
                    ..Default::default()
                },
                "hugepage_limits[0].page_size",
            ),
        ];
        for (cri, expected) in &refused {
            for mode in [Mode::Create, Mode::Update] {
                assert_eq!(
                    field(cri, &V2, mode).as_deref(),
                    Some(*expected),
                    "{mode:?}"
                );
            }
        }
        let accepted = LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: -1,
            memory_limit_in_bytes: 64 << 20,
            memory_swap_limit_in_bytes: 128 << 20,
            unified: [("memory.high".to_string(), "50M".to_string())].into(),
            oom_score_adj: 500,
            // The kubelet's zero limit for a size this host cannot apply.
            hugepage_limits: vec![berth_proto::cri::HugepageLimit {
                page_size: "1GB".into(),
                limit: 0,
            }],
            ..Default::default()
        };
        let create = check(&accepted, &V2, Mode::Create).unwrap();
        let update = check(&accepted, &V2, Mode::Update).unwrap();
        assert_eq!(create.memory_swap, Some(128 << 20));
        assert_eq!(create.unified["memory.high"], "50M");
        assert_eq!(create.cpu_quota, Some(-1));
        assert!(create.hugepage_limits.is_empty());
        assert_eq!(create.oom_score_adj, Some(500));
        assert_eq!(update.oom_score_adj, None);
        assert_eq!(
            Resources {
                oom_score_adj: None,
                ..create
            },
            update
        );
    }

    #[test]
    fn a_memory_limit_caps_swap_where_the_kernel_accounts_it() {
        let cri = LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        };
        assert_eq!(
            check(&cri, &V2, Mode::Create).unwrap().memory_swap,
            Some(64 << 20)
        );
        let no_swap = Host { swap: false, ..V2 };
        assert_eq!(
            check(&cri, &no_swap, Mode::Create).unwrap().memory_swap,
            None
        );
        let asks_swap = LinuxContainerResources {
            memory_swap_limit_in_bytes: -1,
            ..cri
        };
        assert_eq!(
            field(&asks_swap, &no_swap, Mode::Create).as_deref(),
            Some("memory_swap_limit_in_bytes")
        );
    }

    #[test]
    fn page_sizes() {
        assert_eq!(page_size_kb("2MB"), Some(2048));
        assert_eq!(page_size_kb("1GB"), Some(1 << 20));
        assert_eq!(page_size_kb("2M"), None);
    }
}
