//! client-go's WebSocket clients against the real berthd (issue 17): exec
//! and attach over `v5.channel.k8s.io` (the exit `Status` on channel 3,
//! then a close frame with 1000, which client-go reads as the end of every
//! stream; before, berthd closed without a code and client-go failed with
//! `websocket: close 1005 (no status)`), and port-forward over
//! `SPDY/3.1+portforward.k8s.io` (the SPDY session in WebSocket binary
//! messages, cut where Go's framer writes; before, the upgrade was refused)
//! to a pod on a CNI bridge network and to one on the host's network. The
//! clients frame as client-go does (`berth_e2e::stream_client`). Run with
//! `--nocapture` for the tunnel's memory figures.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use berth_e2e::cri::{
    AttachRequest, ContainerState, ExecRequest, PodSandboxStatusRequest, PortForwardRequest,
    RunPodSandboxRequest,
};
use berth_e2e::net::{Net, can_run_network};
use berth_e2e::stream_client::{
    ClientGoExec, Demuxed, ExecError, ExecStreams, SpdyClient, WsEnd, http_status,
};
use berth_e2e::world::{Client, World, can_run_here};

fn status(d: &Demuxed) -> serde_json::Value {
    serde_json::from_slice(&d.error)
        .unwrap_or_else(|e| panic!("no Status on the error channel ({e}): {d:?}"))
}

/// What every session must end with: the Status, then a close frame with
/// 1000 and the server's end of the connection; nothing on channels the
/// client did not open.
fn assert_clean_end(d: &Demuxed) {
    assert_eq!(d.end, Some(WsEnd::Close(1000)), "{d:?}");
    assert!(d.disconnected, "{d:?}");
    assert_eq!(d.strays, 0, "{d:?}");
}

async fn exec_url(w: &mut World, id: &str, script: &str, streams: ExecStreams) -> String {
    w.client
        .exec(ExecRequest {
            container_id: id.into(),
            cmd: vec!["sh".into(), "-c".into(), script.into()],
            tty: streams.tty,
            stdin: streams.stdin,
            stdout: streams.stdout,
            stderr: streams.stderr,
        })
        .await
        .unwrap()
        .into_inner()
        .url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_over_websocket_v5_as_client_go_does() {
    if !can_run_here() {
        return;
    }
    let mut w = World::new("cgexec").await;
    let pod = w.pod("cgexec").await;
    let id = w
        .run(&pod, w.container("cgexec-sleeper", "sleep 600"))
        .await;

    // stdin without a tty: the close signal is `cat`'s EOF; a non-zero
    // exit comes back as NonZeroExitCode with the code.
    let streams = ExecStreams {
        stdin: true,
        stdout: true,
        stderr: true,
        tty: false,
    };
    let url = exec_url(&mut w, &id, "cat; echo oops >&2; exit 3", streams).await;
    let mut exec = ClientGoExec::connect(&url, streams).await;
    exec.wait_pong().await;
    exec.stdin(b"hello ").await;
    exec.stdin(b"world\n").await;
    exec.stdout_until("hello world\n").await;
    exec.close_stdin().await;
    let (d, result) = exec.finish().await;
    assert_eq!(result, Err(ExecError::ExitCode(3)), "{d:?}");
    assert_eq!(String::from_utf8_lossy(&d.stdout), "hello world\n");
    assert_eq!(String::from_utf8_lossy(&d.stderr), "oops\n");
    let st = status(&d);
    assert_eq!(st["status"], "Failure", "{st}");
    assert_eq!(st["reason"], "NonZeroExitCode", "{st}");
    assert_eq!(st["details"]["causes"][0]["reason"], "ExitCode", "{st}");
    assert_eq!(st["details"]["causes"][0]["message"], "3", "{st}");
    assert_clean_end(&d);

    // Neither stdin nor a tty: success.
    let streams = ExecStreams {
        stdin: false,
        stdout: true,
        stderr: true,
        tty: false,
    };
    let url = exec_url(&mut w, &id, "echo out; echo err >&2", streams).await;
    let (d, result) = ClientGoExec::connect(&url, streams).await.finish().await;
    assert_eq!(result, Ok(()), "{d:?}");
    assert_eq!(String::from_utf8_lossy(&d.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&d.stderr), "err\n");
    assert_eq!(status(&d)["status"], "Success");
    assert_clean_end(&d);

    // A tty with stdin: the terminal takes the size client-go sends and
    // echoes the line typed; no stderr stream.
    let streams = ExecStreams {
        stdin: true,
        stdout: true,
        stderr: false,
        tty: true,
    };
    let script = r#"read line; while [ "$(stty size)" != "30 100" ]; do sleep 0.1; done; echo "got-$line"; exit 4"#;
    let url = exec_url(&mut w, &id, script, streams).await;
    let mut exec = ClientGoExec::connect(&url, streams).await;
    exec.resize(100, 30).await;
    exec.stdin(b"hi\n").await;
    let (d, result) = exec.finish().await;
    assert_eq!(result, Err(ExecError::ExitCode(4)), "{d:?}");
    let out = String::from_utf8_lossy(&d.stdout);
    assert!(
        out.contains("hi\r\n") && out.contains("got-hi\r\n"),
        "{out:?}"
    );
    assert!(d.stderr.is_empty(), "{d:?}");
    assert_clean_end(&d);

    // A tty without stdin.
    let streams = ExecStreams {
        stdin: false,
        stdout: true,
        stderr: false,
        tty: true,
    };
    // Until the resize lands, `stty size` may fail once (seen 1 run in
    // about 10: "stty: standard input" on the tty): only the size counts.
    let script = r#"while [ "$(stty size 2>/dev/null)" != "30 100" ]; do sleep 0.1; done; echo "size $(stty size)""#;
    let url = exec_url(&mut w, &id, script, streams).await;
    let mut exec = ClientGoExec::connect(&url, streams).await;
    exec.resize(100, 30).await;
    let (d, result) = exec.finish().await;
    assert_eq!(result, Ok(()), "{d:?}");
    assert_eq!(String::from_utf8_lossy(&d.stdout), "size 30 100\r\n");
    assert_eq!(status(&d)["status"], "Success");
    assert_clean_end(&d);

    // The URL was single-use.
    assert_eq!(http_status(&url).await, 404);
    w.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_over_websocket_v5_as_client_go_does() {
    if !can_run_here() {
        return;
    }
    let mut w = World::new("cgattach").await;
    let pod = w.pod("cgattach").await;
    let mut config = w.container("cgattach-reader", "while read l; do echo got:$l; done");
    config.stdin = true;
    let id = w.run(&pod, config).await;
    let attach = |stdin: bool| AttachRequest {
        container_id: id.clone(),
        stdin,
        tty: false,
        stdout: true,
        stderr: true,
    };

    // With stdin: what is typed reaches the container; the close signal
    // detaches (the session ends, the container runs on).
    let url = w
        .client
        .attach(attach(true))
        .await
        .unwrap()
        .into_inner()
        .url;
    let streams = ExecStreams {
        stdin: true,
        stdout: true,
        stderr: true,
        tty: false,
    };
    let mut session = ClientGoExec::connect(&url, streams).await;
    session.stdin(b"one\n").await;
    session.stdout_until("got:one\n").await;
    session.close_stdin().await;
    let (d, result) = session.finish().await;
    assert_eq!(result, Ok(()), "{d:?}");
    assert_eq!(status(&d)["status"], "Success");
    assert_clean_end(&d);
    assert_eq!(
        w.status(&id).await.state,
        ContainerState::ContainerRunning as i32
    );

    // Without stdin: the session lasts until the container stops.
    let url = w
        .client
        .attach(attach(false))
        .await
        .unwrap()
        .into_inner()
        .url;
    let streams = ExecStreams {
        stdin: false,
        ..streams
    };
    let session = ClientGoExec::connect(&url, streams).await;
    w.stop(&id, 0).await;
    let (d, result) = session.finish().await;
    assert_eq!(result, Ok(()), "{d:?}");
    assert_eq!(status(&d)["status"], "Success");
    assert_clean_end(&d);
    w.remove_pod(&pod).await;
}

/// An echo server on 127.0.0.1 inside the network namespace `netns` (the
/// test's own with `None`), for `connections` connections; returns its port.
fn echo_in(netns: Option<&Path>, connections: usize) -> u16 {
    listen_in(netns, connections, |mut conn| {
        let mut buf = [0u8; 4096];
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 || conn.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    })
}

/// A listener on 127.0.0.1 in `netns` serving `connections` connections
/// with `serve`, each on a thread; returns its port.
fn listen_in(
    netns: Option<&Path>,
    connections: usize,
    serve: impl Fn(std::net::TcpStream) + Send + Sync + 'static,
) -> u16 {
    let (tx, rx) = std::sync::mpsc::channel();
    let netns = netns.map(Path::to_path_buf);
    let serve = Arc::new(serve);
    // setns moves only this thread; the socket stays in the pod's namespace.
    std::thread::spawn(move || {
        if let Some(netns) = netns {
            let ns = std::fs::File::open(&netns).unwrap();
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        tx.send(listener.local_addr().unwrap().port()).unwrap();
        for conn in listener.incoming().take(connections) {
            let conn = conn.unwrap();
            let serve = serve.clone();
            std::thread::spawn(move || serve(conn));
        }
    });
    rx.recv().unwrap()
}

async fn pinned_netns(client: &mut Client, id: &str) -> PathBuf {
    let resp = client
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&resp.info["info"]).unwrap();
    info["namespaces"]["net"].as_str().unwrap().into()
}

async fn port_forward_url(client: &mut Client, pod: &str, port: u16) -> String {
    client
        .port_forward(PortForwardRequest {
            pod_sandbox_id: pod.into(),
            port: vec![port.into()],
        })
        .await
        .unwrap()
        .into_inner()
        .url
}

/// One forwarded connection as client-go's port-forwarder opens it: the
/// error stream (whose write side it closes at once: an empty DATA frame
/// with FIN), then the data stream; returns (error, data).
async fn forward(spdy: &mut SpdyClient, port: u16, request_id: u32) -> (u32, u32) {
    let (port, request_id) = (port.to_string(), request_id.to_string());
    let headers = |kind| {
        [
            ("streamtype", kind),
            ("port", port.as_str()),
            ("requestid", request_id.as_str()),
        ]
    };
    let error = spdy.open(&headers("error")).await;
    spdy.data(error, b"", true).await;
    let data = spdy.open(&headers("data")).await;
    (error, data)
}

/// Reads frames until each stream of `want` carried its text; a PING is
/// answered on the way when one was sent.
async fn read_all(spdy: &mut SpdyClient, want: &[(u32, &str)]) -> bool {
    let mut got: HashMap<u32, Vec<u8>> = HashMap::new();
    let mut pong = false;
    let done = |got: &HashMap<u32, Vec<u8>>| {
        want.iter().all(|(id, text)| {
            got.get(id)
                .is_some_and(|d| String::from_utf8_lossy(d).contains(text))
        })
    };
    while !done(&got) {
        let frame = tokio::time::timeout(Duration::from_secs(30), spdy.read_frame())
            .await
            .expect("tunnel stalled")
            .unwrap_or_else(|| panic!("tunnel ended; got {got:?}"));
        if frame.control {
            pong |= frame.kind == 6;
        } else {
            got.entry(frame.stream_id)
                .or_default()
                .extend_from_slice(&frame.payload);
        }
    }
    pong
}

/// Two connections at once through one tunnel, a PING, and a port nothing
/// listens on; then client-go's close.
async fn forward_through_tunnel(url: &str, port: u16, what: &str) {
    let mut spdy = SpdyClient::tunnel(url).await;
    let (_, first) = forward(&mut spdy, port, 0).await;
    let (_, second) = forward(&mut spdy, port, 1).await;
    let (one, two) = (format!("{what}: one"), format!("{what}: two"));
    spdy.data(first, one.as_bytes(), false).await;
    spdy.data(second, two.as_bytes(), false).await;
    spdy.ping(1).await;
    if !read_all(&mut spdy, &[(first, &one), (second, &two)]).await {
        wait_ping(&mut spdy).await;
    }
    let (error, _) = forward(&mut spdy, 1, 2).await;
    let refused = spdy.collect(&[error]).await;
    let message =
        String::from_utf8_lossy(refused.get(&error).map_or(&[][..], Vec::as_slice)).into_owned();
    assert!(
        message.contains("port 1") && message.contains("refused"),
        "{message:?}"
    );
    assert_eq!(spdy.close_tunnel().await, Some(1000));
    // The token is spent.
    assert_eq!(http_status(url).await, 404);
}

/// Reads until the answer to a PING comes.
async fn wait_ping(spdy: &mut SpdyClient) {
    loop {
        let frame = spdy
            .read_frame()
            .await
            .expect("tunnel ended before the PING reply");
        if frame.control && frame.kind == 6 {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_tunnels_spdy_in_websocket_as_client_go_does() {
    if !can_run_here() || !can_run_network() {
        return;
    }
    let mut w = World::new("cgpf").await;
    let net = Net::new(230);
    w.join_network(&net).await;

    // A pod on the bridge network: reached in its pinned namespace.
    let pod = w
        .client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(w.networked_pod_config("cgpf")),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let netns = pinned_netns(&mut w.client, &pod).await;
    let port = echo_in(Some(&netns), 2);
    let url = port_forward_url(&mut w.client, &pod, port).await;
    forward_through_tunnel(&url, port, "pod network").await;

    // A pod on the host's network: reached in berthd's namespace.
    let host_pod = w.pod("cgpfhost").await;
    let host_port = echo_in(None, 2);
    let url = port_forward_url(&mut w.client, &host_pod, host_port).await;
    forward_through_tunnel(&url, host_port, "host network").await;

    w.remove_pod(&host_pod).await;
    w.remove_pod(&pod).await;
    assert!(net.allocated().is_empty(), "{:?}", net.allocated());
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// Waits until `progress` started and then stayed put for 2 s; returns it.
async fn stalled(what: &str, progress: impl Fn() -> u64) -> u64 {
    let start = Instant::now();
    let (mut last, mut since) = (progress(), Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = progress();
        if now != last {
            (last, since) = (now, Instant::now());
        } else if now > 0 && since.elapsed() >= Duration::from_secs(2) {
            return now;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what}: still moving after 30 s ({now} bytes)"
        );
    }
}

/// berthd's RSS may grow by this during one flood: the SPDY session's caps
/// (1 MiB received, 256 KiB queued out) and the tunnel's (one 1 MiB
/// message in, the WebSocket's 128 KiB write buffer and one 64 KiB message
/// out), with room for the allocator; unbounded, a flood takes GiBs.
const GROWTH_LIMIT_KIB: u64 = 16 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_floods_leave_berthd_rss_flat() {
    if !can_run_here() {
        return;
    }
    let mut w = World::new("cgmem").await;
    let pod = w.pod("cgmem").await;
    let pid = w.berthd().pid().as_raw();
    // Warm up: the first session's threads and buffers are not the flood's.
    let port = echo_in(None, 1);
    let url = port_forward_url(&mut w.client, &pod, port).await;
    let mut spdy = SpdyClient::tunnel(&url).await;
    let (_, data) = forward(&mut spdy, port, 0).await;
    spdy.data(data, b"warm", false).await;
    read_all(&mut spdy, &[(data, "warm")]).await;
    spdy.close_tunnel().await;

    // A client that floods a port whose server never reads.
    let (hold_tx, hold_rx) = std::sync::mpsc::channel();
    let port = listen_in(None, 1, move |conn| {
        let _ = hold_tx.send(conn);
    });
    let url = port_forward_url(&mut w.client, &pod, port).await;
    let mut spdy = SpdyClient::tunnel(&url).await;
    let (_, data) = forward(&mut spdy, port, 0).await;
    let before = rss_kib(pid);
    let sent = Arc::new(AtomicU64::new(0));
    let flooding = tokio::spawn({
        let sent = sent.clone();
        async move {
            let chunk = vec![0u8; 32 << 10];
            loop {
                spdy.data(data, &chunk, false).await;
                sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        }
    });
    let held = stalled("tunnel flood", || sent.load(Ordering::Relaxed)).await;
    let after = rss_kib(pid);
    eprintln!(
        "tunnel: a flood into an unread port: berthd VmRSS {before} KiB -> {after} KiB ({:+} KiB); the client's writes blocked after {} KiB",
        after as i64 - before as i64,
        held >> 10
    );
    assert!(
        after <= before + GROWTH_LIMIT_KIB,
        "{before} -> {after} KiB"
    );
    flooding.abort();
    let _ = flooding.await;
    drop(hold_rx);

    // A port that sends without end to a client that never reads.
    let written = Arc::new(AtomicU64::new(0));
    let port = listen_in(None, 1, {
        let written = written.clone();
        move |mut conn| {
            let chunk = vec![0u8; 64 << 10];
            while conn.write_all(&chunk).is_ok() {
                written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        }
    });
    let url = port_forward_url(&mut w.client, &pod, port).await;
    let mut spdy = SpdyClient::tunnel(&url).await;
    let before = rss_kib(pid);
    forward(&mut spdy, port, 0).await;
    let held = stalled("tunnel download", || written.load(Ordering::Relaxed)).await;
    let after = rss_kib(pid);
    eprintln!(
        "tunnel: a port sending to a client that never reads: berthd VmRSS {before} KiB -> {after} KiB ({:+} KiB); the server's writes blocked after {} KiB",
        after as i64 - before as i64,
        held >> 10
    );
    assert!(
        after <= before + GROWTH_LIMIT_KIB,
        "{before} -> {after} KiB"
    );
    drop(spdy);
    w.remove_pod(&pod).await;
}
