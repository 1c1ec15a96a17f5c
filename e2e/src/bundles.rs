//! Containers made with the runtime library the way berthd makes them, for
//! the tests that drive it without berthd: a busybox layer (every applet
//! linked, `root` and `tester` users), a runc state dir and the freshly
//! built berth-shim, all under one test's [`Paths`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use berth_runtime::lifecycle::{self, NewContainer};
use berth_runtime::oci::OciRuntime;
use berth_runtime::spec::{ContainerSpec, ImageConfig};

use crate::Paths;

pub const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\ntester:x:1234:1234:tester:/home/tester:/bin/sh\n";

pub struct Bundles {
    pub paths: Paths,
    pub runtime: OciRuntime,
    pub layer: PathBuf,
}

impl Bundles {
    /// The layer's `/etc/group` is `group`.
    pub fn new(group: &str) -> Bundles {
        let paths = Paths::create();
        let layer = paths.dir().join("layer");
        let bin = layer.join("bin");
        for dir in ["bin", "etc", "tmp"] {
            std::fs::create_dir_all(layer.join(dir)).unwrap();
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
        std::fs::write(layer.join("etc/passwd"), PASSWD).unwrap();
        std::fs::write(layer.join("etc/group"), group).unwrap();
        std::fs::create_dir_all(paths.dir().join("logs")).unwrap();
        let runtime = OciRuntime {
            path: "runc".into(),
            root: paths.dir().join("runc"),
            shim: crate::bin_dir().join("berth-shim"),
            cgroup_driver: Default::default(),
        };
        Bundles {
            paths,
            runtime,
            layer,
        }
    }

    /// A spec running `args` as the image's command.
    pub fn spec(args: &[&str]) -> ContainerSpec {
        ContainerSpec {
            image: ImageConfig {
                cmd: args.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
            hostname: "bundletest".into(),
            no_new_privs: true,
            annotations: BTreeMap::new(),
            ..Default::default()
        }
    }

    /// A new container of `spec` on the busybox layer, with an ID and a
    /// cgroup (`/berth-e2e/<id>`) of its own; not created yet.
    pub fn new_container(&self, mut spec: ContainerSpec) -> NewContainer {
        static N: AtomicU64 = AtomicU64::new(0);
        let id = format!(
            "{:016x}{:016x}{:032x}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            0xbe27u32
        );
        spec.cgroups_path = format!("/berth-e2e/{id}").into();
        NewContainer {
            run_dir: self.paths.dir().join("run").join(&id),
            state_dir: self.paths.dir().join("state").join(&id),
            layers: vec![self.layer.clone()],
            log_path: self.paths.dir().join("logs").join(format!("{id}.log")),
            stdin_once: false,
            own_oom_score_adj: berth_runtime::spec::own_oom_score_adj(),
            id,
            spec,
        }
    }

    /// Creates and starts; returns the container and its pid.
    pub fn start(&self, spec: ContainerSpec) -> (NewContainer, i32) {
        let c = self.new_container(spec);
        let created =
            lifecycle::create(&self.runtime, &c).unwrap_or_else(|e| panic!("create: {e}"));
        self.runtime.start(&c.id).unwrap();
        (c, created.pid)
    }

    pub fn remove(&self, c: &NewContainer) {
        lifecycle::remove(&self.runtime, &c.id, &c.run_dir, &c.state_dir).unwrap();
    }
}

/// A failed test leaves containers behind; their processes do not name the
/// test's dir, so the harness cannot find them: ask runc.
impl Drop for Bundles {
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
