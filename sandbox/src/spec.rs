//! What a pod asks for: the domain form of the CRI `PodSandboxConfig`, and
//! the checks made before anything is created.

use std::collections::BTreeMap;

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

impl NamespaceModes {
    pub fn host_network(&self) -> bool {
        self.network == Mode::Node
    }
    pub fn host_ipc(&self) -> bool {
        self.ipc == Mode::Node
    }
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

    pub fn validate(&self) -> Result<(), Invalid> {
        for (field, value) in [
            ("config.metadata.name", &self.name),
            ("config.metadata.namespace", &self.namespace),
            ("config.metadata.uid", &self.uid),
        ] {
            if value.is_empty() {
                return Err(invalid(field, "must not be empty"));
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
        if !self.cgroup_parent.is_empty() {
            if self.cgroup_parent.ends_with(".slice") {
                return Err(invalid(
                    "config.linux.cgroup_parent",
                    format!(
                        "{:?} is a systemd slice, but the cgroup driver is cgroupfs",
                        self.cgroup_parent
                    ),
                ));
            }
            if !self.cgroup_parent.starts_with('/') || self.cgroup_parent.contains("/../") {
                return Err(invalid(
                    "config.linux.cgroup_parent",
                    format!(
                        "expected an absolute cgroupfs path, got {:?}",
                        self.cgroup_parent
                    ),
                ));
            }
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
        self.sysctl_paths()?;
        self.bandwidth()?;
        Ok(())
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
        s.cgroup_parent = "kubepods.slice".into();
        assert_eq!(
            s.validate().unwrap_err().field,
            "config.linux.cgroup_parent"
        );
        s.cgroup_parent = "/kubepods/besteffort/podu".into();
        s.validate().unwrap();
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
