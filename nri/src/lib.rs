//! NRI, the Node Resource Interface, for Berth: plugins connect to a unix
//! socket (or are started from a directory), register, subscribe to pod and
//! container events, and may adjust containers as they are created. The
//! wire API is containerd/nri's: protobuf messages (berth-proto's `nri`)
//! over ttrpc, two ttrpc connections multiplexed on one socket.
//!
//! [`Nri`] is the runtime side; [`stub`] is the plugin side, for plugins
//! written in Rust (Berth's tests use it).

pub mod adjust;
mod launch;
pub mod mux;
pub mod rpc;
mod runtime;
pub mod stub;

use std::path::PathBuf;
use std::time::Duration;

pub use berth_proto::nri as api;
pub use runtime::{Hooks, Nri, Runtime};

/// The NRI API version Berth speaks, told to plugins in Configure.
pub const NRI_VERSION: &str = "v0.12.2";

/// What berthd's `[nri]` table sets.
#[derive(Debug, Clone)]
pub struct Config {
    pub socket_path: PathBuf,
    /// Pre-installed plugins, `NN-name` executables, started at boot.
    pub plugin_path: PathBuf,
    /// `NN-name.conf` or `name.conf`: a started plugin's configuration.
    pub plugin_config_path: PathBuf,
    pub registration_timeout: Duration,
    pub request_timeout: Duration,
    pub runtime_name: String,
    pub runtime_version: String,
}

/// The event bits of a plugin's subscription (ConfigureResponse.events).
pub fn event_bit(event: api::Event) -> u32 {
    1 << (event as u32 - 1)
}

/// Every event a plugin may subscribe to.
pub fn valid_events() -> u32 {
    (1 << (api::Event::Last as u32 - 1)) - 1
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("NRI socket {path}: {source}")]
    Listen {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("NRI plugin {plugin} failed {event}: {message}")]
    Plugin {
        plugin: String,
        event: &'static str,
        message: String,
    },
    #[error(
        "NRI plugins {first:?} and {second:?} both tried to set {field} of container {container}"
    )]
    Conflict {
        first: String,
        second: String,
        field: String,
        container: String,
    },
    #[error(
        "NRI plugin {plugin:?} asked for {what} on container {container}, which Berth does not support"
    )]
    Unsupported {
        plugin: String,
        what: &'static str,
        container: String,
    },
    #[error("NRI plugin {plugin:?}: {reason}")]
    Invalid { plugin: String, reason: String },
    #[error("NRI plugin {plugin:?} rejected the adjustment of container {container}: {reason}")]
    Rejected {
        plugin: String,
        container: String,
        reason: String,
    },
}
