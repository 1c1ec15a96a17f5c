//! What a runtime handler can do on this host, for `Status.runtime_handlers`
//! and for refusing requests it cannot honour.

use std::path::Path;

/// A runtime handler's CRI features, as they work on this host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandlerFeatures {
    /// Recursive read-only mounts: the kernel has `mount_setattr` (5.12+)
    /// and the runtime lists the `rro` mount option in `<runtime> features`.
    pub recursive_read_only_mounts: bool,
    /// Pods in their own user namespace: the runtime joins user namespaces
    /// (`user` in its `features`), the kernel lets them be made
    /// (`user.max_user_namespaces` > 0) and has id-mapped mounts usable as
    /// overlayfs layers (5.19+), which berth makes itself for the rootfs
    /// (see [`crate::overlay::mount_idmapped`]) since runc 1.1 cannot.
    pub user_namespaces: bool,
}

/// Probes `runtime` (the OCI runtime binary, e.g. `runc`) and the kernel.
/// A runtime that cannot report its features supports none of them.
pub fn probe(runtime: &Path) -> HandlerFeatures {
    let output = std::process::Command::new(runtime)
        .arg("features")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    let features: serde_json::Value = match output {
        Ok(out) if out.status.success() => {
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
        }
        _ => serde_json::Value::Null,
    };
    HandlerFeatures {
        recursive_read_only_mounts: kernel_at_least(5, 12) && lists_rro(&features),
        user_namespaces: kernel_at_least(5, 19)
            && user_namespaces_allowed()
            && lists_user_namespace(&features),
    }
}

fn user_namespaces_allowed() -> bool {
    std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .is_some_and(|max| max > 0)
}

fn lists_user_namespace(features: &serde_json::Value) -> bool {
    features["linux"]["namespaces"]
        .as_array()
        .is_some_and(|kinds| kinds.iter().any(|k| k == "user"))
}

fn lists_rro(features: &serde_json::Value) -> bool {
    features["mountOptions"]
        .as_array()
        .is_some_and(|options| options.iter().any(|o| o == "rro"))
}

/// Whether the running kernel's release is at least `major.minor`.
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .and_then(|release| parse_release(&release))
        .is_some_and(|version| version >= (major, minor))
}

fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Whether AppArmor is enabled on this host.
pub fn apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|s| s.trim() == "Y")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_parse() {
        assert_eq!(parse_release("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_release("5.4.0"), Some((5, 4)));
        assert_eq!(parse_release("garbage"), None);
    }

    #[test]
    fn rro_needs_the_runtime_to_list_it() {
        assert!(lists_rro(
            &serde_json::json!({"mountOptions": ["ro", "rro"]})
        ));
        assert!(!lists_rro(&serde_json::json!({"mountOptions": ["ro"]})));
        assert!(!lists_rro(&serde_json::Value::Null));
        assert!(!probe(Path::new("/no/such/runtime")).recursive_read_only_mounts);
    }

    #[test]
    fn user_namespaces_need_the_runtime_to_list_them() {
        assert!(lists_user_namespace(
            &serde_json::json!({"linux": {"namespaces": ["pid", "user"]}})
        ));
        assert!(!lists_user_namespace(
            &serde_json::json!({"linux": {"namespaces": ["pid"]}})
        ));
        assert!(!probe(Path::new("/no/such/runtime")).user_namespaces);
    }
}
