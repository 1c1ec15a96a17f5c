//! Version, Status and RuntimeConfig: what the kubelet asks before anything else.

use std::collections::HashMap;

use berth_proto::cri::{
    CgroupDriver, LinuxRuntimeConfiguration, RuntimeCondition, RuntimeConfigRequest,
    RuntimeConfigResponse, RuntimeFeatures, RuntimeHandler, RuntimeHandlerFeatures, RuntimeStatus,
    StatusRequest, StatusResponse, VersionRequest, VersionResponse,
};
use tonic::Status;

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
            let config = serde_json::to_string(&*self.config)
                .map_err(|err| Status::internal(format!("cannot encode the config: {err}")))?;
            info.insert("config".to_string(), config);
        }
        Ok(StatusResponse {
            status: Some(RuntimeStatus { conditions }),
            info,
            runtime_handlers: self.runtime_handlers(),
            features: Some(RuntimeFeatures {
                supplemental_groups_policy: false,
            }),
        })
    }

    pub(super) async fn runtime_config(
        &self,
        _: RuntimeConfigRequest,
    ) -> Result<RuntimeConfigResponse, Status> {
        let cgroup_driver = match self.config.cgroup_driver {
            config::CgroupDriver::Cgroupfs => CgroupDriver::Cgroupfs,
        };
        Ok(RuntimeConfigResponse {
            linux: Some(LinuxRuntimeConfiguration {
                cgroup_driver: cgroup_driver as i32,
            }),
        })
    }

    /// The default handler (empty name, as the CRI defines) and every named
    /// one, with the features probed on this host at start-up.
    fn runtime_handlers(&self) -> Vec<RuntimeHandler> {
        let features = |name: &str| {
            let probed = self.features.get(name).copied().unwrap_or_default();
            Some(RuntimeHandlerFeatures {
                recursive_read_only_mounts: probed.recursive_read_only_mounts,
                user_namespaces: probed.user_namespaces,
            })
        };
        std::iter::once((String::new(), features(&self.config.default_runtime)))
            .chain(
                self.config
                    .runtimes
                    .keys()
                    .map(|name| (name.clone(), features(name))),
            )
            .map(|(name, features)| RuntimeHandler { name, features })
            .collect()
    }
}
