//! UpdateContainerResources: new cgroup limits for a created or running
//! container, applied through the OCI runtime's `update` and kept in the
//! container's `config.json` and record, so ContainerStatus shows them.

use berth_proto::cri::{
    ContainerConfig, LinuxContainerResources, UpdateContainerResourcesRequest,
    UpdateContainerResourcesResponse,
};
use berth_runtime::update::{self, Host};
use tonic::Status;

use super::CriService;
use super::container::blocking;

/// `stored` with the fields `new` sets (non-zero, non-empty) replaced.
fn merged(stored: &mut LinuxContainerResources, new: &LinuxContainerResources) {
    let set = |old: &mut i64, new: i64| {
        if new != 0 {
            *old = new;
        }
    };
    set(&mut stored.cpu_period, new.cpu_period);
    set(&mut stored.cpu_quota, new.cpu_quota);
    set(&mut stored.cpu_shares, new.cpu_shares);
    set(&mut stored.memory_limit_in_bytes, new.memory_limit_in_bytes);
    set(
        &mut stored.memory_swap_limit_in_bytes,
        new.memory_swap_limit_in_bytes,
    );
    for (old, new) in [
        (&mut stored.cpuset_cpus, &new.cpuset_cpus),
        (&mut stored.cpuset_mems, &new.cpuset_mems),
    ] {
        if !new.is_empty() {
            old.clone_from(new);
        }
    }
    for page in &new.hugepage_limits {
        stored
            .hugepage_limits
            .retain(|p| p.page_size != page.page_size);
        stored.hugepage_limits.push(page.clone());
    }
    stored
        .unified
        .extend(new.unified.iter().map(|(k, v)| (k.clone(), v.clone())));
}

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
        let resources = update::resources(&new, &host)
            .map_err(|err| Status::invalid_argument(format!("container {}: {err}", record.id)))?;
        let containers = self.containers.clone();
        let id = record.id.clone();
        blocking(move || {
            containers.update_resources(&id, &resources, |record| {
                let mut config: ContainerConfig =
                    serde_json::from_value(record.extra["config"].clone()).unwrap_or_default();
                let linux = config.linux.get_or_insert_default();
                merged(linux.resources.get_or_insert_default(), &new);
                if let Ok(value) = serde_json::to_value(&config) {
                    record.extra["config"] = value;
                }
            })
        })
        .await?;
        tracing::info!(container = %record.id, "container resources updated");
        Ok(UpdateContainerResourcesResponse {})
    }
}
