//! The plugin side, for NRI plugins written in Rust: connect (or take the
//! socket a runtime started the plugin with), serve the Plugin service and
//! register.

use std::os::fd::FromRawFd;
use std::path::Path;
use std::sync::Arc;

use prost::Message;
use tokio::net::UnixStream;

use crate::api;
use crate::mux::Mux;
use crate::rpc::{self, PLUGIN_SERVICE, RUNTIME_SERVICE};

/// Every method of the Plugin service.
pub const METHODS: [&str; 18] = [
    "Configure",
    "Synchronize",
    "Shutdown",
    "RunPodSandbox",
    "UpdatePodSandbox",
    "PostUpdatePodSandbox",
    "StopPodSandbox",
    "RemovePodSandbox",
    "CreateContainer",
    "PostCreateContainer",
    "StartContainer",
    "PostStartContainer",
    "UpdateContainer",
    "PostUpdateContainer",
    "StopContainer",
    "RemoveContainer",
    "StateChange",
    "ValidateContainerAdjustment",
];

/// A plugin: answers each Plugin method's encoded request.
#[async_trait::async_trait]
pub trait Plugin: Send + Sync + 'static {
    async fn handle(&self, method: &'static str, request: Vec<u8>) -> Result<Vec<u8>, String>;
}

/// A registered plugin's connection to the runtime.
pub struct Connection {
    _mux: Mux,
    _server: ttrpc::r#async::Server,
    runtime: ttrpc::r#async::Client,
    closed: tokio::sync::oneshot::Receiver<()>,
}

/// The socket to the runtime: the one it started this plugin with
/// (`NRI_PLUGIN_SOCKET`), else a new connection to `socket_path`.
pub async fn socket(socket_path: &Path) -> std::io::Result<UnixStream> {
    match std::env::var("NRI_PLUGIN_SOCKET")
        .ok()
        .and_then(|fd| fd.parse::<i32>().ok())
    {
        Some(fd) => {
            // SAFETY: the runtime passed this fd to this process for this use.
            let stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
            stream.set_nonblocking(true)?;
            UnixStream::from_std(stream)
        }
        None => UnixStream::connect(socket_path).await,
    }
}

impl Connection {
    /// Serves `plugin` on `stream` and registers as `idx-name`.
    pub async fn register(
        stream: UnixStream,
        name: &str,
        idx: &str,
        plugin: Arc<dyn Plugin>,
    ) -> Result<Connection, String> {
        let (mut mux, closed) = Mux::new(stream);
        let handler: rpc::Handler = Arc::new(move |method, payload| {
            let plugin = Arc::clone(&plugin);
            Box::pin(async move { plugin.handle(method, payload).await })
        });
        let server = rpc::serve(
            mux.plugin.take().expect("a new mux has its connections"),
            PLUGIN_SERVICE,
            &METHODS,
            handler,
        )
        .await
        .map_err(|e| format!("cannot serve the plugin service: {e}"))?;
        let runtime = rpc::client(mux.runtime.take().expect("a new mux has its connections"));
        let request = api::RegisterPluginRequest {
            plugin_name: name.to_string(),
            plugin_idx: idx.to_string(),
            nri_version: crate::NRI_VERSION.to_string(),
        };
        rpc::call::<_, api::Empty>(
            &runtime,
            RUNTIME_SERVICE,
            "RegisterPlugin",
            &request,
            std::time::Duration::from_secs(30),
        )
        .await
        .map_err(|e| format!("RegisterPlugin failed: {e}"))?;
        Ok(Connection {
            _mux: mux,
            _server: server,
            runtime,
            closed,
        })
    }

    /// Asks the runtime to update containers; returns those that failed.
    pub async fn update_containers(
        &self,
        update: Vec<api::ContainerUpdate>,
    ) -> Result<Vec<api::ContainerUpdate>, String> {
        let request = api::UpdateContainersRequest {
            update,
            evict: Vec::new(),
        };
        let response: api::UpdateContainersResponse = rpc::call(
            &self.runtime,
            RUNTIME_SERVICE,
            "UpdateContainers",
            &request,
            std::time::Duration::from_secs(30),
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok(response.failed)
    }

    /// Waits until the runtime hangs up.
    pub async fn closed(self) {
        let Connection { closed, _mux, .. } = self;
        let _ = closed.await;
    }
}

/// Decodes a request for a handler.
pub fn decode<M: Message + Default>(method: &str, payload: &[u8]) -> Result<M, String> {
    M::decode(payload).map_err(|e| format!("undecodable {method} request: {e}"))
}
