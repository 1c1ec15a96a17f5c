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
#[derive(Debug, Clone)]
pub struct Cgroups {
    layout: Layout,
    /// Where the processes of a cgroup are looked up (`/proc`; a fake
    /// tree in tests).
    proc: PathBuf,
}

impl Default for Cgroups {
    fn default() -> Cgroups {
        Cgroups::new(Layout::default())
    }
}

impl Cgroups {
    pub fn new(layout: Layout) -> Cgroups {
        Cgroups {
            layout,
            proc: PathBuf::from("/proc"),
        }
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
            cpu_split: self.cpu_split(relative),
            memory: memory.unwrap_or_default(),
            processes: self.processes(relative).unwrap_or_default(),
            hugetlb: self.hugetlb(relative),
            io: self.io(relative),
            pressure: self.pressure(relative),
            cfs: self.cfs(relative),
        })
    }

    /// What only metrics report: the cgroup's usage, its limits and its
    /// processes' tasks and descriptors; `None` without the cgroup.
    /// `init` is the container's first process, whose limits cAdvisor
    /// reports.
    pub fn detail(&self, relative: &Path, init: i32) -> Option<Detail> {
        let relative = relative.strip_prefix("/").unwrap_or(relative);
        Some(Detail {
            usage: self.read(relative)?,
            spec: self.spec(relative),
            tasks: self.tasks(relative, init),
        })
    }

    /// CFS bandwidth control: v1 `cpu.stat` of the cpu hierarchy
    /// (`throttled_time` in ns), v2 `cpu.stat` (`throttled_usec`; the
    /// keys exist only where the cpu controller is enabled).
    fn cfs(&self, relative: &Path) -> Option<Cfs> {
        if let Some(mount) = self.layout.v1("cpu") {
            let stat = read_keyed(&mount.join(relative).join("cpu.stat"))?;
            return Some(Cfs {
                periods: *stat.get("nr_periods")?,
                throttled_periods: *stat.get("nr_throttled")?,
                throttled_ns: *stat.get("throttled_time")?,
            });
        }
        let stat = read_keyed(&self.layout.unified()?.join(relative).join("cpu.stat"))?;
        Some(Cfs {
            periods: *stat.get("nr_periods")?,
            throttled_periods: *stat.get("nr_throttled")?,
            throttled_ns: stat.get("throttled_usec")?.saturating_mul(1000),
        })
    }

    /// The limits set on the cgroup, as cAdvisor reads them into a
    /// container's spec.
    fn spec(&self, relative: &Path) -> Spec {
        let mut spec = Spec::default();
        if let Some(mount) = self.layout.v1("cpu") {
            let dir = mount.join(relative);
            spec.cpu_period_us = read_u64(&dir.join("cpu.cfs_period_us"));
            // -1 (no quota) does not parse as a u64.
            spec.cpu_quota_us = read_u64(&dir.join("cpu.cfs_quota_us"));
            spec.cpu_shares = read_u64(&dir.join("cpu.shares"));
        } else if let Some(dir) = self.layout.unified().map(|m| m.join(relative)) {
            if let Ok(max) = std::fs::read_to_string(dir.join("cpu.max"))
                && let Some((quota, period)) = max.trim().split_once(' ')
            {
                spec.cpu_quota_us = quota.parse().ok();
                spec.cpu_period_us = period.parse().ok();
            }
            spec.cpu_shares =
                read_u64(&dir.join("cpu.weight")).and_then(berth_host::cgroup::weight_to_shares);
        }
        if let Some(mount) = self.layout.v1("memory") {
            let dir = mount.join(relative);
            let limit = |file: &str| read_u64(&dir.join(file)).map(unlimited_as_zero);
            spec.memory_limit = limit("memory.limit_in_bytes");
            spec.memory_reservation = limit("memory.soft_limit_in_bytes");
            spec.memory_swap_limit = limit("memory.memsw.limit_in_bytes");
        } else if let Some(dir) = self.layout.unified().map(|m| m.join(relative)) {
            let limit = |file: &str| read_limit(&dir.join(file));
            spec.memory_limit = limit("memory.max");
            spec.memory_reservation = limit("memory.min");
            spec.memory_swap_limit = limit("memory.swap.max");
        }
        spec
    }

    /// The cgroup's processes (`cgroup.procs`), then each one's threads
    /// (`/proc/<pid>/task`) and descriptors (`/proc/<pid>/fd`, sockets
    /// being links to `socket:[inode]`), as cAdvisor counts them. A process
    /// that exits meanwhile counts as a process only. `init`'s soft
    /// open files limit is read while it is one of them (a PID of a gone
    /// container may name another process by now).
    fn tasks(&self, relative: &Path, init: i32) -> Option<Tasks> {
        let pids = self.procs(relative)?;
        let init = init.to_string();
        let open_files_soft = pids
            .contains(&init)
            .then(|| std::fs::read_to_string(self.proc.join(&init).join("limits")).ok())
            .flatten()
            .and_then(|text| soft_open_files(&text));
        let mut tasks = Tasks {
            processes: pids.len() as u64,
            threads_max: self
                .layout
                .dir("pids", relative)
                .and_then(|dir| read_limit(&dir.join("pids.max"))),
            open_files_soft,
            ..Tasks::default()
        };
        for pid in &pids {
            let dir = self.proc.join(pid);
            if let Ok(threads) = std::fs::read_dir(dir.join("task")) {
                tasks.threads += threads.count() as u64;
            }
            let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                tasks.file_descriptors += 1;
                if std::fs::read_link(fd.path()).is_ok_and(|target| {
                    target
                        .as_os_str()
                        .as_encoded_bytes()
                        .starts_with(b"socket:")
                }) {
                    tasks.sockets += 1;
                }
            }
        }
        Some(tasks)
    }

    /// The PIDs in the cgroup's `cgroup.procs`, from any hierarchy that
    /// has the cgroup.
    fn procs(&self, relative: &Path) -> Option<Vec<String>> {
        let mount = self
            .layout
            .v1("pids")
            .or(self.layout.v1("memory"))
            .or(self.layout.v1("cpuacct"))
            .or(self.layout.unified())?;
        let procs = std::fs::read_to_string(mount.join(relative).join("cgroup.procs")).ok()?;
        Some(
            procs
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect(),
        )
    }

    /// Pressure stall information: v2's `cpu.pressure`, `memory.pressure`
    /// and `io.pressure`, where the kernel keeps it (CONFIG_PSI, not
    /// disabled with `psi=0`: the files are then absent or refuse reads).
    fn pressure(&self, relative: &Path) -> Pressures {
        let Some(dir) = self.layout.unified().map(|root| root.join(relative)) else {
            return Pressures::default();
        };
        let read = |file: &str| {
            std::fs::read_to_string(dir.join(file))
                .ok()
                .and_then(|text| parse_pressure(&text))
        };
        Pressures {
            cpu: read("cpu.pressure"),
            memory: read("memory.pressure"),
            io: read("io.pressure"),
        }
    }

    /// User and system CPU time: v2 `cpu.stat`, v1 `cpuacct.stat` (in
    /// clock ticks, `USER_HZ`, which Linux fixes at 100 for user space).
    fn cpu_split(&self, relative: &Path) -> Option<CpuSplit> {
        if let Some(mount) = self.layout.v1("cpuacct") {
            let stat = read_keyed(&mount.join(relative).join("cpuacct.stat"))?;
            const NS_PER_TICK: u64 = 1_000_000_000 / 100;
            return Some(CpuSplit {
                user_ns: stat.get("user")?.saturating_mul(NS_PER_TICK),
                system_ns: stat.get("system")?.saturating_mul(NS_PER_TICK),
            });
        }
        let stat = read_keyed(&self.layout.unified()?.join(relative).join("cpu.stat"))?;
        Some(CpuSplit {
            user_ns: stat.get("user_usec")?.saturating_mul(1000),
            system_ns: stat.get("system_usec")?.saturating_mul(1000),
        })
    }

    /// Huge page usage by page size (`2MB`, `1GB`, as the files name them):
    /// v1 `hugetlb.<size>.usage_in_bytes` and `.max_usage_in_bytes`, v2
    /// `hugetlb.<size>.current` (v2 keeps no peak).
    fn hugetlb(&self, relative: &Path) -> Vec<Hugetlb> {
        let Some(dir) = self.layout.dir("hugetlb", relative) else {
            return Vec::new();
        };
        let v1 = self.layout.v1("hugetlb").is_some();
        let suffix = if v1 { ".usage_in_bytes" } else { ".current" };
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut out: Vec<Hugetlb> = entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let size = name.strip_prefix("hugetlb.")?.strip_suffix(suffix)?;
                // v2's `hugetlb.<size>.rsvd.current` is reservations, not use.
                if size.contains('.') {
                    return None;
                }
                Some(Hugetlb {
                    page_size: size.to_string(),
                    usage: read_u64(&entry.path())?,
                    max_usage: v1
                        .then(|| read_u64(&dir.join(format!("hugetlb.{size}.max_usage_in_bytes"))))
                        .flatten(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.page_size.cmp(&b.page_size));
        out
    }

    /// Block I/O by device: v2 `io.stat`, v1 the blkio throttle files
    /// (which count every I/O, whatever the scheduler).
    fn io(&self, relative: &Path) -> Vec<BlockIo> {
        if let Some(mount) = self.layout.v1("blkio") {
            let dir = mount.join(relative);
            let bytes = read_blkio(&dir.join("blkio.throttle.io_service_bytes_recursive"));
            let ops = read_blkio(&dir.join("blkio.throttle.io_serviced_recursive"));
            let mut out: Vec<BlockIo> = Vec::new();
            for (device, (read, write)) in bytes {
                let (reads, writes) = ops.get(&device).copied().unwrap_or_default();
                out.push(BlockIo {
                    major: device.0,
                    minor: device.1,
                    read_bytes: read,
                    write_bytes: write,
                    reads,
                    writes,
                });
            }
            return out;
        }
        let Some(mount) = self.layout.unified() else {
            return Vec::new();
        };
        std::fs::read_to_string(mount.join(relative).join("io.stat"))
            .map(|text| parse_io_stat(&text))
            .unwrap_or_default()
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
            let mut memory = Memory::new(
                usage,
                limit,
                get("total_inactive_file"),
                get("total_rss"),
                get("total_pgfault"),
                get("total_pgmajfault"),
            );
            memory.cache = get("total_cache");
            memory.mapped_file = stat.get("total_mapped_file").copied();
            // The cgroup's own faults; `total_*` count its descendants too.
            memory.local_page_faults = get("pgfault");
            memory.local_major_page_faults = get("pgmajfault");
            memory.kernel = read_u64(&dir.join("memory.kmem.usage_in_bytes"));
            memory.failcnt = read_u64(&dir.join("memory.failcnt"));
            // `oom_kill`: kernels 4.13 and later.
            memory.oom_kills = read_keyed(&dir.join("memory.oom_control"))
                .and_then(|control| control.get("oom_kill").copied());
            memory.peak = read_u64(&dir.join("memory.max_usage_in_bytes"));
            // memsw counts memory and swap together (when swap is accounted).
            memory.swap = read_u64(&dir.join("memory.memsw.usage_in_bytes")).map(|both| Swap {
                usage: both.saturating_sub(usage),
                limit: read_u64(&dir.join("memory.memsw.limit_in_bytes"))
                    .filter(|l| *l < 1 << 62)
                    .zip(limit)
                    .map(|(both, memory)| both.saturating_sub(memory)),
            });
            return Some(memory);
        }
        let dir = self.layout.unified()?.join(relative);
        let usage = read_u64(&dir.join("memory.current"))?;
        let stat = read_keyed(&dir.join("memory.stat"))?;
        // "max" does not parse: unlimited.
        let limit = read_u64(&dir.join("memory.max"));
        let get = |key: &str| stat.get(key).copied().unwrap_or_default();
        let mut memory = Memory::new(
            usage,
            limit,
            get("inactive_file"),
            get("anon"),
            get("pgfault"),
            get("pgmajfault"),
        );
        memory.cache = get("file");
        memory.mapped_file = stat.get("file_mapped").copied();
        // `kernel`: kernels 5.18 and later.
        memory.kernel = stat.get("kernel").copied();
        // v2 keeps hierarchical counters only; a container's cgroup has no
        // children, so its own faults are these.
        memory.local_page_faults = memory.page_faults;
        memory.local_major_page_faults = memory.major_page_faults;
        // `max`: how often usage was about to pass memory.max, v2's failcnt.
        let events = read_keyed(&dir.join("memory.events"));
        memory.failcnt = events.as_ref().and_then(|e| e.get("max").copied());
        memory.oom_kills = events.as_ref().and_then(|e| e.get("oom_kill").copied());
        // memory.peak: kernels 5.19 and later.
        memory.peak = read_u64(&dir.join("memory.peak"));
        memory.swap = read_u64(&dir.join("memory.swap.current")).map(|usage| Swap {
            usage,
            limit: read_u64(&dir.join("memory.swap.max")),
        });
        Some(memory)
    }

    fn processes(&self, relative: &Path) -> Option<u64> {
        let pids_dir = self.layout.dir("pids", relative)?;
        if let Some(count) = read_u64(&pids_dir.join("pids.current")) {
            return Some(count);
        }
        // No pids controller: count the processes of any hierarchy.
        Some(self.procs(relative)?.len() as u64)
    }
}

/// One cgroup's usage (or several summed: a pod's).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CgroupStats {
    /// Cumulative CPU time in nanoseconds.
    pub cpu_ns: u64,
    /// `None` where the files do not say.
    pub cpu_split: Option<CpuSplit>,
    pub memory: Memory,
    pub processes: u64,
    /// By page size; empty without the hugetlb controller.
    pub hugetlb: Vec<Hugetlb>,
    /// By device; empty without the io (v1 blkio) controller or any I/O.
    pub io: Vec<BlockIo>,
    /// Pressure stall information (cgroup v2 with PSI only).
    pub pressure: Pressures,
    /// CFS bandwidth control; `None` where the files do not say.
    pub cfs: Option<Cfs>,
}

/// CFS bandwidth control counters (`cpu.stat`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cfs {
    /// Enforcement periods that elapsed while the cgroup ran.
    pub periods: u64,
    /// Periods in which the cgroup used up its quota.
    pub throttled_periods: u64,
    /// Total time the cgroup was throttled, in nanoseconds.
    pub throttled_ns: u64,
}

/// A container's cgroup as metrics see it: usage, limits, processes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Detail {
    pub usage: CgroupStats,
    pub spec: Spec,
    /// `None` when `cgroup.procs` cannot be read.
    pub tasks: Option<Tasks>,
}

/// The limits of a cgroup, as cAdvisor reports a container's spec: each
/// `None` where this host's files do not say. A memory limit of 0 means
/// unlimited (`max`, or v1's page-rounded `i64::MAX`), as cAdvisor says it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spec {
    /// v1 `cpu.cfs_period_us`, v2 `cpu.max`'s period.
    pub cpu_period_us: Option<u64>,
    /// `None` without a quota (v1 -1, v2 `max`).
    pub cpu_quota_us: Option<u64>,
    /// v1 `cpu.shares`; v2 `cpu.weight` converted back to shares.
    pub cpu_shares: Option<u64>,
    /// v1 `memory.limit_in_bytes`, v2 `memory.max`.
    pub memory_limit: Option<u64>,
    /// v1 `memory.soft_limit_in_bytes`, v2 `memory.min`.
    pub memory_reservation: Option<u64>,
    /// v1 `memory.memsw.limit_in_bytes` (memory and swap together), v2
    /// `memory.swap.max` (swap alone), as cAdvisor reads them.
    pub memory_swap_limit: Option<u64>,
}

/// A cgroup's processes and what they hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tasks {
    pub processes: u64,
    pub threads: u64,
    /// `pids.max` (0: unlimited, as cAdvisor says it); `None` without the
    /// pids controller.
    pub threads_max: Option<u64>,
    pub file_descriptors: u64,
    pub sockets: u64,
    /// The first process's soft `RLIMIT_NOFILE`; `None` when it is gone
    /// or unlimited.
    pub open_files_soft: Option<u64>,
}

/// The soft limit of `/proc/<pid>/limits`' `Max open files` line.
fn soft_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// v1 reports "no limit" as a page-rounded `i64::MAX`.
fn unlimited_as_zero(limit: u64) -> u64 {
    if limit >= 1 << 62 { 0 } else { limit }
}

/// A v2 limit file: a number, or `max` (0, unlimited).
fn read_limit(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    match text.trim() {
        "max" => Some(0),
        value => value.parse().ok().map(unlimited_as_zero),
    }
}

/// The PSI of a cgroup by resource; `None` where the kernel keeps none.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pressures {
    pub cpu: Option<Pressure>,
    pub memory: Option<Pressure>,
    pub io: Option<Pressure>,
}

/// One resource's `some` and `full` lines (`full` of CPU: kernels 5.13+).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pressure {
    pub some: Stall,
    pub full: Option<Stall>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stall {
    /// Cumulative stall time in microseconds, as the kernel counts it.
    pub total_us: u64,
    /// Percent of the last 10, 60 and 300 seconds.
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
}

/// A `*.pressure` file: `some avg10=0.00 avg60=0.00 avg300=0.00 total=0`
/// and the same for `full`.
fn parse_pressure(text: &str) -> Option<Pressure> {
    let mut some = None;
    let mut full = None;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let kind = fields.next()?;
        let mut stall = Stall::default();
        for field in fields {
            let (key, value) = field.split_once('=')?;
            match key {
                "avg10" => stall.avg10 = value.parse().ok()?,
                "avg60" => stall.avg60 = value.parse().ok()?,
                "avg300" => stall.avg300 = value.parse().ok()?,
                "total" => stall.total_us = value.parse().ok()?,
                _ => {}
            }
        }
        match kind {
            "some" => some = Some(stall),
            "full" => full = Some(stall),
            _ => {}
        }
    }
    Some(Pressure { some: some?, full })
}

/// Sums (a pod's cgroups). A sum of peaks is no peak, nor one of stall
/// averages a pressure: both are dropped.
impl std::ops::AddAssign for CgroupStats {
    fn add_assign(&mut self, other: CgroupStats) {
        self.pressure = Pressures::default();
        // Periods of several cgroups overlap: their sum counts nothing.
        self.cfs = None;
        self.cpu_ns += other.cpu_ns;
        self.cpu_split = match (self.cpu_split, other.cpu_split) {
            (Some(a), Some(b)) => Some(CpuSplit {
                user_ns: a.user_ns + b.user_ns,
                system_ns: a.system_ns + b.system_ns,
            }),
            _ => None,
        };
        self.processes += other.processes;
        let (a, b) = (&mut self.memory, other.memory);
        a.usage += b.usage;
        a.working_set += b.working_set;
        a.rss += b.rss;
        a.cache += b.cache;
        a.page_faults += b.page_faults;
        a.major_page_faults += b.major_page_faults;
        let sum = |x: Option<u64>, y: Option<u64>| x.zip(y).map(|(x, y)| x + y);
        a.available = sum(a.available, b.available);
        a.peak = None;
        a.local_page_faults += b.local_page_faults;
        a.local_major_page_faults += b.local_major_page_faults;
        a.mapped_file = sum(a.mapped_file, b.mapped_file);
        a.kernel = sum(a.kernel, b.kernel);
        a.failcnt = sum(a.failcnt, b.failcnt);
        a.oom_kills = sum(a.oom_kills, b.oom_kills);
        a.swap = match (a.swap, b.swap) {
            (Some(x), Some(y)) => Some(Swap {
                usage: x.usage + y.usage,
                limit: x.limit.zip(y.limit).map(|(x, y)| x + y),
            }),
            (x, y) => x.or(y),
        };
        for page in other.hugetlb {
            match self
                .hugetlb
                .iter_mut()
                .find(|h| h.page_size == page.page_size)
            {
                Some(mine) => {
                    mine.usage += page.usage;
                    mine.max_usage = None;
                }
                None => self.hugetlb.push(Hugetlb {
                    max_usage: None,
                    ..page
                }),
            }
        }
        for device in other.io {
            match self
                .io
                .iter_mut()
                .find(|d| (d.major, d.minor) == (device.major, device.minor))
            {
                Some(mine) => {
                    mine.read_bytes += device.read_bytes;
                    mine.write_bytes += device.write_bytes;
                    mine.reads += device.reads;
                    mine.writes += device.writes;
                }
                None => self.io.push(device),
            }
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuSplit {
    pub user_ns: u64,
    pub system_ns: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swap {
    pub usage: u64,
    /// `None`: no swap limit.
    pub limit: Option<u64>,
}

impl Swap {
    /// What is left under the limit; `None` without one.
    pub fn available(&self) -> Option<u64> {
        self.limit.map(|l| l.saturating_sub(self.usage))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hugetlb {
    /// As the cgroup files name it: `2MB`, `1GB`.
    pub page_size: String,
    pub usage: u64,
    /// The peak (v1 only).
    pub max_usage: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockIo {
    pub major: u64,
    pub minor: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub reads: u64,
    pub writes: u64,
}

impl BlockIo {
    /// The device's `/dev` name from sysfs (`/dev/vda`), else `major:minor`.
    pub fn device_name(&self) -> String {
        let uevent = format!("/sys/dev/block/{}:{}/uevent", self.major, self.minor);
        std::fs::read_to_string(uevent)
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("DEVNAME=").map(|n| format!("/dev/{n}")))
            })
            .unwrap_or_else(|| format!("{}:{}", self.major, self.minor))
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    pub usage: u64,
    /// Usage minus inactive file pages, as cAdvisor and the kubelet count it.
    pub working_set: u64,
    pub rss: u64,
    /// Page cache (v2 `file`, v1 `total_cache`).
    pub cache: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    /// Limit minus usage; `None` without a limit.
    pub available: Option<u64>,
    /// The highest usage seen (v2 `memory.peak`, v1 `max_usage_in_bytes`).
    pub peak: Option<u64>,
    /// `None` where swap is not accounted.
    pub swap: Option<Swap>,
    /// Page cache mapped by processes (v2 `file_mapped`, v1
    /// `total_mapped_file`).
    pub mapped_file: Option<u64>,
    /// Kernel memory (v2 `memory.stat` `kernel`, v1
    /// `memory.kmem.usage_in_bytes`).
    pub kernel: Option<u64>,
    /// Times usage hit the limit (v1 `memory.failcnt`, v2 `memory.events`
    /// `max`).
    pub failcnt: Option<u64>,
    /// Processes the OOM killer killed (v2 `memory.events`, v1
    /// `memory.oom_control` `oom_kill`).
    pub oom_kills: Option<u64>,
    /// Page faults of the cgroup alone, without its descendants'.
    pub local_page_faults: u64,
    pub local_major_page_faults: u64,
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
            ..Memory::default()
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

/// `io.stat`: `MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. dbytes=..
/// dios=..` a line.
fn parse_io_stat(text: &str) -> Vec<BlockIo> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (major, minor) = fields.next()?.split_once(':')?;
            let mut device = BlockIo {
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                ..BlockIo::default()
            };
            for field in fields {
                let Some((key, value)) = field.split_once('=') else {
                    continue;
                };
                let value = value.parse().unwrap_or_default();
                match key {
                    "rbytes" => device.read_bytes = value,
                    "wbytes" => device.write_bytes = value,
                    "rios" => device.reads = value,
                    "wios" => device.writes = value,
                    _ => {}
                }
            }
            Some(device)
        })
        .collect()
}

/// A v1 blkio file: `MAJ:MIN Read|Write|Sync|Async|Discard|Total N` lines
/// and a `Total N` one; the Read and Write counts by device.
fn read_blkio(path: &Path) -> std::collections::BTreeMap<(u64, u64), (u64, u64)> {
    let mut out = std::collections::BTreeMap::new();
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(device), Some(op), Some(value)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let Some((major, minor)) = device.split_once(':') else {
            continue;
        };
        let (Ok(major), Ok(minor), Ok(value)) =
            (major.parse(), minor.parse(), value.parse::<u64>())
        else {
            continue;
        };
        let entry: &mut (u64, u64) = out.entry((major, minor)).or_default();
        match op {
            "Read" => entry.0 += value,
            "Write" => entry.1 += value,
            _ => {}
        }
    }
    out
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

/// The size of the filesystem holding a directory (`statvfs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capacity {
    /// Its size in bytes: what a container's writable layer can grow to.
    pub bytes: u64,
    pub inodes: u64,
    pub inodes_free: u64,
}

/// The capacity of the filesystem holding `dir`; `None` when it cannot be
/// asked (the dir is gone).
pub fn capacity(dir: &Path) -> Option<Capacity> {
    let fs = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(Capacity {
        bytes: (fs.blocks() as u64).saturating_mul(fs.fragment_size() as u64),
        inodes: fs.files() as u64,
        inodes_free: fs.files_free() as u64,
    })
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
#[derive(Debug, Clone, Default)]
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

    /// The usage, limits and processes of `cgroup` now, outside any CPU
    /// sample (for metrics beyond what a sample reports).
    pub fn detail(&self, cgroup: &Path, init: i32) -> Option<Detail> {
        self.cgroups.detail(cgroup, init)
    }

    /// The container `id` whose cgroup is `cgroup` (relative to the roots).
    pub fn container(&self, id: &str, cgroup: &Path) -> Sample {
        let at = berth_host::now_nanos();
        let usage = self.cgroups.read(cgroup);
        let nano_cores = usage
            .as_ref()
            .map_or(0, |u| self.containers.nano_cores(id, at, u.cpu_ns));
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
        let nano_cores = usage
            .as_ref()
            .map_or(0, |u| self.pods.nano_cores(id, at, u.cpu_ns));
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
    fn pressure_files_parse_with_and_without_full() {
        let (_root, cgroups) = fake_v2(&[
            ("cpu.stat", "usage_usec 5\n"),
            (
                "cpu.pressure",
                "some avg10=1.50 avg60=0.25 avg300=0.00 total=1234\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=7\n",
            ),
            (
                "io.pressure",
                "some avg10=0.00 avg60=0.00 avg300=0.00 total=9\n",
            ),
        ]);
        let usage = cgroups.read(Path::new("pod/c1")).unwrap();
        let cpu = usage.pressure.cpu.unwrap();
        assert_eq!(cpu.some.total_us, 1234);
        assert_eq!((cpu.some.avg10, cpu.some.avg60), (1.5, 0.25));
        assert_eq!(cpu.full.unwrap().total_us, 7);
        let io = usage.pressure.io.unwrap();
        assert_eq!((io.some.total_us, io.full), (9, None));
        // No file (no PSI in this kernel, or a v1 host): none.
        assert_eq!(usage.pressure.memory, None);
        assert_eq!(parse_pressure("garbage"), None);
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
    fn v2_gives_cpu_split_peak_cache_swap_hugetlb_and_io() {
        let (_root, cgroups) = fake_v2(&[
            (
                "cpu.stat",
                "usage_usec 3000\nuser_usec 2000\nsystem_usec 1000\n",
            ),
            ("memory.current", "1000000\n"),
            ("memory.max", "max\n"),
            ("memory.peak", "1500000\n"),
            ("memory.stat", "anon 600000\nfile 400000\n"),
            ("memory.swap.current", "4096\n"),
            ("memory.swap.max", "1048576\n"),
            ("hugetlb.2MB.current", "4194304\n"),
            ("hugetlb.2MB.max", "max\n"),
            ("hugetlb.2MB.rsvd.current", "2097152\n"),
            ("hugetlb.1GB.current", "0\n"),
            (
                "io.stat",
                "254:0 rbytes=8192 wbytes=4096 rios=2 wios=1 dbytes=0 dios=0\n\
                 8:16 rbytes=512 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n",
            ),
        ]);
        let stats = cgroups.read(Path::new("pod/c1")).unwrap();
        assert_eq!(
            stats.cpu_split,
            Some(CpuSplit {
                user_ns: 2_000_000,
                system_ns: 1_000_000
            })
        );
        assert_eq!(stats.memory.peak, Some(1_500_000));
        assert_eq!(stats.memory.cache, 400_000);
        let swap = stats.memory.swap.unwrap();
        assert_eq!((swap.usage, swap.available()), (4096, Some(1_044_480)));
        assert_eq!(
            stats.hugetlb,
            [
                Hugetlb {
                    page_size: "1GB".into(),
                    usage: 0,
                    max_usage: None
                },
                Hugetlb {
                    page_size: "2MB".into(),
                    usage: 4_194_304,
                    max_usage: None
                },
            ]
        );
        assert_eq!(stats.io.len(), 2);
        assert_eq!(
            stats.io[0],
            BlockIo {
                major: 254,
                minor: 0,
                read_bytes: 8192,
                write_bytes: 4096,
                reads: 2,
                writes: 1
            }
        );
        // Unlimited swap has no "available"; no swap files: not accounted.
        let (_root, cgroups) = fake_v2(&[
            ("memory.current", "10\n"),
            ("memory.stat", "file 1\n"),
            ("memory.swap.current", "0\n"),
            ("memory.swap.max", "max\n"),
        ]);
        let stats = cgroups.read(Path::new("pod/c1")).unwrap();
        assert_eq!(stats.memory.swap.unwrap().available(), None);
        assert_eq!(stats.memory.peak, None);
        assert!(stats.hugetlb.is_empty() && stats.io.is_empty());
        let (_root, cgroups) = fake_v2(&[("memory.current", "10\n"), ("memory.stat", "")]);
        assert_eq!(cgroups.read(Path::new("pod/c1")).unwrap().memory.swap, None);
    }

    #[test]
    fn v1_gives_the_same_fields_from_its_files() {
        let root = tempfile::tempdir().unwrap();
        let mut mountinfo = String::new();
        for (i, controller) in ["memory", "cpu,cpuacct", "hugetlb", "blkio", "pids"]
            .iter()
            .enumerate()
        {
            let mount = root.path().join(controller);
            std::fs::create_dir_all(mount.join("pod/c1")).unwrap();
            mountinfo.push_str(&format!(
                "{i} 1 0:{i} / {} rw - cgroup cgroup rw,{controller}\n",
                mount.display()
            ));
        }
        let write = |controller: &str, name: &str, text: &str| {
            std::fs::write(root.path().join(controller).join("pod/c1").join(name), text).unwrap();
        };
        write("cpu,cpuacct", "cpuacct.usage", "5000000000\n");
        write("cpu,cpuacct", "cpuacct.stat", "user 300\nsystem 100\n");
        write("memory", "memory.usage_in_bytes", "1000000\n");
        write("memory", "memory.limit_in_bytes", "2000000\n");
        write("memory", "memory.max_usage_in_bytes", "1800000\n");
        write("memory", "memory.memsw.usage_in_bytes", "1100000\n");
        write("memory", "memory.memsw.limit_in_bytes", "3000000\n");
        write(
            "memory",
            "memory.stat",
            "total_cache 300000\ntotal_rss 500000\ntotal_inactive_file 100000\n",
        );
        write("hugetlb", "hugetlb.2MB.usage_in_bytes", "2097152\n");
        write("hugetlb", "hugetlb.2MB.max_usage_in_bytes", "4194304\n");
        write(
            "hugetlb",
            "hugetlb.2MB.limit_in_bytes",
            "9223372036854771712\n",
        );
        write(
            "blkio",
            "blkio.throttle.io_service_bytes_recursive",
            "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:0 Total 12288\nTotal 12288\n",
        );
        write(
            "blkio",
            "blkio.throttle.io_serviced_recursive",
            "8:0 Read 1\n8:0 Write 2\n8:0 Total 3\nTotal 3\n",
        );
        write("pids", "pids.current", "2\n");
        let layout = Layout::from_mounts(&berth_host::mountinfo::parse(&mountinfo));
        let stats = Cgroups::new(layout).read(Path::new("pod/c1")).unwrap();
        assert_eq!(stats.cpu_ns, 5_000_000_000);
        assert_eq!(
            stats.cpu_split,
            Some(CpuSplit {
                user_ns: 3_000_000_000,
                system_ns: 1_000_000_000
            })
        );
        assert_eq!(stats.memory.peak, Some(1_800_000));
        assert_eq!(stats.memory.cache, 300_000);
        assert_eq!(stats.memory.working_set, 900_000);
        assert_eq!(
            stats.memory.swap,
            Some(Swap {
                usage: 100_000,
                limit: Some(1_000_000)
            })
        );
        assert_eq!(
            stats.hugetlb,
            [Hugetlb {
                page_size: "2MB".into(),
                usage: 2_097_152,
                max_usage: Some(4_194_304)
            }]
        );
        assert_eq!(
            stats.io,
            [BlockIo {
                major: 8,
                minor: 0,
                read_bytes: 4096,
                write_bytes: 8192,
                reads: 1,
                writes: 2
            }]
        );
        assert_eq!(stats.processes, 2);
    }

    /// A fake `/proc` with `pid`'s threads and descriptors: (fd, link).
    fn fake_process(proc: &Path, pid: u32, threads: &[u32], fds: Option<&[(u32, &str)]>) {
        for thread in threads {
            std::fs::create_dir_all(proc.join(format!("{pid}/task/{thread}"))).unwrap();
        }
        for (fd, target) in fds.into_iter().flatten() {
            let dir = proc.join(format!("{pid}/fd"));
            std::fs::create_dir_all(&dir).unwrap();
            std::os::unix::fs::symlink(target, dir.join(fd.to_string())).unwrap();
        }
    }

    #[test]
    fn v2_gives_cfs_memory_events_limits_and_tasks() {
        let (root, cgroups) = fake_v2(&[
            (
                "cpu.stat",
                "usage_usec 9000\nuser_usec 6000\nsystem_usec 3000\nnr_periods 50\n\
                 nr_throttled 20\nthrottled_usec 1500000\n",
            ),
            ("cpu.max", "20000 100000\n"),
            ("cpu.weight", "100\n"),
            ("memory.current", "1000000\n"),
            ("memory.max", "max\n"),
            ("memory.min", "1048576\n"),
            ("memory.swap.max", "max\n"),
            (
                "memory.stat",
                "anon 600000\nfile 400000\nfile_mapped 81920\nkernel 204800\n\
                 pgfault 300\npgmajfault 3\n",
            ),
            (
                "memory.events",
                "low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\noom_group_kill 0\n",
            ),
            ("pids.max", "64\n"),
            ("cgroup.procs", "100\n200\n300\n"),
        ]);
        let proc = root.path().join("proc");
        fake_process(
            &proc,
            100,
            &[100, 101],
            Some(&[
                (0, "/dev/null"),
                (1, "pipe:[77]"),
                (2, "pipe:[77]"),
                (3, "socket:[1234]"),
            ]),
        );
        fake_process(&proc, 200, &[200], Some(&[(0, "socket:[99]")]));
        std::fs::write(
            proc.join("100/limits"),
            "Limit                     Soft Limit           Hard Limit           Units\n\
             Max processes             63707                63707                processes\n\
             Max open files            1024                 524288               files\n",
        )
        .unwrap();
        // 300 exited between cgroup.procs and /proc: a process, no more.
        let cgroups = Cgroups { proc, ..cgroups };
        let detail = cgroups.detail(Path::new("/pod/c1"), 100).unwrap();
        assert_eq!(
            detail.usage.cfs,
            Some(Cfs {
                periods: 50,
                throttled_periods: 20,
                throttled_ns: 1_500_000_000
            })
        );
        let memory = detail.usage.memory;
        assert_eq!(memory.mapped_file, Some(81920));
        assert_eq!(memory.kernel, Some(204_800));
        assert_eq!((memory.failcnt, memory.oom_kills), (Some(7), Some(1)));
        // v2's counters are the hierarchy's, and so the cgroup's own.
        assert_eq!((memory.page_faults, memory.local_page_faults), (300, 300));
        assert_eq!(memory.local_major_page_faults, 3);
        assert_eq!(
            detail.spec,
            Spec {
                cpu_period_us: Some(100_000),
                cpu_quota_us: Some(20_000),
                // cAdvisor's mapping of weight 100 back to shares.
                cpu_shares: Some(2597),
                memory_limit: Some(0),
                memory_reservation: Some(1_048_576),
                memory_swap_limit: Some(0),
            }
        );
        assert_eq!(
            detail.tasks,
            Some(Tasks {
                processes: 3,
                threads: 3,
                threads_max: Some(64),
                file_descriptors: 5,
                sockets: 2,
                open_files_soft: Some(1024),
            })
        );

        // No quota, no cpu controller keys, no memory.events, no pids
        // controller files, no cgroup.procs: each left out, not zero.
        let (_root, cgroups) = fake_v2(&[
            ("cpu.stat", "usage_usec 10\n"),
            ("cpu.max", "max 100000\n"),
            ("memory.current", "10\n"),
            ("memory.stat", "anon 10\n"),
        ]);
        let detail = cgroups.detail(Path::new("pod/c1"), 1).unwrap();
        assert_eq!(detail.usage.cfs, None);
        let memory = detail.usage.memory;
        assert_eq!(
            (
                memory.mapped_file,
                memory.kernel,
                memory.failcnt,
                memory.oom_kills
            ),
            (None, None, None, None)
        );
        assert_eq!(
            detail.spec,
            Spec {
                cpu_period_us: Some(100_000),
                ..Spec::default()
            }
        );
        assert_eq!(detail.tasks, None);
        assert!(cgroups.detail(Path::new("pod/gone"), 1).is_none());
    }

    #[test]
    fn v1_gives_cfs_memory_events_limits_and_tasks() {
        let root = tempfile::tempdir().unwrap();
        let mut mountinfo = String::new();
        for (i, controller) in ["memory", "cpu", "cpuacct", "pids"].iter().enumerate() {
            let mount = root.path().join(controller);
            std::fs::create_dir_all(mount.join("pod/c1")).unwrap();
            mountinfo.push_str(&format!(
                "{i} 1 0:{i} / {} rw - cgroup cgroup rw,{controller}\n",
                mount.display()
            ));
        }
        let write = |controller: &str, name: &str, text: &str| {
            std::fs::write(root.path().join(controller).join("pod/c1").join(name), text).unwrap();
        };
        write("cpuacct", "cpuacct.usage", "5000000000\n");
        write(
            "cpu",
            "cpu.stat",
            "nr_periods 10\nnr_throttled 4\nthrottled_time 2500000000\nnr_bursts 0\nburst_time 0\n",
        );
        write("cpu", "cpu.cfs_period_us", "100000\n");
        write("cpu", "cpu.cfs_quota_us", "-1\n");
        write("cpu", "cpu.shares", "512\n");
        write("memory", "memory.usage_in_bytes", "1000000\n");
        write("memory", "memory.limit_in_bytes", "67108864\n");
        write(
            "memory",
            "memory.soft_limit_in_bytes",
            "9223372036854771712\n",
        );
        write("memory", "memory.memsw.limit_in_bytes", "134217728\n");
        write("memory", "memory.failcnt", "12\n");
        write("memory", "memory.kmem.usage_in_bytes", "307200\n");
        write(
            "memory",
            "memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        );
        write(
            "memory",
            "memory.stat",
            "cache 1\nmapped_file 4096\npgfault 40\npgmajfault 1\n\
             total_mapped_file 8192\ntotal_pgfault 90\ntotal_pgmajfault 5\n",
        );
        write("pids", "pids.current", "3\n");
        write("pids", "pids.max", "max\n");
        write("pids", "cgroup.procs", "7\n");
        let proc = root.path().join("proc");
        fake_process(
            &proc,
            7,
            &[7, 8, 9],
            Some(&[(0, "/dev/null"), (1, "/dev/null")]),
        );
        let layout = Layout::from_mounts(&berth_host::mountinfo::parse(&mountinfo));
        let cgroups = Cgroups { layout, proc };
        // Its init (7) is gone, and 9 took its PID: 9's limits are not read.
        let detail = cgroups.detail(Path::new("pod/c1"), 9).unwrap();
        assert_eq!(
            detail.usage.cfs,
            Some(Cfs {
                periods: 10,
                throttled_periods: 4,
                throttled_ns: 2_500_000_000
            })
        );
        let memory = detail.usage.memory;
        // The hierarchy's mapped files, as the kernel's total_* keys say.
        assert_eq!(memory.mapped_file, Some(8192));
        assert_eq!(memory.kernel, Some(307_200));
        assert_eq!((memory.failcnt, memory.oom_kills), (Some(12), Some(2)));
        assert_eq!((memory.page_faults, memory.local_page_faults), (90, 40));
        assert_eq!(
            (memory.major_page_faults, memory.local_major_page_faults),
            (5, 1)
        );
        assert_eq!(
            detail.spec,
            Spec {
                cpu_period_us: Some(100_000),
                cpu_quota_us: None,
                cpu_shares: Some(512),
                memory_limit: Some(67_108_864),
                // v1's "no limit" is cAdvisor's 0.
                memory_reservation: Some(0),
                memory_swap_limit: Some(134_217_728),
            }
        );
        assert_eq!(
            detail.tasks,
            Some(Tasks {
                processes: 1,
                threads: 3,
                threads_max: Some(0),
                file_descriptors: 2,
                sockets: 0,
                open_files_soft: None,
            })
        );
        // Without oom_kill (kernels before 4.13) or the kmem files: none.
        write(
            "memory",
            "memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\n",
        );
        std::fs::remove_file(root.path().join("memory/pod/c1/memory.kmem.usage_in_bytes")).unwrap();
        let memory = cgroups.detail(Path::new("pod/c1"), 7).unwrap().usage.memory;
        assert_eq!((memory.oom_kills, memory.kernel), (None, None));
    }

    #[test]
    fn the_soft_open_files_limit_is_a_number_or_none() {
        assert_eq!(
            soft_open_files(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
        assert_eq!(soft_open_files("Max processes 5 5 processes\n"), None);
    }

    #[test]
    fn capacity_reads_the_filesystem_of_a_dir() {
        let dir = tempfile::tempdir().unwrap();
        let fs = capacity(dir.path()).unwrap();
        assert!(fs.bytes > 0, "{fs:?}");
        assert!(fs.inodes >= fs.inodes_free, "{fs:?}");
        assert_eq!(capacity(&dir.path().join("missing")), None);
    }

    #[test]
    fn pod_sums_merge_devices_and_page_sizes_and_drop_peaks() {
        let one = CgroupStats {
            cpu_ns: 10,
            memory: Memory {
                peak: Some(5),
                swap: Some(Swap {
                    usage: 1,
                    limit: None,
                }),
                ..Memory::default()
            },
            hugetlb: vec![Hugetlb {
                page_size: "2MB".into(),
                usage: 2,
                max_usage: Some(3),
            }],
            io: vec![BlockIo {
                major: 8,
                read_bytes: 100,
                ..BlockIo::default()
            }],
            ..CgroupStats::default()
        };
        let one = CgroupStats {
            cfs: Some(Cfs::default()),
            memory: Memory {
                oom_kills: Some(1),
                kernel: Some(10),
                ..one.memory
            },
            ..one
        };
        let mut sum = one.clone();
        sum += one;
        assert_eq!(sum.cpu_ns, 20);
        assert_eq!(sum.cfs, None);
        assert_eq!(
            (sum.memory.oom_kills, sum.memory.kernel),
            (Some(2), Some(20))
        );
        assert_eq!(sum.memory.failcnt, None);
        assert_eq!(sum.memory.peak, None);
        assert_eq!(sum.memory.swap.unwrap().usage, 2);
        assert_eq!(sum.hugetlb[0].usage, 4);
        assert_eq!(sum.hugetlb[0].max_usage, None);
        assert_eq!((sum.io.len(), sum.io[0].read_bytes), (1, 200));
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
