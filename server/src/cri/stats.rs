//! ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats,
//! ListMetricDescriptors and ListPodSandboxMetrics: records and pods from their managers, usage from
//! `berth_runtime::stats` (cgroups, writable layer) and
//! `berth_sandbox::netstat` (the pod's interfaces). Reading blocks (files,
//! a thread per pod joining its netns), so it runs on `spawn_blocking`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use berth_cri::stats::{Layer, Observed};
use berth_proto::cri::{
    ContainerStats, ContainerStatsRequest, ContainerStatsResponse, ListContainerStatsRequest,
    ListContainerStatsResponse, ListMetricDescriptorsRequest, ListMetricDescriptorsResponse,
    ListPodSandboxMetricsRequest, ListPodSandboxMetricsResponse, ListPodSandboxStatsRequest,
    ListPodSandboxStatsResponse, PodSandboxStats, PodSandboxStatsRequest, PodSandboxStatsResponse,
};
use berth_runtime::lifecycle::upper_dir;
use berth_runtime::record::ContainerRecord;
use berth_runtime::stats::{Sample, Stats, capacity, disk_usage};
use berth_sandbox::Pod;
use berth_sandbox::netstat::{self, InterfaceCounters};
use tonic::Status;

use super::CriService;

/// A container's cgroup, as `berth_cri::container` places it for the
/// pod's driver.
fn container_cgroup(cgroup_parent: &str, id: &str) -> PathBuf {
    berth_host::cgroup::container_dir(cgroup_parent, id)
}

/// One container's stats; blocking. `cgroup_parent` is its pod's (`None`
/// when the pod is gone: then only the writable layer is read).
fn container_stats(
    stats: &Stats,
    record: &ContainerRecord,
    cgroup_parent: Option<&str>,
) -> ContainerStats {
    let sample = cgroup_parent
        .map(|parent| stats.container(&record.id, &container_cgroup(parent, &record.id)))
        .unwrap_or_else(|| Sample {
            at: berth_host::now_nanos(),
            ..Sample::default()
        });
    let upper = upper_dir(&record.state_dir);
    let (bytes, inodes) = disk_usage(&upper);
    let layer = Layer {
        upper: &upper,
        bytes,
        inodes,
    };
    berth_cri::stats::container(record, &sample, layer)
}

/// The pod's interfaces; none for a host-network pod (its namespace is not
/// the pod's own), or when the namespace cannot be read (logged).
fn interfaces(pod: &Pod) -> Option<Vec<InterfaceCounters>> {
    let netns = pod.namespaces.net.as_deref()?;
    netstat::read(netns)
        .inspect_err(|err| tracing::warn!(pod = %pod.id.as_str(), "no network stats: {err}"))
        .ok()
}

/// One pod's stats, its containers' included, with the pod's
/// `interfaces`; blocking.
fn pod_stats(
    stats: &Stats,
    pod: &Pod,
    containers: &[ContainerRecord],
    interfaces: Option<&[InterfaceCounters]>,
) -> PodSandboxStats {
    let mut cgroups = vec![pod.infra_cgroup()];
    cgroups.extend(
        containers
            .iter()
            .map(|c| container_cgroup(&pod.cgroup_parent, &c.id)),
    );
    let sample = stats.pod(pod.id.as_str(), &cgroups);
    let containers = containers
        .iter()
        .map(|c| container_stats(stats, c, Some(&pod.cgroup_parent)))
        .collect();
    berth_cri::stats::pod(pod, &sample, interfaces, containers)
}

/// Every container record, by the ID of its pod.
fn containers_by_pod(
    containers: &berth_runtime::containers::Containers,
) -> HashMap<String, Vec<ContainerRecord>> {
    let mut by_pod: HashMap<String, Vec<ContainerRecord>> = HashMap::new();
    for record in containers.list() {
        by_pod
            .entry(record.pod_id.clone())
            .or_default()
            .push(record);
    }
    by_pod
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Status> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(work))
        .await
        .map_err(|err| Status::internal(format!("a stats task failed: {err}")))
}

impl CriService {
    /// Every pod's cgroup parent, by pod ID.
    async fn cgroup_parents(&self) -> HashMap<String, String> {
        self.pods
            .list()
            .await
            .into_iter()
            .map(|pod| (pod.id.as_str().to_string(), pod.cgroup_parent))
            .collect()
    }

    pub(super) async fn container_stats(
        &self,
        request: ContainerStatsRequest,
    ) -> Result<ContainerStatsResponse, Status> {
        let containers = Arc::clone(&self.containers);
        let record = blocking(move || containers.get(&request.container_id))
            .await?
            .map_err(super::container::status)?;
        let parent = self
            .pods
            .get(&record.pod_id)
            .await
            .ok()
            .map(|p| p.cgroup_parent);
        let stats = Arc::clone(&self.stats);
        let one = blocking(move || container_stats(&stats, &record, parent.as_deref())).await?;
        Ok(ContainerStatsResponse { stats: Some(one) })
    }

    pub(super) async fn list_container_stats(
        &self,
        request: ListContainerStatsRequest,
    ) -> Result<ListContainerStatsResponse, Status> {
        let filter = request.filter.unwrap_or_default();
        let parents = self.cgroup_parents().await;
        let containers = Arc::clone(&self.containers);
        let stats = Arc::clone(&self.stats);
        let list = blocking(move || {
            let mut records = containers.list();
            stats.retain(
                |id| records.iter().any(|r| r.id == id),
                |id| parents.contains_key(id),
            );
            records.retain(|r| {
                r.id.starts_with(&filter.id)
                    && r.pod_id.starts_with(&filter.pod_sandbox_id)
                    && berth_cri::stats::labels_match(&r.labels, &filter.label_selector)
            });
            records.sort_by_key(|r| r.created_at);
            records
                .iter()
                .map(|r| container_stats(&stats, r, parents.get(&r.pod_id).map(String::as_str)))
                .collect()
        })
        .await?;
        Ok(ListContainerStatsResponse { stats: list })
    }

    pub(super) async fn pod_sandbox_stats(
        &self,
        request: PodSandboxStatsRequest,
    ) -> Result<PodSandboxStatsResponse, Status> {
        let pod = self
            .pods
            .get(&request.pod_sandbox_id)
            .await
            .map_err(super::pod::status)?;
        let containers = Arc::clone(&self.containers);
        let stats = Arc::clone(&self.stats);
        let one = blocking(move || {
            let mine: Vec<_> = containers
                .list()
                .into_iter()
                .filter(|r| r.pod_id == pod.id.as_str())
                .collect();
            pod_stats(&stats, &pod, &mine, interfaces(&pod).as_deref())
        })
        .await?;
        Ok(PodSandboxStatsResponse { stats: Some(one) })
    }

    pub(super) async fn list_pod_sandbox_stats(
        &self,
        request: ListPodSandboxStatsRequest,
    ) -> Result<ListPodSandboxStatsResponse, Status> {
        let filter = request.filter.unwrap_or_default();
        let mut pods = self.pods.list().await;
        pods.retain(|pod| {
            pod.id.as_str().starts_with(&filter.id)
                && berth_cri::stats::labels_match(&pod.spec.labels, &filter.label_selector)
        });
        pods.sort_by_key(|pod| pod.created_at);
        let containers = Arc::clone(&self.containers);
        let stats = Arc::clone(&self.stats);
        let list = blocking(move || {
            let mut by_pod = containers_by_pod(&containers);
            pods.iter()
                .map(|pod| {
                    let mine = by_pod.remove(pod.id.as_str()).unwrap_or_default();
                    pod_stats(&stats, pod, &mine, interfaces(pod).as_deref())
                })
                .collect()
        })
        .await?;
        Ok(ListPodSandboxStatsResponse { stats: list })
    }

    pub(super) async fn list_metric_descriptors(
        &self,
        _request: ListMetricDescriptorsRequest,
    ) -> Result<ListMetricDescriptorsResponse, Status> {
        Ok(ListMetricDescriptorsResponse {
            descriptors: berth_cri::stats::descriptors(),
        })
    }

    pub(super) async fn list_pod_sandbox_metrics(
        &self,
        _request: ListPodSandboxMetricsRequest,
    ) -> Result<ListPodSandboxMetricsResponse, Status> {
        let mut pods = self.pods.list().await;
        pods.sort_by_key(|pod| pod.created_at);
        let containers = Arc::clone(&self.containers);
        let stats = Arc::clone(&self.stats);
        let pod_metrics = blocking(move || {
            let mut by_pod = containers_by_pod(&containers);
            pods.iter()
                .map(|pod| {
                    let mine = by_pod.remove(pod.id.as_str()).unwrap_or_default();
                    let details: Vec<_> = mine
                        .iter()
                        .map(|c| stats.detail(&container_cgroup(&pod.cgroup_parent, &c.id), c.pid))
                        .collect();
                    let observed: Vec<_> = mine
                        .iter()
                        .zip(&details)
                        .map(|(record, detail)| Observed {
                            record,
                            detail: detail.as_ref(),
                            filesystem: capacity(&upper_dir(&record.state_dir)),
                        })
                        .collect();
                    let interfaces = interfaces(pod);
                    let interfaces = interfaces.as_deref();
                    let summed = pod_stats(&stats, pod, &mine, interfaces);
                    berth_cri::stats::pod_metrics(&summed, interfaces, &observed)
                })
                .collect()
        })
        .await?;
        Ok(ListPodSandboxMetricsResponse { pod_metrics })
    }
}
