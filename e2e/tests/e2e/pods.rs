//! Pod sandboxes with the real Debian CNI plugins: pinned namespaces, IPs,
//! port mappings, host network, teardown without leaks, restarts.
//!
//! Each test has its own CNI conf dir, bridge, subnet and host-local data
//! dir, so tests run in parallel, and never touches /etc/cni.

use std::collections::HashMap;
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::cri::runtime_service_client::RuntimeServiceClient;
use berth_e2e::cri::{
    DnsConfig, LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListPodSandboxRequest,
    NamespaceMode, NamespaceOption, NetworkConfig, PodSandboxConfig, PodSandboxFilter,
    PodSandboxMetadata, PodSandboxState, PodSandboxStateValue, PodSandboxStatusRequest,
    PortMapping, RunPodSandboxRequest, RuntimeConfig, StopPodSandboxRequest,
    UpdateRuntimeConfigRequest,
};
use berth_e2e::net::{BIN_DIR, Net, can_run_network, options_for, sh};
use berth_e2e::{Berthd, Options, can_run, have_command, is_root, mounts_under};
use nix::sys::signal::Signal;
use tonic::transport::Channel;

type Client = RuntimeServiceClient<Channel>;

fn mode(m: NamespaceMode) -> i32 {
    m as i32
}

/// A pod as the kubelet sends it: own network, PID per container.
fn pod(name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "e2e".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: format!("/var/log/pods/e2e_{name}"),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: mode(NamespaceMode::Pod),
                    pid: mode(NamespaceMode::Container),
                    ipc: mode(NamespaceMode::Pod),
                    ..NamespaceOption::default()
                }),
                ..LinuxSandboxSecurityContext::default()
            }),
            ..LinuxPodSandboxConfig::default()
        }),
        ..PodSandboxConfig::default()
    }
}

fn with_modes(
    mut config: PodSandboxConfig,
    network: NamespaceMode,
    pid: NamespaceMode,
) -> PodSandboxConfig {
    let options = config
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
        .unwrap();
    options.network = mode(network);
    options.pid = mode(pid);
    config
}

/// The pod's IPs and its verbose info.
async fn inspect(client: &mut Client, id: &str) -> (Vec<String>, serde_json::Value, i32) {
    let resp = client
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let status = resp.status.unwrap();
    let network = status.network.unwrap_or_default();
    let mut ips: Vec<String> = network.additional_ips.into_iter().map(|p| p.ip).collect();
    if !network.ip.is_empty() {
        ips.insert(0, network.ip);
    }
    let info: serde_json::Value = serde_json::from_str(&resp.info["info"]).unwrap();
    (ips, info, status.state)
}

fn netns(info: &serde_json::Value) -> String {
    info["namespaces"]["net"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn two_pods_get_ips_and_reach_each_other() {
    if !can_run_network() {
        return;
    }
    let net = Net::new(1);
    let berthd = Berthd::start_with(net.options()).await;
    let mut client = berthd.runtime().await;

    let mut a = pod("alpha");
    a.dns_config = Some(DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["e2e.svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    a.linux.as_mut().unwrap().sysctls =
        HashMap::from([("net.ipv4.ip_unprivileged_port_start".into(), "80".into())]);
    let a = berth_e2e::run_pod(&mut client, a).await.unwrap();
    let b = berth_e2e::run_pod(&mut client, pod("beta")).await.unwrap();
    assert_eq!(a.len(), 64);
    let (a_ips, a_info, state) = inspect(&mut client, &a).await;
    assert_eq!(state, PodSandboxState::SandboxReady as i32);
    let (b_ips, b_info, _) = inspect(&mut client, &b).await;
    assert_eq!(a_ips.len(), 1, "{a_ips:?}");
    assert!(a_ips[0].starts_with(&net.prefix), "{a_ips:?}");
    assert!(b_ips[0].starts_with(&net.prefix), "{b_ips:?}");
    assert_ne!(a_ips, b_ips);
    assert_eq!(a_info["cniCheck"], "ok", "{a_info}");

    // Each way, from inside the pinned namespaces, with no container.
    for (from, to) in [(&a_info, &b_ips[0]), (&b_info, &a_ips[0])] {
        let out = sh(&[
            "nsenter",
            &format!("--net={}", netns(from)),
            "busybox",
            "ping",
            "-c",
            "1",
            "-W",
            "5",
            to,
        ]);
        assert!(out.status.success(), "ping {to}: {out:?}");
    }
    // lo is up: the pod reaches itself on 127.0.0.1.
    let out = sh(&[
        "nsenter",
        &format!("--net={}", netns(&a_info)),
        "busybox",
        "ping",
        "-c",
        "1",
        "-W",
        "5",
        "127.0.0.1",
    ]);
    assert!(out.status.success(), "ping lo: {out:?}");

    // UTS hostname, the sysctl, resolv.conf, hosts, shm.
    let uts = a_info["namespaces"]["uts"].as_str().unwrap();
    let out = sh(&["nsenter", &format!("--uts={uts}"), "busybox", "hostname"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "alpha");
    let out = sh(&[
        "nsenter",
        &format!("--net={}", netns(&a_info)),
        "busybox",
        "cat",
        "/proc/sys/net/ipv4/ip_unprivileged_port_start",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "80");
    let files = &a_info["files"];
    let resolv = std::fs::read_to_string(files["resolv_conf"].as_str().unwrap()).unwrap();
    assert_eq!(
        resolv,
        "search e2e.svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
    );
    let hosts = std::fs::read_to_string(files["hosts"].as_str().unwrap()).unwrap();
    assert!(hosts.contains(&format!("{}\talpha", a_ips[0])), "{hosts}");
    let shm = PathBuf::from(files["shm"].as_str().unwrap());
    assert!(mounts_under(&shm).contains(&shm), "shm is a mount");

    berth_e2e::stop_and_remove_pod(&mut client, &a).await;
    berth_e2e::stop_and_remove_pod(&mut client, &b).await;
    assert!(net.allocated().is_empty(), "{:?}", net.allocated());
}

#[tokio::test]
async fn dual_stack_pod_reports_ipv4_then_ipv6() {
    if !can_run_network() {
        return;
    }
    let net = Net::build(7, None, true);
    let berthd = Berthd::start_with(net.options()).await;
    let mut client = berthd.runtime().await;
    let id = berth_e2e::run_pod(&mut client, pod("dual")).await.unwrap();
    let (ips, info, _) = inspect(&mut client, &id).await;
    assert_eq!(ips.len(), 2, "{ips:?}");
    assert!(ips[0].starts_with(&net.prefix), "{ips:?}");
    assert!(ips[1].starts_with("fd00:be:"), "{ips:?}");
    let hosts = std::fs::read_to_string(info["files"]["hosts"].as_str().unwrap()).unwrap();
    assert!(hosts.contains(&format!("{}\tdual", ips[1])), "{hosts}");
    berth_e2e::stop_and_remove_pod(&mut client, &id).await;
    assert_no_leaks(&berthd, &net, &[id]);
}

#[tokio::test]
async fn bandwidth_annotations_shape_the_pod_interface() {
    if !can_run_network() || !can_run(have_command("tc"), "tc (iproute2)") {
        return;
    }
    let net = Net::with_plugins(
        11,
        Some(r#"{ "type": "bandwidth", "capabilities": { "bandwidth": true } }"#),
    );
    let berthd = Berthd::start_with(net.options()).await;
    let mut client = berthd.runtime().await;
    let mut config = pod("shaped");
    config.annotations = HashMap::from([
        ("kubernetes.io/ingress-bandwidth".into(), "1M".into()),
        ("kubernetes.io/egress-bandwidth".into(), "2M".into()),
    ]);
    let id = berth_e2e::run_pod(&mut client, config).await.unwrap();
    // Ingress is shaped by a tbf on the host end of the pod's veth.
    let ports = net.ports();
    let veth = ports
        .split(':')
        .nth(1)
        .and_then(|name| name.trim().split('@').next())
        .unwrap()
        .to_string();
    let qdisc = String::from_utf8(sh(&["tc", "qdisc", "show", "dev", &veth]).stdout).unwrap();
    assert!(
        qdisc.contains("tbf") && qdisc.contains("rate 1Mbit"),
        "{qdisc}"
    );
    // Egress goes through an ifb device the plugin names bwp<hash>.
    let plugin_ifbs = || {
        let out = sh(&["ip", "-o", "link", "show", "type", "ifb"]);
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string()))
            .filter(|n| n.starts_with("bwp"))
            .collect::<Vec<_>>()
    };
    assert_eq!(plugin_ifbs().len(), 1, "egress shaping uses an ifb device");
    berth_e2e::stop_and_remove_pod(&mut client, &id).await;
    assert_no_leaks(&berthd, &net, &[id]);
    assert_eq!(plugin_ifbs(), Vec::<String>::new());
}

#[tokio::test]
async fn pod_cidr_from_update_runtime_config_reaches_host_local() {
    if !can_run_network() {
        return;
    }
    // A network with no ranges of its own: host-local takes the pod CIDR
    // the kubelet sends, through the ipRanges capability.
    let net = Net::new(12);
    let conflist = format!(
        r#"{{"cniVersion":"1.0.0","name":"{}","plugins":[{{"type":"bridge","bridge":"{}","isGateway":true,
            "capabilities":{{"ipRanges":true}},
            "ipam":{{"type":"host-local","dataDir":"{}"}}}}]}}"#,
        net.name,
        net.bridge,
        net.data_dir().display()
    );
    std::fs::write(net.conf_dir().join("10-test.conflist"), conflist).unwrap();
    let berthd = Berthd::start_with(net.options()).await;
    let mut client = berthd.runtime().await;
    client
        .update_runtime_config(UpdateRuntimeConfigRequest {
            runtime_config: Some(RuntimeConfig {
                network_config: Some(NetworkConfig {
                    pod_cidr: format!("{}.64/26", net.prefix),
                }),
            }),
        })
        .await
        .unwrap();
    let id = berth_e2e::run_pod(&mut client, pod("ranged"))
        .await
        .unwrap();
    let (ips, _, _) = inspect(&mut client, &id).await;
    let last: u8 = ips[0].rsplit('.').next().unwrap().parse().unwrap();
    assert!(
        ips[0].starts_with(&net.prefix) && (64..128).contains(&last),
        "{ips:?}"
    );
    berth_e2e::stop_and_remove_pod(&mut client, &id).await;
    assert_no_leaks(&berthd, &net, &[id]);
}

#[tokio::test]
async fn host_port_mapping_reaches_a_listener_in_the_pod() {
    if !can_run_network() {
        return;
    }
    let net = Net::new(2);
    let berthd = Berthd::start_with(net.options()).await;
    let mut client = berthd.runtime().await;
    let host_port = {
        let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut config = pod("web");
    config.port_mappings = vec![PortMapping {
        protocol: 0,
        container_port: 8080,
        host_port: host_port as i32,
        host_ip: String::new(),
    }];
    let id = berth_e2e::run_pod(&mut client, config).await.unwrap();
    let (_, info, _) = inspect(&mut client, &id).await;
    let mut listener = Command::new("nsenter")
        .arg(format!("--net={}", netns(&info)))
        .args([
            "busybox",
            "sh",
            "-c",
            "echo hello-from-pod | busybox nc -l -p 8080",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The host owns the gateway address: traffic to it goes through
    // portmap's DNAT in OUTPUT, as traffic to a node IP would.
    let target = format!("{}:{host_port}", net.gateway());
    let deadline = Instant::now() + Duration::from_secs(20);
    let reply = loop {
        let attempt = TcpStream::connect_timeout(&target.parse().unwrap(), Duration::from_secs(2))
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                let mut buf = String::new();
                s.read_to_string(&mut buf).map(|_| buf)
            });
        match attempt {
            Ok(reply) if !reply.is_empty() => break reply,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            other => panic!("no reply through host port {target}: {other:?}"),
        }
    };
    assert_eq!(reply.trim(), "hello-from-pod");
    let _ = listener.kill();
    let _ = listener.wait();
    berth_e2e::stop_and_remove_pod(&mut client, &id).await;
    let rules = String::from_utf8_lossy(&sh(&["iptables-save"]).stdout).into_owned();
    assert!(!rules.contains(&id), "iptables rules for {id} left behind");
}

#[tokio::test]
async fn host_network_pod_uses_the_host_namespaces() {
    if !can_run_network() {
        return;
    }
    // No CNI config at all: host-network pods do not need one.
    let empty = tempfile::tempdir().unwrap();
    let berthd = Berthd::start_with(options_for(empty.path())).await;
    let mut client = berthd.runtime().await;
    let config = with_modes(pod("hostnet"), NamespaceMode::Node, NamespaceMode::Pod);
    let id = berth_e2e::run_pod(&mut client, config).await.unwrap();
    let (ips, info, state) = inspect(&mut client, &id).await;
    assert_eq!(state, PodSandboxState::SandboxReady as i32);
    assert!(ips.is_empty(), "{ips:?}");
    assert!(info["namespaces"]["net"].is_null(), "{info}");
    assert!(info["namespaces"]["uts"].is_null(), "{info}");
    // The infra process (PID namespace POD) sees the host's interfaces.
    let pid = info["pid"].as_i64().unwrap();
    assert!(pid > 0);
    let infra_net = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let host_net = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_eq!(infra_net, host_net);
    // It sits in the pod's cgroup under the default parent, in every hierarchy.
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let leaf = format!("/berth/berth-{id}");
    assert!(cgroups.lines().all(|l| l.ends_with(&leaf)), "{cgroups}");
    let infra_pid_ns = std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap();
    assert_ne!(
        infra_pid_ns,
        std::fs::read_link("/proc/self/ns/pid").unwrap()
    );
    let hostname = std::fs::read_to_string(info["files"]["hostname"].as_str().unwrap()).unwrap();
    assert_eq!(
        hostname.trim(),
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim()
    );
    berth_e2e::stop_and_remove_pod(&mut client, &id).await;
    assert_eq!(infra_cgroups(&id), Vec::<PathBuf>::new());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .map(|c| !c.contains("berth-shim"))
                .unwrap_or(true),
        "infra process {pid} still runs"
    );
}

/// Everything a pod could leave behind: veths on the bridge, host-local
/// addresses, iptables rules naming it, mounts and files under the run
/// root, records and CNI cache under the root.
fn assert_no_leaks(berthd: &Berthd, net: &Net, ids: &[String]) {
    assert_eq!(net.ports().trim(), "", "veths left on {}", net.bridge);
    assert!(
        net.allocated().is_empty(),
        "IPs left: {:?}",
        net.allocated()
    );
    let rules = String::from_utf8_lossy(&sh(&["iptables-save"]).stdout).into_owned();
    for id in ids {
        assert!(!rules.contains(id.as_str()), "iptables rules for {id} left");
        assert_eq!(infra_cgroups(id), Vec::<PathBuf>::new());
    }
    let run_root = berthd.paths().run_root();
    assert_eq!(mounts_under(&run_root), Vec::<PathBuf>::new());
    let mut files = berth_e2e::files_under(&run_root);
    files.extend(berth_e2e::files_under(&berthd.paths().root().join("pods")));
    files.extend(berth_e2e::files_under(&berthd.paths().root().join("cni")));
    files.retain(|f| {
        let name = f.file_name().unwrap().to_string_lossy();
        !(name == "berth.sock" || name == "berth.sock.lock")
    });
    assert_eq!(files, Vec::<PathBuf>::new(), "files left behind");
}

/// The infra cgroup dirs of pod `id` (under the default parent) that exist.
fn infra_cgroups(id: &str) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter(|line| line.contains(" - cgroup ") || line.contains(" - cgroup2 "))
        .map(|line| PathBuf::from(line.split(' ').nth(4).unwrap()))
        .map(|mount| mount.join("berth").join(format!("berth-{id}")))
        .filter(|path| path.exists())
        .collect()
}

#[tokio::test]
async fn stop_and_remove_of_fifty_pods_leaks_nothing() {
    if !can_run_network() {
        return;
    }
    let net = Net::new(3);
    let berthd = Berthd::start_with(net.options()).await;
    let client = berthd.runtime().await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut client = client.clone();
        let mut config = pod(&format!("many-{i}"));
        if i % 5 == 0 {
            config = with_modes(config, NamespaceMode::Pod, NamespaceMode::Pod);
        }
        config.port_mappings = vec![PortMapping {
            protocol: 0,
            container_port: 80,
            host_port: 0,
            host_ip: String::new(),
        }];
        tasks.push(tokio::spawn(async move {
            berth_e2e::run_pod(&mut client, config).await.unwrap()
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.unwrap());
    }
    let mut client = client.clone();
    let listed = client
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(listed.len(), 50);
    assert_eq!(net.allocated().len(), 50);
    let mut infra_pids = Vec::new();
    for id in ids.iter().step_by(5) {
        let (_, info, _) = inspect(&mut client, id).await;
        infra_pids.push(info["pid"].as_i64().unwrap());
    }
    assert!(infra_pids.iter().all(|&p| p > 0));
    // 50 IDs over 16 hex digits: some first digit is shared, so that
    // one-character prefix is ambiguous.
    let shared = (b'0'..=b'f')
        .map(char::from)
        .find(|c| ids.iter().filter(|id| id.starts_with(*c)).count() > 1)
        .unwrap();
    let err = client
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: shared.to_string(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("ambiguous"), "{}", err.message());

    let mut tasks = Vec::new();
    for id in ids.clone() {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            berth_e2e::stop_and_remove_pod(&mut client, &id).await;
            // Both are idempotent.
            berth_e2e::stop_and_remove_pod(&mut client, &id).await;
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_no_leaks(&berthd, &net, &ids);
    for pid in infra_pids {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.contains("berth-shim"));
        assert!(!alive, "infra process {pid} still runs");
    }
    let listed = client
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(listed.is_empty());
}

#[tokio::test]
async fn missing_plugin_or_bad_config_fails_clearly_and_leaks_nothing() {
    if !can_run_network() {
        return;
    }
    // A chain whose last plugin does not exist: ADD fails after bridge and
    // portmap ran, so berthd must DEL them again.
    let net = Net::with_plugins(4, Some(r#"{ "type": "berth-no-such-plugin" }"#));
    let berthd = Berthd::start_with(net.options()).await;
    let mut client = berthd.runtime().await;
    let err = berth_e2e::run_pod(&mut client, pod("doomed"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Internal, "{err:?}");
    assert!(
        err.message().contains("berth-no-such-plugin"),
        "{}",
        err.message()
    );
    assert!(err.message().contains("not found"), "{}", err.message());
    let listed = client
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(listed.is_empty());
    assert_no_leaks(&berthd, &net, &[]);
    // The name was freed: the same pod can be retried (and fails the same way).
    let err = berth_e2e::run_pod(&mut client, pod("doomed"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Internal);

    // A plugin's own JSON error reaches the caller.
    let bad_bridge = format!("{}b", net.bridge);
    std::fs::write(
        net.conf_dir().join("10-test.conflist"),
        format!(
            r#"{{"cniVersion":"1.0.0","name":"bad-ipam","plugins":[{{"type":"bridge","bridge":"{bad_bridge}","ipam":{{"type":"host-local","ranges":[[{{"subnet":"not-a-subnet"}}]]}}}}]}}"#
        ),
    )
    .unwrap();
    // The watch picks the new file up within its poll interval.
    let deadline = Instant::now() + Duration::from_secs(15);
    let err = loop {
        let err = berth_e2e::run_pod(&mut client, pod("bad-ipam"))
            .await
            .unwrap_err();
        if !err.message().contains("berth-no-such-plugin") || Instant::now() > deadline {
            break err;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        err.message().contains("bridge ADD failed"),
        "{}",
        err.message()
    );
    assert!(err.message().contains("not-a-subnet"), "{}", err.message());
    // Its DEL fails the same way; the pod is still removed entirely.
    assert!(
        err.message().contains("DEL also failed"),
        "{}",
        err.message()
    );
    assert_no_leaks(&berthd, &net, &[]);
    let _ = Command::new("ip")
        .args(["link", "del", &bad_bridge])
        .stderr(Stdio::null())
        .status();

    // Not JSON at all: the network is not ready and says which file is bad.
    std::fs::write(net.conf_dir().join("10-test.conflist"), "{ nope").unwrap();
    let message = berth_e2e::net::wait_network_ready(&mut client, |m| {
        m.is_some_and(|m| m.contains("invalid JSON"))
    })
    .await;
    assert!(message.unwrap().contains("10-test.conflist"));
    let err = berth_e2e::run_pod(&mut client, pod("no-net"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("no valid CNI network config"),
        "{}",
        err.message()
    );
    assert_no_leaks(&berthd, &net, &[]);
}

/// Polls Status until the NetworkReady message (None when ready) satisfies `want`.

#[tokio::test]
async fn network_ready_flips_when_the_conf_dir_gets_a_config() {
    if !can_run_network() {
        return;
    }
    let net = Net::new(5);
    let config = std::fs::read(net.conf_dir().join("10-test.conflist")).unwrap();
    std::fs::remove_file(net.conf_dir().join("10-test.conflist")).unwrap();
    let berthd = Berthd::start_with(net.options()).await;
    let mut client = berthd.runtime().await;
    let message = berth_e2e::net::wait_network_ready(&mut client, |m| m.is_some())
        .await
        .unwrap();
    assert!(message.contains("no valid CNI network config"), "{message}");
    std::fs::write(net.conf_dir().join("10-test.conflist"), config).unwrap();
    berth_e2e::net::wait_network_ready(&mut client, |m| m.is_none()).await;
    let id = berth_e2e::run_pod(&mut client, pod("late")).await.unwrap();
    berth_e2e::stop_and_remove_pod(&mut client, &id).await;
}

#[tokio::test]
async fn pods_survive_kill_9_and_restart_and_stay_controllable() {
    if !can_run_network() {
        return;
    }
    let net = Net::new(6);
    let options = net.options();
    let berthd = Berthd::start_with(options.clone()).await;
    let mut client = berthd.runtime().await;
    let a = berth_e2e::run_pod(
        &mut client,
        with_modes(pod("keep-a"), NamespaceMode::Pod, NamespaceMode::Pod),
    )
    .await
    .unwrap();
    let b = berth_e2e::run_pod(&mut client, pod("keep-b"))
        .await
        .unwrap();
    let (a_ips, a_info, _) = inspect(&mut client, &a).await;
    let (b_ips, _, _) = inspect(&mut client, &b).await;
    let infra = a_info["pid"].as_i64().unwrap();
    drop(client);

    let (_, paths) = berthd.stop_with(Signal::SIGKILL).await;
    let berthd = Berthd::start_in(paths, options).await;
    let mut client = berthd.runtime().await;
    let listed = client
        .list_pod_sandbox(ListPodSandboxRequest {
            filter: Some(PodSandboxFilter {
                state: Some(PodSandboxStateValue {
                    state: PodSandboxState::SandboxReady as i32,
                }),
                ..PodSandboxFilter::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(listed.len(), 2);
    let (a_ips_after, a_info_after, _) = inspect(&mut client, &a).await;
    assert_eq!(a_ips_after, a_ips);
    assert_eq!(a_info_after["pid"].as_i64().unwrap(), infra);
    // The network still works and the name is still reserved.
    let out = sh(&[
        "nsenter",
        &format!("--net={}", netns(&a_info_after)),
        "busybox",
        "ping",
        "-c",
        "1",
        "-W",
        "5",
        &b_ips[0],
    ]);
    assert!(out.status.success(), "{out:?}");
    let err = berth_e2e::run_pod(&mut client, pod("keep-b"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    // Stop and remove by unique prefix.
    berth_e2e::stop_and_remove_pod(&mut client, &a[..12]).await;
    berth_e2e::stop_and_remove_pod(&mut client, &b).await;
    assert!(
        !std::fs::read_to_string(format!("/proc/{infra}/cmdline"))
            .is_ok_and(|c| c.contains("berth-shim"))
    );
    assert_no_leaks(&berthd, &net, &[a, b]);
}

#[tokio::test]
async fn pod_half_set_up_when_berthd_died_is_removed_cleanly_after_restart() {
    if !can_run_network() {
        return;
    }
    // A third plugin that hangs in ADD: berthd is killed while it runs,
    // after bridge and portmap did their work.
    let net = Net::with_plugins(8, Some(r#"{ "type": "berth-hang" }"#));
    let (marker, options) = hanging_plugin(&net, 30);
    let berthd = Berthd::start_with(options.clone()).await;
    let mut client = berthd.runtime().await;
    let pending = tokio::spawn(async move { berth_e2e::run_pod(&mut client, pod("half")).await });
    let deadline = Instant::now() + Duration::from_secs(20);
    while net.ports().trim().is_empty()
        || berth_e2e::pids_mentioning(&[marker.as_bytes()]).is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "ADD never reached the hanging plugin"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, paths) = berthd.stop_with(Signal::SIGKILL).await;
    let _ = pending.await;
    berth_e2e::kill_processes_under(Path::new(&marker));

    let berthd = Berthd::start_in(paths, options).await;
    let mut client = berthd.runtime().await;
    let listed = client
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, PodSandboxState::SandboxNotready as i32);
    let err = berth_e2e::run_pod(&mut client, pod("half"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    let id = listed[0].id.clone();
    berth_e2e::stop_and_remove_pod(&mut client, &id).await;
    assert_no_leaks(&berthd, &net, &[id]);
}

#[tokio::test]
async fn pods_from_before_a_reboot_are_not_ready_and_removable() {
    if !can_run_network() {
        return;
    }
    let net = Net::new(10);
    let options = net.options();
    let berthd = Berthd::start_with(options.clone()).await;
    let mut client = berthd.runtime().await;
    let mut config = pod("rebooted");
    config.port_mappings = vec![PortMapping {
        protocol: 0,
        container_port: 80,
        host_port: 0,
        host_ip: String::new(),
    }];
    let id = berth_e2e::run_pod(&mut client, config).await.unwrap();
    drop(client);
    let (_, paths) = berthd.stop_with(Signal::SIGKILL).await;
    // A reboot: the run root's mounts and files are gone, and with the last
    // reference to the network namespace, its veth. Address files and
    // iptables rules survive, as they would on disk and in a restored firewall.
    for mount in mounts_under(&paths.run_root()) {
        nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH).unwrap();
    }
    std::fs::remove_dir_all(paths.run_root()).unwrap();
    // A reboot also empties the firewall. (Debian's bridge plugin 1.1.1
    // could not remove its masquerade rules itself: it reads the pod's
    // addresses from the veth inside the namespace, which is gone.)
    drop_nat_rules_naming(&id);
    assert_eq!(net.allocated().len(), 1);

    let berthd = Berthd::start_in(paths, options).await;
    let mut client = berthd.runtime().await;
    let (_, _, state) = inspect(&mut client, &id).await;
    assert_eq!(state, PodSandboxState::SandboxNotready as i32);
    berth_e2e::stop_and_remove_pod(&mut client, &id).await;
    assert_no_leaks(&berthd, &net, &[id]);
}

/// Deletes the nat rules whose comment names `id`, and the chains they jump to.
fn drop_nat_rules_naming(id: &str) {
    let rules = String::from_utf8(sh(&["iptables-save", "-t", "nat"]).stdout).unwrap();
    let mut chains = Vec::new();
    for rule in rules
        .lines()
        .filter(|l| l.starts_with("-A ") && l.contains(id))
    {
        if let Some(target) = rule.split(" -j ").nth(1).filter(|t| t.starts_with("CNI-")) {
            chains.push(target.to_string());
        }
        if !rule.starts_with("-A CNI-") {
            let delete = format!("iptables -t nat -D {}", &rule[3..]);
            assert!(sh(&["sh", "-c", &delete]).status.success(), "{delete}");
        }
    }
    for chain in chains {
        sh(&["iptables", "-t", "nat", "-F", &chain]);
        sh(&["iptables", "-t", "nat", "-X", &chain]);
    }
}

/// Installs `berth-hang`, a plugin whose ADD sleeps with a command line
/// unique to this run (the returned marker), and berthd options that search
/// its dir first with `timeout` seconds per plugin.
fn hanging_plugin(net: &Net, timeout: u64) -> (String, Options) {
    let bin = net.dir().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let plugin = bin.join("berth-hang");
    let marker = format!("600.{}{}", std::process::id(), net.prefix.replace('.', ""));
    berth_e2e::write_script(
        &plugin,
        &format!("#!/bin/sh\nif [ \"$CNI_COMMAND\" = ADD ]; then exec sleep {marker}; fi\n"),
    );
    let options = Options {
        config: format!(
            "[cni]\nconf_dir = \"{}\"\nbin_dirs = [\"{}\", \"{BIN_DIR}\"]\nplugin_timeout = {timeout}\n",
            net.conf_dir().display(),
            bin.display()
        ),
        ..Options::default()
    };
    (marker, options)
}

#[tokio::test]
async fn a_plugin_past_its_timeout_fails_the_pod_and_leaks_nothing() {
    if !can_run_network() {
        return;
    }
    let net = Net::with_plugins(9, Some(r#"{ "type": "berth-hang" }"#));
    let (marker, options) = hanging_plugin(&net, 1);
    let berthd = Berthd::start_with(options).await;
    let mut client = berthd.runtime().await;
    let err = berth_e2e::run_pod(&mut client, pod("slow"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Internal, "{err:?}");
    assert!(
        err.message().contains("berth-hang ADD timed out"),
        "{}",
        err.message()
    );
    assert!(
        berth_e2e::pids_mentioning(&[marker.as_bytes()]).is_empty(),
        "the plugin was not killed"
    );
    assert_no_leaks(&berthd, &net, &[]);
}

#[tokio::test]
async fn pod_rpcs_validate_reserve_and_filter() {
    if !can_run(is_root(), "root (namespaces, mounts)") {
        return;
    }
    // Host-network pods need no CNI config.
    let empty = tempfile::tempdir().unwrap();
    let berthd = Berthd::start_with(options_for(empty.path())).await;
    let mut client = berthd.runtime().await;
    let host = |name: &str| with_modes(pod(name), NamespaceMode::Node, NamespaceMode::Container);

    let mut first = host("one");
    first.labels = HashMap::from([("app".into(), "x".into())]);
    let one = berth_e2e::run_pod(&mut client, first.clone())
        .await
        .unwrap();
    let two = berth_e2e::run_pod(&mut client, host("two")).await.unwrap();

    let err = berth_e2e::run_pod(&mut client, first).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    assert!(err.message().contains("is reserved"), "{}", err.message());
    assert!(err.message().contains(&one), "{}", err.message());

    let err = client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(host("kata")),
            runtime_handler: "kata".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("runtime handler \"kata\""),
        "{}",
        err.message()
    );

    let mut no_uid = host("nouid");
    no_uid.metadata.as_mut().unwrap().uid.clear();
    let err = berth_e2e::run_pod(&mut client, no_uid).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("config.metadata.uid"),
        "{}",
        err.message()
    );

    let mut bad_sysctl = host("sysctl");
    bad_sysctl.linux.as_mut().unwrap().sysctls =
        HashMap::from([("net.ipv4.ip_forward".into(), "1".into())]);
    let err = berth_e2e::run_pod(&mut client, bad_sysctl)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("sysctls"), "{}", err.message());

    let lister = client.clone();
    let list = |filter: PodSandboxFilter| {
        let mut client = lister.clone();
        async move {
            client
                .list_pod_sandbox(ListPodSandboxRequest {
                    filter: Some(filter),
                })
                .await
                .unwrap()
                .into_inner()
                .items
                .into_iter()
                .map(|p| p.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        list(PodSandboxFilter {
            label_selector: HashMap::from([("app".into(), "x".into())]),
            ..PodSandboxFilter::default()
        })
        .await,
        vec![one.clone()]
    );
    assert_eq!(
        list(PodSandboxFilter {
            id: two[..10].into(),
            ..PodSandboxFilter::default()
        })
        .await,
        vec![two.clone()]
    );
    client
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: two.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        list(PodSandboxFilter {
            state: Some(PodSandboxStateValue {
                state: PodSandboxState::SandboxNotready as i32,
            }),
            ..PodSandboxFilter::default()
        })
        .await,
        vec![two.clone()]
    );

    let unknown = "f".repeat(64);
    let err = client
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: unknown.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    berth_e2e::stop_and_remove_pod(&mut client, &unknown).await;

    berth_e2e::stop_and_remove_pod(&mut client, &one).await;
    berth_e2e::stop_and_remove_pod(&mut client, &two).await;
    // Removal frees the name.
    let again = berth_e2e::run_pod(&mut client, host("one")).await.unwrap();
    berth_e2e::stop_and_remove_pod(&mut client, &again).await;
}
