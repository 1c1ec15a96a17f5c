//! The `RuntimeDefault` seccomp profile, and `Localhost` profiles.
//!
//! RuntimeDefault is an allow list with default EPERM, as CRI-O, containerd
//! and Docker ship: a syscall the kernel adds later is refused until the
//! list names it. The list is data (`seccomp/default.profile`, in a compact
//! format of our own described at its top), evaluated against the
//! container's capabilities and this machine's architecture.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

const DEFAULT_PROFILE: &str = include_str!("seccomp/default.profile");

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// One rule of the default profile.
#[derive(Debug)]
struct Rule {
    conditions: Vec<Condition>,
    /// Refuse with this errno; `None`: allow.
    errno: Option<u32>,
    args: Vec<LinuxSeccompArg>,
    names: Vec<String>,
}

#[derive(Debug)]
enum Condition {
    Cap(String),
    NoCap(String),
    Arch(Vec<String>),
}

impl Rule {
    fn applies(&self, capabilities: &[String]) -> bool {
        let holds = |cap: &String| capabilities.iter().any(|have| have == cap);
        self.conditions.iter().all(|c| match c {
            Condition::Cap(cap) => holds(cap),
            Condition::NoCap(cap) => !holds(cap),
            Condition::Arch(arches) => arches.iter().any(|a| a == std::env::consts::ARCH),
        })
    }
}

/// Parses the default profile's format; the error names the line.
fn parse_profile(text: &str) -> Result<Vec<Rule>, String> {
    let mut rules: Vec<Rule> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("");
        if line.trim().is_empty() {
            continue;
        }
        let bad = |what: String| format!("line {}: {what}", i + 1);
        if line.starts_with(char::is_whitespace) {
            let rule = rules
                .last_mut()
                .ok_or_else(|| bad("continues no rule".into()))?;
            rule.names
                .extend(line.split_whitespace().map(str::to_string));
            continue;
        }
        // The head ends at the first ": " (an argument's value holds ':').
        let (head, names) = match line.split_once(": ") {
            Some(parts) => parts,
            None => (
                line.trim_end()
                    .strip_suffix(':')
                    .ok_or_else(|| bad("no ':' after the conditions".into()))?,
                "",
            ),
        };
        let mut rule = Rule {
            conditions: Vec::new(),
            errno: None,
            args: Vec::new(),
            names: names.split_whitespace().map(str::to_string).collect(),
        };
        for word in head.split_whitespace() {
            let (key, value) = word.split_once('=').unwrap_or((word, ""));
            match key {
                "always" => {}
                "cap" => rule.conditions.push(Condition::Cap(value.into())),
                "nocap" => rule.conditions.push(Condition::NoCap(value.into())),
                "arch" => rule.conditions.push(Condition::Arch(
                    value.split(',').map(str::to_string).collect(),
                )),
                "errno" => {
                    rule.errno = Some(match value {
                        "EPERM" => EPERM,
                        "ENOSYS" => ENOSYS,
                        _ => return Err(bad(format!("unknown errno {value:?}"))),
                    })
                }
                _ if key.starts_with("arg") => {
                    let index: usize = key[3..]
                        .parse()
                        .map_err(|_| bad(format!("bad argument index in {word:?}")))?;
                    rule.args.push(parse_arg(index, value).map_err(bad)?);
                }
                _ => return Err(bad(format!("unknown condition {word:?}"))),
            }
        }
        rules.push(rule);
    }
    Ok(rules)
}

/// `eq:v`, `ne:v` or `masked_eq:v:mask` for argument `index`.
fn parse_arg(index: usize, spec: &str) -> Result<LinuxSeccompArg, String> {
    let number = |s: &str| {
        match s.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => s.parse(),
        }
        .map_err(|_| format!("bad number {s:?}"))
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let builder = LinuxSeccompArgBuilder::default().index(index);
    let builder = match parts.as_slice() {
        ["eq", v] => builder
            .op(LinuxSeccompOperator::ScmpCmpEq)
            .value(number(v)?),
        ["ne", v] => builder
            .op(LinuxSeccompOperator::ScmpCmpNe)
            .value(number(v)?),
        // OCI (as libseccomp) takes the mask first, then the value.
        ["masked_eq", v, mask] => builder
            .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
            .value(number(mask)?)
            .value_two(number(v)?),
        _ => return Err(format!("bad argument test {spec:?}")),
    };
    builder.build().map_err(|e| e.to_string())
}

fn default_rules() -> &'static [Rule] {
    static RULES: OnceLock<Vec<Rule>> = OnceLock::new();
    RULES.get_or_init(|| {
        parse_profile(DEFAULT_PROFILE)
            .unwrap_or_else(|e| panic!("the built-in seccomp profile: {e}"))
    })
}

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

/// The filter for `profile`, for a container holding `capabilities`
/// (`CAP_*` names, its bounding set); `None` when unconfined.
pub fn filter(profile: &SeccompProfile, capabilities: &[String]) -> Option<LinuxSeccomp> {
    match profile {
        SeccompProfile::Unconfined => None,
        SeccompProfile::Localhost(filter) => Some((**filter).clone()),
        SeccompProfile::RuntimeDefault => Some(runtime_default(capabilities)),
    }
}

fn runtime_default(capabilities: &[String]) -> LinuxSeccomp {
    let mut allowed: Vec<String> = Vec::new();
    let mut syscalls: Vec<LinuxSyscall> = Vec::new();
    for rule in default_rules().iter().filter(|r| r.applies(capabilities)) {
        if rule.errno.is_none() && rule.args.is_empty() {
            allowed.extend(rule.names.iter().cloned());
            continue;
        }
        let mut builder = LinuxSyscallBuilder::default().names(rule.names.clone());
        builder = match rule.errno {
            None => builder.action(LinuxSeccompAction::ScmpActAllow),
            Some(errno) => builder
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(errno),
        };
        if !rule.args.is_empty() {
            builder = builder.args(rule.args.clone());
        }
        syscalls.push(builder.build().expect("static syscall rule"));
    }
    // One rule for the plain allow list, each name once (a syscall two
    // capabilities unlock is named twice).
    allowed.sort();
    allowed.dedup();
    syscalls.insert(
        0,
        LinuxSyscallBuilder::default()
            .names(allowed)
            .action(LinuxSeccompAction::ScmpActAllow)
            .build()
            .expect("static syscall rule"),
    );
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(EPERM)
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

    /// The rules of the RuntimeDefault filter that name `syscall`.
    fn rules_for(filter: &LinuxSeccomp, syscall: &str) -> Vec<LinuxSyscall> {
        filter
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|s| s.names().iter().any(|n| n == syscall))
            .cloned()
            .collect()
    }

    #[test]
    fn runtime_default_is_an_allow_list_that_follows_capabilities() {
        let defaults: Vec<String> = ["CAP_CHOWN", "CAP_KILL", "CAP_SETUID"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let p = runtime_default(&defaults);
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(EPERM));
        assert!(!p.architectures().as_ref().unwrap().is_empty());
        for allowed in ["read", "execve", "openat", "wait4", "rt_sigreturn"] {
            let rules = rules_for(&p, allowed);
            assert_eq!(rules.len(), 1, "{allowed}");
            assert_eq!(rules[0].action(), LinuxSeccompAction::ScmpActAllow);
            assert!(rules[0].args().is_none(), "{allowed}");
        }
        for refused in [
            "io_uring_setup",
            "io_uring_enter",
            "keyctl",
            "add_key",
            "bpf",
            "perf_event_open",
            "unshare",
            "mount",
            "setns",
            "ptrace",
            "reboot",
            "init_module",
            "kexec_load",
            "clock_settime",
            "open_by_handle_at",
        ] {
            assert!(rules_for(&p, refused).is_empty(), "{refused} is allowed");
        }
        // clone without namespace flags; clone3 makes libc fall back to it.
        let clone = rules_for(&p, "clone");
        assert_eq!(clone.len(), 1);
        let arg = &clone[0].args().as_ref().unwrap()[0];
        assert_eq!(
            (arg.index(), arg.value(), arg.value_two(), arg.op()),
            (
                0,
                0x7e02_0000,
                Some(0),
                LinuxSeccompOperator::ScmpCmpMaskedEq
            )
        );
        let clone3 = rules_for(&p, "clone3");
        assert_eq!(clone3[0].action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(clone3[0].errno_ret(), Some(ENOSYS));
        // Only the plain allow list and the rules with a condition on
        // arguments or an errno: each name once in the former.
        let plain = &p.syscalls().as_ref().unwrap()[0];
        let mut names = plain.names().clone();
        names.dedup();
        assert_eq!(names.len(), plain.names().len());

        let with = |caps: &[&str]| {
            let caps: Vec<String> = defaults
                .iter()
                .cloned()
                .chain(caps.iter().map(|s| s.to_string()))
                .collect();
            runtime_default(&caps)
        };
        let admin = with(&["CAP_SYS_ADMIN"]);
        for unlocked in ["mount", "unshare", "setns", "bpf", "perf_event_open"] {
            assert_eq!(rules_for(&admin, unlocked).len(), 1, "{unlocked}");
        }
        let clone = rules_for(&admin, "clone");
        assert!(clone.len() == 1 && clone[0].args().is_none());
        assert_eq!(
            rules_for(&admin, "clone3")[0].action(),
            LinuxSeccompAction::ScmpActAllow
        );
        let ptrace = with(&["CAP_SYS_PTRACE"]);
        for unlocked in ["ptrace", "process_vm_readv", "process_vm_writev"] {
            assert_eq!(rules_for(&ptrace, unlocked).len(), 1, "{unlocked}");
        }
        for (cap, syscall) in [
            ("CAP_SYS_MODULE", "init_module"),
            ("CAP_SYS_BOOT", "reboot"),
            ("CAP_SYS_TIME", "clock_settime"),
            ("CAP_SYSLOG", "syslog"),
            ("CAP_SYS_NICE", "mbind"),
            ("CAP_SYS_RAWIO", "iopl"),
            ("CAP_SYS_PACCT", "acct"),
            ("CAP_SYS_CHROOT", "chroot"),
            ("CAP_BPF", "bpf"),
            ("CAP_PERFMON", "perf_event_open"),
        ] {
            assert!(rules_for(&p, syscall).is_empty(), "{syscall}");
            assert_eq!(rules_for(&with(&[cap]), syscall).len(), 1, "{cap}");
        }
        // Two capabilities that unlock the same syscall name it once.
        let both = with(&["CAP_SYS_ADMIN", "CAP_BPF"]);
        assert_eq!(rules_for(&both, "bpf").len(), 1);
        // Each architecture has its own entries.
        let native = if cfg!(target_arch = "aarch64") {
            "set_tls"
        } else {
            "arch_prctl"
        };
        assert_eq!(rules_for(&p, native).len(), 1);
        let foreign = if cfg!(target_arch = "aarch64") {
            "arch_prctl"
        } else {
            "set_tls"
        };
        assert!(rules_for(&p, foreign).is_empty());
    }

    #[test]
    fn the_profile_format_names_the_bad_line() {
        assert!(parse_profile("# only a comment\n\n").unwrap().is_empty());
        let rules =
            parse_profile("always: a\n  b c\narg0=masked_eq:0x1:0xff errno=ENOSYS: d\n").unwrap();
        assert_eq!(rules[0].names, ["a", "b", "c"]);
        assert_eq!(rules[1].errno, Some(ENOSYS));
        assert_eq!(rules[1].args[0].value(), 0xff);
        for (text, line) in [
            ("  a\n", "line 1"),
            ("always: a\nbogus=1: b\n", "line 2"),
            ("always\n", "line 1"),
            ("errno=EWHAT: a\n", "line 1"),
            ("arg0=lt:1: a\n", "line 1"),
            ("argx=eq:1: a\n", "line 1"),
        ] {
            let err = parse_profile(text).unwrap_err();
            assert!(err.starts_with(line), "{text:?}: {err}");
        }
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
