//! berthd's configuration: built-in defaults, then the main TOML file, then
//! drop-ins in lexical order, then command-line flags.
//!
//! Every file is checked on its own first, so an unknown key or a bad value is
//! reported against the file that holds it. The layers are then merged as
//! TOML tables (tables merge key by key, anything else is replaced), which is
//! what lets a drop-in add `[runtimes.crun]` without losing `runc`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use berth_host::cgroup::Driver;
use serde::{Deserialize, Serialize};

pub const DEFAULT_CONFIG_FILE: &str = "/etc/berth/berth.toml";
pub const DEFAULT_DROP_IN_DIR: &str = "/etc/berth/berth.d";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Persistent state: images, container and pod records, CNI cache.
    pub root: PathBuf,
    /// Volatile state, lost at reboot: pinned namespaces, shim sockets, exit files.
    pub run_root: PathBuf,
    /// The CRI gRPC unix socket.
    pub listen: PathBuf,
    /// A `tracing` filter: a level (`info`) or directives (`berthd=debug,info`).
    pub log_level: String,
    pub log_format: LogFormat,
    pub cgroup_driver: CgroupDriver,
    /// The runtime handler used when a pod names none.
    pub default_runtime: String,
    /// OCI runtime handlers by name (the CRI `runtime_handler`, Kubernetes RuntimeClass).
    pub runtimes: BTreeMap<String, RuntimeHandler>,
    /// Pod networking.
    pub cni: CniConfig,
    /// Pod sandbox settings.
    pub pod: PodConfig,
    /// Container settings.
    pub container: ContainerSettings,
    /// Image pulls and the image store.
    pub image: ImageSettings,
    /// The HTTP server behind the Exec, Attach and PortForward URLs.
    pub streaming: StreamingSettings,
    /// The Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// NRI plugins.
    pub nri: NriConfig,
}

/// NRI, off by default as in CRI-O before 1.30 (defaults as CRI-O's
/// `nri_*` keys, names as containerd's NRI table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NriConfig {
    pub enable: bool,
    /// The socket plugins connect to; only root may.
    pub socket_path: PathBuf,
    /// Plugins started with berthd: `NN-name` executables.
    pub plugin_path: PathBuf,
    /// Their configuration: `NN-name.conf` or `name.conf`.
    pub plugin_config_path: PathBuf,
    /// How long a plugin has to register once connected (`5s`, `500ms`).
    pub registration_timeout: String,
    /// How long a plugin has to answer one event; one that does not is
    /// disconnected and the request goes on without it.
    pub request_timeout: String,
}

impl Default for NriConfig {
    fn default() -> Self {
        NriConfig {
            enable: false,
            socket_path: PathBuf::from("/var/run/nri/nri.sock"),
            plugin_path: PathBuf::from("/opt/nri/plugins"),
            plugin_config_path: PathBuf::from("/etc/nri/conf.d"),
            registration_timeout: "5s".into(),
            request_timeout: "2s".into(),
        }
    }
}

/// `250ms`, `5s` or `1m`: the duration forms the NRI timeouts take.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("expected a duration with a unit (ms, s, m), got {text:?}"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("expected a duration such as 2s or 500ms, got {text:?}"))?;
    let duration = match unit {
        "ms" => std::time::Duration::from_millis(n),
        "s" => std::time::Duration::from_secs(n),
        "m" => std::time::Duration::from_secs(n * 60),
        _ => return Err(format!("expected the unit ms, s or m, got {text:?}")),
    };
    if duration.is_zero() {
        return Err(format!("expected a duration above zero, got {text:?}"));
    }
    Ok(duration)
}

/// Off by default and on loopback, as CRI-O's `enable_metrics` /
/// `metrics_host` / `metrics_port`: the page names pods and images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `http://<address>/metrics`.
    pub enabled: bool,
    /// A loopback `IP:port`.
    pub address: std::net::SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: false,
            address: std::net::SocketAddr::from(([127, 0, 0, 1], 9090)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CniConfig {
    /// Where network configs are read from (first valid file in lexical order).
    pub conf_dir: PathBuf,
    /// Plugin binaries, searched in this order.
    pub bin_dirs: Vec<PathBuf>,
    /// Seconds one plugin invocation may take before it is killed.
    pub plugin_timeout: u64,
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
            plugin_timeout: 60,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PodConfig {
    /// Size of each pod's /dev/shm tmpfs, in bytes.
    pub shm_size: u64,
    /// The cgroup parent of pods whose config names none, in the driver's
    /// form; empty: the driver's default (`/berth` with cgroupfs,
    /// `system.slice` with systemd, as CRI-O's).
    pub cgroup_parent: String,
}

impl Default for PodConfig {
    fn default() -> Self {
        PodConfig {
            shm_size: 64 * 1024 * 1024,
            cgroup_parent: String::new(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContainerSettings {
    /// CRI-O's key: an unset seccomp profile means RuntimeDefault instead of
    /// unconfined (the CRI's meaning). The kubelet always names one.
    pub seccomp_use_default_when_empty: bool,
}

pub const DEFAULT_REGISTRIES_CONFIG: &str = "/etc/containers/registries.conf";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageSettings {
    /// A `containers-registries.conf(5)` v2 file: mirrors, insecure and
    /// blocked registries, short-name search. A missing file at the default
    /// path means the built-in defaults (short names search docker.io).
    pub registries_config: PathBuf,
    /// Layers one pull downloads and unpacks at once.
    pub pull_parallelism: usize,
    /// How often a registry request that failed transiently (dropped
    /// connection, 5xx, 408, 429) is tried again, with doubling back-off.
    pub pull_retries: u32,
    /// Seconds a registry may send nothing before the pull fails
    /// (containerd's `image_pull_progress_timeout` is 5 minutes too).
    pub pull_progress_timeout: u64,
    /// Bytes one layer may unpack to, the holes of sparse files included:
    /// a few MiB of compressed layer can otherwise fill the disk or spin a
    /// CPU for hours.
    pub max_layer_size: u64,
}

impl Default for ImageSettings {
    fn default() -> Self {
        ImageSettings {
            registries_config: PathBuf::from(DEFAULT_REGISTRIES_CONFIG),
            pull_parallelism: 4,
            pull_retries: 3,
            pull_progress_timeout: 300,
            max_layer_size: berth_image::unpack::DEFAULT_MAX_LAYER_SIZE,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingSettings {
    /// The IP address to listen on; loopback by default, since the kubelet
    /// on the same node is the only client that needs it.
    pub address: std::net::IpAddr,
    /// The TCP port; 0 lets the kernel pick a free one (the URLs carry it,
    /// so nothing needs to know it in advance).
    pub port: u16,
    /// PEM certificate chain and key: both set serves HTTPS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Seconds without traffic after which a session is closed (and its
    /// exec killed); the kubelet's default is 4 hours.
    pub idle_timeout: u64,
}

impl Default for StreamingSettings {
    fn default() -> Self {
        StreamingSettings {
            address: std::net::Ipv4Addr::LOCALHOST.into(),
            port: 0,
            tls_cert: None,
            tls_key: None,
            idle_timeout: 4 * 3600,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeHandler {
    /// The OCI runtime binary: an absolute path, or a name looked up in `PATH`.
    pub path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// CRI-O's `cgroup_manager`: `cgroupfs` (Berth and the OCI runtime make
/// cgroup dirs themselves) or `systemd` (pods in slices, containers in
/// transient scopes, asked of systemd over D-Bus).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    Cgroupfs,
    Systemd,
}

impl CgroupDriver {
    /// The host's: systemd where it is PID 1, as kubeadm sets the kubelet.
    pub fn host_default() -> CgroupDriver {
        match Driver::host_default() {
            Driver::Systemd => CgroupDriver::Systemd,
            Driver::Cgroupfs => CgroupDriver::Cgroupfs,
        }
    }

    pub fn host(self) -> Driver {
        match self {
            CgroupDriver::Cgroupfs => Driver::Cgroupfs,
            CgroupDriver::Systemd => Driver::Systemd,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: PathBuf::from("/var/lib/berth"),
            run_root: PathBuf::from("/run/berth"),
            listen: PathBuf::from("/run/berth/berth.sock"),
            log_level: "info".into(),
            log_format: LogFormat::Text,
            cgroup_driver: CgroupDriver::host_default(),
            default_runtime: "runc".into(),
            runtimes: BTreeMap::from([(
                "runc".to_string(),
                RuntimeHandler {
                    path: PathBuf::from("runc"),
                },
            )]),
            cni: CniConfig::default(),
            pod: PodConfig::default(),
            container: ContainerSettings::default(),
            image: ImageSettings::default(),
            streaming: StreamingSettings::default(),
            metrics: MetricsConfig::default(),
            nri: NriConfig::default(),
        }
    }
}

/// Where a setting's value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(PathBuf),
    Flag,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("the built-in default"),
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::Flag => f.write_str("the command line"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot list config drop-in dir {path}: {source}")]
    ReadDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config file {path}: key `{key}`: {message}")]
    Key {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("config key `{key}` (set by {origin}): {message}")]
    Invalid {
        key: String,
        origin: Origin,
        message: String,
    },
}

/// Where to read the configuration from.
#[derive(Debug, Clone)]
pub struct Sources {
    pub file: PathBuf,
    /// A missing main file is an error only when the operator named it.
    pub file_required: bool,
    pub drop_in_dir: PathBuf,
}

/// Values given as command-line flags; each one beats every file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub root: Option<PathBuf>,
    pub run_root: Option<PathBuf>,
    pub listen: Option<PathBuf>,
    pub log_level: Option<String>,
    pub log_format: Option<LogFormat>,
    pub default_runtime: Option<String>,
}

/// The effective configuration and the origin of each top-level key that did
/// not keep its default.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    origins: BTreeMap<String, Origin>,
}

impl Loaded {
    fn origin(&self, key: &str) -> Origin {
        let top = key.split('.').next().unwrap_or(key);
        self.origins.get(top).cloned().unwrap_or(Origin::Default)
    }
}

pub fn load(sources: &Sources, overrides: &Overrides) -> Result<Loaded, ConfigError> {
    load_on(sources, overrides, Driver::systemd_running())
}

/// [`load`] on a host where systemd is PID 1 or not (`systemd_running`).
fn load_on(
    sources: &Sources,
    overrides: &Overrides,
    systemd_running: bool,
) -> Result<Loaded, ConfigError> {
    let mut files = Vec::new();
    match std::fs::read_to_string(&sources.file) {
        Ok(text) => files.push((sources.file.clone(), text)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound && !sources.file_required => {}
        Err(source) => {
            return Err(ConfigError::Read {
                path: sources.file.clone(),
                source,
            });
        }
    }
    for path in drop_ins(&sources.drop_in_dir)? {
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        files.push((path, text));
    }

    let mut merged = toml::Table::try_from(Config::default()).expect("defaults serialize");
    let mut origins = BTreeMap::new();
    for (path, text) in files {
        let table = check_file(&path, &text)?;
        for key in table.keys() {
            origins.insert(key.clone(), Origin::File(path.clone()));
        }
        merge(&mut merged, table);
    }
    let mut config: Config = toml::Value::Table(merged)
        .try_into()
        .expect("merging files that each deserialize yields a valid config");

    apply(&mut config, &mut origins, overrides);
    if config.pod.cgroup_parent.is_empty() {
        config.pod.cgroup_parent = config.cgroup_driver.host().default_parent().into();
    }
    let loaded = Loaded { config, origins };
    validate(&loaded, systemd_running)?;
    Ok(loaded)
}

/// `*.toml` files of the drop-in dir in lexical order; a missing dir has none.
fn drop_ins(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ConfigError::ReadDir {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ConfigError::ReadDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        if path.extension().is_some_and(|ext| ext == "toml") {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

/// Parses one file and checks every key and value it sets against the schema.
fn check_file(path: &Path, text: &str) -> Result<toml::Table, ConfigError> {
    let table: toml::Table = toml::from_str(text).map_err(|err| ConfigError::Syntax {
        path: path.to_path_buf(),
        message: err.message().to_string(),
    })?;
    let deserializer = toml::Deserializer::new(text);
    if let Err(err) = serde_path_to_error::deserialize::<_, Config>(deserializer) {
        let key = err.path().to_string();
        let inner = err.into_inner();
        let message = match inner.span() {
            Some(span) => format!("{} (line {})", inner.message(), line_of(text, span.start)),
            None => inner.message().to_string(),
        };
        return Err(ConfigError::Key {
            path: path.to_path_buf(),
            key,
            message,
        });
    }
    Ok(table)
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn merge(base: &mut toml::Table, layer: toml::Table) {
    for (key, value) in layer {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(into)), toml::Value::Table(from)) => merge(into, from),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn apply(config: &mut Config, origins: &mut BTreeMap<String, Origin>, o: &Overrides) {
    let mut set = |key: &str| {
        origins.insert(key.to_string(), Origin::Flag);
    };
    if let Some(v) = &o.root {
        config.root = v.clone();
        set("root");
    }
    if let Some(v) = &o.run_root {
        config.run_root = v.clone();
        set("run_root");
    }
    if let Some(v) = &o.listen {
        config.listen = v.clone();
        set("listen");
    }
    if let Some(v) = &o.log_level {
        config.log_level = v.clone();
        set("log_level");
    }
    if let Some(v) = o.log_format {
        config.log_format = v;
        set("log_format");
    }
    if let Some(v) = &o.default_runtime {
        config.default_runtime = v.clone();
        set("default_runtime");
    }
}

/// Every rule a config must meet, each naming its key and the file that set
/// it. Long because it is a list of independent checks.
fn validate(loaded: &Loaded, systemd_running: bool) -> Result<(), ConfigError> {
    let config = &loaded.config;
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        key: key.to_string(),
        origin: loaded.origin(key),
        message,
    };
    let bin_dirs = config.cni.bin_dirs.iter().map(|dir| ("cni.bin_dirs", dir));
    for (key, path) in [
        ("root", &config.root),
        ("run_root", &config.run_root),
        ("listen", &config.listen),
        ("cni.conf_dir", &config.cni.conf_dir),
        ("nri.socket_path", &config.nri.socket_path),
        ("nri.plugin_path", &config.nri.plugin_path),
        ("nri.plugin_config_path", &config.nri.plugin_config_path),
    ]
    .into_iter()
    .chain(bin_dirs)
    {
        if !path.is_absolute() {
            return Err(invalid(
                key,
                format!(
                    "expected an absolute path, got {:?}",
                    path.display().to_string()
                ),
            ));
        }
    }
    if config.cni.bin_dirs.is_empty() {
        return Err(invalid(
            "cni.bin_dirs",
            "expected at least one CNI plugin directory".into(),
        ));
    }
    if config.cni.plugin_timeout == 0 {
        return Err(invalid(
            "cni.plugin_timeout",
            "expected a number of seconds above 0".into(),
        ));
    }
    for (key, value) in [
        ("nri.registration_timeout", &config.nri.registration_timeout),
        ("nri.request_timeout", &config.nri.request_timeout),
    ] {
        parse_duration(value).map_err(|message| invalid(key, message))?;
    }
    if config.pod.shm_size < 4096 {
        return Err(invalid(
            "pod.shm_size",
            format!(
                "expected a size in bytes of at least one page (4096), got {}",
                config.pod.shm_size
            ),
        ));
    }
    let driver = config.cgroup_driver.host();
    if driver == Driver::Systemd && !systemd_running {
        return Err(invalid(
            "cgroup_driver",
            "is systemd, but systemd is not PID 1 on this host (no /run/systemd/system): set cgroupfs".into(),
        ));
    }
    if let Err(err) = driver.check_parent(&config.pod.cgroup_parent) {
        return Err(invalid("pod.cgroup_parent", err.to_string()));
    }
    if let Err(err) = tracing_subscriber::EnvFilter::try_new(&config.log_level) {
        return Err(invalid(
            "log_level",
            format!(
                "expected a level (error, warn, info, debug, trace) or tracing directives, got {:?}: {err}",
                config.log_level
            ),
        ));
    }
    if !config.runtimes.contains_key(&config.default_runtime) {
        let known: Vec<&str> = config.runtimes.keys().map(String::as_str).collect();
        return Err(invalid(
            "default_runtime",
            format!(
                "expected the name of a [runtimes] entry ({}), got {:?}",
                known.join(", "),
                config.default_runtime
            ),
        ));
    }
    if !(1..=64).contains(&config.image.pull_parallelism) {
        return Err(invalid(
            "image.pull_parallelism",
            format!(
                "expected a number of layers from 1 to 64, got {}",
                config.image.pull_parallelism
            ),
        ));
    }
    if config.image.pull_retries > 10 {
        return Err(invalid(
            "image.pull_retries",
            format!(
                "expected a number of retries from 0 to 10, got {}",
                config.image.pull_retries
            ),
        ));
    }
    if config.image.pull_progress_timeout == 0 {
        return Err(invalid(
            "image.pull_progress_timeout",
            "expected a number of seconds above 0".into(),
        ));
    }
    if config.image.max_layer_size == 0 {
        return Err(invalid(
            "image.max_layer_size",
            "expected a number of bytes above 0".into(),
        ));
    }
    if !config.image.registries_config.is_absolute() {
        return Err(invalid(
            "image.registries_config",
            format!(
                "expected an absolute path, got {:?}",
                config.image.registries_config.display().to_string()
            ),
        ));
    }
    let streaming = &config.streaming;
    match (&streaming.tls_cert, &streaming.tls_key) {
        (Some(_), None) | (None, Some(_)) => {
            let missing = if streaming.tls_cert.is_none() {
                "streaming.tls_cert"
            } else {
                "streaming.tls_key"
            };
            return Err(invalid(
                missing,
                "expected streaming.tls_cert and streaming.tls_key to be set together".into(),
            ));
        }
        (Some(cert), Some(key)) => {
            for (k, path) in [("streaming.tls_cert", cert), ("streaming.tls_key", key)] {
                if !path.is_absolute() {
                    return Err(invalid(
                        k,
                        format!(
                            "expected an absolute path, got {:?}",
                            path.display().to_string()
                        ),
                    ));
                }
            }
        }
        (None, None) => {}
    }
    if streaming.idle_timeout == 0 {
        return Err(invalid(
            "streaming.idle_timeout",
            "expected a number of seconds above 0".into(),
        ));
    }
    if !config.metrics.address.ip().is_loopback() {
        return Err(invalid(
            "metrics.address",
            format!(
                "expected a loopback address such as 127.0.0.1:9090, got {}",
                config.metrics.address
            ),
        ));
    }
    for (name, handler) in &config.runtimes {
        let valid_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid_name {
            return Err(invalid(
                "runtimes",
                format!(
                    "runtime handler name {name:?} must be non-empty ASCII letters, digits, '-', '_' or '.'"
                ),
            ));
        }
        if handler.path.as_os_str().is_empty() {
            return Err(invalid(
                &format!("runtimes.{name}.path"),
                "expected an OCI runtime binary path or name, got an empty string".into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(dir: &Path) -> Sources {
        Sources {
            file: dir.join("berth.toml"),
            file_required: false,
            drop_in_dir: dir.join("berth.d"),
        }
    }

    #[test]
    fn no_files_gives_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let loaded = load(&sources(dir.path()), &Overrides::default()).unwrap();
        let mut expected = Config::default();
        expected.pod.cgroup_parent = expected.cgroup_driver.host().default_parent().into();
        assert_eq!(loaded.config, expected);
    }

    #[test]
    fn cgroup_driver_follows_the_host_and_needs_systemd() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("berth.toml");
        let s = sources(dir.path());
        let none = Overrides::default();
        assert_eq!(
            Config::default().cgroup_driver == CgroupDriver::Systemd,
            Path::new("/run/systemd/system").is_dir()
        );
        std::fs::write(&file, "cgroup_driver = \"systemd\"\n").unwrap();
        let loaded = load_on(&s, &none, true).unwrap();
        assert_eq!(loaded.config.cgroup_driver, CgroupDriver::Systemd);
        assert_eq!(loaded.config.pod.cgroup_parent, "system.slice");
        let err = load_on(&s, &none, false).unwrap_err().to_string();
        assert!(err.contains("config key `cgroup_driver`"), "{err}");
        assert!(err.contains("berth.toml"), "{err}");
        assert!(err.contains("systemd is not PID 1"), "{err}");

        std::fs::write(&file, "cgroup_driver = \"cgroupfs\"\n").unwrap();
        let loaded = load_on(&s, &none, true).unwrap();
        assert_eq!(loaded.config.pod.cgroup_parent, "/berth");

        std::fs::write(&file, "cgroup_driver = \"systemd-ish\"\n").unwrap();
        let err = load_on(&s, &none, true).unwrap_err().to_string();
        assert!(err.contains("key `cgroup_driver`"), "{err}");
        assert!(err.contains("expected `cgroupfs` or `systemd`"), "{err}");
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn pod_cgroup_parent_takes_the_driver_form() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("berth.toml");
        let s = sources(dir.path());
        let none = Overrides::default();
        for (text, ok) in [
            (
                "cgroup_driver = \"systemd\"\n[pod]\ncgroup_parent = \"berth.slice\"\n",
                true,
            ),
            (
                "cgroup_driver = \"systemd\"\n[pod]\ncgroup_parent = \"/berth\"\n",
                false,
            ),
            (
                "cgroup_driver = \"systemd\"\n[pod]\ncgroup_parent = \"a--b.slice\"\n",
                false,
            ),
            (
                "cgroup_driver = \"cgroupfs\"\n[pod]\ncgroup_parent = \"/kubepods\"\n",
                true,
            ),
            (
                "cgroup_driver = \"cgroupfs\"\n[pod]\ncgroup_parent = \"kubepods.slice\"\n",
                false,
            ),
            (
                "cgroup_driver = \"cgroupfs\"\n[pod]\ncgroup_parent = \"kubepods\"\n",
                false,
            ),
        ] {
            std::fs::write(&file, text).unwrap();
            match load_on(&s, &none, true) {
                Ok(_) => assert!(ok, "{text} was accepted"),
                Err(err) => {
                    assert!(!ok, "{text}: {err}");
                    assert!(err.to_string().contains("pod.cgroup_parent"), "{err}");
                }
            }
        }
    }

    #[test]
    fn required_file_missing_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sources(dir.path());
        s.file_required = true;
        let err = load(&s, &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("berth.toml"), "{err}");
    }

    #[test]
    fn drop_ins_apply_in_lexical_order_and_merge_tables() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("berth.toml"), "log_level = \"debug\"\n").unwrap();
        let d = dir.path().join("berth.d");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("20-b.toml"), "log_level = \"trace\"\n").unwrap();
        std::fs::write(
            d.join("10-a.toml"),
            "log_level = \"warn\"\n[runtimes.crun]\npath = \"/usr/bin/crun\"\n",
        )
        .unwrap();
        std::fs::write(d.join("30-ignored.conf"), "not toml at all").unwrap();
        let loaded = load(&sources(dir.path()), &Overrides::default()).unwrap();
        assert_eq!(loaded.config.log_level, "trace");
        assert!(loaded.config.runtimes.contains_key("runc"));
        assert_eq!(
            loaded.config.runtimes["crun"].path,
            PathBuf::from("/usr/bin/crun")
        );
    }

    #[test]
    fn flags_beat_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("berth.toml"), "root = \"/srv/berth\"\n").unwrap();
        let overrides = Overrides {
            root: Some("/tmp/x".into()),
            ..Overrides::default()
        };
        let loaded = load(&sources(dir.path()), &overrides).unwrap();
        assert_eq!(loaded.config.root, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn unknown_key_names_file_key_and_expectation() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("berth.toml"),
            "root = \"/a\"\n[runtimes.runc]\npath = \"runc\"\nflavour = 1\n",
        )
        .unwrap();
        let err = load(&sources(dir.path()), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("berth.toml"), "{err}");
        assert!(err.contains("runtimes.runc"), "{err}");
        assert!(err.contains("unknown field `flavour`"), "{err}");
        assert!(err.contains("expected `path`"), "{err}");
        assert!(err.contains("line 4"), "{err}");
    }

    #[test]
    fn bad_value_names_key_and_expectation() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("berth.toml"), "log_format = \"xml\"\n").unwrap();
        let err = load(&sources(dir.path()), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("key `log_format`"), "{err}");
        assert!(err.contains("`text`"), "{err}");
    }

    #[test]
    fn semantic_errors_name_the_origin() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("berth.d");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("50-rt.toml"), "default_runtime = \"kata\"\n").unwrap();
        let err = load(&sources(dir.path()), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("default_runtime"), "{err}");
        assert!(err.contains("50-rt.toml"), "{err}");
        assert!(err.contains("runc"), "{err}");

        let overrides = Overrides {
            run_root: Some("relative".into()),
            ..Overrides::default()
        };
        let err = load(&sources(dir.path()), &overrides)
            .unwrap_err()
            .to_string();
        assert!(err.contains("run_root"), "{err}");
    }

    #[test]
    fn cni_and_pod_tables_merge_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("berth.toml"),
            "[cni]\nconf_dir = \"/srv/cni\"\n[pod]\nshm_size = 1048576\n",
        )
        .unwrap();
        let loaded = load(&sources(dir.path()), &Overrides::default()).unwrap();
        assert_eq!(loaded.config.cni.conf_dir, PathBuf::from("/srv/cni"));
        assert_eq!(loaded.config.cni.bin_dirs, CniConfig::default().bin_dirs);
        assert_eq!(loaded.config.pod.shm_size, 1 << 20);
        std::fs::write(
            dir.path().join("berth.toml"),
            "[cni]\nbin_dirs = [\"relative\"]\n",
        )
        .unwrap();
        let err = load(&sources(dir.path()), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("cni.bin_dirs"), "{err}");
    }

    #[test]
    fn streaming_table_merges_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("berth.toml");
        std::fs::write(&file, "[streaming]\nport = 10010\n").unwrap();
        let loaded = load(&sources(dir.path()), &Overrides::default()).unwrap();
        assert_eq!(loaded.config.streaming.port, 10010);
        assert_eq!(
            loaded.config.streaming.address,
            std::net::IpAddr::from([127, 0, 0, 1])
        );
        assert_eq!(loaded.config.streaming.idle_timeout, 4 * 3600);

        let err_for = |text: &str| {
            std::fs::write(&file, text).unwrap();
            load(&sources(dir.path()), &Overrides::default())
                .unwrap_err()
                .to_string()
        };
        let err = err_for("[streaming]\naddress = \"localhost\"\n");
        assert!(err.contains("streaming.address"), "{err}");
        let err = err_for("[streaming]\nport = 70000\n");
        assert!(err.contains("streaming.port"), "{err}");
        let err = err_for("[streaming]\ntls_cert = \"/etc/berth/tls.crt\"\n");
        assert!(err.contains("streaming.tls_key"), "{err}");
        assert!(err.contains("together"), "{err}");
        let err = err_for("[streaming]\ntls_cert = \"tls.crt\"\ntls_key = \"/k\"\n");
        assert!(err.contains("streaming.tls_cert"), "{err}");
        assert!(err.contains("absolute"), "{err}");
        let err = err_for("[streaming]\nidle_timeout = 0\n");
        assert!(err.contains("streaming.idle_timeout"), "{err}");

        std::fs::write(
            &file,
            "[streaming]\naddress = \"::1\"\ntls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\n",
        )
        .unwrap();
        let loaded = load(&sources(dir.path()), &Overrides::default()).unwrap();
        let text = toml::to_string_pretty(&loaded.config).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, loaded.config);
    }

    #[test]
    fn pull_retries_and_progress_timeout_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("berth.toml");
        let loaded = load(&sources(dir.path()), &Overrides::default()).unwrap();
        assert_eq!(loaded.config.image.pull_retries, 3);
        assert_eq!(loaded.config.image.pull_progress_timeout, 300);
        for (text, key) in [
            ("[image]\npull_retries = 11\n", "image.pull_retries"),
            ("[image]\npull_retries = -1\n", "pull_retries"),
            (
                "[image]\npull_progress_timeout = 0\n",
                "image.pull_progress_timeout",
            ),
        ] {
            std::fs::write(&file, text).unwrap();
            let err = load(&sources(dir.path()), &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn max_layer_size_defaults_to_64_gib_and_is_not_zero() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("berth.toml");
        let loaded = load(&sources(dir.path()), &Overrides::default()).unwrap();
        assert_eq!(loaded.config.image.max_layer_size, 64 << 30);
        std::fs::write(&file, "[image]\nmax_layer_size = 1048576\n").unwrap();
        let loaded = load(&sources(dir.path()), &Overrides::default()).unwrap();
        assert_eq!(loaded.config.image.max_layer_size, 1 << 20);
        for text in [
            "[image]\nmax_layer_size = 0\n",
            "[image]\nmax_layer_size = -1\n",
        ] {
            std::fs::write(&file, text).unwrap();
            let err = load(&sources(dir.path()), &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("max_layer_size"), "{text}: {err}");
        }
    }

    #[test]
    fn metrics_are_off_on_loopback_by_default_and_stay_on_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let loaded = load(&sources(dir.path()), &Overrides::default()).unwrap();
        assert!(!loaded.config.metrics.enabled);
        assert_eq!(loaded.config.metrics.address.to_string(), "127.0.0.1:9090");
        std::fs::write(
            dir.path().join("berth.toml"),
            "[metrics]\nenabled = true\naddress = \"0.0.0.0:9090\"\n",
        )
        .unwrap();
        let err = load(&sources(dir.path()), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("metrics.address"), "{err}");
        assert!(err.contains("loopback"), "{err}");
    }

    #[test]
    fn nri_is_off_by_default_and_its_timeouts_need_a_unit() {
        let dir = tempfile::tempdir().unwrap();
        let loaded = load(&sources(dir.path()), &Overrides::default()).unwrap();
        let nri = &loaded.config.nri;
        assert!(!nri.enable);
        assert_eq!(nri.socket_path, PathBuf::from("/var/run/nri/nri.sock"));
        assert_eq!(nri.plugin_path, PathBuf::from("/opt/nri/plugins"));
        assert_eq!(nri.plugin_config_path, PathBuf::from("/etc/nri/conf.d"));
        assert_eq!(
            parse_duration(&nri.registration_timeout),
            Ok(std::time::Duration::from_secs(5))
        );
        assert_eq!(
            parse_duration(&nri.request_timeout),
            Ok(std::time::Duration::from_secs(2))
        );
        assert_eq!(
            parse_duration("250ms"),
            Ok(std::time::Duration::from_millis(250))
        );
        assert_eq!(parse_duration("1m"), Ok(std::time::Duration::from_secs(60)));
        for bad in ["2", "0s", "2h", "s", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        std::fs::write(
            dir.path().join("berth.toml"),
            "[nri]\nenable = true\nrequest_timeout = \"2\"\n",
        )
        .unwrap();
        let err = load(&sources(dir.path()), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("nri.request_timeout"), "{err}");
        std::fs::write(
            dir.path().join("berth.toml"),
            "[nri]\nenable = true\nsocket_path = \"nri.sock\"\n",
        )
        .unwrap();
        let err = load(&sources(dir.path()), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nri.socket_path") && err.contains("absolute"),
            "{err}"
        );
    }

    #[test]
    fn syntax_error_names_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("berth.toml"), "root = \n").unwrap();
        let err = load(&sources(dir.path()), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(&format!(
            "config file {}",
            dir.path().join("berth.toml").display()
        )));
    }

    #[test]
    fn effective_config_round_trips_through_toml() {
        let text = toml::to_string_pretty(&Config::default()).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, Config::default());
    }
}
