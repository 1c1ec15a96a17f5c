//! The CRI services. Each RPC group has its own file with the handlers as
//! methods of [`CriService`]; `runtime_service.rs` and `image_service.rs` only
//! wire the generated tonic traits to them.

mod abandoned;
mod checkpoint;
mod container;
mod events;
mod image;
mod image_service;
mod list_stream;
mod metrics;
mod nri_hooks;
mod pod;
mod resources;
mod runtime_info;
mod runtime_service;
pub(crate) mod span_ids;
mod stats;
mod stream;

use std::sync::Arc;

use berth_image::ImageStore;

use crate::config::Config;
use crate::live::LiveConfig;

/// State shared by every RPC handler.
#[derive(Clone)]
pub struct CriService {
    config: Arc<Config>,
    pods: Arc<berth_sandbox::Sandboxes>,
    images: Arc<ImageStore>,
    /// Serves the Exec, Attach and PortForward URLs.
    streaming: Arc<berth_streaming::StreamingServer>,
    /// What a SIGHUP reload changes live: runtime handlers, effective config.
    live: Arc<LiveConfig>,
    /// The features of each runtime handler's binary, probed once.
    features: Arc<runtime_info::FeatureCache>,
    containers: Arc<berth_runtime::containers::Containers>,
    /// GetContainerEvents' subscribers read this.
    events: events::Broadcast,
    /// The cgroup layout and the previous CPU sample of each container and pod.
    stats: Arc<berth_runtime::stats::Stats>,
    /// Pods and containers made after their caller gave up, for the retry.
    abandoned: Arc<abandoned::Abandoned>,
    /// Set once at start when `[nri] enable` is.
    nri: Arc<std::sync::OnceLock<berth_nri::Nri>>,
}

impl CriService {
    /// Loads the pod records and the CNI config, and starts watching the
    /// CNI conf dir, and the container records; must run inside the tokio
    /// runtime.
    pub fn new(
        config: Config,
        images: ImageStore,
        streaming: berth_streaming::StreamingServer,
    ) -> Result<Self, berth_runtime::record::StoreError> {
        let live = LiveConfig::new(config.clone());
        let pods = pod::open(&config, live.clone());
        let features = Arc::new(runtime_info::FeatureCache::default());
        for runtime in config.runtimes.values() {
            features.probe(&runtime.path);
        }
        let containers = container::open(&config, live.clone())?;
        let service = CriService {
            config: Arc::new(config),
            pods,
            images: Arc::new(images),
            streaming: Arc::new(streaming),
            live,
            features,
            containers,
            events: events::channel(),
            stats: Arc::new(berth_runtime::stats::Stats::new()),
            abandoned: Arc::default(),
            nri: Arc::default(),
        };
        service.start_events();
        Ok(service)
    }

    pub fn live(&self) -> &Arc<LiveConfig> {
        &self.live
    }

    pub fn images(&self) -> &Arc<ImageStore> {
        &self.images
    }
}

pub use image::{open_store, reload_store};

pub use stream::start_server;

/// Emits a tonic service trait impl in which each listed RPC forwards its
/// request message to the handler method of the same name.
macro_rules! cri_service_impl {
    (
        impl $trait:path {
            $( type $assoc:ident = $assoc_ty:ty; )*
            handled { $( $h:ident($hreq:ty) -> $hres:ty; )* }
        }
    ) => {
        #[tonic::async_trait]
        impl $trait for $crate::cri::CriService {
            $( type $assoc = $assoc_ty; )*
            $(
                async fn $h(
                    &self,
                    request: tonic::Request<$hreq>,
                ) -> Result<tonic::Response<$hres>, tonic::Status> {
                    let request = request.into_inner();
                    $crate::cri::span_ids::record(&request);
                    $crate::cri::CriService::$h(self, request)
                        .await
                        .map(tonic::Response::new)
                }
            )*
        }
    };
}
use cri_service_impl;
