//! The pod record: everything berthd must know to report and tear down a
//! pod after a restart, written atomically.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::infra::Infra;
use crate::spec::{IdMapping, PodSpec};

/// A pod sandbox ID: 64 lowercase hex characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PodId(String);

impl PodId {
    pub fn random() -> std::io::Result<PodId> {
        berth_host::id::random_hex_id().map(PodId)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

// Prefix lookup in the pod index; PodId orders as its string does.
impl std::borrow::Borrow<str> for PodId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PodId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(PodId(s))
        } else {
            Err(format!("{s:?} is not a 64-character hex pod ID"))
        }
    }
}

impl From<PodId> for String {
    fn from(id: PodId) -> String {
        id.0
    }
}

impl fmt::Display for PodId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Ready,
    NotReady,
}

/// Pinned namespace paths; None where the pod uses the host's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Namespaces {
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    /// Only for a pod with PID mode POD: the infra process's namespace.
    pub pid: Option<PathBuf>,
    /// Only for a pod with user namespace mode POD; it owns the others.
    #[serde(default)]
    pub user: Option<PathBuf>,
}

impl Namespaces {
    /// Every pinned path, the user namespace last (it owns the others).
    pub fn pins(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.net, &self.ipc, &self.uts, &self.pid, &self.user]
            .into_iter()
            .flatten()
    }
}

/// The files containers of the pod bind-mount.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Files {
    pub hostname: PathBuf,
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
    /// A tmpfs under the run root, or the host's /dev/shm with host IPC.
    pub shm: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    pub ips: Vec<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pod {
    pub id: PodId,
    pub spec: PodSpec,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    pub state: State,
    /// False until RunPodSandbox finished: such a pod is NotReady and only
    /// good for Stop and Remove.
    pub complete: bool,
    /// The resolved handler name (never empty).
    pub runtime_handler: String,
    pub hostname: String,
    pub cgroup_parent: String,
    pub namespaces: Namespaces,
    pub files: Files,
    pub infra: Option<Infra>,
    pub network: Option<Network>,
}

impl Pod {
    /// The infra process's cgroup, relative to each hierarchy's root.
    pub fn infra_cgroup(&self) -> PathBuf {
        berth_host::cgroup::infra_dir(&self.cgroup_parent, self.id.as_str())
    }

    /// The pod's own user namespace, for its containers: the pinned path
    /// and the uid and gid mappings. None when the pod uses the host's.
    pub fn user_namespace(&self) -> Option<(&Path, &[IdMapping], &[IdMapping])> {
        let path = self.namespaces.user.as_deref()?;
        let userns = &self.spec.user_namespace;
        Some((path, &userns.uids, &userns.gids))
    }

    /// Ready on record and, when it has one, its infra process still runs.
    pub fn effective_state(&self) -> State {
        match (self.state, &self.infra) {
            (State::Ready, Some(infra)) if !infra.alive() => State::NotReady,
            (state, _) => state,
        }
    }
}

/// Where one pod's things live.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
    pub run_root: PathBuf,
}

impl Layout {
    pub fn pods_dir(&self) -> PathBuf {
        self.root.join("pods")
    }
    pub fn state_dir(&self, id: &PodId) -> PathBuf {
        self.pods_dir().join(id.as_str())
    }
    pub fn record(&self, id: &PodId) -> PathBuf {
        self.state_dir(id).join("pod.json")
    }
    pub fn run_dir(&self, id: &PodId) -> PathBuf {
        self.run_root.join("pods").join(id.as_str())
    }
    pub fn ns_pin(&self, kind: &str, id: &PodId) -> PathBuf {
        self.run_root.join("ns").join(kind).join(id.as_str())
    }
    /// The systemd slices Berth started ([`crate::slices`]).
    pub fn slice_ledger(&self) -> PathBuf {
        self.run_root.join("slices.json")
    }
    pub fn cni_cache_dir(&self) -> PathBuf {
        self.root.join("cni").join("results")
    }
    /// The files the pod's containers mount: in the run dir (a tmpfs on
    /// nodes, as CRI-O keeps them), since nothing of them outlives a reboot
    /// that ends the pod, and a disk would pay an inode and a write per
    /// file and pod.
    pub fn files(&self, id: &PodId) -> Files {
        let dir = self.run_dir(id);
        Files {
            hostname: dir.join("hostname"),
            hosts: dir.join("hosts"),
            resolv_conf: dir.join("resolv.conf"),
            shm: self.run_dir(id).join("shm"),
        }
    }
}

/// Durable and 0600: a record holds the pod's config, annotations included.
pub fn save(layout: &Layout, pod: &Pod) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(pod).expect("records serialize");
    let path = layout.record(&pod.id);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    berth_host::atomic::write_private(&path, &bytes)
}

/// Every record under `<root>/pods`; unreadable ones are reported, not fatal.
pub fn load_all(layout: &Layout) -> (Vec<Pod>, Vec<String>) {
    let mut pods = Vec::new();
    let mut errors = Vec::new();
    let Ok(entries) = std::fs::read_dir(layout.pods_dir()) else {
        return (pods, errors);
    };
    for entry in entries.flatten() {
        let path = entry.path().join("pod.json");
        let bytes = match std::fs::read(&path) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                if let Err(err) = remove_unrecorded(layout, &entry.path()) {
                    errors.push(err);
                }
                continue;
            }
            other => other,
        };
        match bytes
            .map_err(|e| e.to_string())
            .and_then(|bytes| serde_json::from_slice::<Pod>(&bytes).map_err(|e| e.to_string()))
        {
            Ok(pod) => pods.push(pod),
            Err(err) => errors.push(format!("{}: {err}", path.display())),
        }
    }
    (pods, errors)
}

/// A pod dir without a record is what a kill left of a RunPodSandbox before
/// its first record write or of a removal after the record went: nothing
/// in it was set up (namespaces are pinned only after the record is
/// written and unpinned before it is removed), so both dirs go.
fn remove_unrecorded(layout: &Layout, state_dir: &Path) -> Result<(), String> {
    let run_dir = layout
        .run_root
        .join("pods")
        .join(state_dir.file_name().unwrap_or_default());
    for dir in [run_dir.as_path(), state_dir] {
        match std::fs::remove_dir_all(dir) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!(
                    "{} has no pod record and cannot be removed: {err}",
                    dir.display()
                ));
            }
            _ => {}
        }
    }
    tracing::info!(
        "removed {}: a pod dir without a record",
        state_dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_dir_without_a_record_is_removed_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout {
            root: dir.path().join("root"),
            run_root: dir.path().join("run"),
        };
        let id = PodId::random().unwrap();
        let state = layout.state_dir(&id);
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(state.join("pod.json.tmp"), "{\"half").unwrap();
        std::fs::create_dir_all(layout.run_dir(&id)).unwrap();

        let (pods, errors) = load_all(&layout);
        assert!(pods.is_empty());
        assert!(errors.is_empty(), "{errors:?}");
        assert!(!state.exists());
        assert!(!layout.run_dir(&id).exists());
    }
}
