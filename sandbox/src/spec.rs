//! What a pod asks for: the domain form of the CRI `PodSandboxConfig`, and
//! the checks made before anything is created.

use std::collections::BTreeMap;

use berth_host::cgroup::Driver;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PodSpec {
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub attempt: u32,
    pub hostname: String,
    pub log_directory: String,
    pub dns: Option<Dns>,
    pub port_mappings: Vec<PortMapping>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub cgroup_parent: String,
    pub sysctls: BTreeMap<String, String>,
    pub namespaces: NamespaceModes,
    /// As the request named it; empty means the default handler.
    pub runtime_handler: String,
    /// `namespace_options.userns_options`; absent in records from before it.
    #[serde(default)]
    pub user_namespace: UserNamespace,
    /// `linux.security_context.privileged`: whether its containers may be
    /// privileged. `None` in records from before it was kept.
    #[serde(default)]
    pub privileged: Option<bool>,
}

/// One line of a `uid_map`/`gid_map`: `length` ids from `container_id` in
/// the pod map onto `host_id` and up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMapping {
    pub host_id: u32,
    pub container_id: u32,
    pub length: u32,
}

/// The pod's user namespace: mode `Node` (the host's, the default) or
/// `Pod` (one namespace for the pod and all its containers, with these
/// mappings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserNamespace {
    pub mode: Mode,
    pub uids: Vec<IdMapping>,
    pub gids: Vec<IdMapping>,
}

impl Default for UserNamespace {
    fn default() -> Self {
        UserNamespace {
            mode: Mode::Node,
            uids: Vec::new(),
            gids: Vec::new(),
        }
    }
}

impl UserNamespace {
    /// Whether the pod gets its own user namespace.
    pub fn is_pod(&self) -> bool {
        self.mode == Mode::Pod
    }

    /// The host uid and gid the pod's root maps to (the mappings are
    /// validated: container id 0 is mapped in both).
    pub fn host_root(&self) -> Option<(u32, u32)> {
        let root =
            |maps: &[IdMapping]| maps.iter().find(|m| m.container_id == 0).map(|m| m.host_id);
        self.is_pod()
            .then(|| Some((root(&self.uids)?, root(&self.gids)?)))
            .flatten()
    }

    /// Checks the mode and mappings as the kernel and the kubelet's
    /// contract require: mode `POD` or `NODE`; for `POD`, non-empty maps of
    /// at most 340 lines (the kernel's limit), no zero lengths, no range
    /// past 2^32, no overlap on either side, the pod's root mapped, and the
    /// host's root never mapped into the pod; for `NODE`, no mappings.
    fn validate(&self, field: &str) -> Result<(), Invalid> {
        match self.mode {
            Mode::Node => {
                for (name, maps) in [("uids", &self.uids), ("gids", &self.gids)] {
                    if !maps.is_empty() {
                        return Err(invalid(
                            format!("{field}.{name}"),
                            "mappings are only allowed with mode POD",
                        ));
                    }
                }
                return Ok(());
            }
            Mode::Pod => {}
            Mode::Container | Mode::Target => {
                return Err(invalid(
                    format!("{field}.mode"),
                    format!(
                        "user namespace mode {} is not supported (only POD and NODE)",
                        self.mode.cri_name()
                    ),
                ));
            }
        }
        for (name, maps) in [("uids", &self.uids), ("gids", &self.gids)] {
            let field = format!("{field}.{name}");
            if maps.is_empty() {
                return Err(invalid(field, "must not be empty with mode POD"));
            }
            if maps.len() > 340 {
                return Err(invalid(
                    field,
                    format!("{} mappings, over the kernel's limit of 340", maps.len()),
                ));
            }
            let end = |start: u32, m: &IdMapping| u64::from(start) + u64::from(m.length);
            for (i, m) in maps.iter().enumerate() {
                let at = format!("{field}[{i}]");
                if m.length == 0 {
                    return Err(invalid(format!("{at}.length"), "must be greater than 0"));
                }
                if end(m.host_id, m) > 1 << 32 || end(m.container_id, m) > 1 << 32 {
                    return Err(invalid(at, "the range goes past the last 32-bit id"));
                }
                if m.host_id == 0 {
                    return Err(invalid(
                        format!("{at}.host_id"),
                        "maps the host's root into the pod",
                    ));
                }
                for (j, other) in maps.iter().enumerate().take(i) {
                    let overlap =
                        |a: u32, b: u32| u64::from(a) < end(b, other) && u64::from(b) < end(a, m);
                    if overlap(m.container_id, other.container_id) {
                        return Err(invalid(
                            at,
                            format!("container ids overlap those of {field}[{j}]"),
                        ));
                    }
                    if overlap(m.host_id, other.host_id) {
                        return Err(invalid(
                            at,
                            format!("host ids overlap those of {field}[{j}]"),
                        ));
                    }
                }
            }
            if !maps.iter().any(|m| m.container_id == 0) {
                return Err(invalid(
                    field,
                    "does not map the pod's root (container id 0)",
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Dns {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortMapping {
    pub protocol: Protocol,
    pub container_port: i32,
    pub host_port: i32,
    pub host_ip: String,
}

/// The CRI's `NamespaceMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Pod,
    Container,
    Node,
    Target,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NamespaceModes {
    pub network: Mode,
    pub pid: Mode,
    pub ipc: Mode,
}

impl Mode {
    /// The CRI enum's name.
    pub fn cri_name(self) -> &'static str {
        match self {
            Mode::Pod => "POD",
            Mode::Container => "CONTAINER",
            Mode::Node => "NODE",
            Mode::Target => "TARGET",
        }
    }
}

impl NamespaceModes {
    pub fn host_network(&self) -> bool {
        self.network == Mode::Node
    }
    pub fn host_ipc(&self) -> bool {
        self.ipc == Mode::Node
    }
}

/// The longest name Kubernetes gives an object (a DNS subdomain); a
/// container's is a DNS label (63), but CRI clients other than the kubelet
/// are allowed the longer bound. Pods and containers both get it.
pub const MAX_NAME_BYTES: usize = 253;

/// Kubernetes' bound on an object's annotations, keys and values together;
/// the labels and the annotations of a pod or a container each get it (CRI
/// sets none, but every byte is kept in the record and repeated in each
/// List answer).
pub const MAX_METADATA_BYTES: usize = 256 << 10;

/// Refuses a name past [`MAX_NAME_BYTES`].
pub fn name_size(field: &str, name: &str) -> Result<(), Invalid> {
    if name.len() > MAX_NAME_BYTES {
        return Err(invalid(
            field,
            format!(
                "{} bytes, more than the {MAX_NAME_BYTES} of a Kubernetes name",
                name.len()
            ),
        ));
    }
    Ok(())
}

/// Refuses a labels or annotations map past [`MAX_METADATA_BYTES`], naming
/// the entry (in key order) at which it passes.
pub fn metadata_size(field: &str, map: &BTreeMap<String, String>) -> Result<(), Invalid> {
    let mut total = 0usize;
    for (key, value) in map {
        total += key.len() + value.len();
        if total > MAX_METADATA_BYTES {
            let shown: String = key.chars().take(64).collect();
            return Err(invalid(
                format!("{field}[{shown:?}]"),
                format!("the entries total more than {MAX_METADATA_BYTES} bytes (keys and values)"),
            ));
        }
    }
    Ok(())
}

/// A request the runtime refuses before touching anything: `field` names
/// the CRI field at fault.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        message: message.into(),
    }
}

impl PodSpec {
    /// CRI-O's sandbox name: what is reserved while the pod exists.
    pub fn reserved_name(&self) -> String {
        format!(
            "k8s_{}_{}_{}_{}",
            self.name, self.namespace, self.uid, self.attempt
        )
    }

    /// The cgroup parent in `driver`'s form (empty: the default parent).
    pub fn check_cgroup_parent(&self, driver: Driver) -> Result<(), Invalid> {
        if self.cgroup_parent.is_empty() {
            return Ok(());
        }
        driver
            .check_parent(&self.cgroup_parent)
            .map_err(|err| invalid("config.linux.cgroup_parent", err.to_string()))
    }

    /// Every rule a pod config must meet, in the order CRI-O checks them, so
    /// the first bad field is the one named. Long because it is a list.
    pub fn validate(&self) -> Result<(), Invalid> {
        for (field, value) in [
            ("config.metadata.name", &self.name),
            ("config.metadata.namespace", &self.namespace),
            ("config.metadata.uid", &self.uid),
        ] {
            if value.is_empty() {
                return Err(invalid(field, "must not be empty"));
            }
            name_size(field, value)?;
            // The name, namespace and uid go into CNI_ARGS as `K=V;` pairs,
            // where these would forge other pairs.
            if let Some(c) = value
                .chars()
                .find(|c| *c == ';' || *c == '=' || c.is_control())
            {
                return Err(invalid(field, format!("{value:?} contains {c:?}")));
            }
        }
        for (field, map) in [
            ("config.labels", &self.labels),
            ("config.annotations", &self.annotations),
        ] {
            metadata_size(field, map)?;
        }
        // The kubelet sends /var/log/pods/<namespace>_<name>_<uid>: the
        // containers' log files are created under it, as root.
        if !self.log_directory.is_empty() {
            let dir = std::path::Path::new(&self.log_directory);
            if !dir.is_absolute() {
                return Err(invalid(
                    "config.log_directory",
                    format!("{:?} is not an absolute path", self.log_directory),
                ));
            }
            if dir
                .components()
                .any(|c| c == std::path::Component::ParentDir)
            {
                return Err(invalid(
                    "config.log_directory",
                    format!("{:?} contains \"..\"", self.log_directory),
                ));
            }
        }
        // sethostname(2) takes at most 64 bytes.
        if self.hostname.len() > 64 {
            return Err(invalid(
                "config.hostname",
                format!("{:?} is longer than 64 bytes", self.hostname),
            ));
        }
        if self.namespaces.network == Mode::Target || self.namespaces.ipc == Mode::Target {
            return Err(invalid(
                "config.linux.security_context.namespace_options",
                "TARGET mode applies to the PID namespace of containers only",
            ));
        }
        if self.namespaces.pid == Mode::Target {
            return Err(invalid(
                "config.linux.security_context.namespace_options.pid",
                "TARGET mode applies to containers, not to a pod",
            ));
        }
        for mapping in &self.port_mappings {
            if !(0..=65535).contains(&mapping.host_port)
                || !(1..=65535).contains(&mapping.container_port)
            {
                return Err(invalid(
                    "config.port_mappings",
                    format!(
                        "port out of range: host {} container {}",
                        mapping.host_port, mapping.container_port
                    ),
                ));
            }
        }
        let userns = "config.linux.security_context.namespace_options.userns_options";
        self.user_namespace.validate(userns)?;
        // The kubelet's own rule: a user-namespaced pod shares no namespace
        // with the host (and its network, IPC and PID ones must be owned by
        // its user namespace for its containers to mount sysfs, mqueue, proc).
        if self.user_namespace.is_pod() {
            for (name, mode) in [
                ("network", self.namespaces.network),
                ("ipc", self.namespaces.ipc),
                ("pid", self.namespaces.pid),
            ] {
                if mode == Mode::Node {
                    return Err(invalid(
                        format!("config.linux.security_context.namespace_options.{name}"),
                        "NODE cannot be combined with user namespace mode POD",
                    ));
                }
            }
        }
        self.sysctl_paths()?;
        self.bandwidth()?;
        Ok(())
    }

    /// The pod's sysctls as an OCI spec names them, for its containers:
    /// dots separate the parts, and a dot inside a part (an interface
    /// name) becomes a `/`, as the kubelet converts them.
    pub fn oci_sysctls(&self) -> BTreeMap<String, String> {
        self.sysctls
            .iter()
            .map(|(key, value)| {
                let key = if key.contains('/') {
                    key.trim_matches('/')
                        .chars()
                        .map(|c| match c {
                            '/' => '.',
                            '.' => '/',
                            c => c,
                        })
                        .collect()
                } else {
                    key.clone()
                };
                (key, value.clone())
            })
            .collect()
    }

    /// The pod's sysctls as `/proc/sys` paths, after checking each one is
    /// namespaced and its namespace belongs to the pod (as runc and CRI-O
    /// refuse otherwise).
    pub fn sysctl_paths(&self) -> Result<Vec<(String, String)>, Invalid> {
        let mut out = Vec::new();
        for (key, value) in &self.sysctls {
            // Both `net.ipv4.ip_forward` and `net/ipv4/ip_forward` are accepted;
            // with slashes, dots may be part of a name (an interface).
            let path = if key.contains('/') {
                key.trim_matches('/').to_string()
            } else {
                key.replace('.', "/")
            };
            let dotted = path.replace('/', ".");
            let field = format!("config.linux.sysctls[{key}]");
            if path.split('/').any(|part| part.is_empty() || part == "..") {
                return Err(invalid(field, "not a sysctl name"));
            }
            let ipc = dotted.starts_with("kernel.shm")
                || dotted.starts_with("kernel.msg")
                || dotted == "kernel.sem"
                || dotted.starts_with("fs.mqueue.");
            if dotted.starts_with("net.") {
                if self.namespaces.host_network() {
                    return Err(invalid(
                        field,
                        "a network sysctl is not allowed with the host network",
                    ));
                }
            } else if ipc {
                if self.namespaces.host_ipc() {
                    return Err(invalid(field, "an IPC sysctl is not allowed with host IPC"));
                }
            } else if dotted == "kernel.domainname" {
                if self.namespaces.host_network() {
                    return Err(invalid(
                        field,
                        "a UTS sysctl is not allowed with the host UTS",
                    ));
                }
            } else {
                return Err(invalid(
                    field,
                    "not in a namespace the pod owns (only net.*, IPC and kernel.domainname sysctls are)",
                ));
            }
            out.push((path, value.clone()));
        }
        Ok(out)
    }

    /// The `bandwidth` capability from the Kubernetes annotations.
    pub fn bandwidth(&self) -> Result<Option<Value>, Invalid> {
        let mut object = Map::new();
        for (annotation, rate, burst) in [
            (
                "kubernetes.io/ingress-bandwidth",
                "ingressRate",
                "ingressBurst",
            ),
            (
                "kubernetes.io/egress-bandwidth",
                "egressRate",
                "egressBurst",
            ),
        ] {
            if let Some(text) = self.annotations.get(annotation) {
                let bits = parse_quantity(text).ok_or_else(|| {
                    invalid(
                        format!("config.annotations[{annotation}]"),
                        format!("expected a quantity such as 10M, got {text:?}"),
                    )
                })?;
                object.insert(rate.into(), json!(bits));
                // No burst limit, as the kubelet's own CNI glue used to set.
                object.insert(burst.into(), json!(i32::MAX));
            }
        }
        Ok((!object.is_empty()).then_some(Value::Object(object)))
    }

    /// The capability arguments for CNI ADD.
    pub fn capabilities(&self, pod_cidr: Option<&str>) -> Map<String, Value> {
        let mut caps = Map::new();
        let ports: Vec<Value> = self
            .port_mappings
            .iter()
            .filter(|m| m.host_port > 0)
            .map(|m| {
                let mut port = json!({
                    "hostPort": m.host_port,
                    "containerPort": m.container_port,
                    "protocol": m.protocol,
                });
                if !m.host_ip.is_empty() {
                    port["hostIP"] = json!(m.host_ip);
                }
                port
            })
            .collect();
        if !ports.is_empty() {
            caps.insert("portMappings".into(), Value::Array(ports));
        }
        if let Ok(Some(bandwidth)) = self.bandwidth() {
            caps.insert("bandwidth".into(), bandwidth);
        }
        if let Some(cidr) = pod_cidr.filter(|c| !c.is_empty()) {
            let ranges: Vec<Value> = cidr
                .split(',')
                .map(|subnet| json!([{ "subnet": subnet.trim() }]))
                .collect();
            caps.insert("ipRanges".into(), Value::Array(ranges));
        }
        caps.insert(
            "io.kubernetes.cri.pod-annotations".into(),
            json!(self.annotations),
        );
        caps
    }
}

/// A Kubernetes resource quantity as an integer (decimal and binary
/// suffixes); None when it is not one.
fn parse_quantity(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let multiplier: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        _ => return None,
    };
    let value: f64 = number.parse().ok()?;
    let total = value * multiplier;
    (total.is_finite() && total >= 1.0).then_some(total as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PodSpec {
        PodSpec {
            name: "p".into(),
            uid: "u".into(),
            namespace: "n".into(),
            ..PodSpec::default()
        }
    }

    fn map(host_id: u32, container_id: u32, length: u32) -> IdMapping {
        IdMapping {
            host_id,
            container_id,
            length,
        }
    }

    #[test]
    fn user_namespace_mappings_are_checked() {
        let field = |s: &PodSpec| s.validate().unwrap_err().field;
        let userns = "config.linux.security_context.namespace_options.userns_options";
        let mut s = spec();
        s.user_namespace = UserNamespace {
            mode: Mode::Pod,
            uids: vec![map(100000, 0, 65536)],
            gids: vec![map(100000, 0, 65536)],
        };
        s.validate().unwrap();
        assert_eq!(s.user_namespace.host_root(), Some((100000, 100000)));
        let mut bad = s.clone();
        bad.user_namespace.gids.clear();
        assert_eq!(field(&bad), format!("{userns}.gids"));
        let mut bad = s.clone();
        bad.user_namespace.uids[0].length = 0;
        assert_eq!(field(&bad), format!("{userns}.uids[0].length"));
        let mut bad = s.clone();
        bad.user_namespace.uids = vec![map(100000, 1, 10)];
        assert!(
            bad.validate()
                .unwrap_err()
                .message
                .contains("container id 0")
        );
        let mut bad = s.clone();
        bad.user_namespace.uids.push(map(300000, 65535, 2));
        let err = bad.validate().unwrap_err();
        assert_eq!(err.field, format!("{userns}.uids[1]"));
        assert!(err.message.contains("container ids overlap"), "{err}");
        let mut bad = s.clone();
        bad.user_namespace.gids.push(map(165535, 70000, 1));
        assert!(
            bad.validate()
                .unwrap_err()
                .message
                .contains("host ids overlap")
        );
        let mut bad = s.clone();
        bad.user_namespace.uids = vec![map(0, 0, 65536)];
        assert_eq!(field(&bad), format!("{userns}.uids[0].host_id"));
        let mut bad = s.clone();
        bad.user_namespace.uids = vec![map(u32::MAX, 0, 2)];
        assert_eq!(field(&bad), format!("{userns}.uids[0]"));
        for mode in [Mode::Target, Mode::Container] {
            let mut bad = s.clone();
            bad.user_namespace.mode = mode;
            assert_eq!(field(&bad), format!("{userns}.mode"));
        }
        let mut bad = s.clone();
        bad.user_namespace.mode = Mode::Node;
        assert_eq!(field(&bad), format!("{userns}.uids"));
        let mut bad = s.clone();
        bad.namespaces.network = Mode::Node;
        assert_eq!(
            field(&bad),
            "config.linux.security_context.namespace_options.network"
        );
        assert_eq!(spec().user_namespace.host_root(), None);
        spec().validate().unwrap();
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("10M"), Some(10_000_000));
        assert_eq!(parse_quantity("1Gi"), Some(1 << 30));
        assert_eq!(parse_quantity("2.5k"), Some(2500));
        assert_eq!(parse_quantity("100"), Some(100));
        assert_eq!(parse_quantity("10X"), None);
        assert_eq!(parse_quantity(""), None);
    }

    #[test]
    fn oci_sysctls_swap_separators_of_slashed_names() {
        let mut s = spec();
        s.sysctls.insert("net.ipv4.ip_forward".into(), "1".into());
        s.sysctls
            .insert("net/ipv4/conf/eth0.1/forwarding".into(), "0".into());
        s.sysctls.insert("kernel.domainname".into(), "d".into());
        let oci = s.oci_sysctls();
        assert_eq!(oci["net.ipv4.ip_forward"], "1");
        assert_eq!(oci["net.ipv4.conf.eth0/1.forwarding"], "0");
        assert_eq!(oci["kernel.domainname"], "d");
    }

    #[test]
    fn sysctls_must_belong_to_the_pod() {
        let mut s = spec();
        s.sysctls.insert("net.ipv4.ip_forward".into(), "1".into());
        s.sysctls.insert("kernel.shmmax".into(), "100000".into());
        assert_eq!(
            s.sysctl_paths().unwrap(),
            vec![
                ("kernel/shmmax".to_string(), "100000".to_string()),
                ("net/ipv4/ip_forward".to_string(), "1".to_string())
            ]
        );
        s.namespaces.network = Mode::Node;
        let err = s.validate().unwrap_err();
        assert_eq!(err.field, "config.linux.sysctls[net.ipv4.ip_forward]");
        let mut s = spec();
        s.sysctls.insert("vm.swappiness".into(), "1".into());
        assert!(
            s.validate()
                .unwrap_err()
                .message
                .contains("not in a namespace")
        );
    }

    #[test]
    fn metadata_and_cgroup_parent_are_checked() {
        let mut s = spec();
        s.uid.clear();
        assert_eq!(s.validate().unwrap_err().field, "config.metadata.uid");
        let mut s = spec();
        s.hostname = "h".repeat(65);
        assert_eq!(s.validate().unwrap_err().field, "config.hostname");
        let mut s = spec();
        let cgroupfs = Driver::Cgroupfs;
        let systemd = Driver::Systemd;
        s.cgroup_parent = "kubepods.slice".into();
        let err = s.check_cgroup_parent(cgroupfs).unwrap_err();
        assert_eq!(err.field, "config.linux.cgroup_parent");
        assert!(err.message.contains("cgroup driver is cgroupfs"), "{err}");
        s.check_cgroup_parent(systemd).unwrap();
        s.cgroup_parent = "kubepods-burstable-pod0a1b.slice".into();
        s.check_cgroup_parent(systemd).unwrap();
        s.cgroup_parent = "/kubepods/besteffort/podu".into();
        s.check_cgroup_parent(cgroupfs).unwrap();
        let err = s.check_cgroup_parent(systemd).unwrap_err();
        assert_eq!(err.field, "config.linux.cgroup_parent");
        assert!(err.message.contains("cgroup driver is systemd"), "{err}");
        for parent in ["/kubepods/..", "/a/../../b", "kubepods"] {
            s.cgroup_parent = parent.into();
            assert_eq!(
                s.check_cgroup_parent(cgroupfs).unwrap_err().field,
                "config.linux.cgroup_parent",
                "{parent}"
            );
        }
        for parent in [
            "kubepods",
            "kube/pods.slice",
            "kube--pods.slice",
            "kube pods.slice",
        ] {
            s.cgroup_parent = parent.into();
            assert_eq!(
                s.check_cgroup_parent(systemd).unwrap_err().field,
                "config.linux.cgroup_parent",
                "{parent}"
            );
        }
        s.cgroup_parent.clear();
        s.check_cgroup_parent(systemd).unwrap();
    }

    #[test]
    fn absurd_names_log_directories_and_metadata_are_refused() {
        let mut s = spec();
        s.name = "p".repeat(MAX_NAME_BYTES);
        s.validate().unwrap();
        s.name.push('p');
        assert_eq!(s.validate().unwrap_err().field, "config.metadata.name");
        for forged in ["p;K8S_POD_NAMESPACE=kube-system", "p=1", "p\0", "p\n"] {
            let mut s = spec();
            s.namespace = forged.into();
            assert_eq!(
                s.validate().unwrap_err().field,
                "config.metadata.namespace",
                "{forged:?}"
            );
        }
        for dir in ["var/log/pods/x", "/var/log/pods/../../etc"] {
            let mut s = spec();
            s.log_directory = dir.into();
            let e = s.validate().unwrap_err();
            assert_eq!(e.field, "config.log_directory", "{dir}: {e}");
        }
        let mut s = spec();
        s.log_directory = "/var/log/pods/n_p_u".into();
        s.validate().unwrap();
        s.labels.insert("app".into(), "v".repeat(1 << 20));
        let e = s.validate().unwrap_err();
        assert_eq!(e.field, "config.labels[\"app\"]", "{e}");
        let mut s = spec();
        s.annotations = (0..MAX_METADATA_BYTES / 100 + 1)
            .map(|i| (format!("k{i:05}"), "x".repeat(94)))
            .collect();
        let e = s.validate().unwrap_err();
        assert!(e.field.starts_with("config.annotations[\"k"), "{e}");
    }

    #[test]
    fn capabilities_carry_ports_bandwidth_ranges_and_annotations() {
        let mut s = spec();
        s.port_mappings = vec![
            PortMapping {
                protocol: Protocol::Tcp,
                container_port: 80,
                host_port: 8080,
                host_ip: String::new(),
            },
            PortMapping {
                protocol: Protocol::Udp,
                container_port: 53,
                host_port: 0,
                host_ip: String::new(),
            },
        ];
        s.annotations
            .insert("kubernetes.io/ingress-bandwidth".into(), "1M".into());
        let caps = s.capabilities(Some("10.1.0.0/24,fd00::/64"));
        assert_eq!(
            caps["portMappings"],
            json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}])
        );
        assert_eq!(caps["bandwidth"]["ingressRate"], 1_000_000);
        assert_eq!(caps["ipRanges"][1][0]["subnet"], "fd00::/64");
        assert_eq!(
            caps["io.kubernetes.cri.pod-annotations"]["kubernetes.io/ingress-bandwidth"],
            "1M"
        );
    }
}
