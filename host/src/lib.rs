//! Host plumbing that every Berth crate shares, one copy of each:
//! [`atomic`] file writes, [`mountinfo`] parsing, random [`id`]s and
//! prefix lookup, [`sync`]'s locks that ignore poisoning, and the wall
//! clock in [`now_nanos`].

pub mod atomic;
pub mod cgroup;
pub mod id;
pub mod mountinfo;
pub mod sync;

/// Nanoseconds since the Unix epoch, as CRI timestamps are given.
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// A span around one step of an RPC's critical path ("cni_add",
/// "overlay", ...): berthd times every span of this target and reports
/// the timeline with the RPC (its `steps` field). The caller's crate
/// depends on `tracing`.
#[macro_export]
macro_rules! step {
    ($name:literal) => {
        ::tracing::info_span!(target: "berth_step", $name)
    };
}
