//! berthd's state is private to root (the CVE-2021-41091 class): with a
//! root container running that made a setuid copy of its shell, a
//! world-writable dir and a 0644 secret, a host process as uid 65534
//! reaches none of them, through the upper dir or the rootfs mount, nor the
//! spec (the env's secret), the record, the pod's shm or an image layer;
//! and a root an older version left 0755 is tightened at start.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::cri::KeyValue;
use berth_e2e::world::{World, can_run_here};
use berth_e2e::{Berthd, Paths};
use nix::sys::signal::Signal;

const NOBODY: u32 = 65534;

/// Makes the container's files, then waits.
const SCRIPT: &str = "cp /bin/sh /x && chmod 4755 /x && mkdir -m 777 /open \
    && echo s3cret > /secret && chmod 644 /secret && echo shm > /dev/shm/f \
    && touch /ready && exec sleep 600";

/// berthd's state under a dir every host user may traverse, as
/// `/var/lib` and `/run` are: only berthd's own modes protect it.
fn open_paths() -> Paths {
    let paths = Paths::create();
    std::fs::set_permissions(paths.dir(), std::fs::Permissions::from_mode(0o711)).unwrap();
    paths
}

/// A running root container of a fresh pod; its pod's and its own ID.
async fn running(world: &mut World) -> (String, String) {
    let pod = world.pod("private").await;
    let mut config = world.container("private-c", SCRIPT);
    config.envs = vec![KeyValue {
        key: "TOKEN".into(),
        value: "env-s3cret".into(),
    }];
    let id = world.run(&pod, config).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while world.exec(&id, "test -e /ready", 10).await.0 != 0 {
        assert!(Instant::now() < deadline, "the container made no /ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (pod, id)
}

/// Every path a host user could reach the container's files by.
fn targets(paths: &Paths, pod: &str, id: &str) -> Vec<PathBuf> {
    let upper = paths.root().join("containers/state").join(id).join("upper");
    let rootfs = paths.run_root().join("containers").join(id).join("rootfs");
    let mut targets: Vec<PathBuf> = [&upper, &rootfs]
        .iter()
        .flat_map(|dir| ["x", "open", "secret"].map(|f| dir.join(f)))
        .collect();
    targets.push(
        paths
            .run_root()
            .join("containers")
            .join(id)
            .join("config.json"),
    );
    targets.push(
        paths
            .root()
            .join("containers/records")
            .join(format!("{id}.json")),
    );
    targets.push(paths.run_root().join("pods").join(pod).join("shm/f"));
    let layers = paths.root().join("images/layers");
    for chain in std::fs::read_dir(&layers).unwrap().flatten() {
        targets.push(chain.path().join("diff/bin/sh"));
    }
    targets
}

/// Whether a host process as uid and gid 65534 (no groups) can stat `path`.
fn nobody_reaches(path: &Path) -> bool {
    Command::new("stat")
        .arg(path)
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// The targets uid 65534 reaches, after checking root reaches all of them
/// (so none is unreachable merely for being absent).
fn reached(targets: &[PathBuf]) -> Vec<&PathBuf> {
    for target in targets {
        assert!(target.exists(), "{} is missing", target.display());
    }
    targets.iter().filter(|t| nobody_reaches(t)).collect()
}

#[tokio::test]
async fn no_host_user_reaches_a_containers_files_specs_records_or_shm() {
    if !can_run_here() {
        return;
    }
    let mut world = World::in_paths("private", "", open_paths()).await;
    let (pod, id) = running(&mut world).await;
    let targets = targets(world.paths(), &pod, &id);
    assert_eq!(reached(&targets), Vec::<&PathBuf>::new());
    let spec = world
        .paths()
        .run_root()
        .join("containers")
        .join(&id)
        .join("config.json");
    let mode = std::fs::metadata(&spec).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{} is {mode:o}", spec.display());
    world.remove_pod(&pod).await;
}

/// chmod 0755 the dirs an older berthd made 0755 (the top levels of the
/// root and run root and the containers' state dirs, not a container's own
/// files), and its specs 0644.
fn open_up(paths: &Paths) {
    for (dir, depth) in [(paths.root(), "3"), (paths.run_root(), "2")] {
        let status = Command::new("find")
            .arg(&dir)
            .args(["-xdev", "-maxdepth", depth, "-type", "d"])
            .args(["-exec", "chmod", "0755", "{}", "+"])
            .status()
            .unwrap();
        assert!(status.success(), "chmod under {}", dir.display());
    }
    for entry in std::fs::read_dir(paths.run_root().join("containers"))
        .unwrap()
        .flatten()
    {
        let spec = entry.path().join("config.json");
        std::fs::set_permissions(&spec, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
}

#[tokio::test]
async fn a_root_left_open_by_an_older_version_is_tightened_at_start() {
    if !can_run_here() {
        return;
    }
    let mut world = World::in_paths("tighten", "", open_paths()).await;
    let (pod, id) = running(&mut world).await;
    let (_, paths) = world
        .berthd
        .take()
        .unwrap()
        .stop_with(Signal::SIGTERM)
        .await;
    open_up(&paths);
    let targets = targets(&paths, &pod, &id);
    assert_eq!(
        reached(&targets).len(),
        targets.len(),
        "the old layout should be open to every host user"
    );
    let berthd = Berthd::start_in(paths, world.options.clone()).await;
    world.client = berthd.runtime().await;
    world.berthd = Some(berthd);
    assert_eq!(reached(&targets), Vec::<&PathBuf>::new());
    assert_eq!(world.exec(&id, "cat /secret", 10).await.1, "s3cret\n");
    world.remove_pod(&pod).await;
}
