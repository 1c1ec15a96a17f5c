//! Hostile CRI requests against the real berthd: absurd values get
//! INVALID_ARGUMENT with a message naming the field, and change nothing
//! (the List answers, the log directories and the name reservations are as
//! before); negative and enormous timeouts behave as in CRI-O (a negative
//! StopContainer timeout is 0, a negative ExecSync one is none) instead of
//! failing.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use berth_e2e::cri::{
    ContainerConfig, ContainerMetadata, ContainerState, CreateContainerRequest, Device,
    ExecSyncRequest, KeyValue, LinuxContainerResources, LinuxContainerSecurityContext, Mount,
    PodSandboxConfig, RunPodSandboxRequest, SecurityProfile, StopContainerRequest,
    security_profile::ProfileType,
};
use berth_e2e::world::{World, can_run_here};
use tonic::Code;

/// A kubelet-sized label value: 1 MiB.
fn huge() -> String {
    "v".repeat(1 << 20)
}

/// Files and dirs under `dir` (recursively), to see that nothing was made.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            out.push(path.display().to_string());
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

fn assert_invalid(case: &str, status: &tonic::Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
    assert!(
        status.message().contains(field),
        "{case}: the message does not name {field:?}: {}",
        status.message()
    );
    // The message quotes what it refuses, not a megabyte of it.
    assert!(
        status.message().len() < 4096,
        "{case}: {} bytes of message",
        status.message().len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn absurd_requests_are_refused_naming_the_field_and_change_nothing() {
    if !can_run_here() {
        return;
    }
    let mut w = World::new("hostile").await;

    // RunPodSandbox.
    let pods_before = berth_e2e::pod_ids(&mut w.client).await;
    let logs_before = tree(w.logs.path());
    type PodCase = (&'static str, fn(&mut PodSandboxConfig), &'static str);
    let pod_cases: Vec<PodCase> = vec![
        (
            "relative log_directory",
            |c| c.log_directory = "var/log/pods/x".into(),
            "config.log_directory",
        ),
        (
            "log_directory with ..",
            |c| c.log_directory = format!("{}/../../etc", c.log_directory),
            "config.log_directory",
        ),
        (
            "a name of 1000 bytes",
            |c| c.metadata.as_mut().unwrap().name = "p".repeat(1000),
            "config.metadata.name",
        ),
        (
            "a namespace forging CNI_ARGS",
            |c| c.metadata.as_mut().unwrap().namespace = "e2e;K8S_POD_NAME=other".into(),
            "config.metadata.namespace",
        ),
        (
            "a 1 MiB label",
            |c| {
                c.labels.insert("app".into(), huge());
            },
            "config.labels[\"app\"]",
        ),
        (
            "a 1 MiB annotation",
            |c| {
                c.annotations.insert("note".into(), huge());
            },
            "config.annotations[\"note\"]",
        ),
        (
            "cgroup_parent escaping with ..",
            |c| c.linux.as_mut().unwrap().cgroup_parent = "/berth-e2e/..".into(),
            "config.linux.cgroup_parent",
        ),
        (
            "a hostname of 65 bytes",
            |c| c.hostname = "h".repeat(65),
            "config.hostname",
        ),
    ];
    for (case, change, field) in pod_cases {
        let mut config = w.pod_config("hp");
        change(&mut config);
        let status = w
            .client
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_err();
        assert_invalid(case, &status, field);
    }
    let status = w
        .client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(w.pod_config("hp")),
            runtime_handler: "no-such-handler".into(),
        })
        .await
        .unwrap_err();
    assert_invalid("unknown runtime handler", &status, "runtime handler");
    assert!(status.message().contains("no-such-handler"), "{status:?}");
    assert_eq!(berth_e2e::pod_ids(&mut w.client).await, pods_before);
    assert_eq!(tree(w.logs.path()), logs_before);

    // The same pod name is free: no refused request kept it reserved.
    let pod = w.pod("hp").await;

    // CreateContainer.
    let pod_logs = w.logs.path().join("hp");
    let containers_before = berth_e2e::container_ids(&mut w.client).await;
    let pod_logs_before = tree(&pod_logs);
    let outside = w.logs.path().join("outside.log");
    let profile = w.logs.path().join("no-such-profile.json");
    let mount = |container_path: &str, host_path: &str| Mount {
        container_path: container_path.into(),
        host_path: host_path.into(),
        ..Default::default()
    };
    let cases: Vec<(&str, ContainerConfig, String)> = vec![
        (
            "an absolute log_path",
            ContainerConfig {
                log_path: outside.display().to_string(),
                ..w.container("hp-c", "true")
            },
            "log_path".into(),
        ),
        (
            "a log_path with ..",
            ContainerConfig {
                log_path: "../outside.log".into(),
                ..w.container("hp-c", "true")
            },
            "log_path".into(),
        ),
        (
            "a relative mount container_path",
            ContainerConfig {
                mounts: vec![mount("data", "/tmp")],
                ..w.container("hp-c", "true")
            },
            "mounts[0].container_path".into(),
        ),
        (
            "a mount container_path with ..",
            ContainerConfig {
                mounts: vec![mount("/data/../../etc", "/tmp")],
                ..w.container("hp-c", "true")
            },
            "mounts[0].container_path".into(),
        ),
        (
            "an empty mount host_path",
            ContainerConfig {
                mounts: vec![mount("/data", "")],
                ..w.container("hp-c", "true")
            },
            "mounts[0].host_path".into(),
        ),
        (
            "a mount host_path with ..",
            ContainerConfig {
                mounts: vec![mount("/data", "/tmp/../etc")],
                ..w.container("hp-c", "true")
            },
            "mounts[0].host_path".into(),
        ),
        (
            "a relative device path",
            ContainerConfig {
                devices: vec![Device {
                    container_path: "dev/null".into(),
                    host_path: "/dev/null".into(),
                    permissions: "rwm".into(),
                }],
                ..w.container("hp-c", "true")
            },
            "devices[0].container_path".into(),
        ),
        (
            "a missing Localhost seccomp profile",
            {
                let mut c = w.container("hp-c", "true");
                let sc = c
                    .linux
                    .as_mut()
                    .unwrap()
                    .security_context
                    .get_or_insert_with(LinuxContainerSecurityContext::default);
                sc.seccomp = Some(SecurityProfile {
                    profile_type: ProfileType::Localhost as i32,
                    localhost_ref: profile.display().to_string(),
                });
                c
            },
            "linux.security_context.seccomp.localhost_ref".into(),
        ),
        (
            "a NUL byte in an argument",
            w.container("hp-c", "true\0; touch /pwned"),
            "command[2]".into(),
        ),
        (
            "a NUL byte in an env value",
            ContainerConfig {
                envs: vec![KeyValue {
                    key: "A".into(),
                    value: "a\0b".into(),
                }],
                ..w.container("hp-c", "true")
            },
            "envs[0].value".into(),
        ),
        (
            "a relative working_dir",
            ContainerConfig {
                working_dir: "srv".into(),
                ..w.container("hp-c", "true")
            },
            "working_dir".into(),
        ),
        (
            "a memory limit of 1 byte",
            {
                let mut c = w.container("hp-c", "true");
                c.linux.as_mut().unwrap().resources = Some(LinuxContainerResources {
                    memory_limit_in_bytes: 1,
                    ..Default::default()
                });
                c
            },
            "linux.resources.memory_limit_in_bytes".into(),
        ),
        (
            "a name of 1000 bytes",
            ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: format!("hp-{}", "c".repeat(1000)),
                    attempt: 0,
                }),
                ..w.container("hp-c", "true")
            },
            "metadata.name".into(),
        ),
        (
            "a 1 MiB label",
            ContainerConfig {
                labels: HashMap::from([("app".into(), huge())]),
                ..w.container("hp-c", "true")
            },
            "labels[\"app\"]".into(),
        ),
        (
            "a 1 MiB annotation",
            ContainerConfig {
                annotations: HashMap::from([("note".into(), huge())]),
                ..w.container("hp-c", "true")
            },
            "annotations[\"note\"]".into(),
        ),
    ];
    for (case, config, field) in cases {
        let status = w.create(&pod, config).await.unwrap_err();
        assert_invalid(case, &status, &field);
        if field.contains("seccomp") {
            let path = profile.display().to_string();
            assert!(status.message().contains(&path), "{status:?}");
        }
    }
    assert_eq!(
        berth_e2e::container_ids(&mut w.client).await,
        containers_before
    );
    assert_eq!(tree(&pod_logs), pod_logs_before);
    assert!(!outside.exists());
    // The container name is free: no refused request kept it reserved.
    let c = w.create(&pod, w.container("hp-c", "true")).await.unwrap();
    w.remove(&c).await;

    // A request's own copy of the pod config cannot move the logs out of
    // the pod's log directory.
    let elsewhere = tempfile::tempdir().unwrap();
    let mut sandbox = w.pod_config("hp");
    sandbox.log_directory = elsewhere.path().display().to_string();
    let c = w
        .client
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(w.container("hp-moved", "true")),
            sandbox_config: Some(sandbox),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    let log_path = w.status(&c).await.log_path;
    assert_eq!(Path::new(&log_path), pod_logs.join("hp-moved.log"));
    assert!(tree(elsewhere.path()).is_empty());
    w.remove(&c).await;

    // Timeouts as CRI-O takes them. ExecSync: negative is none, an enormous
    // one is as good as none.
    let c = w.run(&pod, w.container("hp-t", "exec sleep 1000")).await;
    for timeout in [-1, i64::MAX] {
        let out = w
            .client
            .exec_sync(ExecSyncRequest {
                container_id: c.clone(),
                cmd: vec!["echo".into(), "fine".into()],
                timeout,
            })
            .await
            .unwrap_or_else(|e| panic!("ExecSync with timeout {timeout}: {e:?}"))
            .into_inner();
        assert_eq!((out.exit_code, &out.stdout[..]), (0, &b"fine\n"[..]));
    }
    let status = w
        .client
        .exec_sync(ExecSyncRequest {
            container_id: c.clone(),
            cmd: vec![],
            timeout: 1,
        })
        .await
        .unwrap_err();
    assert_invalid("an empty ExecSync cmd", &status, "cmd");
    let status = w
        .client
        .exec_sync(ExecSyncRequest {
            container_id: c.clone(),
            cmd: vec!["touch".into(), "/pwned\0".into()],
            timeout: 1,
        })
        .await
        .unwrap_err();
    assert_invalid("a NUL byte in an ExecSync argument", &status, "cmd[1]");
    assert_ne!(w.exec(&c, "test -e /pwned", 10).await.0, 0);
    // StopContainer: negative is 0, so SIGKILL at once (sleep as PID 1
    // ignores SIGTERM: a negative timeout read as "forever" would hang).
    tokio::time::timeout(
        Duration::from_secs(120),
        w.client.stop_container(StopContainerRequest {
            container_id: c.clone(),
            timeout: -5,
        }),
    )
    .await
    .expect("StopContainer with a negative timeout kills at once")
    .unwrap();
    let stopped = w.status(&c).await;
    assert_eq!(stopped.state, ContainerState::ContainerExited as i32);
    assert_eq!(stopped.exit_code, 137);
    w.remove(&c).await;
    // An enormous timeout waits for the stop signal (the fixture image's
    // is SIGUSR1) to work, once the trap is set: PID 1 drops a signal it
    // has no handler for.
    let script = "trap 'exit 3' USR1 TERM; touch /trapped; while :; do sleep 1; done";
    let c = w.run(&pod, w.container("hp-term", script)).await;
    while w.exec(&c, "test -e /trapped", 10).await.0 != 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::timeout(Duration::from_secs(120), w.stop(&c, i64::MAX))
        .await
        .expect("StopContainer with an enormous timeout returns once the stop signal worked");
    let stopped = w.status(&c).await;
    assert_eq!(
        (stopped.state, stopped.exit_code),
        (ContainerState::ContainerExited as i32, 3)
    );
    w.remove(&c).await;
    w.remove_pod(&pod).await;
}
