//! The `RuntimeDefault` seccomp profile.
//!
//! A deny list rather than Docker's allow list: the syscalls Docker's default
//! profile withholds from a container without extra capabilities, refused
//! with EPERM, plus new user namespaces through `clone`. It is far shorter to
//! carry and to review, and a syscall the kernel adds later is allowed rather
//! than refused (the trade-off Docker's list makes the other way).

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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SeccompProfile {
    #[default]
    Unconfined,
    RuntimeDefault,
}

/// The filter for `profile`; `None` when unconfined.
pub fn filter(profile: SeccompProfile) -> Option<LinuxSeccomp> {
    if profile == SeccompProfile::Unconfined {
        return None;
    }
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
    Some(
        LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .architectures(native_arches())
            .syscalls(syscalls)
            .build()
            .expect("static seccomp profile"),
    )
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
