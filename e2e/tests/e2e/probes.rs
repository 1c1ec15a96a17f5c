//! Exec probes as the kubelet runs them, at their worst: a storm of
//! concurrent ExecSync calls, commands whose output nobody reads, a
//! ReopenContainerLog while the container is being stopped. Nothing may
//! block StopContainer or the shim, and nothing may be left behind: no
//! zombie of berthd or a shim, no runtime process, no shim.

use std::time::Duration;

use berth_e2e::cri::{
    ContainerState, ExecSyncRequest, ReopenContainerLogRequest, StopContainerRequest,
};
use berth_e2e::shims_under;
use berth_e2e::world::{World, can_run_here};

/// (state, parent pid) of `pid` from /proc/<pid>/stat.
fn state_and_parent(pid: &str) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces or ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    Some((state, fields.next()?.parse().ok()?))
}

/// Zombies whose parent is berthd or one of this world's shims.
fn zombies(w: &World) -> Vec<i32> {
    let mut parents = berth_e2e::pids_mentioning(&[
        w.paths().dir().as_os_str().as_encoded_bytes(),
        b"berth-shim",
    ]);
    parents.push(w.berthd().pid().as_raw());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.to_string();
            let (state, parent) = state_and_parent(&pid)?;
            (state == 'Z' && parents.contains(&parent)).then(|| pid.parse().unwrap())
        })
        .collect()
}

fn exec(id: &str, script: &str, timeout: i64) -> ExecSyncRequest {
    ExecSyncRequest {
        container_id: id.into(),
        cmd: vec!["sh".into(), "-c".into(), script.into()],
        timeout,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_probe_storm_and_unread_output_never_block_stop_or_leak() {
    if !can_run_here() {
        return;
    }
    let mut w = World::new("probes").await;
    let pod = w.pod("probes").await;
    // Ignores SIGTERM: the stop below has to come to SIGKILL.
    let id = w
        .run(
            &pod,
            w.container("app", "trap '' TERM; while :; do sleep 1; done"),
        )
        .await;

    // Five rounds of 40 probes at once, each answered.
    for round in 0..5 {
        let mut probes = tokio::task::JoinSet::new();
        for _ in 0..40 {
            let mut client = w.client.clone();
            let request = exec(&id, "echo ok", 10);
            probes.spawn(async move { client.exec_sync(request).await });
        }
        while let Some(done) = probes.join_next().await {
            let out = done.unwrap().unwrap().into_inner();
            assert_eq!(
                (out.exit_code, out.stdout.as_slice()),
                (0, &b"ok\n"[..]),
                "round {round}"
            );
        }
    }

    // Endless output: with a timeout it comes back at the timeout, as
    // CRI-O's does (exit code -1, "command timed out").
    let out = w
        .client
        .exec_sync(exec(&id, "yes berth", 2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.exit_code, -1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("timed out"),
        "{out:?}"
    );
    // Without one it runs until the container stops: StopContainer must not wait on it.
    let mut endless = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let mut client = w.client.clone();
        let request = exec(&id, "yes berth", 0);
        endless.spawn(async move { client.exec_sync(request).await });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::time::timeout(
        Duration::from_secs(30),
        w.client.stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 2,
        }),
    )
    .await
    .expect("StopContainer hung behind the exec processes")
    .unwrap();
    assert_eq!(
        w.status(&id).await.state,
        ContainerState::ContainerExited as i32
    );
    // The endless execs end with their container.
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(done) = endless.join_next().await {
            done.unwrap().ok();
        }
    })
    .await
    .expect("ExecSync outlived its container");

    let runtimes =
        berth_e2e::pids_mentioning(&[w.paths().dir().as_os_str().as_encoded_bytes(), b"exec"]);
    assert!(
        runtimes.is_empty(),
        "runtime exec processes left: {runtimes:?}"
    );
    let zombies = zombies(&w);
    assert!(zombies.is_empty(), "zombies left: {zombies:?}");
    w.remove_pod(&pod).await;
    assert_eq!(shims_under(w.paths().dir()), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn reopen_container_log_answers_while_the_container_is_stopping() {
    if !can_run_here() {
        return;
    }
    let mut w = World::new("reopen").await;
    let pod = w.pod("reopen").await;
    let id = w
        .run(
            &pod,
            w.container(
                "slow",
                "trap '' TERM; while :; do echo tick; sleep 0.1; done",
            ),
        )
        .await;
    let stopping = {
        let mut client = w.client.clone();
        let id = id.clone();
        tokio::spawn(async move {
            client
                .stop_container(StopContainerRequest {
                    container_id: id,
                    timeout: 5,
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reopened = tokio::time::timeout(
        Duration::from_secs(3),
        w.client.reopen_container_log(ReopenContainerLogRequest {
            container_id: id.clone(),
        }),
    )
    .await
    .expect("ReopenContainerLog hung on a stopping container");
    if let Err(status) = reopened {
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    }
    stopping.await.unwrap().unwrap();
    // After the stop: a clear refusal, at once.
    let err = w
        .client
        .reopen_container_log(ReopenContainerLogRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    let zombies = zombies(&w);
    assert!(zombies.is_empty(), "zombies left: {zombies:?}");
    w.remove_pod(&pod).await;
}

/// The container's processes whose command line holds `needle`, as the
/// host sees them (`/proc/<pid>/cmdline` of every process in the
/// container's cgroup, which the exec joins).
fn processes_with(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            text.contains(needle)
                .then_some(format!("{}: {text}", e.file_name().to_string_lossy()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timed_out_exec_sync_leaves_no_process_behind() {
    if !can_run_here() {
        return;
    }
    let mut w = World::new("exectimeout").await;
    let pod = w.pod("exectimeout").await;
    let id = w.run(&pod, w.container("exectimeout-c", "sleep 600")).await;
    // The command itself, and one it forks (busybox's sh forks `sleep`
    // and waits; `; true` keeps it from exec'ing it in its place).
    let direct = ExecSyncRequest {
        container_id: id.clone(),
        cmd: vec!["sleep".into(), "4321".into()],
        timeout: 1,
    };
    let forked = exec(&id, "sleep 4322; true", 1);
    for (request, needle) in [(direct, "sleep 4321"), (forked, "sleep 4322")] {
        let out = w.client.exec_sync(request).await.unwrap().into_inner();
        assert_eq!(out.exit_code, -1, "timed out: {out:?}");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = processes_with(needle);
            if left.is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "left after the timeout: {left:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    w.stop(&id, 0).await;
    w.remove_pod(&pod).await;
}
