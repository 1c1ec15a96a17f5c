//! The Prometheus endpoint, SIGHUP config reload and `Status` verbose,
//! against the real berthd binary, a real registry on loopback and real pods.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_e2e::cri::runtime_service_client::RuntimeServiceClient;
use berth_e2e::cri::{
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest, RunPodSandboxRequest,
    StatusRequest, StopPodSandboxRequest, VersionRequest,
};
use berth_e2e::registry::{self, Registry, Security};
use berth_e2e::{Berthd, Options, can_run, is_root};
use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::transport::Channel;

type Runtime = RuntimeServiceClient<Channel>;

fn ready() -> bool {
    can_run(
        is_root() && registry::available(),
        "root (pod namespaces, layer owners) and docker-registry, skopeo, jq, zstd, openssl, htpasswd",
    )
}

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A CNI conf dir with one network: pods here use the host network, so no
/// plugin runs, but `Status` reports the config.
fn cni_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("10-metrics.conflist"),
        r#"{"cniVersion": "1.0.0", "name": "metrics-net", "plugins": [
             {"type": "bridge", "bridge": "bm0", "ipam": {"type": "host-local",
              "ranges": [[{"subnet": "10.250.0.0/24"}]]}},
             {"type": "portmap", "capabilities": {"portMappings": true}}]}"#,
    )
    .unwrap();
    dir
}

struct Setup {
    berthd: Berthd,
    port: u16,
    registries: PathBuf,
    cni: tempfile::TempDir,
    _dir: tempfile::TempDir,
}

impl Setup {
    /// berthd with metrics on, `registries` as its registries.conf and
    /// `extra` appended to its config file.
    async fn start(registries: &str, extra: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("registries.conf");
        std::fs::write(&conf, registries).unwrap();
        let cni = cni_dir();
        let port = free_port();
        let berthd = Berthd::start_with(Options {
            config: config_text(&conf, cni.path(), port, extra),
            ..Options::default()
        })
        .await;
        Setup {
            berthd,
            port,
            registries: conf,
            cni,
            _dir: dir,
        }
    }

    fn rewrite_config(&self, extra: &str) {
        std::fs::write(
            self.berthd.paths().config_file(),
            config_text(&self.registries, self.cni.path(), self.port, extra),
        )
        .unwrap();
    }

    /// Sends SIGHUP and waits until berthd logged the outcome of this reload.
    async fn sighup(&self) {
        let outcomes = |log: &str| {
            log.matches("config reloaded").count() + log.matches("config reload failed").count()
        };
        let before = outcomes(&self.berthd.log());
        nix::sys::signal::kill(self.berthd.pid(), Signal::SIGHUP).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while outcomes(&self.berthd.log()) == before {
            assert!(
                Instant::now() < deadline,
                "no reload logged; log:\n{}",
                self.berthd.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn scrape(&self) -> String {
        let (head, body) = http_get(self.port, "/metrics").await;
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/openmetrics-text"),
            "{head}"
        );
        body
    }
}

fn config_text(registries: &Path, cni: &Path, port: u16, extra: &str) -> String {
    format!(
        "{extra}\n[image]\nregistries_config = \"{}\"\n[cni]\nconf_dir = \"{}\"\n\
         [metrics]\nenabled = true\naddress = \"127.0.0.1:{port}\"\n",
        registries.display(),
        cni.display()
    )
}

/// A plain HTTP/1.0 GET: the head and the body.
async fn http_get(port: u16, path: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

/// Samples by metric name and labels, through a Prometheus text parser.
struct Samples(prometheus_parse::Scrape);

impl Samples {
    fn parse(text: &str) -> Samples {
        let lines = text.lines().map(|l| Ok(l.to_string()));
        Samples(prometheus_parse::Scrape::parse(lines).expect("the page parses"))
    }

    /// The value of `name{labels}`; 0 when absent (a counter never incremented).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                other => panic!("{name}: not a scalar: {other:?}"),
            })
            .unwrap_or(0.0)
    }

    /// The observation count of histogram `name{labels}`.
    fn count(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.0
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Histogram(buckets) => {
                    buckets.last().map_or(0, |b| b.count as u64)
                }
                other => panic!("{name}: not a histogram: {other:?}"),
            })
            .unwrap_or(0)
    }
}

/// A host-network pod: no CNI plugin runs, so these tests need no bridge.
fn host_pod(name: &str) -> PodSandboxConfig {
    let mode = |m: NamespaceMode| m as i32;
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}-{}", std::process::id()),
            namespace: "e2e-metrics".into(),
            attempt: 0,
        }),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: mode(NamespaceMode::Node),
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

async fn run_pod(
    runtime: &mut Runtime,
    name: &str,
    handler: &str,
) -> Result<String, tonic::Status> {
    runtime
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(host_pod(name)),
            runtime_handler: handler.into(),
        })
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
}

/// The size of every blob the registry stores for `name:latest`: manifest,
/// config and layers (the fixtures are single-platform images).
fn image_blob_bytes(image: &str) -> u64 {
    let out = std::process::Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{image}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let layers: u64 = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .sum();
    out.stdout.len() as u64 + manifest["config"]["size"].as_u64().unwrap() + layers
}

#[tokio::test]
async fn metrics_count_rpcs_errors_pulls_and_pods() {
    if !ready() {
        return;
    }
    let reg = Registry::start_empty(Security::Plain);
    reg.push("layered", "berth/layered:latest");
    let setup = Setup::start(&berth_e2e::registry::insecure_conf(&reg.host()), "").await;
    let mut runtime = setup.berthd.runtime().await;
    let mut images = setup.berthd.images().await;

    // Nothing but /metrics is served.
    let (head, _) = http_get(setup.port, "/").await;
    assert!(head.contains(" 404 "), "{head}");

    runtime.version(VersionRequest::default()).await.unwrap();
    runtime.version(VersionRequest::default()).await.unwrap();
    let err = runtime
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: "f00d".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let pod = run_pod(&mut runtime, "counted", "").await.unwrap();

    berth_e2e::pull(&mut images, &reg.image("layered"))
        .await
        .unwrap();
    let err = berth_e2e::pull(&mut images, &format!("{}/berth/absent:1", reg.host()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    let page = setup.scrape().await;
    assert!(page.trim_end().ends_with("# EOF"), "{page}");
    let m = Samples::parse(&page);
    let ok = [("operation", "Version"), ("code", "Ok")];
    assert_eq!(m.value("berth_operations_total", &ok), 2.0, "{page}");
    assert_eq!(m.value("berth_operations_errors_total", &ok), 0.0);
    let not_found = [("operation", "PodSandboxStatus"), ("code", "NotFound")];
    assert_eq!(m.value("berth_operations_total", &not_found), 1.0);
    assert_eq!(m.value("berth_operations_errors_total", &not_found), 1.0);
    let pull_nf = [("operation", "PullImage"), ("code", "NotFound")];
    assert_eq!(m.value("berth_operations_errors_total", &pull_nf), 1.0);
    for (rpc, calls) in [("Version", 2), ("RunPodSandbox", 1), ("PullImage", 2)] {
        assert_eq!(
            m.count("berth_operations_latency_seconds", &[("operation", rpc)]),
            calls,
            "{rpc}: {page}"
        );
    }
    assert_eq!(m.value("berth_image_pulls_success_total", &[]), 1.0);
    assert_eq!(
        m.value("berth_image_pulls_failure_total", &[("code", "NotFound")]),
        1.0
    );
    assert_eq!(m.count("berth_image_pulls_duration_seconds", &[]), 1);
    // Exactly the registry's blobs for the image came down.
    let blobs = image_blob_bytes(&reg.image("layered"));
    assert_eq!(m.value("berth_image_pulls_bytes_total", &[]), blobs as f64);
    assert_eq!(m.value("berth_images", &[]), 1.0);
    assert_eq!(m.value("berth_pods", &[("state", "ready")]), 1.0);
    assert_eq!(m.value("berth_pods", &[("state", "notready")]), 0.0);

    // A second pull finds every layer in the store: only manifest and config come down.
    berth_e2e::pull(&mut images, &reg.image("layered"))
        .await
        .unwrap();
    runtime
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    let m = Samples::parse(&setup.scrape().await);
    let second = m.value("berth_image_pulls_bytes_total", &[]) - blobs as f64;
    assert!(
        second > 0.0 && second < 20_000.0,
        "second pull fetched {second} bytes"
    );
    assert_eq!(m.value("berth_pods", &[("state", "ready")]), 0.0);
    assert_eq!(m.value("berth_pods", &[("state", "notready")]), 1.0);
    // The scrape itself is not an RPC; the stop is.
    let stop = [("operation", "StopPodSandbox"), ("code", "Ok")];
    assert_eq!(m.value("berth_operations_total", &stop), 1.0);
    berth_e2e::stop_and_remove_pod(&mut runtime, &pod).await;
}

fn info(resp: &berth_e2e::cri::StatusResponse, key: &str) -> serde_json::Value {
    serde_json::from_str(
        resp.info
            .get(key)
            .unwrap_or_else(|| panic!("no {key}: {:?}", resp.info)),
    )
    .unwrap()
}

async fn status(runtime: &mut Runtime) -> berth_e2e::cri::StatusResponse {
    runtime
        .status(StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn sighup_applies_live_settings_and_keeps_the_old_on_a_bad_file() {
    if !ready() {
        return;
    }
    let reg = Registry::start_empty(Security::Plain);
    reg.push("layered", "berth/layered:latest");
    reg.push("layered-plus", "berth/layered-plus:latest");
    let setup = Setup::start(
        &berth_e2e::registry::insecure_conf(&reg.host()),
        "log_level = \"info\"",
    )
    .await;
    let mut runtime = setup.berthd.runtime().await;
    let mut images = setup.berthd.images().await;

    // Status verbose: the config in effect, the CNI network, the handlers.
    let resp = status(&mut runtime).await;
    let config = info(&resp, "config");
    assert_eq!(config["log_level"], "info");
    assert_eq!(config["metrics"]["enabled"], true);
    let cni = info(&resp, "cniconfig");
    assert_eq!(cni["name"], "metrics-net");
    assert_eq!(
        cni["file"],
        setup
            .cni
            .path()
            .join("10-metrics.conflist")
            .display()
            .to_string()
    );
    assert_eq!(cni["plugins"], serde_json::json!(["bridge", "portmap"]));
    assert_eq!(
        info(&resp, "runtimeHandlers"),
        serde_json::json!([{"name": "runc", "path": "runc", "default": true}])
    );
    let names = |r: &berth_e2e::cri::StatusResponse| {
        r.runtime_handlers
            .iter()
            .map(|h| h.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&resp), ["", "runc"]);
    let err = run_pod(&mut runtime, "handler", "crun").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    runtime.version(VersionRequest::default()).await.unwrap();
    assert!(
        !setup.berthd.log().contains("rpc done"),
        "debug is off at info"
    );

    // Debug logging, a new handler, a blocked repository, and a setting
    // that needs a restart.
    setup.rewrite_config(
        "log_level = \"debug\"\n[runtimes.crun]\npath = \"crun\"\n[pod]\nshm_size = 1048576\n",
    );
    std::fs::write(
        &setup.registries,
        format!(
            "{}\n[[registry]]\nprefix = \"{}/berth/layered-plus\"\nblocked = true\n",
            berth_e2e::registry::insecure_conf(&reg.host()),
            reg.host()
        ),
    )
    .unwrap();
    setup.sighup().await;
    let log = setup.berthd.log();
    assert!(log.contains(r#"log_level "info" -> "debug""#), "{log}");
    assert!(log.contains(r#"runtime handler "crun" added"#), "{log}");
    assert!(log.contains("re-read with new content"), "{log}");
    assert!(log.contains("`pod` changed but needs a restart"), "{log}");

    runtime.version(VersionRequest::default()).await.unwrap();
    assert!(setup.berthd.log().contains("rpc done"), "debug is on now");
    let err = berth_e2e::pull(&mut images, &reg.image("layered-plus"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    berth_e2e::pull(&mut images, &reg.image("layered"))
        .await
        .unwrap();
    let pod = run_pod(&mut runtime, "handler", "crun").await.unwrap();
    let resp = status(&mut runtime).await;
    assert_eq!(names(&resp), ["", "crun", "runc"]);
    assert_eq!(info(&resp, "config")["log_level"], "debug");
    // The restart-only setting keeps its running value.
    assert_eq!(info(&resp, "config")["pod"]["shm_size"], 67108864);

    // Bad files: each is named, nothing changes, berthd keeps serving.
    std::fs::write(setup.berthd.paths().config_file(), "log_level = \n").unwrap();
    setup.sighup().await;
    let config_file = setup.berthd.paths().config_file();
    let log = setup.berthd.log();
    assert!(
        log.contains(&format!(
            "config reload failed, keeping the running config: config file {}",
            config_file.display()
        )),
        "{log}"
    );
    setup.rewrite_config("log_level = \"warn\"\n[runtimes.crun]\npath = \"crun\"\n");
    std::fs::write(&setup.registries, "[[registry]\nbroken").unwrap();
    setup.sighup().await;
    let log = setup.berthd.log();
    assert!(
        log.contains(&setup.registries.display().to_string())
            && log.contains("config reload failed"),
        "{log}"
    );
    let resp = status(&mut runtime).await;
    assert_eq!(info(&resp, "config")["log_level"], "debug");
    assert_eq!(names(&resp), ["", "crun", "runc"]);
    let err = berth_e2e::pull(&mut images, &reg.image("layered-plus"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "still blocked: {err:?}");
    berth_e2e::stop_and_remove_pod(&mut runtime, &pod).await;
    let m = Samples::parse(&setup.scrape().await);
    assert_eq!(
        m.value(
            "berth_operations_total",
            &[("operation", "RunPodSandbox"), ("code", "InvalidArgument")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_taken_metrics_address_stops_start_up_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let paths = berth_e2e::Paths::create();
    let options = Options {
        config: format!("[metrics]\nenabled = true\naddress = \"{address}\"\n"),
        ..Options::default()
    };
    let out = berth_e2e::command(&paths, &options).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot listen for metrics on {address}")),
        "{stderr}"
    );
    assert!(!paths.socket().exists(), "no socket is left behind");
}
