//! The runtime side: the socket plugins connect to, their registration,
//! and the calls to them, in index order, for each pod and container event.
//!
//! Plugins are held behind a read-write lock. Each RPC that sends events
//! holds it for reading from its first hook until what it made is visible
//! (see [`Nri::hooks`]); a plugin is synchronized and added holding it for
//! writing. So a pod made while a plugin connects reaches that plugin once:
//! in Synchronize's snapshot, or as an event, never both and never neither.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use prost::Message;
use tokio::net::UnixStream;
use tokio::sync::{OwnedRwLockReadGuard, RwLock, oneshot};

use crate::adjust::{Merged, merge_resources};
use crate::api::{self, Event};
use crate::launch::{self, Launched};
use crate::mux::Mux;
use crate::rpc::{self, CallError, PLUGIN_SERVICE, RUNTIME_SERVICE};
use crate::{Config, Error, NRI_VERSION, event_bit, valid_events};

/// What plugins ask of the runtime, and what Synchronize tells them.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Every pod and container, as plugins see them.
    async fn snapshot(&self) -> (Vec<api::PodSandbox>, Vec<api::Container>);
    /// Applies plugin-requested resource updates; returns those that failed.
    async fn update(&self, updates: Vec<api::ContainerUpdate>) -> Vec<api::ContainerUpdate>;
}

/// NRI, enabled: the listening socket and the registered plugins.
#[derive(Clone)]
pub struct Nri {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    runtime: Arc<dyn Runtime>,
    plugins: Arc<RwLock<Vec<Arc<Plugin>>>>,
    /// Containers plugins were told stopped: each is told once, whether it
    /// was stopped, stopped with its pod, or exited on its own.
    stopped: Mutex<std::collections::HashSet<String>>,
}

struct Plugin {
    idx: String,
    base: String,
    events: u32,
    client: ttrpc::r#async::Client,
    closed: AtomicBool,
    connection: Mutex<Option<Connection>>,
}

/// Dropped, it closes the plugin's socket (and kills a plugin Berth started).
struct Connection {
    _mux: Mux,
    _server: ttrpc::r#async::Server,
    _child: Option<tokio::process::Child>,
}

impl Plugin {
    fn name(&self) -> String {
        format!("{}-{}", self.idx, self.base)
    }

    fn subscribed(&self, event: Event) -> bool {
        self.events & event_bit(event) != 0 && !self.closed.load(Ordering::Acquire)
    }

    fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            drop(berth_lock(&self.connection).take());
        }
    }
}

fn berth_lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// As the reference checks them: a two-digit index and a name that can be
/// part of a file name.
fn check_registration(request: &api::RegisterPluginRequest) -> Result<(), String> {
    let idx = &request.plugin_idx;
    if idx.len() != 2 || !idx.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "plugin {:?} registered with invalid index {idx:?}: two digits expected",
            request.plugin_name
        ));
    }
    let name = &request.plugin_name;
    if name.is_empty() || name.contains(['/', '\0']) || name.chars().any(char::is_whitespace) {
        return Err(format!("plugin registered with invalid name {name:?}"));
    }
    Ok(())
}

impl Nri {
    /// Listens on the socket and starts the pre-installed plugins; must run
    /// inside the tokio runtime.
    pub fn start(config: Config, runtime: Arc<dyn Runtime>) -> Result<Nri, Error> {
        let listener = listen(&config.socket_path).map_err(|source| Error::Listen {
            path: config.socket_path.clone(),
            source,
        })?;
        let inner = Arc::new(Inner {
            config,
            runtime,
            plugins: Arc::default(),
            stopped: Mutex::default(),
        });
        let accepting = Arc::clone(&inner);
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(Arc::clone(&accepting).connect(stream, None));
                    }
                    Err(err) => {
                        tracing::warn!("NRI socket: accept failed: {err}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
            }
        });
        for found in launch::installed(&inner.config.plugin_path) {
            match launch::start(&found, &inner.config.plugin_config_path) {
                Ok((stream, launched)) => {
                    tokio::spawn(Arc::clone(&inner).connect(stream, Some(launched)));
                }
                Err(err) => tracing::warn!(
                    "NRI plugin {}: cannot start it: {err}",
                    found.path.display()
                ),
            }
        }
        tracing::info!(socket = %inner.config.socket_path.display(), "NRI enabled");
        Ok(Nri { inner })
    }

    /// The hooks of one RPC. Hold them until what the RPC made (a pod, a
    /// container) is visible, and take them once per RPC: a plugin waiting
    /// to synchronize blocks a second take.
    pub async fn hooks(&self) -> Hooks {
        Hooks {
            plugins: Arc::clone(&self.inner.plugins).read_owned().await,
            inner: Arc::clone(&self.inner),
        }
    }

    /// The registered plugins' names, in call order.
    pub async fn plugins(&self) -> Vec<String> {
        let plugins = self.inner.plugins.read().await;
        plugins.iter().map(|p| p.name()).collect()
    }
}

fn listen(path: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            ));
        }
        Err(_) => {}
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    // Plugins act as root on every container: only root may connect.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

impl Inner {
    async fn connect(self: Arc<Self>, stream: UnixStream, launched: Option<Launched>) {
        let who = launched
            .as_ref()
            .map(|l| format!("{}-{}", l.idx, l.base))
            .unwrap_or_else(|| "connecting on the socket".to_string());
        if let Err(reason) = self.register(stream, launched).await {
            tracing::warn!("NRI plugin {who}: {reason}");
        }
    }

    async fn register(
        self: &Arc<Self>,
        stream: UnixStream,
        launched: Option<Launched>,
    ) -> Result<(), String> {
        let (mut mux, mut closed) = Mux::new(stream);
        let client = rpc::client(mux.plugin.take().expect("a new mux has its connections"));
        let (registered_tx, registered) = oneshot::channel();
        let registered_tx = Arc::new(Mutex::new(Some(registered_tx)));
        let runtime = Arc::clone(&self.runtime);
        let handler: rpc::Handler = Arc::new(move |method, payload| {
            let registered_tx = Arc::clone(&registered_tx);
            let runtime = Arc::clone(&runtime);
            Box::pin(async move {
                match method {
                    "RegisterPlugin" => {
                        let request = api::RegisterPluginRequest::decode(payload.as_slice())
                            .map_err(|e| format!("undecodable RegisterPlugin: {e}"))?;
                        let checked = check_registration(&request);
                        if let Some(tx) = berth_lock(&registered_tx).take() {
                            let _ = tx.send(checked.clone().map(|()| request));
                        }
                        checked.map(|()| api::Empty {}.encode_to_vec())
                    }
                    "UpdateContainers" => {
                        let request = api::UpdateContainersRequest::decode(payload.as_slice())
                            .map_err(|e| format!("undecodable UpdateContainers: {e}"))?;
                        if !request.evict.is_empty() {
                            return Err("Berth does not evict containers for NRI plugins".into());
                        }
                        let failed = runtime.update(request.update).await;
                        Ok(api::UpdateContainersResponse { failed }.encode_to_vec())
                    }
                    other => Err(format!("unknown method {other}")),
                }
            })
        });
        let server = rpc::serve(
            mux.runtime.take().expect("a new mux has its connections"),
            RUNTIME_SERVICE,
            &["RegisterPlugin", "UpdateContainers"],
            handler,
        )
        .await
        .map_err(|e| format!("cannot serve the runtime service: {e}"))?;
        let timeout = self.config.registration_timeout;
        let request = tokio::select! {
            answer = registered => match answer {
                Ok(Ok(request)) => request,
                Ok(Err(reason)) => return Err(reason),
                Err(_) => return Err("closed before registering".into()),
            },
            _ = &mut closed => return Err("closed the connection before registering".into()),
            () = tokio::time::sleep(timeout) => {
                return Err(format!("did not register within {timeout:?}"));
            }
        };
        let (idx, base, config, child) = match launched {
            Some(l) => (l.idx, l.base, l.config, Some(l.child)),
            None => (request.plugin_idx, request.plugin_name, String::new(), None),
        };
        let name = format!("{idx}-{base}");
        let request_timeout = self.config.request_timeout;
        let configure = api::ConfigureRequest {
            config,
            runtime_name: self.config.runtime_name.clone(),
            runtime_version: self.config.runtime_version.clone(),
            registration_timeout: millis(self.config.registration_timeout),
            request_timeout: millis(request_timeout),
            nri_version: NRI_VERSION.to_string(),
        };
        let configured: api::ConfigureResponse = rpc::call(
            &client,
            PLUGIN_SERVICE,
            "Configure",
            &configure,
            request_timeout,
        )
        .await
        .map_err(|e| format!("{name}: Configure failed: {e}"))?;
        let mut events = configured.events as u32;
        if events & !valid_events() != 0 {
            return Err(format!(
                "{name}: subscribed to unknown events {:#x}",
                events & !valid_events()
            ));
        }
        if events == 0 {
            events = valid_events();
        }
        let plugin = Arc::new(Plugin {
            idx,
            base,
            events,
            client,
            closed: AtomicBool::new(false),
            connection: Mutex::new(Some(Connection {
                _mux: mux,
                _server: server,
                _child: child,
            })),
        });
        {
            let mut plugins = self.plugins.write().await;
            let (pods, containers) = self.runtime.snapshot().await;
            let (n_pods, n_containers) = (pods.len(), containers.len());
            let synced = match synchronize(&plugin.client, pods, containers, request_timeout).await
            {
                Ok(synced) => synced,
                Err(err) => {
                    plugin.close();
                    return Err(format!("{name}: Synchronize failed: {err}"));
                }
            };
            if !synced.update.is_empty() {
                let failed = self.runtime.update(synced.update).await;
                if !failed.is_empty() {
                    tracing::warn!(plugin = %name, ?failed, "NRI updates asked in Synchronize failed");
                }
            }
            plugins.push(Arc::clone(&plugin));
            plugins.sort_by(|a, b| (&a.idx, &a.base).cmp(&(&b.idx, &b.base)));
            tracing::info!(
                plugin = %name,
                events = format_args!("{events:#x}"),
                pods = n_pods,
                containers = n_containers,
                "NRI plugin registered and synchronized"
            );
        }
        let inner = Arc::clone(self);
        tokio::spawn(async move {
            let _ = closed.await;
            plugin.close();
            inner
                .plugins
                .write()
                .await
                .retain(|p| !Arc::ptr_eq(p, &plugin));
            tracing::info!(plugin = %plugin.name(), "NRI plugin disconnected");
        });
        Ok(())
    }
}

/// What one Synchronize message may carry: below ttrpc's 4 MiB limit.
const SYNC_BUDGET: usize = 3 << 20;

/// The snapshot in messages of at most `budget` bytes, in order; all but
/// the last marked `more`, as the reference splits a large node's.
fn sync_chunks(
    pods: Vec<api::PodSandbox>,
    containers: Vec<api::Container>,
    budget: usize,
) -> Vec<api::SynchronizeRequest> {
    let mut chunks = vec![api::SynchronizeRequest::default()];
    let mut used = 0;
    let mut room = |len: usize, chunks: &mut Vec<api::SynchronizeRequest>| {
        if used > 0 && used + len > budget {
            chunks.push(api::SynchronizeRequest::default());
            used = 0;
        }
        used += len;
    };
    for pod in pods {
        room(pod.encoded_len() + 8, &mut chunks);
        chunks
            .last_mut()
            .expect("one chunk at least")
            .pods
            .push(pod);
    }
    for container in containers {
        room(container.encoded_len() + 8, &mut chunks);
        chunks
            .last_mut()
            .expect("one chunk at least")
            .containers
            .push(container);
    }
    let last = chunks.len() - 1;
    for chunk in &mut chunks[..last] {
        chunk.more = true;
    }
    chunks
}

/// Sends the snapshot; the plugin's updates come with its last answer.
async fn synchronize(
    client: &ttrpc::r#async::Client,
    pods: Vec<api::PodSandbox>,
    containers: Vec<api::Container>,
    timeout: std::time::Duration,
) -> Result<api::SynchronizeResponse, String> {
    let mut last = api::SynchronizeResponse::default();
    for chunk in sync_chunks(pods, containers, SYNC_BUDGET) {
        let more = chunk.more;
        last = rpc::call(client, PLUGIN_SERVICE, "Synchronize", &chunk, timeout)
            .await
            .map_err(|e| e.to_string())?;
        if more && (last.more != more || !last.update.is_empty()) {
            return Err("the plugin does not take a Synchronize split in parts".into());
        }
    }
    Ok(last)
}

fn millis(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// The plugins as one RPC sees them; see [`Nri::hooks`].
pub struct Hooks {
    plugins: OwnedRwLockReadGuard<Vec<Arc<Plugin>>>,
    inner: Arc<Inner>,
}

/// What CreateContainer's plugins asked for.
#[derive(Debug)]
pub struct Created {
    pub adjustment: Merged,
    /// Updates of other containers.
    pub updates: Vec<api::ContainerUpdate>,
}

impl Hooks {
    /// Calls `method` on each subscribed plugin in order. A plugin that
    /// fails to answer (timeout, lost connection) is dropped and the call
    /// goes on without it; an error it returns fails the call. A plugin
    /// that does not implement a state event gets it as StateChange.
    async fn each<Req, Resp>(
        &self,
        event: Event,
        method: &'static str,
        request: &Req,
        state: Option<api::StateChangeEvent>,
    ) -> Result<Vec<(String, Resp)>, Error>
    where
        Req: Message,
        Resp: Message + Default,
    {
        let timeout = self.inner.config.request_timeout;
        let mut answers = Vec::new();
        for plugin in self.plugins.iter().filter(|p| p.subscribed(event)) {
            let mut result =
                rpc::call(&plugin.client, PLUGIN_SERVICE, method, request, timeout).await;
            if let (
                Err(CallError::Status {
                    unimplemented: true,
                    ..
                }),
                Some(state),
            ) = (&result, &state)
            {
                result = rpc::call::<_, api::Empty>(
                    &plugin.client,
                    PLUGIN_SERVICE,
                    "StateChange",
                    state,
                    timeout,
                )
                .await
                .map(|_| Resp::default());
            }
            match result {
                Ok(answer) => answers.push((plugin.name(), answer)),
                Err(err) if err.is_fatal() => {
                    tracing::warn!(plugin = %plugin.name(), "NRI plugin dropped: {method}: {err}");
                    plugin.close();
                }
                Err(err) => {
                    return Err(Error::Plugin {
                        plugin: plugin.name(),
                        event: method,
                        message: err.to_string(),
                    });
                }
            }
        }
        Ok(answers)
    }

    /// A pod or container event that only informs.
    async fn state(
        &self,
        event: Event,
        method: &'static str,
        pod: &api::PodSandbox,
        container: Option<&api::Container>,
    ) -> Result<(), Error> {
        if !self.plugins.iter().any(|p| p.subscribed(event)) {
            return Ok(());
        }
        let state = api::StateChangeEvent {
            event: event as i32,
            pod: Some(pod.clone()),
            container: container.cloned(),
        };
        // Every such request is (pod, container) in fields 1 and 2.
        let request = api::PostCreateContainerRequest {
            pod: Some(pod.clone()),
            container: container.cloned(),
        };
        self.each::<_, api::Empty>(event, method, &request, Some(state))
            .await
            .map(drop)
    }

    pub async fn run_pod_sandbox(&self, pod: &api::PodSandbox) -> Result<(), Error> {
        self.state(Event::RunPodSandbox, "RunPodSandbox", pod, None)
            .await
    }

    pub async fn stop_pod_sandbox(&self, pod: &api::PodSandbox) -> Result<(), Error> {
        self.state(Event::StopPodSandbox, "StopPodSandbox", pod, None)
            .await
    }

    pub async fn remove_pod_sandbox(&self, pod: &api::PodSandbox) -> Result<(), Error> {
        self.state(Event::RemovePodSandbox, "RemovePodSandbox", pod, None)
            .await
    }

    pub async fn update_pod_sandbox(
        &self,
        pod: &api::PodSandbox,
        overhead: Option<api::LinuxResources>,
        resources: Option<api::LinuxResources>,
    ) -> Result<(), Error> {
        let request = api::UpdatePodSandboxRequest {
            pod: Some(pod.clone()),
            overhead_linux_resources: overhead,
            linux_resources: resources,
        };
        self.each::<_, api::UpdatePodSandboxResponse>(
            Event::UpdatePodSandbox,
            "UpdatePodSandbox",
            &request,
            None,
        )
        .await
        .map(drop)
    }

    pub async fn post_update_pod_sandbox(&self, pod: &api::PodSandbox) -> Result<(), Error> {
        self.state(
            Event::PostUpdatePodSandbox,
            "PostUpdatePodSandbox",
            pod,
            None,
        )
        .await
    }

    /// The plugins' adjustments, conflicts refused and validators asked.
    pub async fn create_container(
        &self,
        pod: &api::PodSandbox,
        container: &api::Container,
    ) -> Result<Created, Error> {
        let mut created = Created {
            adjustment: Merged::new(&container.id),
            updates: Vec::new(),
        };
        if !self.plugins.iter().any(|p| {
            p.subscribed(Event::CreateContainer) || p.subscribed(Event::ValidateContainerAdjustment)
        }) {
            return Ok(created);
        }
        let request = api::CreateContainerRequest {
            pod: Some(pod.clone()),
            container: Some(container.clone()),
        };
        let answers: Vec<(String, api::CreateContainerResponse)> = self
            .each(Event::CreateContainer, "CreateContainer", &request, None)
            .await?;
        for (plugin, answer) in answers {
            if let Some(adjust) = answer.adjust {
                created.adjustment.add(&plugin, adjust)?;
            }
            for update in answer.update {
                if update.container_id == container.id {
                    return Err(Error::Invalid {
                        plugin,
                        reason: format!(
                            "asked to update container {} while it is created: adjust it instead",
                            container.id
                        ),
                    });
                }
                created.updates.push(update);
            }
            if !answer.evict.is_empty() {
                return Err(Error::Invalid {
                    plugin,
                    reason: "asked to evict containers, which Berth does not do for NRI plugins"
                        .into(),
                });
            }
        }
        if self
            .plugins
            .iter()
            .any(|p| p.subscribed(Event::ValidateContainerAdjustment))
        {
            let request = api::ValidateContainerAdjustmentRequest {
                pod: Some(pod.clone()),
                container: Some(container.clone()),
                adjust: Some(created.adjustment.combined()),
                update: created.updates.clone(),
                owners: Some(created.adjustment.owners()),
                plugins: self
                    .plugins
                    .iter()
                    .map(|p| api::PluginInstance {
                        name: p.base.clone(),
                        index: p.idx.clone(),
                    })
                    .collect(),
            };
            let verdicts: Vec<(String, api::ValidateContainerAdjustmentResponse)> = self
                .each(
                    Event::ValidateContainerAdjustment,
                    "ValidateContainerAdjustment",
                    &request,
                    None,
                )
                .await?;
            if let Some((plugin, verdict)) = verdicts.into_iter().find(|(_, v)| v.reject) {
                return Err(Error::Rejected {
                    plugin,
                    container: container.id.clone(),
                    reason: verdict.reason,
                });
            }
        }
        Ok(created)
    }

    pub async fn post_create_container(
        &self,
        pod: &api::PodSandbox,
        container: &api::Container,
    ) -> Result<(), Error> {
        self.state(
            Event::PostCreateContainer,
            "PostCreateContainer",
            pod,
            Some(container),
        )
        .await
    }

    pub async fn start_container(
        &self,
        pod: &api::PodSandbox,
        container: &api::Container,
    ) -> Result<(), Error> {
        self.state(
            Event::StartContainer,
            "StartContainer",
            pod,
            Some(container),
        )
        .await
    }

    pub async fn post_start_container(
        &self,
        pod: &api::PodSandbox,
        container: &api::Container,
    ) -> Result<(), Error> {
        self.state(
            Event::PostStartContainer,
            "PostStartContainer",
            pod,
            Some(container),
        )
        .await
    }

    /// The resources to apply: those asked for with the plugins' updates of
    /// this container on top; and their updates of other containers.
    pub async fn update_container(
        &self,
        pod: &api::PodSandbox,
        container: &api::Container,
        resources: api::LinuxResources,
    ) -> Result<(api::LinuxResources, Vec<api::ContainerUpdate>), Error> {
        let request = api::UpdateContainerRequest {
            pod: Some(pod.clone()),
            container: Some(container.clone()),
            linux_resources: Some(resources.clone()),
        };
        let answers: Vec<(String, api::UpdateContainerResponse)> = self
            .each(Event::UpdateContainer, "UpdateContainer", &request, None)
            .await?;
        let mut resources = resources;
        let mut others = Vec::new();
        for (_, answer) in answers {
            for update in answer.update {
                if update.container_id == container.id {
                    if let Some(asked) = update.linux.and_then(|l| l.resources) {
                        merge_resources(&mut resources, &asked);
                    }
                } else {
                    others.push(update);
                }
            }
        }
        Ok((resources, others))
    }

    pub async fn post_update_container(
        &self,
        pod: &api::PodSandbox,
        container: &api::Container,
    ) -> Result<(), Error> {
        self.state(
            Event::PostUpdateContainer,
            "PostUpdateContainer",
            pod,
            Some(container),
        )
        .await
    }

    /// Updates of other containers the plugins asked for. Only the first
    /// call for a container reaches plugins.
    pub async fn stop_container(
        &self,
        pod: &api::PodSandbox,
        container: &api::Container,
    ) -> Result<Vec<api::ContainerUpdate>, Error> {
        if !berth_lock(&self.inner.stopped).insert(container.id.clone()) {
            return Ok(Vec::new());
        }
        let request = api::StopContainerRequest {
            pod: Some(pod.clone()),
            container: Some(container.clone()),
        };
        let answers: Vec<(String, api::StopContainerResponse)> = self
            .each(Event::StopContainer, "StopContainer", &request, None)
            .await?;
        Ok(answers.into_iter().flat_map(|(_, a)| a.update).collect())
    }

    /// Tells plugins the container stopped first, if they were not told.
    pub async fn remove_container(
        &self,
        pod: &api::PodSandbox,
        container: &api::Container,
    ) -> Result<(), Error> {
        match self.stop_container(pod, container).await {
            Ok(updates) => self.apply_updates(updates).await,
            Err(err) => tracing::warn!(container = %container.id, "{err}"),
        }
        berth_lock(&self.inner.stopped).remove(&container.id);
        self.state(
            Event::RemoveContainer,
            "RemoveContainer",
            pod,
            Some(container),
        )
        .await
    }

    /// Applies plugins' updates of other containers, logging failures.
    pub async fn apply_updates(&self, updates: Vec<api::ContainerUpdate>) {
        if updates.is_empty() {
            return;
        }
        let failed = self.inner.runtime.update(updates).await;
        if !failed.is_empty() {
            tracing::warn!(?failed, "container updates asked by NRI plugins failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_snapshot_is_split_in_order_and_only_the_last_part_is_final() {
        let pod = |i: usize| api::PodSandbox {
            id: format!("pod-{i}"),
            name: "x".repeat(1000),
            ..Default::default()
        };
        let container = |i: usize| api::Container {
            id: format!("ctr-{i}"),
            env: vec!["y".repeat(1000)],
            ..Default::default()
        };
        let chunks = sync_chunks(
            (0..10).map(pod).collect(),
            (0..30).map(container).collect(),
            5_000,
        );
        assert!(chunks.len() > 5, "{}", chunks.len());
        assert!(chunks.iter().all(|c| c.encoded_len() <= 5_000 + 100));
        let (last, rest) = chunks.split_last().unwrap();
        assert!(!last.more && rest.iter().all(|c| c.more));
        let ids: Vec<String> = chunks
            .iter()
            .flat_map(|c| c.pods.iter().map(|p| p.id.clone()))
            .chain(
                chunks
                    .iter()
                    .flat_map(|c| c.containers.iter().map(|c| c.id.clone())),
            )
            .collect();
        let expected: Vec<String> = (0..10)
            .map(|i| format!("pod-{i}"))
            .chain((0..30).map(|i| format!("ctr-{i}")))
            .collect();
        assert_eq!(ids, expected);
        // A small one is one final message.
        let one = sync_chunks(vec![pod(0)], Vec::new(), SYNC_BUDGET);
        assert_eq!(one.len(), 1);
        assert!(!one[0].more);
    }

    #[test]
    fn registration_needs_a_two_digit_index_and_a_plain_name() {
        let request = |name: &str, idx: &str| api::RegisterPluginRequest {
            plugin_name: name.into(),
            plugin_idx: idx.into(),
            nri_version: String::new(),
        };
        assert!(check_registration(&request("logger", "10")).is_ok());
        assert!(check_registration(&request("logger", "1")).is_err());
        assert!(check_registration(&request("logger", "ab")).is_err());
        assert!(check_registration(&request("a/b", "10")).is_err());
        assert!(check_registration(&request("", "10")).is_err());
    }
}
