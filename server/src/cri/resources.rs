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
        let containers = self.containers.clone();
        let id = record.id.clone();
        blocking(move || {
            containers.update_resources(&id, &resources, |record| {
                let mut merged = berth_cri::container_status::resources_to_update(record, &host);
                merged.merge(&resources);
                record.resources = Some(merged);
            })
        })
        .await?;
        tracing::info!(container = %record.id, "container resources updated");
        Ok(UpdateContainerResourcesResponse {})
    }
}
