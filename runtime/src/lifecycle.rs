//! Creating and removing a container as one step each: the rootfs overlay,
//! `config.json`, the shim; and the reverse, every step run and every
//! failure reported.

use std::path::{Path, PathBuf};

use crate::oci::{CreateOptions, OciRuntime, RuntimeError};
use crate::overlay::{self, OverlayError};
use crate::spec::{self, ContainerSpec, SpecError};

/// Everything [`create`] needs.
#[derive(Debug, Clone)]
pub struct NewContainer {
    pub id: String,
    /// Volatile dir (under the run root): the OCI bundle, the shim's sockets
    /// and exit file, the rootfs mount point `rootfs/`.
    pub run_dir: PathBuf,
    /// Persistent dir (under the root): the overlay's `upper/` and `work/`.
    pub state_dir: PathBuf,
    /// The image's layer dirs, topmost first.
    pub layers: Vec<PathBuf>,
    /// The CRI log file; its directory must exist.
    pub log_path: PathBuf,
    pub stdin_once: bool,
    /// `rootfs` is ignored: the overlay mounted at `run_dir/rootfs` is used.
    pub spec: ContainerSpec,
    /// berthd's own oom_score_adj ([`spec::own_oom_score_adj`]).
    pub own_oom_score_adj: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("container {id}: create {path}: {source}")]
    Dir {
        id: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("container {id}: {source}")]
    Overlay { id: String, source: OverlayError },
    #[error("container {id}: {source}")]
    Mounts {
        id: String,
        source: crate::mounts::MountError,
    },
    #[error("container {id}: {source}")]
    Spec { id: String, source: SpecError },
    #[error("container {id}: {reason}")]
    Adjust { id: String, reason: String },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// The created container.
#[derive(Debug, Clone)]
pub struct Created {
    pub pid: i32,
    /// The OCI spec it was created with (ContainerStatus verbose info).
    pub spec: oci_spec::runtime::Spec,
}

pub fn rootfs_of(run_dir: &Path) -> PathBuf {
    run_dir.join("rootfs")
}

/// Changes the generated OCI spec before it is written (NRI plugins'
/// adjustments); an error refuses the container.
pub type SpecAdjust = dyn Fn(&mut oci_spec::runtime::Spec) -> Result<(), String> + Send + Sync;

/// Mounts the rootfs, writes the spec and creates the container through a
/// new berth-shim. On failure everything made so far is undone.
pub fn create(runtime: &OciRuntime, new: &NewContainer) -> Result<Created, ContainerError> {
    create_adjusted(runtime, new, None)
}

/// [`create`], with `adjust` applied to the spec before it is written.
pub fn create_adjusted(
    runtime: &OciRuntime,
    new: &NewContainer,
    adjust: Option<&SpecAdjust>,
) -> Result<Created, ContainerError> {
    let result = create_inner(runtime, new, adjust);
    if result.is_err() {
        let _ = remove(runtime, &new.id, &new.run_dir, &new.state_dir);
    }
    result
}

fn create_inner(
    runtime: &OciRuntime,
    new: &NewContainer,
    adjust: Option<&SpecAdjust>,
) -> Result<Created, ContainerError> {
    let id = &new.id;
    let dir_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ContainerError::Dir {
            id: id.clone(),
            path,
            source,
        }
    };
    let dirs = berth_host::step!("dirs").entered();
    let run_dir_owner = new.spec.user_namespace.as_ref().and_then(|u| u.host_root());
    private_run_dir(&new.run_dir, run_dir_owner).map_err(dir_err(&new.run_dir))?;
    crate::private::dir(&new.state_dir, crate::private::PRIVATE)
        .map_err(dir_err(&new.state_dir))?;
    let rootfs = rootfs_of(&new.run_dir);
    drop(dirs);
    let (upper, work) = (upper_dir(&new.state_dir), new.state_dir.join("work"));
    let overlay_step = berth_host::step!("overlay").entered();
    match &new.spec.user_namespace {
        None => overlay::mount(&new.layers, &upper, &work, &rootfs),
        Some(user) => match user.host_root() {
            Some(root) => overlay::mount_idmapped(
                &new.layers,
                &upper,
                &work,
                &rootfs,
                &new.run_dir.join("lower"),
                &user.path,
                root,
            ),
            None => Err(OverlayError::Unmapped),
        },
    }
    .map_err(|source| ContainerError::Overlay {
        id: id.clone(),
        source,
    })?;
    drop(overlay_step);
    let mounts_step = berth_host::step!("mounts").entered();
    let mut container_spec = new.spec.clone();
    container_spec.rootfs = rootfs;
    let mounts_err = |source| ContainerError::Mounts {
        id: id.clone(),
        source,
    };
    let staged_images = new.run_dir.join("image-volumes");
    crate::mounts::stage_images(&mut container_spec.mounts, &staged_images).map_err(mounts_err)?;
    crate::mounts::prepare(&mut container_spec.mounts).map_err(mounts_err)?;
    let staged = new.run_dir.join("volumes");
    if let Some(user) = &container_spec.user_namespace {
        crate::mounts::idmap(&mut container_spec.mounts, &staged, &user.path)
            .map_err(mounts_err)?;
    }
    drop(mounts_step);
    let spec_err = |source| ContainerError::Spec {
        id: id.clone(),
        source,
    };
    let spec_step = berth_host::step!("spec").entered();
    let mut oci = spec::generate(&container_spec, new.own_oom_score_adj).map_err(spec_err)?;
    if let Some(adjust) = adjust {
        adjust(&mut oci).map_err(|reason| ContainerError::Adjust {
            id: id.clone(),
            reason,
        })?;
    }
    spec::write(&new.run_dir, &oci).map_err(spec_err)?;
    drop(spec_step);
    let shim_step = berth_host::step!("shim_create").entered();
    let pid = runtime.create(&CreateOptions {
        id: id.clone(),
        run_dir: new.run_dir.clone(),
        log_path: new.log_path.clone(),
        stdin: new.spec.stdin,
        stdin_once: new.stdin_once,
        tty: new.spec.tty,
    })?;
    drop(shim_step);
    // The container holds its own copies of the staged volumes now. Only
    // a staging dir that was made can hold mounts: the others cost no
    // read of the mount table, which grows with every pod.
    for dir in [&staged, &staged_images].into_iter().filter(|d| d.exists()) {
        overlay::unmount_all_under(dir).map_err(|source| ContainerError::Overlay {
            id: id.clone(),
            source,
        })?;
    }
    Ok(Created { pid, spec: oci })
}

/// Failures of [`remove`], all of them.
#[derive(Debug, thiserror::Error)]
#[error("remove container {id}: {}", .failures.join("; "))]
pub struct RemoveError {
    pub id: String,
    pub failures: Vec<String>,
}

/// Deletes the runtime's container (killing it if it runs), unmounts the
/// rootfs and removes both dirs. Every step runs; absent things are fine.
pub fn remove(
    runtime: &OciRuntime,
    id: &str,
    run_dir: &Path,
    state_dir: &Path,
) -> Result<(), RemoveError> {
    let mut failures = Vec::new();
    if let Err(err) = runtime.delete(id, true) {
        failures.push(err.to_string());
    }
    // The shim writes its exit file into run_dir: let it finish first.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while crate::oci::shim_alive(run_dir) {
        if std::time::Instant::now() >= deadline {
            failures.push(format!("berth-shim of {id} still runs after delete"));
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // The rootfs and anything a crash left staged: run_dir is only removed
    // once nothing is mounted below it.
    let mut dirs = vec![state_dir];
    match overlay::unmount_all_under(run_dir) {
        Ok(()) => dirs.push(run_dir),
        Err(err) => failures.push(err.to_string()),
    }
    for dir in dirs {
        match std::fs::remove_dir_all(dir) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                failures.push(format!("remove {}: {err}", dir.display()));
            }
            _ => {}
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(RemoveError {
            id: id.to_string(),
            failures,
        })
    }
}

/// Makes the run dir (the bundle, holding `config.json` and the rootfs
/// mount point) reachable by root only: 0700. In a pod's user namespace
/// runc resolves the rootfs path as the pod's root (host ids `owner`),
/// which root's modes and groups do not let through, so the dir is that
/// root's with mode 0100: it may traverse, not list or write; no other
/// host user may enter (root's own access needs no mode bits).
fn private_run_dir(run_dir: &Path, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    crate::private::dir(run_dir, crate::private::PRIVATE)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(run_dir, Some(uid), Some(gid))?;
        crate::private::dir(run_dir, USERNS_RUN_DIR_MODE)?;
    }
    Ok(())
}

/// See [`private_run_dir`].
pub const USERNS_RUN_DIR_MODE: u32 = 0o100;

/// A container's writable layer (the overlay's upper dir) in its state dir.
pub fn upper_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("upper")
}
