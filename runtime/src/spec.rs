//! OCI runtime spec generation from plain inputs (the server converts CRI
//! requests, the image config and the sandbox's paths into [`ContainerSpec`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCapabilities, LinuxCapabilitiesBuilder,
    LinuxCpuBuilder, LinuxDevice, LinuxDeviceBuilder, LinuxDeviceCgroup, LinuxDeviceCgroupBuilder,
    LinuxDeviceType, LinuxHugepageLimitBuilder, LinuxIdMappingBuilder, LinuxMemoryBuilder,
    LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResources,
    LinuxResourcesBuilder, Mount, MountBuilder, Process, ProcessBuilder, RootBuilder, Spec,
    SpecBuilder, UserBuilder,
};

use crate::user::{self, UserError, UserRequest};

/// The parts of an image's config a container needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value` entries.
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub stop_signal: Option<String>,
}

/// How a container gets one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Namespace {
    /// A new one, private to the container.
    New,
    /// Join an existing one (a pod's pinned namespace, an infra process's).
    Path(PathBuf),
    /// The host's.
    Host,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespaces {
    pub network: Namespace,
    pub ipc: Namespace,
    pub uts: Namespace,
    pub pid: Namespace,
    /// `New` hides the host's cgroup tree (cgroup v2 hosts); `Host`: none.
    pub cgroup: Namespace,
}

impl Default for Namespaces {
    fn default() -> Self {
        Namespaces {
            network: Namespace::New,
            ipc: Namespace::New,
            uts: Namespace::New,
            pid: Namespace::New,
            cgroup: Namespace::Host,
        }
    }
}

/// One line of a uid or gid map: `size` ids from `container_id` in the
/// container are `host_id` and up on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    pub host_id: u32,
    pub container_id: u32,
    pub size: u32,
}

/// The pod's user namespace, which every container of the pod joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserNamespace {
    /// The pinned namespace.
    pub path: PathBuf,
    /// Its mappings, repeated in the OCI spec (runc 1.1 requires them
    /// alongside the path).
    pub uid_mappings: Vec<IdMap>,
    pub gid_mappings: Vec<IdMap>,
}

impl UserNamespace {
    /// The host uid and gid of the namespace's root, if it has one.
    pub fn host_root(&self) -> Option<(u32, u32)> {
        let root = |maps: &[IdMap]| maps.iter().find(|m| m.container_id == 0).map(|m| m.host_id);
        Some((root(&self.uid_mappings)?, root(&self.gid_mappings)?))
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Propagation {
    #[default]
    Private,
    /// Host mounts propagate into the container.
    HostToContainer,
    /// Both ways.
    Bidirectional,
}

/// A bind mount from the host, or of an image's rootfs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BindMount {
    pub container_path: PathBuf,
    /// For an image volume: where create staged it (empty before).
    pub host_path: PathBuf,
    pub readonly: bool,
    /// Read-only at every depth (runc's `rro`, kernel 5.12+); needs `readonly`.
    pub recursive_readonly: bool,
    pub propagation: Propagation,
    /// An image volume (CRI `Mount.image`, KEP-4639) instead of a host path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageVolume>,
}

/// An image's rootfs mounted read-only: its layers under one read-only
/// overlay, or a sub-directory of it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageVolume {
    /// The image as the mount names it.
    pub image: String,
    /// Its ID (the config digest, bare hex): a container using it keeps
    /// RemoveImage from removing it.
    pub image_id: String,
    /// Relative to the image's root; empty: the whole rootfs.
    pub sub_path: PathBuf,
    /// The image's layer dirs, topmost first; only create needs them.
    #[serde(skip)]
    pub layers: Vec<PathBuf>,
}

/// The capability sets of a container's process, as `CAP_*` names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapabilitySets {
    /// Bounding, effective and permitted.
    pub granted: Vec<String>,
    /// Ambient (and inheritable, which the kernel requires of ambient ones);
    /// each is also in `granted`.
    pub ambient: Vec<String>,
}

/// A host device made available in the container (CRI `devices`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub host_path: PathBuf,
    pub container_path: PathBuf,
    /// cgroup access: any of `r`, `w`, `m`.
    pub permissions: String,
}

/// Files the pod sandbox provides, bind-mounted into each container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodFiles {
    pub hostname: Option<PathBuf>,
    pub hosts: Option<PathBuf>,
    pub resolv_conf: Option<PathBuf>,
    /// The pod's `/dev/shm` (a tmpfs the sandbox mounted).
    pub shm: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Resources {
    pub cpu_shares: Option<u64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    pub memory_limit: Option<i64>,
    /// Memory plus swap; -1 for no limit.
    pub memory_swap: Option<i64>,
    /// Page size (`2MB`, `1GB`) and limit in bytes.
    pub hugepage_limits: Vec<(String, u64)>,
    /// cgroup v2 files by name (`memory.high`).
    pub unified: BTreeMap<String, String>,
    pub pids_limit: Option<i64>,
    pub oom_score_adj: Option<i32>,
}

impl Resources {
    /// These limits with the ones `new` sets replaced (hugepage limits by
    /// page size, `unified` key by key): what a container has after an
    /// update, in which an unset field is left as it is.
    pub fn merge(&mut self, new: &Resources) {
        fn set<T: Clone>(old: &mut Option<T>, new: &Option<T>) {
            if new.is_some() {
                old.clone_from(new);
            }
        }
        set(&mut self.cpu_shares, &new.cpu_shares);
        set(&mut self.cpu_quota, &new.cpu_quota);
        set(&mut self.cpu_period, &new.cpu_period);
        set(&mut self.cpuset_cpus, &new.cpuset_cpus);
        set(&mut self.cpuset_mems, &new.cpuset_mems);
        set(&mut self.memory_limit, &new.memory_limit);
        set(&mut self.memory_swap, &new.memory_swap);
        set(&mut self.pids_limit, &new.pids_limit);
        set(&mut self.oom_score_adj, &new.oom_score_adj);
        for (size, limit) in &new.hugepage_limits {
            self.hugepage_limits.retain(|(old, _)| old != size);
            self.hugepage_limits.push((size.clone(), *limit));
        }
        self.unified
            .extend(new.unified.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
}

/// Everything needed to write a container's `config.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerSpec {
    /// The mounted rootfs (see [`crate::overlay`]).
    pub rootfs: PathBuf,
    pub readonly_rootfs: bool,
    pub image: ImageConfig,
    /// CRI `command` (replaces the image's Entrypoint) and `args` (its Cmd).
    pub command: Vec<String>,
    pub args: Vec<String>,
    /// CRI envs, applied over the image's.
    pub env: Vec<(String, String)>,
    /// CRI `working_dir`; the image's, else `/`, when empty.
    pub working_dir: String,
    pub user: UserRequest,
    pub tty: bool,
    pub stdin: bool,
    /// Set when the container has its own UTS namespace.
    pub hostname: String,
    pub namespaces: Namespaces,
    /// The pod's user namespace; `None`: the host's. With one, the rootfs
    /// is mounted id-mapped ([`crate::lifecycle::create`]).
    pub user_namespace: Option<UserNamespace>,
    pub pod_files: PodFiles,
    pub mounts: Vec<BindMount>,
    pub devices: Vec<Device>,
    pub privileged: bool,
    /// `None`: CRI-O's default set ([`DEFAULT_CAPABILITIES`]). Ignored when
    /// privileged (every capability).
    pub capabilities: Option<CapabilitySets>,
    pub no_new_privs: bool,
    pub seccomp: crate::seccomp::SeccompProfile,
    /// `process.apparmorProfile`: a profile loaded on the host (only where
    /// AppArmor is enabled; see [`crate::apparmor`]). `None`: unconfined.
    pub apparmor_profile: Option<String>,
    /// `None`: CRI-O's defaults; an empty list masks nothing. Ignored when
    /// privileged (nothing masked or read-only).
    pub masked_paths: Option<Vec<String>>,
    pub readonly_paths: Option<Vec<String>>,
    /// Namespaced sysctls, written by the runtime inside the container's
    /// (the pod's) namespaces.
    pub sysctls: BTreeMap<String, String>,
    pub resources: Resources,
    /// The cgroup (cgroupfs driver), e.g. `/berth/<pod>/<container>`.
    pub cgroups_path: PathBuf,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("no command specified: the image has no Entrypoint or Cmd and the request no command")]
    NoCommand,
    #[error("invalid env {0:?}: expected KEY=value")]
    BadEnv(String),
    #[error("unknown capability {0:?}")]
    Capability(String),
    #[error("list the host devices under /dev for a privileged container: {0}")]
    HostDevices(std::io::Error),
    #[error("device {path}: {reason}")]
    Device { path: PathBuf, reason: String },
    #[error("resolve the user: {0}")]
    User(#[from] UserError),
    #[error("build the OCI spec: {0}")]
    Oci(#[from] oci_spec::OciSpecError),
    #[error("write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// CRI-O's default capability set.
pub const DEFAULT_CAPABILITIES: [Capability; 9] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::Kill,
];

/// Every capability, for privileged containers.
pub const ALL_CAPABILITIES: &[&str] = &[
    "CAP_AUDIT_CONTROL",
    "CAP_AUDIT_READ",
    "CAP_AUDIT_WRITE",
    "CAP_BLOCK_SUSPEND",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_KILL",
    "CAP_LEASE",
    "CAP_LINUX_IMMUTABLE",
    "CAP_MAC_ADMIN",
    "CAP_MAC_OVERRIDE",
    "CAP_MKNOD",
    "CAP_NET_ADMIN",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_RAW",
    "CAP_PERFMON",
    "CAP_SETGID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_CHROOT",
    "CAP_SYS_MODULE",
    "CAP_SYS_NICE",
    "CAP_SYS_PACCT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
];

/// Capability names by number (`linux/capability.h`).
const CAPABILITY_NUMBERS: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The bit of capability `name` (`CAP_*`) in `/proc/<pid>/status` masks.
pub fn capability_bit(name: &str) -> Option<u32> {
    CAPABILITY_NUMBERS
        .iter()
        .position(|n| *n == name)
        .map(|i| i as u32)
}

/// The capabilities this process can hand on (its bounding set): a
/// container cannot get more, and asking runc for more fails the create
/// (this VM's root lacks CAP_SYS_RESOURCE, for one).
fn own_bounding_set() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapBnd:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// CRI-O's masked paths.
const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/interrupts",
];

/// CRI-O's read-only paths.
const READONLY_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The process arguments as Docker and CRI-O combine them: a CRI `command`
/// replaces the image's Entrypoint and drops its Cmd; CRI `args` replace the Cmd.
pub fn process_args(image: &ImageConfig, command: &[String], args: &[String]) -> Vec<String> {
    let (entrypoint, cmd) = if !command.is_empty() {
        (command, args)
    } else if !args.is_empty() {
        (image.entrypoint.as_slice(), args)
    } else {
        (image.entrypoint.as_slice(), image.cmd.as_slice())
    };
    entrypoint.iter().chain(cmd).cloned().collect()
}

/// The process environment: the image's, then the request's, a later value
/// of a key replacing an earlier one in place.
fn process_env(spec: &ContainerSpec, home: Option<&str>) -> Result<Vec<String>, SpecError> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |key: &str, value: &str| match env.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value.to_string(),
        None => env.push((key.to_string(), value.to_string())),
    };
    for entry in &spec.image.env {
        let (k, v) = entry
            .split_once('=')
            .ok_or_else(|| SpecError::BadEnv(entry.clone()))?;
        set(k, v);
    }
    for (k, v) in &spec.env {
        if k.is_empty() || k.contains('=') {
            return Err(SpecError::BadEnv(format!("{k}={v}")));
        }
        set(k, v);
    }
    let mut env: Vec<(String, String)> = env;
    let mut default = |key: &str, value: &str| {
        if !env.iter().any(|(k, _)| k == key) {
            env.push((key.into(), value.into()));
        }
    };
    default("PATH", DEFAULT_PATH);
    if spec.tty {
        default("TERM", "xterm");
    }
    if !spec.hostname.is_empty() {
        default("HOSTNAME", &spec.hostname);
    }
    default("HOME", home.filter(|h| !h.is_empty()).unwrap_or("/"));
    Ok(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

/// The oom_score_adj to ask for: never below berthd's own, which the kernel
/// would refuse without CAP_SYS_RESOURCE (as containerd's restrict_oom_score_adj).
pub fn clamp_oom_score_adj(requested: i32, own: i32) -> i32 {
    requested.clamp(own, 1000)
}

/// This process's own oom_score_adj.
pub fn own_oom_score_adj() -> i32 {
    std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .expect("static mount")
}

fn bind(dest: &Path, source: &Path, options: Vec<String>) -> Mount {
    MountBuilder::default()
        .destination(dest)
        .typ("bind")
        .source(source)
        .options(options)
        .build()
        .expect("bind mount")
}

fn namespace(typ: LinuxNamespaceType, ns: &Namespace) -> Option<LinuxNamespace> {
    let builder = LinuxNamespaceBuilder::default().typ(typ);
    match ns {
        Namespace::Host => None,
        Namespace::New => Some(builder.build().expect("namespace")),
        Namespace::Path(path) => Some(builder.path(path.clone()).build().expect("namespace")),
    }
}

/// Builds the OCI spec from its parts, each built by a function of its
/// own. `own_oom_score_adj` is berthd's, the floor for the container's.
pub fn generate(spec: &ContainerSpec, own_oom_score_adj: i32) -> Result<Spec, SpecError> {
    let (capabilities, cap_names) = capabilities(spec)?;
    let process = process(spec, capabilities, own_oom_score_adj)?;
    let (mounts, rootfs_propagation) = mounts(spec);
    let (resources, linux_devices) = resources(spec)?;
    let mut linux = LinuxBuilder::default()
        .devices(linux_devices)
        .namespaces(namespaces(spec))
        .resources(resources)
        .rootfs_propagation(rootfs_propagation);
    if let Some(user) = &spec.user_namespace {
        let maps = |maps: &[IdMap]| {
            maps.iter()
                .map(|m| {
                    LinuxIdMappingBuilder::default()
                        .host_id(m.host_id)
                        .container_id(m.container_id)
                        .size(m.size)
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()
        };
        linux = linux
            .uid_mappings(maps(&user.uid_mappings)?)
            .gid_mappings(maps(&user.gid_mappings)?);
    }
    // Set both ways: the builder starts from oci-spec's defaults.
    let paths = |given: &Option<Vec<String>>, default: &[&str]| -> Vec<String> {
        match given {
            _ if spec.privileged => Vec::new(),
            Some(given) => given.clone(),
            None => default.iter().map(|s| s.to_string()).collect(),
        }
    };
    linux = linux
        .masked_paths(paths(&spec.masked_paths, MASKED_PATHS))
        .readonly_paths(paths(&spec.readonly_paths, READONLY_PATHS))
        .sysctl(
            spec.sysctls
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<std::collections::HashMap<_, _>>(),
        );

    // Privileged containers run unconfined, as in CRI-O.
    if let Some(filter) =
        crate::seccomp::filter(&spec.seccomp, &cap_names).filter(|_| !spec.privileged)
    {
        linux = linux.seccomp(filter);
    }
    let builder = SpecBuilder::default()
        .version("1.0.2-dev")
        .root(
            RootBuilder::default()
                .path(spec.rootfs.clone())
                .readonly(spec.readonly_rootfs)
                .build()?,
        )
        .process(process)
        .mounts(mounts)
        .linux(linux.build()?)
        .annotations(
            spec.annotations
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<std::collections::HashMap<_, _>>(),
        );
    let mut oci = builder.build()?;
    if let Some(linux) = oci.linux_mut()
        && !spec.cgroups_path.as_os_str().is_empty()
    {
        linux.set_cgroups_path(Some(spec.cgroups_path.clone()));
    }
    // oci-spec's default names every container "youki"; a container joining
    // the pod's UTS namespace must not rename it.
    oci.set_hostname(
        Some(spec.hostname.clone())
            .filter(|h| spec.namespaces.uts == Namespace::New && !h.is_empty()),
    );
    Ok(oci)
}

/// The capability sets the container's process holds (only those berthd's
/// own bounding set has: no more can be granted), and their names, on which
/// the RuntimeDefault seccomp profile depends.
fn capabilities(spec: &ContainerSpec) -> Result<(LinuxCapabilities, Vec<String>), SpecError> {
    let bounding = own_bounding_set();
    let holdable = |name: &String| match (bounding, capability_bit(name)) {
        (Some(mask), Some(bit)) => mask & (1 << bit) != 0,
        _ => true,
    };
    let to_caps = |names: &[String]| -> Result<Capabilities, SpecError> {
        names
            .iter()
            .filter(|name| holdable(name))
            .map(|name| {
                serde_json::from_value(serde_json::json!(name))
                    .map_err(|_| SpecError::Capability(name.clone()))
            })
            .collect()
    };
    let (caps, ambient): (Capabilities, Capabilities) = if spec.privileged {
        (
            to_caps(
                &ALL_CAPABILITIES
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>(),
            )?,
            HashSet::new(),
        )
    } else if let Some(sets) = &spec.capabilities {
        (to_caps(&sets.granted)?, to_caps(&sets.ambient)?)
    } else {
        (DEFAULT_CAPABILITIES.into_iter().collect(), HashSet::new())
    };
    let cap_names: Vec<String> = caps
        .iter()
        .filter_map(|c| serde_json::to_value(c).ok()?.as_str().map(str::to_owned))
        .collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(ambient.clone())
        .ambient(ambient)
        .build()?;
    Ok((capabilities, cap_names))
}

/// The container's process: command, environment, working dir, user,
/// capabilities, oom_score_adj and AppArmor profile.
fn process(
    spec: &ContainerSpec,
    capabilities: LinuxCapabilities,
    own_oom_score_adj: i32,
) -> Result<Process, SpecError> {
    let args = process_args(&spec.image, &spec.command, &spec.args);
    if args.is_empty() {
        return Err(SpecError::NoCommand);
    }
    let user = user::resolve(&spec.rootfs, &spec.image.user, &spec.user)?;
    let env = process_env(spec, user.home.as_deref())?;
    let cwd = [spec.working_dir.as_str(), spec.image.working_dir.as_str()]
        .into_iter()
        .find(|d| !d.is_empty())
        .unwrap_or("/");

    let mut process = ProcessBuilder::default()
        .terminal(spec.tty)
        .args(args)
        .env(env)
        .cwd(cwd)
        .user(
            UserBuilder::default()
                .uid(user.uid)
                .gid(user.gid)
                .additional_gids(user.additional_gids)
                .build()?,
        )
        .capabilities(capabilities)
        .no_new_privileges(spec.no_new_privs);
    if let Some(adj) = spec.resources.oom_score_adj {
        process = process.oom_score_adj(clamp_oom_score_adj(adj, own_oom_score_adj));
    }
    if let Some(profile) = &spec.apparmor_profile {
        process = process.apparmor_profile(profile.clone());
    }
    let mut process = process.build()?;
    // The builder starts from oci-spec's example, which caps open files at 1024.
    process.set_rlimits(None);

    Ok(process)
}

/// The container's mounts (the standard ones, the pod's files, then the
/// request's, which replace a standard one at the same place) and the
/// rootfs propagation they need.
///
/// Long: the standard set is a table of literal mounts, read best as one
/// list in the order the runtime mounts them.
fn mounts(spec: &ContainerSpec) -> (Vec<Mount>, &'static str) {
    // Privileged containers get writable sysfs and cgroupfs, as in CRI-O.
    let (sys_options, cgroup_options): (&[&str], &[&str]) = if spec.privileged {
        (
            &["nosuid", "noexec", "nodev", "rw"],
            &["nosuid", "noexec", "nodev", "relatime", "rw"],
        )
    } else {
        (
            &["nosuid", "noexec", "nodev", "ro"],
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        )
    };
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount("/sys", "sysfs", "sysfs", sys_options),
        mount("/sys/fs/cgroup", "cgroup", "cgroup", cgroup_options),
    ];
    match &spec.pod_files.shm {
        Some(shm) => mounts.push(bind(
            Path::new("/dev/shm"),
            shm,
            vec![
                "rbind".into(),
                "rprivate".into(),
                "nosuid".into(),
                "noexec".into(),
                "nodev".into(),
            ],
        )),
        None => mounts.push(mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )),
    }
    for (dest, source) in [
        ("/etc/hostname", &spec.pod_files.hostname),
        ("/etc/hosts", &spec.pod_files.hosts),
        ("/etc/resolv.conf", &spec.pod_files.resolv_conf),
    ] {
        if let Some(source) = source {
            let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
            if spec.readonly_rootfs {
                options.push("ro".into());
            }
            mounts.push(bind(Path::new(dest), source, options));
        }
    }
    for m in &spec.mounts {
        // A requested mount replaces a default one at the same place.
        mounts.retain(|existing| existing.destination() != &m.container_path);
        let mut options = vec!["rbind".to_string()];
        options.push(
            match m.propagation {
                Propagation::Private => "rprivate",
                Propagation::HostToContainer => "rslave",
                Propagation::Bidirectional => "rshared",
            }
            .into(),
        );
        if m.readonly {
            options.push("ro".into());
        }
        if m.recursive_readonly {
            options.push("rro".into());
        }
        mounts.push(bind(&m.container_path, &m.host_path, options));
    }
    let rootfs_propagation = if spec
        .mounts
        .iter()
        .any(|m| m.propagation == Propagation::Bidirectional)
    {
        "rshared"
    } else if spec
        .mounts
        .iter()
        .any(|m| m.propagation == Propagation::HostToContainer)
    {
        "rslave"
    } else {
        "rprivate"
    };

    (mounts, rootfs_propagation)
}

/// The namespaces to join (by path) or create.
fn namespaces(spec: &ContainerSpec) -> Vec<LinuxNamespace> {
    let ns = &spec.namespaces;
    let user_ns = match &spec.user_namespace {
        Some(user) => Namespace::Path(user.path.clone()),
        None => Namespace::Host,
    };
    [
        // First: it owns the others.
        namespace(LinuxNamespaceType::User, &user_ns),
        namespace(LinuxNamespaceType::Mount, &Namespace::New),
        namespace(LinuxNamespaceType::Network, &ns.network),
        namespace(LinuxNamespaceType::Ipc, &ns.ipc),
        namespace(LinuxNamespaceType::Uts, &ns.uts),
        namespace(LinuxNamespaceType::Pid, &ns.pid),
        namespace(LinuxNamespaceType::Cgroup, &ns.cgroup),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The cgroup limits and device rules, and the device nodes to create.
fn resources(spec: &ContainerSpec) -> Result<(LinuxResources, Vec<LinuxDevice>), SpecError> {
    let r = &spec.resources;
    let mut cpu = LinuxCpuBuilder::default();
    if let Some(v) = r.cpu_shares {
        cpu = cpu.shares(v);
    }
    if let Some(v) = r.cpu_quota {
        cpu = cpu.quota(v);
    }
    if let Some(v) = r.cpu_period {
        cpu = cpu.period(v);
    }
    if let Some(v) = &r.cpuset_cpus {
        cpu = cpu.cpus(v.clone());
    }
    if let Some(v) = &r.cpuset_mems {
        cpu = cpu.mems(v.clone());
    }
    let mut memory = LinuxMemoryBuilder::default();
    if let Some(limit) = r.memory_limit.filter(|l| *l > 0) {
        memory = memory.limit(limit);
    }
    if let Some(swap) = r.memory_swap {
        memory = memory.swap(swap);
    }
    let (mut linux_devices, mut devices) = devices(&spec.devices)?;
    if spec.privileged {
        // Every host device, as CRI-O; the cgroup rule below allows them all.
        for d in host_devices().map_err(SpecError::HostDevices)? {
            if !linux_devices.iter().any(|l| l.path() == d.path()) {
                linux_devices.push(d);
            }
        }
    }
    // runc adds its default device allow-list after this deny-all.
    devices.insert(
        0,
        LinuxDeviceCgroupBuilder::default()
            .allow(spec.privileged)
            .access("rwm")
            .build()?,
    );
    let mut resources = LinuxResourcesBuilder::default()
        .cpu(cpu.build()?)
        .memory(memory.build()?)
        .devices(devices)
        .hugepage_limits(
            r.hugepage_limits
                .iter()
                .map(|(size, limit)| {
                    LinuxHugepageLimitBuilder::default()
                        .page_size(size.clone())
                        .limit(*limit as i64)
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()?,
        );
    if !r.unified.is_empty() {
        resources = resources.unified(r.unified.clone().into_iter().collect::<HashMap<_, _>>());
    }
    if let Some(limit) = r.pids_limit.filter(|l| *l > 0) {
        resources = resources.pids(LinuxPidsBuilder::default().limit(limit).build()?);
    }
    Ok((resources.build()?, linux_devices))
}

/// The device nodes to create and their cgroup rules.
fn devices(requested: &[Device]) -> Result<(Vec<LinuxDevice>, Vec<LinuxDeviceCgroup>), SpecError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let (mut nodes, mut rules) = (Vec::new(), Vec::new());
    for d in requested {
        let bad = |reason: String| SpecError::Device {
            path: d.host_path.clone(),
            reason,
        };
        if d.permissions.is_empty() || !d.permissions.chars().all(|c| "rwm".contains(c)) {
            return Err(bad(format!(
                "permissions {:?} must be made of r, w and m",
                d.permissions
            )));
        }
        let meta = std::fs::metadata(&d.host_path).map_err(|e| bad(e.to_string()))?;
        let typ = if meta.file_type().is_char_device() {
            LinuxDeviceType::C
        } else if meta.file_type().is_block_device() {
            LinuxDeviceType::B
        } else {
            return Err(bad("not a character or block device".into()));
        };
        let rdev = meta.rdev();
        let (major, minor) = (
            i64::from(nix::sys::stat::major(rdev) as u32),
            i64::from(nix::sys::stat::minor(rdev) as u32),
        );
        nodes.push(
            LinuxDeviceBuilder::default()
                .path(d.container_path.clone())
                .typ(typ)
                .major(major)
                .minor(minor)
                .file_mode(meta.mode() & 0o777)
                .uid(0u32)
                .gid(0u32)
                .build()?,
        );
        rules.push(
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(typ)
                .major(major)
                .minor(minor)
                .access(d.permissions.clone())
                .build()?,
        );
    }
    Ok((nodes, rules))
}

/// The host's device nodes under `/dev` (as runc lists them: not in `pts`,
/// `shm`, `fd`, `mqueue`; not `/dev/console`), for privileged containers.
fn host_devices() -> std::io::Result<Vec<LinuxDevice>> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut found = Vec::new();
    let mut dirs = vec![PathBuf::from("/dev")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            let typ = entry.file_type()?;
            if typ.is_dir() {
                let name = entry.file_name();
                if !matches!(
                    name.to_str(),
                    Some("pts" | "shm" | "fd" | "mqueue" | ".lxc" | ".lxd-mounts" | ".udev")
                ) {
                    dirs.push(path);
                }
                continue;
            }
            let kind = if typ.is_char_device() {
                LinuxDeviceType::C
            } else if typ.is_block_device() {
                LinuxDeviceType::B
            } else {
                continue;
            };
            if path == Path::new("/dev/console") {
                continue;
            }
            // A device that vanished meanwhile is not an error.
            let Ok(meta) = entry.metadata() else { continue };
            let rdev = meta.rdev();
            found.push(
                LinuxDeviceBuilder::default()
                    .path(path)
                    .typ(kind)
                    .major(i64::from(nix::sys::stat::major(rdev) as u32))
                    .minor(i64::from(nix::sys::stat::minor(rdev) as u32))
                    .file_mode(meta.mode() & 0o777)
                    .uid(meta.uid())
                    .gid(meta.gid())
                    .build()
                    .expect("device fields set"),
            );
        }
    }
    Ok(found)
}

/// Writes `spec` as `config.json` in `bundle`.
pub fn write(bundle: &Path, spec: &Spec) -> Result<(), SpecError> {
    let path = bundle.join("config.json");
    let bytes = serde_json::to_vec(spec).expect("OCI spec serializes");
    berth_host::atomic::write_private(&path, &bytes)
        .map_err(|source| SpecError::Write { path, source })
}

/// Reads `config.json` back from `bundle` (ContainerStatus's verbose info and user).
pub fn read(bundle: &Path) -> std::io::Result<Spec> {
    let bytes = std::fs::read(bundle.join("config.json"))?;
    serde_json::from_slice(&bytes)
        .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidData, err))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(entrypoint: &[&str], cmd: &[&str]) -> ImageConfig {
        ImageConfig {
            entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn args_follow_docker_rules() {
        let img = image(&["/entry"], &["default"]);
        assert_eq!(
            process_args(&img, &[], &[]),
            strings(&["/entry", "default"])
        );
        assert_eq!(
            process_args(&img, &[], &strings(&["x"])),
            strings(&["/entry", "x"])
        );
        assert_eq!(
            process_args(&img, &strings(&["/cmd"]), &[]),
            strings(&["/cmd"])
        );
        assert_eq!(
            process_args(&img, &strings(&["/cmd"]), &strings(&["a"])),
            strings(&["/cmd", "a"])
        );
        assert!(process_args(&image(&[], &[]), &[], &[]).is_empty());
    }

    #[test]
    fn oom_score_adj_never_goes_below_our_own() {
        assert_eq!(clamp_oom_score_adj(-998, -500), -500);
        assert_eq!(clamp_oom_score_adj(1000, -500), 1000);
        assert_eq!(clamp_oom_score_adj(2000, 0), 1000);
        assert_eq!(clamp_oom_score_adj(300, 0), 300);
    }

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "app:x:100:101::/home/app:/bin/sh\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn generated_spec_has_the_inputs() {
        let root = rootfs();
        let spec = ContainerSpec {
            rootfs: root.path().to_path_buf(),
            readonly_rootfs: true,
            image: ImageConfig {
                env: strings(&["A=image", "B=image"]),
                user: "app".into(),
                ..image(&["/bin/sh"], &["-c", "true"])
            },
            env: vec![("B".into(), "cri".into())],
            hostname: "pod".into(),
            namespaces: Namespaces {
                network: Namespace::Path("/run/netns/x".into()),
                ..Default::default()
            },
            resources: Resources {
                memory_limit: Some(16 << 20),
                oom_score_adj: Some(-998),
                ..Default::default()
            },
            cgroups_path: "/berth/pod/ctr".into(),
            ..Default::default()
        };
        let oci = generate(&spec, -100).unwrap();
        let process = oci.process().as_ref().unwrap();
        assert_eq!(
            process.args().as_ref().unwrap(),
            &strings(&["/bin/sh", "-c", "true"])
        );
        let env = process.env().as_ref().unwrap();
        assert!(env.contains(&"A=image".to_string()));
        assert!(env.contains(&"B=cri".to_string()));
        assert!(env.contains(&"HOME=/home/app".to_string()), "{env:?}");
        assert_eq!((process.user().uid(), process.user().gid()), (100, 101));
        assert_eq!(process.oom_score_adj(), Some(-100));
        assert!(oci.root().as_ref().unwrap().readonly().unwrap());
        let linux = oci.linux().as_ref().unwrap();
        let netns = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .find(|n| n.typ() == LinuxNamespaceType::Network)
            .unwrap();
        assert_eq!(netns.path().as_deref(), Some(Path::new("/run/netns/x")));
        let json = serde_json::to_value(&oci).unwrap();
        assert_eq!(json["linux"]["resources"]["memory"]["limit"], 16 << 20);
        assert_eq!(json["linux"]["cgroupsPath"], "/berth/pod/ctr");
        assert_eq!(json["hostname"], "pod");
    }

    #[test]
    fn cgroup_namespace_and_apparmor_profile_reach_the_spec() {
        let root = rootfs();
        let with = |cgroup: Namespace, profile: Option<&str>| {
            let spec = ContainerSpec {
                rootfs: root.path().to_path_buf(),
                image: image(&["/bin/sh"], &[]),
                namespaces: Namespaces {
                    cgroup,
                    ..Default::default()
                },
                apparmor_profile: profile.map(str::to_string),
                ..Default::default()
            };
            serde_json::to_value(generate(&spec, 0).unwrap()).unwrap()
        };
        let has_cgroup_ns = |json: &serde_json::Value| {
            json["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["type"] == "cgroup")
        };
        let json = with(Namespace::New, Some("berth-default"));
        assert!(has_cgroup_ns(&json), "{json}");
        assert_eq!(json["process"]["apparmorProfile"], "berth-default");
        let json = with(Namespace::Host, None);
        assert!(!has_cgroup_ns(&json), "{json}");
        assert!(json["process"].get("apparmorProfile").is_none(), "{json}");
    }

    #[test]
    fn no_command_is_an_error() {
        let root = rootfs();
        let spec = ContainerSpec {
            rootfs: root.path().to_path_buf(),
            ..Default::default()
        };
        assert!(matches!(generate(&spec, 0), Err(SpecError::NoCommand)));
    }

    #[test]
    fn devices_must_be_devices_with_rwm_permissions() {
        let root = rootfs();
        let with = |host: &str, permissions: &str| ContainerSpec {
            rootfs: root.path().to_path_buf(),
            image: image(&["/bin/sh"], &[]),
            devices: vec![Device {
                host_path: host.into(),
                container_path: "/dev/x".into(),
                permissions: permissions.into(),
            }],
            ..Default::default()
        };
        let oci = generate(&with("/dev/null", "rw"), 0).unwrap();
        let json = serde_json::to_value(&oci).unwrap();
        assert_eq!(json["linux"]["devices"][0]["type"], "c");
        assert_eq!(json["linux"]["devices"][0]["major"], 1);
        assert_eq!(json["linux"]["resources"]["devices"][1]["access"], "rw");
        let err = generate(&with("/etc/hostname", "rw"), 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a character or block device"), "{err}");
        let err = generate(&with("/dev/null", "rwx"), 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("permissions"), "{err}");
    }

    #[test]
    fn privileged_gets_every_capability_and_no_confinement() {
        let root = rootfs();
        let spec = ContainerSpec {
            rootfs: root.path().to_path_buf(),
            image: image(&["/bin/sh"], &[]),
            privileged: true,
            seccomp: crate::seccomp::SeccompProfile::RuntimeDefault,
            ..Default::default()
        };
        let json = serde_json::to_value(generate(&spec, 0).unwrap()).unwrap();
        let bounding = json["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap();
        assert!(bounding.len() > 30);
        assert!(json["linux"]["seccomp"].is_null());
        assert!(
            json["linux"]["maskedPaths"]
                .as_array()
                .is_none_or(|a| a.is_empty())
        );
        assert!(
            json["linux"]["readonlyPaths"]
                .as_array()
                .is_none_or(|a| a.is_empty())
        );
        let unprivileged = ContainerSpec {
            privileged: false,
            ..spec
        };
        let json = serde_json::to_value(generate(&unprivileged, 0).unwrap()).unwrap();
        let bounding = json["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap();
        assert_eq!(bounding.len(), DEFAULT_CAPABILITIES.len());
        assert_eq!(json["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        assert!(json["linux"]["maskedPaths"].as_array().unwrap().len() > 5);
    }

    #[test]
    fn joining_the_pod_uts_namespace_keeps_its_hostname_and_defaults_stay_out() {
        let root = rootfs();
        let spec = ContainerSpec {
            rootfs: root.path().to_path_buf(),
            image: image(&["/bin/sh"], &[]),
            namespaces: Namespaces {
                uts: Namespace::Path("/x".into()),
                ..Default::default()
            },
            hostname: "pod".into(),
            ..Default::default()
        };
        let json = serde_json::to_value(generate(&spec, 0).unwrap()).unwrap();
        assert!(json.get("hostname").is_none(), "{json}");
        // Limits are inherited from berthd, not oci-spec's example value.
        assert!(json["process"].get("rlimits").is_none(), "{json}");
        // No cgroup asked for: the runtime's default.
        assert!(json["linux"].get("cgroupsPath").is_none(), "{json}");
    }

    #[test]
    fn a_pod_user_namespace_is_joined_with_its_mappings() {
        let root = rootfs();
        let map = IdMap {
            host_id: 100000,
            container_id: 0,
            size: 65536,
        };
        let spec = ContainerSpec {
            rootfs: root.path().to_path_buf(),
            image: image(&["/bin/sh"], &[]),
            user_namespace: Some(UserNamespace {
                path: "/run/berth/ns/user/p".into(),
                uid_mappings: vec![map],
                gid_mappings: vec![IdMap {
                    host_id: 200000,
                    ..map
                }],
            }),
            ..Default::default()
        };
        assert_eq!(
            spec.user_namespace.as_ref().unwrap().host_root(),
            Some((100000, 200000))
        );
        let json = serde_json::to_value(generate(&spec, 0).unwrap()).unwrap();
        let linux = &json["linux"];
        assert_eq!(
            linux["namespaces"][0],
            serde_json::json!({"type": "user", "path": "/run/berth/ns/user/p"})
        );
        assert_eq!(
            linux["uidMappings"],
            serde_json::json!([{"hostID": 100000, "containerID": 0, "size": 65536}])
        );
        assert_eq!(linux["gidMappings"][0]["hostID"], 200000);
        let json = serde_json::to_value(
            generate(
                &ContainerSpec {
                    user_namespace: None,
                    ..spec
                },
                0,
            )
            .unwrap(),
        )
        .unwrap();
        assert!(json["linux"].get("uidMappings").is_none(), "{json}");
        assert!(
            !json["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["type"] == "user")
        );
    }
}
