//! A client of the CNI specification (0.4.0, 1.0.0, 1.1.0): network config
//! lists, plugin execution, results, and the on-disk cache that lets DEL
//! replay exactly what ADD used.

pub mod config;
mod exec;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tracing::Instrument;

pub use config::{ConfigError, NetworkConfigList};
pub use exec::ExecError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("network not ready: {0}")]
    NotReady(String),
    #[error("network {network}: {source}")]
    Exec {
        network: String,
        #[source]
        source: ExecError,
    },
    /// ADD failed, and the DEL run to undo it failed too.
    #[error("{add}; cleaning up with DEL also failed: {del}")]
    AddThenDel { add: Box<Error>, del: Box<Error> },
    #[error("CNI cache {path}: {message}")]
    Cache { path: PathBuf, message: String },
}

/// Where berthd finds networks and plugins.
#[derive(Debug, Clone)]
pub struct Options {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
    /// The result cache (persistent: DEL needs it after a restart).
    pub cache_dir: PathBuf,
    pub plugin_timeout: Duration,
}

/// One attachment of a pod to the network.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    /// `CNI_ARGS` pairs, after `IgnoreUnknown=1`.
    pub args: Vec<(String, String)>,
    /// Capability arguments by name (`portMappings`, `bandwidth`, ...); each
    /// plugin gets only those it declares in its `capabilities`.
    pub capabilities: Map<String, Value>,
}

impl Attachment {
    fn cni_args(&self) -> String {
        std::iter::once("IgnoreUnknown=1".to_string())
            .chain(self.args.iter().map(|(k, v)| format!("{k}={v}")))
            .collect::<Vec<_>>()
            .join(";")
    }
}

/// What ADD gave the pod.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Added {
    pub network: String,
    /// Pod-side addresses, IPv4 first (the kubelet takes the first as primary).
    pub ips: Vec<IpAddr>,
    /// The final result, as the last plugin returned it.
    pub result: Value,
}

/// The exact config and result of one ADD, kept until DEL succeeds.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CacheEntry {
    kind: String,
    container_id: String,
    if_name: String,
    network_name: String,
    netns: PathBuf,
    config_source: PathBuf,
    config: String,
    cni_args: Vec<(String, String)>,
    capability_args: Map<String, Value>,
    /// Null while ADD has not finished: a crash then still leaves DEL the config.
    result: Value,
}

impl CacheEntry {
    /// The attachment as ADD made it (its args and capabilities), in the
    /// netns the caller names now.
    fn attachment(self, now: &Attachment) -> Attachment {
        Attachment {
            container_id: self.container_id,
            netns: now.netns.clone(),
            ifname: self.if_name,
            args: self.cni_args,
            capabilities: self.capability_args,
        }
    }
}

const CACHE_KIND: &str = "berthCniCacheV1";

/// The CNI client: holds the currently loaded network, refreshed by
/// [`Cni::reload`] (which [`Cni::watch`] calls periodically).
pub struct Cni {
    options: Options,
    current: RwLock<Result<Arc<NetworkConfigList>, String>>,
}

impl Cni {
    /// Start-up: also removes the temp files of cache writes a crash cut
    /// short (nothing else writes the cache yet).
    pub fn new(options: Options) -> Arc<Cni> {
        remove_temp_files(&options.cache_dir);
        let cni = Arc::new(Cni {
            options,
            current: RwLock::new(Err(String::new())),
        });
        cni.reload();
        cni
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Re-reads the conf dir; logs when the chosen network changes.
    pub fn reload(&self) {
        let loaded = config::load_dir(&self.options.conf_dir)
            .map(Arc::new)
            .map_err(|err| err.to_string());
        let mut current = berth_host::sync::write(&self.current);
        let changed = match (&*current, &loaded) {
            (Ok(old), Ok(new)) => old.bytes != new.bytes || old.source != new.source,
            (Err(old), Err(new)) => old != new,
            _ => true,
        };
        if changed {
            match &loaded {
                Ok(list) => tracing::info!(
                    network = %list.name,
                    file = %list.source.display(),
                    "CNI network config loaded"
                ),
                Err(err) => tracing::warn!("{err}"),
            }
            *current = loaded;
        }
    }

    /// Polls the conf dir every `interval` until the runtime shuts down, so
    /// a config dropped in later makes the network ready without a restart.
    pub fn watch(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let cni = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let c = Arc::clone(&cni);
                let _ = tokio::task::spawn_blocking(move || c.reload()).await;
            }
        })
    }

    /// The loaded network, or why there is none.
    pub fn network(&self) -> Result<Arc<NetworkConfigList>, Error> {
        berth_host::sync::read(&self.current)
            .clone()
            .map_err(Error::NotReady)
    }

    fn cache_path(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.options
            .cache_dir
            .join(format!("{container_id}-{ifname}.json"))
    }

    /// ADD through the whole chain. On failure the chain is DELeted again
    /// so no address, veth or rule is left behind, and the cache is gone.
    pub async fn add(&self, att: &Attachment) -> Result<Added, Error> {
        let list = self.network()?;
        let cache = self.cache_path(&att.container_id, &att.ifname);
        let mut entry = CacheEntry {
            kind: CACHE_KIND.into(),
            container_id: att.container_id.clone(),
            if_name: att.ifname.clone(),
            network_name: list.name.clone(),
            netns: att.netns.clone(),
            config_source: list.source.clone(),
            config: String::from_utf8_lossy(&list.bytes).into_owned(),
            cni_args: att.args.clone(),
            capability_args: att.capabilities.clone(),
            result: Value::Null,
        };
        entry = write_cache(cache.clone(), entry).await?;
        match self.add_chain(&list, att).await {
            Ok(result) => {
                entry.result = result.clone();
                write_cache(cache, entry).await?;
                Ok(Added {
                    network: list.name.clone(),
                    ips: pod_ips(&result),
                    result,
                })
            }
            Err(add) => match self.del_chain(&list, att, None).await {
                Ok(()) => {
                    remove_cache(&cache)?;
                    Err(add)
                }
                Err(del) => Err(Error::AddThenDel {
                    add: Box::new(add),
                    del: Box::new(del),
                }),
            },
        }
    }

    async fn add_chain(&self, list: &NetworkConfigList, att: &Attachment) -> Result<Value, Error> {
        let mut prev: Option<Value> = None;
        for index in 0..list.plugins.len() {
            let out = self
                .invoke(list, index, "ADD", att, prev.as_ref())
                .instrument(berth_host::step!("cni_plugin"))
                .await?;
            let result: Value = serde_json::from_slice(&out).map_err(|err| Error::Exec {
                network: list.name.clone(),
                source: ExecError::BadResult {
                    plugin: list.plugin_type(index).to_string(),
                    command: "ADD",
                    message: err.to_string(),
                },
            })?;
            prev = Some(result);
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// DEL with the config and result ADD cached; with the current config
    /// when there is no cache (as libcni does). Succeeds when neither exists.
    pub async fn del(&self, att: &Attachment) -> Result<(), Error> {
        let cache = self.cache_path(&att.container_id, &att.ifname);
        match read_cache(&cache)? {
            Some(entry) => {
                let list =
                    NetworkConfigList::from_cached(&entry.config_source, entry.config.as_bytes())
                        .map_err(|message| Error::Cache {
                        path: cache.clone(),
                        message,
                    })?;
                let prev = (!entry.result.is_null()).then_some(entry.result.clone());
                let cached = entry.attachment(att);
                self.del_chain(&list, &cached, prev.as_ref()).await?;
                remove_cache(&cache)
            }
            None => match self.network() {
                Ok(list) => self.del_chain(&list, att, None).await,
                Err(_) => Ok(()),
            },
        }
    }

    async fn del_chain(
        &self,
        list: &NetworkConfigList,
        att: &Attachment,
        prev: Option<&Value>,
    ) -> Result<(), Error> {
        // Every plugin gets its DEL even when an earlier one failed; the
        // first error is reported. A plugin that cannot be found is skipped:
        // nothing can undo its work, and failing would make the pod
        // impossible to remove.
        let mut first_error = None;
        for index in (0..list.plugins.len()).rev() {
            match self.invoke(list, index, "DEL", att, prev).await {
                Ok(_) => {}
                Err(Error::Exec {
                    source: ExecError::NotFound { plugin, .. },
                    ..
                }) => {
                    tracing::warn!(network = %list.name, "DEL skips missing CNI plugin {plugin:?}")
                }
                Err(err) => {
                    if first_error.is_none() {
                        first_error = Some(err);
                    }
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// CHECK with the cached result; Ok(None) when there is nothing to check
    /// (no cache, or the network disables CHECK).
    pub async fn check(&self, att: &Attachment) -> Result<Option<()>, Error> {
        let cache = self.cache_path(&att.container_id, &att.ifname);
        let Some(entry) = read_cache(&cache)? else {
            return Ok(None);
        };
        if entry.result.is_null() {
            return Ok(None);
        }
        let list = NetworkConfigList::from_cached(&entry.config_source, entry.config.as_bytes())
            .map_err(|message| Error::Cache {
                path: cache.clone(),
                message,
            })?;
        if !list.supports_check() {
            return Ok(None);
        }
        let result = entry.result.clone();
        let cached = entry.attachment(att);
        for index in 0..list.plugins.len() {
            self.invoke(&list, index, "CHECK", &cached, Some(&result))
                .await?;
        }
        Ok(Some(()))
    }

    /// Whether an ADD was started for the attachment and not yet undone by
    /// a successful DEL (the cache entry is written before ADD runs).
    pub fn attached(&self, container_id: &str, ifname: &str) -> bool {
        self.cache_path(container_id, ifname).exists()
    }

    /// Drops the cache entry of an attachment that will never be DELeted.
    pub fn forget(&self, container_id: &str, ifname: &str) -> Result<(), Error> {
        remove_cache(&self.cache_path(container_id, ifname))
    }

    /// The cached ADD result of an attachment, if any.
    pub fn cached(&self, container_id: &str, ifname: &str) -> Result<Option<Added>, Error> {
        let cache = self.cache_path(container_id, ifname);
        Ok(read_cache(&cache)?
            .filter(|entry| !entry.result.is_null())
            .map(|entry| Added {
                network: entry.network_name,
                ips: pod_ips(&entry.result),
                result: entry.result,
            }))
    }

    async fn invoke(
        &self,
        list: &NetworkConfigList,
        index: usize,
        command: &'static str,
        att: &Attachment,
        prev: Option<&Value>,
    ) -> Result<Vec<u8>, Error> {
        let exec_err = |source| Error::Exec {
            network: list.name.clone(),
            source,
        };
        let plugin =
            exec::find_plugin(list.plugin_type(index), &self.options.bin_dirs).map_err(exec_err)?;
        let config = plugin_config(list, index, &att.capabilities, prev);
        let args = att.cni_args();
        let inv = exec::Invocation {
            command,
            container_id: &att.container_id,
            netns: &att.netns,
            ifname: &att.ifname,
            args: &args,
            bin_dirs: &self.options.bin_dirs,
            timeout: self.options.plugin_timeout,
        };
        exec::run(&plugin, &config, &inv).await.map_err(exec_err)
    }
}

/// The stdin of one plugin: its own object plus the list's name and
/// version, the capability arguments it declared, and the previous result.
fn plugin_config(
    list: &NetworkConfigList,
    index: usize,
    capabilities: &Map<String, Value>,
    prev: Option<&Value>,
) -> Vec<u8> {
    let mut config = list.plugins[index].clone();
    config.insert("name".into(), Value::String(list.name.clone()));
    config.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
    let mut runtime_config = Map::new();
    if let Some(Value::Object(declared)) = list.plugins[index].get("capabilities") {
        for (key, enabled) in declared {
            if enabled.as_bool() == Some(true)
                && let Some(value) = capabilities.get(key)
            {
                runtime_config.insert(key.clone(), value.clone());
            }
        }
    }
    if !runtime_config.is_empty() {
        config.insert("runtimeConfig".into(), Value::Object(runtime_config));
    }
    if let Some(prev) = prev {
        config.insert("prevResult".into(), prev.clone());
    }
    serde_json::to_vec(&Value::Object(config)).expect("JSON values serialize")
}

/// Addresses on interfaces inside the sandbox (or not tied to any
/// interface), IPv4 before IPv6.
pub fn pod_ips(result: &Value) -> Vec<IpAddr> {
    let interfaces = result.get("interfaces").and_then(Value::as_array);
    let in_sandbox = |index: u64| {
        interfaces
            .and_then(|list| list.get(index as usize))
            .and_then(|iface| iface.get("sandbox"))
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
    };
    let mut ips: Vec<IpAddr> = result
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|ip| {
            ip.get("interface")
                .and_then(Value::as_u64)
                .is_none_or(in_sandbox)
        })
        .filter_map(|ip| ip.get("address").and_then(Value::as_str))
        .filter_map(|cidr| cidr.split('/').next()?.parse().ok())
        .collect();
    ips.sort_by_key(|ip| ip.is_ipv6());
    ips
}

/// Writes the cache entry durably, off the async workers (its fsyncs must
/// not stall other RPCs); hands the entry back.
async fn write_cache(path: PathBuf, entry: CacheEntry) -> Result<CacheEntry, Error> {
    let bytes = serde_json::to_vec(&entry).expect("cache entries serialize");
    let (written, step) = (path.clone(), berth_host::step!("cni_cache"));
    tokio::task::spawn_blocking(move || step.in_scope(|| atomic_write(&written, &bytes)))
        .await
        .unwrap_or_else(|err| Err(std::io::Error::other(err)))
        .map_err(|err| Error::Cache {
            path,
            message: err.to_string(),
        })?;
    Ok(entry)
}

fn read_cache(path: &Path) -> Result<Option<CacheEntry>, Error> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            return Err(Error::Cache {
                path: path.to_path_buf(),
                message: err.to_string(),
            });
        }
    };
    let entry: CacheEntry = serde_json::from_slice(&bytes).map_err(|err| Error::Cache {
        path: path.to_path_buf(),
        message: err.to_string(),
    })?;
    if entry.kind != CACHE_KIND {
        return Err(Error::Cache {
            path: path.to_path_buf(),
            message: format!("unknown cache kind {:?}", entry.kind),
        });
    }
    Ok(Some(entry))
}

fn remove_cache(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(Error::Cache {
            path: path.to_path_buf(),
            message: err.to_string(),
        }),
    }
}

fn remove_temp_files(dir: &Path) {
    if let Err(err) = berth_host::atomic::remove_temporaries(dir) {
        tracing::warn!("cannot remove temporary files in {}: {err}", dir.display());
    }
}

/// Durable, and root only: a cached config carries the pod's annotations.
fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    berth_host::atomic::write_private(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_ips_keep_sandbox_addresses_ipv4_first() {
        let result = serde_json::json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa"},
                {"name": "veth1", "mac": "bb"},
                {"name": "eth0", "mac": "cc", "sandbox": "/run/netns/x"}
            ],
            "ips": [
                {"address": "fd00::5/64", "interface": 2},
                {"address": "10.85.0.5/16", "gateway": "10.85.0.1", "interface": 2},
                {"address": "10.85.0.1/16", "interface": 0}
            ]
        });
        let ips = pod_ips(&result);
        assert_eq!(
            ips,
            vec![
                "10.85.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
    }

    #[test]
    fn plugins_get_only_declared_capabilities_and_prev_result() {
        let list = NetworkConfigList::parse(
            Path::new("x.conflist"),
            br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true,"bandwidth":false}}]}"#,
            false,
        )
        .unwrap();
        let mut caps = Map::new();
        caps.insert("portMappings".into(), serde_json::json!([{"hostPort": 80}]));
        caps.insert("bandwidth".into(), serde_json::json!({"ingressRate": 1}));
        let first: Value = serde_json::from_slice(&plugin_config(&list, 0, &caps, None)).unwrap();
        assert_eq!(first["name"], "n");
        assert_eq!(first["cniVersion"], "1.0.0");
        assert!(first.get("runtimeConfig").is_none());
        let prev = serde_json::json!({"ips": []});
        let second: Value =
            serde_json::from_slice(&plugin_config(&list, 1, &caps, Some(&prev))).unwrap();
        assert_eq!(second["runtimeConfig"]["portMappings"][0]["hostPort"], 80);
        assert!(second["runtimeConfig"].get("bandwidth").is_none());
        assert_eq!(second["prevResult"], prev);
    }

    #[test]
    fn start_up_removes_temp_files_a_crash_left_in_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("results");
        std::fs::create_dir_all(&cache).unwrap();
        std::fs::write(cache.join(".a-eth0.json.tmp77-3"), "{\"kind\"").unwrap();
        std::fs::write(cache.join("b-eth0.json"), "{}").unwrap();
        Cni::new(Options {
            conf_dir: dir.path().join("net.d"),
            bin_dirs: Vec::new(),
            cache_dir: cache.clone(),
            plugin_timeout: Duration::from_secs(1),
        });
        let mut left: Vec<_> = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["b-eth0.json"]);
    }

    #[test]
    fn cni_args_start_with_ignore_unknown() {
        let att = Attachment {
            container_id: "c".into(),
            netns: "/n".into(),
            ifname: "eth0".into(),
            args: vec![("K8S_POD_NAME".into(), "p".into())],
            capabilities: Map::new(),
        };
        assert_eq!(att.cni_args(), "IgnoreUnknown=1;K8S_POD_NAME=p");
    }
}
