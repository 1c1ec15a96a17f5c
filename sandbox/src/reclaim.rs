//! What pods with an unreadable record (a `pod.json` that does not parse)
//! left behind. (A pod dir without a record is removed by
//! [`crate::record::load_all`]: nothing in it was set up.)
//!
//! Such a pod is gone from the CRI's view, so nobody would ever remove it;
//! but its ID is its directory's name, and every effect of its set-up sits
//! at a path derived from the ID (see the crate doc), so its teardown needs
//! no record: the processes of its PID namespace (the infra process) are
//! killed and their cgroup removed, its CNI attachment deleted with the
//! cached ADD, its shm and namespaces unpinned, its dirs removed. Whatever
//! fails keeps the record, so the next start tries again.
//!
//! A record that cannot be read for another reason (EIO, EACCES) is left
//! alone: the pod may be fine.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_cni::{Attachment, Cni};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::record::{Layout, Pod, PodId};
use crate::{POD_IFNAME, cgroup, files, ns};

/// How long the killed processes of a PID namespace get to go.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// The pods under `<root>/pods` whose record exists but does not parse;
/// `loaded` are those whose record was read.
pub fn unreadable(layout: &Layout, loaded: &BTreeSet<PodId>) -> Vec<PodId> {
    let Ok(entries) = std::fs::read_dir(layout.pods_dir()) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| PodId::try_from(entry.file_name().into_string().ok()?).ok())
        .filter(|id| !loaded.contains(id))
        .filter(|id| {
            std::fs::read(layout.record(id))
                .is_ok_and(|bytes| serde_json::from_slice::<Pod>(&bytes).is_err())
        })
        .collect()
}

/// Tears down what pod `id` may have left; returns what failed.
pub async fn reclaim(layout: &Layout, cni: &Cni, id: &PodId) -> Vec<String> {
    let mut failures = Vec::new();
    let pid_pin = layout.ns_pin("pid", id);
    if pid_pin.exists() {
        // The last component of [`berth_host::cgroup::infra_dir`] with
        // cgroupfs; its parent is unknown. With systemd it is a scope.
        let infra_cgroup = format!("{}-{id}", berth_host::cgroup::SCOPE_PREFIX);
        match tokio::task::spawn_blocking(move || kill_namespace(&pid_pin, infra_cgroup)).await {
            Ok(errors) => failures.extend(errors),
            Err(err) => failures.push(err.to_string()),
        }
        // Emptied, the scope goes by itself; stopping it makes sure (and a
        // host without systemd has no scope to stop).
        if berth_host::cgroup::Driver::systemd_running()
            && let Err(err) =
                crate::systemd::stop(&berth_host::cgroup::scope_name(id.as_str())).await
        {
            failures.push(err.to_string());
        }
    }
    let net_pin = layout.ns_pin("net", id);
    if cni.attached(id.as_str(), POD_IFNAME) {
        // DEL takes the config, arguments and result from the cache.
        let attachment = Attachment {
            container_id: id.to_string(),
            netns: if net_pin.exists() {
                net_pin
            } else {
                PathBuf::new()
            },
            ifname: POD_IFNAME.into(),
            args: Vec::new(),
            capabilities: Default::default(),
        };
        if let Err(err) = cni.del(&attachment).await {
            failures.push(err.to_string());
        }
    }
    if let Err(err) = files::unmount_shm(&layout.files(id).shm) {
        failures.push(err.to_string());
    }
    // The user namespace last: it owns the others.
    for kind in ["net", "ipc", "uts", "pid", "user"] {
        if let Err(err) = ns::unpin(&layout.ns_pin(kind, id)) {
            failures.push(err.to_string());
        }
    }
    if failures.is_empty() {
        for dir in [layout.run_dir(id), layout.state_dir(id)] {
            match std::fs::remove_dir_all(&dir) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                    failures.push(format!("cannot remove {}: {err}", dir.display()));
                }
                _ => {}
            }
        }
    }
    failures
}

/// Kills every process in the PID namespace pinned at `pin`, waits for
/// them to go and removes the cgroup named `cgroup_name` they were in.
fn kill_namespace(pin: &Path, cgroup_name: String) -> Vec<String> {
    let Ok(pinned) = std::fs::metadata(pin) else {
        return Vec::new();
    };
    let mut members = Vec::new();
    let mut cgroups = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(ns) = std::fs::metadata(entry.path().join("ns/pid")) else {
            continue;
        };
        if (ns.dev(), ns.ino()) != (pinned.dev(), pinned.ino()) {
            continue;
        }
        members.push(pid);
        // `<hierarchy>:<controllers>:<path>`, one line per hierarchy.
        let lines = std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
        cgroups.extend(
            lines
                .lines()
                .filter_map(|line| line.splitn(3, ':').nth(2))
                .map(|path| PathBuf::from(path.trim_start_matches('/')))
                .filter(|path| path.file_name().is_some_and(|n| *n == *cgroup_name)),
        );
    }
    for &pid in &members {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let deadline = Instant::now() + KILL_WAIT;
    let mut failures = Vec::new();
    while let Some(pid) = members.iter().copied().find(|&pid| running(pid)) {
        if Instant::now() >= deadline {
            failures.push(format!(
                "process {pid} of {} survived SIGKILL",
                pin.display()
            ));
            return failures;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for relative in cgroups {
        failures.extend(cgroup::remove(&relative).iter().map(ToString::to_string));
    }
    failures
}

/// Whether `pid` exists and is not a zombie.
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.get(stat.rfind(')')? + 2..)?.chars().next()?;
            Some(state != 'Z')
        })
        .unwrap_or(false)
}
