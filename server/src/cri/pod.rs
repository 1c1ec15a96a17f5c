//! The pod sandbox RPCs: RunPodSandbox, StopPodSandbox, RemovePodSandbox,
//! PodSandboxStatus, ListPodSandbox, and UpdateRuntimeConfig (the pod CIDR).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use berth_cni::Cni;
use berth_cri::grpc::ToStatus;
use berth_proto::cri::{
    ListPodSandboxRequest, ListPodSandboxResponse, PodSandboxStatusRequest,
    PodSandboxStatusResponse, RemovePodSandboxRequest, RemovePodSandboxResponse,
    RunPodSandboxRequest, RunPodSandboxResponse, StopPodSandboxRequest, StopPodSandboxResponse,
    UpdatePodSandboxResourcesRequest, UpdatePodSandboxResourcesResponse,
    UpdateRuntimeConfigRequest, UpdateRuntimeConfigResponse,
};
use berth_sandbox::{Error, Layout, Options, Sandboxes};
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
        cgroup_driver: config.cgroup_driver.host(),
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
    err.to_status()
}

impl CriService {
    pub(super) async fn run_pod_sandbox(
        &self,
        request: RunPodSandboxRequest,
    ) -> Result<RunPodSandboxResponse, Status> {
        let config = request
            .config
            .ok_or_else(|| Status::invalid_argument("config: must be set"))?;
        let spec =
            berth_cri::pod::spec(config, request.runtime_handler).map_err(|err| err.to_status())?;
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
        let nri = self.clone();
        let create = async move {
            // Held until the pod is visible: no container can be made in it
            // before its plugins have answered, and a plugin connecting
            // meanwhile learns of it exactly once.
            let hooks = nri.nri_hooks().await;
            pods.run_admitted(spec, async |pod| match &hooks {
                Some(hooks) => hooks
                    .run_pod_sandbox(&crate::nri::pod(pod))
                    .await
                    .map_err(|err| err.to_string()),
                None => Ok(()),
            })
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
        let pod = match self.pods.get(id).await {
            Ok(pod) => pod,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(err) => return Err(status(err)),
        };
        let pod_id = pod.id.clone();
        // With NRI: the pod and its containers as plugins know them, taken
        // before they go.
        let nri = match self.nri_hooks().await {
            Some(hooks) => {
                let mut known = Vec::new();
                for id in self.containers.of_pod(pod_id.as_str()) {
                    if let Ok(container) = self.nri_container(&id).await {
                        known.push(container);
                    }
                }
                Some((hooks, crate::nri::pod(&pod), known))
            }
            None => None,
        };
        let failures = self.pod_containers_down(pod_id.as_str(), remove).await;
        if let Some((hooks, nri_pod, known)) = &nri {
            for container in known {
                match hooks.stop_container(nri_pod, container).await {
                    Ok(updates) => hooks.apply_updates(updates).await,
                    Err(err) => tracing::warn!(container = %container.id, "{err}"),
                }
            }
            // Plugins hear of a pod's stop once, after its containers stopped.
            if pod.effective_state() == berth_sandbox::State::Ready
                && let Err(err) = hooks.stop_pod_sandbox(nri_pod).await
            {
                tracing::warn!(pod = %pod_id, "{err}");
            }
        }
        let result = if remove {
            self.pods.remove(pod_id.as_str()).await
        } else {
            self.pods.stop(pod_id.as_str()).await
        };
        if let (Some((hooks, nri_pod, known)), true) = (&nri, remove) {
            for container in known {
                if self.containers.get(&container.id).is_err()
                    && let Err(err) = hooks.remove_container(nri_pod, container).await
                {
                    tracing::warn!(container = %container.id, "{err}");
                }
            }
            if result.is_ok()
                && let Err(err) = hooks.remove_pod_sandbox(nri_pod).await
            {
                tracing::warn!(pod = %pod_id, "{err}");
            }
        }
        match (result, failures.is_empty()) {
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
            status: Some(berth_cri::pod::status(&pod)),
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
                    .is_none_or(|s| s.state == berth_cri::pod::state_value(pod))
                && filter
                    .label_selector
                    .iter()
                    .all(|(k, v)| pod.spec.labels.get(k) == Some(v))
        });
        pods.sort_by_key(|pod| pod.created_at);
        let items = pods.iter().map(berth_cri::pod::sandbox).collect();
        Ok(ListPodSandboxResponse { items })
    }

    /// In-place pod resize: the pod-level limits on the pod's own cgroup.
    /// CRI-O answers an unknown pod with NOT_FOUND; so does Berth.
    pub(super) async fn update_pod_sandbox_resources(
        &self,
        request: UpdatePodSandboxResourcesRequest,
    ) -> Result<UpdatePodSandboxResourcesResponse, Status> {
        let limits =
            berth_cri::pod_resize::limits(request.resources.as_ref(), request.overhead.as_ref())
                .map_err(|err| err.to_status())?;
        let hooks = self.nri_hooks().await;
        let nri_pod = match &hooks {
            Some(hooks) => {
                let pod = self
                    .pods
                    .get(&request.pod_sandbox_id)
                    .await
                    .map_err(status)?;
                let pod = crate::nri::pod(&pod);
                let resources = |r: Option<&berth_proto::cri::LinuxContainerResources>| {
                    r.map(crate::nri::cri_resources_to_nri)
                };
                hooks
                    .update_pod_sandbox(
                        &pod,
                        resources(request.overhead.as_ref()),
                        resources(request.resources.as_ref()),
                    )
                    .await
                    .map_err(|err| err.to_status())?;
                Some(pod)
            }
            None => None,
        };
        let applied = self
            .pods
            .update_resources(&request.pod_sandbox_id, limits)
            .await
            .map_err(status)?;
        if let (Some(hooks), Some(pod)) = (&hooks, &nri_pod)
            && let Err(err) = hooks.post_update_pod_sandbox(pod).await
        {
            tracing::warn!(pod = %pod.id, "{err}");
        }
        tracing::info!(?limits, ?applied, "pod sandbox resources updated");
        Ok(UpdatePodSandboxResourcesResponse {})
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
