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
use berth_runtime::stats::{
    Capacity, CgroupStats, Detail, Memory, Pressure, Sample, Spec, Stall, Tasks,
};
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

/// The cAdvisor-named metrics berth fills, with cAdvisor's names, types,
/// help and labels: name, help, type, the labels after `id`, `name`,
/// `image`.
const METRICS: &[(&str, &str, MetricType, &[&str])] = &[
    (
        "container_cpu_usage_seconds_total",
        "Cumulative CPU time consumed in seconds.",
        MetricType::Counter,
        &["cpu"],
    ),
    (
        "container_cpu_user_seconds_total",
        "Cumulative user CPU time consumed in seconds.",
        MetricType::Counter,
        &[],
    ),
    (
        "container_cpu_system_seconds_total",
        "Cumulative system CPU time consumed in seconds.",
        MetricType::Counter,
        &[],
    ),
    (
        "container_cpu_cfs_periods_total",
        "Number of elapsed enforcement period intervals.",
        MetricType::Counter,
        &[],
    ),
    (
        "container_cpu_cfs_throttled_periods_total",
        "Number of throttled period intervals.",
        MetricType::Counter,
        &[],
    ),
    (
        "container_cpu_cfs_throttled_seconds_total",
        "Total time duration the container has been throttled.",
        MetricType::Counter,
        &[],
    ),
    (
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed",
        MetricType::Gauge,
        &[],
    ),
    (
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        MetricType::Gauge,
        &[],
    ),
    (
        "container_memory_rss",
        "Size of RSS in bytes.",
        MetricType::Gauge,
        &[],
    ),
    (
        "container_memory_cache",
        "Number of bytes of page cache memory.",
        MetricType::Gauge,
        &[],
    ),
    (
        "container_memory_max_usage_bytes",
        "Maximum memory usage recorded in bytes",
        MetricType::Gauge,
        &[],
    ),
    (
        "container_memory_swap",
        "Container swap usage in bytes.",
        MetricType::Gauge,
        &[],
    ),
    (
        "container_memory_mapped_file",
        "Size of memory mapped files in bytes.",
        MetricType::Gauge,
        &[],
    ),
    (
        "container_memory_kernel_usage",
        "Size of kernel memory allocated in bytes.",
        MetricType::Gauge,
        &[],
    ),
    (
        "container_memory_failcnt",
        "Number of memory usage hits limits",
        MetricType::Counter,
        &[],
    ),
    (
        "container_memory_failures_total",
        "Cumulative count of memory allocation failures.",
        MetricType::Counter,
        &["failure_type", "scope"],
    ),
    (
        "container_oom_events_total",
        "Count of out of memory events observed for the container",
        MetricType::Counter,
        &[],
    ),
    (
        "container_hugetlb_usage_bytes",
        "Current hugepage usage",
        MetricType::Gauge,
        &["pagesize"],
    ),
    (
        "container_hugetlb_max_usage_bytes",
        "Maximum hugepage usages recorded",
        MetricType::Gauge,
        &["pagesize"],
    ),
    (
        "container_fs_reads_bytes_total",
        "Cumulative count of bytes read",
        MetricType::Counter,
        &["device"],
    ),
    (
        "container_fs_writes_bytes_total",
        "Cumulative count of bytes written",
        MetricType::Counter,
        &["device"],
    ),
    (
        "container_fs_reads_total",
        "Cumulative count of reads completed",
        MetricType::Counter,
        &["device"],
    ),
    (
        "container_fs_writes_total",
        "Cumulative count of writes completed",
        MetricType::Counter,
        &["device"],
    ),
    (
        "container_blkio_device_usage_total",
        "Blkio Device bytes usage",
        MetricType::Counter,
        &["device", "major", "minor", "operation"],
    ),
    (
        "container_fs_usage_bytes",
        "Number of bytes that are consumed by the container on this filesystem.",
        MetricType::Gauge,
        &["device"],
    ),
    (
        "container_fs_inodes_used",
        "Number of inodes used by the container on this filesystem.",
        MetricType::Gauge,
        &["device"],
    ),
    (
        "container_fs_limit_bytes",
        "Number of bytes that can be consumed by the container on this filesystem.",
        MetricType::Gauge,
        &["device"],
    ),
    (
        "container_fs_inodes_total",
        "Number of Inodes",
        MetricType::Gauge,
        &["device"],
    ),
    (
        "container_fs_inodes_free",
        "Number of available Inodes",
        MetricType::Gauge,
        &["device"],
    ),
    (
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received",
        MetricType::Counter,
        &["interface"],
    ),
    (
        "container_network_receive_packets_total",
        "Cumulative count of packets received",
        MetricType::Counter,
        &["interface"],
    ),
    (
        "container_network_receive_packets_dropped_total",
        "Cumulative count of packets dropped while receiving",
        MetricType::Counter,
        &["interface"],
    ),
    (
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving",
        MetricType::Counter,
        &["interface"],
    ),
    (
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted",
        MetricType::Counter,
        &["interface"],
    ),
    (
        "container_network_transmit_packets_total",
        "Cumulative count of packets transmitted",
        MetricType::Counter,
        &["interface"],
    ),
    (
        "container_network_transmit_packets_dropped_total",
        "Cumulative count of packets dropped while transmitting",
        MetricType::Counter,
        &["interface"],
    ),
    (
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting",
        MetricType::Counter,
        &["interface"],
    ),
    (
        "container_processes",
        "Number of processes running inside the container.",
        MetricType::Gauge,
        &[],
    ),
    (
        "container_threads",
        "Number of threads running inside the container",
        MetricType::Gauge,
        &[],
    ),
    (
        "container_threads_max",
        "Maximum number of threads allowed inside the container, infinity if value is zero",
        MetricType::Gauge,
        &[],
    ),
    (
        "container_file_descriptors",
        "Number of open file descriptors for the container.",
        MetricType::Gauge,
        &[],
    ),
    (
        "container_sockets",
        "Number of open sockets for the container.",
        MetricType::Gauge,
        &[],
    ),
    (
        "container_ulimits_soft",
        "Soft ulimit values for the container root process. Unlimited if -1, except priority and nice",
        MetricType::Gauge,
        &["ulimit"],
    ),
    (
        "container_last_seen",
        "Last time a container was seen by the exporter",
        MetricType::Gauge,
        &[],
    ),
    (
        "container_start_time_seconds",
        "Start time of the container since unix epoch in seconds.",
        MetricType::Gauge,
        &[],
    ),
    (
        "container_spec_cpu_period",
        "CPU period of the container.",
        MetricType::Gauge,
        &[],
    ),
    (
        "container_spec_cpu_quota",
        "CPU quota of the container.",
        MetricType::Gauge,
        &[],
    ),
    (
        "container_spec_cpu_shares",
        "CPU share of the container.",
        MetricType::Gauge,
        &[],
    ),
    (
        "container_spec_memory_limit_bytes",
        "Memory limit for the container.",
        MetricType::Gauge,
        &[],
    ),
    (
        "container_spec_memory_reservation_limit_bytes",
        "Memory reservation limit for the container.",
        MetricType::Gauge,
        &[],
    ),
    (
        "container_spec_memory_swap_limit_bytes",
        "Memory swap limit for the container.",
        MetricType::Gauge,
        &[],
    ),
    (
        "container_pressure_cpu_stalled_seconds_total",
        "Total time duration no tasks in the container could make progress due to CPU congestion.",
        MetricType::Counter,
        &[],
    ),
    (
        "container_pressure_cpu_waiting_seconds_total",
        "Total time duration tasks in the container have waited due to CPU congestion.",
        MetricType::Counter,
        &[],
    ),
    (
        "container_pressure_memory_stalled_seconds_total",
        "Total time duration no tasks in the container could make progress due to memory congestion.",
        MetricType::Counter,
        &[],
    ),
    (
        "container_pressure_memory_waiting_seconds_total",
        "Total time duration tasks in the container have waited due to memory congestion.",
        MetricType::Counter,
        &[],
    ),
    (
        "container_pressure_io_stalled_seconds_total",
        "Total time duration no tasks in the container could make progress due to IO congestion.",
        MetricType::Counter,
        &[],
    ),
    (
        "container_pressure_io_waiting_seconds_total",
        "Total time duration tasks in the container have waited due to IO congestion.",
        MetricType::Counter,
        &[],
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

/// Builds metrics of one object: `base` label values, then the extra ones.
struct Metrics {
    at: i64,
    base: [String; 3],
    out: Vec<Metric>,
}

impl Metrics {
    /// Adds `name` unless `value` is `None` (a figure this host did not
    /// give is left out, never reported as 0).
    fn add(&mut self, name: &str, extra: &[&str], value: Option<u64>) {
        let Some(value) = value else {
            return;
        };
        let (_, _, kind, keys) = METRICS
            .iter()
            .find(|(n, ..)| *n == name)
            .expect("every metric added is described");
        debug_assert_eq!(keys.len(), extra.len(), "{name}'s labels");
        self.out.push(Metric {
            name: name.to_string(),
            timestamp: self.at,
            metric_type: *kind as i32,
            label_values: self
                .base
                .iter()
                .cloned()
                .chain(extra.iter().map(|v| v.to_string()))
                .collect(),
            value: Some(UInt64Value { value }),
        });
    }
}

const NS_PER_SECOND: u64 = 1_000_000_000;

/// What ListPodSandboxMetrics reports of one container beside its CRI
/// stats.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    pub record: &'a ContainerRecord,
    /// Its cgroup's usage, limits and processes; `None` without a cgroup
    /// (not started, or gone).
    pub detail: Option<&'a Detail>,
    /// The filesystem holding its writable layer.
    pub filesystem: Option<Capacity>,
}

/// The metrics of a pod (its network, labelled as CRI-O does: pod ID, `POD`,
/// no image) from its `interfaces`, and of each of its containers from
/// their CRI stats (in `stats`) and what was `observed` of them (in the
/// same order).
pub fn pod_metrics(
    stats: &PodSandboxStats,
    interfaces: Option<&[InterfaceCounters]>,
    observed: &[Observed<'_>],
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
    for interface in interfaces.into_iter().flatten() {
        network_metrics(&mut pod, interface);
    }
    let container_metrics = linux
        .containers
        .iter()
        .zip(observed)
        .map(|(stats, observed)| container_metrics(stats, observed))
        .collect();
    PodSandboxMetrics {
        pod_sandbox_id: id,
        metrics: pod.out,
        container_metrics,
    }
}

fn network_metrics(pod: &mut Metrics, interface: &InterfaceCounters) {
    let name = &[interface.name.as_str()][..];
    for (metric, value) in [
        ("container_network_receive_bytes_total", interface.rx_bytes),
        (
            "container_network_receive_packets_total",
            interface.rx_packets,
        ),
        (
            "container_network_receive_packets_dropped_total",
            interface.rx_dropped,
        ),
        (
            "container_network_receive_errors_total",
            interface.rx_errors,
        ),
        ("container_network_transmit_bytes_total", interface.tx_bytes),
        (
            "container_network_transmit_packets_total",
            interface.tx_packets,
        ),
        (
            "container_network_transmit_packets_dropped_total",
            interface.tx_dropped,
        ),
        (
            "container_network_transmit_errors_total",
            interface.tx_errors,
        ),
    ] {
        pod.add(metric, name, Some(value));
    }
}

fn container_metrics(stats: &ContainerStats, observed: &Observed<'_>) -> ContainerMetrics {
    let record = observed.record;
    let at = stats.writable_layer.as_ref().map_or(0, |w| w.timestamp);
    let mut one = Metrics {
        at,
        base: [record.id.clone(), record.name.clone(), record.image.clone()],
        out: Vec::new(),
    };
    if let Some(cpu) = &stats.cpu {
        let seconds = cpu.usage_core_nano_seconds.map(|n| n.value / NS_PER_SECOND);
        one.add("container_cpu_usage_seconds_total", &["total"], seconds);
    }
    if let Some(memory) = &stats.memory {
        let bytes = |v: Option<UInt64Value>| v.map(|v| v.value);
        one.add(
            "container_memory_usage_bytes",
            &[],
            bytes(memory.usage_bytes),
        );
        one.add(
            "container_memory_working_set_bytes",
            &[],
            bytes(memory.working_set_bytes),
        );
        one.add("container_memory_rss", &[], bytes(memory.rss_bytes));
    }
    if let Some(detail) = observed.detail {
        // Seen: its cgroup was read at `at`.
        one.add("container_last_seen", &[], Some(seconds_of(at)));
        cgroup_metrics(&mut one, &detail.usage);
        spec_metrics(&mut one, &detail.spec);
        if let Some(tasks) = &detail.tasks {
            task_metrics(&mut one, tasks);
        }
    }
    one.add(
        "container_start_time_seconds",
        &[],
        record.started_at.map(seconds_of),
    );
    if let Some(layer) = &stats.writable_layer {
        let device = layer.fs_id.as_ref().map_or("", |f| f.mountpoint.as_str());
        let device = &[device][..];
        one.add(
            "container_fs_usage_bytes",
            device,
            layer.used_bytes.map(|v| v.value),
        );
        one.add(
            "container_fs_inodes_used",
            device,
            layer.inodes_used.map(|v| v.value),
        );
        if let Some(fs) = observed.filesystem {
            one.add("container_fs_limit_bytes", device, Some(fs.bytes));
            one.add("container_fs_inodes_total", device, Some(fs.inodes));
            one.add("container_fs_inodes_free", device, Some(fs.inodes_free));
        }
    }
    ContainerMetrics {
        container_id: record.id.clone(),
        metrics: one.out,
    }
}

/// Whole seconds since the epoch of a time in nanoseconds.
fn seconds_of(ns: i64) -> u64 {
    u64::try_from(ns).unwrap_or_default() / NS_PER_SECOND
}

/// The cgroup figures cAdvisor exports and the CRI stats lack.
fn cgroup_metrics(one: &mut Metrics, usage: &CgroupStats) {
    let seconds = |ns: u64| Some(ns / NS_PER_SECOND);
    if let Some(split) = usage.cpu_split {
        one.add(
            "container_cpu_user_seconds_total",
            &[],
            seconds(split.user_ns),
        );
        one.add(
            "container_cpu_system_seconds_total",
            &[],
            seconds(split.system_ns),
        );
    }
    if let Some(cfs) = usage.cfs {
        one.add("container_cpu_cfs_periods_total", &[], Some(cfs.periods));
        one.add(
            "container_cpu_cfs_throttled_periods_total",
            &[],
            Some(cfs.throttled_periods),
        );
        one.add(
            "container_cpu_cfs_throttled_seconds_total",
            &[],
            seconds(cfs.throttled_ns),
        );
    }
    memory_metrics(one, &usage.memory);
    for page in &usage.hugetlb {
        let size = &[page.page_size.as_str()][..];
        one.add("container_hugetlb_usage_bytes", size, Some(page.usage));
        one.add("container_hugetlb_max_usage_bytes", size, page.max_usage);
    }
    for device in &usage.io {
        let name = device.device_name();
        let label = &[name.as_str()][..];
        one.add(
            "container_fs_reads_bytes_total",
            label,
            Some(device.read_bytes),
        );
        one.add(
            "container_fs_writes_bytes_total",
            label,
            Some(device.write_bytes),
        );
        one.add("container_fs_reads_total", label, Some(device.reads));
        one.add("container_fs_writes_total", label, Some(device.writes));
        let (major, minor) = (device.major.to_string(), device.minor.to_string());
        // cAdvisor's operation names, as the v1 blkio files spell them.
        for (operation, bytes) in [("Read", device.read_bytes), ("Write", device.write_bytes)] {
            one.add(
                "container_blkio_device_usage_total",
                &[name.as_str(), major.as_str(), minor.as_str(), operation],
                Some(bytes),
            );
        }
    }
    let pressure = &usage.pressure;
    for (resource, pressure) in [
        ("cpu", pressure.cpu),
        ("memory", pressure.memory),
        ("io", pressure.io),
    ] {
        let Some(pressure) = pressure else {
            continue;
        };
        // The kernel counts microseconds.
        let seconds = |stall: Stall| Some(stall.total_us / 1_000_000);
        one.add(
            &format!("container_pressure_{resource}_waiting_seconds_total"),
            &[],
            seconds(pressure.some),
        );
        one.add(
            &format!("container_pressure_{resource}_stalled_seconds_total"),
            &[],
            pressure.full.and_then(seconds),
        );
    }
}

fn memory_metrics(one: &mut Metrics, memory: &Memory) {
    one.add("container_memory_cache", &[], Some(memory.cache));
    one.add("container_memory_max_usage_bytes", &[], memory.peak);
    one.add("container_memory_swap", &[], memory.swap.map(|s| s.usage));
    one.add("container_memory_mapped_file", &[], memory.mapped_file);
    one.add("container_memory_kernel_usage", &[], memory.kernel);
    one.add("container_memory_failcnt", &[], memory.failcnt);
    one.add("container_oom_events_total", &[], memory.oom_kills);
    for (kind, scope, value) in [
        ("pgfault", "container", memory.local_page_faults),
        ("pgmajfault", "container", memory.local_major_page_faults),
        ("pgfault", "hierarchy", memory.page_faults),
        ("pgmajfault", "hierarchy", memory.major_page_faults),
    ] {
        one.add(
            "container_memory_failures_total",
            &[kind, scope],
            Some(value),
        );
    }
}

/// The container's limits, as cAdvisor reports them (a quota only when
/// there is one).
fn spec_metrics(one: &mut Metrics, spec: &Spec) {
    one.add("container_spec_cpu_period", &[], spec.cpu_period_us);
    one.add("container_spec_cpu_quota", &[], spec.cpu_quota_us);
    one.add("container_spec_cpu_shares", &[], spec.cpu_shares);
    one.add("container_spec_memory_limit_bytes", &[], spec.memory_limit);
    one.add(
        "container_spec_memory_reservation_limit_bytes",
        &[],
        spec.memory_reservation,
    );
    one.add(
        "container_spec_memory_swap_limit_bytes",
        &[],
        spec.memory_swap_limit,
    );
}

fn task_metrics(one: &mut Metrics, tasks: &Tasks) {
    one.add("container_processes", &[], Some(tasks.processes));
    one.add("container_threads", &[], Some(tasks.threads));
    one.add("container_threads_max", &[], tasks.threads_max);
    one.add(
        "container_file_descriptors",
        &[],
        Some(tasks.file_descriptors),
    );
    one.add("container_sockets", &[], Some(tasks.sockets));
    one.add(
        "container_ulimits_soft",
        &["max_open_files"],
        tasks.open_files_soft,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_runtime::stats::{BlockIo, Cfs, CpuSplit, Hugetlb, Pressures, Swap};

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

    /// A pod holding `one` container (its CRI stats) and nothing else.
    fn pod_of(one: ContainerStats) -> PodSandboxStats {
        PodSandboxStats {
            attributes: Some(PodSandboxAttributes {
                id: "p1".into(),
                ..Default::default()
            }),
            linux: Some(LinuxPodSandboxStats {
                network: Some(NetworkUsage {
                    timestamp: 9,
                    ..Default::default()
                }),
                containers: vec![one],
                ..Default::default()
            }),
            windows: None,
        }
    }

    /// A cgroup where every figure is given, each a different number.
    fn full_detail() -> Detail {
        let stall = |total_us| Stall {
            total_us,
            ..Stall::default()
        };
        Detail {
            usage: CgroupStats {
                cpu_ns: 3_000_000_000,
                cpu_split: Some(CpuSplit {
                    user_ns: 2_000_000_000,
                    system_ns: 1_000_000_000,
                }),
                memory: Memory {
                    usage: 100,
                    working_set: 80,
                    rss: 60,
                    cache: 20,
                    page_faults: 300,
                    major_page_faults: 30,
                    local_page_faults: 200,
                    local_major_page_faults: 10,
                    peak: Some(150),
                    swap: Some(Swap {
                        usage: 5,
                        limit: None,
                    }),
                    mapped_file: Some(12),
                    kernel: Some(14),
                    failcnt: Some(4),
                    oom_kills: Some(2),
                    available: None,
                },
                hugetlb: vec![Hugetlb {
                    page_size: "2MB".into(),
                    usage: 2_097_152,
                    max_usage: Some(4_194_304),
                }],
                io: vec![BlockIo {
                    major: 7,
                    minor: 250,
                    read_bytes: 4096,
                    write_bytes: 8192,
                    reads: 1,
                    writes: 2,
                }],
                pressure: Pressures {
                    cpu: Some(Pressure {
                        some: stall(7_500_000),
                        full: Some(stall(2_000_000)),
                    }),
                    memory: Some(Pressure {
                        some: stall(3_000_000),
                        full: None,
                    }),
                    io: None,
                },
                cfs: Some(Cfs {
                    periods: 50,
                    throttled_periods: 20,
                    throttled_ns: 6_500_000_000,
                }),
                processes: 3,
            },
            spec: Spec {
                cpu_period_us: Some(100_000),
                cpu_quota_us: Some(20_000),
                cpu_shares: Some(512),
                memory_limit: Some(67_108_864),
                memory_reservation: Some(0),
                memory_swap_limit: Some(134_217_728),
            },
            tasks: Some(Tasks {
                processes: 2,
                threads: 5,
                threads_max: Some(0),
                file_descriptors: 9,
                sockets: 1,
                open_files_soft: Some(1024),
            }),
        }
    }

    fn sample_of(detail: &Detail) -> Sample {
        Sample {
            at: 1_700_000_123_456_789_000,
            usage: Some(detail.usage.clone()),
            nano_cores: 5,
        }
    }

    fn started_record() -> ContainerRecord {
        ContainerRecord {
            started_at: Some(1_700_000_000_900_000_000),
            ..record()
        }
    }

    /// The (name, labels after id/name/image, value) of every metric.
    fn values(metrics: &[Metric]) -> Vec<(String, Vec<String>, u64)> {
        metrics
            .iter()
            .map(|m| {
                (
                    m.name.clone(),
                    m.label_values[3..].to_vec(),
                    m.value.unwrap().value,
                )
            })
            .collect()
    }

    #[test]
    fn every_descriptor_has_cadvisors_name_type_and_labels() {
        use MetricType::{Counter, Gauge};
        let expected: &[(&str, MetricType, &[&str])] = &[
            ("container_cpu_usage_seconds_total", Counter, &["cpu"]),
            ("container_cpu_user_seconds_total", Counter, &[]),
            ("container_cpu_system_seconds_total", Counter, &[]),
            ("container_cpu_cfs_periods_total", Counter, &[]),
            ("container_cpu_cfs_throttled_periods_total", Counter, &[]),
            ("container_cpu_cfs_throttled_seconds_total", Counter, &[]),
            ("container_memory_usage_bytes", Gauge, &[]),
            ("container_memory_working_set_bytes", Gauge, &[]),
            ("container_memory_rss", Gauge, &[]),
            ("container_memory_cache", Gauge, &[]),
            ("container_memory_max_usage_bytes", Gauge, &[]),
            ("container_memory_swap", Gauge, &[]),
            ("container_memory_mapped_file", Gauge, &[]),
            ("container_memory_kernel_usage", Gauge, &[]),
            ("container_memory_failcnt", Counter, &[]),
            (
                "container_memory_failures_total",
                Counter,
                &["failure_type", "scope"],
            ),
            ("container_oom_events_total", Counter, &[]),
            ("container_hugetlb_usage_bytes", Gauge, &["pagesize"]),
            ("container_hugetlb_max_usage_bytes", Gauge, &["pagesize"]),
            ("container_fs_reads_bytes_total", Counter, &["device"]),
            ("container_fs_writes_bytes_total", Counter, &["device"]),
            ("container_fs_reads_total", Counter, &["device"]),
            ("container_fs_writes_total", Counter, &["device"]),
            (
                "container_blkio_device_usage_total",
                Counter,
                &["device", "major", "minor", "operation"],
            ),
            ("container_fs_usage_bytes", Gauge, &["device"]),
            ("container_fs_inodes_used", Gauge, &["device"]),
            ("container_fs_limit_bytes", Gauge, &["device"]),
            ("container_fs_inodes_total", Gauge, &["device"]),
            ("container_fs_inodes_free", Gauge, &["device"]),
            (
                "container_network_receive_bytes_total",
                Counter,
                &["interface"],
            ),
            (
                "container_network_receive_packets_total",
                Counter,
                &["interface"],
            ),
            (
                "container_network_receive_packets_dropped_total",
                Counter,
                &["interface"],
            ),
            (
                "container_network_receive_errors_total",
                Counter,
                &["interface"],
            ),
            (
                "container_network_transmit_bytes_total",
                Counter,
                &["interface"],
            ),
            (
                "container_network_transmit_packets_total",
                Counter,
                &["interface"],
            ),
            (
                "container_network_transmit_packets_dropped_total",
                Counter,
                &["interface"],
            ),
            (
                "container_network_transmit_errors_total",
                Counter,
                &["interface"],
            ),
            ("container_processes", Gauge, &[]),
            ("container_threads", Gauge, &[]),
            ("container_threads_max", Gauge, &[]),
            ("container_file_descriptors", Gauge, &[]),
            ("container_sockets", Gauge, &[]),
            ("container_ulimits_soft", Gauge, &["ulimit"]),
            ("container_last_seen", Gauge, &[]),
            ("container_start_time_seconds", Gauge, &[]),
            ("container_spec_cpu_period", Gauge, &[]),
            ("container_spec_cpu_quota", Gauge, &[]),
            ("container_spec_cpu_shares", Gauge, &[]),
            ("container_spec_memory_limit_bytes", Gauge, &[]),
            ("container_spec_memory_reservation_limit_bytes", Gauge, &[]),
            ("container_spec_memory_swap_limit_bytes", Gauge, &[]),
            ("container_pressure_cpu_stalled_seconds_total", Counter, &[]),
            ("container_pressure_cpu_waiting_seconds_total", Counter, &[]),
            (
                "container_pressure_memory_stalled_seconds_total",
                Counter,
                &[],
            ),
            (
                "container_pressure_memory_waiting_seconds_total",
                Counter,
                &[],
            ),
            ("container_pressure_io_stalled_seconds_total", Counter, &[]),
            ("container_pressure_io_waiting_seconds_total", Counter, &[]),
        ];
        let descriptors = descriptors();
        // Each once, and none beyond the table.
        assert_eq!(descriptors.len(), expected.len());
        for (name, kind, extra) in expected {
            let found: Vec<_> = descriptors.iter().filter(|d| d.name == *name).collect();
            assert_eq!(found.len(), 1, "{name}");
            let mut keys = vec!["id", "name", "image"];
            keys.extend(extra.iter());
            assert_eq!(found[0].label_keys, keys, "{name}");
            assert!(!found[0].help.is_empty(), "{name}");
            let (_, _, described, _) = METRICS.iter().find(|(n, ..)| n == name).unwrap();
            assert_eq!(described, kind, "{name}");
        }
    }

    #[test]
    fn every_figure_maps_to_its_metric_labels_and_value() {
        let detail = full_detail();
        let layer = Layer {
            upper: Path::new("/var/lib/berth/c1/upper"),
            bytes: 4096,
            inodes: 3,
        };
        let record = started_record();
        let one = container(&record, &sample_of(&detail), layer);
        let at = one.writable_layer.as_ref().unwrap().timestamp;
        let interfaces = [InterfaceCounters {
            name: "eth0".into(),
            rx_bytes: 1000,
            rx_packets: 10,
            rx_errors: 1,
            rx_dropped: 2,
            tx_bytes: 3000,
            tx_packets: 30,
            tx_errors: 3,
            tx_dropped: 4,
        }];
        let observed = [Observed {
            record: &record,
            detail: Some(&detail),
            filesystem: Some(Capacity {
                bytes: 10_000_000,
                inodes: 1000,
                inodes_free: 600,
            }),
        }];
        let metrics = pod_metrics(&pod_of(one), Some(&interfaces), &observed);
        let upper = "/var/lib/berth/c1/upper";
        let expected: &[(&str, &[&str], u64)] = &[
            ("container_cpu_usage_seconds_total", &["total"], 3),
            ("container_memory_usage_bytes", &[], 100),
            ("container_memory_working_set_bytes", &[], 80),
            ("container_memory_rss", &[], 60),
            // The clock of the reading, in seconds.
            ("container_last_seen", &[], 1_700_000_123),
            ("container_cpu_user_seconds_total", &[], 2),
            ("container_cpu_system_seconds_total", &[], 1),
            ("container_cpu_cfs_periods_total", &[], 50),
            ("container_cpu_cfs_throttled_periods_total", &[], 20),
            ("container_cpu_cfs_throttled_seconds_total", &[], 6),
            ("container_memory_cache", &[], 20),
            ("container_memory_max_usage_bytes", &[], 150),
            ("container_memory_swap", &[], 5),
            ("container_memory_mapped_file", &[], 12),
            ("container_memory_kernel_usage", &[], 14),
            ("container_memory_failcnt", &[], 4),
            ("container_oom_events_total", &[], 2),
            (
                "container_memory_failures_total",
                &["pgfault", "container"],
                200,
            ),
            (
                "container_memory_failures_total",
                &["pgmajfault", "container"],
                10,
            ),
            (
                "container_memory_failures_total",
                &["pgfault", "hierarchy"],
                300,
            ),
            (
                "container_memory_failures_total",
                &["pgmajfault", "hierarchy"],
                30,
            ),
            ("container_hugetlb_usage_bytes", &["2MB"], 2_097_152),
            ("container_hugetlb_max_usage_bytes", &["2MB"], 4_194_304),
            ("container_fs_reads_bytes_total", &["/dev/loop250"], 4096),
            ("container_fs_writes_bytes_total", &["/dev/loop250"], 8192),
            ("container_fs_reads_total", &["/dev/loop250"], 1),
            ("container_fs_writes_total", &["/dev/loop250"], 2),
            (
                "container_blkio_device_usage_total",
                &["/dev/loop250", "7", "250", "Read"],
                4096,
            ),
            (
                "container_blkio_device_usage_total",
                &["/dev/loop250", "7", "250", "Write"],
                8192,
            ),
            // PSI in whole seconds: `some` is waiting, `full` stalled.
            ("container_pressure_cpu_waiting_seconds_total", &[], 7),
            ("container_pressure_cpu_stalled_seconds_total", &[], 2),
            ("container_pressure_memory_waiting_seconds_total", &[], 3),
            ("container_spec_cpu_period", &[], 100_000),
            ("container_spec_cpu_quota", &[], 20_000),
            ("container_spec_cpu_shares", &[], 512),
            ("container_spec_memory_limit_bytes", &[], 67_108_864),
            ("container_spec_memory_reservation_limit_bytes", &[], 0),
            ("container_spec_memory_swap_limit_bytes", &[], 134_217_728),
            ("container_processes", &[], 2),
            ("container_threads", &[], 5),
            ("container_threads_max", &[], 0),
            ("container_file_descriptors", &[], 9),
            ("container_sockets", &[], 1),
            ("container_ulimits_soft", &["max_open_files"], 1024),
            ("container_start_time_seconds", &[], 1_700_000_000),
            ("container_fs_usage_bytes", &[upper], 4096),
            ("container_fs_inodes_used", &[upper], 3),
            ("container_fs_limit_bytes", &[upper], 10_000_000),
            ("container_fs_inodes_total", &[upper], 1000),
            ("container_fs_inodes_free", &[upper], 600),
        ];
        let mine = &metrics.container_metrics[0];
        assert_eq!(mine.container_id, "c1");
        let mut got = values(&mine.metrics);
        // The device's name is this host's (sysfs): compare by major:minor.
        let host_name = detail.usage.io[0].device_name();
        for (_, labels, _) in &mut got {
            for label in labels.iter_mut().filter(|l| **l == host_name) {
                *label = "/dev/loop250".into();
            }
        }
        let want: Vec<_> = expected
            .iter()
            .map(|(n, l, v)| {
                (
                    n.to_string(),
                    l.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
                    *v,
                )
            })
            .collect();
        assert_eq!(got, want);
        // Each is typed and labelled as described, and carries the time of
        // the reading.
        let descriptors = descriptors();
        for metric in &mine.metrics {
            let d = descriptors.iter().find(|d| d.name == metric.name).unwrap();
            assert_eq!(d.label_keys.len(), metric.label_values.len(), "{}", d.name);
            let (_, _, kind, _) = METRICS.iter().find(|(n, ..)| *n == metric.name).unwrap();
            assert_eq!(metric.metric_type, *kind as i32, "{}", d.name);
            assert_eq!(metric.timestamp, at, "{}", d.name);
            assert_eq!(&metric.label_values[..3], ["c1", "app", "busybox"]);
        }

        // The pod: its interface's counters, as CRI-O labels them.
        let pod: Vec<_> = values(&metrics.metrics);
        let eth0 = vec!["eth0".to_string()];
        assert_eq!(
            pod,
            [
                ("container_network_receive_bytes_total", 1000),
                ("container_network_receive_packets_total", 10),
                ("container_network_receive_packets_dropped_total", 2),
                ("container_network_receive_errors_total", 1),
                ("container_network_transmit_bytes_total", 3000),
                ("container_network_transmit_packets_total", 30),
                ("container_network_transmit_packets_dropped_total", 4),
                ("container_network_transmit_errors_total", 3),
            ]
            .map(|(n, v)| (n.to_string(), eth0.clone(), v))
        );
        for metric in &metrics.metrics {
            assert_eq!(&metric.label_values[..3], ["p1", "POD", ""]);
            assert_eq!(metric.metric_type, MetricType::Counter as i32);
            assert_eq!(metric.timestamp, 9);
        }
    }

    #[test]
    fn figures_the_host_does_not_give_are_left_out() {
        // A v1 host without hugetlb, PSI, quota, kmem, oom_kill or the pids
        // controller; a container whose tasks could not be listed.
        let mut detail = full_detail();
        detail.usage.hugetlb.clear();
        detail.usage.io.clear();
        detail.usage.pressure = Pressures::default();
        detail.usage.cfs = None;
        detail.usage.cpu_split = None;
        detail.usage.memory = Memory {
            peak: None,
            swap: None,
            mapped_file: None,
            kernel: None,
            failcnt: None,
            oom_kills: None,
            ..detail.usage.memory
        };
        detail.spec = Spec::default();
        detail.tasks = None;
        // Created, not started yet: its cgroup holds runc's init only.
        let record = ContainerRecord {
            started_at: None,
            ..record()
        };
        let one = container(&record, &sample_of(&detail), layer_of(1));
        let observed = [Observed {
            record: &record,
            detail: Some(&detail),
            filesystem: None,
        }];
        let metrics = pod_metrics(&pod_of(one), None, &observed);
        assert!(metrics.metrics.is_empty(), "no network of its own");
        let names: Vec<_> = metrics.container_metrics[0]
            .metrics
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "container_cpu_usage_seconds_total",
                "container_memory_usage_bytes",
                "container_memory_working_set_bytes",
                "container_memory_rss",
                "container_last_seen",
                "container_memory_cache",
                "container_memory_failures_total",
                "container_memory_failures_total",
                "container_memory_failures_total",
                "container_memory_failures_total",
                // No start time; no statvfs answer.
                "container_fs_usage_bytes",
                "container_fs_inodes_used",
            ]
        );
        // Without a cgroup (created, or exited): its start and layer only.
        let record = started_record();
        let one = container(&record, &Sample::default(), layer_of(1));
        let observed = [Observed {
            record: &record,
            detail: None,
            filesystem: None,
        }];
        let metrics = pod_metrics(&pod_of(one), None, &observed);
        let names: Vec<_> = metrics.container_metrics[0]
            .metrics
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "container_start_time_seconds",
                "container_fs_usage_bytes",
                "container_fs_inodes_used",
            ]
        );
    }
}
