//! A streaming client that floods an exec's stdin, or never reads its
//! output, costs the real berthd no memory past the session's fixed caps
//! (issue 16, item 2): over SPDY/3.1 and WebSocket, the client's writes
//! block, or the container's do, and berthd's RSS stays where it was.
//! Before the caps, `exec -i sleep 600 </dev/zero` took berthd from 13 MiB
//! to 7 GiB in 20 s. Run with `--nocapture` for the figures.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use berth_e2e::cri::ExecRequest;
use berth_e2e::stream_client::{SpdyClient, websocket};
use berth_e2e::world::{World, can_run_here};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// What berthd's RSS may grow by during one flood. A session's caps add up
/// to about 3 MiB (SPDY: 1 MiB of received data, 256 KiB queued out and
/// 1 MiB in the channels to the pipes; WebSocket: one 1 MiB message and
/// 24 pieces of 32 KiB); the rest is room for the allocator and the exec's
/// own threads and buffers. Unbounded, the same floods grow it by GiBs.
const GROWTH_LIMIT_KIB: u64 = 16 << 10;
/// The stdin flood.
const FLOOD: u64 = 1 << 30;
/// A flood has stalled once nothing moved for this long.
const STALLED: Duration = Duration::from_secs(2);
/// And must stall within this.
const STALL_WITHIN: Duration = Duration::from_secs(20);

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// Waits until `progress` has started and then stopped changing for
/// [`STALLED`]; returns its value and how long that took, or panics after [`STALL_WITHIN`].
async fn wait_stalled(what: &str, progress: impl Fn() -> u64) -> (u64, Duration) {
    let start = Instant::now();
    let (mut last, mut since) = (progress(), Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = progress();
        if now != last {
            (last, since) = (now, Instant::now());
        } else if now > 0 && since.elapsed() >= STALLED {
            return (now, start.elapsed());
        }
        assert!(
            start.elapsed() < STALL_WITHIN,
            "{what}: still moving after {STALL_WITHIN:?} ({now} bytes)"
        );
    }
}

fn report(what: &str, before: u64, after: u64, detail: &str) {
    eprintln!(
        "{what}: berthd VmRSS {before} KiB -> {after} KiB ({:+} KiB); {detail}",
        after as i64 - before as i64
    );
    assert!(
        after <= before + GROWTH_LIMIT_KIB,
        "{what}: berthd grew from {before} KiB to {after} KiB"
    );
}

/// Bytes the exec's `cat` wrote so far (`wchar` of the one `cat /dev/zero`
/// in container `id`'s cgroup).
fn cat_written(id: &str) -> u64 {
    let pids: Vec<i32> = berth_e2e::pids_mentioning(&[b"cat\0/dev/zero"])
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| c.contains(id))
        })
        .collect();
    let [pid] = pids[..] else {
        return 0;
    };
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("wchar: "))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Waits until a flood into stdin stops moving and reports berthd's RSS;
/// the flood must be held back, not taken whole.
async fn stdin_flood_stalled(
    proto: &str,
    sent: &AtomicU64,
    pid: i32,
    before: u64,
    flooding: tokio::task::JoinHandle<()>,
) {
    let (sent_bytes, took) = wait_stalled(&format!("{proto} stdin flood"), || {
        sent.load(Ordering::Relaxed)
    })
    .await;
    let after = rss_kib(pid);
    report(
        &format!("{proto}: 1 GiB into an unread stdin"),
        before,
        after,
        &format!(
            "the client's writes blocked after {} KiB ({took:.1?})",
            sent_bytes >> 10
        ),
    );
    assert!(sent_bytes < FLOOD, "all of the 1 GiB went in");
    assert!(!flooding.is_finished());
    flooding.abort();
    let _ = flooding.await;
}

/// Waits until an unread `cat /dev/zero` stops writing and reports
/// berthd's RSS.
async fn cat_stalled(proto: &str, id: &str, pid: i32, before: u64) {
    let (written, took) = wait_stalled(&format!("{proto} cat /dev/zero"), || cat_written(id)).await;
    let after = rss_kib(pid);
    assert!(written > 0, "no cat /dev/zero ran");
    report(
        &format!("{proto}: cat /dev/zero, never read"),
        before,
        after,
        &format!(
            "cat's writes blocked after {} KiB ({took:.1?})",
            written >> 10
        ),
    );
}

async fn exec_url(w: &mut World, id: &str, cmd: &[&str], stdin: bool) -> String {
    w.client
        .exec(ExecRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty: false,
            stdin,
            stdout: true,
            stderr: false,
        })
        .await
        .unwrap()
        .into_inner()
        .url
}

/// A container to exec into, after one exec that warms berthd up (threads
/// and buffers made on first use are not the flood's).
async fn set_up(tag: &str) -> (World, String, String, i32) {
    let mut w = World::new(tag).await;
    let pod = w.pod(tag).await;
    let id = w
        .run(&pod, w.container(&format!("{tag}-sleeper"), "sleep 600"))
        .await;
    let (code, out, _) = w.exec(&id, "echo warm", 10).await;
    assert_eq!((code, out.as_str()), (0, "warm\n"));
    let url = exec_url(&mut w, &id, &["echo", "warm"], false).await;
    let (client, head) = SpdyClient::connect(&url, "v4.channel.k8s.io").await;
    let mut client = client.unwrap_or_else(|| panic!("no upgrade: {head}"));
    let error = client.open(&[("streamtype", "error")]).await;
    let stdout = client.open(&[("streamtype", "stdout")]).await;
    let data = client.collect(&[error, stdout]).await;
    assert_eq!(data[&stdout], b"warm\n");
    let pid = w.berthd().pid().as_raw();
    (w, pod, id, pid)
}

/// berthd still answers once the flood's client is gone.
async fn still_serving(w: &mut World, id: &str) {
    let (code, out, _) = w.exec(id, "echo alive", 10).await;
    assert_eq!((code, out.as_str()), (0, "alive\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_floods_leave_berthd_rss_flat() {
    if !can_run_here() {
        return;
    }
    let (mut w, pod, id, pid) = set_up("memspdy").await;

    // 1 GiB into the stdin of a `sleep` that never reads it.
    let url = exec_url(&mut w, &id, &["sleep", "600"], true).await;
    let (client, head) = SpdyClient::connect(&url, "v4.channel.k8s.io").await;
    let mut client = client.unwrap_or_else(|| panic!("no upgrade: {head}"));
    client.open(&[("streamtype", "error")]).await;
    let stdin = client.open(&[("streamtype", "stdin")]).await;
    client.open(&[("streamtype", "stdout")]).await;
    let before = rss_kib(pid);
    let sent = Arc::new(AtomicU64::new(0));
    let flooding = tokio::spawn({
        let sent = sent.clone();
        async move {
            let chunk = vec![0u8; 32 << 10];
            while sent.load(Ordering::Relaxed) < FLOOD {
                client.data(stdin, &chunk, false).await;
                sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        }
    });
    stdin_flood_stalled("SPDY", &sent, pid, before, flooding).await;
    still_serving(&mut w, &id).await;

    // `cat /dev/zero` to a client that never reads.
    let url = exec_url(&mut w, &id, &["cat", "/dev/zero"], false).await;
    let (client, head) = SpdyClient::connect(&url, "v4.channel.k8s.io").await;
    let mut client = client.unwrap_or_else(|| panic!("no upgrade: {head}"));
    let before = rss_kib(pid);
    client.open(&[("streamtype", "error")]).await;
    client.open(&[("streamtype", "stdout")]).await;
    cat_stalled("SPDY", &id, pid, before).await;
    drop(client);
    still_serving(&mut w, &id).await;
    w.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_floods_leave_berthd_rss_flat() {
    if !can_run_here() {
        return;
    }
    let (mut w, pod, id, pid) = set_up("memws").await;

    // 1 GiB into the stdin of a `sleep` that never reads it, in messages
    // of one 32 KiB read each, as client-go sends them.
    let url = exec_url(&mut w, &id, &["sleep", "600"], true).await;
    let mut ws = websocket(&url, "v5.channel.k8s.io").await;
    let before = rss_kib(pid);
    let sent = Arc::new(AtomicU64::new(0));
    let flooding = tokio::spawn({
        let sent = sent.clone();
        async move {
            let mut message = vec![0u8; 1 + (32 << 10)];
            message[0] = 0; // stdin
            while sent.load(Ordering::Relaxed) < FLOOD {
                if ws.send(Message::binary(message.clone())).await.is_err() {
                    return;
                }
                sent.fetch_add(message.len() as u64 - 1, Ordering::Relaxed);
            }
        }
    });
    stdin_flood_stalled("WebSocket", &sent, pid, before, flooding).await;
    still_serving(&mut w, &id).await;

    // `cat /dev/zero` to a client that never reads.
    let url = exec_url(&mut w, &id, &["cat", "/dev/zero"], false).await;
    let before = rss_kib(pid);
    let ws = websocket(&url, "v5.channel.k8s.io").await;
    cat_stalled("WebSocket", &id, pid, before).await;
    drop(ws);
    still_serving(&mut w, &id).await;

    // Messages up to the 1 MiB cap go through whole (split on the way);
    // a larger one ends the session.
    let url = exec_url(&mut w, &id, &["wc", "-c"], true).await;
    let mut ws = websocket(&url, "v5.channel.k8s.io").await;
    let mut message = vec![b'x'; 1 + (768 << 10)];
    message[0] = 0;
    ws.send(Message::binary(message)).await.unwrap();
    ws.send(Message::binary(vec![255, 0])).await.unwrap();
    let mut out = Vec::new();
    while let Some(Ok(msg)) = ws.next().await {
        if let Message::Binary(b) = msg
            && b.first() == Some(&1)
        {
            out.extend_from_slice(&b[1..]);
        }
    }
    assert_eq!(
        String::from_utf8_lossy(&out).trim(),
        (768 << 10).to_string()
    );

    let url = exec_url(&mut w, &id, &["sleep", "600"], true).await;
    let mut ws = websocket(&url, "v5.channel.k8s.io").await;
    let mut message = vec![0u8; 1 + (2 << 20)];
    message[0] = 0;
    let _ = ws.send(Message::binary(message)).await;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(msg)) = ws.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "a 2 MiB message did not end the session");
    still_serving(&mut w, &id).await;
    w.remove_pod(&pod).await;
}
