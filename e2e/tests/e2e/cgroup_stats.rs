//! The cgroup figures beyond cpu and memory usage, through berthd and real
//! runc, on whatever cgroup layout the host has (v1, hybrid, or v2 in the
//! node VM): swap in ContainerStats where the kernel accounts it, and the
//! cAdvisor-named metrics for user/system CPU, page cache, peak memory,
//! swap, huge pages and block I/O in ListPodSandboxMetrics.

use std::collections::HashMap;
use std::path::Path;

use berth_e2e::cri::{
    ContainerStatsRequest, ListMetricDescriptorsRequest, ListPodSandboxMetricsRequest, Metric,
};
use berth_e2e::world::{World, can_run_here};

/// Whether the kernel accounts swap for the cgroup in `dir` of the memory
/// hierarchy: v2 `memory.swap.current`, v1 `memory.memsw.usage_in_bytes`.
fn swap_accounted(cgroup: &str) -> bool {
    let relative = cgroup.trim_start_matches('/');
    let v2 = Path::new("/sys/fs/cgroup").join(relative);
    let v1 = Path::new("/sys/fs/cgroup/memory").join(relative);
    v2.join("memory.swap.current").exists() || v1.join("memory.memsw.usage_in_bytes").exists()
}

#[tokio::test(flavor = "multi_thread")]
async fn swap_peak_cache_and_cpu_split_reach_stats_and_metrics() {
    if !can_run_here() {
        return;
    }
    let mut w = World::new("cgstats").await;
    let pod = w.pod("cgstats").await;
    // Some CPU, some page cache (a file written), then idle.
    let config = w.container(
        "cgstats-c",
        "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; \
         dd if=/dev/zero of=/data bs=1M count=4 2>/dev/null; sleep 600",
    );
    let id = w.run(&pod, config).await;
    let cgroup = format!("{}/{id}", w.cgroup_parent);
    // Until the loop and the write are done.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let (code, out, _) = w.exec(&id, "ls -l /data", 60).await;
        if code == 0 && out.contains("4194304") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the write did not finish"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    let stats = w
        .client
        .container_stats(ContainerStatsRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    if swap_accounted(&cgroup) {
        let swap = stats.swap.expect("swap is accounted: ContainerStats.swap");
        assert!(swap.timestamp > 0);
        assert!(swap.swap_usage_bytes.is_some(), "{swap:?}");
    } else {
        assert_eq!(stats.swap, None);
    }

    let descriptors: HashMap<String, usize> = w
        .client
        .list_metric_descriptors(ListMetricDescriptorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .descriptors
        .into_iter()
        .map(|d| (d.name, d.label_keys.len()))
        .collect();
    for name in [
        "container_cpu_user_seconds_total",
        "container_cpu_system_seconds_total",
        "container_memory_cache",
        "container_memory_max_usage_bytes",
        "container_memory_swap",
        "container_hugetlb_usage_bytes",
        "container_hugetlb_max_usage_bytes",
        "container_fs_reads_bytes_total",
        "container_fs_writes_bytes_total",
        "container_fs_reads_total",
        "container_fs_writes_total",
    ] {
        assert!(descriptors.contains_key(name), "{name}: {descriptors:?}");
    }
    let pods = w
        .client
        .list_pod_sandbox_metrics(ListPodSandboxMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pod_metrics;
    let metrics: Vec<Metric> = pods
        .iter()
        .flat_map(|p| &p.container_metrics)
        .find(|c| c.container_id == id)
        .expect("the container's metrics")
        .metrics
        .clone();
    for metric in &metrics {
        assert_eq!(
            metric.label_values.len(),
            descriptors[&metric.name],
            "{metric:?}"
        );
    }
    let one = |name: &str| -> Option<u64> {
        metrics
            .iter()
            .find(|m| m.name == name)
            .and_then(|m| m.value.as_ref())
            .map(|v| v.value)
    };
    let usage = one("container_memory_usage_bytes").expect("usage");
    let cache = one("container_memory_cache").expect("cache");
    assert!(cache > 0, "the 4 MiB file is page cache");
    // Every kernel Berth runs on has a memory peak (v1 always, v2 5.19+).
    let peak = one("container_memory_max_usage_bytes").expect("peak");
    assert!(peak >= usage && peak > 0, "peak {peak} usage {usage}");
    assert!(one("container_cpu_user_seconds_total").is_some());
    assert!(one("container_cpu_system_seconds_total").is_some());
    assert_eq!(
        one("container_memory_swap").is_some(),
        swap_accounted(&cgroup)
    );
    // Labels: the huge page size, the block device (a /dev name, or
    // major:minor when sysfs does not name it).
    for metric in metrics.iter().filter(|m| {
        m.name.starts_with("container_fs_reads") || m.name.starts_with("container_fs_writes")
    }) {
        let device = metric.label_values.last().unwrap();
        assert!(
            device.starts_with("/dev/") || device.contains(':'),
            "{metric:?}"
        );
    }
    for metric in metrics
        .iter()
        .filter(|m| m.name.starts_with("container_hugetlb_"))
    {
        assert!(
            metric.label_values.last().unwrap().ends_with('B'),
            "{metric:?}"
        );
    }
    w.stop(&id, 0).await;
    w.remove(&id).await;
    w.remove_pod(&pod).await;
}
