//! Pod sandboxes: pinned network / IPC / UTS namespaces, hostname, hosts,
//! resolv.conf and shm, the infra process, CNI attachment and pod records.
//!
//! A pod's set-up is a list of steps whose every effect sits at a path
//! derived from its ID, and its record is written before the first step:
//! teardown runs every step whatever happened before (a failed set-up, a
//! crash, a second Stop), so Stop and Remove always converge.

pub mod cgroup;
pub mod files;
pub mod infra;
pub mod netstat;
pub mod ns;
pub mod reclaim;
pub mod record;
pub mod resize;
pub mod slices;
pub mod spec;
pub mod systemd;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use berth_cni::{Attachment, Cni};
use berth_host::cgroup::{self as cgroup_names, Driver};
use tracing::Instrument;

pub use record::{Files, Layout, Namespaces, Network, Pod, PodId, State};
pub use spec::{
    Dns, IdMapping, Invalid, Mode, NamespaceModes, PodSpec, PortMapping, Protocol, UserNamespace,
};

/// The interface name of the pod side of the CNI attachment.
pub const POD_IFNAME: &str = "eth0";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("failed to find runtime handler {handler:?} from runtime list [{}]", .known.join(", "))]
    UnknownHandler { handler: String, known: Vec<String> },
    #[error("pod sandbox name {name:?} is reserved for pod sandbox {holder}")]
    NameReserved { name: String, holder: PodId },
    #[error("pod sandbox {0:?} not found")]
    NotFound(String),
    #[error("pod sandbox {pod}: {reason}")]
    Refused { pod: PodId, reason: String },
    #[error("pod sandbox ID prefix {prefix:?} is ambiguous: {count} pods match")]
    Ambiguous { prefix: String, count: usize },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Namespace(#[from] ns::NsError),
    #[error(transparent)]
    Infra(#[from] infra::InfraError),
    #[error(transparent)]
    Files(#[from] files::FileError),
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error(transparent)]
    Systemd(#[from] systemd::SystemdError),
    #[error(transparent)]
    Slices(#[from] slices::SlicesError),
    #[error(transparent)]
    Resize(#[from] resize::ResizeError),
    #[error(transparent)]
    Network(#[from] berth_cni::Error),
    #[error("{error}; cleaning up pod sandbox {pod} also failed: {}", .failures.join("; "))]
    SetupAndTeardown {
        pod: PodId,
        error: Box<Error>,
        failures: Vec<String>,
    },
    #[error("tearing down pod sandbox {pod} failed: {}", .failures.join("; "))]
    Teardown { pod: PodId, failures: Vec<String> },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub layout: Layout,
    /// Size of each pod's /dev/shm tmpfs, in bytes.
    pub shm_size: u64,
    /// The `berth-shim` binary, whose `init` mode is the infra process.
    pub shim: PathBuf,
    /// Known runtime handler names and the one used when a pod names none.
    pub runtimes: Arc<dyn RuntimeHandlers>,
    /// The cgroup parent of pods that give none.
    pub default_cgroup_parent: String,
    /// Which form a pod's cgroup parent takes, and who makes pod cgroups.
    pub cgroup_driver: berth_host::cgroup::Driver,
}

/// The runtime handlers a pod may name, asked at every RunPodSandbox so a
/// config reload applies to the next pod.
pub trait RuntimeHandlers: Send + Sync + std::fmt::Debug {
    /// Every known handler name.
    fn names(&self) -> Vec<String>;
    /// The handler of pods that name none.
    fn default_name(&self) -> String;
}

/// One pod. `op` serializes the operations that change it (Stop, Remove),
/// which can wait minutes on a CNI plugin; `record` is the pod as last
/// published, locked only to copy or replace it, so Status and List (of
/// this pod or any other) never wait on an operation.
struct PodSlot {
    op: Arc<tokio::sync::Mutex<()>>,
    record: std::sync::Mutex<Pod>,
}

type Slot = Arc<PodSlot>;

fn slot(pod: Pod) -> Slot {
    Arc::new(PodSlot {
        op: Arc::new(tokio::sync::Mutex::new(())),
        record: std::sync::Mutex::new(pod),
    })
}

impl PodSlot {
    fn record(&self) -> std::sync::MutexGuard<'_, Pod> {
        berth_host::sync::lock(&self.record)
    }
}

#[derive(Default)]
struct Index {
    pods: BTreeMap<PodId, Slot>,
    /// Reserved name → holder, including pods still being set up.
    names: HashMap<String, PodId>,
}

/// Every pod berthd knows, each behind its own lock.
pub struct Sandboxes {
    options: Options,
    cni: Arc<Cni>,
    index: std::sync::Mutex<Index>,
    pod_cidr: RwLock<Option<String>>,
    /// Pods whose record did not parse at open, for [`Sandboxes::reclaim_unreadable`].
    unreadable: std::sync::Mutex<Vec<PodId>>,
    /// The systemd slices Berth started and the pods in them.
    slices: slices::Slices,
}

impl Sandboxes {
    /// Loads every pod record. Returns the records it could not read, to be
    /// logged: they stay on disk until [`Sandboxes::reclaim_unreadable`].
    pub fn open(options: Options, cni: Arc<Cni>) -> (Sandboxes, Vec<String>) {
        let (pods, errors) = record::load_all(&options.layout);
        let loaded = pods.iter().map(|pod| pod.id.clone()).collect();
        let unreadable = reclaim::unreadable(&options.layout, &loaded);
        let slices = slices::Slices::open(
            options.layout.slice_ledger(),
            pods.iter().map(|pod| (&pod.id, pod.cgroup_parent.as_str())),
        );
        let mut index = Index::default();
        for mut pod in pods {
            // After a reboot the run root is empty: the namespaces are gone.
            let pins_lost = [
                &pod.namespaces.net,
                &pod.namespaces.ipc,
                &pod.namespaces.uts,
                &pod.namespaces.user,
            ]
            .into_iter()
            .flatten()
            .any(|path| !path.exists());
            if pod.state == State::Ready && pins_lost {
                pod.state = State::NotReady;
                if let Err(err) = record::save(&options.layout, &pod) {
                    tracing::warn!(pod = %pod.id, "cannot update record: {err}");
                }
            }
            index.names.insert(pod.spec.reserved_name(), pod.id.clone());
            index.pods.insert(pod.id.clone(), slot(pod));
        }
        let sandboxes = Sandboxes {
            options,
            cni,
            index: std::sync::Mutex::new(index),
            pod_cidr: RwLock::new(None),
            unreadable: std::sync::Mutex::new(unreadable),
            slices,
        };
        (sandboxes, errors)
    }

    /// Tears down what the pods whose record [`Sandboxes::open`] could not
    /// read left behind (see [`reclaim`]). They are unknown to every RPC, so
    /// this may run while berthd serves.
    pub async fn reclaim_unreadable(&self) {
        let ids = std::mem::take(&mut *berth_host::sync::lock(&self.unreadable));
        for id in ids {
            let failures = reclaim::reclaim(&self.options.layout, &self.cni, &id).await;
            if failures.is_empty() {
                tracing::info!(pod = %id, "removed what the pod sandbox with an unreadable record left");
            } else {
                tracing::warn!(
                    pod = %id,
                    "cannot remove what the pod sandbox with an unreadable record left: {}",
                    failures.join("; ")
                );
            }
        }
    }

    pub fn cni(&self) -> &Arc<Cni> {
        &self.cni
    }

    /// The pod CIDR from `UpdateRuntimeConfig`, given to CNI as `ipRanges`.
    pub fn set_pod_cidr(&self, cidr: &str) {
        *berth_host::sync::write(&self.pod_cidr) = (!cidr.is_empty()).then(|| cidr.to_string());
    }

    /// The ID a full ID or unique prefix names, if any.
    fn resolve(&self, id: &str) -> Result<Option<(PodId, Slot)>, Error> {
        let index = berth_host::sync::lock(&self.index);
        let found = berth_host::id::by_prefix(&index.pods, id).map_err(|a| Error::Ambiguous {
            prefix: a.prefix,
            count: a.count,
        })?;
        Ok(found.map(|(id, slot)| (id.clone(), Arc::clone(slot))))
    }

    /// A copy of the pod's record; NOT_FOUND for an unknown ID.
    pub async fn get(&self, id: &str) -> Result<Pod, Error> {
        let (_, slot) = self
            .resolve(id)?
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        let pod = slot.record().clone();
        Ok(pod)
    }

    /// UpdatePodSandboxResources: `limits` on the pod's own cgroup (see
    /// [`resize`]), while no Stop or Remove of the pod runs.
    pub async fn update_resources(
        &self,
        id: &str,
        limits: resize::PodLimits,
    ) -> Result<resize::Applied, Error> {
        let (_, slot) = self
            .resolve(id)?
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        let _op = slot.op.clone().lock_owned().await;
        let parent = slot.record().cgroup_parent.clone();
        resize::apply(&parent, &self.options.default_cgroup_parent, &limits).await
    }

    /// Copies of every record.
    pub async fn list(&self) -> Vec<Pod> {
        let slots: Vec<Slot> = berth_host::sync::lock(&self.index)
            .pods
            .values()
            .cloned()
            .collect();
        slots.iter().map(|slot| slot.record().clone()).collect()
    }

    fn resolve_handler(&self, requested: &str) -> Result<String, Error> {
        let name = if requested.is_empty() {
            self.options.runtimes.default_name()
        } else {
            requested.to_string()
        };
        let known = self.options.runtimes.names();
        if known.contains(&name) {
            Ok(name)
        } else {
            Err(Error::UnknownHandler {
                handler: name,
                known,
            })
        }
    }

    /// RunPodSandbox: checks, reserves the name, sets everything up; on
    /// failure tears down whatever was made and frees the name.
    pub async fn run(&self, spec: PodSpec) -> Result<PodId, Error> {
        self.run_admitted(spec, async |_| Ok(())).await
    }

    /// [`Sandboxes::run`], with `admit` asked once the pod is set up and
    /// before it is visible; a refusal tears it down and frees its name.
    pub async fn run_admitted(
        &self,
        spec: PodSpec,
        admit: impl AsyncFnOnce(&Pod) -> Result<(), String>,
    ) -> Result<PodId, Error> {
        let runtime_handler = self.resolve_handler(&spec.runtime_handler)?;
        spec.validate()?;
        spec.check_cgroup_parent(self.options.cgroup_driver)?;
        // Refuse before creating anything when there is no network to join.
        if !spec.namespaces.host_network() {
            self.cni.network()?;
        }
        let id = PodId::random().map_err(io("cannot generate a pod sandbox ID"))?;
        let name = spec.reserved_name();
        {
            let mut index = berth_host::sync::lock(&self.index);
            if let Some(holder) = index.names.get(&name) {
                return Err(Error::NameReserved {
                    name,
                    holder: holder.clone(),
                });
            }
            index.names.insert(name.clone(), id.clone());
        }
        let mut pod = self.skeleton(&id, spec, runtime_handler);
        let result = match self.save(&pod).await {
            Ok(()) => self.set_up(&mut pod).await,
            Err(err) => Err(err),
        };
        let result = match result {
            Ok(()) => admit(&pod).await.map_err(|reason| Error::Refused {
                pod: id.clone(),
                reason,
            }),
            Err(err) => Err(err),
        };
        match result {
            Ok(()) => {
                tracing::info!(
                    pod = %id,
                    name = %name,
                    ips = ?pod.network.as_ref().map(|n| &n.ips),
                    "pod sandbox ready"
                );
                let mut index = berth_host::sync::lock(&self.index);
                index.pods.insert(id.clone(), slot(pod));
                Ok(id)
            }
            Err(error) => {
                tracing::info!(pod = %id, "set-up failed, tearing down: {error}");
                let failures = self.tear_down(&mut pod, true).await;
                let mut index = berth_host::sync::lock(&self.index);
                if failures.is_empty() {
                    index.names.remove(&name);
                    Err(error)
                } else {
                    // Keep it visible as NotReady so Remove can finish the job.
                    index.pods.insert(id.clone(), slot(pod));
                    Err(Error::SetupAndTeardown {
                        pod: id,
                        error: Box::new(error),
                        failures,
                    })
                }
            }
        }
    }

    /// The record as it will be once set up, paths and all, but not ready.
    fn skeleton(&self, id: &PodId, spec: PodSpec, runtime_handler: String) -> Pod {
        let layout = &self.options.layout;
        let modes = spec.namespaces;
        let host_network = modes.host_network();
        let hostname = if spec.hostname.is_empty() || host_network {
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default()
        } else {
            spec.hostname.clone()
        };
        let mut files = layout.files(id);
        if modes.host_ipc() {
            files.shm = PathBuf::from("/dev/shm");
        }
        // The UTS namespace follows the network one, as the kubelet expects:
        // a host-network pod has the host's hostname.
        let namespaces = Namespaces {
            net: (!host_network).then(|| layout.ns_pin("net", id)),
            ipc: (!modes.host_ipc()).then(|| layout.ns_pin("ipc", id)),
            uts: (!host_network).then(|| layout.ns_pin("uts", id)),
            pid: (modes.pid == Mode::Pod).then(|| layout.ns_pin("pid", id)),
            user: spec
                .user_namespace
                .is_pod()
                .then(|| layout.ns_pin("user", id)),
        };
        let cgroup_parent = if spec.cgroup_parent.is_empty() {
            self.options.default_cgroup_parent.clone()
        } else {
            spec.cgroup_parent.clone()
        };
        Pod {
            id: id.clone(),
            created_at: berth_host::now_nanos(),
            state: State::NotReady,
            complete: false,
            runtime_handler,
            hostname,
            cgroup_parent,
            namespaces,
            files,
            infra: None,
            network: None,
            spec,
        }
    }

    /// Writes the pod's record, durably, off the async workers: under a
    /// burst of pods their fsyncs must not stall List and Status calls.
    async fn save(&self, pod: &Pod) -> Result<(), Error> {
        let (layout, pod) = (self.options.layout.clone(), pod.clone());
        let step = berth_host::step!("record");
        blocking(move || {
            step.in_scope(|| record::save(&layout, &pod))
                .map_err(io(format!(
                    "cannot write the record of pod sandbox {}",
                    pod.id
                )))
        })
        .await?
    }

    async fn set_up(&self, pod: &mut Pod) -> Result<(), Error> {
        let (files_pod, shm_size) = (pod.clone(), self.options.shm_size);
        let files_step = berth_host::step!("pod_files");
        blocking(move || files_step.in_scope(|| pod_files(&files_pod, shm_size))).await??;
        let request = ns::Request {
            net: pod.namespaces.net.clone(),
            ipc: pod.namespaces.ipc.clone(),
            uts: pod.namespaces.uts.clone(),
            hostname: pod.hostname.clone(),
            sysctls: pod.spec.sysctl_paths()?,
            user: pod.namespaces.user.clone().map(|pin| ns::UserRequest {
                pin,
                uids: pod.spec.user_namespace.uids.clone(),
                gids: pod.spec.user_namespace.gids.clone(),
            }),
        };
        let namespaces = berth_host::step!("namespaces");
        blocking(move || namespaces.in_scope(|| ns::create(request))).await??;
        self.slices
            .enter(&pod.id, &pod.cgroup_parent)
            .instrument(berth_host::step!("slices"))
            .await?;
        if let Some(pid_pin) = pod.namespaces.pid.clone() {
            let join: Vec<PathBuf> = [
                &pod.namespaces.net,
                &pod.namespaces.ipc,
                &pod.namespaces.uts,
            ]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
            let shim = self.options.shim.clone();
            let user = pod.namespaces.user.clone();
            let infra_step = berth_host::step!("infra");
            let infra = blocking(move || {
                infra_step.in_scope(|| infra::start(&shim, user.as_deref(), &join))
            })
            .await??;
            pod.infra = Some(infra);
            self.save(pod).await?;
            if Driver::of_parent(&pod.cgroup_parent) == Driver::Systemd {
                let scope = cgroup_names::scope_name(pod.id.as_str());
                let pid = infra.pid.unsigned_abs();
                systemd::start_scope(&scope, &pod.cgroup_parent, pid)
                    .instrument(berth_host::step!("cgroup"))
                    .await?;
            } else {
                let cgroup = pod.infra_cgroup();
                let cgroup_step = berth_host::step!("cgroup");
                blocking(move || cgroup_step.in_scope(|| cgroup::attach(&cgroup, infra.pid)))
                    .await??;
            }
            let _pin = berth_host::step!("pin_pid").entered();
            ns::pin(
                &PathBuf::from(format!("/proc/{}/ns/pid", infra.pid)),
                &pid_pin,
            )?;
        }
        if pod.namespaces.net.is_some() {
            let cidr = berth_host::sync::read(&self.pod_cidr).clone();
            let attachment = self.attachment(pod, cidr.as_deref());
            let added = self
                .cni
                .add(&attachment)
                .instrument(berth_host::step!("cni_add"))
                .await?;
            pod.network = Some(Network {
                name: added.network,
                ips: added.ips,
            });
            berth_failpoint::hit(berth_failpoint::POD_AFTER_NETWORK);
        }
        let ips = pod
            .network
            .as_ref()
            .map(|n| n.ips.clone())
            .unwrap_or_default();
        let hosts = files::hosts(pod.spec.namespaces.host_network(), &pod.hostname, &ips);
        let (path, owner) = (pod.files.hosts.clone(), pod.spec.user_namespace.host_root());
        let hosts_step = berth_host::step!("pod_files");
        blocking(move || hosts_step.in_scope(|| write_owned(&path, &hosts, owner))).await??;
        pod.state = State::Ready;
        pod.complete = true;
        self.save(pod).await
    }

    fn attachment(&self, pod: &Pod, pod_cidr: Option<&str>) -> Attachment {
        Attachment {
            container_id: pod.id.to_string(),
            netns: pod.namespaces.net.clone().unwrap_or_default(),
            ifname: POD_IFNAME.into(),
            args: vec![
                ("K8S_POD_NAMESPACE".into(), pod.spec.namespace.clone()),
                ("K8S_POD_NAME".into(), pod.spec.name.clone()),
                ("K8S_POD_INFRA_CONTAINER_ID".into(), pod.id.to_string()),
                ("K8S_POD_UID".into(), pod.spec.uid.clone()),
            ],
            capabilities: pod.spec.capabilities(pod_cidr),
        }
    }

    /// Runs every teardown step, collecting failures. `unpin` also releases
    /// the namespaces and removes the pod's files and record (Remove).
    async fn tear_down(&self, pod: &mut Pod, remove: bool) -> Vec<String> {
        let layout = &self.options.layout;
        let mut failures = Vec::new();
        if let Some(infra) = pod.infra {
            let cgroup = pod.infra_cgroup();
            let systemd = Driver::of_parent(&pod.cgroup_parent) == Driver::Systemd;
            let stopped = blocking(move || {
                infra::stop(&infra)?;
                // systemd removes an emptied scope's dir itself.
                Ok::<_, infra::InfraError>(if systemd {
                    Vec::new()
                } else {
                    cgroup::remove(&cgroup)
                })
            })
            .await;
            match stopped {
                Ok(Ok(errors)) => failures.extend(errors.iter().map(ToString::to_string)),
                Ok(Err(err)) => failures.push(err.to_string()),
                Err(err) => failures.push(err.to_string()),
            }
            if systemd
                && let Err(err) = systemd::stop(&cgroup_names::scope_name(pod.id.as_str())).await
            {
                failures.push(err.to_string());
            }
        }
        // No cache entry: no ADD ever started, or a DEL already succeeded
        // (unless the record says it is attached: then the cache was lost,
        // and DEL falls back to the current config).
        if pod.namespaces.net.is_some()
            && (self.cni.attached(pod.id.as_str(), POD_IFNAME) || pod.network.is_some())
        {
            let attachment = self.attachment(pod, None);
            // Whether an ADD ever completed: if not, its plugins reported
            // failure and a DEL refused the same way cannot be retried into
            // success, so Remove gives up on it rather than never finishing.
            let added = matches!(self.cni.cached(pod.id.as_str(), POD_IFNAME), Ok(Some(_)))
                || pod.network.is_some();
            match self.cni.del(&attachment).await {
                Ok(()) => pod.network = None,
                Err(err) if remove && !added => {
                    tracing::warn!(pod = %pod.id, "ignoring CNI DEL failure of a network that was never added: {err}");
                    if let Err(err) = self.cni.forget(pod.id.as_str(), POD_IFNAME) {
                        failures.push(err.to_string());
                    }
                }
                Err(err) => failures.push(err.to_string()),
            }
        }
        if !pod.spec.namespaces.host_ipc()
            && let Err(err) = files::unmount_shm(&pod.files.shm)
        {
            failures.push(err.to_string());
        }
        if remove {
            for pin in pod.namespaces.pins() {
                if let Err(err) = ns::unpin(pin) {
                    failures.push(err.to_string());
                }
            }
            failures.extend(self.slices.leave(&pod.id).await);
        }
        pod.state = State::NotReady;
        if remove && failures.is_empty() {
            for dir in [layout.run_dir(&pod.id), layout.state_dir(&pod.id)] {
                match std::fs::remove_dir_all(&dir) {
                    Ok(()) => {}
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                    Err(err) => failures.push(format!("cannot remove {}: {err}", dir.display())),
                }
            }
        } else if let Err(err) = record::save(layout, pod) {
            failures.push(format!(
                "cannot write the record of pod sandbox {}: {err}",
                pod.id
            ));
        }
        failures
    }

    /// StopPodSandbox: stops the infra process and detaches the network.
    /// An unknown pod is not an error.
    pub async fn stop(&self, id: &str) -> Result<(), Error> {
        let Some((id, slot)) = self.resolve(id)? else {
            return Ok(());
        };
        let Some((_op, mut pod)) = self.begin_teardown(&id, &slot).await else {
            return Ok(());
        };
        let failures = self.tear_down(&mut pod, false).await;
        *slot.record() = pod;
        if failures.is_empty() {
            Ok(())
        } else {
            Err(Error::Teardown { pod: id, failures })
        }
    }

    /// RemovePodSandbox: stops, unpins, removes every file and the record,
    /// and frees the name. An unknown pod is not an error.
    pub async fn remove(&self, id: &str) -> Result<(), Error> {
        let Some((id, slot)) = self.resolve(id)? else {
            return Ok(());
        };
        let Some((_op, mut pod)) = self.begin_teardown(&id, &slot).await else {
            return Ok(());
        };
        let failures = self.tear_down(&mut pod, true).await;
        let name = pod.spec.reserved_name();
        *slot.record() = pod;
        if !failures.is_empty() {
            return Err(Error::Teardown { pod: id, failures });
        }
        tracing::info!(pod = %id, "pod sandbox removed");
        let mut index = berth_host::sync::lock(&self.index);
        index.pods.remove(&id);
        if index.names.get(&name) == Some(&id) {
            index.names.remove(&name);
        }
        Ok(())
    }

    /// Takes the pod's operation lock and returns a copy of its record to
    /// tear down, published as not ready from now on (whatever happens, it
    /// ends not ready). None when a Remove that held the lock meanwhile
    /// removed the pod: tearing it down again would write its record back.
    async fn begin_teardown(
        &self,
        id: &PodId,
        slot: &Slot,
    ) -> Option<(tokio::sync::OwnedMutexGuard<()>, Pod)> {
        let op = Arc::clone(&slot.op).lock_owned().await;
        let indexed = berth_host::sync::lock(&self.index)
            .pods
            .get(id)
            .is_some_and(|current| Arc::ptr_eq(current, slot));
        if !indexed {
            return None;
        }
        let mut record = slot.record();
        record.state = State::NotReady;
        Some((op, record.clone()))
    }

    /// CNI CHECK of the pod's attachment: None when there is nothing to check.
    pub async fn check_network(&self, pod: &Pod) -> Option<Result<(), String>> {
        if pod.namespaces.net.is_none() || pod.state != State::Ready {
            return None;
        }
        let attachment = self.attachment(pod, None);
        match self.cni.check(&attachment).await {
            Ok(Some(())) => Some(Ok(())),
            Ok(None) => None,
            Err(err) => Some(Err(err.to_string())),
        }
    }
}

/// The pod's hostname, resolv.conf and /dev/shm; owned by the pod's root
/// when it has a user namespace, as on a host-namespace pod.
fn pod_files(pod: &Pod, shm_size: u64) -> Result<(), Error> {
    let owner = pod.spec.user_namespace.host_root();
    let hostname = format!("{}\n", pod.hostname);
    write_owned(&pod.files.hostname, hostname.as_bytes(), owner)?;
    let resolv_conf = files::resolv_conf(pod.spec.dns.as_ref());
    write_owned(&pod.files.resolv_conf, &resolv_conf, owner)?;
    if !pod.spec.namespaces.host_ipc() {
        files::mount_shm(&pod.files.shm, shm_size)?;
        chown(&pod.files.shm, owner)?;
    }
    Ok(())
}

fn write_owned(path: &Path, bytes: &[u8], owner: Option<(u32, u32)>) -> Result<(), Error> {
    files::write(path, bytes)?;
    chown(path, owner)
}

/// Gives `path` to `owner` (the pod's root), if the pod has one.
fn chown(path: &Path, owner: Option<(u32, u32)>) -> Result<(), Error> {
    match owner {
        Some((uid, gid)) => std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(io(format!("cannot chown {}", path.display()))),
        None => Ok(()),
    }
}

/// Runs blocking work off the async workers, in the caller's span.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Error> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(work))
        .await
        .map_err(|err| Error::Io {
            what: "a blocking task failed".into(),
            source: std::io::Error::other(err.to_string()),
        })
}
