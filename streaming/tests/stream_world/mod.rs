//! Shared by the streaming tests: runc containers made the way berthd makes
//! them (see [`Bundles`]) and a streaming server with the real backend.

use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

use berth_e2e::bundles::Bundles;
use berth_runtime::lifecycle::NewContainer;
use berth_streaming::{Config, Container, RuntimeBackend, StreamingServer};

pub fn can_run() -> bool {
    berth_e2e::can_run(
        berth_e2e::is_root()
            && berth_e2e::have_command("runc")
            && berth_e2e::have_command("ip")
            && Path::new("/bin/busybox").exists(),
        "needs root, runc, iproute2 and busybox-static",
    )
}

pub struct World {
    bundles: Bundles,
    pub server: StreamingServer,
}

impl Deref for World {
    type Target = Bundles;
    fn deref(&self) -> &Bundles {
        &self.bundles
    }
}

impl World {
    pub async fn new() -> World {
        World::with_config(Config::default()).await
    }

    pub async fn with_config(config: Config) -> World {
        let bundles = Bundles::new("root:x:0:\n");
        let server = StreamingServer::start(config, Arc::new(RuntimeBackend))
            .await
            .unwrap();
        World { bundles, server }
    }

    /// Creates and starts a container running `args`.
    pub fn run(&self, args: &[&str], stdin: bool, tty: bool) -> NewContainer {
        let mut spec = Bundles::spec(args);
        spec.stdin = stdin;
        spec.tty = tty;
        self.start(spec).0
    }

    pub fn container(&self, c: &NewContainer) -> Container {
        Container {
            id: c.id.clone(),
            runtime: self.runtime.clone(),
            run_dir: c.run_dir.clone(),
        }
    }
}
