//! 100 sequential execs through the streaming server leave no process and
//! no fd behind (its own process: nothing else runs in it).

mod stream_world;

use berth_e2e::stream_client::SpdyClient;
use berth_streaming::ExecRequest;
use stream_world::{World, can_run};

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn children() -> Vec<String> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let stat = std::fs::read_to_string(e.ok()?.path().join("stat")).ok()?;
            let (_, rest) = stat.rsplit_once(") ")?;
            (rest.split(' ').nth(1)? == me).then_some(stat)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_execs_leave_no_process_or_fd_behind() {
    if !can_run() {
        return;
    }
    let world = World::new().await;
    let c = world.run(&["sleep", "100000"], false, false);
    let shim_pid = std::fs::read_to_string(c.run_dir.join("shim.pid")).unwrap();
    let shim_fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", shim_pid.trim()))
            .unwrap()
            .count()
    };
    let run_once = |i: usize| {
        let url = world.server.exec_url(ExecRequest {
            container: world.container(&c),
            cmd: vec!["echo".into(), format!("n{i}")],
            tty: false,
            stdin: false,
            stdout: true,
            stderr: true,
        });
        async move {
            let (client, head) = SpdyClient::connect(&url, "v4.channel.k8s.io").await;
            let mut client = client.unwrap_or_else(|| panic!("no upgrade: {head}"));
            let error = client.open(&[("streamtype", "error")]).await;
            let stdout = client.open(&[("streamtype", "stdout")]).await;
            client.open(&[("streamtype", "stderr")]).await;
            let data = client.collect(&[error, stdout]).await;
            assert_eq!(data[&stdout], format!("n{i}\n").into_bytes());
        }
    };
    // Warm up lazily created runtime resources (threads, epoll) first.
    run_once(0).await;
    let (fds_before, shim_before) = (fds(), shim_fds());
    for i in 1..=100 {
        run_once(i).await;
    }
    // Session teardown finishes just after the client sees the end.
    let mut settled = false;
    for _ in 0..100 {
        if fds() <= fds_before && children().is_empty() {
            settled = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        settled,
        "fds {} -> {}, children {:?}",
        fds_before,
        fds(),
        children()
    );
    assert_eq!(shim_fds(), shim_before);
    world.remove(&c);
}
