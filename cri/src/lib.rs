//! The CRI ⇄ Berth translation: the only crate besides `berthd` and
//! `berth-proto` that knows the CRI's types.
//!
//! - [`container`]: CreateContainer's request → [`berth_runtime::spec::ContainerSpec`];
//! - [`container_status`]: a container record → the CRI's `Container` and
//!   `ContainerStatus`;
//! - [`resources`]: `LinuxContainerResources` → [`berth_runtime::spec::Resources`],
//!   one set of rules for CreateContainer and UpdateContainerResources;
//! - [`pod`]: RunPodSandbox's config → [`berth_sandbox::PodSpec`], and a pod
//!   record → the CRI's `PodSandbox` and `PodSandboxStatus`;
//! - [`stats`]: usage figures → the CRI's stats and metrics;
//! - [`grpc`]: every domain error → its gRPC status, in one trait ([`grpc::ToStatus`]).
//!
//! Pure: nothing here touches the host except reading a `Localhost`
//! seccomp profile and probing the host's cgroups ([`resources::Host`]).

pub mod container;
pub mod container_status;
pub mod grpc;
pub mod pod;
pub mod pod_resize;
pub mod resources;
pub mod signal;
pub mod stats;

/// A request the CRI's rules refuse: each names the CRI field at fault
/// (see [`grpc`] for their codes).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{field}: not supported on this host: {reason}")]
    Unsupported { field: String, reason: String },
    /// The request is fine but the host failed to serve it (the default
    /// AppArmor profile does not load): `INTERNAL`.
    #[error("{field}: {reason}")]
    Host { field: String, reason: String },
}

pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> RequestError {
    RequestError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

pub(crate) fn unsupported(field: impl Into<String>, reason: impl Into<String>) -> RequestError {
    RequestError::Unsupported {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A CRI map (`HashMap`) from Berth's ordered one.
pub fn to_map(
    map: &std::collections::BTreeMap<String, String>,
) -> std::collections::HashMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}
