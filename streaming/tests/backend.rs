//! The streaming server with the real backend against runc containers:
//! exec (pipes and tty), attach and port-forward, over SPDY/3.1 and
//! WebSocket, driven by clients that share none of the server's framing.

mod stream_world;

use berth_e2e::stream_client::{SpdyClient, http_status, websocket};
use berth_streaming::{AttachRequest, ExecRequest, PortForwardRequest};
use futures_util::{SinkExt, StreamExt};
use stream_world::{World, can_run};
use tokio_tungstenite::tungstenite::Message;

fn exec(
    world: &World,
    c: &berth_runtime::lifecycle::NewContainer,
    cmd: &[&str],
    tty: bool,
) -> String {
    world.server.exec_url(ExecRequest {
        container: world.container(c),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin: true,
        stdout: true,
        stderr: !tty,
    })
}

fn status(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(bytes)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_exec_pipes_stdin_returns_the_exit_code_and_spends_its_token() {
    if !can_run() {
        return;
    }
    let world = World::new().await;
    let c = world.run(&["sleep", "100000"], false, false);
    let url = exec(
        &world,
        &c,
        &["sh", "-c", "cat; echo to-err >&2; exit 3"],
        false,
    );
    let (client, head) = SpdyClient::connect(&url, "v4.channel.k8s.io").await;
    let mut client = client.unwrap_or_else(|| panic!("no upgrade: {head}"));
    assert!(
        head.contains("X-Stream-Protocol-Version: v4.channel.k8s.io")
            || head
                .to_lowercase()
                .contains("x-stream-protocol-version: v4.channel.k8s.io"),
        "{head}"
    );
    let error = client.open(&[("streamtype", "error")]).await;
    let stdin = client.open(&[("streamtype", "stdin")]).await;
    let stdout = client.open(&[("streamtype", "stdout")]).await;
    let stderr = client.open(&[("streamtype", "stderr")]).await;
    client.ping(1).await;
    client.data(stdin, b"hello ", false).await;
    client.data(stdin, b"world", true).await;
    let data = client.collect(&[error, stdout, stderr]).await;
    assert_eq!(
        data.get(&stdout).map(Vec::as_slice),
        Some(&b"hello world"[..])
    );
    assert_eq!(data.get(&stderr).map(Vec::as_slice), Some(&b"to-err\n"[..]));
    let st = status(&data[&error]);
    assert_eq!(st["status"], "Failure", "{st}");
    assert_eq!(st["reason"], "NonZeroExitCode");
    assert_eq!(st["details"]["causes"][0]["reason"], "ExitCode");
    assert_eq!(st["details"]["causes"][0]["message"], "3");

    // Spent: the same URL again runs nothing.
    assert_eq!(http_status(&url).await, 404);
    let (again, head) = SpdyClient::connect(&url, "v4.channel.k8s.io").await;
    assert!(again.is_none() && head.contains(" 404 "), "{head}");
    let bogus = format!("http://{}/exec/not-a-token", world.server.local_addr());
    assert_eq!(http_status(&bogus).await, 404);

    // Success is a Success status; an unsupported protocol is refused.
    let url = exec(&world, &c, &["true"], false);
    let (client, _) = SpdyClient::connect(&url, "v4.channel.k8s.io").await;
    let mut client = client.unwrap();
    let error = client.open(&[("streamtype", "error")]).await;
    let stdin = client.open(&[("streamtype", "stdin")]).await;
    client.open(&[("streamtype", "stdout")]).await;
    client.open(&[("streamtype", "stderr")]).await;
    client.data(stdin, b"", true).await;
    let data = client.collect(&[error]).await;
    assert_eq!(status(&data[&error])["status"], "Success");
    let url = exec(&world, &c, &["true"], false);
    let (none, head) = SpdyClient::connect(&url, "v1.channel.k8s.io").await;
    assert!(none.is_none() && head.contains(" 403 "), "{head}");
    world.remove(&c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_exec_with_a_tty_applies_resize() {
    if !can_run() {
        return;
    }
    let world = World::new().await;
    let c = world.run(&["sleep", "100000"], false, false);
    let url = exec(
        &world,
        &c,
        &[
            "sh",
            "-c",
            "echo ready; while read l; do [ \"$l\" = q ] && exit 5; stty size; done",
        ],
        true,
    );
    let (client, head) = SpdyClient::connect(&url, "v4.channel.k8s.io").await;
    let mut client = client.unwrap_or_else(|| panic!("no upgrade: {head}"));
    let error = client.open(&[("streamtype", "error")]).await;
    let stdin = client.open(&[("streamtype", "stdin")]).await;
    let stdout = client.open(&[("streamtype", "stdout")]).await;
    let resize = client.open(&[("streamtype", "resize")]).await;
    client
        .data(resize, br#"{"Width":123,"Height":45}"#, false)
        .await;
    client.read_until(stdout, "ready").await;
    // The resize travels by SIGWINCH through runc: ask until it shows.
    let mut seen = String::new();
    for _ in 0..50 {
        client.data(stdin, b"size\n", false).await;
        seen = client.read_until(stdout, "\n").await;
        if seen.contains("45 123") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(seen.contains("45 123"), "stty size said {seen:?}");
    client.data(stdin, b"q\n", false).await;
    let data = client.collect(&[error]).await;
    let st = status(&data[&error]);
    assert_eq!(st["details"]["causes"][0]["message"], "5", "{st}");
    world.remove(&c);
}

/// (channel, data) of the next data message.
async fn next_message<S>(ws: &mut S, base64: bool) -> Option<(u8, Vec<u8>)>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    use base64::Engine;
    loop {
        match ws.next().await? {
            Ok(Message::Binary(b)) if !base64 => return Some((b[0], b[1..].to_vec())),
            Ok(Message::Text(t)) if base64 => {
                let t = t.as_str();
                let data = base64::engine::general_purpose::STANDARD
                    .decode(&t[1..])
                    .unwrap();
                return Some((t.as_bytes()[0] - b'0', data));
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_exec_v5_and_base64() {
    if !can_run() {
        return;
    }
    let world = World::new().await;
    let c = world.run(&["sleep", "100000"], false, false);

    let url = exec(&world, &c, &["sh", "-c", "cat; exit 7"], false);
    let mut ws = websocket(&url, "v5.channel.k8s.io").await;
    ws.send(Message::binary(b"\0piped".to_vec())).await.unwrap();
    // v5: close stdin.
    ws.send(Message::binary(vec![255, 0])).await.unwrap();
    let mut out = Vec::new();
    let mut error = None;
    while let Some((ch, data)) = next_message(&mut ws, false).await {
        match ch {
            1 => out.extend_from_slice(&data),
            3 => error = Some(data),
            _ => {}
        }
    }
    assert_eq!(out, b"piped");
    let st = status(&error.expect("a status on the error channel"));
    assert_eq!(st["details"]["causes"][0]["message"], "7", "{st}");

    let url = exec(&world, &c, &["sh", "-c", "echo out; echo err >&2"], false);
    let mut ws = websocket(&url, "v4.base64.channel.k8s.io").await;
    let mut got = std::collections::BTreeMap::<u8, Vec<u8>>::new();
    while let Some((ch, data)) = next_message(&mut ws, true).await {
        got.entry(ch).or_default().extend_from_slice(&data);
    }
    assert_eq!(got.get(&1).map(Vec::as_slice), Some(&b"out\n"[..]));
    assert_eq!(got.get(&2).map(Vec::as_slice), Some(&b"err\n"[..]));
    assert_eq!(status(&got[&3])["status"], "Success");
    world.remove(&c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_sees_output_and_sends_input_over_both_protocols() {
    if !can_run() {
        return;
    }
    let world = World::new().await;
    let c = world.run(
        &[
            "sh",
            "-c",
            "echo started; while read l; do echo got:$l; done",
        ],
        true,
        false,
    );
    let attach = |world: &World| {
        world.server.attach_url(AttachRequest {
            container: world.container(&c),
            tty: false,
            stdin: true,
            stdout: true,
            stderr: true,
        })
    };
    let url = attach(&world);
    let (client, head) = SpdyClient::connect(&url, "v4.channel.k8s.io").await;
    let mut client = client.unwrap_or_else(|| panic!("no upgrade: {head}"));
    client.open(&[("streamtype", "error")]).await;
    let stdin = client.open(&[("streamtype", "stdin")]).await;
    let stdout = client.open(&[("streamtype", "stdout")]).await;
    client.open(&[("streamtype", "stderr")]).await;
    client.data(stdin, b"one\n", false).await;
    client.read_until(stdout, "got:one").await;
    drop(client);

    // The container outlived that session; a WebSocket one works too.
    let url = attach(&world);
    let mut ws = websocket(&url, "v4.channel.k8s.io").await;
    ws.send(Message::binary(b"\0two\n".to_vec())).await.unwrap();
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&out).contains("got:two") {
        let (ch, data) = next_message(&mut ws, false).await.expect("attach output");
        if ch == 1 {
            out.extend_from_slice(&data);
        }
    }
    drop(ws);
    world.remove(&c);
}

struct Netns {
    name: String,
    httpd: std::process::Child,
}

impl Netns {
    fn with_httpd(dir: &std::path::Path, port: u16) -> Netns {
        let name = format!("berth-e2e-pf-{}", std::process::id());
        let ip = |args: &[&str]| {
            let st = std::process::Command::new("ip")
                .args(args)
                .status()
                .unwrap();
            assert!(st.success(), "ip {args:?}");
        };
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        std::fs::write(dir.join("index.html"), "hello from the pod\n").unwrap();
        let httpd = std::process::Command::new("ip")
            .args(["netns", "exec", &name, "/bin/busybox", "httpd", "-f", "-p"])
            .arg(port.to_string())
            .arg("-h")
            .arg(dir)
            .spawn()
            .unwrap();
        // Wait until it listens (inside the netns only).
        for _ in 0..100 {
            let ok = std::process::Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &name,
                    "/bin/busybox",
                    "wget",
                    "-q",
                    "-O",
                    "/dev/null",
                ])
                .arg(format!("http://127.0.0.1:{port}/"))
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Netns { name, httpd }
    }

    fn path(&self) -> std::path::PathBuf {
        format!("/run/netns/{}", self.name).into()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.httpd.kill();
        let _ = self.httpd.wait();
        let _ = std::process::Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_reaches_httpd_in_the_pod_netns() {
    if !can_run() {
        return;
    }
    let world = World::new().await;
    let www = world.paths.dir().join("www");
    std::fs::create_dir_all(&www).unwrap();
    let ns = Netns::with_httpd(&www, 8080);
    let req = PortForwardRequest {
        pod_id: "pod".into(),
        netns: Some(ns.path()),
        ports: Vec::new(),
    };

    // SPDY: two concurrent connections on one session.
    let url = world.server.port_forward_url(req.clone());
    let (client, head) = SpdyClient::connect(&url, "portforward.k8s.io").await;
    let mut client = client.unwrap_or_else(|| panic!("no upgrade: {head}"));
    let mut data_streams = Vec::new();
    for request in ["0", "1"] {
        client
            .open(&[
                ("streamtype", "error"),
                ("port", "8080"),
                ("requestid", request),
            ])
            .await;
        let data = client
            .open(&[
                ("streamtype", "data"),
                ("port", "8080"),
                ("requestid", request),
            ])
            .await;
        data_streams.push(data);
    }
    for id in &data_streams {
        client
            .data(*id, b"GET /index.html HTTP/1.0\r\n\r\n", false)
            .await;
    }
    let got = client.collect(&data_streams).await;
    for id in &data_streams {
        let text = String::from_utf8_lossy(&got[id]);
        assert!(
            text.contains("200 OK") && text.contains("hello from the pod"),
            "{text}"
        );
    }
    // A closed port reports on the error stream.
    let error = client
        .open(&[("streamtype", "error"), ("port", "9"), ("requestid", "2")])
        .await;
    client
        .open(&[("streamtype", "data"), ("port", "9"), ("requestid", "2")])
        .await;
    let got = client.collect(&[error]).await;
    assert!(
        String::from_utf8_lossy(&got[&error]).contains("refused"),
        "{got:?}"
    );
    drop(client);

    // WebSocket: channel 0 data, 1 error, each opened with the port.
    let url = world.server.port_forward_url(req);
    let mut ws = websocket(&format!("{url}?port=8080"), "v4.channel.k8s.io").await;
    let mut prefixes = Vec::new();
    while prefixes.len() < 2 {
        let (ch, data) = next_message(&mut ws, false).await.unwrap();
        assert_eq!(data, 8080u16.to_le_bytes());
        prefixes.push(ch);
    }
    prefixes.sort();
    assert_eq!(prefixes, [0, 1]);
    ws.send(Message::binary(b"\0GET / HTTP/1.0\r\n\r\n".to_vec()))
        .await
        .unwrap();
    let mut page = Vec::new();
    while !String::from_utf8_lossy(&page).contains("hello from the pod") {
        let (ch, data) = next_message(&mut ws, false).await.expect("page");
        assert_eq!(ch, 0);
        page.extend_from_slice(&data);
    }
}

/// Processes on the host whose command line contains `marker`.
fn with_marker(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|cmd| String::from_utf8_lossy(cmd).contains(marker))
        .count()
}

async fn wait_marker(marker: &str, present: bool) {
    for _ in 0..200 {
        if (with_marker(marker) > 0) == present {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("process with {marker:?} present: {}", !present);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_or_idles_ends_its_process() {
    if !can_run() {
        return;
    }
    let config = berth_streaming::Config {
        idle_timeout: std::time::Duration::from_secs(1),
        ..Default::default()
    };
    let world = World::with_config(config).await;
    let c = world.run(&["sleep", "100000"], false, false);
    let pid = std::process::id();

    // Disconnect mid-stream.
    // The sleep carries the marker too: it must die with its shell.
    let marker = format!("11{pid}");
    let url = exec(
        &world,
        &c,
        &["sh", "-c", &format!("sleep {marker}; echo done")],
        false,
    );
    let (client, _) = SpdyClient::connect(&url, "v4.channel.k8s.io").await;
    let mut client = client.unwrap();
    for t in ["error", "stdin", "stdout", "stderr"] {
        client.open(&[("streamtype", t)]).await;
    }
    wait_marker(&marker, true).await;
    drop(client);
    wait_marker(&marker, false).await;

    // Disconnect before the process may have started: once runc is gone
    // (the server then removes its pid dir), nothing of it may be left.
    let marker = format!("33{pid}");
    let url = exec(
        &world,
        &c,
        &["sh", "-c", &format!("sleep {marker}; echo done")],
        false,
    );
    let (client, _) = SpdyClient::connect(&url, "v4.channel.k8s.io").await;
    let mut client = client.unwrap();
    for t in ["error", "stdin", "stdout", "stderr"] {
        client.open(&[("streamtype", t)]).await;
    }
    drop(client);
    let exec_dirs = || {
        std::fs::read_dir(&world.runtime.root)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("exec-"))
            .count()
    };
    // The server may still be starting runc when the client is gone: the
    // dirs must be gone and stay gone (half a second), not just be absent
    // once before runc made one.
    let mut gone_for = 0;
    for _ in 0..400 {
        gone_for = if exec_dirs() == 0 { gone_for + 1 } else { 0 };
        if gone_for == 10 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(exec_dirs(), 0, "runc exec still running");
    assert_eq!(
        with_marker(&marker),
        0,
        "the exec'd process outlived its session"
    );

    // Idle: the server closes the session after its idle timeout.
    let marker = format!("22{pid}");
    let url = exec(
        &world,
        &c,
        &["sh", "-c", &format!("sleep {marker}; echo done")],
        false,
    );
    let mut ws = websocket(&url, "v5.channel.k8s.io").await;
    wait_marker(&marker, true).await;
    while next_message(&mut ws, false).await.is_some() {}
    wait_marker(&marker, false).await;
    world.remove(&c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_https_urls() {
    if !can_run() || !berth_e2e::have_command("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let st = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=berth-e2e"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        // webpki refuses a CA certificate as the server's own.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let config = berth_streaming::Config {
        tls: Some(berth_streaming::TlsFiles {
            cert: cert.clone(),
            key,
        }),
        ..Default::default()
    };
    let world = World::with_config(config).await;
    let c = world.run(&["sleep", "100000"], false, false);
    let url = exec(&world, &c, &["echo", "over-tls"], false);
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for der in rustls::pki_types::CertificateDer::pem_file_iter(&cert).unwrap() {
        roots.add(der.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(world.server.local_addr())
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::from(std::net::IpAddr::from([127, 0, 0, 1]));
    let stream = connector.connect(name, tcp).await.unwrap();
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url
        .replacen("https://", "wss://", 1)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v4.channel.k8s.io".parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some((ch, data)) = next_message(&mut ws, false).await {
        if ch == 1 {
            out.extend_from_slice(&data);
        }
    }
    assert_eq!(out, b"over-tls\n");
    world.remove(&c);
}
