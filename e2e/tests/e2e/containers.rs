//! Containers through the real berthd over CRI: real images from a local
//! registry, real runc and berth-shim. Pods use the host's network so no
//! CNI set-up is needed; each test has its own berthd, registry, log dir and
//! cgroup parent, so tests run in parallel.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use berth_e2e::cri::{
    ContainerConfig, ContainerFilter, ContainerState, ContainerStateValue, ContainerStatusRequest,
    CreateContainerRequest, ExecSyncRequest, ImageSpec, Int64Value, LinuxContainerResources,
    LinuxContainerSecurityContext, ListContainersRequest, RemoveContainerRequest,
    RemoveImageRequest, ReopenContainerLogRequest, StartContainerRequest, StopContainerRequest,
};
use berth_e2e::{Berthd, mounts_under, shims_under};
use nix::sys::signal::Signal;

use berth_e2e::world::{World, can_run_here};

fn sc(config: &mut ContainerConfig) -> &mut LinuxContainerSecurityContext {
    config
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_exit_codes_users_and_readonly_rootfs() {
    if !can_run_here() {
        return;
    }
    let mut w = World::new("basic").await;
    let pod = w.pod("basic").await;
    let log_dir = w.logs.path().join("basic");

    // stdout and stderr in the CRI format; exit 3 is an Error.
    let id = w
        .run(
            &pod,
            w.container("basic-echo", "echo to-out; echo to-err >&2; exit 3"),
        )
        .await;
    let status = w.wait_exit(&id).await;
    assert_eq!((status.exit_code, status.reason.as_str()), (3, "Error"));
    assert!(status.started_at > 0 && status.finished_at >= status.started_at);
    assert_eq!(
        status.log_path,
        log_dir.join("basic-echo.log").display().to_string()
    );
    assert_eq!(status.image.as_ref().unwrap().image, w.image);
    assert_eq!(status.image_id.len(), 64);
    assert!(
        status.image_ref.contains("@sha256:"),
        "{}",
        status.image_ref
    );
    assert_eq!(status.labels["app"], "basic-echo");
    let lines = World::log_text(&log_dir.join("basic-echo.log"));
    assert!(
        lines.contains(&("stdout".into(), "to-out".into())),
        "{lines:?}"
    );
    assert!(
        lines.contains(&("stderr".into(), "to-err".into())),
        "{lines:?}"
    );

    // Exit 0 is Completed.
    let id = w.run(&pod, w.container("basic-ok", "true")).await;
    let status = w.wait_exit(&id).await;
    assert_eq!((status.exit_code, status.reason.as_str()), (0, "Completed"));

    // run_as_username resolves against the image's /etc/passwd and /etc/group.
    let mut config = w.container("basic-user", "id -u; id -g; id -G");
    sc(&mut config).run_as_username = "berth".into();
    let id = w.run(&pod, config).await;
    let status = w.wait_exit(&id).await;
    assert_eq!(status.exit_code, 0);
    let out: Vec<String> = World::log_text(&log_dir.join("basic-user.log"))
        .into_iter()
        .map(|(_, text)| text)
        .collect();
    assert_eq!(out[0], "4242");
    assert_eq!(out[1], "4343");
    assert!(out[2].split(' ').any(|g| g == "5555"), "{out:?}");
    let user = status.user.unwrap().linux.unwrap();
    assert_eq!((user.uid, user.gid), (4242, 4343));
    // The groups the process really has, its primary one included, as
    // `id -G` printed them (issue 17: main reported [5555]).
    let mut groups: Vec<String> = user
        .supplemental_groups
        .iter()
        .map(|g| g.to_string())
        .collect();
    groups.sort();
    let mut printed: Vec<String> = out[2].split(' ').map(str::to_string).collect();
    printed.sort();
    assert_eq!(groups, printed, "{out:?}");
    assert_eq!(user.supplemental_groups, [4343, 5555]);

    // A read-only rootfs refuses writes.
    let mut config = w.container("basic-ro", "echo x > /file && echo wrote");
    sc(&mut config).readonly_rootfs = true;
    let id = w.run(&pod, config).await;
    let status = w.wait_exit(&id).await;
    assert_ne!(status.exit_code, 0);
    let text = std::fs::read_to_string(log_dir.join("basic-ro.log")).unwrap();
    assert!(text.contains("Read-only file system"), "{text}");
    assert!(!text.contains("wrote"), "{text}");

    // The name is reserved while the container exists.
    let err = w
        .create(&pod, w.container("basic-ro", "true"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    assert!(err.message().contains(&id), "{}", err.message());

    // Unknown IDs: Status NOT_FOUND, Stop and Remove succeed.
    let err = w
        .client
        .container_status(ContainerStatusRequest {
            container_id: "f".repeat(64),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    w.stop(&"f".repeat(64), 0).await;
    w.remove(&"f".repeat(64)).await;

    // An unknown pod is refused clearly.
    let err = w
        .create(&"e".repeat(64), w.container("basic-nopod", "true"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    // Filters: by label, by state, by ID prefix.
    let list = |filter: ContainerFilter| ListContainersRequest {
        filter: Some(filter),
    };
    let all = w
        .client
        .list_containers(list(ContainerFilter::default()))
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(all.len(), 4);
    let by_label = w
        .client
        .list_containers(list(ContainerFilter {
            label_selector: HashMap::from([("app".into(), "basic-ok".into())]),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(by_label.len(), 1);
    let by_prefix = w
        .client
        .list_containers(list(ContainerFilter {
            id: by_label[0].id[..12].into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(by_prefix[0].id, by_label[0].id);
    let running = w
        .client
        .list_containers(list(ContainerFilter {
            state: Some(ContainerStateValue {
                state: ContainerState::ContainerRunning as i32,
            }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(running.is_empty());

    // The pod's removal removes its containers.
    w.remove_pod(&pod).await;
    let all = w
        .client
        .list_containers(list(ContainerFilter::default()))
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(all.is_empty());
    assert!(mounts_under(w.paths().dir()).is_empty());
    assert!(w.cgroups_left().is_empty(), "{:?}", w.cgroups_left());
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_signal_exec_sync_oom_and_log_reopen() {
    if !can_run_here() {
        return;
    }
    let mut w = World::new("stop").await;
    let pod = w.pod("stop").await;
    let log_dir = w.logs.path().join("stop");

    // The image's StopSignal (SIGUSR1) is sent first.
    let handler = "trap 'echo got-usr1; exit 0' USR1; echo ready; while :; do sleep 0.1; done";
    let id = w.run(&pod, w.container("stop-graceful", handler)).await;
    let (code, out, _) = w.exec(&id, "echo hi; echo oops >&2; exit 7", 0).await;
    assert_eq!((code, out.as_str()), (7, "hi\n"));
    let (code, _, err) = w.exec(&id, "echo hi; echo oops >&2; exit 7", 10).await;
    assert_eq!((code, err.as_str()), (7, "oops\n"));
    // ExecSync's timeout: CRI-O's answer.
    let (code, _, err) = w.exec(&id, "sleep 30", 1).await;
    assert_eq!((code, err.as_str()), (-1, "command timed out"));
    w.stop(&id, 30).await;
    let status = w.status(&id).await;
    assert_eq!((status.exit_code, status.reason.as_str()), (0, "Completed"));
    let text = std::fs::read_to_string(log_dir.join("stop-graceful.log")).unwrap();
    assert!(text.contains("got-usr1"), "{text}");

    // Ignored: SIGKILL after the timeout.
    let stubborn = "trap '' USR1; echo ready; while :; do sleep 0.1; done";
    let id = w.run(&pod, w.container("stop-stubborn", stubborn)).await;
    w.stop(&id, 1).await;
    let status = w.status(&id).await;
    assert_eq!((status.exit_code, status.reason.as_str()), (137, "Error"));
    // ExecSync on an exited container is refused.
    let err = w
        .client
        .exec_sync(ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["true".into()],
            timeout: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);

    // 16 MiB limit, 64 MiB allocation: OOMKilled.
    let mut config = w.container("stop-oom", "dd if=/dev/zero of=/dev/null bs=64M count=1");
    config.linux.as_mut().unwrap().resources = Some(LinuxContainerResources {
        memory_limit_in_bytes: 16 << 20,
        ..Default::default()
    });
    let id = w.run(&pod, config).await;
    let status = w.wait_exit(&id).await;
    assert_eq!(status.reason, "OOMKilled", "{status:?}");
    assert_eq!(status.exit_code, 137);
    assert_eq!(
        status
            .resources
            .unwrap()
            .linux
            .unwrap()
            .memory_limit_in_bytes,
        16 << 20
    );

    // Log rotation: rename, reopen, and every line is in one of the files.
    let writer = "i=0; while [ $i -lt 300 ]; do echo line$i; i=$((i+1)); sleep 0.01; done";
    let id = w.run(&pod, w.container("stop-rotate", writer)).await;
    let log = log_dir.join("stop-rotate.log");
    let rotated = log_dir.join("stop-rotate.log.1");
    // Rotate once some lines are written.
    let deadline = Instant::now() + Duration::from_secs(30);
    while World::log_text(&log).len() < 50 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::rename(&log, &rotated).unwrap();
    w.client
        .reopen_container_log(ReopenContainerLogRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    let status = w.wait_exit(&id).await;
    assert_eq!(status.exit_code, 0);
    let old = World::log_text(&rotated);
    let new = World::log_text(&log);
    assert!(!old.is_empty() && !new.is_empty());
    let all: Vec<String> = old.into_iter().chain(new).map(|(_, t)| t).collect();
    let expected: Vec<String> = (0..300).map(|i| format!("line{i}")).collect();
    assert_eq!(all, expected);
    // Reopen of an exited container is refused.
    let err = w
        .client
        .reopen_container_log(ReopenContainerLogRequest { container_id: id })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);

    w.remove_pod(&pod).await;
    assert!(mounts_under(w.paths().dir()).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_berthd_with_running_containers() {
    if !can_run_here() {
        return;
    }
    const N: usize = 20;
    const EXITS: usize = 7;
    let mut w = World::new("restart").await;
    let pod = w.pod("restart").await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let script = if i == EXITS {
            "while [ ! -e /tmp/go ]; do sleep 0.1; done; exit 5".to_string()
        } else {
            "echo up; while :; do sleep 1; done".to_string()
        };
        let config = w.container(&format!("restart-c{i}"), &script);
        let sandbox = w.pod_config("restart");
        let mut client = w.client.clone();
        let pod = pod.clone();
        tasks.spawn(async move {
            let id = client
                .create_container(CreateContainerRequest {
                    pod_sandbox_id: pod,
                    config: Some(config),
                    sandbox_config: Some(sandbox),
                })
                .await
                .unwrap()
                .into_inner()
                .container_id;
            client
                .start_container(StartContainerRequest {
                    container_id: id.clone(),
                })
                .await
                .unwrap();
            (i, id)
        });
    }
    let mut ids = vec![String::new(); N];
    while let Some(done) = tasks.join_next().await {
        let (i, id) = done.unwrap();
        ids[i] = id;
    }
    let verbose = w
        .client
        .container_status(ContainerStatusRequest {
            container_id: ids[EXITS].clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&verbose.info["info"]).unwrap();
    assert!(info["pid"].as_i64().unwrap() > 0);
    assert!(info["shimPid"].as_i64().unwrap() > 0);
    assert!(info["runtimeSpec"]["process"].is_object());
    let rootfs = PathBuf::from(info["rootfs"].as_str().unwrap());
    let run_dir = PathBuf::from(info["runDir"].as_str().unwrap());

    let berthd = w.berthd.take().unwrap();
    let (_, paths) = berthd.stop_with(Signal::SIGKILL).await;
    // While berthd is away, one container exits.
    std::fs::write(rootfs.join("tmp/go"), "").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !run_dir.join("exit").exists() {
        assert!(Instant::now() < deadline, "container {EXITS} did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let berthd = Berthd::start_in(paths, w.options.clone()).await;
    w.client = berthd.runtime().await;
    w.berthd = Some(berthd);

    let listed = berth_e2e::container_ids(&mut w.client).await;
    assert_eq!(listed.len(), N);
    for (i, id) in ids.iter().enumerate() {
        let status = w.status(id).await;
        if i == EXITS {
            assert_eq!(status.state, ContainerState::ContainerExited as i32);
            assert_eq!((status.exit_code, status.reason.as_str()), (5, "Error"));
            assert!(status.finished_at > status.started_at);
        } else {
            assert_eq!(status.state, ContainerState::ContainerRunning as i32, "{i}");
        }
    }
    // The running ones still answer.
    let (code, out, _) = w.exec(&ids[0], "echo alive", 10).await;
    assert_eq!((code, out.as_str()), (0, "alive\n"));

    // Stopping and removing the pod after the restart takes its containers along.
    w.remove_pod(&pod).await;
    let listed = berth_e2e::container_ids(&mut w.client).await;
    assert!(listed.is_empty());
    assert_eq!(shims_under(w.paths().dir()), 0);
    assert!(mounts_under(w.paths().dir()).is_empty());
    assert!(w.cgroups_left().is_empty(), "{:?}", w.cgroups_left());
}

#[tokio::test(flavor = "multi_thread")]
async fn create_start_stop_remove_cycles_leak_nothing() {
    if !can_run_here() {
        return;
    }
    const LANES: usize = 4;
    const CYCLES: usize = 50;
    let mut w = World::new("cycle").await;
    let pod = w.pod("cycle").await;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..LANES {
        let mut client = w.client.clone();
        let pod = pod.clone();
        let sandbox = w.pod_config("cycle");
        let config = w.container(&format!("cycle-{lane}"), "while :; do sleep 1; done");
        tasks.spawn(async move {
            for _ in 0..CYCLES {
                let id = client
                    .create_container(CreateContainerRequest {
                        pod_sandbox_id: pod.clone(),
                        config: Some(config.clone()),
                        sandbox_config: Some(sandbox.clone()),
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .container_id;
                client
                    .start_container(StartContainerRequest {
                        container_id: id.clone(),
                    })
                    .await
                    .unwrap();
                client
                    .stop_container(StopContainerRequest {
                        container_id: id.clone(),
                        timeout: 0,
                    })
                    .await
                    .unwrap();
                client
                    .remove_container(RemoveContainerRequest { container_id: id })
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    eprintln!(
        "{} create/start/stop/remove cycles in {:?}",
        LANES * CYCLES,
        started.elapsed()
    );
    // The pod's own mounts go with it.
    w.remove_pod(&pod).await;
    let dir = w.paths().dir().to_path_buf();
    assert_eq!(shims_under(&dir), 0);
    assert!(mounts_under(&dir).is_empty(), "{:?}", mounts_under(&dir));
    assert!(w.cgroups_left().is_empty(), "{:?}", w.cgroups_left());
    let records = std::fs::read_dir(w.paths().root().join("containers/records"))
        .unwrap()
        .count();
    assert_eq!(records, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn list_stays_answering_during_a_slow_stop() {
    if !can_run_here() {
        return;
    }
    let mut w = World::new("slow").await;
    let pod = w.pod("slow").await;
    let stubborn = "trap '' USR1; while :; do sleep 0.1; done";
    let id = w.run(&pod, w.container("slow-stubborn", stubborn)).await;
    let other = w
        .run(&pod, w.container("slow-other", "while :; do sleep 1; done"))
        .await;
    let mut client = w.client.clone();
    let stopping = id.clone();
    let stop = tokio::spawn(async move {
        client
            .stop_container(StopContainerRequest {
                container_id: stopping,
                timeout: 8,
            })
            .await
            .unwrap();
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // While the stop waits for its timeout, others are served: List and
    // Status, and a second Stop of the same container waits its turn.
    assert!(!stop.is_finished());
    let listed = berth_e2e::container_ids(&mut w.client).await;
    assert_eq!(listed.len(), 2);
    assert!(!stop.is_finished());
    assert_eq!(
        w.status(&other).await.state,
        ContainerState::ContainerRunning as i32
    );
    assert!(!stop.is_finished());
    stop.await.unwrap();
    assert_eq!(w.status(&id).await.exit_code, 137);
    // A run_as_user number works too, and the status says so.
    let mut config = w.container("slow-uid", "id -u");
    sc(&mut config).run_as_user = Some(Int64Value { value: 1234 });
    let uid = w.run(&pod, config).await;
    let status = w.wait_exit(&uid).await;
    assert_eq!(status.user.unwrap().linux.unwrap().uid, 1234);
    w.remove_pod(&pod).await;
}

/// Exec and Attach through berthd's RPCs and its streaming server, over
/// SPDY/3.1 as the kubelet and crictl speak it; CheckpointContainer's answer
/// on a running container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_and_attach_through_berthd() {
    use berth_e2e::cri::{AttachRequest, ExecRequest};
    use berth_e2e::stream_client::SpdyClient;

    if !can_run_here() {
        return;
    }
    let mut w = World::new("stream").await;
    let pod = w.pod("stream").await;
    let ticker = "while :; do echo tick; sleep 0.2; done";
    let id = w.run(&pod, w.container("ticker", ticker)).await;

    // Checks come first, then the lookup: unknown is NOT_FOUND.
    let exec = |container_id: &str, cmd: &[&str], stderr: bool, tty: bool| ExecRequest {
        container_id: container_id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin: true,
        stdout: true,
        stderr,
    };
    let err = w
        .client
        .exec(exec(&id, &["true"], true, true))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let err = w
        .client
        .exec(exec(&"f".repeat(64), &["true"], true, false))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");

    // Exec by ID prefix: output, stderr, and the exit code as a Status.
    let url = w
        .client
        .exec(exec(
            &id[..12],
            &[
                "sh",
                "-c",
                "read line; echo got-$line; echo oops >&2; exit 7",
            ],
            true,
            false,
        ))
        .await
        .unwrap()
        .into_inner()
        .url;
    let (client, head) = SpdyClient::connect(&url, "v4.channel.k8s.io").await;
    let mut client = client.unwrap_or_else(|| panic!("no upgrade: {head}"));
    let error = client.open(&[("streamtype", "error")]).await;
    let stdin = client.open(&[("streamtype", "stdin")]).await;
    let stdout = client.open(&[("streamtype", "stdout")]).await;
    let stderr = client.open(&[("streamtype", "stderr")]).await;
    client.data(stdin, b"ping\n", true).await;
    let data = client.collect(&[error, stdout, stderr]).await;
    assert_eq!(String::from_utf8_lossy(&data[&stdout]), "got-ping\n");
    assert_eq!(String::from_utf8_lossy(&data[&stderr]), "oops\n");
    let status: serde_json::Value = serde_json::from_slice(&data[&error]).unwrap();
    assert_eq!(status["status"], "Failure", "{status}");
    assert_eq!(status["reason"], "NonZeroExitCode", "{status}");
    assert_eq!(status["details"]["causes"][0]["message"], "7", "{status}");

    // Attach: the container's output from the moment of attach.
    let url = w
        .client
        .attach(AttachRequest {
            container_id: id.clone(),
            stdin: false,
            tty: false,
            stdout: true,
            stderr: true,
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let (client, head) = SpdyClient::connect(&url, "v4.channel.k8s.io").await;
    let mut client = client.unwrap_or_else(|| panic!("no upgrade: {head}"));
    client.open(&[("streamtype", "error")]).await;
    let stdout = client.open(&[("streamtype", "stdout")]).await;
    client.open(&[("streamtype", "stderr")]).await;
    // Without stdin the session stays attached (a half-closed socket would
    // read as a detach).
    client.read_until(stdout, "tick\ntick\n").await;

    // Checkpointing needs a working CRIU: the answer says what is missing
    // (here: no criu, or criu 3.17 failing its kernel check).
    let err = w
        .client
        .checkpoint_container(berth_e2e::cri::CheckpointContainerRequest {
            container_id: id.clone(),
            location: "/tmp/berth-never-written.tar".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");
    assert!(err.message().contains("CRIU"), "{err:?}");
    assert!(!std::path::Path::new("/tmp/berth-never-written.tar").exists());

    // A stopped container takes neither.
    w.stop(&id, 0).await;
    let err = w
        .client
        .exec(exec(&id, &["true"], true, false))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    let err = w
        .client
        .attach(AttachRequest {
            container_id: id.clone(),
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    w.remove_pod(&pod).await;
}

/// A berth-shim killed under a running container: nothing collects its
/// output or exit code any more, so berthd kills it and reports it exited
/// (137, with a message) instead of running forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_shim_leaves_the_container_reported_exited() {
    if !can_run_here() {
        return;
    }
    let mut w = World::new("shimkill").await;
    let pod = w.pod("shimkill").await;
    let id = w
        .run(
            &pod,
            w.container("chatty", "while :; do echo chat; sleep 0.1; done"),
        )
        .await;
    let info = w
        .client
        .container_status(ContainerStatusRequest {
            container_id: id.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner()
        .info;
    let info: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
    let shim = info["shimPid"].as_i64().expect("shimPid in verbose info") as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shim), Signal::SIGKILL).unwrap();

    let status = w.wait_exit(&id).await;
    assert_eq!((status.exit_code, status.reason.as_str()), (137, "Error"));
    assert!(status.message.contains("berth-shim"), "{status:?}");
    w.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_or_failing_runtime_fails_create_and_leaves_nothing() {
    if !can_run_here() {
        return;
    }
    let scripts = tempfile::tempdir().unwrap();
    let failing = scripts.path().join("failing-runc");
    // Refuses every create as runc does a spec it cannot run; the rest is runc.
    berth_e2e::write_script(
        &failing,
        "#!/bin/sh\nfor a; do\n  if [ \"$a\" = create ]; then\n    echo 'spec refused: no such device /dev/berth-e2e' >&2\n    exit 1\n  fi\ndone\nexec runc \"$@\"\n",
    );
    let mut w = World::with_config(
        "badruntime",
        &format!(
            "[runtimes.missing]\npath = \"/nonexistent/runc\"\n[runtimes.failing]\npath = \"{}\"\n",
            failing.display()
        ),
    )
    .await;
    let dir = w.paths().dir().to_path_buf();
    for (handler, expected) in [
        ("missing", "/nonexistent/runc"),
        ("failing", "spec refused: no such device /dev/berth-e2e"),
    ] {
        let pod = w
            .client
            .run_pod_sandbox(berth_e2e::cri::RunPodSandboxRequest {
                config: Some(w.pod_config(handler)),
                runtime_handler: handler.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .pod_sandbox_id;
        let err = w
            .create(&pod, w.container("app", "sleep 60"))
            .await
            .unwrap_err();
        assert!(err.message().contains(expected), "{handler}: {err:?}");
        let listed = berth_e2e::container_ids(&mut w.client).await;
        assert!(listed.is_empty(), "{handler}: {listed:?}");
        assert_eq!(shims_under(&dir), 0, "{handler}");
        assert!(
            mounts_under(&w.paths().run_root().join("containers")).is_empty(),
            "{handler}"
        );
        for sub in ["containers/records", "containers/state"] {
            let left = std::fs::read_dir(w.paths().root().join(sub))
                .map(|d| d.count())
                .unwrap_or(0);
            assert_eq!(left, 0, "{handler}: {sub}");
        }
        w.remove_pod(&pod).await;
    }
    // Nothing of the failures stays in the way of the default runtime.
    let pod = w.pod("good").await;
    let id = w.run(&pod, w.container("app", "sleep 60")).await;
    w.stop(&id, 0).await;
    w.remove(&id).await;
    w.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_in_use_by_a_container_is_not_removed() {
    if !can_run_here() {
        return;
    }
    let mut w = World::new("inuse").await;
    let pod = w.pod("inuse").await;
    let id = w.run(&pod, w.container("app", "sleep 600")).await;
    let mut images = w.berthd().images().await;
    let remove = RemoveImageRequest {
        image: Some(ImageSpec {
            image: w.image.clone(),
            ..Default::default()
        }),
    };
    let err = images.remove_image(remove.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unknown, "{err:?}");
    assert!(err.message().contains(&id), "{}", err.message());
    assert_eq!(berth_e2e::image_ids(&mut images).await.len(), 1);
    // Its layers are all still there under the running container.
    let (code, out, _) = w
        .exec(&id, "cat /bin/busybox >/dev/null && echo intact", 10)
        .await;
    assert_eq!((code, out.as_str()), (0, "intact\n"));

    w.stop(&id, 0).await;
    w.remove(&id).await;
    images.remove_image(remove).await.unwrap();
    assert!(berth_e2e::image_ids(&mut images).await.is_empty());
    w.remove_pod(&pod).await;
}

/// The pod's sysctls are checked once, when the pod is made: a UTS sysctl
/// the pod accepted must not make every CreateContainer in it fail.
#[tokio::test]
async fn a_pods_uts_sysctl_reaches_its_containers() {
    if !can_run_here() || !berth_e2e::net::can_run_network() {
        return;
    }
    let net = berth_e2e::net::Net::new(11);
    let mut w = World::new("sysctl").await;
    w.join_network(&net).await;
    let mut config = w.networked_pod_config("sysctl");
    config.linux.as_mut().unwrap().sysctls = HashMap::from([
        ("kernel.domainname".into(), "berth.example".into()),
        ("net/ipv4/ip_unprivileged_port_start".into(), "99".into()),
    ]);
    let pod = berth_e2e::run_pod(&mut w.client, config).await.unwrap();
    let script = "cat /proc/sys/kernel/domainname /proc/sys/net/ipv4/ip_unprivileged_port_start";
    // World::run sends the world's host-network pod config as the
    // request's copy: the pod's record is what counts.
    let id = w.run(&pod, w.container("sysctl-reader", script)).await;
    let status = w.wait_exit(&id).await;
    assert_eq!(status.exit_code, 0, "{status:?}");
    let lines: Vec<String> = World::log_text(&PathBuf::from(&status.log_path))
        .into_iter()
        .map(|(_, text)| text)
        .collect();
    assert_eq!(lines, ["berth.example", "99"]);
    w.remove(&id).await;
    berth_e2e::stop_and_remove_pod(&mut w.client, &pod).await;
}

/// A local user (or a host-network pod) opening idle connections to the
/// streaming server: berthd keeps at most a bounded number of them, closes
/// each that has not upgraded within its timeout, and meanwhile CRI calls
/// answer; afterwards a new exec works.
#[tokio::test(flavor = "multi_thread")]
async fn idle_streaming_connections_are_bounded_and_closed() {
    use berth_e2e::cri::{ExecRequest, VersionRequest};
    use berth_e2e::stream_client::SpdyClient;
    use std::io::Read;

    if !can_run_here() {
        return;
    }
    let mut w = World::new("idle").await;
    let pod = w.pod("idle").await;
    let id = w.run(&pod, w.container("idle-sleeper", "sleep 600")).await;
    let exec = ExecRequest {
        container_id: id.clone(),
        cmd: vec!["echo".into(), "still-here".into()],
        stdout: true,
        ..Default::default()
    };
    let url = w.client.exec(exec.clone()).await.unwrap().into_inner().url;
    let addr = url
        .strip_prefix("http://")
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_string();

    let idle = tokio::task::spawn_blocking(move || {
        (0..2000)
            .map(|_| std::net::TcpStream::connect(&addr).unwrap())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let fds = |pid: i32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let berthd_fds = fds(w.berthd().pid().as_raw());
    assert!(berthd_fds < 1000, "berthd holds {berthd_fds} descriptors");
    let started = Instant::now();
    w.client.version(VersionRequest::default()).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));

    // Every idle connection is closed by berthd: over the cap at once, the
    // others at the upgrade timeout (10 s).
    let closed = tokio::task::spawn_blocking(move || {
        idle.into_iter()
            .filter(|mut tcp| {
                tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                match tcp.read(&mut [0u8; 1]) {
                    Ok(n) => n == 0,
                    Err(e) => !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ),
                }
            })
            .count()
    });
    let closed = closed.await.unwrap();
    assert_eq!(closed, 2000);

    let url = w.client.exec(exec).await.unwrap().into_inner().url;
    let (client, head) = SpdyClient::connect(&url, "v4.channel.k8s.io").await;
    let mut client = client.unwrap_or_else(|| panic!("no upgrade: {head}"));
    let error = client.open(&[("streamtype", "error")]).await;
    let stdout = client.open(&[("streamtype", "stdout")]).await;
    let data = client.collect(&[error, stdout]).await;
    assert_eq!(String::from_utf8_lossy(&data[&stdout]), "still-here\n");
    w.remove(&id).await;
}

/// The critical path's timeline (issue 18): berthd reports each step of
/// RunPodSandbox, CreateContainer and StartContainer with the RPC, each
/// step inside the RPC's own latency.
#[tokio::test]
async fn pod_start_rpcs_report_their_steps() {
    if !can_run_here() || !berth_e2e::net::can_run_network() {
        return;
    }
    let net = berth_e2e::net::Net::new(13);
    let mut w = World::with_log_level("steps", "warn,berthd::rpc_trace=debug").await;
    w.join_network(&net).await;
    let config = w.networked_pod_config("steps");
    let pod = berth_e2e::run_pod(&mut w.client, config).await.unwrap();
    let sleeper = w.container("sleeper", "sleep 1000");
    w.run(&pod, sleeper).await;
    let log = w.berthd().log();
    for (rpc, want) in [
        (
            "RunPodSandbox",
            &[
                "record",
                "pod_files",
                "namespaces",
                "slices",
                "cni_cache",
                "cni_plugin",
                "cni_add",
            ][..],
        ),
        (
            "CreateContainer",
            &[
                "prepare",
                "record",
                "dirs",
                "overlay",
                "mounts",
                "spec",
                "shim_create",
            ][..],
        ),
        ("StartContainer", &["runtime_start", "record"][..]),
    ] {
        let line = log
            .lines()
            .find(|l| l.contains(&format!("rpc{{rpc={rpc}")) && l.contains("rpc done"))
            .unwrap_or_else(|| panic!("no completion of {rpc} in the log:\n{log}"));
        let field = |name: &str| {
            let at = line
                .find(&format!(" {name}="))
                .unwrap_or_else(|| panic!("{line}"));
            line[at + name.len() + 2..]
                .split(' ')
                .next()
                .unwrap()
                .trim_matches('"')
                .to_string()
        };
        let latency_ms = field("latency_us").parse::<f64>().unwrap() / 1000.0;
        let start = line.find(" steps=\"").unwrap_or_else(|| panic!("{line}")) + 8;
        let steps = &line[start..start + line[start..].find('"').unwrap()];
        let mut names = Vec::new();
        for pair in steps.split(' ') {
            let (name, ms) = pair.split_once('=').unwrap_or_else(|| panic!("{line}"));
            // Steps nest (cni_plugin in cni_add): each is inside the RPC.
            let ms: f64 = ms.parse().unwrap();
            assert!(ms <= latency_ms, "{rpc}: {name} outlasts the RPC: {line}");
            if !names.contains(&name) {
                names.push(name);
            }
        }
        assert_eq!(names, want, "{rpc}: {line}");
    }
}
