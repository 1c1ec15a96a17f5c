//! An NRI plugin for Berth's tests, over berth-nri's stub. What it does is
//! set by a JSON behaviour: the `--behaviour FILE` it is started with, or,
//! started by berthd from its plugin dir, the configuration berthd passes
//! in Configure. Every request it gets is appended to the behaviour's
//! `log` as a JSON line.
//!
//! Behaviour keys: `log` (path), `events` (names to subscribe to; none:
//! all), `fail` (event: error message), `hang` and `crash` (event names),
//! `reject` (a validator's reason), `adjust` (what CreateContainer asks:
//! `env`, `annotations`, `args`, `mounts`, `rlimits`, `hooks`, `devices`,
//! `sysctl`, `memory_limit`, `cpu_shares`, `cpuset_cpus`, `pids_limit`,
//! `oom_score_adj`, `cdi_devices`), and `slow_ms` (event: delay).
//!
//! Usage: nri-test-plugin [--socket PATH] [--name NAME] [--idx NN] [--behaviour FILE]

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_nri::api;
use berth_nri::stub::{self, Connection, Plugin};
use prost::Message;
use serde_json::{Value, json};

struct TestPlugin {
    behaviour: Mutex<Value>,
}

fn names(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn event_number(name: &str) -> Option<u32> {
    api::Event::from_str_name(name)
        .or_else(|| {
            let upper: String = name
                .chars()
                .flat_map(|c| {
                    let sep = c.is_ascii_uppercase().then_some('_');
                    sep.into_iter()
                        .chain(std::iter::once(c.to_ascii_uppercase()))
                })
                .collect();
            api::Event::from_str_name(upper.trim_start_matches('_'))
        })
        .map(|e| e as u32)
}

fn pod_json(pod: Option<&api::PodSandbox>) -> Value {
    pod.map(|p| {
        json!({
            "id": p.id, "name": p.name, "uid": p.uid, "namespace": p.namespace,
            "labels": p.labels, "annotations": p.annotations, "ips": p.ips,
            "pid": p.pid, "runtime_handler": p.runtime_handler,
        })
    })
    .unwrap_or(Value::Null)
}

fn container_json(c: Option<&api::Container>) -> Value {
    c.map(|c| {
        json!({
            "id": c.id, "pod": c.pod_sandbox_id, "name": c.name, "state": c.state,
            "labels": c.labels, "annotations": c.annotations, "args": c.args,
            "env": c.env, "pid": c.pid,
            "memory_limit": c.linux.as_ref().and_then(|l| l.resources.as_ref())
                .and_then(|r| r.memory.as_ref()).and_then(|m| m.limit).map(|l| l.value),
        })
    })
    .unwrap_or(Value::Null)
}

fn adjustment(spec: &Value) -> api::ContainerAdjustment {
    let strings = |v: &Value| -> HashMap<String, String> {
        v.as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut adjust = api::ContainerAdjustment {
        annotations: strings(&spec["annotations"]),
        env: strings(&spec["env"])
            .into_iter()
            .map(|(key, value)| api::KeyValue { key, value })
            .collect(),
        args: names(&spec["args"]),
        cdi_devices: names(&spec["cdi_devices"])
            .into_iter()
            .map(|name| api::CdiDevice { name })
            .collect(),
        ..Default::default()
    };
    for m in spec["mounts"].as_array().into_iter().flatten() {
        adjust.mounts.push(api::Mount {
            destination: m["destination"].as_str().unwrap_or_default().into(),
            r#type: m["type"].as_str().unwrap_or("bind").into(),
            source: m["source"].as_str().unwrap_or_default().into(),
            options: names(&m["options"]),
        });
    }
    for r in spec["rlimits"].as_array().into_iter().flatten() {
        adjust.rlimits.push(api::PosixRlimit {
            r#type: r["type"].as_str().unwrap_or_default().into(),
            hard: r["hard"].as_u64().unwrap_or_default(),
            soft: r["soft"].as_u64().unwrap_or_default(),
        });
    }
    if let Some(hooks) = spec["hooks"].as_object() {
        let hook = |v: &Value| api::Hook {
            path: v["path"].as_str().unwrap_or_default().into(),
            args: names(&v["args"]),
            ..Default::default()
        };
        let list = |key: &str| {
            hooks
                .get(key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(hook)
                .collect()
        };
        adjust.hooks = Some(api::Hooks {
            prestart: list("prestart"),
            create_runtime: list("create_runtime"),
            create_container: list("create_container"),
            start_container: list("start_container"),
            poststart: list("poststart"),
            poststop: list("poststop"),
        });
    }
    let mut linux = api::LinuxContainerAdjustment {
        sysctl: strings(&spec["sysctl"]),
        ..Default::default()
    };
    for d in spec["devices"].as_array().into_iter().flatten() {
        linux.devices.push(api::LinuxDevice {
            path: d["path"].as_str().unwrap_or_default().into(),
            r#type: d["type"].as_str().unwrap_or("c").into(),
            major: d["major"].as_i64().unwrap_or_default(),
            minor: d["minor"].as_i64().unwrap_or_default(),
            file_mode: d["file_mode"].as_u64().map(|value| api::OptionalFileMode {
                value: value as u32,
            }),
            ..Default::default()
        });
    }
    linux.oom_score_adj = spec["oom_score_adj"]
        .as_i64()
        .map(|value| api::OptionalInt { value });
    let mut resources = api::LinuxResources::default();
    if let Some(value) = spec["memory_limit"].as_i64() {
        resources.memory = Some(api::LinuxMemory {
            limit: Some(api::OptionalInt64 { value }),
            ..Default::default()
        });
    }
    let shares = spec["cpu_shares"].as_u64();
    let cpus = spec["cpuset_cpus"].as_str();
    if shares.is_some() || cpus.is_some() {
        resources.cpu = Some(api::LinuxCpu {
            shares: shares.map(|value| api::OptionalUInt64 { value }),
            cpus: cpus.unwrap_or_default().into(),
            ..Default::default()
        });
    }
    resources.pids = spec["pids_limit"]
        .as_i64()
        .map(|limit| api::LinuxPids { limit });
    if resources != api::LinuxResources::default() {
        linux.resources = Some(resources);
    }
    if linux != api::LinuxContainerAdjustment::default() {
        adjust.linux = Some(linux);
    }
    adjust
}

impl TestPlugin {
    fn log(&self, entry: Value) {
        let behaviour = self.behaviour.lock().unwrap();
        if let Some(path) = behaviour["log"].as_str() {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap();
            // One write per line, so a reader never sees half of one.
            file.write_all(format!("{entry}\n").as_bytes()).unwrap();
        }
    }
}

#[async_trait::async_trait]
impl Plugin for TestPlugin {
    async fn handle(&self, method: &'static str, request: Vec<u8>) -> Result<Vec<u8>, String> {
        if method == "Configure" {
            let configure: api::ConfigureRequest = stub::decode(method, &request)?;
            if !configure.config.is_empty() {
                *self.behaviour.lock().unwrap() = serde_json::from_str(&configure.config)
                    .map_err(|e| format!("bad behaviour in the configuration: {e}"))?;
            }
            self.log(json!({"event": method, "runtime": configure.runtime_name,
                "request_timeout": configure.request_timeout}));
            let events = names(&self.behaviour.lock().unwrap()["events"])
                .iter()
                .filter_map(|n| event_number(n))
                .fold(0i32, |mask, e| mask | (1 << (e - 1)));
            return Ok(api::ConfigureResponse { events }.encode_to_vec());
        }
        // Every event request is (pod = 1, container = 2) on the wire,
        // except StateChange (event = 1, pod = 2, container = 3) and
        // Synchronize.
        let (event, pod, container) = match method {
            "Synchronize" => {
                let sync: api::SynchronizeRequest = stub::decode(method, &request)?;
                self.log(json!({"event": method,
                    "pods": sync.pods.iter().map(|p| p.id.clone()).collect::<Vec<_>>(),
                    "containers": sync.containers.iter().map(|c| c.id.clone()).collect::<Vec<_>>()}));
                return Ok(api::SynchronizeResponse {
                    more: sync.more,
                    ..Default::default()
                }
                .encode_to_vec());
            }
            "StateChange" => {
                let change: api::StateChangeEvent = stub::decode(method, &request)?;
                let name = api::Event::try_from(change.event)
                    .map(|e| e.as_str_name())
                    .unwrap_or("UNKNOWN");
                (format!("StateChange:{name}"), change.pod, change.container)
            }
            "Shutdown" => return Ok(api::Empty {}.encode_to_vec()),
            _ => {
                let pair: api::PostCreateContainerRequest = stub::decode(method, &request)?;
                (method.to_string(), pair.pod, pair.container)
            }
        };
        self.log(json!({"event": event, "pod": pod_json(pod.as_ref()),
            "container": container_json(container.as_ref())}));
        let behaviour = self.behaviour.lock().unwrap().clone();
        if let Some(ms) = behaviour["slow_ms"][method].as_u64() {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if names(&behaviour["crash"]).iter().any(|n| n == method) {
            std::process::exit(3);
        }
        if names(&behaviour["hang"]).iter().any(|n| n == method) {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        if let Some(message) = behaviour["fail"][method].as_str() {
            return Err(message.to_string());
        }
        Ok(match method {
            "CreateContainer" => api::CreateContainerResponse {
                adjust: behaviour.get("adjust").map(adjustment),
                ..Default::default()
            }
            .encode_to_vec(),
            "ValidateContainerAdjustment" => {
                let reason = behaviour["reject"].as_str();
                api::ValidateContainerAdjustmentResponse {
                    reject: reason.is_some(),
                    reason: reason.unwrap_or_default().into(),
                }
                .encode_to_vec()
            }
            "UpdateContainer" => api::UpdateContainerResponse::default().encode_to_vec(),
            "StopContainer" => api::StopContainerResponse::default().encode_to_vec(),
            "UpdatePodSandbox" => api::UpdatePodSandboxResponse::default().encode_to_vec(),
            _ => api::Empty {}.encode_to_vec(),
        })
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut socket = PathBuf::from("/var/run/nri/nri.sock");
    let mut name = std::env::var("NRI_PLUGIN_NAME").unwrap_or_else(|_| "test".into());
    let mut idx = std::env::var("NRI_PLUGIN_IDX").unwrap_or_else(|_| "50".into());
    let mut behaviour = Value::Object(Default::default());
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--socket" => socket = value.into(),
            "--name" => name = value,
            "--idx" => idx = value,
            "--behaviour" => {
                let text = std::fs::read_to_string(&value).unwrap();
                behaviour = serde_json::from_str(&text).unwrap();
            }
            other => panic!("unknown flag {other}"),
        }
    }
    let stream = stub::socket(&socket).await.expect("connect to the runtime");
    let plugin = Arc::new(TestPlugin {
        behaviour: Mutex::new(behaviour),
    });
    let connection = Connection::register(stream, &name, &idx, plugin)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    connection.closed().await;
}
