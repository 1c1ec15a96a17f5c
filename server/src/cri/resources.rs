//! UpdateContainerResources: new cgroup limits for a created or running
//! container, applied through the OCI runtime's `update` and kept in the
//! container's `config.json` and record, so ContainerStatus shows them.

use berth_cri::grpc::ToStatus;
use berth_cri::resources::{Host, Mode, check};
use berth_proto::cri::{UpdateContainerResourcesRequest, UpdateContainerResourcesResponse};
use tonic::Status;

use super::CriService;
use super::container::blocking;

impl CriService {
    pub(super) async fn update_container_resources(
        &self,
        request: UpdateContainerResourcesRequest,
    ) -> Result<UpdateContainerResourcesResponse, Status> {
        if request.container_id.is_empty() {
            return Err(Status::invalid_argument("container_id: must not be empty"));
        }
        let containers = self.containers.clone();
        let id = request.container_id.clone();
        let record = blocking(move || containers.get(&id)).await?;
        let Some(new) = request.linux else {
            // Windows resources only: nothing applies on Linux.
            return Ok(UpdateContainerResourcesResponse {});
        };
        let host = Host::probe();
        let resources = check(&new, &host, Mode::Update).map_err(|err| {
            let status = err.to_status();
            Status::new(
                status.code(),
                format!("container {}: {}", record.id, status.message()),
            )
        })?;
        let hooks = self.nri_hooks().await;
        let mut nri = None;
        let resources = match &hooks {
            None => resources,
            Some(hooks) => {
                let (pod, container) = self.nri_objects(&record.id).await?;
                let asked = crate::nri::resources_to_nri(&resources);
                let (merged, others) = hooks
                    .update_container(&pod, &container, asked)
                    .await
                    .map_err(|err| err.to_status())?;
                nri = Some((pod, container, others));
                if let Some(what) = crate::nri::not_updatable(&merged) {
                    return Err(Status::unknown(format!(
                        "container {}: an NRI plugin asked for {what}, which Berth cannot update",
                        record.id
                    )));
                }
                crate::nri::resources_from_nri(&merged)
            }
        };
        self.apply_resources(&record.id, resources, host).await?;
        if let (Some(hooks), Some((pod, container, others))) = (&hooks, nri) {
            if let Err(err) = hooks.post_update_container(&pod, &container).await {
                tracing::warn!(container = %record.id, "{err}");
            }
            hooks.apply_updates(others).await;
        }
        tracing::info!(container = %record.id, "container resources updated");
        Ok(UpdateContainerResourcesResponse {})
    }

    /// New limits through the OCI runtime, kept in `config.json` and the
    /// record: UpdateContainerResources' and NRI plugins' updates alike.
    /// `host` is the probe the limits were checked against.
    pub(crate) async fn apply_resources(
        &self,
        id: &str,
        resources: berth_runtime::spec::Resources,
        host: Host,
    ) -> Result<(), Status> {
        let containers = self.containers.clone();
        let id = id.to_string();
        blocking(move || {
            containers.update_resources(&id, &resources, |record| {
                let mut merged = berth_cri::container_status::resources_to_update(record, &host);
                merged.merge(&resources);
                record.resources = Some(merged);
            })
        })
        .await
    }
}
