//! The containers berthd knows: 64-hex IDs with unique-prefix lookup, name
//! reservation, one operation lock per container, an in-memory index (so
//! listing makes no runtime call), records on disk written atomically and
//! reloaded when berthd starts.
//!
//! Every method blocks (runtime calls, fsync): the server runs them on
//! `spawn_blocking`. A slow operation holds only its own container's
//! operation lock; the index and a container's record are locked only long
//! enough to copy or update them, so a slow create or stop never delays
//! listing or the status of other containers.

use berth_host::sync::lock;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, TryLockError};
use std::time::Duration;

use crate::exit_watch::ExitWatch;
use crate::lifecycle::{self, ContainerError, NewContainer, RemoveError};
use crate::oci::{ExecOutput, OciRuntime, RuntimeError};
use crate::record::{ContainerRecord, ContainerState, RecordStore, StoreError};
use crate::spec::ContainerSpec;
use crate::update::{self, UpdateError};
use berth_shim_protocol::ExitRecord;

/// A runtime handler by name, as configured now (handlers can change while
/// berthd runs: a config reload).
pub type Runtimes = Arc<dyn Fn(&str) -> Option<OciRuntime> + Send + Sync>;

#[derive(Clone)]
pub struct Options {
    /// Persistent: `records/<id>.json` and `state/<id>` (overlay upper/work).
    pub state_dir: PathBuf,
    /// Volatile: `<id>` run dirs (bundle, shim sockets, exit file).
    pub run_dir: PathBuf,
    pub runtimes: Runtimes,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("container {0:?} not found")]
    NotFound(String),
    #[error("container ID prefix {prefix:?} is ambiguous: {count} containers match")]
    Ambiguous { prefix: String, count: usize },
    #[error("container name {name:?} is reserved for container {holder}")]
    NameReserved { name: String, holder: String },
    #[error("container {id}: no runtime handler {handler:?} is configured")]
    UnknownHandler { id: String, handler: String },
    #[error("container {id} is {state}, not {wanted}")]
    WrongState {
        id: String,
        state: &'static str,
        wanted: &'static str,
    },
    #[error("cannot generate a container ID: {0}")]
    Id(std::io::Error),
    #[error("container {id}: reopen its log: {source}")]
    Reopen { id: String, source: std::io::Error },
    #[error(transparent)]
    Create(#[from] ContainerError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Remove(#[from] RemoveError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("container {id}: {source}")]
    Update { id: String, source: UpdateError },
}

pub fn state_name(state: ContainerState) -> &'static str {
    match state {
        ContainerState::Created => "created",
        ContainerState::Running => "running",
        ContainerState::Exited => "exited",
    }
}

/// What happened to a container (GetContainerEvents).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Started,
    /// Stopped by StopContainer/RemoveContainer, or exited by itself.
    Stopped,
    Deleted,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: EventKind,
    /// The container's record as the event left it.
    pub record: ContainerRecord,
    /// Nanoseconds since the epoch.
    pub at: i64,
}

/// Told every event, in order for each container. It runs under the
/// container's locks: it must not block.
pub type Observer = Box<dyn Fn(Event) + Send + Sync>;

/// A running container, for the streaming server (exec, attach, port-forward).
#[derive(Debug, Clone)]
pub struct Running {
    pub id: String,
    pub pod_id: String,
    /// The handler that runs it (for `exec`).
    pub runtime: OciRuntime,
    /// Its run dir: the shim's `attach` and `ctl` sockets are in it.
    pub run_dir: PathBuf,
    /// The container's init pid (in berthd's PID namespace).
    pub pid: i32,
    pub tty: bool,
    pub stdin: bool,
    pub stdin_once: bool,
}

struct Slot {
    /// Held for the whole of a create/start/stop/remove of this container.
    op: Mutex<()>,
    /// The current record; locked only to copy or update it.
    record: Mutex<ContainerRecord>,
    removed: AtomicBool,
}

#[derive(Default)]
struct Index {
    by_id: BTreeMap<String, Arc<Slot>>,
    /// Reserved name → holder, including containers being created.
    names: HashMap<String, String>,
}

pub struct Containers {
    options: Options,
    records: RecordStore,
    index: Mutex<Index>,
    observer: OnceLock<Observer>,
    /// None where inotify is refused (no instance left): exits are then
    /// learnt by the periodic refresh only.
    exits: Option<ExitWatch>,
}

impl Containers {
    /// Loads every record, learning from exit files what ended while berthd
    /// was away. Unreadable records are returned to be logged (left on disk:
    /// see [`Containers::reclaim`]).
    pub fn open(options: Options) -> Result<(Containers, Vec<StoreError>), StoreError> {
        let records = RecordStore::open(&options.state_dir.join("records"))?;
        let (loaded, mut errors) = records.load_all()?;
        let mut index = Index::default();
        for mut record in loaded {
            // After a reboot the run root is empty: the container is gone
            // and nobody recorded how it ended.
            if record.state != ContainerState::Exited && !record.run_dir.exists() {
                record.state = ContainerState::Exited;
                record.exit = Some(ExitRecord {
                    exit_code: 255,
                    signal: None,
                    finished_at: berth_host::now_nanos(),
                    oom_killed: false,
                });
                record.message = Some(if record.pid == 0 {
                    "berthd stopped before it finished creating it".into()
                } else {
                    "its run dir is gone (the host rebooted?)".into()
                });
                if let Err(err) = records.save(&record) {
                    errors.push(err);
                }
            }
            index
                .names
                .insert(record.reserved_name.clone(), record.id.clone());
            index.by_id.insert(
                record.id.clone(),
                Arc::new(Slot {
                    op: Mutex::new(()),
                    record: Mutex::new(record),
                    removed: AtomicBool::new(false),
                }),
            );
        }
        let exits = ExitWatch::new()
            .inspect_err(|err| tracing::warn!("no inotify for containers' exit files: {err}"))
            .ok();
        let containers = Containers {
            options,
            records,
            index: Mutex::new(index),
            observer: OnceLock::new(),
            exits,
        };
        for slot in lock(&containers.index).by_id.values() {
            let record = lock(&slot.record);
            if record.state != ContainerState::Exited {
                containers.watch_exit(&record);
            }
        }
        errors.extend(containers.adopt_started());
        Ok((containers, errors))
    }

    /// A berthd killed between the runtime's start and saving the record
    /// left a started container recorded as created: the runtime knows.
    /// Its start time is lost; now stands in for it.
    fn adopt_started(&self) -> Vec<StoreError> {
        let mut errors = Vec::new();
        for slot in self.slots() {
            let record = lock(&slot.record).clone();
            if record.state != ContainerState::Created || record.pid == 0 {
                continue;
            }
            let state = self
                .runtime_of(&record)
                .and_then(|runtime| Ok(runtime.state(&record.id)?));
            match state {
                Ok(Some(state)) if state.status == "running" => {
                    let mut record = lock(&slot.record);
                    record.state = ContainerState::Running;
                    record.started_at = Some(berth_host::now_nanos());
                    if let Err(err) = self.records.save(&record) {
                        errors.push(err);
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(container = %record.id, "cannot ask the runtime whether it was started: {err}")
                }
            }
        }
        errors
    }

    /// Removes what a container whose record did not parse (see
    /// [`StoreError::corrupt_id`]) left: the runtime's container (killed)
    /// and its shim, the rootfs, its dirs, then the record. `runtime` is
    /// the handler holding its state, if any: one that does not know it
    /// deletes nothing. Whatever fails keeps the record, for the next start.
    pub fn reclaim(&self, id: &str, runtime: &OciRuntime) -> Result<(), Error> {
        // Never a container berthd serves.
        if lock(&self.index).by_id.contains_key(id) {
            return Ok(());
        }
        lifecycle::remove(runtime, id, &self.run_dir_of(id), &self.state_dir_of(id))?;
        self.records.remove(id)?;
        Ok(())
    }

    pub fn runtime(&self, handler: &str) -> Option<OciRuntime> {
        (self.options.runtimes)(handler)
    }

    fn runtime_of(&self, record: &ContainerRecord) -> Result<OciRuntime, Error> {
        self.runtime(&record.runtime_handler)
            .ok_or_else(|| Error::UnknownHandler {
                id: record.id.clone(),
                handler: record.runtime_handler.clone(),
            })
    }

    /// The slot of a full ID or unique prefix; `None` when nothing matches.
    fn resolve(&self, id: &str) -> Result<Option<Arc<Slot>>, Error> {
        let index = lock(&self.index);
        let found = berth_host::id::by_prefix(&index.by_id, id).map_err(|a| Error::Ambiguous {
            prefix: a.prefix,
            count: a.count,
        })?;
        Ok(found.map(|(_, slot)| Arc::clone(slot)))
    }

    fn slot(&self, id: &str) -> Result<Arc<Slot>, Error> {
        self.resolve(id)?
            .ok_or_else(|| Error::NotFound(id.to_string()))
    }

    /// Sets the one observer of container events; false if one was set.
    pub fn observe(&self, observer: Observer) -> bool {
        self.observer.set(observer).is_ok()
    }

    fn emit(&self, kind: EventKind, record: &ContainerRecord) {
        if let Some(observer) = self.observer.get() {
            observer(Event {
                kind,
                record: record.clone(),
                at: berth_host::now_nanos(),
            });
        }
    }

    /// The record, updated from the exit file (and saved if it changed);
    /// the caller holds the container's operation lock, so the exit is
    /// seen (and its event emitted) once.
    fn refresh_locked(&self, slot: &Slot) -> ContainerRecord {
        let mut record = lock(&slot.record);
        if record.refresh().unwrap_or(false) {
            if let Err(err) = self.records.save(&record) {
                // Retried at the next refresh: the exit file stays.
                tracing::warn!("{err}");
            }
            self.emit(EventKind::Stopped, &record);
        }
        record.clone()
    }

    /// The record, refreshed unless an operation on the container is under
    /// way (that operation settles its state).
    fn refreshed(&self, slot: &Slot) -> ContainerRecord {
        let _op = match slot.op.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return lock(&slot.record).clone(),
        };
        self.refresh_locked(slot)
    }

    /// Learns which running containers exited by themselves (their shim's
    /// exit file), emitting their Stopped events; call it periodically.
    pub fn reap_exits(&self) {
        for slot in self.slots() {
            if lock(&slot.record).state != ContainerState::Exited
                && !slot.removed.load(Ordering::SeqCst)
            {
                self.refreshed(&slot);
            }
        }
    }

    /// Counts of containers per state, and of live shims. A container that
    /// has not exited but whose shim is gone (killed, or berthd died while
    /// creating it) is "unknown": nobody can tell how it ends.
    pub fn census(&self) -> (BTreeMap<&'static str, i64>, i64) {
        let mut states = BTreeMap::from([
            ("created", 0),
            ("running", 0),
            ("exited", 0),
            ("unknown", 0),
        ]);
        let mut shims = 0;
        for record in self.list() {
            let alive = crate::oci::shim_alive(&record.run_dir);
            let state = match record.state {
                ContainerState::Exited => "exited",
                _ if !alive => "unknown",
                other => state_name(other),
            };
            *states.entry(state).or_default() += 1;
            shims += i64::from(alive);
        }
        (states, shims)
    }

    fn update(&self, slot: &Slot, edit: impl FnOnce(&mut ContainerRecord)) -> Result<(), Error> {
        let mut record = lock(&slot.record);
        edit(&mut record);
        self.records.save(&record)?;
        Ok(())
    }

    /// Reserves `name` for a new container; returns the new container's ID.
    pub fn reserve(&self, name: &str) -> Result<String, Error> {
        let mut index = lock(&self.index);
        if let Some(holder) = index.names.get(name) {
            return Err(Error::NameReserved {
                name: name.to_string(),
                holder: holder.clone(),
            });
        }
        let id = loop {
            let id = berth_host::id::random_hex_id().map_err(Error::Id)?;
            if !index.by_id.contains_key(&id) {
                break id;
            }
        };
        index.names.insert(name.to_string(), id.clone());
        Ok(id)
    }

    /// Frees a name [`Containers::reserve`] gave `id` that no container took.
    pub fn release(&self, name: &str, id: &str) {
        let mut index = lock(&self.index);
        if index.names.get(name).is_some_and(|holder| holder == id) {
            index.names.remove(name);
        }
    }

    /// Where a container's dirs go.
    pub fn run_dir_of(&self, id: &str) -> PathBuf {
        self.options.run_dir.join(id)
    }

    /// The persistent dir of every container (records, writable layers).
    pub fn state_dir(&self) -> &Path {
        &self.options.state_dir
    }

    pub fn state_dir_of(&self, id: &str) -> PathBuf {
        self.options.state_dir.join("state").join(id)
    }

    /// Creates the container `record` describes (its ID and name reserved
    /// by [`Containers::reserve`]): the record is written first, so a crash
    /// midway leaves something Remove can clean up. `adjust` changes the
    /// OCI spec before it is written. On failure everything is undone and
    /// the name freed.
    pub fn create(
        &self,
        mut record: ContainerRecord,
        layers: Vec<PathBuf>,
        spec: ContainerSpec,
        own_oom_score_adj: i32,
        adjust: Option<Box<lifecycle::SpecAdjust>>,
    ) -> Result<ContainerRecord, Error> {
        let result = (|| {
            let runtime = self.runtime_of(&record)?;
            record.run_dir = self.run_dir_of(&record.id);
            record.state_dir = self.state_dir_of(&record.id);
            record.rootfs = lifecycle::rootfs_of(&record.run_dir);
            record.state = ContainerState::Created;
            record.created_at = berth_host::now_nanos();
            record.pid = 0;
            berth_host::step!("record").in_scope(|| self.records.save(&record))?;
            let new = NewContainer {
                id: record.id.clone(),
                run_dir: record.run_dir.clone(),
                state_dir: record.state_dir.clone(),
                layers,
                log_path: record.log_path.clone(),
                stdin_once: record.stdin_once,
                spec,
                own_oom_score_adj,
            };
            match lifecycle::create_adjusted(&runtime, &new, adjust.as_deref()) {
                Ok(created) => {
                    berth_failpoint::hit(berth_failpoint::CONTAINER_AFTER_SHIM);
                    record.pid = created.pid;
                    let saved = berth_host::step!("record").in_scope(|| self.records.save(&record));
                    if let Err(err) = saved {
                        // The record without its pid would not find the
                        // shim again: undo the container (a full disk, say).
                        let _ = lifecycle::remove(
                            &runtime,
                            &record.id,
                            &record.run_dir,
                            &record.state_dir,
                        );
                        let _ = self.records.remove(&record.id);
                        return Err(err.into());
                    }
                    Ok(())
                }
                Err(err) => {
                    let _ = self.records.remove(&record.id);
                    Err(Error::from(err))
                }
            }
        })();
        match result {
            Ok(()) => {
                let slot = Arc::new(Slot {
                    op: Mutex::new(()),
                    record: Mutex::new(record.clone()),
                    removed: AtomicBool::new(false),
                });
                // Held until Created is out: nothing else happens to the
                // container before.
                let _op = lock(&slot.op);
                self.watch_exit(&record);
                lock(&self.index)
                    .by_id
                    .insert(record.id.clone(), Arc::clone(&slot));
                self.emit(EventKind::Created, &record);
                Ok(record)
            }
            Err(err) => {
                self.release(&record.reserved_name, &record.id);
                Err(err)
            }
        }
    }

    /// Starts a created container.
    pub fn start(&self, id: &str) -> Result<(), Error> {
        let slot = self.slot(id)?;
        let _op = lock(&slot.op);
        if slot.removed.load(Ordering::SeqCst) {
            return Err(Error::NotFound(id.to_string()));
        }
        let record = self.refresh_locked(&slot);
        if record.state != ContainerState::Created || record.pid == 0 {
            return Err(Error::WrongState {
                id: record.id,
                state: state_name(record.state),
                wanted: "created",
            });
        }
        // Taken before the runtime call: a process that exits at once must
        // not report a finish before its start.
        let started_at = berth_host::now_nanos();
        let runtime = self.runtime_of(&record)?;
        berth_host::step!("runtime_start").in_scope(|| runtime.start(&record.id))?;
        berth_host::step!("record").in_scope(|| {
            self.update(&slot, |r| {
                r.state = ContainerState::Running;
                r.started_at = Some(started_at);
            })
        })?;
        self.emit(EventKind::Started, &lock(&slot.record));
        Ok(())
    }

    /// Stops a container: its stop signal, then SIGKILL once `timeout`
    /// passed. An unknown or exited container is fine.
    pub fn stop(&self, id: &str, timeout: Duration) -> Result<(), Error> {
        let Some(slot) = self.resolve(id)? else {
            return Ok(());
        };
        let _op = lock(&slot.op);
        if slot.removed.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.stop_locked(&slot, timeout)
    }

    fn stop_locked(&self, slot: &Slot, timeout: Duration) -> Result<(), Error> {
        let record = self.refresh_locked(slot);
        // pid 0: berthd died while creating it; there is nothing to signal.
        if record.state == ContainerState::Exited || record.pid == 0 {
            return Ok(());
        }
        let signal = record.stop_signal()?;
        let exit = self
            .runtime_of(&record)?
            .stop(&record.id, &record.run_dir, signal, timeout)?;
        self.update(slot, |r| {
            r.state = ContainerState::Exited;
            r.exit = Some(exit);
        })?;
        self.emit(EventKind::Stopped, &lock(&slot.record));
        Ok(())
    }

    /// Removes a container, killing it first if it runs; its name is freed.
    /// An unknown container is fine.
    pub fn remove(&self, id: &str) -> Result<(), Error> {
        let Some(slot) = self.resolve(id)? else {
            return Ok(());
        };
        let _op = lock(&slot.op);
        if slot.removed.load(Ordering::SeqCst) {
            return Ok(());
        }
        // A shim that is gone already cannot report an exit: remove anyway.
        match self.stop_locked(&slot, Duration::ZERO) {
            Ok(()) | Err(Error::Runtime(RuntimeError::ShimGone { .. })) => {}
            Err(err) => return Err(err),
        }
        let record = lock(&slot.record).clone();
        let runtime = self.runtime_of(&record)?;
        lifecycle::remove(&runtime, &record.id, &record.run_dir, &record.state_dir)?;
        self.records.remove(&record.id)?;
        slot.removed.store(true, Ordering::SeqCst);
        let mut index = lock(&self.index);
        index.by_id.remove(&record.id);
        if index.names.get(&record.reserved_name) == Some(&record.id) {
            index.names.remove(&record.reserved_name);
        }
        drop(index);
        self.emit(EventKind::Deleted, &record);
        Ok(())
    }

    /// Applies new cgroup limits (`new`: the fields set are the ones to
    /// change, already checked, see [`update::resources`]) to a created or running
    /// container through the runtime's `update`, then records them in its
    /// `config.json` and, with `edit`, in its record.
    pub fn update_resources(
        &self,
        id: &str,
        new: &crate::spec::Resources,
        edit: impl FnOnce(&mut ContainerRecord),
    ) -> Result<(), Error> {
        let slot = self.slot(id)?;
        let _op = lock(&slot.op);
        if slot.removed.load(Ordering::SeqCst) {
            return Err(Error::NotFound(id.to_string()));
        }
        let record = self.refresh_locked(&slot);
        if record.state == ContainerState::Exited {
            return Err(Error::WrongState {
                id: record.id,
                state: state_name(record.state),
                wanted: "created or running",
            });
        }
        let runtime = self.runtime_of(&record)?;
        let failed = |source| Error::Update {
            id: record.id.clone(),
            source,
        };
        let spec_path = record.run_dir.join("config.json");
        let io = |source| {
            failed(UpdateError::Io {
                id: record.id.clone(),
                path: spec_path.clone(),
                source,
            })
        };
        let mut spec: serde_json::Value = std::fs::read(&spec_path)
            .and_then(|bytes| serde_json::from_slice(&bytes).map_err(std::io::Error::other))
            .map_err(io)?;
        let resources = update::resources(new);
        let mut for_runtime = resources.clone();
        let hugepages = for_runtime
            .as_object_mut()
            .and_then(|fields| fields.remove("hugepageLimits"));
        if for_runtime
            .as_object()
            .is_some_and(|fields| !fields.is_empty())
        {
            runtime.update(&record.id, &record.run_dir, &for_runtime)?;
        }
        if let Some(serde_json::Value::Array(limits)) = &hugepages {
            let cgroup = berth_host::cgroup::dir_of_cgroups_path(
                spec["linux"]["cgroupsPath"].as_str().unwrap_or_default(),
            );
            update::apply_hugepages(&record.id, &cgroup, limits).map_err(failed)?;
        }
        update::merge_resources(&mut spec["linux"]["resources"], &resources);
        berth_host::atomic::write_private(&spec_path, spec.to_string().as_bytes()).map_err(io)?;
        self.update(&slot, edit)
    }

    /// A copy of the record; NOT_FOUND for an unknown ID.
    pub fn get(&self, id: &str) -> Result<ContainerRecord, Error> {
        let slot = self.slot(id)?;
        Ok(self.refreshed(&slot))
    }

    /// Every container's slot, taken out of the index so that no work on
    /// them holds the index lock.
    fn slots(&self) -> Vec<Arc<Slot>> {
        lock(&self.index).by_id.values().cloned().collect()
    }

    /// Copies of every record as last learnt, without reading any file:
    /// exits reach the records through [`Containers::watch_exits`] as the
    /// shims write them, and through the periodic [`Containers::reap_exits`].
    pub fn list_known(&self) -> Vec<ContainerRecord> {
        self.slots()
            .iter()
            .map(|slot| lock(&slot.record).clone())
            .collect()
    }

    fn watch_exit(&self, record: &ContainerRecord) {
        if let Some(exits) = &self.exits
            && let Err(err) = exits.add(&record.id, &record.run_dir)
        {
            // The periodic refresh still learns of its exit.
            tracing::warn!(container = %record.id, "cannot watch {}: {err}", record.run_dir.display());
        }
    }

    /// Refreshes each container whose shim writes its exit file, as it does;
    /// runs until inotify fails (never, in practice). Call it on a thread of
    /// its own.
    pub fn watch_exits(&self) {
        let Some(exits) = &self.exits else { return };
        loop {
            let ids = match exits.next() {
                Ok(ids) => ids,
                Err(nix::Error::EINTR) => continue,
                Err(err) => {
                    tracing::warn!("containers' exit watch failed: {err}");
                    return;
                }
            };
            for id in ids {
                let slot = lock(&self.index).by_id.get(&id).cloned();
                if let Some(slot) = slot
                    && !slot.removed.load(Ordering::SeqCst)
                {
                    self.refreshed(&slot);
                }
            }
        }
    }

    /// Copies of every record (no runtime calls: exits come from the shims'
    /// exit files).
    pub fn list(&self) -> Vec<ContainerRecord> {
        self.slots()
            .iter()
            .map(|slot| self.refreshed(slot))
            .collect()
    }

    /// IDs of the pod's containers.
    pub fn of_pod(&self, pod_id: &str) -> Vec<String> {
        self.slots()
            .iter()
            .filter_map(|slot| {
                let record = lock(&slot.record);
                (record.pod_id == pod_id).then(|| record.id.clone())
            })
            .collect()
    }

    /// A running container's runtime facts, for exec / attach / port-forward
    /// and ExecSync: NOT_FOUND for an unknown ID, an error naming its state
    /// when it does not run.
    pub fn running(&self, id: &str) -> Result<Running, Error> {
        let slot = self.slot(id)?;
        let record = self.refreshed(&slot);
        if record.state != ContainerState::Running {
            return Err(Error::WrongState {
                id: record.id,
                state: state_name(record.state),
                wanted: "running",
            });
        }
        Ok(Running {
            runtime: self.runtime_of(&record)?,
            id: record.id,
            pod_id: record.pod_id,
            run_dir: record.run_dir,
            pid: record.pid,
            tty: record.tty,
            stdin: record.stdin,
            stdin_once: record.stdin_once,
        })
    }

    /// Runs `command` in a running container (ExecSync).
    pub fn exec_sync(
        &self,
        id: &str,
        command: &[String],
        timeout: Option<Duration>,
    ) -> Result<ExecOutput, Error> {
        let running = self.running(id)?;
        Ok(running.runtime.exec_sync(&running.id, command, timeout)?)
    }

    /// Has the shim reopen the container's log file (after log rotation).
    pub fn reopen_log(&self, id: &str) -> Result<(), Error> {
        let running = self.running(id)?;
        berth_shim_protocol::control(&running.run_dir, "reopen").map_err(|source| Error::Reopen {
            id: running.id,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, name: &str, run_dir: PathBuf) -> ContainerRecord {
        ContainerRecord {
            id: id.into(),
            pod_id: "p".repeat(64),
            name: "c".into(),
            attempt: 0,
            runtime_handler: "runc".into(),
            state: ContainerState::Running,
            created_at: 1,
            started_at: Some(2),
            exit: None,
            pid: 42,
            image: "busybox".into(),
            image_ref: "busybox".into(),
            image_id: "x".into(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            log_path: "/l".into(),
            rootfs: run_dir.join("rootfs"),
            run_dir,
            stop_signal: None,
            reserved_name: name.into(),
            state_dir: "/s".into(),
            tty: true,
            stdin: true,
            stdin_once: false,
            mounts: None,
            resources: None,
            legacy: serde_json::Value::Null,
            message: None,
        }
    }

    fn options(dir: &std::path::Path) -> Options {
        Options {
            state_dir: dir.join("state"),
            run_dir: dir.join("run"),
            runtimes: Arc::new({
                let root = dir.join("runc");
                move |name: &str| {
                    (name == "runc").then(|| OciRuntime {
                        path: "runc".into(),
                        root: root.clone(),
                        shim: "berth-shim".into(),
                        cgroup_driver: Default::default(),
                    })
                }
            }),
        }
    }

    #[test]
    fn an_exit_seen_by_the_watcher_is_one_stopped_event() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::open(&dir.path().join("state/records")).unwrap();
        let id = "e".repeat(64);
        let run = dir.path().join("run").join(&id);
        std::fs::create_dir_all(&run).unwrap();
        store.save(&record(&id, "k8s_e", run.clone())).unwrap();
        let (containers, _) = Containers::open(options(dir.path())).unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&events);
        assert!(containers.observe(Box::new(move |event| lock(&seen).push(event))));
        containers.reap_exits();
        assert!(lock(&events).is_empty());
        let exit = ExitRecord {
            exit_code: 0,
            signal: None,
            finished_at: 9,
            oom_killed: false,
        };
        std::fs::write(run.join("exit"), serde_json::to_vec(&exit).unwrap()).unwrap();
        containers.reap_exits();
        containers.reap_exits();
        containers.get(&id).unwrap();
        let events = lock(&events).clone();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].kind, EventKind::Stopped);
        assert_eq!(events[0].record.state, ContainerState::Exited);
        assert_eq!(events[0].record.exit, Some(exit));
        let (states, shims) = containers.census();
        assert_eq!((states["exited"], states["running"], shims), (1, 0, 0));
    }

    #[test]
    fn reload_resolves_prefixes_reserves_names_and_reads_exits() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::open(&dir.path().join("state/records")).unwrap();
        let (a, b) = (
            format!("ab{}", "0".repeat(62)),
            format!("ac{}", "1".repeat(62)),
        );
        for (id, name) in [(&a, "k8s_a"), (&b, "k8s_b")] {
            let run = dir.path().join("run").join(id);
            std::fs::create_dir_all(&run).unwrap();
            store.save(&record(id, name, run)).unwrap();
        }
        let exit = ExitRecord {
            exit_code: 3,
            signal: None,
            finished_at: 7,
            oom_killed: false,
        };
        let b_run = dir.path().join("run").join(&b);
        std::fs::write(b_run.join("exit"), serde_json::to_vec(&exit).unwrap()).unwrap();
        // A container whose run dir went with a reboot.
        let gone = "d".repeat(64);
        store
            .save(&record(&gone, "k8s_d", dir.path().join("run/gone")))
            .unwrap();

        let (containers, errors) = Containers::open(options(dir.path())).unwrap();
        assert!(errors.is_empty());
        assert!(matches!(
            containers.get("a"),
            Err(Error::Ambiguous { count: 2, .. })
        ));
        assert_eq!(containers.get("ab").unwrap().id, a);
        assert!(matches!(containers.get("ff"), Err(Error::NotFound(_))));
        let b_rec = containers.get("ac").unwrap();
        assert_eq!(b_rec.state, ContainerState::Exited);
        assert_eq!(b_rec.reason(), Some("Error"));
        assert_eq!(containers.get(&gone).unwrap().exit.unwrap().exit_code, 255);
        let running = containers.running("ab").unwrap();
        assert_eq!((running.pid, running.tty, running.stdin), (42, true, true));
        assert!(matches!(
            containers.running(&b),
            Err(Error::WrongState {
                state: "exited",
                ..
            })
        ));
        assert!(matches!(
            containers.reserve("k8s_a"),
            Err(Error::NameReserved { holder, .. }) if holder == a
        ));
        let id = containers.reserve("k8s_new").unwrap();
        assert_eq!(id.len(), 64);
        assert!(containers.reserve("k8s_new").is_err());
        containers.release("k8s_new", &id);
        containers.reserve("k8s_new").unwrap();
        assert_eq!(containers.list().len(), 3);
        assert_eq!(containers.of_pod(&"p".repeat(64)).len(), 3);
        // Unknown IDs stop and remove as success.
        containers.stop("ee", Duration::ZERO).unwrap();
        containers.remove("ee").unwrap();
    }
}
