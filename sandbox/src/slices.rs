//! The systemd slices Berth caused systemd to start for pods (the systemd
//! cgroup driver, when no kubelet made the pod's slice first), and which
//! pods sit in them.
//!
//! Ownership is Berth's, not one pod's: the pod that started
//! `kubepods.slice` may be removed while others still sit in it, and the
//! last of them must stop it. So the started units are one ledger
//! (`<run_root>/slices.json`, rewritten atomically before a start, so a
//! crash can only leave a unit listed that was never started, which a stop
//! ignores), and a unit is stopped when the pod that leaves is the last one
//! in it. A slice Berth did not start (the kubelet's) is never stopped.
//! The ledger lives in the run root: a reboot clears it together with the
//! slices it lists.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use berth_host::cgroup as cgroup_names;

use crate::PodId;
use crate::systemd::{self, SystemdError};

#[derive(Debug, thiserror::Error)]
pub enum SlicesError {
    #[error("cannot record the slices Berth started in {path}: {source}")]
    Ledger {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Systemd(#[from] SystemdError),
}

pub struct Slices {
    ledger: PathBuf,
    inner: tokio::sync::Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Units Berth started and has not stopped yet.
    started: BTreeSet<String>,
    /// The slice of every pod that entered one and has not left it.
    users: BTreeMap<PodId, String>,
}

impl Slices {
    /// The ledger at `ledger` (missing: nothing started) with `pods`, the
    /// recovered pods and their slices, as users. An unreadable ledger is
    /// logged and read as empty: its units then stay for the operator,
    /// rather than being stopped under a pod that may sit in them.
    pub fn open<'a>(
        ledger: PathBuf,
        pods: impl IntoIterator<Item = (&'a PodId, &'a str)>,
    ) -> Slices {
        let started = match std::fs::read(&ledger) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|err| {
                tracing::warn!(ledger = %ledger.display(), "unreadable slice ledger, ignored: {err}");
                BTreeSet::new()
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(err) => {
                tracing::warn!(ledger = %ledger.display(), "cannot read the slice ledger: {err}");
                BTreeSet::new()
            }
        };
        let users = pods
            .into_iter()
            .filter(|(_, slice)| is_slice(slice))
            .map(|(id, slice)| (id.clone(), slice.to_string()))
            .collect();
        Slices {
            ledger,
            inner: tokio::sync::Mutex::new(Inner { started, users }),
        }
    }

    /// Pod `pod` enters `slice`: when it is not active, Berth records the
    /// units of its ancestry that are not, then starts it (systemd starts
    /// the missing slices above it). A path-form parent (cgroupfs) is no
    /// slice and needs nothing.
    pub async fn enter(&self, pod: &PodId, slice: &str) -> Result<(), SlicesError> {
        if !is_slice(slice) {
            return Ok(());
        }
        let mut inner = self.inner.lock().await;
        // A user first: a failure below still leaves through `leave`.
        inner.users.insert(pod.clone(), slice.to_string());
        if systemd::active_state(slice).await?.as_deref() == Some("active") {
            return Ok(());
        }
        for unit in cgroup_names::slice_ancestry(slice) {
            if systemd::active_state(&unit).await?.as_deref() != Some("active") {
                inner.started.insert(unit);
            }
        }
        self.save(&inner.started)?;
        systemd::start_slice(slice).await?;
        Ok(())
    }

    /// Pod `pod` leaves its slice: every unit of its ancestry that Berth
    /// started and no other pod sits in is stopped, innermost first.
    /// Returns the failures; after one the pod stays a user, so that the
    /// next try (a retried Remove) stops what is left.
    pub async fn leave(&self, pod: &PodId) -> Vec<String> {
        let mut inner = self.inner.lock().await;
        let Some(slice) = inner.users.remove(pod) else {
            return Vec::new();
        };
        let mut failures = Vec::new();
        let mut changed = false;
        for unit in to_stop(&slice, &inner.started, inner.users.values()) {
            match systemd::stop(&unit).await {
                Ok(()) => {
                    inner.started.remove(&unit);
                    changed = true;
                }
                Err(err) => failures.push(err.to_string()),
            }
        }
        if changed && let Err(err) = self.save(&inner.started) {
            failures.push(err.to_string());
        }
        if !failures.is_empty() {
            inner.users.insert(pod.clone(), slice);
        }
        failures
    }

    fn save(&self, started: &BTreeSet<String>) -> Result<(), SlicesError> {
        let bytes = serde_json::to_vec(started).expect("a set of strings serializes");
        berth_host::atomic::write_private(&self.ledger, &bytes).map_err(|source| {
            SlicesError::Ledger {
                path: self.ledger.clone(),
                source,
            }
        })
    }
}

/// The units to stop, innermost first, when a pod leaves `slice`: those of
/// its ancestry that Berth `started` and none of the `others`' slices sits
/// in.
fn to_stop<'a>(
    slice: &str,
    started: &BTreeSet<String>,
    others: impl IntoIterator<Item = &'a String>,
) -> Vec<String> {
    let in_use: BTreeSet<String> = others
        .into_iter()
        .flat_map(|other| cgroup_names::slice_ancestry(other))
        .collect();
    cgroup_names::slice_ancestry(slice)
        .into_iter()
        .rev()
        .filter(|unit| started.contains(unit) && !in_use.contains(unit))
        .collect()
}

fn is_slice(parent: &str) -> bool {
    cgroup_names::Driver::of_parent(parent) == cgroup_names::Driver::Systemd
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(units: &[&str]) -> BTreeSet<String> {
        units.iter().map(|u| u.to_string()).collect()
    }

    #[test]
    fn the_last_pod_out_stops_what_berth_started_innermost_first() {
        let started = set(&[
            "kubepods.slice",
            "kubepods-burstable.slice",
            "kubepods-burstable-poda.slice",
            "kubepods-burstable-podb.slice",
        ]);
        // Pod a started kubepods.slice; pod b still sits below it.
        let b = "kubepods-burstable-podb.slice".to_string();
        assert_eq!(
            to_stop("kubepods-burstable-poda.slice", &started, [&b]),
            ["kubepods-burstable-poda.slice"]
        );
        // b, which started none of the shared ones, leaves last.
        assert_eq!(
            to_stop(&b, &started, []),
            [
                "kubepods-burstable-podb.slice",
                "kubepods-burstable.slice",
                "kubepods.slice"
            ]
        );
    }

    #[test]
    fn slices_berth_did_not_start_stay() {
        // The kubelet made kubepods.slice and the burstable slice.
        let started = set(&["kubepods-burstable-poda.slice"]);
        assert_eq!(
            to_stop("kubepods-burstable-poda.slice", &started, []),
            ["kubepods-burstable-poda.slice"]
        );
        assert!(to_stop("kubepods-besteffort-podc.slice", &started, []).is_empty());
    }

    #[tokio::test]
    async fn path_parents_need_no_slice_and_leave_nothing_to_stop() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("slices.json");
        let pod = PodId::random().unwrap();
        let slices = Slices::open(ledger.clone(), [(&pod, "/kubepods/burstable/poda")]);
        slices
            .enter(&pod, "/kubepods/burstable/poda")
            .await
            .unwrap();
        assert!(slices.leave(&pod).await.is_empty());
        assert!(!ledger.exists());
    }

    #[test]
    fn an_unreadable_ledger_reads_as_nothing_started() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("slices.json");
        std::fs::write(&ledger, b"{not json").unwrap();
        let slices = Slices::open(ledger, []);
        assert!(slices.inner.try_lock().unwrap().started.is_empty());
    }
}
