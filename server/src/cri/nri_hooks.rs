//! What the RPCs need for NRI: the hooks when NRI is on, and pods and
//! containers in NRI's form.

use berth_nri::api;
use tonic::Status;

use super::CriService;
use super::container::blocking;

impl CriService {
    pub fn set_nri(&self, nri: berth_nri::Nri) {
        let _ = self.nri.set(nri);
    }

    /// The NRI hooks of one RPC, when NRI is on; see `berth_nri::Nri::hooks`.
    pub(super) async fn nri_hooks(&self) -> Option<berth_nri::Hooks> {
        match self.nri.get() {
            Some(nri) => Some(nri.hooks().await),
            None => None,
        }
    }

    /// A container as plugins see it.
    pub(super) async fn nri_container(&self, container_id: &str) -> Result<api::Container, Status> {
        let containers = self.containers.clone();
        let id = container_id.to_string();
        blocking(move || Ok(crate::nri::container_of(&containers.get(&id)?))).await
    }

    /// A container and its pod as plugins see them.
    pub(super) async fn nri_objects(
        &self,
        container_id: &str,
    ) -> Result<(api::PodSandbox, api::Container), Status> {
        let container = self.nri_container(container_id).await?;
        let pod = self
            .pods
            .get(&container.pod_sandbox_id)
            .await
            .map_err(super::pod::status)?;
        Ok((crate::nri::pod(&pod), container))
    }

    /// Tells plugins a container stopped (once per container: see
    /// `berth_nri::Hooks::stop_container`) and applies their updates.
    pub(super) async fn nri_stopped(&self, hooks: &berth_nri::Hooks, container_id: &str) {
        let (pod, container) = match self.nri_objects(container_id).await {
            Ok(objects) => objects,
            Err(status) => {
                tracing::debug!(container = %container_id, "NRI StopContainer: {}", status.message());
                return;
            }
        };
        match hooks.stop_container(&pod, &container).await {
            Ok(updates) => hooks.apply_updates(updates).await,
            Err(err) => tracing::warn!(container = %container_id, "{err}"),
        }
    }

    /// Every pod and container, for a plugin's Synchronize.
    pub(crate) async fn nri_snapshot(&self) -> (Vec<api::PodSandbox>, Vec<api::Container>) {
        let pods = self.pods.list().await;
        let records = self.containers.list_known();
        let containers = tokio::task::spawn_blocking(move || {
            records.iter().map(crate::nri::container_of).collect()
        })
        .await
        .unwrap_or_default();
        (pods.iter().map(crate::nri::pod).collect(), containers)
    }
}
