//! ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats,
//! ListMetricDescriptors and ListPodSandboxMetrics: records and pods from their managers, usage from
//! `berth_runtime::stats` (cgroups, writable layer) and
//! `berth_sandbox::netstat` (the pod's interfaces). Reading blocks (files,
//! a thread per pod joining its netns), so it runs on `spawn_blocking`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use berth_proto::cri::{
    ContainerAttributes, ContainerMetrics, ContainerStats, ContainerStatsRequest,
    ContainerStatsResponse, CpuUsage, FilesystemIdentifier, FilesystemUsage, LinuxPodSandboxStats,
    ListContainerStatsRequest, ListContainerStatsResponse, ListMetricDescriptorsRequest,
    ListMetricDescriptorsResponse, ListPodSandboxMetricsRequest, ListPodSandboxMetricsResponse,
    ListPodSandboxStatsRequest, ListPodSandboxStatsResponse, MemoryUsage, Metric, MetricDescriptor,
    MetricType, NetworkInterfaceUsage, NetworkUsage, PodSandboxAttributes, PodSandboxMetrics,
    PodSandboxStats, PodSandboxStatsRequest, PodSandboxStatsResponse, ProcessUsage, UInt64Value,
};
use berth_runtime::lifecycle::upper_dir;
use berth_runtime::record::ContainerRecord;
use berth_runtime::stats::{Sample, Stats, disk_usage};
use berth_sandbox::Pod;
use berth_sandbox::netstat::{self, InterfaceCounters};
use tonic::Status;

use super::CriService;

/// The interface CRI-O reports as a pod's default one.
const DEFAULT_INTERFACE: &str = "eth0";

fn value(value: u64) -> Option<UInt64Value> {
    Some(UInt64Value { value })
}

/// A container's cgroup, as `cri_spec` places it for the pod's driver.
fn container_cgroup(cgroup_parent: &str, id: &str) -> PathBuf {
    berth_host::cgroup::container_dir(cgroup_parent, id)
}

fn cpu(sample: &Sample) -> Option<CpuUsage> {
    let usage = sample.usage?;
    Some(CpuUsage {
        timestamp: sample.at,
        usage_core_nano_seconds: value(usage.cpu_ns),
        usage_nano_cores: value(sample.nano_cores),
    })
}

fn memory(sample: &Sample) -> Option<MemoryUsage> {
    let memory = sample.usage?.memory;
    Some(MemoryUsage {
        timestamp: sample.at,
        working_set_bytes: value(memory.working_set),
        available_bytes: memory.available.and_then(value),
        usage_bytes: value(memory.usage),
        rss_bytes: value(memory.rss),
        page_faults: value(memory.page_faults),
        major_page_faults: value(memory.major_page_faults),
    })
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
    ContainerStats {
        attributes: Some(ContainerAttributes {
            id: record.id.clone(),
            metadata: Some(berth_cri::container_status::metadata(record)),
            labels: berth_cri::to_map(&record.labels),
            annotations: berth_cri::to_map(&record.annotations),
        }),
        cpu: cpu(&sample),
        memory: memory(&sample),
        writable_layer: Some(FilesystemUsage {
            timestamp: sample.at,
            fs_id: Some(FilesystemIdentifier {
                mountpoint: upper.display().to_string(),
            }),
            used_bytes: value(bytes),
            inodes_used: value(inodes),
        }),
        // Swap usage is not reported.
        swap: None,
    }
}

fn interface(counters: &InterfaceCounters) -> NetworkInterfaceUsage {
    NetworkInterfaceUsage {
        name: counters.name.clone(),
        rx_bytes: value(counters.rx_bytes),
        rx_errors: value(counters.rx_errors),
        tx_bytes: value(counters.tx_bytes),
        tx_errors: value(counters.tx_errors),
    }
}

/// The pod's interfaces; none for a host-network pod (its namespace is not
/// the pod's own), or when the namespace cannot be read (logged).
fn network(pod: &Pod, at: i64) -> Option<NetworkUsage> {
    let netns = pod.namespaces.net.as_deref()?;
    let interfaces = match netstat::read(netns) {
        Ok(interfaces) => interfaces,
        Err(err) => {
            tracing::warn!(pod = %pod.id.as_str(), "no network stats: {err}");
            return None;
        }
    };
    let default = interfaces
        .iter()
        .find(|i| i.name == DEFAULT_INTERFACE)
        .or(interfaces.first())
        .map(interface);
    Some(NetworkUsage {
        timestamp: at,
        default_interface: default,
        interfaces: interfaces.iter().map(interface).collect(),
    })
}

/// One pod's stats, its containers' included; blocking.
fn pod_stats(stats: &Stats, pod: &Pod, containers: &[ContainerRecord]) -> PodSandboxStats {
    let mut cgroups = vec![pod.infra_cgroup()];
    cgroups.extend(
        containers
            .iter()
            .map(|c| container_cgroup(&pod.cgroup_parent, &c.id)),
    );
    let sample = stats.pod(pod.id.as_str(), &cgroups);
    PodSandboxStats {
        attributes: Some(PodSandboxAttributes {
            id: pod.id.as_str().to_string(),
            metadata: Some(berth_cri::pod::metadata(pod)),
            labels: berth_cri::to_map(&pod.spec.labels),
            annotations: berth_cri::to_map(&pod.spec.annotations),
        }),
        linux: Some(LinuxPodSandboxStats {
            cpu: cpu(&sample),
            memory: memory(&sample),
            network: network(pod, sample.at),
            process: sample.usage.map(|usage| ProcessUsage {
                timestamp: sample.at,
                process_count: value(usage.processes),
            }),
            containers: containers
                .iter()
                .map(|c| container_stats(stats, c, Some(&pod.cgroup_parent)))
                .collect(),
        }),
        windows: None,
    }
}

/// The cAdvisor-named metrics berth fills, as CRI-O names and labels them:
/// name, help, type, the label after `id`, `name`, `image` (if any).
const METRICS: &[(&str, &str, MetricType, Option<&str>)] = &[
    (
        "container_cpu_usage_seconds_total",
        "Cumulative CPU time consumed in seconds.",
        MetricType::Counter,
        Some("cpu"),
    ),
    (
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed",
        MetricType::Gauge,
        None,
    ),
    (
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        MetricType::Gauge,
        None,
    ),
    (
        "container_memory_rss",
        "Size of RSS in bytes.",
        MetricType::Gauge,
        None,
    ),
    (
        "container_fs_usage_bytes",
        "Number of bytes that are consumed by the container on this filesystem.",
        MetricType::Gauge,
        Some("device"),
    ),
    (
        "container_fs_inodes_used",
        "Number of inodes used by the container on this filesystem.",
        MetricType::Gauge,
        Some("device"),
    ),
    (
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received",
        MetricType::Counter,
        Some("interface"),
    ),
    (
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving",
        MetricType::Counter,
        Some("interface"),
    ),
    (
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted",
        MetricType::Counter,
        Some("interface"),
    ),
    (
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting",
        MetricType::Counter,
        Some("interface"),
    ),
];

const BASE_LABELS: [&str; 3] = ["id", "name", "image"];

fn descriptors() -> Vec<MetricDescriptor> {
    METRICS
        .iter()
        .map(|(name, help, _, extra)| MetricDescriptor {
            name: name.to_string(),
            help: help.to_string(),
            label_keys: BASE_LABELS
                .iter()
                .chain(extra.iter())
                .map(|k| k.to_string())
                .collect(),
        })
        .collect()
}

/// Builds metrics of one object: `base` label values, then the extra one.
struct Metrics {
    at: i64,
    base: [String; 3],
    out: Vec<Metric>,
}

impl Metrics {
    fn add(&mut self, name: &str, extra: Option<&str>, value: Option<UInt64Value>) {
        let (Some(value), Some((_, _, kind, _))) =
            (value, METRICS.iter().find(|(n, ..)| *n == name))
        else {
            return;
        };
        self.out.push(Metric {
            name: name.to_string(),
            timestamp: self.at,
            metric_type: *kind as i32,
            label_values: self
                .base
                .iter()
                .cloned()
                .chain(extra.map(String::from))
                .collect(),
            value: Some(value),
        });
    }
}

/// The metrics of a pod (its network, labelled as CRI-O does: pod ID, `POD`,
/// no image) and of each of its containers, from its stats.
fn pod_metrics(stats: &PodSandboxStats, containers: &[ContainerRecord]) -> PodSandboxMetrics {
    let id = stats
        .attributes
        .as_ref()
        .map(|a| a.id.clone())
        .unwrap_or_default();
    let linux = stats.linux.clone().unwrap_or_default();
    let mut pod = Metrics {
        at: linux.network.as_ref().map_or(0, |n| n.timestamp),
        base: [id.clone(), "POD".into(), String::new()],
        out: Vec::new(),
    };
    for interface in linux.network.iter().flat_map(|n| &n.interfaces) {
        let name = Some(interface.name.as_str());
        pod.add(
            "container_network_receive_bytes_total",
            name,
            interface.rx_bytes,
        );
        pod.add(
            "container_network_receive_errors_total",
            name,
            interface.rx_errors,
        );
        pod.add(
            "container_network_transmit_bytes_total",
            name,
            interface.tx_bytes,
        );
        pod.add(
            "container_network_transmit_errors_total",
            name,
            interface.tx_errors,
        );
    }
    let container_metrics = linux
        .containers
        .iter()
        .zip(containers)
        .map(|(stats, record)| {
            let mut one = Metrics {
                at: stats.writable_layer.as_ref().map_or(0, |w| w.timestamp),
                base: [record.id.clone(), record.name.clone(), record.image.clone()],
                out: Vec::new(),
            };
            if let Some(cpu) = &stats.cpu {
                let seconds = cpu.usage_core_nano_seconds.map(|n| UInt64Value {
                    value: n.value / 1_000_000_000,
                });
                one.add("container_cpu_usage_seconds_total", Some("total"), seconds);
            }
            if let Some(memory) = &stats.memory {
                one.add("container_memory_usage_bytes", None, memory.usage_bytes);
                one.add(
                    "container_memory_working_set_bytes",
                    None,
                    memory.working_set_bytes,
                );
                one.add("container_memory_rss", None, memory.rss_bytes);
            }
            if let Some(layer) = &stats.writable_layer {
                let device = layer.fs_id.as_ref().map(|f| f.mountpoint.as_str());
                one.add("container_fs_usage_bytes", device, layer.used_bytes);
                one.add("container_fs_inodes_used", device, layer.inodes_used);
            }
            ContainerMetrics {
                container_id: record.id.clone(),
                metrics: one.out,
            }
        })
        .collect();
    PodSandboxMetrics {
        pod_sandbox_id: id,
        metrics: pod.out,
        container_metrics,
    }
}

fn matches_labels(
    labels: &std::collections::BTreeMap<String, String>,
    selector: &HashMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
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
                    && matches_labels(&r.labels, &filter.label_selector)
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
            pod_stats(&stats, &pod, &mine)
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
                && matches_labels(&pod.spec.labels, &filter.label_selector)
        });
        pods.sort_by_key(|pod| pod.created_at);
        let containers = Arc::clone(&self.containers);
        let stats = Arc::clone(&self.stats);
        let list = blocking(move || {
            let mut by_pod: HashMap<String, Vec<ContainerRecord>> = HashMap::new();
            for record in containers.list() {
                by_pod
                    .entry(record.pod_id.clone())
                    .or_default()
                    .push(record);
            }
            pods.iter()
                .map(|pod| {
                    let mine = by_pod.remove(pod.id.as_str()).unwrap_or_default();
                    pod_stats(&stats, pod, &mine)
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
            descriptors: descriptors(),
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
            let mut by_pod: HashMap<String, Vec<ContainerRecord>> = HashMap::new();
            for record in containers.list() {
                by_pod
                    .entry(record.pod_id.clone())
                    .or_default()
                    .push(record);
            }
            pods.iter()
                .map(|pod| {
                    let mine = by_pod.remove(pod.id.as_str()).unwrap_or_default();
                    pod_metrics(&pod_stats(&stats, pod, &mine), &mine)
                })
                .collect()
        })
        .await?;
        Ok(ListPodSandboxMetricsResponse { pod_metrics })
    }
}
