//! The pod sandbox RPCs: RunPodSandbox, StopPodSandbox, RemovePodSandbox,
//! PodSandboxStatus, ListPodSandbox, and UpdateRuntimeConfig (the pod CIDR).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use berth_cni::Cni;
use berth_proto::cri::{
    DnsConfig, LinuxPodSandboxStatus, ListPodSandboxRequest, ListPodSandboxResponse, Namespace,
    NamespaceMode, NamespaceOption, PodIp, PodSandbox, PodSandboxConfig, PodSandboxMetadata,
    PodSandboxNetworkStatus, PodSandboxState, PodSandboxStatus, PodSandboxStatusRequest,
    PodSandboxStatusResponse, RemovePodSandboxRequest, RemovePodSandboxResponse,
    RunPodSandboxRequest, RunPodSandboxResponse, StopPodSandboxRequest, StopPodSandboxResponse,
    UpdateRuntimeConfigRequest, UpdateRuntimeConfigResponse,
};
use berth_sandbox::{
    Dns, Error, IdMapping, Layout, Mode, NamespaceModes, Options, Pod, PodSpec, PortMapping,
    Protocol, Sandboxes, State, UserNamespace,
};
use tonic::Status;

use super::CriService;
use crate::config::Config;
use crate::live::LiveConfig;

/// How often the CNI conf dir is re-read.
const CNI_WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Loads the CNI config and every pod record; starts the conf dir watch
/// and the teardown of what pods with an unreadable record left.
pub(super) fn open(config: &Config, runtimes: Arc<LiveConfig>) -> Arc<Sandboxes> {
    let layout = Layout {
        root: config.root.clone(),
        run_root: config.run_root.clone(),
    };
    let cni = Cni::new(berth_cni::Options {
        conf_dir: config.cni.conf_dir.clone(),
        bin_dirs: config.cni.bin_dirs.clone(),
        cache_dir: layout.cni_cache_dir(),
        plugin_timeout: Duration::from_secs(config.cni.plugin_timeout),
    });
    cni.watch(CNI_WATCH_INTERVAL);
    // berth-shim ships next to berthd.
    let shim = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("berth-shim")))
        .unwrap_or_else(|| "berth-shim".into());
    let options = Options {
        layout,
        shm_size: config.pod.shm_size,
        shim,
        runtimes,
        default_cgroup_parent: config.pod.cgroup_parent.clone(),
    };
    let (pods, errors) = Sandboxes::open(options, Arc::clone(&cni));
    for error in errors {
        tracing::warn!("skipping unreadable pod record {error}");
    }
    let pods = Arc::new(pods);
    let reclaiming = Arc::clone(&pods);
    tokio::spawn(async move { reclaiming.reclaim_unreadable().await });
    pods
}

pub(super) fn status(err: Error) -> Status {
    let message = err.to_string();
    if super::out_of_space(&err) {
        return Status::resource_exhausted(message);
    }
    match err {
        Error::Invalid(_) | Error::UnknownHandler { .. } | Error::Ambiguous { .. } => {
            Status::invalid_argument(message)
        }
        Error::NameReserved { .. } => Status::already_exists(message),
        Error::NotFound(_) => Status::not_found(message),
        Error::Network(berth_cni::Error::NotReady(_)) => Status::failed_precondition(message),
        Error::Io { .. }
        | Error::Namespace(_)
        | Error::Infra(_)
        | Error::Files(_)
        | Error::Cgroup(_)
        | Error::Network(_)
        | Error::SetupAndTeardown { .. }
        | Error::Teardown { .. } => Status::internal(message),
    }
}

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

fn spec(config: PodSandboxConfig, runtime_handler: String) -> Result<PodSpec, Status> {
    let metadata = config
        .metadata
        .ok_or_else(|| Status::invalid_argument("config.metadata: must be set"))?;
    let linux = config.linux.unwrap_or_default();
    let options = linux
        .security_context
        .and_then(|sc| sc.namespace_options)
        .unwrap_or_default();
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

fn state_value(pod: &Pod) -> i32 {
    match pod.effective_state() {
        State::Ready => PodSandboxState::SandboxReady,
        State::NotReady => PodSandboxState::SandboxNotready,
    }
    .into()
}

pub(super) fn metadata(pod: &Pod) -> PodSandboxMetadata {
    PodSandboxMetadata {
        name: pod.spec.name.clone(),
        uid: pod.spec.uid.clone(),
        namespace: pod.spec.namespace.clone(),
        attempt: pod.spec.attempt,
    }
}

pub(super) fn to_map(map: &std::collections::BTreeMap<String, String>) -> HashMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn pod_status(pod: &Pod) -> PodSandboxStatus {
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

impl CriService {
    pub(super) async fn run_pod_sandbox(
        &self,
        request: RunPodSandboxRequest,
    ) -> Result<RunPodSandboxResponse, Status> {
        let config = request
            .config
            .ok_or_else(|| Status::invalid_argument("config: must be set"))?;
        let spec = spec(config, request.runtime_handler)?;
        if spec.user_namespace.is_pod() {
            let config = self.live.get();
            let handler = if spec.runtime_handler.is_empty() {
                &config.default_runtime
            } else {
                &spec.runtime_handler
            };
            // An unknown handler is the sandbox's to report.
            if config
                .runtimes
                .get(handler)
                .is_some_and(|h| !self.features.probe(&h.path).user_namespaces)
            {
                return Err(Status::invalid_argument(format!(
                    "config.linux.security_context.namespace_options.userns_options.mode: \
                     not supported on this host: runtime handler {handler:?} cannot run \
                     pods in their own user namespace"
                )));
            }
        }
        let name = spec.reserved_name();
        if let Some(id) = self.abandoned.claim(&name)
            && self.pods.get(&id).await.is_ok()
        {
            super::span_ids::record_ids(&id, "");
            return Ok(RunPodSandboxResponse { pod_sandbox_id: id });
        }
        let pods = self.pods.clone();
        let create = async move {
            pods.run(spec)
                .await
                .map(|id| id.to_string())
                .map_err(status)
        };
        let pod_sandbox_id = self.abandoned.run(name, create).await?;
        super::span_ids::record_ids(&pod_sandbox_id, "");
        Ok(RunPodSandboxResponse { pod_sandbox_id })
    }

    pub(super) async fn stop_pod_sandbox(
        &self,
        request: StopPodSandboxRequest,
    ) -> Result<StopPodSandboxResponse, Status> {
        self.pod_down(&request.pod_sandbox_id, false).await?;
        Ok(StopPodSandboxResponse {})
    }

    pub(super) async fn remove_pod_sandbox(
        &self,
        request: RemovePodSandboxRequest,
    ) -> Result<RemovePodSandboxResponse, Status> {
        self.pod_down(&request.pod_sandbox_id, true).await?;
        Ok(RemovePodSandboxResponse {})
    }

    /// Stop or Remove: first every container of the pod (also those
    /// reloaded after a restart), then the pod itself; every step runs and
    /// every failure is reported.
    async fn pod_down(&self, id: &str, remove: bool) -> Result<(), Status> {
        let pod_id = match self.pods.get(id).await {
            Ok(pod) => pod.id,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(err) => return Err(status(err)),
        };
        let failures = self.pod_containers_down(pod_id.as_str(), remove).await;
        let pod = if remove {
            self.pods.remove(pod_id.as_str()).await
        } else {
            self.pods.stop(pod_id.as_str()).await
        };
        match (pod, failures.is_empty()) {
            (Ok(()), true) => Ok(()),
            (Ok(()), false) => Err(Status::internal(format!(
                "pod sandbox {pod_id}: {}",
                failures.join("; ")
            ))),
            (Err(err), true) => Err(status(err)),
            (Err(err), false) => Err(Status::internal(format!(
                "{err}; and its containers: {}",
                failures.join("; ")
            ))),
        }
    }

    pub(super) async fn pod_sandbox_status(
        &self,
        request: PodSandboxStatusRequest,
    ) -> Result<PodSandboxStatusResponse, Status> {
        if request.pod_sandbox_id.is_empty() {
            return Err(Status::invalid_argument(
                "pod_sandbox_id: must not be empty",
            ));
        }
        let pod = self
            .pods
            .get(&request.pod_sandbox_id)
            .await
            .map_err(status)?;
        let mut info = HashMap::new();
        if request.verbose {
            let check = match self.pods.check_network(&pod).await {
                None => serde_json::Value::Null,
                Some(Ok(())) => "ok".into(),
                Some(Err(err)) => err.into(),
            };
            let verbose = serde_json::json!({
                "pid": pod.infra.map(|i| i.pid).unwrap_or_default(),
                "runtimeHandler": pod.runtime_handler,
                "cgroupParent": pod.cgroup_parent,
                "infraCgroup": pod.infra.map(|_| pod.infra_cgroup()),
                "hostname": pod.hostname,
                "namespaces": pod.namespaces,
                "files": pod.files,
                "network": pod.network,
                "cniCheck": check,
                "config": pod.spec,
            });
            info.insert("info".to_string(), verbose.to_string());
        }
        // As CRI-O: the statuses a kubelet with EventedPLEG reads from here.
        let mut containers_statuses = Vec::new();
        for container_id in self.containers.of_pod(pod.id.as_str()) {
            let request = berth_proto::cri::ContainerStatusRequest {
                container_id,
                verbose: false,
            };
            // One removed meanwhile is simply not there any more.
            if let Ok(response) = self.container_status(request).await {
                containers_statuses.extend(response.status);
            }
        }
        Ok(PodSandboxStatusResponse {
            status: Some(pod_status(&pod)),
            info,
            containers_statuses,
            timestamp: berth_host::now_nanos(),
        })
    }

    pub(super) async fn list_pod_sandbox(
        &self,
        request: ListPodSandboxRequest,
    ) -> Result<ListPodSandboxResponse, Status> {
        let filter = request.filter.unwrap_or_default();
        let mut pods = self.pods.list().await;
        pods.retain(|pod| {
            pod.id.as_str().starts_with(&filter.id)
                && filter
                    .state
                    .as_ref()
                    .is_none_or(|s| s.state == state_value(pod))
                && filter
                    .label_selector
                    .iter()
                    .all(|(k, v)| pod.spec.labels.get(k) == Some(v))
        });
        pods.sort_by_key(|pod| pod.created_at);
        let items = pods
            .iter()
            .map(|pod| PodSandbox {
                id: pod.id.to_string(),
                metadata: Some(metadata(pod)),
                state: state_value(pod),
                created_at: pod.created_at,
                labels: to_map(&pod.spec.labels),
                annotations: to_map(&pod.spec.annotations),
                runtime_handler: pod.spec.runtime_handler.clone(),
            })
            .collect();
        Ok(ListPodSandboxResponse { items })
    }

    pub(super) async fn update_runtime_config(
        &self,
        request: UpdateRuntimeConfigRequest,
    ) -> Result<UpdateRuntimeConfigResponse, Status> {
        let cidr = request
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        self.pods.set_pod_cidr(&cidr);
        Ok(UpdateRuntimeConfigResponse {})
    }
}
