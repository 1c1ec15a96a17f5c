//! The host's cgroup layout, decided once: which hierarchies are mounted
//! where, whether the node is cgroup v1, hybrid (v1 controllers with an
//! empty v2 tree beside them) or v2 only, and where a controller's files for
//! a given cgroup live.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::mountinfo::Mount;

mod driver;
pub use driver::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Only v1 hierarchies.
    Legacy,
    /// v1 controllers, and a v2 tree (usually `/sys/fs/cgroup/unified`).
    Hybrid,
    /// cgroup v2 only: the one tree holds every controller.
    Unified,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    /// v1 controller (`memory`, `cpuacct`, `name=systemd`) → its mount.
    v1: BTreeMap<String, PathBuf>,
    /// The v2 mount.
    unified: Option<PathBuf>,
    /// The controllers of the v2 tree's root (`cgroup.controllers`).
    v2_controllers: Vec<String>,
}

impl Layout {
    /// This host's layout, read once from mountinfo.
    pub fn host() -> &'static Layout {
        static HOST: OnceLock<Layout> = OnceLock::new();
        HOST.get_or_init(|| {
            let mut layout = Layout::from_mounts(&crate::mountinfo::read().unwrap_or_default());
            if let Some(root) = &layout.unified {
                layout.v2_controllers = std::fs::read_to_string(root.join("cgroup.controllers"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(str::to_string)
                    .collect();
            }
            layout
        })
    }

    /// The layout the cgroup mounts give; v2's controllers are unknown
    /// (none) until [`Layout::with_v2_controllers`].
    pub fn from_mounts(mounts: &[Mount]) -> Layout {
        let mut layout = Layout::default();
        for mount in mounts {
            match mount.fstype.as_str() {
                "cgroup2" => layout.unified = Some(mount.mount_point.clone()),
                "cgroup" => {
                    for option in mount.super_options.split(',') {
                        if is_v1_controller(option) {
                            layout
                                .v1
                                .insert(option.to_string(), mount.mount_point.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        layout
    }

    pub fn with_v2_controllers(mut self, controllers: &[&str]) -> Layout {
        self.v2_controllers = controllers.iter().map(|c| c.to_string()).collect();
        self
    }

    pub fn mode(&self) -> Mode {
        match (self.v1.is_empty(), self.unified.is_some()) {
            (true, true) => Mode::Unified,
            (false, true) => Mode::Hybrid,
            _ => Mode::Legacy,
        }
    }

    /// The v2 mount, in any mode that has one.
    pub fn unified(&self) -> Option<&Path> {
        self.unified.as_deref()
    }

    /// The v1 mount holding `controller`.
    pub fn v1(&self, controller: &str) -> Option<&Path> {
        self.v1.get(controller).map(PathBuf::as_path)
    }

    /// Whether `controller` is available, in v1 or in the v2 tree.
    pub fn has_controller(&self, controller: &str) -> bool {
        self.v1.contains_key(controller) || self.v2_controllers.iter().any(|c| c == controller)
    }

    /// Whether the kernel accounts swap: v1's `memory.memsw.*`, or v2.
    pub fn swap_accounted(&self) -> bool {
        match self.v1("memory") {
            Some(mount) => mount.join("memory.memsw.limit_in_bytes").exists(),
            None => self.mode() == Mode::Unified,
        }
    }

    /// Every mounted hierarchy, each once: where a cgroup must be made (and
    /// removed) so that each controller sees it.
    pub fn hierarchies(&self) -> Vec<&Path> {
        let mut all: Vec<&Path> = self.v1.values().map(PathBuf::as_path).collect();
        all.extend(self.unified());
        all.sort();
        all.dedup();
        all
    }

    /// The directory of cgroup `relative` (to each hierarchy's root) that
    /// holds `controller`'s files: its v1 hierarchy, else the v2 tree.
    pub fn dir(&self, controller: &str, relative: &Path) -> Option<PathBuf> {
        let relative = relative.strip_prefix("/").unwrap_or(relative);
        self.v1(controller)
            .or(self.unified())
            .map(|mount| mount.join(relative))
    }

    /// The directory of `pid`'s cgroup holding `controller`, from
    /// `/proc/<pid>/cgroup`.
    pub fn dir_of_process(&self, pid: i32, controller: &str) -> Option<PathBuf> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        self.dir_in_proc_cgroup(&text, controller)
    }

    fn dir_in_proc_cgroup(&self, text: &str, controller: &str) -> Option<PathBuf> {
        let mut unified = None;
        for line in text.lines() {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            let path = path.trim_start_matches('/');
            if controllers.split(',').any(|c| c == controller) {
                return Some(self.v1(controller)?.join(path));
            }
            if controllers.is_empty() {
                unified = Some(path);
            }
        }
        Some(self.unified()?.join(unified?))
    }
}

/// A v1 mount's superblock options name its controllers among the mount
/// flags (`rw,nosuid,memory`); named hierarchies read `name=systemd`.
fn is_v1_controller(option: &str) -> bool {
    const FLAGS: [&str; 8] = [
        "rw",
        "ro",
        "nosuid",
        "nodev",
        "noexec",
        "relatime",
        "noprefix",
        "clone_children",
    ];
    !option.is_empty() && !FLAGS.contains(&option) && !option.starts_with("release_agent=")
}

/// v1 `cpu.shares` → v2 `cpu.weight`, as the OCI runtimes map them
/// (2..=262144 onto 1..=10000; shares outside are clamped first).
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// cAdvisor's inverse of [`shares_to_weight`]; `None` for a weight out of
/// range.
pub fn weight_to_shares(weight: u64) -> Option<u64> {
    (1..=10_000)
        .contains(&weight)
        .then(|| 2 + (weight - 1) * 262_142 / 9_999)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mountinfo::parse;

    #[test]
    fn shares_and_weights_map_as_the_runtimes_and_cadvisor_do() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(0), 1);
        assert_eq!(weight_to_shares(1), Some(2));
        assert_eq!(weight_to_shares(10_000), Some(262_144));
        // runc writes weight 39 for the default 1024 shares.
        assert_eq!(weight_to_shares(39), Some(998));
        assert_eq!(weight_to_shares(0), None);
        assert_eq!(weight_to_shares(10_001), None);
    }

    const HYBRID: &str = "\
25 1 0:23 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
27 25 0:25 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
29 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
30 25 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
    const UNIFIED: &str = "\
25 1 0:23 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    #[test]
    fn hybrid_prefers_v1_controllers() {
        let layout = Layout::from_mounts(&parse(HYBRID));
        assert_eq!(layout.mode(), Mode::Hybrid);
        assert_eq!(
            layout.v1("cpuacct"),
            Some(Path::new("/sys/fs/cgroup/cpu,cpuacct"))
        );
        assert_eq!(
            layout.dir("memory", Path::new("/berth/pod")),
            Some(PathBuf::from("/sys/fs/cgroup/memory/berth/pod"))
        );
        // A controller v1 lacks falls to the v2 tree.
        assert_eq!(
            layout.dir("pids", Path::new("berth")),
            Some(PathBuf::from("/sys/fs/cgroup/unified/berth"))
        );
        assert!(!layout.has_controller("pids"));
        assert!(layout.has_controller("name=systemd"));
        assert_eq!(layout.hierarchies().len(), 4);
        let proc_cgroup = "0::/init.scope\n4:memory:/berth/c1\n2:cpu,cpuacct:/berth/c1\n";
        assert_eq!(
            layout.dir_in_proc_cgroup(proc_cgroup, "memory"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/berth/c1"))
        );
    }

    #[test]
    fn unified_has_one_tree() {
        let layout = Layout::from_mounts(&parse(UNIFIED)).with_v2_controllers(&["cpu", "memory"]);
        assert_eq!(layout.mode(), Mode::Unified);
        assert!(layout.has_controller("memory") && !layout.has_controller("hugetlb"));
        assert!(layout.swap_accounted());
        assert_eq!(layout.hierarchies(), [Path::new("/sys/fs/cgroup")]);
        assert_eq!(
            layout.dir_in_proc_cgroup("0::/kubepods/pod1/c1\n", "memory"),
            Some(PathBuf::from("/sys/fs/cgroup/kubepods/pod1/c1"))
        );
        assert_eq!(Layout::from_mounts(&[]).mode(), Mode::Legacy);
    }
}
