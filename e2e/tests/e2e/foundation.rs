//! The daemon itself: socket, config, signals, Version / Status / RuntimeConfig.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::process::Stdio;
use std::time::Duration;

use berth_e2e::cri::{
    CgroupDriver, CheckpointContainerRequest, ContainerStatusRequest, PodSandboxStatusRequest,
    RuntimeConfigRequest, StatusRequest, VersionRequest,
};
use berth_e2e::{Berthd, Options, Paths, command};
use nix::sys::signal::Signal;

#[tokio::test]
async fn version_names_berth_and_cri_v1() {
    let berthd = Berthd::start().await;
    let version = berthd
        .runtime()
        .await
        .version(VersionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(version.version, "0.1.0");
    assert_eq!(version.runtime_name, "berth");
    assert_eq!(version.runtime_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(version.runtime_api_version, "v1");
}

#[tokio::test]
async fn status_reports_runtime_ready_and_network_not_ready() {
    // An empty CNI conf dir: no network config can be loaded.
    let conf_dir = tempfile::tempdir().unwrap();
    let berthd = Berthd::start_with(Options {
        config: format!("[cni]\nconf_dir = \"{}\"\n", conf_dir.path().display()),
        ..Options::default()
    })
    .await;
    let status = berthd
        .runtime()
        .await
        .status(StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let conditions = status.status.unwrap().conditions;
    let runtime = conditions
        .iter()
        .find(|c| c.r#type == "RuntimeReady")
        .unwrap();
    assert!(runtime.status);
    let network = conditions
        .iter()
        .find(|c| c.r#type == "NetworkReady")
        .unwrap();
    assert!(!network.status);
    assert_eq!(network.reason, "NetworkPluginNotReady");
    assert!(!network.message.is_empty());
    assert!(status.info.is_empty(), "info is only for verbose requests");

    let handlers: Vec<&str> = status
        .runtime_handlers
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(handlers, ["", "runc"]);
    assert!(
        status.features.unwrap().supplemental_groups_policy,
        "Merge and Strict supplemental group policies are supported"
    );
}

#[tokio::test]
async fn verbose_status_returns_the_effective_config_as_json() {
    let berthd = Berthd::start_with(Options {
        config: "[runtimes.crun]\npath = \"/usr/bin/crun\"\n".into(),
        ..Options::default()
    })
    .await;
    let status = berthd
        .runtime()
        .await
        .status(StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let config: serde_json::Value = serde_json::from_str(&status.info["config"]).unwrap();
    assert_eq!(
        config["root"],
        berthd.paths().root().to_str().unwrap(),
        "flags override the built-in root"
    );
    assert_eq!(config["runtimes"]["crun"]["path"], "/usr/bin/crun");
    assert_eq!(config["runtimes"]["runc"]["path"], "runc");
    let handlers: Vec<&str> = status
        .runtime_handlers
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(handlers, ["", "crun", "runc"]);
    // Each handler's features as probed on this host; the default is runc.
    for (handler, binary) in [("", "runc"), ("crun", "/usr/bin/crun"), ("runc", "runc")] {
        let probed = berth_runtime::features::probe(std::path::Path::new(binary));
        let reported = status
            .runtime_handlers
            .iter()
            .find(|h| h.name == handler)
            .and_then(|h| h.features)
            .unwrap();
        assert_eq!(
            (
                reported.user_namespaces,
                reported.recursive_read_only_mounts
            ),
            (probed.user_namespaces, probed.recursive_read_only_mounts),
            "{handler:?}"
        );
    }
}

#[tokio::test]
async fn runtime_config_reports_cgroupfs() {
    let berthd = Berthd::start().await;
    let config = berthd
        .runtime()
        .await
        .runtime_config(RuntimeConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        config.linux.unwrap().cgroup_driver(),
        CgroupDriver::Cgroupfs
    );
}

#[tokio::test]
async fn checkpoint_checks_its_request_before_anything_else() {
    let berthd = Berthd::start().await;
    let mut client = berthd.runtime().await;
    let err = client
        .checkpoint_container(CheckpointContainerRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("container_id"), "{}", err.message());
    let err = client
        .checkpoint_container(CheckpointContainerRequest {
            container_id: "f".repeat(64),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{}", err.message());
}

#[tokio::test]
async fn socket_is_owner_and_group_only() {
    let berthd = Berthd::start().await;
    let meta = std::fs::metadata(berthd.socket()).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
}

#[test]
fn bad_config_file_is_refused_naming_file_and_key() {
    let paths = Paths::create();
    let output = command(
        &paths,
        &Options {
            config: "log_level = \"info\"\n[runtimes.runc]\npath = \"runc\"\nengine = \"x\"\n"
                .into(),
            ..Options::default()
        },
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .output()
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(paths.config_file().to_str().unwrap()),
        "{stderr}"
    );
    assert!(stderr.contains("runtimes.runc"), "{stderr}");
    assert!(stderr.contains("unknown field `engine`"), "{stderr}");
    assert!(stderr.contains("expected `path`"), "{stderr}");
    assert!(!paths.socket().exists(), "a refused config must not listen");
}

#[test]
fn bad_drop_in_value_is_refused_naming_the_drop_in() {
    let paths = Paths::create();
    let drop_ins = paths.dir().join("berth.d");
    std::fs::create_dir(&drop_ins).unwrap();
    std::fs::write(drop_ins.join("10-format.toml"), "log_format = \"yaml\"\n").unwrap();
    let output = command(&paths, &Options::default()).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("10-format.toml"), "{stderr}");
    assert!(stderr.contains("log_format"), "{stderr}");
    assert!(stderr.contains("`json`"), "{stderr}");
}

#[test]
fn config_subcommand_prints_the_effective_config() {
    let paths = Paths::create();
    let output = command(
        &paths,
        &Options {
            config: "log_level = \"debug\"\n".into(),
            args: vec!["config".into()],
            ..Options::default()
        },
    )
    .output()
    .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("log_level = \"debug\""), "{stdout}");
    assert!(
        stdout.contains(&format!("root = \"{}\"", paths.root().display())),
        "{stdout}"
    );
    assert!(stdout.contains("[runtimes.runc]"), "{stdout}");
    assert!(!paths.socket().exists(), "`config` must not start serving");
}

#[tokio::test]
async fn sigterm_stops_cleanly_and_removes_the_socket() {
    let berthd = Berthd::start().await;
    let socket = berthd.socket().to_path_buf();
    let (status, _paths) = berthd.stop_with(Signal::SIGTERM).await;
    assert!(status.success(), "exit status {status}");
    assert!(!socket.exists(), "socket left behind");
}

#[tokio::test]
async fn sigint_stops_cleanly_too() {
    let berthd = Berthd::start().await;
    let (status, paths) = berthd.stop_with(Signal::SIGINT).await;
    assert!(status.success(), "exit status {status}");
    assert!(!paths.socket().exists());
}

#[tokio::test]
async fn second_instance_on_the_same_socket_is_refused() {
    let first = Berthd::start().await;
    let other = Paths::create();
    let output = command(
        &other,
        &Options {
            socket: Some(first.socket().to_path_buf()),
            ..Options::default()
        },
    )
    .output()
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("another berthd"), "{stderr}");
    assert!(
        stderr.contains(first.socket().to_str().unwrap()),
        "{stderr}"
    );
    // The first one is undisturbed.
    first
        .runtime()
        .await
        .version(VersionRequest::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn second_instance_on_the_same_root_is_refused() {
    let first = Berthd::start().await;
    let output = command(
        first.paths(),
        &Options {
            socket: Some(first.paths().dir().join("other.sock")),
            ..Options::default()
        },
    )
    .output()
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("state root"), "{stderr}");
    assert!(!first.paths().dir().join("other.sock").exists());
}

#[tokio::test]
async fn stale_socket_is_replaced() {
    let paths = Paths::create();
    std::fs::create_dir_all(paths.run_root()).unwrap();
    // Bound and closed: the file stays, nobody listens (a crashed daemon).
    drop(UnixListener::bind(paths.socket()).unwrap());
    assert!(paths.socket().exists());
    let berthd = Berthd::start_in(paths, Options::default()).await;
    berthd
        .runtime()
        .await
        .version(VersionRequest::default())
        .await
        .unwrap();
}

#[test]
fn a_live_foreign_socket_is_not_replaced() {
    let paths = Paths::create();
    std::fs::create_dir_all(paths.run_root()).unwrap();
    let _foreign = UnixListener::bind(paths.socket()).unwrap();
    let output = command(&paths, &Options::default()).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("already listening"), "{stderr}");
    assert!(paths.socket().exists());
}

#[tokio::test]
async fn notifies_systemd_when_ready() {
    let paths = Paths::create();
    let notify_path = paths.dir().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let berthd = Berthd::start_in(
        paths,
        Options {
            env: vec![("NOTIFY_SOCKET".into(), notify_path.to_str().unwrap().into())],
            ..Options::default()
        },
    )
    .await;
    let mut buf = [0u8; 64];
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    let (status, _paths) = berthd.stop_with(Signal::SIGTERM).await;
    assert!(status.success(), "{status}");
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
}

#[tokio::test]
async fn json_logs_trace_each_rpc_with_latency_and_code() {
    let berthd = Berthd::start_with(Options {
        args: vec![
            "--log-format".into(),
            "json".into(),
            "--log-level".into(),
            "debug".into(),
        ],
        ..Options::default()
    })
    .await;
    let mut client = berthd.runtime().await;
    client.version(VersionRequest::default()).await.unwrap();
    client
        .checkpoint_container(CheckpointContainerRequest::default())
        .await
        .unwrap_err();
    client
        .container_status(ContainerStatusRequest {
            container_id: "feedbeef".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    client
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: "cafe".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    let (status, paths) = berthd.stop_with(Signal::SIGTERM).await;
    assert!(status.success());
    let log = std::fs::read_to_string(paths.log_file()).unwrap();
    let records: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let rpc = |name: &str| {
        records
            .iter()
            .find(|r| r["span"]["rpc"] == name)
            .unwrap_or_else(|| panic!("no record for {name} in {log}"))
            .clone()
    };
    let version = rpc("Version");
    assert_eq!(version["code"], "Ok");
    assert!(version["latency_us"].is_u64());
    let run = rpc("CheckpointContainer");
    assert_eq!(run["code"], "InvalidArgument");
    assert!(run["latency_us"].is_u64());
    // Each RPC's records carry the IDs it names.
    let status = rpc("ContainerStatus");
    assert_eq!(status["code"], "NotFound");
    assert_eq!(status["span"]["container_id"], "feedbeef", "{status}");
    assert_eq!(rpc("PodSandboxStatus")["span"]["pod_id"], "cafe");
}
