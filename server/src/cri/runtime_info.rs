//! Version, Status and RuntimeConfig: what the kubelet asks before anything else.

use std::collections::HashMap;

use berth_proto::cri::{
    CgroupDriver, LinuxRuntimeConfiguration, RuntimeCondition, RuntimeConfigRequest,
    RuntimeConfigResponse, RuntimeFeatures, RuntimeHandler, RuntimeHandlerFeatures, RuntimeStatus,
    StatusRequest, StatusResponse, VersionRequest, VersionResponse,
};
use tonic::Status;

use berth_runtime::features::HandlerFeatures;

use super::CriService;
use crate::config;

/// The kubelet's runtime API version, not the CRI's: CRI-O and containerd both say 0.1.0.
const KUBELET_API_VERSION: &str = "0.1.0";
const RUNTIME_NAME: &str = "berth";
const RUNTIME_API_VERSION: &str = "v1";

const RUNTIME_READY: &str = "RuntimeReady";
const NETWORK_READY: &str = "NetworkReady";
const NETWORK_PLUGIN_NOT_READY: &str = "NetworkPluginNotReady";

impl CriService {
    pub(super) async fn version(&self, _: VersionRequest) -> Result<VersionResponse, Status> {
        Ok(VersionResponse {
            version: KUBELET_API_VERSION.into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: RUNTIME_API_VERSION.into(),
        })
    }

    pub(super) async fn status(&self, request: StatusRequest) -> Result<StatusResponse, Status> {
        let conditions = vec![
            RuntimeCondition {
                r#type: RUNTIME_READY.into(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            // Reflects the watched CNI conf dir: true as soon as a valid
            // config is there.
            match self.pods.cni().network() {
                Ok(_) => RuntimeCondition {
                    r#type: NETWORK_READY.into(),
                    status: true,
                    reason: String::new(),
                    message: String::new(),
                },
                Err(err) => RuntimeCondition {
                    r#type: NETWORK_READY.into(),
                    status: false,
                    reason: NETWORK_PLUGIN_NOT_READY.into(),
                    message: format!("Network plugin returns error: {err}"),
                },
            },
        ];
        let mut info = HashMap::new();
        if request.verbose {
            info = self.verbose_info()?;
        }
        Ok(StatusResponse {
            status: Some(RuntimeStatus { conditions }),
            info,
            runtime_handlers: self.runtime_handlers(),
            // Merge and Strict are both applied (runtime/src/cri_spec.rs).
            features: Some(RuntimeFeatures {
                supplemental_groups_policy: true,
                // A user-namespaced pod shares no namespace with the host
                // (the kubelet's own rule, which Berth enforces).
                user_namespaces_host_network: false,
            }),
        })
    }

    pub(super) async fn runtime_config(
        &self,
        _: RuntimeConfigRequest,
    ) -> Result<RuntimeConfigResponse, Status> {
        let cgroup_driver = match self.config.cgroup_driver {
            config::CgroupDriver::Cgroupfs => CgroupDriver::Cgroupfs,
            config::CgroupDriver::Systemd => CgroupDriver::Systemd,
        };
        Ok(RuntimeConfigResponse {
            linux: Some(LinuxRuntimeConfiguration {
                cgroup_driver: cgroup_driver as i32,
            }),
        })
    }

    /// `Status` verbose `info`, each value JSON: `config` (in effect,
    /// reloads included), `cniconfig` (the network in use, or why none is),
    /// `runtimeHandlers` (name, binary, which is the default).
    fn verbose_info(&self) -> Result<HashMap<String, String>, Status> {
        let config = self.live.get();
        let cni = match self.pods.cni().network() {
            Ok(list) => serde_json::json!({
                "name": list.name,
                "file": list.source,
                "cniVersion": list.cni_version,
                "plugins": list.plugins.iter().map(|p| p.get("type")).collect::<Vec<_>>(),
            }),
            Err(err) => serde_json::json!({
                "confDir": config.cni.conf_dir,
                "error": err.to_string(),
            }),
        };
        let handlers: Vec<_> = config
            .runtimes
            .iter()
            .map(|(name, handler)| {
                serde_json::json!({
                    "name": name,
                    "path": handler.path,
                    "default": *name == config.default_runtime,
                })
            })
            .collect();
        let encoded = serde_json::to_string(&*config)
            .map_err(|err| Status::internal(format!("cannot encode the config: {err}")))?;
        Ok(HashMap::from([
            ("config".to_string(), encoded),
            ("cniconfig".to_string(), cni.to_string()),
            (
                "runtimeHandlers".to_string(),
                serde_json::Value::from(handlers).to_string(),
            ),
        ]))
    }

    /// The default handler (empty name, as the CRI defines) and every named
    /// one, with the features its binary has on this host.
    fn runtime_handlers(&self) -> Vec<RuntimeHandler> {
        let config = self.live.get();
        let features = |name: &str| {
            let probed = config
                .runtimes
                .get(name)
                .map(|handler| self.features.probe(&handler.path))
                .unwrap_or_default();
            Some(RuntimeHandlerFeatures {
                recursive_read_only_mounts: probed.recursive_read_only_mounts,
                user_namespaces: probed.user_namespaces,
            })
        };
        std::iter::once((String::new(), features(&config.default_runtime)))
            .chain(
                config
                    .runtimes
                    .keys()
                    .map(|name| (name.clone(), features(name))),
            )
            .map(|(name, features)| RuntimeHandler { name, features })
            .collect()
    }
}

/// `<runtime> features` plus the kernel checks, once per runtime binary
/// (a SIGHUP reload may add handlers: they are probed when first asked).
#[derive(Default)]
pub(super) struct FeatureCache {
    probed: std::sync::Mutex<HashMap<std::path::PathBuf, HandlerFeatures>>,
}

impl FeatureCache {
    pub(super) fn probe(&self, runtime: &std::path::Path) -> HandlerFeatures {
        let mut probed = berth_host::sync::lock(&self.probed);
        *probed
            .entry(runtime.to_path_buf())
            .or_insert_with(|| berth_runtime::features::probe(runtime))
    }
}
