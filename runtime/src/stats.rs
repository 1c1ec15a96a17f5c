//! Resource usage read from cgroups (v1, v2 and hybrid hosts) and from a
//! container's writable layer, with plain file reads only: listing the stats
//! of hundreds of containers forks nothing.
//!
//! On a hybrid host a controller mounted as a v1 hierarchy is read there
//! (the unified mount then has no controllers); otherwise the v2 files are.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use berth_host::cgroup::Layout;

/// Reads cgroup usage where this host's layout puts each controller.
#[derive(Debug, Clone, Default)]
pub struct Cgroups {
    layout: Layout,
}

impl Cgroups {
    pub fn new(layout: Layout) -> Cgroups {
        Cgroups { layout }
    }

    /// The usage of the cgroup at `relative` (to each hierarchy's root);
    /// `None` when it does not exist (never started, or already gone).
    pub fn read(&self, relative: &Path) -> Option<CgroupStats> {
        let relative = relative.strip_prefix("/").unwrap_or(relative);
        let cpu_ns = self.cpu(relative);
        let memory = self.memory(relative);
        if cpu_ns.is_none() && memory.is_none() {
            return None;
        }
        Some(CgroupStats {
            cpu_ns: cpu_ns.unwrap_or_default(),
            memory: memory.unwrap_or_default(),
            processes: self.processes(relative).unwrap_or_default(),
        })
    }

    fn cpu(&self, relative: &Path) -> Option<u64> {
        if let Some(mount) = self.layout.v1("cpuacct") {
            return read_u64(&mount.join(relative).join("cpuacct.usage"));
        }
        let stat = read_keyed(&self.layout.unified()?.join(relative).join("cpu.stat"))?;
        Some(stat.get("usage_usec")?.saturating_mul(1000))
    }

    fn memory(&self, relative: &Path) -> Option<Memory> {
        if let Some(mount) = self.layout.v1("memory") {
            let dir = mount.join(relative);
            let usage = read_u64(&dir.join("memory.usage_in_bytes"))?;
            let stat = read_keyed(&dir.join("memory.stat"))?;
            // No limit reads as a page-rounded i64::MAX.
            let limit = read_u64(&dir.join("memory.limit_in_bytes")).filter(|l| *l < 1 << 62);
            let get = |key: &str| stat.get(key).copied().unwrap_or_default();
            return Some(Memory::new(
                usage,
                limit,
                get("total_inactive_file"),
                get("total_rss"),
                get("total_pgfault"),
                get("total_pgmajfault"),
            ));
        }
        let dir = self.layout.unified()?.join(relative);
        let usage = read_u64(&dir.join("memory.current"))?;
        let stat = read_keyed(&dir.join("memory.stat"))?;
        // "max" does not parse: unlimited.
        let limit = read_u64(&dir.join("memory.max"));
        let get = |key: &str| stat.get(key).copied().unwrap_or_default();
        Some(Memory::new(
            usage,
            limit,
            get("inactive_file"),
            get("anon"),
            get("pgfault"),
            get("pgmajfault"),
        ))
    }

    fn processes(&self, relative: &Path) -> Option<u64> {
        let pids_dir = self.layout.dir("pids", relative)?;
        if let Some(count) = read_u64(&pids_dir.join("pids.current")) {
            return Some(count);
        }
        // No pids controller: count the processes of any hierarchy.
        let mount = self
            .layout
            .v1("memory")
            .or(self.layout.v1("cpuacct"))
            .or(self.layout.unified())?;
        let procs = std::fs::read_to_string(mount.join(relative).join("cgroup.procs")).ok()?;
        Some(procs.lines().filter(|l| !l.is_empty()).count() as u64)
    }
}

/// One cgroup's usage (or several summed: a pod's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// Cumulative CPU time in nanoseconds.
    pub cpu_ns: u64,
    pub memory: Memory,
    pub processes: u64,
}

impl std::ops::AddAssign for CgroupStats {
    fn add_assign(&mut self, other: CgroupStats) {
        self.cpu_ns += other.cpu_ns;
        self.processes += other.processes;
        let (a, b) = (&mut self.memory, other.memory);
        a.usage += b.usage;
        a.working_set += b.working_set;
        a.rss += b.rss;
        a.page_faults += b.page_faults;
        a.major_page_faults += b.major_page_faults;
        a.available = match (a.available, b.available) {
            (Some(x), Some(y)) => Some(x + y),
            _ => None,
        };
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    pub usage: u64,
    /// Usage minus inactive file pages, as cAdvisor and the kubelet count it.
    pub working_set: u64,
    pub rss: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    /// Limit minus usage; `None` without a limit.
    pub available: Option<u64>,
}

impl Memory {
    fn new(
        usage: u64,
        limit: Option<u64>,
        inactive_file: u64,
        rss: u64,
        page_faults: u64,
        major_page_faults: u64,
    ) -> Memory {
        Memory {
            usage,
            working_set: usage.saturating_sub(inactive_file),
            rss,
            page_faults,
            major_page_faults,
            available: limit.map(|l| l.saturating_sub(usage)),
        }
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A `key value` per line file (`memory.stat`, `cpu.stat`).
fn read_keyed(path: &Path) -> Option<HashMap<String, u64>> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(
        text.lines()
            .filter_map(|line| {
                let (key, value) = line.split_once(' ')?;
                Some((key.to_string(), value.trim().parse().ok()?))
            })
            .collect(),
    )
}

/// Bytes (allocated blocks) and inodes below `dir`, each hard-linked inode
/// counted once, symlinks not followed; a missing dir is empty.
pub fn disk_usage(dir: &Path) -> (u64, u64) {
    let mut seen = HashSet::new();
    let (mut bytes, mut inodes) = (0, 0);
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        bytes += meta.blocks() * 512;
        inodes += 1;
        if meta.is_dir()
            && let Ok(entries) = std::fs::read_dir(&path)
        {
            pending.extend(entries.flatten().map(|e| e.path()));
        }
    }
    (bytes, inodes)
}

/// The previous CPU sample of each container or pod, kept in memory so a
/// sample can report the cores used since the one before it.
#[derive(Default)]
pub struct CpuSampler {
    last: Mutex<HashMap<String, (i64, u64)>>,
}

impl CpuSampler {
    /// Records `usage_ns` at `at_ns` for `key` and returns the nano-cores
    /// used since the previous sample (0 for the first one).
    pub fn nano_cores(&self, key: &str, at_ns: i64, usage_ns: u64) -> u64 {
        let mut last = berth_host::sync::lock(&self.last);
        let previous = last.insert(key.to_string(), (at_ns, usage_ns));
        match previous {
            Some((then, used)) if at_ns > then && usage_ns >= used => {
                ((usage_ns - used) as u128 * 1_000_000_000 / (at_ns - then) as u128) as u64
            }
            _ => 0,
        }
    }

    /// Forgets the samples of keys no longer present.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut last = berth_host::sync::lock(&self.last);
        last.retain(|key, _| keep(key));
    }
}

/// What berthd keeps between stats calls: the cgroup layout, detected once,
/// and the previous CPU sample of each container and pod.
#[derive(Default)]
pub struct Stats {
    cgroups: Cgroups,
    containers: CpuSampler,
    pods: CpuSampler,
}

/// One reading of a cgroup (or a pod's cgroups summed).
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Nanoseconds since the epoch.
    pub at: i64,
    /// `None` when no cgroup exists (not started, or gone).
    pub usage: Option<CgroupStats>,
    /// Cores used since the previous sample, in billionths.
    pub nano_cores: u64,
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            cgroups: Cgroups::new(Layout::host().clone()),
            ..Stats::default()
        }
    }

    /// The container `id` whose cgroup is `cgroup` (relative to the roots).
    pub fn container(&self, id: &str, cgroup: &Path) -> Sample {
        let at = berth_host::now_nanos();
        let usage = self.cgroups.read(cgroup);
        let nano_cores = usage.map_or(0, |u| self.containers.nano_cores(id, at, u.cpu_ns));
        Sample {
            at,
            usage,
            nano_cores,
        }
    }

    /// The pod `id`, its usage the sum of `cgroups` (its infra process's and
    /// its containers'): a pod's cgroup parent may be shared with others.
    pub fn pod(&self, id: &str, cgroups: &[PathBuf]) -> Sample {
        let at = berth_host::now_nanos();
        let usage = cgroups
            .iter()
            .filter_map(|cgroup| self.cgroups.read(cgroup))
            .reduce(|mut sum, one| {
                sum += one;
                sum
            });
        let nano_cores = usage.map_or(0, |u| self.pods.nano_cores(id, at, u.cpu_ns));
        Sample {
            at,
            usage,
            nano_cores,
        }
    }

    /// Forgets the samples of containers and pods that no longer exist.
    pub fn retain(&self, container: impl Fn(&str) -> bool, pod: impl Fn(&str) -> bool) {
        self.containers.retain(container);
        self.pods.retain(pod);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_v2(files: &[(&str, &str)]) -> (tempfile::TempDir, Cgroups) {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("pod/c1");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let mountinfo = format!(
            "1 1 0:1 / {} rw - cgroup2 cgroup2 rw\n",
            root.path().display()
        );
        let layout = Layout::from_mounts(&berth_host::mountinfo::parse(&mountinfo));
        (root, Cgroups::new(layout))
    }

    #[test]
    fn v2_files_give_working_set_and_available() {
        let (_root, layout) = fake_v2(&[
            ("cpu.stat", "usage_usec 1500\nuser_usec 1000\n"),
            ("memory.current", "1000000\n"),
            ("memory.max", "4000000\n"),
            (
                "memory.stat",
                "anon 600000\nfile 400000\ninactive_file 300000\npgfault 42\npgmajfault 2\n",
            ),
            ("pids.current", "3\n"),
        ]);
        let stats = layout.read(Path::new("/pod/c1")).unwrap();
        assert_eq!(stats.cpu_ns, 1_500_000);
        assert_eq!(stats.memory.working_set, 700_000);
        assert_eq!(stats.memory.rss, 600_000);
        assert_eq!(stats.memory.page_faults, 42);
        assert_eq!(stats.memory.major_page_faults, 2);
        assert_eq!(stats.memory.available, Some(3_000_000));
        assert_eq!(stats.processes, 3);
    }

    #[test]
    fn v2_without_limit_has_no_available_and_missing_cgroup_is_none() {
        let (_root, layout) = fake_v2(&[
            ("memory.current", "10\n"),
            ("memory.max", "max\n"),
            ("memory.stat", "inactive_file 20\n"),
        ]);
        let stats = layout.read(Path::new("pod/c1")).unwrap();
        assert_eq!(stats.memory.available, None);
        assert_eq!(stats.memory.working_set, 0);
        assert!(layout.read(Path::new("pod/gone")).is_none());
    }

    #[test]
    fn sampler_reports_cores_since_the_previous_sample() {
        let sampler = CpuSampler::default();
        assert_eq!(sampler.nano_cores("c", 1_000_000_000, 0), 0);
        // Half a second of CPU over one second: half a core.
        assert_eq!(
            sampler.nano_cores("c", 2_000_000_000, 500_000_000),
            500_000_000
        );
        sampler.retain(|_| false);
        assert_eq!(sampler.nano_cores("c", 3_000_000_000, 600_000_000), 0);
    }

    #[test]
    fn disk_usage_counts_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![1u8; 8192]).unwrap();
        std::fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        std::os::unix::fs::symlink("/", dir.path().join("root")).unwrap();
        let (bytes, inodes) = disk_usage(dir.path());
        // The dir, one file and the symlink.
        assert_eq!(inodes, 3);
        assert!(bytes >= 8192, "{bytes}");
        assert_eq!(disk_usage(&dir.path().join("missing")), (0, 0));
    }
}
