//! The cgroup driver: who owns the cgroup tree under which pods and
//! containers live, and how a pod's `cgroup_parent` and a container ID map
//! to the OCI `cgroupsPath`, the runtime's flags and the real cgroup dir.
//!
//! - `cgroupfs`: parents are absolute paths (`/kubepods/burstable/pod1`);
//!   a container's cgroup is `<parent>/<id>`, made by the OCI runtime.
//! - `systemd`: parents are slice units (`kubepods-burstable-pod1.slice`);
//!   a container gets the transient scope `berth-<id>.scope` in that slice,
//!   which the OCI runtime asks systemd for over D-Bus. Its OCI
//!   `cgroupsPath` is runc's `<slice>:berth:<id>`; its dir is the slice's
//!   expansion (`kubepods.slice/kubepods-burstable.slice/…`) plus the scope.
//!
//! The rest of Berth asks here and never builds these paths itself.

use std::path::{Path, PathBuf};

/// The unit prefix of every scope Berth's containers and infra processes
/// get (CRI-O's is `crio`).
pub const SCOPE_PREFIX: &str = "berth";

/// The systemd slice of pods that name no parent, as CRI-O's default.
pub const DEFAULT_SYSTEMD_PARENT: &str = "system.slice";
/// The cgroupfs parent of pods that name no parent.
pub const DEFAULT_CGROUPFS_PARENT: &str = "/berth";

/// Where systemd, as PID 1, says it runs (sd_booted(3)).
const SYSTEMD_RUNNING: &str = "/run/systemd/system";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Driver {
    #[default]
    Cgroupfs,
    Systemd,
}

/// A `cgroup_parent` that does not fit the driver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParentError {
    #[error("{parent:?} is a systemd slice, but the cgroup driver is cgroupfs")]
    SliceWithCgroupfs { parent: String },
    #[error("expected an absolute cgroupfs path, got {parent:?}")]
    NotAbsolute { parent: String },
    #[error("{parent:?} contains \"..\"")]
    DotDot { parent: String },
    #[error(
        "the cgroup driver is systemd: expected a slice unit name such as kubepods-burstable-pod<uid>.slice, got {parent:?} ({reason})"
    )]
    NotASlice {
        parent: String,
        reason: &'static str,
    },
}

impl Driver {
    pub fn name(self) -> &'static str {
        match self {
            Driver::Cgroupfs => "cgroupfs",
            Driver::Systemd => "systemd",
        }
    }

    /// Whether systemd runs as PID 1 on this host.
    pub fn systemd_running() -> bool {
        Path::new(SYSTEMD_RUNNING).is_dir()
    }

    /// The host's driver: systemd where it is PID 1, else cgroupfs.
    pub fn host_default() -> Driver {
        if Driver::systemd_running() {
            Driver::Systemd
        } else {
            Driver::Cgroupfs
        }
    }

    /// The parent of pods that name none.
    pub fn default_parent(self) -> &'static str {
        match self {
            Driver::Cgroupfs => DEFAULT_CGROUPFS_PARENT,
            Driver::Systemd => DEFAULT_SYSTEMD_PARENT,
        }
    }

    /// The driver a checked parent was written for: slices are systemd's.
    /// Records keep only the parent; [`Driver::check_parent`] made sure,
    /// when it was accepted, that its form matched the driver.
    pub fn of_parent(parent: &str) -> Driver {
        if parent.ends_with(".slice") {
            Driver::Systemd
        } else {
            Driver::Cgroupfs
        }
    }

    /// Checks a pod's cgroup parent. Mixed forms are refused both ways, as
    /// CRI-O does: a slice with cgroupfs, a path with systemd.
    pub fn check_parent(self, parent: &str) -> Result<(), ParentError> {
        let owned = || parent.to_string();
        match self {
            Driver::Cgroupfs => {
                if parent.ends_with(".slice") {
                    return Err(ParentError::SliceWithCgroupfs { parent: owned() });
                }
                if !parent.starts_with('/') {
                    return Err(ParentError::NotAbsolute { parent: owned() });
                }
                if parent.split('/').any(|part| part == "..") {
                    return Err(ParentError::DotDot { parent: owned() });
                }
                Ok(())
            }
            Driver::Systemd => {
                slice_dir(parent)
                    .map(drop)
                    .map_err(|reason| ParentError::NotASlice {
                        parent: owned(),
                        reason,
                    })
            }
        }
    }

    /// The OCI runtime's global flags for this driver. crun names it
    /// `--cgroup-manager`; runc (and youki) take `--systemd-cgroup`.
    pub fn runtime_args(self, runtime: &Path) -> Vec<String> {
        match self {
            Driver::Cgroupfs => Vec::new(),
            Driver::Systemd => {
                let crun = runtime
                    .file_name()
                    .is_some_and(|name| name.to_string_lossy().starts_with("crun"));
                vec![if crun {
                    "--cgroup-manager=systemd".to_string()
                } else {
                    "--systemd-cgroup".to_string()
                }]
            }
        }
    }
}

/// The scope unit of a container or infra process `id`.
pub fn scope_name(id: &str) -> String {
    format!("{SCOPE_PREFIX}-{id}.scope")
}

/// The OCI `linux.cgroupsPath` of container `id` in a pod whose (checked)
/// parent is `parent`; empty `parent` leaves it to the runtime.
pub fn oci_cgroups_path(parent: &str, id: &str) -> String {
    if parent.is_empty() {
        return String::new();
    }
    match Driver::of_parent(parent) {
        Driver::Cgroupfs => format!("{}/{id}", parent.trim_end_matches('/')),
        Driver::Systemd => format!("{parent}:{SCOPE_PREFIX}:{id}"),
    }
}

/// The dir of container (or infra process) `id` relative to each
/// hierarchy's root, for a pod with (checked) parent `parent`.
pub fn container_dir(parent: &str, id: &str) -> PathBuf {
    match Driver::of_parent(parent) {
        Driver::Cgroupfs => Path::new(parent.trim_start_matches('/')).join(id),
        Driver::Systemd => slice_dir(parent).unwrap_or_default().join(scope_name(id)),
    }
}

/// The dir of the infra process of pod `pod` (a shared-PID pod's), relative
/// to each hierarchy's root: `<parent>/berth-<pod>` with cgroupfs, the
/// scope `berth-<pod>.scope` in the pod's slice with systemd.
pub fn infra_dir(parent: &str, pod: &str) -> PathBuf {
    match Driver::of_parent(parent) {
        Driver::Cgroupfs => {
            Path::new(parent.trim_start_matches('/')).join(format!("{SCOPE_PREFIX}-{pod}"))
        }
        Driver::Systemd => container_dir(parent, pod),
    }
}

/// The dir relative to each hierarchy's root that an OCI `cgroupsPath`
/// names: runc's systemd form `<slice>:<prefix>:<name>`, else a path.
pub fn dir_of_cgroups_path(cgroups_path: &str) -> PathBuf {
    let mut parts = cgroups_path.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(slice), Some(prefix), Some(name)) => {
            let slice = if slice.is_empty() {
                DEFAULT_SYSTEMD_PARENT
            } else {
                slice
            };
            let unit = if name.ends_with(".slice") {
                name.to_string()
            } else if prefix.is_empty() {
                format!("{name}.scope")
            } else {
                format!("{prefix}-{name}.scope")
            };
            slice_dir(slice).unwrap_or_default().join(unit)
        }
        _ => PathBuf::from(cgroups_path.trim_start_matches('/')),
    }
}

/// The slices `slice` sits in and itself, outermost first: systemd starts
/// the missing ones with it (`a-b.slice`: `a.slice`, `a-b.slice`).
pub fn slice_ancestry(slice: &str) -> Vec<String> {
    slice_dir(slice)
        .map(|dir| {
            dir.iter()
                .map(|part| part.to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A slice's dir relative to the v2 root, as systemd nests slices by the
/// dashes in their names: `a-b-c.slice` is `a.slice/a-b.slice/a-b-c.slice`
/// and the root slice `-.slice` is the root itself. The error says what
/// makes `slice` no valid slice name.
pub fn slice_dir(slice: &str) -> Result<PathBuf, &'static str> {
    // Unit names are at most 255 bytes (systemd's UNIT_NAME_MAX).
    if slice.len() > 255 {
        return Err("longer than 255 bytes");
    }
    let Some(stem) = slice.strip_suffix(".slice") else {
        return Err("no .slice suffix");
    };
    if slice.contains('/') {
        return Err("a path, not a unit name");
    }
    if stem == "-" {
        return Ok(PathBuf::new());
    }
    // ':' separates the fields of runc's systemd cgroupsPath.
    if !stem
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
    {
        return Err("a character other than ASCII letters, digits, '-', '_', '.', '@'");
    }
    let mut dir = PathBuf::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if part.is_empty() {
            return Err("an empty part between dashes");
        }
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        dir.push(format!("{prefix}.slice"));
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_expand_by_their_dashes() {
        assert_eq!(
            slice_dir("kubepods-burstable-pod1.slice").unwrap(),
            Path::new("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice")
        );
        assert_eq!(
            slice_dir("kubepods.slice").unwrap(),
            Path::new("kubepods.slice")
        );
        assert_eq!(slice_dir("-.slice").unwrap(), Path::new(""));
        assert_eq!(
            slice_ancestry("kubepods-burstable-pod1.slice"),
            [
                "kubepods.slice",
                "kubepods-burstable.slice",
                "kubepods-burstable-pod1.slice"
            ]
        );
        assert!(slice_ancestry("/kubepods").is_empty());
        assert_eq!(
            slice_dir("kubepods-besteffort-pod0f3a_b2.slice").unwrap(),
            Path::new(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0f3a_b2.slice"
            )
        );
    }

    #[test]
    fn malformed_slices_say_why() {
        for (slice, reason) in [
            ("/kubepods/burstable", "no .slice suffix"),
            ("kubepods", "no .slice suffix"),
            ("/kubepods.slice", "a path, not a unit name"),
            ("kubepods.slice/x.slice", "a path, not a unit name"),
            ("kube pods.slice", "a character other"),
            ("kube:pods.slice", "a character other"),
            ("kubepods--x.slice", "an empty part"),
            ("-kubepods.slice", "an empty part"),
            ("kubepods-.slice", "an empty part"),
            (".slice", "an empty part"),
        ] {
            let err = slice_dir(slice).unwrap_err();
            assert!(err.starts_with(reason), "{slice}: {err}");
        }
        assert_eq!(
            slice_dir(&format!("{}.slice", "a".repeat(250))),
            Err("longer than 255 bytes")
        );
    }

    #[test]
    fn parents_must_fit_the_driver_both_ways() {
        let systemd = Driver::Systemd;
        assert!(
            systemd
                .check_parent("kubepods-burstable-pod1.slice")
                .is_ok()
        );
        assert!(systemd.check_parent("system.slice").is_ok());
        let err = systemd.check_parent("/kubepods/burstable").unwrap_err();
        assert!(matches!(err, ParentError::NotASlice { .. }), "{err}");
        assert!(err.to_string().contains("no .slice suffix"), "{err}");
        let cgroupfs = Driver::Cgroupfs;
        assert!(cgroupfs.check_parent("/kubepods/burstable/pod1").is_ok());
        assert_eq!(
            cgroupfs.check_parent("kubepods.slice"),
            Err(ParentError::SliceWithCgroupfs {
                parent: "kubepods.slice".into()
            })
        );
        assert!(matches!(
            cgroupfs.check_parent("kubepods"),
            Err(ParentError::NotAbsolute { .. })
        ));
        assert!(matches!(
            cgroupfs.check_parent("/berth/../etc"),
            Err(ParentError::DotDot { .. })
        ));
    }

    #[test]
    fn paths_per_driver() {
        let slice = "kubepods-burstable-pod1.slice";
        assert_eq!(
            oci_cgroups_path(slice, "c1"),
            "kubepods-burstable-pod1.slice:berth:c1"
        );
        assert_eq!(
            oci_cgroups_path("/kubepods/pod1", "c1"),
            "/kubepods/pod1/c1"
        );
        assert_eq!(
            oci_cgroups_path("/kubepods/pod1/", "c1"),
            "/kubepods/pod1/c1"
        );
        assert_eq!(oci_cgroups_path("", "c1"), "");
        let scope_dir = Path::new(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/berth-c1.scope",
        );
        assert_eq!(container_dir(slice, "c1"), scope_dir);
        assert_eq!(
            container_dir("/kubepods/pod1", "c1"),
            Path::new("kubepods/pod1/c1")
        );
        // What the spec says is where the container lives, either way.
        assert_eq!(
            dir_of_cgroups_path(&oci_cgroups_path(slice, "c1")),
            scope_dir
        );
        assert_eq!(
            dir_of_cgroups_path("/kubepods/pod1/c1"),
            Path::new("kubepods/pod1/c1")
        );
        assert_eq!(
            dir_of_cgroups_path(":crio:c2"),
            Path::new("system.slice/crio-c2.scope")
        );
        assert_eq!(scope_name("p1"), "berth-p1.scope");
        assert_eq!(infra_dir("/berth", "p1"), Path::new("berth/berth-p1"));
        assert_eq!(
            infra_dir("kubepods-pod1.slice", "p1"),
            Path::new("kubepods.slice/kubepods-pod1.slice/berth-p1.scope")
        );
    }

    #[test]
    fn runtime_flags_per_driver_and_binary() {
        let systemd = Driver::Systemd;
        assert_eq!(
            systemd.runtime_args(Path::new("runc")),
            ["--systemd-cgroup"]
        );
        assert_eq!(
            systemd.runtime_args(Path::new("/usr/sbin/runc")),
            ["--systemd-cgroup"]
        );
        assert_eq!(
            systemd.runtime_args(Path::new("/usr/bin/crun")),
            ["--cgroup-manager=systemd"]
        );
        assert!(
            Driver::Cgroupfs
                .runtime_args(Path::new("/usr/bin/crun"))
                .is_empty()
        );
        assert!(Driver::Cgroupfs.runtime_args(Path::new("runc")).is_empty());
    }

    #[test]
    fn defaults_per_driver() {
        assert_eq!(Driver::Systemd.default_parent(), "system.slice");
        assert_eq!(Driver::Cgroupfs.default_parent(), "/berth");
        assert_eq!(Driver::of_parent("system.slice"), Driver::Systemd);
        assert_eq!(Driver::of_parent("/berth"), Driver::Cgroupfs);
        assert_eq!(
            Driver::host_default() == Driver::Systemd,
            Path::new("/run/systemd/system").is_dir()
        );
    }
}
