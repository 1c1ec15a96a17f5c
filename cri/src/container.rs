//! CRI `CreateContainer` input → [`ContainerSpec`]: validation and the
//! security context as CRI-O applies it. Pure: nothing here touches the
//! host except reading a `Localhost` seccomp profile.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use berth_proto::cri;

use berth_runtime::apparmor::{AppArmor, AppArmorError, Request};
use berth_runtime::features::HandlerFeatures;
use berth_runtime::seccomp::{self, SeccompProfile};
use berth_runtime::spec::{
    ALL_CAPABILITIES, BindMount, CapabilitySets, ContainerSpec, DEFAULT_CAPABILITIES, Device,
    ImageConfig, ImageVolume, Namespace, Namespaces, PodFiles, Propagation, Resources,
    UserNamespace,
};
use berth_runtime::user::UserRequest;

use crate::resources::{Host, Mode};
use crate::{RequestError, invalid, unsupported};

/// What the pod sandbox already set up, for its containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFacts {
    /// The pod's network, IPC and UTS namespaces (`Path` of a pinned one,
    /// or `Host`); every container joins them.
    pub network: Namespace,
    pub ipc: Namespace,
    pub uts: Namespace,
    /// The pod's shared PID namespace: `Path` (pod PID mode `POD`), `Host`
    /// (`NODE`), or `None` when its containers each get their own.
    pub pid: Option<Namespace>,
    /// The pod's own user namespace (user namespace mode `POD`), which all
    /// its containers join; `None`: the host's. From the pod record:
    /// `Pod::user_namespace()` gives the pinned path and the mappings.
    pub user: Option<UserNamespace>,
    /// The pod's cgroup parent (a path, or a slice with the systemd driver);
    /// the container's cgroup is placed by [`cgroups_path`]. Empty: the
    /// runtime's default.
    pub cgroup_parent: PathBuf,
    pub files: PodFiles,
    /// The pod's hostname, from its record.
    pub hostname: String,
    /// The pod's sysctls in the OCI form, from its record: the pod checked
    /// them when it was made, so they are not checked again here (against
    /// the request's own copy of the pod config, which may differ).
    pub sysctls: BTreeMap<String, String>,
    /// The pod is privileged: only then may its containers be.
    pub privileged: bool,
    /// The pod's log directory, which a container's `log_path` is relative
    /// to; empty: none (the caller picks one).
    pub log_directory: PathBuf,
}

/// The caller's settings and facts beyond the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub container_id: String,
    /// The default capability set (config; CRI-O's by default), names with
    /// or without `CAP_`.
    pub default_capabilities: Vec<String>,
    /// The seccomp profile when the request names none (config).
    pub default_seccomp: DefaultSeccomp,
    /// The host's AppArmor ([`AppArmor::host`]); `None`: not enabled.
    pub apparmor: Option<AppArmor>,
    /// Whether containers get their own cgroup namespace: on a cgroup v2
    /// only host, as containerd does (privileged ones excepted).
    pub cgroup_namespace: bool,
    /// [`berth_runtime::features::probe`] of the container's runtime handler.
    pub features: HandlerFeatures,
    /// For PID namespace mode `TARGET`: the target container's PID namespace
    /// (`/proc/<pid>/ns/pid`), looked up by the caller from `target_id`.
    pub target_pid_namespace: Option<PathBuf>,
    /// The image each image volume names (`mounts[i].image`), by mount
    /// index, looked up (and pinned) by the caller in the image store.
    pub image_volumes: BTreeMap<usize, ImageVolume>,
}

impl Options {
    /// CRI-O's defaults for `container_id`.
    pub fn new(container_id: &str) -> Options {
        Options {
            container_id: container_id.to_string(),
            default_capabilities: DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect(),
            default_seccomp: DefaultSeccomp::Unconfined,
            apparmor: None,
            cgroup_namespace: false,
            features: HandlerFeatures::default(),
            target_pid_namespace: None,
            image_volumes: BTreeMap::new(),
        }
    }
}

/// What an unset seccomp profile means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DefaultSeccomp {
    /// CRI-O's `seccomp_use_default_when_empty = true`.
    RuntimeDefault,
    /// As the CRI says (the kubelet always names a profile).
    #[default]
    Unconfined,
}

/// The converted request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriContainer {
    /// `rootfs` is left empty: [`berth_runtime::lifecycle::create`] sets it.
    pub spec: ContainerSpec,
    /// `log_directory` of the pod joined with the container's `log_path`;
    /// `None` when the request has no `log_path`.
    pub log_path: Option<PathBuf>,
    pub stdin_once: bool,
}

const SC: &str = "linux.security_context";

/// The pod's rules for names, labels and annotations, which containers
/// share (`berth_sandbox::spec`), naming the request's field.
fn object_limits(config: &cri::ContainerConfig) -> Result<(), RequestError> {
    use berth_sandbox::spec::{metadata_size, name_size};
    let sorted = |map: &std::collections::HashMap<String, String>| -> BTreeMap<String, String> {
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    let name = config.metadata.as_ref().map_or("", |m| m.name.as_str());
    name_size("metadata.name", name)
        .and_then(|()| metadata_size("labels", &sorted(&config.labels)))
        .and_then(|()| metadata_size("annotations", &sorted(&config.annotations)))
        .map_err(|e| invalid(e.field, e.message))
}

/// Converts a CreateContainer request's `config` with the image's config
/// and the pod's facts (from its record: the request's own copy of the pod
/// config, `sandbox_config`, is not trusted over it).
///
/// Long: one pass over the request's fields, in the order CRI-O checks
/// them so the first bad field is the one named; each part with logic of
/// its own is its own function.
pub fn convert(
    config: &cri::ContainerConfig,
    image: &ImageConfig,
    pod: &PodFacts,
    options: &Options,
) -> Result<CriContainer, RequestError> {
    object_limits(config)?;
    // execve(2) and the runtime's JSON-to-C strings end at a NUL: refused
    // here rather than failing inside the runtime.
    for (name, list) in [("command", &config.command), ("args", &config.args)] {
        if let Some(i) = list.iter().position(|a| a.contains('\0')) {
            return Err(invalid(format!("{name}[{i}]"), "contains a NUL byte"));
        }
    }
    if config.working_dir.contains('\0') {
        return Err(invalid("working_dir", "contains a NUL byte"));
    }
    if !config.working_dir.is_empty() && !config.working_dir.starts_with('/') {
        return Err(invalid(
            "working_dir",
            format!("{:?} is not an absolute path", config.working_dir),
        ));
    }
    let default_sc = cri::LinuxContainerSecurityContext::default();
    let linux = config.linux.as_ref();
    let sc = linux
        .and_then(|l| l.security_context.as_ref())
        .unwrap_or(&default_sc);
    if sc.privileged && !pod.privileged {
        return Err(invalid(
            format!("{SC}.privileged"),
            "a privileged container needs a privileged pod sandbox",
        ));
    }
    let capabilities = capability_sets(&options.default_capabilities, sc.capabilities.as_ref())?;
    let effective_caps: Vec<String> = if sc.privileged {
        ALL_CAPABILITIES.iter().map(|s| s.to_string()).collect()
    } else {
        capabilities.granted.clone()
    };
    let seccomp = if sc.privileged {
        // Privileged containers run unconfined (CRI-O): nothing to read.
        SeccompProfile::Unconfined
    } else {
        seccomp_profile(sc, options.default_seccomp, &effective_caps)?
    };
    let apparmor_profile = apparmor_profile(sc, options.apparmor.as_ref())?;
    let user = user_request(sc)?;
    let namespaces = namespaces(sc, pod, options)?;
    let user_namespace = user_namespace(sc, pod, options)?;
    let mounts = mounts(&config.mounts, options, pod.user.is_some())?;
    // Host paths enter a user-namespaced pod as id-mapped copies
    // (`mounts::idmap`), which cannot take part in the host's propagation.
    if pod.user.is_some()
        && let Some(i) = mounts
            .iter()
            .position(|m| m.propagation != Propagation::Private)
    {
        return Err(unsupported(
            format!("mounts[{i}].propagation"),
            "a pod with its own user namespace gets id-mapped copies of host paths, \
             which do not propagate mounts",
        ));
    }
    let devices = config
        .devices
        .iter()
        .enumerate()
        .map(|(i, d)| {
            for (name, path) in [
                ("container_path", &d.container_path),
                ("host_path", &d.host_path),
            ] {
                if !path.starts_with('/') {
                    return Err(invalid(
                        format!("devices[{i}].{name}"),
                        format!("{path:?} is not an absolute path"),
                    ));
                }
            }
            Ok(Device {
                host_path: d.host_path.clone().into(),
                container_path: d.container_path.clone().into(),
                permissions: if d.permissions.is_empty() {
                    "rwm".into()
                } else {
                    d.permissions.clone()
                },
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let env = config
        .envs
        .iter()
        .enumerate()
        .map(|(i, kv)| {
            if kv.key.is_empty() || kv.key.contains(['=', '\0']) {
                Err(invalid(
                    format!("envs[{i}].key"),
                    format!("{:?} is not a variable name", kv.key),
                ))
            } else if kv.value.contains(&0) {
                Err(invalid(format!("envs[{i}].value"), "contains a NUL byte"))
            } else {
                // The proto says bytes (cri-api v0.33+); the OCI spec's
                // environment is JSON strings.
                let value = String::from_utf8(kv.value.clone())
                    .map_err(|_| invalid(format!("envs[{i}].value"), "is not valid UTF-8"))?;
                Ok((kv.key.clone(), value))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let resources = resources(linux.and_then(|l| l.resources.as_ref()))?;
    let log_path = log_path(&pod.log_directory, &config.log_path)?;
    let cgroups_path = cgroups_path(&pod.cgroup_parent, &options.container_id);

    Ok(CriContainer {
        spec: ContainerSpec {
            rootfs: PathBuf::new(),
            readonly_rootfs: sc.readonly_rootfs,
            image: image.clone(),
            command: config.command.clone(),
            args: config.args.clone(),
            env,
            working_dir: config.working_dir.clone(),
            user,
            tty: config.tty,
            stdin: config.stdin,
            hostname: pod.hostname.clone(),
            namespaces,
            user_namespace,
            pod_files: pod.files.clone(),
            mounts,
            devices,
            privileged: sc.privileged,
            capabilities: Some(capabilities),
            no_new_privs: sc.no_new_privs,
            seccomp,
            apparmor_profile,
            // As given: the kubelet sends its default lists, and empty ones
            // for an unmasked /proc.
            masked_paths: Some(sc.masked_paths.clone()),
            readonly_paths: Some(sc.readonly_paths.clone()),
            sysctls: pod.sysctls.clone(),
            resources,
            cgroups_path,
            annotations: config
                .annotations
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        },
        log_path,
        stdin_once: config.stdin_once,
    })
}

/// `CAP_` + upper case, as CRI-O normalises names.
fn normalize_capability(name: &str) -> String {
    let upper = name.to_ascii_uppercase();
    if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    }
}

/// The capability sets for `caps` over `defaults`, as CRI-O: `ALL` in
/// `add_capabilities` grants every capability, `ALL` in `drop_capabilities`
/// starts from none (the defaults too) so that only the named adds remain;
/// otherwise the defaults plus the adds, minus the drops.
pub fn capability_sets(
    defaults: &[String],
    caps: Option<&cri::Capability>,
) -> Result<CapabilitySets, RequestError> {
    let known = |field: &str, name: &str| -> Result<String, RequestError> {
        let cap = normalize_capability(name);
        if ALL_CAPABILITIES.contains(&cap.as_str()) {
            Ok(cap)
        } else {
            Err(invalid(
                format!("{SC}.capabilities.{field}"),
                format!("unknown capability {name:?}"),
            ))
        }
    };
    let is_all = |name: &String| name.eq_ignore_ascii_case("ALL");
    let mut granted: Vec<String> = Vec::new();
    let grant = |set: &mut Vec<String>, cap: String| {
        if !set.contains(&cap) {
            set.push(cap);
        }
    };
    let empty = cri::Capability::default();
    let caps = caps.unwrap_or(&empty);
    let (add_all, drop_all) = (
        caps.add_capabilities.iter().any(is_all),
        caps.drop_capabilities.iter().any(is_all),
    );
    if !add_all && !drop_all {
        for name in defaults {
            grant(&mut granted, known("default", name)?);
        }
    }
    if add_all {
        for cap in ALL_CAPABILITIES {
            grant(&mut granted, cap.to_string());
        }
    }
    if drop_all {
        granted.clear();
    }
    for name in caps.add_capabilities.iter().filter(|n| !is_all(n)) {
        grant(&mut granted, known("add_capabilities", name)?);
    }
    for name in caps.drop_capabilities.iter().filter(|n| !is_all(n)) {
        let cap = known("drop_capabilities", name)?;
        granted.retain(|c| *c != cap);
    }
    let mut ambient = Vec::new();
    for name in &caps.add_ambient_capabilities {
        let cap = known("add_ambient_capabilities", name)?;
        // The kernel keeps an ambient capability only if it is permitted.
        grant(&mut granted, cap.clone());
        grant(&mut ambient, cap);
    }
    Ok(CapabilitySets { granted, ambient })
}

fn seccomp_profile(
    sc: &cri::LinuxContainerSecurityContext,
    default: DefaultSeccomp,
    capabilities: &[String],
) -> Result<SeccompProfile, RequestError> {
    let localhost = |field: &str, path: &str| -> Result<SeccompProfile, RequestError> {
        if !path.starts_with('/') {
            return Err(invalid(
                field,
                format!("localhost profile {path:?} is not an absolute path"),
            ));
        }
        seccomp::load_localhost(Path::new(path), capabilities)
            .map(|filter| SeccompProfile::Localhost(Box::new(filter)))
            .map_err(|e| invalid(field, e.to_string()))
    };
    if let Some(profile) = &sc.seccomp {
        let field = format!("{SC}.seccomp");
        return match cri::security_profile::ProfileType::try_from(profile.profile_type) {
            Ok(cri::security_profile::ProfileType::RuntimeDefault) => {
                Ok(SeccompProfile::RuntimeDefault)
            }
            Ok(cri::security_profile::ProfileType::Unconfined) => Ok(SeccompProfile::Unconfined),
            Ok(cri::security_profile::ProfileType::Localhost) => {
                localhost(&format!("{field}.localhost_ref"), &profile.localhost_ref)
            }
            Err(_) => Err(invalid(
                format!("{field}.profile_type"),
                format!("unknown profile type {}", profile.profile_type),
            )),
        };
    }
    #[allow(deprecated)]
    let path = sc.seccomp_profile_path.as_str();
    let field = format!("{SC}.seccomp_profile_path");
    match path {
        "" => Ok(match default {
            DefaultSeccomp::RuntimeDefault => SeccompProfile::RuntimeDefault,
            DefaultSeccomp::Unconfined => SeccompProfile::Unconfined,
        }),
        "runtime/default" | "docker/default" => Ok(SeccompProfile::RuntimeDefault),
        "unconfined" => Ok(SeccompProfile::Unconfined),
        _ => match path.strip_prefix("localhost/") {
            Some(file) => localhost(&field, file),
            None => Err(invalid(field, format!("unknown profile {path:?}"))),
        },
    }
}

/// The AppArmor profile for the OCI spec, from the typed `apparmor` field
/// or else the deprecated `apparmor_profile` string (the kubelet sends
/// both). Privileged containers run unconfined unless they name a Localhost
/// profile (containerd's rule; CRI-O ignores even that, which would drop a
/// confinement asked for without a word).
fn apparmor_profile(
    sc: &cri::LinuxContainerSecurityContext,
    host: Option<&AppArmor>,
) -> Result<Option<String>, RequestError> {
    use cri::security_profile::ProfileType;
    let typed = format!("{SC}.apparmor");
    #[allow(deprecated)]
    let (field, request) = match &sc.apparmor {
        Some(p) => match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::RuntimeDefault) => (typed, Request::RuntimeDefault),
            Ok(ProfileType::Unconfined) => (typed, Request::Unconfined),
            Ok(ProfileType::Localhost) => (
                format!("{typed}.localhost_ref"),
                Request::Localhost(p.localhost_ref.clone()),
            ),
            Err(_) => {
                return Err(invalid(
                    format!("{typed}.profile_type"),
                    format!("unknown profile type {}", p.profile_type),
                ));
            }
        },
        None => {
            let field = format!("{SC}.apparmor_profile");
            match sc.apparmor_profile.as_str() {
                "" | "runtime/default" => (field, Request::RuntimeDefault),
                "unconfined" => (field, Request::Unconfined),
                other => match other.strip_prefix("localhost/") {
                    Some(name) => (field, Request::Localhost(name.to_string())),
                    None => return Err(invalid(field, format!("unknown profile {other:?}"))),
                },
            }
        }
    };
    let request = match request {
        Request::Localhost(name) => {
            let name = name.strip_prefix("localhost/").unwrap_or(&name);
            if name.is_empty() {
                return Err(invalid(field, "a Localhost profile needs a name"));
            }
            Request::Localhost(name.to_string())
        }
        Request::RuntimeDefault if sc.privileged => Request::Unconfined,
        other => other,
    };
    let Some(host) = host else {
        // Without AppArmor the runtime's default confinement is none.
        return match request {
            Request::Localhost(name) => Err(unsupported(
                field,
                format!(
                    "AppArmor profile {name:?} needs AppArmor, which this host does not have enabled"
                ),
            )),
            _ => Ok(None),
        };
    };
    host.profile_for(&request).map_err(|err| match err {
        AppArmorError::NotLoaded { .. } => invalid(field, err.to_string()),
        _ => RequestError::Host {
            field,
            reason: err.to_string(),
        },
    })
}

fn id(field: &str, value: i64) -> Result<u32, RequestError> {
    u32::try_from(value).map_err(|_| invalid(field, format!("{value} is not a valid id")))
}

fn user_request(sc: &cri::LinuxContainerSecurityContext) -> Result<UserRequest, RequestError> {
    let run_as_user = sc
        .run_as_user
        .as_ref()
        .map(|v| id(&format!("{SC}.run_as_user"), v.value))
        .transpose()?;
    let run_as_group = sc
        .run_as_group
        .as_ref()
        .map(|v| id(&format!("{SC}.run_as_group"), v.value))
        .transpose()?;
    if run_as_group.is_some() && run_as_user.is_none() && sc.run_as_username.is_empty() {
        return Err(invalid(
            format!("{SC}.run_as_group"),
            "set without run_as_user or run_as_username",
        ));
    }
    let supplemental_groups = sc
        .supplemental_groups
        .iter()
        .enumerate()
        .map(|(i, g)| id(&format!("{SC}.supplemental_groups[{i}]"), *g))
        .collect::<Result<Vec<_>, _>>()?;
    let strict = match cri::SupplementalGroupsPolicy::try_from(sc.supplemental_groups_policy) {
        Ok(cri::SupplementalGroupsPolicy::Merge) => false,
        Ok(cri::SupplementalGroupsPolicy::Strict) => true,
        Err(_) => {
            return Err(invalid(
                format!("{SC}.supplemental_groups_policy"),
                format!("unknown policy {}", sc.supplemental_groups_policy),
            ));
        }
    };
    Ok(UserRequest {
        run_as_user,
        run_as_username: Some(sc.run_as_username.clone()).filter(|n| !n.is_empty()),
        run_as_group,
        supplemental_groups,
        strict_supplemental_groups: strict,
    })
}

/// The container joins its pod's user namespace, whatever it is; its own
/// `userns_options` (the kubelet repeats the pod's) must agree.
fn user_namespace(
    sc: &cri::LinuxContainerSecurityContext,
    pod: &PodFacts,
    options: &Options,
) -> Result<Option<UserNamespace>, RequestError> {
    use cri::NamespaceMode;
    let field = format!("{SC}.namespace_options.userns_options");
    if let Some(userns) = sc
        .namespace_options
        .as_ref()
        .and_then(|n| n.userns_options.as_ref())
    {
        match (NamespaceMode::try_from(userns.mode), &pod.user) {
            (Ok(NamespaceMode::Pod), Some(_)) | (Ok(NamespaceMode::Node), None) => {}
            (Ok(NamespaceMode::Pod), None) => {
                return Err(invalid(
                    format!("{field}.mode"),
                    "POD, but the pod sandbox has no user namespace of its own",
                ));
            }
            (Ok(NamespaceMode::Node), Some(_)) => {
                return Err(invalid(
                    format!("{field}.mode"),
                    "NODE, but the pod sandbox has its own user namespace, which its containers share",
                ));
            }
            (Ok(mode), _) => {
                return Err(invalid(
                    format!("{field}.mode"),
                    format!(
                        "user namespace mode {} is not supported (only POD and NODE)",
                        mode.as_str_name()
                    ),
                ));
            }
            (Err(_), _) => {
                return Err(invalid(
                    format!("{field}.mode"),
                    format!("unknown mode {}", userns.mode),
                ));
            }
        }
    }
    if pod.user.is_some() && !options.features.user_namespaces {
        return Err(unsupported(
            field,
            "the runtime handler cannot run containers in a user namespace on this host",
        ));
    }
    Ok(pod.user.clone())
}

fn namespaces(
    sc: &cri::LinuxContainerSecurityContext,
    pod: &PodFacts,
    options: &Options,
) -> Result<Namespaces, RequestError> {
    use cri::NamespaceMode;
    let default_ns = cri::NamespaceOption::default();
    let ns = sc.namespace_options.as_ref().unwrap_or(&default_ns);
    let field = format!("{SC}.namespace_options");
    let pid = match NamespaceMode::try_from(ns.pid) {
        Ok(NamespaceMode::Container) => Namespace::New,
        Ok(NamespaceMode::Node) => Namespace::Host,
        Ok(NamespaceMode::Pod) => pod.pid.clone().ok_or_else(|| {
            invalid(
                format!("{field}.pid"),
                "POD, but the pod sandbox has no shared PID namespace",
            )
        })?,
        Ok(NamespaceMode::Target) => {
            if ns.target_id.is_empty() {
                return Err(invalid(
                    format!("{field}.target_id"),
                    "required with PID namespace mode TARGET",
                ));
            }
            Namespace::Path(options.target_pid_namespace.clone().ok_or_else(|| {
                invalid(
                    format!("{field}.target_id"),
                    format!(
                        "no running container {:?} to share a PID namespace with",
                        ns.target_id
                    ),
                )
            })?)
        }
        Err(_) => {
            return Err(invalid(
                format!("{field}.pid"),
                format!("unknown mode {}", ns.pid),
            ));
        }
    };
    Ok(Namespaces {
        // A container lives in its pod's network, IPC and UTS namespaces
        // whatever it asks, as in CRI-O.
        network: pod.network.clone(),
        ipc: pod.ipc.clone(),
        uts: pod.uts.clone(),
        pid,
        cgroup: if options.cgroup_namespace && !sc.privileged {
            Namespace::New
        } else {
            Namespace::Host
        },
    })
}

/// An image volume (KEP-4639): the image's rootfs, or a sub-directory of
/// it, read-only.
fn image_mount(
    i: usize,
    m: &cri::Mount,
    options: &Options,
    user_namespace: bool,
) -> Result<BindMount, RequestError> {
    let field = |name: &str| format!("mounts[{i}].{name}");
    if !m.container_path.starts_with('/') || has_parent_dir(&m.container_path) {
        return Err(invalid(
            field("container_path"),
            format!(
                "{:?} is not an absolute path without \"..\"",
                m.container_path
            ),
        ));
    }
    if !m.readonly {
        return Err(invalid(
            field("readonly"),
            "an image volume is read-only: readonly must be set",
        ));
    }
    let sub = &m.image_sub_path;
    if sub.starts_with('/') || has_parent_dir(sub) {
        return Err(invalid(
            field("image_sub_path"),
            format!("{sub:?} is not a relative path without \"..\""),
        ));
    }
    if user_namespace {
        return Err(unsupported(
            field("image"),
            "image volumes in a pod with its own user namespace",
        ));
    }
    let volume = options
        .image_volumes
        .get(&i)
        .ok_or_else(|| invalid(field("image"), "the image was not looked up in the store"))?;
    Ok(BindMount {
        container_path: m.container_path.clone().into(),
        host_path: PathBuf::new(),
        readonly: true,
        recursive_readonly: false,
        propagation: Propagation::Private,
        image: Some(ImageVolume {
            sub_path: sub.into(),
            ..volume.clone()
        }),
    })
}

fn mounts(
    requested: &[cri::Mount],
    options: &Options,
    user_namespace: bool,
) -> Result<Vec<BindMount>, RequestError> {
    let mut out = Vec::new();
    for (i, m) in requested.iter().enumerate() {
        let field = |name: &str| format!("mounts[{i}].{name}");
        if m.image.as_ref().is_some_and(|i| !i.image.is_empty()) {
            out.push(image_mount(i, m, options, user_namespace)?);
            continue;
        }
        if !m.image_sub_path.is_empty() {
            return Err(invalid(field("image_sub_path"), "set without an image"));
        }
        for (name, path) in [
            ("container_path", &m.container_path),
            ("host_path", &m.host_path),
        ] {
            if !path.starts_with('/') {
                return Err(invalid(
                    field(name),
                    format!("{path:?} is not an absolute path"),
                ));
            }
            // As the Kubernetes API refuses in a hostPath: a `..` hides
            // where the path leads.
            if has_parent_dir(path) {
                return Err(invalid(field(name), format!("{path:?} contains \"..\"")));
            }
        }
        if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
            return Err(unsupported(
                field("uid_mappings"),
                "id-mapped mounts need a runtime that can make them",
            ));
        }
        let propagation = match cri::MountPropagation::try_from(m.propagation) {
            Ok(cri::MountPropagation::PropagationPrivate) => Propagation::Private,
            Ok(cri::MountPropagation::PropagationHostToContainer) => Propagation::HostToContainer,
            Ok(cri::MountPropagation::PropagationBidirectional) => Propagation::Bidirectional,
            Err(_) => {
                return Err(invalid(
                    field("propagation"),
                    format!("unknown propagation {}", m.propagation),
                ));
            }
        };
        if m.recursive_read_only {
            if !m.readonly {
                return Err(invalid(
                    field("recursive_read_only"),
                    "needs readonly to be set too",
                ));
            }
            if propagation != Propagation::Private {
                return Err(invalid(
                    field("recursive_read_only"),
                    "needs private propagation",
                ));
            }
            if !options.features.recursive_read_only_mounts {
                return Err(unsupported(
                    field("recursive_read_only"),
                    "recursive read-only mounts need kernel 5.12+ and a runtime with the rro mount option",
                ));
            }
        }
        // selinux_relabel: this runtime applies no SELinux labels, so there
        // is nothing to relabel.
        out.push(BindMount {
            container_path: m.container_path.clone().into(),
            host_path: m.host_path.clone().into(),
            readonly: m.readonly,
            recursive_readonly: m.recursive_read_only,
            propagation,
            image: None,
        });
    }
    Ok(out)
}

fn resources(r: Option<&cri::LinuxContainerResources>) -> Result<Resources, RequestError> {
    let Some(r) = r else {
        return Ok(Resources::default());
    };
    crate::resources::check(r, &Host::probe(), Mode::Create)
        .map_err(|e| invalid(format!("linux.resources.{}", e.field), e.message))
}

fn has_parent_dir(path: &str) -> bool {
    Path::new(path)
        .components()
        .any(|c| matches!(c, Component::ParentDir))
}

/// The container's log file under the pod's log directory. The kubelet
/// sends `<name>/<attempt>.log`; an absolute path or a `..` would let a CRI
/// client have the shim (root) write any host file.
fn log_path(directory: &Path, path: &str) -> Result<Option<PathBuf>, RequestError> {
    if path.is_empty() {
        return Ok(None);
    }
    if path.starts_with('/') {
        return Err(invalid(
            "log_path",
            format!("{path:?} is absolute: it must be relative to the pod's log_directory"),
        ));
    }
    if has_parent_dir(path) {
        return Err(invalid(
            "log_path",
            format!("{path:?} leaves the pod's log directory"),
        ));
    }
    Ok(Some(directory.join(path)))
}

/// An exec's arguments are C strings for execve(2): a NUL byte is refused
/// naming the argument instead of failing inside the runtime.
pub fn exec_command(cmd: &[String]) -> Result<(), RequestError> {
    match cmd.iter().position(|a| a.contains('\0')) {
        Some(i) => Err(invalid(format!("cmd[{i}]"), "contains a NUL byte")),
        None => Ok(()),
    }
}

/// The OCI `cgroupsPath` of a container in the pod's cgroup parent, in
/// the driver's form (`<parent>/<id>`, or runc's `<slice>:berth:<id>`).
fn cgroups_path(parent: &Path, id: &str) -> PathBuf {
    PathBuf::from(berth_host::cgroup::oci_cgroups_path(
        &parent.to_string_lossy(),
        id,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_sandbox::spec::{MAX_METADATA_BYTES, MAX_NAME_BYTES};

    fn pod() -> PodFacts {
        PodFacts {
            network: Namespace::Path("/run/netns/p".into()),
            ipc: Namespace::Path("/run/ipcns/p".into()),
            uts: Namespace::Path("/run/utsns/p".into()),
            pid: Some(Namespace::Path("/proc/1/ns/pid".into())),
            user: None,
            cgroup_parent: "/berth/pod".into(),
            files: PodFiles::default(),
            hostname: "h".into(),
            sysctls: BTreeMap::new(),
            privileged: false,
            log_directory: "/var/log/pods/x".into(),
        }
    }

    fn with_sc(sc: cri::LinuxContainerSecurityContext) -> cri::ContainerConfig {
        cri::ContainerConfig {
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(sc),
                resources: None,
            }),
            ..Default::default()
        }
    }

    fn run(config: &cri::ContainerConfig) -> Result<CriContainer, RequestError> {
        convert(config, &ImageConfig::default(), &pod(), &Options::new("c1"))
    }

    fn err(config: &cri::ContainerConfig) -> String {
        run(config).unwrap_err().to_string()
    }

    fn caps(add: &[&str], drop: &[&str], ambient: &[&str]) -> Result<CapabilitySets, RequestError> {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        capability_sets(
            &Options::new("x").default_capabilities,
            Some(&cri::Capability {
                add_capabilities: s(add),
                drop_capabilities: s(drop),
                add_ambient_capabilities: s(ambient),
            }),
        )
    }

    #[test]
    fn capabilities_follow_crio() {
        let default = caps(&[], &[], &[]).unwrap();
        assert_eq!(default.granted.len(), 9);
        assert!(default.granted.contains(&"CAP_CHOWN".to_string()));
        let c = caps(&["net_admin"], &["CHOWN", "CAP_KILL"], &[]).unwrap();
        assert!(c.granted.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!c.granted.contains(&"CAP_CHOWN".to_string()));
        assert_eq!(c.granted.len(), 8);
        let c = caps(&["NET_RAW"], &["all"], &[]).unwrap();
        assert_eq!(c.granted, ["CAP_NET_RAW"]);
        let c = caps(&["ALL"], &["CAP_CHOWN"], &[]).unwrap();
        assert_eq!(c.granted.len(), ALL_CAPABILITIES.len() - 1);
        let c = caps(&[], &["ALL"], &["NET_BIND_SERVICE"]).unwrap();
        assert_eq!(c.granted, ["CAP_NET_BIND_SERVICE"]);
        assert_eq!(c.ambient, ["CAP_NET_BIND_SERVICE"]);
        let e = caps(&["CAP_NOPE"], &[], &[]).unwrap_err().to_string();
        assert!(
            e.contains("capabilities.add_capabilities") && e.contains("CAP_NOPE"),
            "{e}"
        );
        let e = caps(&[], &["nope"], &[]).unwrap_err().to_string();
        assert!(e.contains("drop_capabilities"), "{e}");
    }

    #[test]
    fn seccomp_profiles_and_their_defaults() {
        let profile = |sc| run(&with_sc(sc)).map(|c| c.spec.seccomp);
        // Unset means unconfined, as the CRI says ...
        assert_eq!(profile(Default::default()), Ok(SeccompProfile::Unconfined));
        // ... unless the config's seccomp_use_default_when_empty says otherwise.
        let mut options = Options::new("c");
        options.default_seccomp = DefaultSeccomp::RuntimeDefault;
        let c = convert(
            &with_sc(Default::default()),
            &ImageConfig::default(),
            &pod(),
            &options,
        )
        .unwrap();
        assert_eq!(c.spec.seccomp, SeccompProfile::RuntimeDefault);
        #[allow(deprecated)]
        let deprecated = |path: &str| cri::LinuxContainerSecurityContext {
            seccomp_profile_path: path.into(),
            ..Default::default()
        };
        assert_eq!(
            profile(deprecated("unconfined")),
            Ok(SeccompProfile::Unconfined)
        );
        assert_eq!(
            profile(deprecated("runtime/default")),
            Ok(SeccompProfile::RuntimeDefault)
        );
        let e = err(&with_sc(deprecated("localhost//no/such.json")));
        assert!(
            e.contains("seccomp_profile_path") && e.contains("/no/such.json"),
            "{e}"
        );
        let typed = |t: i32, r: &str| cri::LinuxContainerSecurityContext {
            seccomp: Some(cri::SecurityProfile {
                profile_type: t,
                localhost_ref: r.into(),
            }),
            ..Default::default()
        };
        assert_eq!(profile(typed(1, "")), Ok(SeccompProfile::Unconfined));
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{not json").unwrap();
        let e = err(&with_sc(typed(2, bad.to_str().unwrap())));
        assert!(
            e.contains("seccomp.localhost_ref") && e.contains("bad.json"),
            "{e}"
        );
        let good = dir.path().join("good.json");
        std::fs::write(&good, r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#).unwrap();
        assert!(matches!(
            profile(typed(2, good.to_str().unwrap())),
            Ok(SeccompProfile::Localhost(_))
        ));
        assert!(err(&with_sc(typed(7, ""))).contains("seccomp.profile_type"));
    }

    #[test]
    fn apparmor_without_apparmor() {
        let typed = |t: i32| cri::LinuxContainerSecurityContext {
            apparmor: Some(cri::SecurityProfile {
                profile_type: t,
                localhost_ref: "my-profile".into(),
            }),
            ..Default::default()
        };
        assert_eq!(run(&with_sc(typed(1))).unwrap().spec.apparmor_profile, None);
        assert_eq!(run(&with_sc(typed(0))).unwrap().spec.apparmor_profile, None);
        let e = run(&with_sc(typed(2))).unwrap_err();
        assert!(matches!(e, RequestError::Unsupported { .. }));
        assert!(
            e.to_string().contains("linux.security_context.apparmor")
                && e.to_string().contains("my-profile")
        );
    }

    #[test]
    fn apparmor_on_an_apparmor_host() {
        use berth_runtime::apparmor::DEFAULT_PROFILE;
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("profiles");
        std::fs::write(&list, "berth-default (enforce)\nmy-profile (enforce)\n").unwrap();
        // Everything asked for is loaded: the parser is never needed.
        let host = AppArmor::with_paths(&list, "/no/such/apparmor_parser");
        let convert_with = |sc: cri::LinuxContainerSecurityContext, host: &AppArmor| {
            let pod = PodFacts {
                privileged: sc.privileged,
                ..pod()
            };
            let mut options = Options::new("c1");
            options.apparmor = Some(host.clone());
            convert(&with_sc(sc), &ImageConfig::default(), &pod, &options)
                .map(|c| c.spec.apparmor_profile)
        };
        let typed = |t: i32, r: &str, privileged: bool| cri::LinuxContainerSecurityContext {
            apparmor: Some(cri::SecurityProfile {
                profile_type: t,
                localhost_ref: r.into(),
            }),
            privileged,
            ..Default::default()
        };
        #[allow(deprecated)]
        let deprecated = |p: &str| cri::LinuxContainerSecurityContext {
            apparmor_profile: p.into(),
            ..Default::default()
        };
        let default = Ok(Some(DEFAULT_PROFILE.to_string()));
        // No profile at all, RuntimeDefault in either form: berth-default.
        assert_eq!(convert_with(Default::default(), &host), default);
        assert_eq!(convert_with(typed(0, "", false), &host), default);
        assert_eq!(convert_with(deprecated("runtime/default"), &host), default);
        // Unconfined in either form.
        assert_eq!(convert_with(typed(1, "", false), &host), Ok(None));
        assert_eq!(convert_with(deprecated("unconfined"), &host), Ok(None));
        // Localhost: by name, with or without the prefix, if loaded.
        let mine = Ok(Some("my-profile".to_string()));
        assert_eq!(convert_with(typed(2, "my-profile", false), &host), mine);
        assert_eq!(
            convert_with(typed(2, "localhost/my-profile", false), &host),
            mine
        );
        assert_eq!(
            convert_with(deprecated("localhost/my-profile"), &host),
            mine
        );
        // Privileged: unconfined unless a Localhost profile is named.
        assert_eq!(convert_with(typed(0, "", true), &host), Ok(None));
        let privileged = cri::LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        };
        assert_eq!(convert_with(privileged, &host), Ok(None));
        assert_eq!(convert_with(typed(2, "my-profile", true), &host), mine);

        // A Localhost profile the kernel does not have: INVALID_ARGUMENT
        // naming the field and the profile, in either form.
        let e = convert_with(typed(2, "not-loaded", false), &host).unwrap_err();
        assert!(matches!(e, RequestError::Invalid { .. }), "{e:?}");
        let e = e.to_string();
        assert!(
            e.starts_with("linux.security_context.apparmor.localhost_ref: ")
                && e.contains("\"not-loaded\""),
            "{e}"
        );
        let e = convert_with(deprecated("localhost/not-loaded"), &host)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("linux.security_context.apparmor_profile: ") && e.contains("not-loaded"),
            "{e}"
        );
        let e = convert_with(typed(2, "", false), &host)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("apparmor.localhost_ref") && e.contains("needs a name"),
            "{e}"
        );
        let e = convert_with(deprecated("bogus"), &host)
            .unwrap_err()
            .to_string();
        assert!(e.contains("apparmor_profile") && e.contains("bogus"), "{e}");
        let e = convert_with(typed(9, "", false), &host)
            .unwrap_err()
            .to_string();
        assert!(e.contains("apparmor.profile_type"), "{e}");

        // berth-default missing and the parser failing: a host error (the
        // server answers INTERNAL) naming the field, the profile and the parser.
        std::fs::write(&list, "my-profile (enforce)\n").unwrap();
        let e = convert_with(Default::default(), &host).unwrap_err();
        assert!(matches!(e, RequestError::Host { .. }), "{e:?}");
        let e = e.to_string();
        assert!(
            e.starts_with("linux.security_context.apparmor_profile: ")
                && e.contains("berth-default")
                && e.contains("/no/such/apparmor_parser"),
            "{e}"
        );
        // Unconfined needs nothing from the host.
        assert_eq!(convert_with(typed(1, "", false), &host), Ok(None));
    }

    #[test]
    fn cgroup_namespace_on_v2_hosts_for_unprivileged_containers() {
        let run_with = |privileged: bool, cgroup_namespace: bool| {
            let pod = PodFacts {
                privileged: true,
                ..pod()
            };
            let mut options = Options::new("c1");
            options.cgroup_namespace = cgroup_namespace;
            let sc = cri::LinuxContainerSecurityContext {
                privileged,
                ..Default::default()
            };
            convert(&with_sc(sc), &ImageConfig::default(), &pod, &options)
                .unwrap()
                .spec
                .namespaces
                .cgroup
        };
        assert_eq!(run_with(false, true), Namespace::New);
        // As containerd: privileged containers see the host's tree.
        assert_eq!(run_with(true, true), Namespace::Host);
        assert_eq!(run_with(false, false), Namespace::Host);
    }

    #[test]
    fn users_groups_and_privilege() {
        let sc = cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 1000 }),
            run_as_group: Some(cri::Int64Value { value: 2000 }),
            supplemental_groups: vec![3000],
            supplemental_groups_policy: 1,
            ..Default::default()
        };
        let user = run(&with_sc(sc)).unwrap().spec.user;
        assert_eq!(
            user,
            UserRequest {
                run_as_user: Some(1000),
                run_as_username: None,
                run_as_group: Some(2000),
                supplemental_groups: vec![3000],
                strict_supplemental_groups: true,
            }
        );
        let e = err(&with_sc(cri::LinuxContainerSecurityContext {
            run_as_group: Some(cri::Int64Value { value: 1 }),
            ..Default::default()
        }));
        assert!(e.contains("run_as_group"), "{e}");
        let e = err(&with_sc(cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: -1 }),
            ..Default::default()
        }));
        assert!(e.contains("run_as_user"), "{e}");
        let e = err(&with_sc(cri::LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        }));
        assert!(e.contains("privileged"), "{e}");
    }

    #[test]
    fn pid_and_user_namespaces() {
        let ns = |pid: i32, target: &str, userns: Option<i32>| {
            with_sc(cri::LinuxContainerSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid,
                    target_id: target.into(),
                    userns_options: userns.map(|mode| cri::UserNamespace {
                        mode,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
        };
        let pid = |c: &cri::ContainerConfig| run(c).map(|c| c.spec.namespaces.pid);
        assert_eq!(
            pid(&ns(0, "", None)),
            Ok(Namespace::Path("/proc/1/ns/pid".into()))
        );
        assert_eq!(pid(&ns(1, "", None)), Ok(Namespace::New));
        assert_eq!(pid(&ns(2, "", Some(2))), Ok(Namespace::Host));
        assert!(err(&ns(3, "", None)).contains("target_id"));
        assert!(err(&ns(3, "abc", None)).contains("\"abc\""));
        let mut options = Options::new("c");
        options.target_pid_namespace = Some("/proc/42/ns/pid".into());
        let c = convert(
            &ns(3, "abc", None),
            &ImageConfig::default(),
            &pod(),
            &options,
        )
        .unwrap();
        assert_eq!(
            c.spec.namespaces.pid,
            Namespace::Path("/proc/42/ns/pid".into())
        );
        let e = run(&ns(1, "", Some(0))).unwrap_err();
        assert!(matches!(e, RequestError::Invalid { .. }), "{e}");
        assert!(e.to_string().contains("userns_options.mode"), "{e}");
        // A pod with its own user namespace: every container joins it.
        let mut userns_pod = pod();
        userns_pod.user = Some(UserNamespace {
            path: "/run/berth/ns/user/p".into(),
            uid_mappings: vec![berth_runtime::spec::IdMap {
                host_id: 100000,
                container_id: 0,
                size: 65536,
            }],
            gid_mappings: Vec::new(),
        });
        let mut options = Options::new("c");
        let convert_in = |c: &cri::ContainerConfig, options: &Options| {
            convert(c, &ImageConfig::default(), &userns_pod, options)
        };
        let e = convert_in(&ns(1, "", Some(0)), &options).unwrap_err();
        assert!(matches!(e, RequestError::Unsupported { .. }), "{e}");
        options.features.user_namespaces = true;
        for config in [ns(1, "", Some(0)), ns(1, "", None)] {
            let c = convert_in(&config, &options).unwrap();
            assert_eq!(c.spec.user_namespace, userns_pod.user);
        }
        for (mode, words) in [(2, "NODE, but"), (3, "TARGET is not supported")] {
            let e = convert_in(&ns(1, "", Some(mode)), &options).unwrap_err();
            assert!(
                e.to_string().contains("userns_options.mode") && e.to_string().contains(words),
                "{e}"
            );
        }
        let mounted = |propagation| cri::ContainerConfig {
            mounts: vec![cri::Mount {
                container_path: "/data".into(),
                host_path: "/srv".into(),
                propagation,
                ..Default::default()
            }],
            ..ns(1, "", Some(0))
        };
        assert!(convert_in(&mounted(0), &options).is_ok());
        let e = convert_in(&mounted(1), &options).unwrap_err();
        assert!(e.to_string().starts_with("mounts[0].propagation"), "{e}");
        let mut no_pid = pod();
        no_pid.pid = None;
        let e = convert(
            &ns(0, "", None),
            &ImageConfig::default(),
            &no_pid,
            &Options::new("c"),
        );
        assert!(e.unwrap_err().to_string().contains("namespace_options.pid"));
    }

    #[test]
    fn sysctls_hostname_and_privilege_come_from_the_pod_record() {
        let mut pod = pod();
        pod.sysctls = [("kernel.domainname".to_string(), "example".to_string())].into();
        let c = convert(
            &cri::ContainerConfig::default(),
            &ImageConfig::default(),
            &pod,
            &Options::new("c"),
        )
        .unwrap();
        assert_eq!(c.spec.sysctls, pod.sysctls);
        assert_eq!(c.spec.hostname, "h");
        let privileged = with_sc(cri::LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        });
        let refused = convert(
            &privileged,
            &ImageConfig::default(),
            &pod,
            &Options::new("c"),
        );
        assert!(refused.unwrap_err().to_string().contains("privileged pod"));
        pod.privileged = true;
        let c = convert(
            &privileged,
            &ImageConfig::default(),
            &pod,
            &Options::new("c"),
        )
        .unwrap();
        assert!(c.spec.privileged);
    }

    #[test]
    fn mounts_are_validated() {
        let mount = |m: cri::Mount| cri::ContainerConfig {
            mounts: vec![m],
            ..Default::default()
        };
        let base = cri::Mount {
            container_path: "/data".into(),
            host_path: "/srv".into(),
            readonly: true,
            recursive_read_only: true,
            ..Default::default()
        };
        let e = run(&mount(base.clone())).unwrap_err();
        assert!(matches!(e, RequestError::Unsupported { .. }), "{e}");
        assert!(e.to_string().contains("mounts[0].recursive_read_only"));
        let mut options = Options::new("c");
        options.features.recursive_read_only_mounts = true;
        let c = convert(
            &mount(base.clone()),
            &ImageConfig::default(),
            &pod(),
            &options,
        )
        .unwrap();
        assert!(c.spec.mounts[0].recursive_readonly);
        let e = convert(
            &mount(cri::Mount {
                readonly: false,
                ..base.clone()
            }),
            &ImageConfig::default(),
            &pod(),
            &options,
        );
        assert!(e.unwrap_err().to_string().contains("readonly"));
        let e = err(&mount(cri::Mount {
            host_path: "srv".into(),
            ..base.clone()
        }));
        assert!(e.contains("mounts[0].host_path"), "{e}");
        let e = err(&mount(cri::Mount {
            host_path: String::new(),
            ..base.clone()
        }));
        assert!(e.contains("mounts[0].host_path"), "{e}");
        for (container_path, host_path, field) in [
            ("data", "/srv", "container_path"),
            ("/data/../etc", "/srv", "container_path"),
            ("/data", "/srv/../etc", "host_path"),
        ] {
            let e = err(&mount(cri::Mount {
                container_path: container_path.into(),
                host_path: host_path.into(),
                ..base.clone()
            }));
            assert!(e.starts_with(&format!("mounts[0].{field}:")), "{e}");
        }
        let e = err(&mount(cri::Mount {
            recursive_read_only: false,
            propagation: 2,
            uid_mappings: vec![cri::IdMapping::default()],
            ..base
        }));
        assert!(e.contains("mounts[0].uid_mappings"), "{e}");
    }

    #[test]
    fn the_rest_of_the_request_carries_over() {
        let config = cri::ContainerConfig {
            command: vec!["/bin/sh".into()],
            envs: vec![cri::KeyValue {
                key: "A".into(),
                value: "b".into(),
            }],
            log_path: "c/0.log".into(),
            stdin_once: true,
            ..with_sc(cri::LinuxContainerSecurityContext {
                masked_paths: vec![],
                readonly_paths: vec!["/proc/sys".into()],
                no_new_privs: true,
                ..Default::default()
            })
        };
        let c = run(&config).unwrap();
        assert_eq!(c.log_path, Some("/var/log/pods/x/c/0.log".into()));
        assert!(c.stdin_once);
        assert_eq!(c.spec.env, [("A".to_string(), "b".to_string())]);
        assert_eq!(c.spec.masked_paths, Some(vec![]));
        assert_eq!(c.spec.readonly_paths, Some(vec!["/proc/sys".to_string()]));
        assert_eq!(c.spec.cgroups_path, PathBuf::from("/berth/pod/c1"));
        assert_eq!(c.spec.hostname, "h");
        assert!(c.spec.no_new_privs);
        let e = err(&cri::ContainerConfig {
            log_path: "../escape.log".into(),
            ..Default::default()
        });
        assert!(e.starts_with("log_path"), "{e}");
        let e = err(&cri::ContainerConfig {
            log_path: "/etc/cron.d/evil".into(),
            ..Default::default()
        });
        assert!(e.starts_with("log_path") && e.contains("absolute"), "{e}");
        // A pod without a log directory: the caller joins the relative path
        // to its default one.
        let bare = PodFacts {
            log_directory: PathBuf::new(),
            ..pod()
        };
        let c = convert(
            &cri::ContainerConfig {
                log_path: "c/0.log".into(),
                ..Default::default()
            },
            &ImageConfig::default(),
            &bare,
            &Options::new("c1"),
        )
        .unwrap();
        assert_eq!(c.log_path, Some("c/0.log".into()));
    }

    #[test]
    fn absurd_names_labels_and_annotations_are_refused() {
        let meta = |name: String| cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata { name, attempt: 0 }),
            ..Default::default()
        };
        assert!(run(&meta("a".repeat(MAX_NAME_BYTES))).is_ok());
        let e = err(&meta("a".repeat(MAX_NAME_BYTES + 1)));
        assert!(e.starts_with("metadata.name:"), "{e}");
        let big = "v".repeat(1 << 20);
        let e = err(&cri::ContainerConfig {
            labels: [("app".to_string(), big.clone())].into(),
            ..Default::default()
        });
        assert!(e.starts_with("labels[\"app\"]:"), "{e}");
        let e = err(&cri::ContainerConfig {
            annotations: [("k".to_string(), big)].into(),
            ..Default::default()
        });
        assert!(e.starts_with("annotations[\"k\"]:"), "{e}");
        // Many small entries add up the same way.
        let many = (0..MAX_METADATA_BYTES / 100 + 1)
            .map(|i| (format!("k{i:05}"), "x".repeat(94)))
            .collect();
        let e = err(&cri::ContainerConfig {
            labels: many,
            ..Default::default()
        });
        assert!(e.starts_with("labels[\"k"), "{e}");
    }

    #[test]
    fn nul_bytes_relative_working_dirs_and_tiny_memory_limits_are_refused() {
        let nul = "a\0b".to_string();
        let cases = [
            (
                cri::ContainerConfig {
                    command: vec!["sh".into(), nul.clone()],
                    ..Default::default()
                },
                "command[1]:",
            ),
            (
                cri::ContainerConfig {
                    args: vec![nul.clone()],
                    ..Default::default()
                },
                "args[0]:",
            ),
            (
                cri::ContainerConfig {
                    envs: vec![cri::KeyValue {
                        key: "A".into(),
                        value: nul.clone().into(),
                    }],
                    ..Default::default()
                },
                "envs[0].value:",
            ),
            (
                cri::ContainerConfig {
                    envs: vec![cri::KeyValue {
                        key: nul.clone(),
                        value: "v".into(),
                    }],
                    ..Default::default()
                },
                "envs[0].key:",
            ),
            (
                cri::ContainerConfig {
                    working_dir: "srv".into(),
                    ..Default::default()
                },
                "working_dir:",
            ),
            (
                cri::ContainerConfig {
                    working_dir: format!("/{nul}"),
                    ..Default::default()
                },
                "working_dir:",
            ),
        ];
        for (config, field) in cases {
            let e = err(&config);
            assert!(e.starts_with(field), "{field} {e}");
        }
        let memory = |limit: i64| cri::ContainerConfig {
            linux: Some(cri::LinuxContainerConfig {
                security_context: None,
                resources: Some(cri::LinuxContainerResources {
                    memory_limit_in_bytes: limit,
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        for limit in [1, -1, crate::resources::MIN_MEMORY_LIMIT - 1] {
            let e = err(&memory(limit));
            assert!(
                e.starts_with("linux.resources.memory_limit_in_bytes:"),
                "{e}"
            );
        }
        let ok = run(&memory(crate::resources::MIN_MEMORY_LIMIT)).unwrap();
        assert_eq!(
            ok.spec.resources.memory_limit,
            Some(crate::resources::MIN_MEMORY_LIMIT)
        );
    }
}
