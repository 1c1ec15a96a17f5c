//! Pods: RunPodSandbox's config → [`PodSpec`], a pod record → the CRI's
//! `PodSandbox` and `PodSandboxStatus`, and the facts a pod gives its
//! containers ([`facts`]).

use std::path::PathBuf;

use berth_proto::cri::{
    DnsConfig, LinuxPodSandboxStatus, Namespace, NamespaceMode, NamespaceOption, PodIp, PodSandbox,
    PodSandboxConfig, PodSandboxMetadata, PodSandboxNetworkStatus, PodSandboxState,
    PodSandboxStatus,
};
use berth_runtime::spec::{self, IdMap, PodFiles};
use berth_sandbox::{
    Dns, IdMapping, Mode, NamespaceModes, Pod, PodSpec, PortMapping, Protocol, State, UserNamespace,
};

use crate::container::PodFacts;
use crate::{RequestError, invalid, to_map};

fn mode(value: i32) -> Mode {
    match NamespaceMode::try_from(value) {
        Ok(NamespaceMode::Container) => Mode::Container,
        Ok(NamespaceMode::Node) => Mode::Node,
        Ok(NamespaceMode::Target) => Mode::Target,
        Ok(NamespaceMode::Pod) | Err(_) => Mode::Pod,
    }
}

fn mode_value(mode: Mode) -> i32 {
    match mode {
        Mode::Pod => NamespaceMode::Pod,
        Mode::Container => NamespaceMode::Container,
        Mode::Node => NamespaceMode::Node,
        Mode::Target => NamespaceMode::Target,
    }
    .into()
}

/// RunPodSandbox's `config` as Berth's pod spec; the sandbox checks the
/// rest (names, sysctls, limits) when it makes the pod.
pub fn spec(config: PodSandboxConfig, runtime_handler: String) -> Result<PodSpec, RequestError> {
    let metadata = config
        .metadata
        .ok_or_else(|| invalid("config.metadata", "must be set"))?;
    let linux = config.linux.unwrap_or_default();
    let security = linux.security_context.unwrap_or_default();
    let options = security.namespace_options.unwrap_or_default();
    let port_mappings = config
        .port_mappings
        .into_iter()
        .map(|m| PortMapping {
            protocol: match m.protocol {
                1 => Protocol::Udp,
                2 => Protocol::Sctp,
                _ => Protocol::Tcp,
            },
            container_port: m.container_port,
            host_port: m.host_port,
            host_ip: m.host_ip,
        })
        .collect();
    Ok(PodSpec {
        name: metadata.name,
        uid: metadata.uid,
        namespace: metadata.namespace,
        attempt: metadata.attempt,
        hostname: config.hostname,
        log_directory: config.log_directory,
        dns: config.dns_config.map(|d: DnsConfig| Dns {
            servers: d.servers,
            searches: d.searches,
            options: d.options,
        }),
        port_mappings,
        labels: config.labels.into_iter().collect(),
        annotations: config.annotations.into_iter().collect(),
        cgroup_parent: linux.cgroup_parent,
        privileged: Some(security.privileged),
        sysctls: linux.sysctls.into_iter().collect(),
        namespaces: NamespaceModes {
            network: mode(options.network),
            pid: mode(options.pid),
            ipc: mode(options.ipc),
        },
        user_namespace: options
            .userns_options
            .map(|u| UserNamespace {
                mode: mode(u.mode),
                uids: u.uids.into_iter().map(id_mapping).collect(),
                gids: u.gids.into_iter().map(id_mapping).collect(),
            })
            .unwrap_or_default(),
        runtime_handler,
    })
}

fn id_mapping(m: berth_proto::cri::IdMapping) -> IdMapping {
    IdMapping {
        host_id: m.host_id,
        container_id: m.container_id,
        length: m.length,
    }
}

fn cri_id_mapping(m: &IdMapping) -> berth_proto::cri::IdMapping {
    berth_proto::cri::IdMapping {
        host_id: m.host_id,
        container_id: m.container_id,
        length: m.length,
    }
}

/// The CRI's `PodSandboxState` of `pod`.
pub fn state_value(pod: &Pod) -> i32 {
    match pod.effective_state() {
        State::Ready => PodSandboxState::SandboxReady,
        State::NotReady => PodSandboxState::SandboxNotready,
    }
    .into()
}

pub fn metadata(pod: &Pod) -> PodSandboxMetadata {
    PodSandboxMetadata {
        name: pod.spec.name.clone(),
        uid: pod.spec.uid.clone(),
        namespace: pod.spec.namespace.clone(),
        attempt: pod.spec.attempt,
    }
}

/// PodSandboxStatus' `status` of `pod`.
pub fn status(pod: &Pod) -> PodSandboxStatus {
    let ips = pod
        .network
        .as_ref()
        .map(|n| n.ips.clone())
        .unwrap_or_default();
    let network = ips
        .split_first()
        .map(|(first, rest)| PodSandboxNetworkStatus {
            ip: first.to_string(),
            additional_ips: rest.iter().map(|ip| PodIp { ip: ip.to_string() }).collect(),
        });
    let modes = pod.spec.namespaces;
    PodSandboxStatus {
        id: pod.id.to_string(),
        metadata: Some(metadata(pod)),
        state: state_value(pod),
        created_at: pod.created_at,
        network: Some(network.unwrap_or_default()),
        linux: Some(LinuxPodSandboxStatus {
            namespaces: Some(Namespace {
                options: Some(NamespaceOption {
                    network: mode_value(modes.network),
                    pid: mode_value(modes.pid),
                    ipc: mode_value(modes.ipc),
                    target_id: String::new(),
                    userns_options: Some(berth_proto::cri::UserNamespace {
                        mode: mode_value(pod.spec.user_namespace.mode),
                        uids: pod
                            .spec
                            .user_namespace
                            .uids
                            .iter()
                            .map(cri_id_mapping)
                            .collect(),
                        gids: pod
                            .spec
                            .user_namespace
                            .gids
                            .iter()
                            .map(cri_id_mapping)
                            .collect(),
                    }),
                }),
            }),
        }),
        labels: to_map(&pod.spec.labels),
        annotations: to_map(&pod.spec.annotations),
        runtime_handler: pod.spec.runtime_handler.clone(),
    }
}

/// ListPodSandbox's item for `pod`.
pub fn sandbox(pod: &Pod) -> PodSandbox {
    PodSandbox {
        id: pod.id.to_string(),
        metadata: Some(metadata(pod)),
        state: state_value(pod),
        created_at: pod.created_at,
        labels: to_map(&pod.spec.labels),
        annotations: to_map(&pod.spec.annotations),
        runtime_handler: pod.spec.runtime_handler.clone(),
    }
}

/// What `pod`'s record gives each of its containers: its namespaces,
/// files, cgroup, and the settings it was checked with when it was made.
/// `request` is CreateContainer's copy of the pod config, only read for
/// what a record of an older berthd did not keep (whether it is privileged).
pub fn facts(pod: &Pod, request: Option<&PodSandboxConfig>) -> PodFacts {
    let id_maps = |maps: &[IdMapping]| {
        maps.iter()
            .map(|m| IdMap {
                host_id: m.host_id,
                container_id: m.container_id,
                size: m.length,
            })
            .collect()
    };
    let user = pod
        .user_namespace()
        .map(|(path, uids, gids)| spec::UserNamespace {
            path: path.to_path_buf(),
            uid_mappings: id_maps(uids),
            gid_mappings: id_maps(gids),
        });
    let joined = |pin: &Option<PathBuf>| match pin {
        Some(path) => spec::Namespace::Path(path.clone()),
        None => spec::Namespace::Host,
    };
    let pid = match pod.spec.namespaces.pid {
        Mode::Pod => pod.namespaces.pid.clone().map(spec::Namespace::Path),
        Mode::Node => Some(spec::Namespace::Host),
        Mode::Container | Mode::Target => None,
    };
    PodFacts {
        network: joined(&pod.namespaces.net),
        ipc: joined(&pod.namespaces.ipc),
        uts: joined(&pod.namespaces.uts),
        pid,
        user,
        cgroup_parent: PathBuf::from(&pod.cgroup_parent),
        files: PodFiles {
            hostname: Some(pod.files.hostname.clone()),
            hosts: Some(pod.files.hosts.clone()),
            resolv_conf: Some(pod.files.resolv_conf.clone()),
            shm: Some(pod.files.shm.clone()),
        },
        hostname: pod.spec.hostname.clone(),
        sysctls: pod.spec.oci_sysctls(),
        privileged: pod.spec.privileged.unwrap_or_else(|| {
            request
                .and_then(|c| c.linux.as_ref())
                .and_then(|l| l.security_context.as_ref())
                .is_some_and(|sc| sc.privileged)
        }),
        log_directory: PathBuf::from(&pod.spec.log_directory),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::cri::{
        LinuxPodSandboxConfig, LinuxSandboxSecurityContext, PortMapping as CriPort,
    };

    fn config() -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: "web".into(),
                uid: "u1".into(),
                namespace: "default".into(),
                attempt: 1,
            }),
            hostname: "web-0".into(),
            log_directory: "/var/log/pods/u1".into(),
            port_mappings: vec![
                CriPort {
                    protocol: 1,
                    container_port: 53,
                    host_port: 5353,
                    host_ip: String::new(),
                },
                CriPort {
                    protocol: 7,
                    container_port: 80,
                    host_port: 8080,
                    host_ip: "127.0.0.1".into(),
                },
            ],
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: "/kubepods/pod-u1".into(),
                security_context: Some(LinuxSandboxSecurityContext {
                    privileged: true,
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Node as i32,
                        pid: NamespaceMode::Container as i32,
                        ipc: 99,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_pod_config_becomes_its_spec() {
        let spec = spec(config(), "crun".into()).unwrap();
        assert_eq!(
            (spec.name.as_str(), spec.uid.as_str(), spec.attempt),
            ("web", "u1", 1)
        );
        assert_eq!(spec.privileged, Some(true));
        assert_eq!(spec.cgroup_parent, "/kubepods/pod-u1");
        assert_eq!(spec.runtime_handler, "crun");
        // Unknown protocol and mode values take the CRI's defaults.
        let protocols: Vec<Protocol> = spec.port_mappings.iter().map(|m| m.protocol).collect();
        assert_eq!(protocols, [Protocol::Udp, Protocol::Tcp]);
        assert_eq!(
            (
                spec.namespaces.network,
                spec.namespaces.pid,
                spec.namespaces.ipc
            ),
            (Mode::Node, Mode::Container, Mode::Pod)
        );
        let no_metadata = PodSandboxConfig {
            metadata: None,
            ..config()
        };
        let err = spec_err(no_metadata);
        assert!(err.starts_with("config.metadata:"), "{err}");
    }

    fn spec_err(config: PodSandboxConfig) -> String {
        spec(config, String::new()).unwrap_err().to_string()
    }

    #[test]
    fn modes_map_both_ways() {
        for value in [
            NamespaceMode::Pod,
            NamespaceMode::Container,
            NamespaceMode::Node,
            NamespaceMode::Target,
        ] {
            assert_eq!(mode_value(mode(value as i32)), value as i32);
        }
    }
}
