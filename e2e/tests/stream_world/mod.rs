//! Shared by the streaming tests: a busybox rootfs, runc containers made
//! the way berthd makes them, and a streaming server with the real backend.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use berth_e2e::Paths;
use berth_runtime::lifecycle::{self, NewContainer};
use berth_runtime::oci::OciRuntime;
use berth_runtime::spec::{ContainerSpec, ImageConfig};
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
    pub paths: Paths,
    pub runtime: OciRuntime,
    layer: PathBuf,
    pub server: StreamingServer,
}

impl World {
    pub async fn new() -> World {
        World::with_config(Config::default()).await
    }

    pub async fn with_config(config: Config) -> World {
        let paths = Paths::create();
        let layer = paths.dir().join("layer");
        let bin = layer.join("bin");
        for d in ["bin", "etc", "tmp"] {
            std::fs::create_dir_all(layer.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
        let list = std::process::Command::new("/bin/busybox")
            .arg("--list")
            .output()
            .unwrap();
        for applet in String::from_utf8(list.stdout).unwrap().lines() {
            if applet != "busybox" {
                std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
            }
        }
        std::fs::write(layer.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        std::fs::create_dir_all(paths.dir().join("logs")).unwrap();
        let runtime = OciRuntime {
            path: "runc".into(),
            root: paths.dir().join("runc"),
            shim: berth_e2e::bin_dir().join("berth-shim"),
        };
        let server = StreamingServer::start(config, Arc::new(RuntimeBackend))
            .await
            .unwrap();
        World {
            paths,
            runtime,
            layer,
            server,
        }
    }

    /// Creates and starts a container running `args`.
    pub fn run(&self, args: &[&str], stdin: bool, tty: bool) -> NewContainer {
        static N: AtomicU64 = AtomicU64::new(0);
        let id = format!(
            "{:016x}{:016x}{:032x}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            0xbe27u32
        );
        let spec = ContainerSpec {
            image: ImageConfig {
                cmd: args.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
            hostname: "streamtest".into(),
            no_new_privs: true,
            stdin,
            tty,
            annotations: BTreeMap::new(),
            cgroups_path: format!("/berth-e2e/{id}").into(),
            ..Default::default()
        };
        let c = NewContainer {
            run_dir: self.paths.dir().join("run").join(&id),
            state_dir: self.paths.dir().join("state").join(&id),
            layers: vec![self.layer.clone()],
            log_path: self.paths.dir().join("logs").join(format!("{id}.log")),
            stdin_once: false,
            own_oom_score_adj: berth_runtime::spec::own_oom_score_adj(),
            id,
            spec,
        };
        lifecycle::create(&self.runtime, &c).unwrap_or_else(|e| panic!("create: {e}"));
        self.runtime.start(&c.id).unwrap();
        c
    }

    pub fn container(&self, c: &NewContainer) -> Container {
        Container {
            id: c.id.clone(),
            runtime: self.runtime.clone(),
            run_dir: c.run_dir.clone(),
        }
    }

    pub fn remove(&self, c: &NewContainer) {
        lifecycle::remove(&self.runtime, &c.id, &c.run_dir, &c.state_dir).unwrap();
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let Ok(out) = std::process::Command::new("runc")
            .arg("--root")
            .arg(&self.runtime.root)
            .args(["list", "-q"])
            .output()
        else {
            return;
        };
        for id in String::from_utf8_lossy(&out.stdout).lines() {
            let _ = self.runtime.delete(id, true);
        }
    }
}
