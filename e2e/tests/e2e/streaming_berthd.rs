//! The streaming RPCs through the real berthd: PortForward resolves a pod
//! and returns a URL on berthd's streaming server, which then reaches a
//! listener inside the pod's pinned network namespace (or, for a
//! host-network pod, berthd's own) over SPDY/3.1 and WebSocket. Exec and
//! Attach through berthd are in containers.rs.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use berth_e2e::cri::runtime_service_client::RuntimeServiceClient;
use berth_e2e::cri::{
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest, PortForwardRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StopPodSandboxRequest,
};
use berth_e2e::stream_client::{SpdyClient, http_status, websocket};
use berth_e2e::{Berthd, Options, Paths, can_run, command, is_root};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tonic::transport::Channel;

type Client = RuntimeServiceClient<Channel>;

const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// A pod network of the loopback plugin alone: the pod gets its own
/// namespace and no interfaces on the host, so nothing here touches the
/// host's network.
fn loopback_network(dir: &Path) -> Options {
    let conf_dir = dir.join("net.d");
    std::fs::create_dir(&conf_dir).unwrap();
    std::fs::write(
        conf_dir.join("10-lo.conflist"),
        r#"{ "cniVersion": "1.0.0", "name": "berth-e2e-lo", "plugins": [ { "type": "loopback" } ] }"#,
    )
    .unwrap();
    Options {
        config: format!(
            "[cni]\nconf_dir = \"{}\"\nbin_dirs = [\"{CNI_BIN_DIR}\"]\n",
            conf_dir.display()
        ),
        ..Options::default()
    }
}

fn pod(name: &str, network: NamespaceMode) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "e2e".into(),
            attempt: 0,
        }),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: network as i32,
                    pid: NamespaceMode::Container as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..NamespaceOption::default()
                }),
                ..LinuxSandboxSecurityContext::default()
            }),
            ..LinuxPodSandboxConfig::default()
        }),
        ..PodSandboxConfig::default()
    }
}

async fn port_forward(
    client: &mut Client,
    id: &str,
    ports: &[i32],
) -> Result<String, tonic::Status> {
    client
        .port_forward(PortForwardRequest {
            pod_sandbox_id: id.into(),
            port: ports.to_vec(),
        })
        .await
        .map(|r| r.into_inner().url)
}

/// An echo server on 127.0.0.1 inside the network namespace `netns` (the
/// test's own with `None`), for `connections` connections; returns its port.
fn echo_in(netns: Option<&Path>, connections: usize) -> u16 {
    let (tx, rx) = std::sync::mpsc::channel();
    let netns = netns.map(Path::to_path_buf);
    // setns moves only this thread; the socket stays in the pod's namespace.
    std::thread::spawn(move || {
        if let Some(netns) = netns {
            let ns = std::fs::File::open(&netns).unwrap();
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        tx.send(listener.local_addr().unwrap().port()).unwrap();
        for conn in listener.incoming().take(connections) {
            let mut conn = conn.unwrap();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_through_berthd_over_spdy_and_websocket() {
    if !can_run(
        is_root() && Path::new(CNI_BIN_DIR).join("loopback").exists(),
        "root and the CNI loopback plugin in /usr/lib/cni",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let berthd = Berthd::start_with(loopback_network(dir.path())).await;
    let mut client = berthd.runtime().await;

    let err = port_forward(&mut client, "", &[80]).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("pod_sandbox_id"), "{err:?}");
    let err = port_forward(&mut client, "0123abc", &[80])
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");

    let id = client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod("forwarded", NamespaceMode::Pod)),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let netns = pinned_netns(&mut client, &id).await;
    let port = echo_in(Some(&netns), 2);
    let err = port_forward(&mut client, &id, &[port.into(), 0])
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("port: 0"), "{err:?}");

    // SPDY, the pod named by an ID prefix.
    let url = port_forward(&mut client, &id[..12], &[port.into()])
        .await
        .unwrap();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let (spdy, head) = SpdyClient::connect(&url, "portforward.k8s.io").await;
    let mut spdy = spdy.unwrap_or_else(|| panic!("no upgrade: {head}"));
    let port_text = port.to_string();
    let headers = |kind| {
        [
            ("streamtype", kind),
            ("port", &*port_text),
            ("requestid", "0"),
        ]
    };
    spdy.open(&headers("error")).await;
    let data = spdy.open(&headers("data")).await;
    spdy.data(data, b"hello over spdy", false).await;
    spdy.read_until(data, "hello over spdy").await;
    drop(spdy);
    // The token is spent.
    assert_eq!(http_status(&url).await, 404);

    // WebSocket: the ports of the CRI request become channels 0 and 1.
    let url = port_forward(&mut client, &id, &[port.into()])
        .await
        .unwrap();
    let mut ws = websocket(&url, "v4.channel.k8s.io").await;
    let mut opened = Vec::new();
    let mut echoed = Vec::new();
    ws.send(Message::binary(b"\0hello over websocket".to_vec()))
        .await
        .unwrap();
    while !String::from_utf8_lossy(&echoed).contains("hello over websocket") {
        let Some(Ok(msg)) = ws.next().await else {
            panic!("closed; got {:?}", String::from_utf8_lossy(&echoed));
        };
        let Message::Binary(bytes) = msg else {
            continue;
        };
        let (channel, payload) = (bytes[0], &bytes[1..]);
        if opened.len() < 2 {
            assert_eq!(payload, port.to_le_bytes());
            opened.push(channel);
        } else {
            assert_eq!(channel, 0, "{:?}", String::from_utf8_lossy(payload));
            echoed.extend_from_slice(payload);
        }
    }
    opened.sort();
    assert_eq!(opened, [0, 1]);
    drop(ws);
    assert_eq!(http_status(&url).await, 404);

    // A host-network pod is reached in berthd's own namespace.
    let host_pod = client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod("forwarded-host", NamespaceMode::Node)),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let host_port = echo_in(None, 1);
    let url = port_forward(&mut client, &host_pod, &[host_port.into()])
        .await
        .unwrap();
    let (spdy, head) = SpdyClient::connect(&url, "portforward.k8s.io").await;
    let mut spdy = spdy.unwrap_or_else(|| panic!("no upgrade: {head}"));
    let host_port_text = host_port.to_string();
    let headers = |kind| {
        [
            ("streamtype", kind),
            ("port", &*host_port_text),
            ("requestid", "0"),
        ]
    };
    spdy.open(&headers("error")).await;
    let data = spdy.open(&headers("data")).await;
    spdy.data(data, b"hello on the host", false).await;
    spdy.read_until(data, "hello on the host").await;
    drop(spdy);
    berth_e2e::stop_and_remove_pod(&mut client, &host_pod).await;

    client
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .unwrap();
    let err = port_forward(&mut client, &id, &[port.into()])
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    client
        .remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .unwrap();
}

#[test]
fn unreadable_tls_files_stop_start_up_before_the_socket_exists() {
    let paths = Paths::create();
    let cert = paths.dir().join("missing-cert.pem");
    let output = command(
        &paths,
        &Options {
            config: format!(
                "[streaming]\ntls_cert = \"{}\"\ntls_key = \"/nonexistent/key.pem\"\n",
                cert.display()
            ),
            ..Options::default()
        },
    )
    .output()
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("streaming"), "{stderr}");
    assert!(stderr.contains(cert.to_str().unwrap()), "{stderr}");
    assert!(
        !paths.socket().exists(),
        "a server that cannot stream must not listen"
    );
}
