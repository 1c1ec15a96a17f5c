//! GetContainerEvents: the container manager's events (created, started,
//! stopped, deleted), each completed with the pod's status and the statuses
//! of the pod's containers as CRI-O sends them, on a broadcast channel every
//! subscriber reads. A subscriber that falls behind loses events (logged);
//! it never holds up the runtime or the other subscribers.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::cri::{
    ContainerEventResponse, ContainerEventType, GetEventsRequest, PodSandboxStatusRequest,
};
use berth_runtime::containers::{Event, EventKind};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::CriService;

/// Events kept for subscribers that are behind; older ones are dropped.
const BACKLOG: usize = 1024;
/// How often running containers' exit files are looked at besides the
/// exit watch (`Containers::watch_exits`), for a shim that died without
/// writing one.
const EXIT_POLL: Duration = Duration::from_secs(1);

pub type EventStream = Pin<Box<dyn Stream<Item = Result<ContainerEventResponse, Status>> + Send>>;

pub type Broadcast = Arc<broadcast::Sender<ContainerEventResponse>>;

pub fn channel() -> Broadcast {
    Arc::new(broadcast::channel(BACKLOG).0)
}

fn event_type(kind: EventKind) -> ContainerEventType {
    match kind {
        EventKind::Created => ContainerEventType::ContainerCreatedEvent,
        EventKind::Started => ContainerEventType::ContainerStartedEvent,
        EventKind::Stopped => ContainerEventType::ContainerStoppedEvent,
        EventKind::Deleted => ContainerEventType::ContainerDeletedEvent,
    }
}

impl CriService {
    /// Feeds the manager's events into the broadcast channel and starts the
    /// exit watcher; must run inside the tokio runtime.
    pub(super) fn start_events(&self) {
        let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<Event>();
        // Unbounded and non-blocking: the manager emits under its locks.
        self.containers.observe(Box::new(move |event| {
            let _ = raw_tx.send(event);
        }));
        let service = self.clone();
        tokio::spawn(async move {
            while let Some(event) = raw_rx.recv().await {
                // A container that exited on its own: plugins hear of it too.
                if event.kind == EventKind::Stopped && service.nri.get().is_some() {
                    let service = service.clone();
                    let id = event.record.id.clone();
                    tokio::spawn(async move {
                        if let Some(hooks) = service.nri_hooks().await {
                            service.nri_stopped(&hooks, &id).await;
                        }
                    });
                }
                // No subscriber (the kubelet subscribes only with
                // EventedPLEG): the pod's status is not worth building.
                if service.events.receiver_count() == 0 {
                    continue;
                }
                let response = service.event_response(event).await;
                let _ = service.events.send(response);
            }
        });
        let watching = self.containers.clone();
        std::thread::Builder::new()
            .name("exit-watch".into())
            .spawn(move || watching.watch_exits())
            .expect("spawn the exit watch thread");
        let containers = self.containers.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(EXIT_POLL);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let containers = containers.clone();
                if let Err(err) = tokio::task::spawn_blocking(move || containers.reap_exits()).await
                {
                    tracing::warn!("container exit watcher failed: {err}");
                }
            }
        });
    }

    /// The event with the pod's status and its containers' statuses: the
    /// event's own container as the event left it, the others as they are.
    async fn event_response(&self, event: Event) -> ContainerEventResponse {
        let record = event.record;
        // A pod being removed may be gone already: no pod status then.
        let pod = self
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: record.pod_id.clone(),
                verbose: false,
            })
            .await
            .ok();
        let pod_sandbox_status = pod.as_ref().and_then(|r| r.status.clone());
        let mut containers_statuses: Vec<_> = pod
            .map(|r| r.containers_statuses)
            .unwrap_or_default()
            .into_iter()
            .filter(|s| s.id != record.id)
            .collect();
        if event.kind != EventKind::Deleted {
            let user = berth_runtime::spec::read(&record.run_dir)
                .ok()
                .as_ref()
                .and_then(berth_cri::container_status::container_user);
            containers_statuses.insert(0, berth_cri::container_status::status(&record, user));
        }
        ContainerEventResponse {
            container_id: record.id,
            container_event_type: event_type(event.kind).into(),
            created_at: event.at,
            pod_sandbox_status,
            containers_statuses,
        }
    }

    pub(super) async fn get_container_events(
        &self,
        _request: GetEventsRequest,
    ) -> Result<EventStream, Status> {
        let mut events = self.events.subscribe();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(event) => {
                        if tx.send(Ok(event)).await.is_err() {
                            // The subscriber went away.
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(
                            missed,
                            "a GetContainerEvents subscriber fell behind: events dropped"
                        );
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}
