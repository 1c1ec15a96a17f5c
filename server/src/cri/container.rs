//! The container RPCs: CreateContainer, StartContainer, StopContainer,
//! RemoveContainer, ContainerStatus, ListContainers, ExecSync and
//! ReopenContainerLog, mapped onto `berth_runtime::containers` as CRI-O
//! answers them. Everything that blocks runs on `spawn_blocking`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_cri::container_status;
use berth_cri::grpc::ToStatus;
use berth_proto::cri::{
    ContainerConfig, ContainerStatusRequest, ContainerStatusResponse, CreateContainerRequest,
    CreateContainerResponse, ExecSyncRequest, ExecSyncResponse, ListContainersRequest,
    ListContainersResponse, NamespaceMode, RemoveContainerRequest, RemoveContainerResponse,
    ReopenContainerLogRequest, ReopenContainerLogResponse, StartContainerRequest,
    StartContainerResponse, StopContainerRequest, StopContainerResponse,
};
use berth_runtime::containers::{self, Containers, Error};
use berth_runtime::oci::OciRuntime;
use berth_runtime::record::{ContainerRecord, ContainerState as State, StoreError};
use berth_runtime::spec::{ImageConfig, ImageVolume};
use tonic::Status;

use super::CriService;
use crate::config::Config;
use crate::live::LiveConfig;

/// Opens the container records (`<root>/containers`); runtime handlers are
/// looked up in the live config, so a reload's new handlers apply. What
/// containers with an unreadable record left is removed in the background.
pub fn open(config: &Config, live: Arc<LiveConfig>) -> Result<Arc<Containers>, StoreError> {
    // berth-shim ships next to berthd.
    let shim = berth_runtime::oci::default_shim_path().unwrap_or_else(|_| "berth-shim".into());
    let run_root = config.run_root.clone();
    // Not live: a reload cannot move running containers to another driver.
    let cgroup_driver = config.cgroup_driver.host();
    let runtimes: containers::Runtimes = Arc::new(move |name: &str| {
        live.get().runtimes.get(name).map(|handler| OciRuntime {
            path: handler.path.clone(),
            root: run_root.join("runtimes").join(name),
            shim: shim.clone(),
            cgroup_driver,
        })
    });
    let (containers, errors) = Containers::open(containers::Options {
        state_dir: config.root.join("containers"),
        run_dir: config.run_root.join("containers"),
        runtimes,
    })?;
    for error in &errors {
        tracing::warn!("skipping unreadable container record: {error}");
    }
    let containers = Arc::new(containers);
    let unreadable: Vec<String> = errors
        .iter()
        .filter_map(StoreError::corrupt_id)
        .map(str::to_string)
        .collect();
    if !unreadable.is_empty() {
        let reclaiming = Arc::clone(&containers);
        let mut handlers: Vec<String> = config.runtimes.keys().cloned().collect();
        handlers.insert(0, config.default_runtime.clone());
        tokio::task::spawn_blocking(move || reclaim(&reclaiming, &handlers, unreadable));
    }
    Ok(containers)
}

/// Removes what the containers `ids` left, each with the handler whose
/// state dir knows it (the first of `handlers` when none does).
fn reclaim(containers: &Containers, handlers: &[String], ids: Vec<String>) {
    for id in ids {
        let runtimes: Vec<OciRuntime> = handlers
            .iter()
            .filter_map(|name| containers.runtime(name))
            .collect();
        let Some(runtime) = runtimes
            .iter()
            .find(|runtime| runtime.root.join(&id).exists())
            .or(runtimes.first())
        else {
            tracing::warn!(container = %id, "no runtime handler to remove what the container with an unreadable record left");
            continue;
        };
        match containers.reclaim(&id, runtime) {
            Ok(()) => tracing::info!(
                container = %id,
                "removed what the container with an unreadable record left"
            ),
            Err(err) => tracing::warn!(
                container = %id,
                "cannot remove what the container with an unreadable record left: {err}"
            ),
        }
    }
}

pub(super) fn status(err: Error) -> Status {
    err.to_status()
}

/// Runs blocking container work off the async workers.
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Status> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(work))
        .await
        .map_err(|err| Status::internal(format!("a container task failed: {err}")))?
        .map_err(status)
}

/// An exec's arguments: INVALID_ARGUMENT naming one with a NUL byte.
pub(super) fn check_cmd_bytes(cmd: &[String]) -> Result<(), Status> {
    berth_cri::container::exec_command(cmd).map_err(|err| err.to_status())
}

/// CRI-O's answer to an exec that outlived its timeout.
const EXEC_TIMED_OUT: &[u8] = b"command timed out";

impl CriService {
    /// Long: CreateContainer's steps in order (request checks, the pod,
    /// the pinned image, the name reservation, the spec, the record), each
    /// undoing the reservation on failure; the conversion itself is
    /// `berth_cri::container::convert`.
    pub(super) async fn create_container(
        &self,
        request: CreateContainerRequest,
    ) -> Result<CreateContainerResponse, Status> {
        if request.pod_sandbox_id.is_empty() {
            return Err(Status::invalid_argument(
                "pod_sandbox_id: must not be empty",
            ));
        }
        let config = request
            .config
            .ok_or_else(|| Status::invalid_argument("config: must be set"))?;
        let meta = config
            .metadata
            .clone()
            .filter(|m| !m.name.is_empty())
            .ok_or_else(|| Status::invalid_argument("config.metadata.name: must be set"))?;
        let image_name = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .filter(|name| !name.is_empty())
            .ok_or_else(|| Status::invalid_argument("config.image.image: must name an image"))?;
        let pod = self
            .pods
            .get(&request.pod_sandbox_id)
            .await
            .map_err(|err| err.to_status())?;
        if !pod.complete || pod.effective_state() != berth_sandbox::State::Ready {
            return Err(Status::failed_precondition(format!(
                "pod sandbox {} is not ready: cannot create container {:?} in it",
                pod.id, meta.name
            )));
        }
        // Until the record names the image, a RemoveImage would not see
        // this container among its users: the pin stands in for it.
        let (image, pin) = self.images.get_pinned(&image_name).ok_or_else(|| {
            Status::not_found(format!(
                "image {image_name:?} of container {:?} is not in the image store: pull it first",
                meta.name
            ))
        })?;
        let image_cfg = container_status::image_config(&image);
        if let Some(signal) = &image_cfg.stop_signal {
            berth_runtime::signal::StopSignal::parse(signal).map_err(|err| {
                Status::failed_precondition(format!("image {image_name:?}: StopSignal: {err}"))
            })?;
        }
        let stop_signal =
            berth_cri::signal::for_container(config.stop_signal, image_cfg.stop_signal.as_deref())
                .map_err(|err| err.to_status())?;
        let reserved_name = format!(
            "k8s_{}_{}_{}_{}_{}",
            meta.name, pod.spec.name, pod.spec.namespace, pod.spec.uid, meta.attempt
        );
        if let Some(id) = self.abandoned.claim(&reserved_name)
            && self.containers.get(&id).is_ok()
        {
            super::span_ids::record_ids("", &id);
            return Ok(CreateContainerResponse { container_id: id });
        }
        // Image volumes: their images pinned like the container's own.
        let (image_volumes, volume_pins) = self.image_volumes(&config)?;
        let id = self.containers.reserve(&reserved_name).map_err(status)?;
        let prepared = berth_host::step!("prepare").in_scope(|| {
            self.prepare(
                &id,
                &config,
                request.sandbox_config,
                &pod,
                &image_cfg,
                image_volumes,
            )
        });
        let (spec, log_path, stdin_once) = match prepared {
            Ok(prepared) => prepared,
            Err(err) => {
                self.containers.release(&reserved_name, &id);
                return Err(err);
            }
        };
        let record = ContainerRecord {
            id: id.clone(),
            pod_id: pod.id.to_string(),
            name: meta.name.clone(),
            attempt: meta.attempt,
            runtime_handler: pod.runtime_handler.clone(),
            state: State::Created,
            created_at: 0,
            started_at: None,
            exit: None,
            pid: 0,
            image: image_name,
            image_ref: container_status::image_ref(&image),
            image_id: image.id_hex(),
            labels: config.labels.clone().into_iter().collect(),
            annotations: config.annotations.clone().into_iter().collect(),
            log_path,
            run_dir: PathBuf::new(),
            rootfs: PathBuf::new(),
            stop_signal,
            reserved_name: reserved_name.clone(),
            state_dir: PathBuf::new(),
            tty: config.tty,
            stdin: config.stdin,
            stdin_once,
            mounts: Some(spec.mounts.clone()),
            resources: Some(spec.resources.clone()),
            legacy: serde_json::Value::Null,
            message: None,
        };
        let layers = self.images.lower_dirs(&image);
        let containers = self.containers.clone();
        let own = berth_runtime::spec::own_oom_score_adj();
        let name = meta.name;
        // Held until the container is visible, so a plugin connecting
        // meanwhile learns of it exactly once.
        let hooks = self.nri_hooks().await;
        let nri_pod = hooks.as_ref().map(|_| crate::nri::pod(&pod));
        let nri = match (&hooks, &nri_pod) {
            (Some(hooks), Some(nri_pod)) => {
                match nri_create(hooks, nri_pod, &record, &spec, own).await {
                    Ok(created) => created,
                    Err(err) => {
                        self.containers.release(&reserved_name, &id);
                        return Err(err);
                    }
                }
            }
            _ => NriCreated::default(),
        };
        let mut record = record;
        if let (Some(adjusted), Some(kept)) = (&nri.resources, record.resources.as_mut()) {
            kept.merge(adjusted);
        }
        let this = self.clone();
        let create = async move {
            let NriCreated {
                adjust, updates, ..
            } = nri;
            let created =
                blocking(move || containers.create(record, layers, spec, own, adjust)).await?;
            drop((pin, volume_pins));
            tracing::info!(container = %created.id, pod = %created.pod_id, name = %name, "container created");
            if let (Some(hooks), Some(nri_pod)) = (hooks, nri_pod) {
                match this.nri_container(&created.id).await {
                    Ok(container) => {
                        if let Err(err) = hooks.post_create_container(&nri_pod, &container).await {
                            tracing::warn!(container = %created.id, "{err}");
                        }
                    }
                    Err(err) => {
                        tracing::warn!(container = %created.id, "NRI PostCreateContainer: {}", err.message())
                    }
                }
                hooks.apply_updates(updates).await;
            }
            Ok(created.id)
        };
        let container_id = self.abandoned.run(reserved_name, create).await?;
        super::span_ids::record_ids("", &container_id);
        Ok(CreateContainerResponse { container_id })
    }

    /// The image of each image volume (`mounts[i].image`), pinned until the
    /// container's record names it; by mount index.
    fn image_volumes(
        &self,
        config: &ContainerConfig,
    ) -> Result<(BTreeMap<usize, ImageVolume>, Vec<berth_image::Pin>), Status> {
        let mut volumes = BTreeMap::new();
        let mut pins = Vec::new();
        for (i, mount) in config.mounts.iter().enumerate() {
            let Some(name) = mount
                .image
                .as_ref()
                .map(|s| &s.image)
                .filter(|n| !n.is_empty())
            else {
                continue;
            };
            let (image, pin) = self.images.get_pinned(name).ok_or_else(|| {
                Status::not_found(format!(
                    "mounts[{i}].image: image {name:?} is not in the image store: pull it first"
                ))
            })?;
            volumes.insert(
                i,
                ImageVolume {
                    image: name.clone(),
                    image_id: image.id_hex(),
                    sub_path: PathBuf::new(),
                    layers: self.images.lower_dirs(&image),
                },
            );
            pins.push(pin);
        }
        Ok((volumes, pins))
    }

    /// The container's spec, log path and stdin_once, from the request,
    /// the pod and the image.
    fn prepare(
        &self,
        id: &str,
        config: &ContainerConfig,
        sandbox: Option<berth_proto::cri::PodSandboxConfig>,
        pod: &berth_sandbox::Pod,
        image: &ImageConfig,
        image_volumes: BTreeMap<usize, ImageVolume>,
    ) -> Result<(berth_runtime::spec::ContainerSpec, PathBuf, bool), Status> {
        let mut options = berth_cri::container::Options::new(id);
        options.image_volumes = image_volumes;
        if self.config.container.seccomp_use_default_when_empty {
            options.default_seccomp = berth_cri::container::DefaultSeccomp::RuntimeDefault;
        }
        if let Some(handler) = self.live.get().runtimes.get(&pod.runtime_handler) {
            options.features = self.features.probe(&handler.path);
        }
        options.apparmor = berth_runtime::apparmor::AppArmor::host();
        options.cgroup_namespace =
            berth_host::cgroup::Layout::host().mode() == berth_host::cgroup::Mode::Unified;
        let pid_options = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|sc| sc.namespace_options.as_ref());
        if let Some(ns) = pid_options
            && ns.pid == i32::from(NamespaceMode::Target)
            && let Ok(target) = self.containers.running(&ns.target_id)
        {
            options.target_pid_namespace = Some(format!("/proc/{}/ns/pid", target.pid).into());
        }
        let pod_facts = berth_cri::pod::facts(pod, sandbox.as_ref());
        let converted = berth_cri::container::convert(config, image, &pod_facts, &options)
            .map_err(|err| err.to_status())?;
        // No log path asked for: CRI-O's `<log dir>/<id>.log`.
        // Logs go under the pod's own (validated) log directory, whatever
        // this request's copy of the pod config says, as in CRI-O.
        let log_dir = if pod.spec.log_directory.is_empty() {
            self.config.root.join("logs").join(pod.id.as_str())
        } else {
            PathBuf::from(&pod.spec.log_directory)
        };
        // `convert` refused absolute and `..` log paths: relative ones join
        // the default directory of a pod without its own.
        let log_path = match converted.log_path {
            Some(path) if path.is_absolute() => path,
            Some(relative) => log_dir.join(relative),
            None => log_dir.join(format!("{id}.log")),
        };
        if let Some(parent) = log_path.parent() {
            std::fs::create_dir_all(parent).map_err(|err| {
                Status::internal(format!(
                    "cannot create the log directory {}: {err}",
                    parent.display()
                ))
            })?;
        }
        Ok((converted.spec, log_path, converted.stdin_once))
    }

    pub(super) async fn start_container(
        &self,
        request: StartContainerRequest,
    ) -> Result<StartContainerResponse, Status> {
        let hooks = self.nri_hooks().await;
        let mut nri_pod = None;
        if let Some(hooks) = &hooks {
            let (pod, container) = self.nri_objects(&request.container_id).await?;
            hooks
                .start_container(&pod, &container)
                .await
                .map_err(|err| err.to_status())?;
            nri_pod = Some(pod);
        }
        let containers = self.containers.clone();
        let id = request.container_id.clone();
        blocking(move || containers.start(&id)).await?;
        if let (Some(hooks), Some(pod)) = (&hooks, &nri_pod) {
            // Running now: its pid is news to plugins.
            let container = self.nri_container(&request.container_id).await?;
            if let Err(err) = hooks.post_start_container(pod, &container).await {
                tracing::warn!(container = %request.container_id, "{err}");
            }
        }
        Ok(StartContainerResponse {})
    }

    pub(super) async fn stop_container(
        &self,
        request: StopContainerRequest,
    ) -> Result<StopContainerResponse, Status> {
        let timeout = Duration::from_secs(request.timeout.max(0) as u64);
        let hooks = self.nri_hooks().await;
        let containers = self.containers.clone();
        let id = request.container_id.clone();
        blocking(move || containers.stop(&id, timeout)).await?;
        if let Some(hooks) = &hooks {
            self.nri_stopped(hooks, &request.container_id).await;
        }
        Ok(StopContainerResponse {})
    }

    pub(super) async fn remove_container(
        &self,
        request: RemoveContainerRequest,
    ) -> Result<RemoveContainerResponse, Status> {
        let hooks = self.nri_hooks().await;
        let known = match &hooks {
            Some(_) => self.nri_objects(&request.container_id).await.ok(),
            None => None,
        };
        let containers = self.containers.clone();
        blocking(move || containers.remove(&request.container_id)).await?;
        if let (Some(hooks), Some((pod, container))) = (&hooks, known)
            && let Err(err) = hooks.remove_container(&pod, &container).await
        {
            tracing::warn!(container = %container.id, "{err}");
        }
        Ok(RemoveContainerResponse {})
    }

    pub(super) async fn container_status(
        &self,
        request: ContainerStatusRequest,
    ) -> Result<ContainerStatusResponse, Status> {
        if request.container_id.is_empty() {
            return Err(Status::invalid_argument("container_id: must not be empty"));
        }
        let containers = self.containers.clone();
        let id = request.container_id;
        let (record, spec) = blocking(move || {
            let record = containers.get(&id)?;
            let spec = berth_runtime::spec::read(&record.run_dir).ok();
            Ok((record, spec))
        })
        .await?;
        let status = container_status::status(
            &record,
            spec.as_ref().and_then(container_status::container_user),
        );
        let mut info = HashMap::new();
        if request.verbose {
            let shim_pid =
                std::fs::read_to_string(record.run_dir.join(berth_shim_protocol::SHIM_PID_FILE))
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok());
            let verbose = serde_json::json!({
                "sandboxID": record.pod_id,
                "pid": record.pid,
                "shimPid": shim_pid,
                "runtimeHandler": record.runtime_handler,
                "runDir": record.run_dir,
                "rootfs": record.rootfs,
                "reservedName": record.reserved_name,
                "runtimeSpec": spec,
            });
            info.insert("info".to_string(), verbose.to_string());
        }
        Ok(ContainerStatusResponse {
            status: Some(status),
            info,
        })
    }

    pub(super) async fn list_containers(
        &self,
        request: ListContainersRequest,
    ) -> Result<ListContainersResponse, Status> {
        let filter = request.filter.unwrap_or_default();
        // The records as known: the kubelet lists every second, and reading
        // every container's files each time stalled the lists of a busy node.
        let mut records = self.containers.list_known();
        records.retain(|r| {
            r.id.starts_with(&filter.id)
                && r.pod_id.starts_with(&filter.pod_sandbox_id)
                && filter
                    .state
                    .as_ref()
                    .is_none_or(|s| s.state == container_status::state_value(r.state))
                && filter
                    .label_selector
                    .iter()
                    .all(|(k, v)| r.labels.get(k) == Some(v))
        });
        records.sort_by_key(|r| r.created_at);
        Ok(ListContainersResponse {
            containers: records.iter().map(container_status::container).collect(),
        })
    }

    pub(super) async fn exec_sync(
        &self,
        request: ExecSyncRequest,
    ) -> Result<ExecSyncResponse, Status> {
        if request.cmd.is_empty() {
            return Err(Status::invalid_argument("cmd: must not be empty"));
        }
        check_cmd_bytes(&request.cmd)?;
        let timeout = (request.timeout > 0).then(|| Duration::from_secs(request.timeout as u64));
        let containers = self.containers.clone();
        let id = request.container_id;
        let cmd = request.cmd;
        let out = blocking(move || containers.exec_sync(&id, &cmd, timeout)).await?;
        if out.timed_out {
            return Ok(ExecSyncResponse {
                stdout: Vec::new(),
                stderr: EXEC_TIMED_OUT.to_vec(),
                exit_code: -1,
            });
        }
        let mut stderr = out.stderr;
        for (stream, dropped) in [
            ("stdout", out.stdout_dropped),
            ("stderr", out.stderr_dropped),
        ] {
            if dropped > 0 {
                tracing::warn!(stream, dropped, "ExecSync output over the cap was dropped");
                stderr.extend_from_slice(
                    format!(
                        "\n[berth: {dropped} bytes of {stream} beyond {} bytes were dropped]\n",
                        berth_runtime::oci::EXEC_OUTPUT_CAP
                    )
                    .as_bytes(),
                );
            }
        }
        Ok(ExecSyncResponse {
            stdout: out.stdout,
            stderr,
            exit_code: out.exit_code,
        })
    }

    pub(super) async fn reopen_container_log(
        &self,
        request: ReopenContainerLogRequest,
    ) -> Result<ReopenContainerLogResponse, Status> {
        let containers = self.containers.clone();
        blocking(move || containers.reopen_log(&request.container_id)).await?;
        Ok(ReopenContainerLogResponse {})
    }

    /// Stops (and with `remove`, removes) every container of the pod before
    /// the pod is torn down; returns every failure.
    pub(super) async fn pod_containers_down(&self, pod_id: &str, remove: bool) -> Vec<String> {
        let ids = self.containers.of_pod(pod_id);
        let tasks: Vec<_> = ids
            .into_iter()
            .map(|id| {
                let containers = self.containers.clone();
                let span = tracing::info_span!("container", container_id = %id);
                tokio::task::spawn_blocking(move || {
                    let _entered = span.entered();
                    let result = if remove {
                        containers.remove(&id)
                    } else {
                        containers.stop(&id, Duration::ZERO)
                    };
                    result.map_err(|err| err.to_string())
                })
            })
            .collect();
        let mut failures = Vec::new();
        for task in tasks {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => failures.push(err),
                Err(err) => failures.push(format!("a container task failed: {err}")),
            }
        }
        failures
    }
}

/// CreateContainer's plugins asked: the container as it would be made,
/// their merged adjustment (applied to the spec before it is written) and
/// their updates of other containers.
async fn nri_create(
    hooks: &berth_nri::Hooks,
    pod: &berth_nri::api::PodSandbox,
    record: &ContainerRecord,
    spec: &berth_runtime::spec::ContainerSpec,
    own: i32,
) -> Result<NriCreated, Status> {
    let container = crate::nri::container_to_create(record, spec);
    let created = hooks
        .create_container(pod, &container)
        .await
        .map_err(|err| err.to_status())?;
    if created.adjustment.is_empty() {
        return Ok(NriCreated {
            updates: created.updates,
            ..NriCreated::default()
        });
    }
    let linux = created.adjustment.combined().linux.unwrap_or_default();
    let mut resources = berth_runtime::spec::Resources::default();
    if let Some(adjusted) = &linux.resources {
        resources = crate::nri::resources_from_nri(adjusted);
    }
    resources.oom_score_adj = linux
        .oom_score_adj
        .and_then(|o| i32::try_from(o.value).ok())
        .map(|o| o.max(own));
    let merged = created.adjustment;
    let adjust: Box<berth_runtime::lifecycle::SpecAdjust> = Box::new(move |oci| {
        let mut value = serde_json::to_value(&*oci).map_err(|e| e.to_string())?;
        merged.apply(&mut value, own).map_err(|e| e.to_string())?;
        *oci = serde_json::from_value(value)
            .map_err(|e| format!("the NRI-adjusted spec is not a valid OCI spec: {e}"))?;
        Ok(())
    });
    Ok(NriCreated {
        adjust: Some(adjust),
        updates: created.updates,
        resources: Some(resources),
    })
}

/// CreateContainer's plugins' answer.
#[derive(Default)]
struct NriCreated {
    /// Applied to the OCI spec before it is written.
    adjust: Option<Box<berth_runtime::lifecycle::SpecAdjust>>,
    /// Of other containers, applied once this one is made.
    updates: Vec<berth_nri::api::ContainerUpdate>,
    /// The limits they set, for the record that UpdateContainerResources
    /// and ContainerStatus read.
    resources: Option<berth_runtime::spec::Resources>,
}

/// The lookup the streaming server (exec, attach, port-forward) uses.
impl CriService {
    /// A running container by ID or unique prefix: its runtime, run dir
    /// (attach and control sockets), tty/stdin flags and pod ID. NOT_FOUND
    /// for an unknown ID, FAILED_PRECONDITION for one that does not run.
    pub fn running_container(
        &self,
        id: &str,
    ) -> Result<berth_runtime::containers::Running, Status> {
        self.containers.running(id).map_err(status)
    }
}
