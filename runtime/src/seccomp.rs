//! The `RuntimeDefault` seccomp profile.
//!
//! A deny list rather than Docker's allow list: the syscalls Docker's default
//! profile withholds from a container without extra capabilities, refused
//! with EPERM, plus new user namespaces through `clone`. It is far shorter to
//! carry and to review, and a syscall the kernel adds later is allowed rather
//! than refused (the trade-off Docker's list makes the other way).

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscallBuilder,
};

/// Refused outright.
const DENIED: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "syslog",
    "sysfs",
    "_sysctl",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
];

const CLONE_NEWUSER: u64 = 0x1000_0000;
const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SeccompProfile {
    #[default]
    Unconfined,
    RuntimeDefault,
    /// A profile read from the node ([`load_localhost`]).
    Localhost(Box<LinuxSeccomp>),
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp profile {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("seccomp profile {path} is not a valid profile: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// The filter for `profile`; `None` when unconfined.
pub fn filter(profile: &SeccompProfile) -> Option<LinuxSeccomp> {
    match profile {
        SeccompProfile::Unconfined => None,
        SeccompProfile::Localhost(filter) => Some((**filter).clone()),
        SeccompProfile::RuntimeDefault => Some(runtime_default()),
    }
}

fn runtime_default() -> LinuxSeccomp {
    let errno = |names: &[&str], ret: u32| {
        LinuxSyscallBuilder::default()
            .names(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(ret)
    };
    let syscalls = vec![
        errno(DENIED, EPERM).build().expect("static syscall rule"),
        // clone's flags are its first argument on x86 and arm64.
        errno(&["clone"], EPERM)
            .args(vec![
                LinuxSeccompArgBuilder::default()
                    .index(0usize)
                    .value(CLONE_NEWUSER)
                    .value_two(CLONE_NEWUSER)
                    .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                    .build()
                    .expect("static arg rule"),
            ])
            .build()
            .expect("static syscall rule"),
        // clone3's flags sit behind a pointer seccomp cannot read: make libc
        // fall back to clone, as Docker does.
        errno(&["clone3"], ENOSYS)
            .build()
            .expect("static syscall rule"),
    ];
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(native_arches())
        .syscalls(syscalls)
        .build()
        .expect("static seccomp profile")
}

/// Reads a `Localhost` profile: the OCI form, or the Docker / containers
/// form CRI-O takes (`archMap`, `includes`/`excludes` on capabilities and
/// architectures, evaluated against `capabilities`, the container's
/// bounding set as `CAP_*` names).
pub fn load_localhost(path: &Path, capabilities: &[String]) -> Result<LinuxSeccomp, SeccompError> {
    let text = std::fs::read(path).map_err(|source| SeccompError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |reason: String| SeccompError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let mut value: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| invalid(e.to_string()))?;
    let obj = value
        .as_object_mut()
        .ok_or_else(|| invalid("not a JSON object".into()))?;
    if !obj.contains_key("defaultAction") {
        return Err(invalid("no defaultAction".into()));
    }
    let native = native_arch_name();
    if let Some(arch_map) = obj.remove("archMap")
        && !obj.contains_key("architectures")
    {
        {
            // Only the entry for this machine's architecture matters.
            let mut arches = Vec::new();
            for entry in arch_map.as_array().into_iter().flatten() {
                if entry["architecture"].as_str() == Some(native) {
                    arches.push(entry["architecture"].clone());
                    arches.extend(
                        entry["subArchitectures"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .cloned(),
                    );
                }
            }
            obj.insert("architectures".into(), arches.into());
        }
    }
    if let Some(syscalls) = obj.get_mut("syscalls").and_then(|s| s.as_array_mut()) {
        let applies = |rule: &serde_json::Value, include: bool| {
            let list = |key: &str| -> Vec<&str> {
                rule[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str())
                    .collect()
            };
            let (caps, arches) = (list("caps"), list("arches"));
            if include {
                caps.iter()
                    .all(|c| capabilities.iter().any(|have| have == c))
                    && (arches.is_empty() || arches.contains(&native))
            } else {
                !caps
                    .iter()
                    .any(|c| capabilities.iter().any(|have| have == c))
                    && !arches.contains(&native)
            }
        };
        syscalls
            .retain(|rule| applies(&rule["includes"], true) && applies(&rule["excludes"], false));
        for rule in syscalls.iter_mut() {
            if let Some(rule) = rule.as_object_mut() {
                for key in ["includes", "excludes", "comment"] {
                    rule.remove(key);
                }
                // Old Docker profiles name one syscall per rule.
                if let Some(name) = rule.remove("name") {
                    rule.entry("names").or_insert_with(|| vec![name].into());
                }
            }
        }
    }
    serde_json::from_value(value).map_err(|e| invalid(e.to_string()))
}

/// libseccomp's name of this machine's architecture.
fn native_arch_name() -> &'static str {
    if cfg!(target_arch = "x86_64") {
        "SCMP_ARCH_X86_64"
    } else if cfg!(target_arch = "aarch64") {
        "SCMP_ARCH_AARCH64"
    } else {
        "SCMP_ARCH_NATIVE"
    }
}

/// The native architecture and its compat ones, so 32-bit entry points are
/// filtered too.
fn native_arches() -> Vec<Arch> {
    if cfg!(target_arch = "x86_64") {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, caps: &[&str]) -> Result<LinuxSeccomp, SeccompError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        std::fs::write(&path, text).unwrap();
        let caps: Vec<String> = caps.iter().map(|s| s.to_string()).collect();
        load_localhost(&path, &caps)
    }

    #[test]
    fn localhost_profiles_in_oci_and_docker_form() {
        let oci = load(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
            &[],
        )
        .unwrap();
        assert_eq!(
            oci.syscalls().as_ref().unwrap()[0].names(),
            &["mkdir".to_string()]
        );
        let docker = r#"{
            "defaultAction": "SCMP_ACT_ERRNO",
            "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
                        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
            "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ALLOW", "comment": "", "includes": {}, "excludes": {}},
                {"names": ["reboot"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_BOOT"]}},
                {"name": "write", "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_SYS_ADMIN"]}}
            ]}"#;
        let p = load(docker, &["CAP_CHOWN"]).unwrap();
        let names: Vec<&str> = p
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .map(|s| s.names()[0].as_str())
            .collect();
        assert_eq!(names, ["read", "write"]);
        assert_eq!(p.architectures().as_ref().unwrap().len(), 2);
        let p = load(docker, &["CAP_SYS_BOOT", "CAP_SYS_ADMIN"]).unwrap();
        let names: Vec<&str> = p
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .map(|s| s.names()[0].as_str())
            .collect();
        assert_eq!(names, ["read", "reboot"]);
    }

    #[test]
    fn bad_localhost_profiles_name_the_path() {
        for text in [
            "{",
            "[]",
            r#"{"syscalls":[]}"#,
            r#"{"defaultAction":"SCMP_ACT_NOPE"}"#,
        ] {
            let err = load(text, &[]).unwrap_err().to_string();
            assert!(err.contains("p.json"), "{err}");
        }
        let err = load_localhost(Path::new("/no/such/profile.json"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("/no/such/profile.json"), "{err}");
    }
}
