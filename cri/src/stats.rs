//! Usage figures (cgroup samples, the writable layer, the pod's
//! interfaces) → the CRI's ContainerStats, PodSandboxStats and the
//! cAdvisor-named metrics of ListPodSandboxMetrics. Pure: berthd reads the
//! figures (`berth_runtime::stats`, `berth_sandbox::netstat`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use berth_proto::cri::{
    ContainerAttributes, ContainerMetrics, ContainerStats, CpuUsage, FilesystemIdentifier,
    FilesystemUsage, IoUsage, LinuxPodSandboxStats, MemoryUsage, Metric, MetricDescriptor,
    MetricType, NetworkInterfaceUsage, NetworkUsage, PodSandboxAttributes, PodSandboxMetrics,
    PodSandboxStats, ProcessUsage, PsiData, PsiStats, SwapUsage, UInt64Value,
};
use berth_runtime::record::ContainerRecord;
use berth_runtime::stats::{CgroupStats, Pressure, Sample, Stall};
use berth_sandbox::Pod;
use berth_sandbox::netstat::InterfaceCounters;

use crate::to_map;

/// The interface CRI-O reports as a pod's default one.
const DEFAULT_INTERFACE: &str = "eth0";

fn value(value: u64) -> Option<UInt64Value> {
    Some(UInt64Value { value })
}

fn psi_data(stall: Stall) -> PsiData {
    PsiData {
        // The kernel counts microseconds; the CRI says nanoseconds.
        total: stall.total_us.saturating_mul(1000),
        avg10: stall.avg10,
        avg60: stall.avg60,
        avg300: stall.avg300,
    }
}

fn psi(pressure: Option<Pressure>) -> Option<PsiStats> {
    pressure.map(|p| PsiStats {
        full: p.full.map(psi_data),
        some: Some(psi_data(p.some)),
    })
}

fn cpu(sample: &Sample) -> Option<CpuUsage> {
    let usage = sample.usage.as_ref()?;
    Some(CpuUsage {
        timestamp: sample.at,
        usage_core_nano_seconds: value(usage.cpu_ns),
        usage_nano_cores: value(sample.nano_cores),
        psi: psi(usage.pressure.cpu),
    })
}

/// I/O: the CRI carries only its pressure (byte counts go to metrics).
fn io(sample: &Sample) -> Option<IoUsage> {
    let pressure = sample.usage.as_ref()?.pressure.io?;
    Some(IoUsage {
        timestamp: sample.at,
        psi: psi(Some(pressure)),
    })
}

fn memory(sample: &Sample) -> Option<MemoryUsage> {
    let usage = sample.usage.as_ref()?;
    let memory = usage.memory;
    Some(MemoryUsage {
        timestamp: sample.at,
        working_set_bytes: value(memory.working_set),
        available_bytes: memory.available.and_then(value),
        usage_bytes: value(memory.usage),
        rss_bytes: value(memory.rss),
        page_faults: value(memory.page_faults),
        major_page_faults: value(memory.major_page_faults),
        psi: psi(usage.pressure.memory),
    })
}

/// A container's writable layer: its upper dir and what it holds.
#[derive(Debug, Clone, Copy)]
pub struct Layer<'a> {
    pub upper: &'a Path,
    pub bytes: u64,
    pub inodes: u64,
}

/// One container's stats from its cgroup `sample` and writable `layer`.
pub fn container(record: &ContainerRecord, sample: &Sample, layer: Layer<'_>) -> ContainerStats {
    ContainerStats {
        attributes: Some(ContainerAttributes {
            id: record.id.clone(),
            metadata: Some(crate::container_status::metadata(record)),
            labels: to_map(&record.labels),
            annotations: to_map(&record.annotations),
        }),
        cpu: cpu(sample),
        memory: memory(sample),
        writable_layer: Some(FilesystemUsage {
            timestamp: sample.at,
            fs_id: Some(FilesystemIdentifier {
                mountpoint: layer.upper.display().to_string(),
            }),
            used_bytes: value(layer.bytes),
            inodes_used: value(layer.inodes),
        }),
        swap: sample
            .usage
            .as_ref()
            .and_then(|u| u.memory.swap)
            .map(|swap| SwapUsage {
                timestamp: sample.at,
                swap_available_bytes: swap.available().and_then(value),
                swap_usage_bytes: value(swap.usage),
            }),
        io: io(sample),
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

/// The pod's network usage from its interfaces; `eth0` is the default
/// one, else the first.
fn network(interfaces: &[InterfaceCounters], at: i64) -> NetworkUsage {
    let default = interfaces
        .iter()
        .find(|i| i.name == DEFAULT_INTERFACE)
        .or(interfaces.first())
        .map(interface);
    NetworkUsage {
        timestamp: at,
        default_interface: default,
        interfaces: interfaces.iter().map(interface).collect(),
    }
}

/// One pod's stats from the `sample` of all its cgroups, its `interfaces`
/// (`None`: no network of its own, or unreadable) and its containers' stats.
pub fn pod(
    pod: &Pod,
    sample: &Sample,
    interfaces: Option<&[InterfaceCounters]>,
    containers: Vec<ContainerStats>,
) -> PodSandboxStats {
    PodSandboxStats {
        attributes: Some(PodSandboxAttributes {
            id: pod.id.as_str().to_string(),
            metadata: Some(crate::pod::metadata(pod)),
            labels: to_map(&pod.spec.labels),
            annotations: to_map(&pod.spec.annotations),
        }),
        linux: Some(LinuxPodSandboxStats {
            cpu: cpu(sample),
            memory: memory(sample),
            network: interfaces.map(|i| network(i, sample.at)),
            process: sample.usage.as_ref().map(|usage| ProcessUsage {
                timestamp: sample.at,
                process_count: value(usage.processes),
            }),
            containers,
            io: io(sample),
        }),
        windows: None,
    }
}

/// Whether `labels` has every pair of a List filter's `selector`.
pub fn labels_match(labels: &BTreeMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
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
        "container_cpu_user_seconds_total",
        "Cumulative user CPU time consumed in seconds.",
        MetricType::Counter,
        None,
    ),
    (
        "container_cpu_system_seconds_total",
        "Cumulative system CPU time consumed in seconds.",
        MetricType::Counter,
        None,
    ),
    (
        "container_memory_cache",
        "Number of bytes of page cache memory.",
        MetricType::Gauge,
        None,
    ),
    (
        "container_memory_max_usage_bytes",
        "Maximum memory usage recorded in bytes",
        MetricType::Gauge,
        None,
    ),
    (
        "container_memory_swap",
        "Container swap usage in bytes.",
        MetricType::Gauge,
        None,
    ),
    (
        "container_hugetlb_usage_bytes",
        "Current hugepage usage",
        MetricType::Gauge,
        Some("pagesize"),
    ),
    (
        "container_hugetlb_max_usage_bytes",
        "Maximum hugepage usages recorded",
        MetricType::Gauge,
        Some("pagesize"),
    ),
    (
        "container_fs_reads_bytes_total",
        "Cumulative count of bytes read",
        MetricType::Counter,
        Some("device"),
    ),
    (
        "container_fs_writes_bytes_total",
        "Cumulative count of bytes written",
        MetricType::Counter,
        Some("device"),
    ),
    (
        "container_fs_reads_total",
        "Cumulative count of reads completed",
        MetricType::Counter,
        Some("device"),
    ),
    (
        "container_fs_writes_total",
        "Cumulative count of writes completed",
        MetricType::Counter,
        Some("device"),
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

/// ListMetricDescriptors' answer.
pub fn descriptors() -> Vec<MetricDescriptor> {
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
/// no image) and of each of its containers, from its stats and, for what
/// the CRI stats do not carry, `usage` of each container (in order).
pub fn pod_metrics(
    stats: &PodSandboxStats,
    containers: &[ContainerRecord],
    usage: &[Option<CgroupStats>],
) -> PodSandboxMetrics {
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
        .zip(usage)
        .map(|((stats, record), usage)| {
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
            if let Some(usage) = usage {
                cgroup_metrics(&mut one, usage);
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

/// The cgroup figures cAdvisor exports and the CRI stats lack.
fn cgroup_metrics(one: &mut Metrics, usage: &CgroupStats) {
    let seconds = |ns: u64| value(ns / 1_000_000_000);
    if let Some(split) = usage.cpu_split {
        one.add(
            "container_cpu_user_seconds_total",
            None,
            seconds(split.user_ns),
        );
        one.add(
            "container_cpu_system_seconds_total",
            None,
            seconds(split.system_ns),
        );
    }
    let memory = &usage.memory;
    one.add("container_memory_cache", None, value(memory.cache));
    one.add(
        "container_memory_max_usage_bytes",
        None,
        memory.peak.and_then(value),
    );
    one.add(
        "container_memory_swap",
        None,
        memory.swap.and_then(|s| value(s.usage)),
    );
    for page in &usage.hugetlb {
        let size = Some(page.page_size.as_str());
        one.add("container_hugetlb_usage_bytes", size, value(page.usage));
        one.add(
            "container_hugetlb_max_usage_bytes",
            size,
            page.max_usage.and_then(value),
        );
    }
    for device in &usage.io {
        let name = device.device_name();
        let name = Some(name.as_str());
        one.add(
            "container_fs_reads_bytes_total",
            name,
            value(device.read_bytes),
        );
        one.add(
            "container_fs_writes_bytes_total",
            name,
            value(device.write_bytes),
        );
        one.add("container_fs_reads_total", name, value(device.reads));
        one.add("container_fs_writes_total", name, value(device.writes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_runtime::stats::Memory;

    fn record() -> ContainerRecord {
        serde_json::from_value(serde_json::json!({
            "id": "c1", "pod_id": "p1", "name": "app", "attempt": 0,
            "runtime_handler": "runc", "state": "running", "created_at": 1,
            "started_at": 2, "exit": null, "pid": 42, "image": "busybox",
            "image_ref": "r", "image_id": "i", "labels": {"app": "web"},
            "annotations": {}, "log_path": "/l", "run_dir": "/r", "rootfs": "/f",
            "stop_signal": null,
        }))
        .unwrap()
    }

    fn sample() -> Sample {
        Sample {
            at: 7,
            usage: Some(CgroupStats {
                cpu_ns: 3_000_000_000,
                memory: Memory {
                    usage: 100,
                    working_set: 80,
                    rss: 60,
                    cache: 20,
                    available: Some(900),
                    ..Memory::default()
                },
                processes: 2,
                ..CgroupStats::default()
            }),
            nano_cores: 5,
        }
    }

    #[test]
    fn a_sample_and_a_layer_give_container_stats() {
        let layer = Layer {
            upper: Path::new("/var/lib/berth/c1/upper"),
            bytes: 4096,
            inodes: 3,
        };
        let stats = container(&record(), &sample(), layer);
        let cpu = stats.cpu.unwrap();
        assert_eq!(cpu.timestamp, 7);
        assert_eq!(cpu.usage_core_nano_seconds.unwrap().value, 3_000_000_000);
        assert_eq!(cpu.usage_nano_cores.unwrap().value, 5);
        let memory = stats.memory.unwrap();
        assert_eq!(memory.working_set_bytes.unwrap().value, 80);
        assert_eq!(memory.available_bytes.unwrap().value, 900);
        let layer = stats.writable_layer.unwrap();
        assert_eq!(layer.used_bytes.unwrap().value, 4096);
        assert_eq!(layer.fs_id.unwrap().mountpoint, "/var/lib/berth/c1/upper");
        // Swap not accounted: no swap figures at all, not zeros.
        assert!(stats.swap.is_none());
        // A container without a cgroup (not started, or gone) has none.
        let gone = container(&record(), &Sample::default(), layer_of(0));
        assert!(gone.cpu.is_none() && gone.memory.is_none());
    }

    fn layer_of(bytes: u64) -> Layer<'static> {
        Layer {
            upper: Path::new("/u"),
            bytes,
            inodes: 0,
        }
    }

    #[test]
    fn metrics_use_cadvisor_names_and_labels() {
        let one = container(&record(), &sample(), layer_of(10));
        let usage = sample().usage;
        let stats = PodSandboxStats {
            attributes: Some(PodSandboxAttributes {
                id: "p1".into(),
                ..Default::default()
            }),
            linux: Some(LinuxPodSandboxStats {
                containers: vec![one],
                ..Default::default()
            }),
            windows: None,
        };
        let metrics = pod_metrics(&stats, &[record()], &[usage]);
        assert_eq!(metrics.pod_sandbox_id, "p1");
        let mine = &metrics.container_metrics[0];
        let find = |name: &str| mine.metrics.iter().find(|m| m.name == name).cloned();
        let cpu = find("container_cpu_usage_seconds_total").unwrap();
        assert_eq!(cpu.value.unwrap().value, 3);
        assert_eq!(cpu.label_values, ["c1", "app", "busybox", "total"]);
        assert_eq!(
            find("container_memory_cache").unwrap().value.unwrap().value,
            20
        );
        // Every metric reported is described, with as many labels as values.
        let descriptors = descriptors();
        for metric in &mine.metrics {
            let d = descriptors.iter().find(|d| d.name == metric.name).unwrap();
            assert_eq!(d.label_keys.len(), metric.label_values.len(), "{}", d.name);
        }
    }
}
