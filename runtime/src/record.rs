//! Container records: one JSON file per container, written atomically, the
//! state berthd reloads after a restart. A record's state moves
//! created → running → exited; "exited" is learnt from the shim's exit file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use berth_shim_protocol::ExitRecord;

use crate::signal::StopSignal;
use crate::spec::{BindMount, Resources};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    Created,
    Running,
    Exited,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContainerRecord {
    /// 64 hex chars.
    pub id: String,
    pub pod_id: String,
    /// CRI metadata name and attempt (the reserved name is derived from them and the pod's).
    pub name: String,
    pub attempt: u32,
    /// The runtime handler (`[runtimes]` key) that runs it.
    pub runtime_handler: String,
    pub state: ContainerState,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub exit: Option<ExitRecord>,
    /// Container init pid, from create.
    pub pid: i32,
    pub image: String,
    pub image_ref: String,
    pub image_id: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub log_path: PathBuf,
    /// The run dir, which is also the OCI bundle and the shim's home.
    pub run_dir: PathBuf,
    /// The overlay mount point (unmounted on remove).
    pub rootfs: PathBuf,
    /// The signal StopContainer sends (`SIGTERM`, `15`, `SIGRTMIN+3`, ...):
    /// the container config's `stop_signal`, else the image's StopSignal.
    pub stop_signal: Option<String>,
    /// The name reserved while the container exists (CRI-O's
    /// `k8s_<name>_<pod name>_<namespace>_<pod uid>_<attempt>`).
    #[serde(default)]
    pub reserved_name: String,
    /// The persistent dir with the overlay's upper and work dirs.
    #[serde(default)]
    pub state_dir: PathBuf,
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub stdin: bool,
    #[serde(default)]
    pub stdin_once: bool,
    /// The bind mounts it was created with, for ContainerStatus; `None` in
    /// records from before they were kept (see `legacy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mounts: Option<Vec<BindMount>>,
    /// Its cgroup limits as created and updated since, for ContainerStatus;
    /// `None` in records from before they were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// What records from before `mounts` and `resources` kept instead: the
    /// CreateContainer request's config (`{"config": ...}`), read only to
    /// answer ContainerStatus for containers made by an older berthd.
    #[serde(
        default,
        rename = "extra",
        skip_serializing_if = "serde_json::Value::is_null"
    )]
    pub legacy: serde_json::Value,
    /// Why an exit was recorded by berthd rather than by the shim
    /// (ContainerStatus.message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl ContainerRecord {
    /// Moves the record to "exited" if its shim wrote the exit file since,
    /// or if the shim died without writing it (then the container, if it
    /// still runs, is killed: a killed shim must not leave it "running"
    /// forever); returns whether it changed (and so should be saved).
    pub fn refresh(&mut self) -> std::io::Result<bool> {
        if self.state == ContainerState::Exited {
            return Ok(false);
        }
        if let Some(exit) = ExitRecord::read(&self.run_dir)? {
            self.exit(exit);
            return Ok(true);
        }
        // Only a shim known by its pid file can be known to be dead.
        if self.state != ContainerState::Running
            || !self
                .run_dir
                .join(berth_shim_protocol::SHIM_PID_FILE)
                .exists()
            || crate::oci::shim_alive(&self.run_dir)
        {
            return Ok(false);
        }
        // The shim writes the exit file just before it exits: look again.
        if let Some(exit) = ExitRecord::read(&self.run_dir)? {
            self.exit(exit);
            return Ok(true);
        }
        // Nothing is left to collect the container's output and exit code:
        // a container still running without its shim is killed, so it is
        // never reported running forever.
        let killed = process_alive(self.pid)
            && in_cgroup_of(self.pid, &self.id)
            && nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .is_ok();
        self.exit(ExitRecord {
            exit_code: if killed { 137 } else { 255 },
            signal: killed.then_some(nix::sys::signal::Signal::SIGKILL as i32),
            finished_at: berth_host::now_nanos(),
            oom_killed: false,
        });
        self.message = Some(if killed {
            "berth-shim exited before the container; berthd killed the container".into()
        } else {
            "berth-shim exited before the container did; the exit code is unknown".into()
        });
        Ok(true)
    }

    fn exit(&mut self, exit: ExitRecord) {
        self.state = ContainerState::Exited;
        self.exit = Some(exit);
    }

    /// The CRI reason for an exited container, as CRI-O words it.
    pub fn reason(&self) -> Option<&'static str> {
        let exit = self.exit.as_ref()?;
        Some(if exit.oom_killed {
            "OOMKilled"
        } else if exit.exit_code == 0 {
            "Completed"
        } else {
            "Error"
        })
    }

    /// The stop signal to send: the container's own (CRI `stop_signal`),
    /// else the image's, else SIGTERM (KEP-4960's order).
    pub fn stop_signal(&self) -> Result<StopSignal, StoreError> {
        match self.stop_signal.as_deref() {
            Some(text) => StopSignal::parse(text).map_err(|e| StoreError::BadSignal(e.0)),
            None => Ok(StopSignal::TERM),
        }
    }
}

/// Whether `pid` runs (exists and is not a zombie).
fn process_alive(pid: i32) -> bool {
    pid > 0
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z'))
        })
}

/// Whether `pid` is in a cgroup named after container `id` (guards against
/// a recycled pid).
fn in_cgroup_of(pid: i32, id: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|text| text.contains(id))
}

/// Parses `SIGTERM`, `TERM`, `15` (any case for names).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("container record {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("container record {path} is unreadable: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("invalid stop signal {0:?}")]
    BadSignal(String),
}

impl StoreError {
    /// The ID of the container whose record exists but does not parse.
    pub fn corrupt_id(&self) -> Option<&str> {
        let StoreError::Corrupt { path, .. } = self else {
            return None;
        };
        let id = path.file_stem()?.to_str()?;
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
    }
}

/// Records as `<dir>/<id>.json`.
#[derive(Debug, Clone)]
pub struct RecordStore {
    dir: PathBuf,
}

impl RecordStore {
    pub fn open(dir: &Path) -> Result<RecordStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(RecordStore {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    pub fn save(&self, record: &ContainerRecord) -> Result<(), StoreError> {
        let path = self.path(&record.id);
        let bytes = serde_json::to_vec(record).expect("record serializes");
        berth_host::atomic::write_private(&path, &bytes)
            .map_err(|source| StoreError::Io { path, source })
    }

    /// Removing an absent record is success.
    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        let path = self.path(id);
        match std::fs::remove_file(&path) {
            Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
                Err(StoreError::Io { path, source })
            }
            _ => Ok(()),
        }
    }

    /// Every record, refreshed against exit files (changes saved). A corrupt
    /// record is reported, not skipped silently: the caller logs and goes on.
    pub fn load_all(&self) -> Result<(Vec<ContainerRecord>, Vec<StoreError>), StoreError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|source| StoreError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let (mut records, mut errors) = (Vec::new(), Vec::new());
        for entry in entries.flatten() {
            let path = entry.path();
            if berth_host::atomic::is_temporary(&path) {
                // Only one berthd uses the dir: nobody is writing this any more.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let loaded = std::fs::read(&path)
                .map_err(|source| StoreError::Io {
                    path: path.clone(),
                    source,
                })
                .and_then(|bytes| {
                    serde_json::from_slice::<ContainerRecord>(&bytes).map_err(|source| {
                        StoreError::Corrupt {
                            path: path.clone(),
                            source,
                        }
                    })
                });
            match loaded {
                Ok(mut record) => {
                    if record.refresh().unwrap_or(false)
                        && let Err(err) = self.save(&record)
                    {
                        errors.push(err);
                    }
                    records.push(record);
                }
                Err(err) => errors.push(err),
            }
        }
        Ok((records, errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(run_dir: &Path) -> ContainerRecord {
        ContainerRecord {
            id: "a".repeat(64),
            pod_id: "b".repeat(64),
            name: "c".into(),
            attempt: 0,
            runtime_handler: "runc".into(),
            state: ContainerState::Running,
            created_at: 1,
            started_at: Some(2),
            exit: None,
            pid: 42,
            image: "busybox".into(),
            image_ref: "busybox@sha256:x".into(),
            image_id: "sha256:x".into(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            log_path: "/l".into(),
            run_dir: run_dir.to_path_buf(),
            rootfs: "/r".into(),
            stop_signal: Some("SIGQUIT".into()),
            reserved_name: "k8s_c".into(),
            state_dir: "/s".into(),
            tty: false,
            stdin: false,
            stdin_once: false,
            mounts: None,
            resources: None,
            legacy: serde_json::Value::Null,
            message: None,
        }
    }

    #[test]
    fn load_all_removes_half_written_temporary_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::open(&dir.path().join("records")).unwrap();
        let temp = dir.path().join("records/.abc.json.tmp77");
        std::fs::write(&temp, "{\"id\":").unwrap();
        let (records, errors) = store.load_all().unwrap();
        assert!(records.is_empty() && errors.is_empty());
        assert!(!temp.exists());
    }

    #[test]
    fn load_all_picks_up_exits_written_while_we_were_away() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::open(&dir.path().join("records")).unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir(&run).unwrap();
        store.save(&record(&run)).unwrap();
        let exit = ExitRecord {
            exit_code: 3,
            signal: None,
            finished_at: 9,
            oom_killed: false,
        };
        std::fs::write(run.join("exit"), serde_json::to_vec(&exit).unwrap()).unwrap();
        std::fs::write(dir.path().join("records/junk.json"), "{").unwrap();
        let (records, errors) = store.load_all().unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(errors.len(), 1);
        let junk = dir.path().join("records/junk.json").display().to_string();
        assert!(errors[0].to_string().contains(&junk), "{}", errors[0]);
        assert_eq!(errors[0].corrupt_id(), None, "not a container ID");
        let id = "b".repeat(64);
        std::fs::write(store.path(&id), "").unwrap();
        let (_, errors) = store.load_all().unwrap();
        let ids: Vec<_> = errors.iter().filter_map(StoreError::corrupt_id).collect();
        assert_eq!(ids, vec![id.as_str()]);
        std::fs::remove_file(store.path(&id)).unwrap();
        assert_eq!(records[0].state, ContainerState::Exited);
        assert_eq!(records[0].exit, Some(exit));
        assert_eq!(records[0].reason(), Some("Error"));
        // Saved: a second load needs no exit file.
        std::fs::remove_file(run.join("exit")).unwrap();
        let (records, _) = store.load_all().unwrap();
        assert_eq!(records[0].state, ContainerState::Exited);
        store.remove(&"a".repeat(64)).unwrap();
        store.remove(&"a".repeat(64)).unwrap();
    }
}
