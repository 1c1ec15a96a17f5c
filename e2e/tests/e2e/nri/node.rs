//! NRI adjustments on the node's cgroups: run here and in the node VM
//! (cgroup v2 only, AppArmor, systemd as PID 1) by hack/vm/suite.sh.

use berth_e2e::cri::ContainerStatusRequest;
use berth_e2e::world::can_run_here;
use serde_json::{Value, json};

use super::Nri;

/// The container's own cgroup file: `v2` on a cgroup v2 node (the
/// container has its own cgroup namespace there), else `v1` under its
/// controller.
const CGROUP_FILE: &str = "f() { cat /sys/fs/cgroup/$1 2>/dev/null || cat /sys/fs/cgroup/$2; }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adjustments_take_effect_in_the_running_container() {
    if !can_run_here() {
        return;
    }
    let nri = Nri::new();
    let mut w = nri.world("nri-adjust", "2s").await;
    let host_dir = nri.dir.path().join("shared");
    std::fs::create_dir(&host_dir).unwrap();
    std::fs::write(host_dir.join("hello"), "from the plugin\n").unwrap();
    let hook_mark = nri.dir.path().join("hook-ran");
    let _adjuster = nri.connect(
        "adjuster",
        "10",
        json!({"adjust": {
            "env": {"NRI_ENV": "set-by-plugin"},
            "annotations": {"nri.test/annotation": "yes"},
            "mounts": [{"destination": "/nri", "source": host_dir, "type": "bind",
                        "options": ["rbind", "ro"]}],
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1234, "soft": 1000}],
            "hooks": {"create_runtime": [{"path": "/bin/sh",
                "args": ["sh", "-c", format!("echo ran > {}", hook_mark.display())]}]},
            "devices": [{"path": "/dev/nri-null", "type": "c", "major": 1, "minor": 3,
                         "file_mode": 0o666}],
            "sysctl": {"kernel.shm_rmid_forced": "1"},
            "args": ["sh", "-c", "sleep 61"],
            "cpuset_cpus": "0",
            "cpu_shares": 256,
            "memory_limit": 64 << 20,
            "pids_limit": 77,
            "oom_score_adj": 901,
        }}),
    );
    let pod = w.pod("nri-adjust").await;
    let id = w.run(&pod, w.container("ctr", "sleep 60")).await;
    let (code, out, err) = w
        .exec(
            &id,
            "echo env=$NRI_ENV; cat /nri/hello; grep 'open files' /proc/1/limits; ls -l /dev/nri-null; \
             cat /proc/self/oom_score_adj; echo ok > /dev/nri-null && echo dev-ok; \
             echo shm=$(cat /proc/sys/kernel/shm_rmid_forced); \
             echo cmd=$(tr '\\0' ' ' < /proc/1/cmdline); grep Cpus_allowed_list /proc/self/status",
            10,
        )
        .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("env=set-by-plugin"), "{out}");
    assert!(out.contains("from the plugin"), "{out}");
    // The container's process has the plugin's limit (soft, hard); an
    // exec'd one gets the runtime's rules.
    let files = out
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_default();
    assert_eq!(
        files.split_whitespace().collect::<Vec<_>>()[3..5],
        ["1000", "1234"],
        "{out}"
    );
    assert!(out.contains("dev-ok"), "{out}");
    assert!(out.contains("901"), "{out}");
    assert!(out.contains("shm=1"), "{out}");
    // sh execs its one command: the plugin's args are what runs.
    assert!(out.contains("cmd=sleep 61"), "{out}");
    assert!(out.contains("Cpus_allowed_list:\t0\n"), "{out}");
    assert!(hook_mark.exists(), "the createRuntime hook did not run");
    let status = w
        .client
        .container_status(ContainerStatusRequest {
            container_id: id.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: Value = serde_json::from_str(&status.info["info"]).unwrap();
    let spec = &info["runtimeSpec"];
    assert_eq!(spec["annotations"]["nri.test/annotation"], json!("yes"));
    assert_eq!(
        spec["linux"]["resources"]["memory"]["limit"],
        json!(64 << 20)
    );
    assert_eq!(spec["linux"]["resources"]["pids"]["limit"], json!(77));
    assert_eq!(
        spec["linux"]["sysctl"]["kernel.shm_rmid_forced"],
        json!("1")
    );
    // ContainerStatus reports the limits the plugin set.
    let linux = status.status.unwrap().resources.unwrap().linux.unwrap();
    assert_eq!(linux.memory_limit_in_bytes, 64 << 20);
    // The limits are the container's cgroup's.
    let script = format!(
        "{CGROUP_FILE}; f pids.max pids/pids.max; f memory.max memory/memory.limit_in_bytes; \
         f cpuset.cpus.effective cpuset/cpuset.effective_cpus"
    );
    let (code, out, err) = w.exec(&id, &script, 10).await;
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, ["77", &(64u64 << 20).to_string(), "0"], "{out}");
    w.stop(&id, 0).await;
    w.remove_pod(&pod).await;
}
