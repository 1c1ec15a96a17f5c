//! Failpoints for crash tests. With `BERTH_FAILPOINT=<name>` in its
//! environment, berthd kills itself with SIGKILL when it reaches the step
//! of that name, as `kill -9` or a power cut would at that instant; the
//! tests then restart it and check that what was half made is either
//! controllable or gone. Always compiled in and inert unless the variable
//! is set (one string comparison per step); it is read once.

use std::sync::OnceLock;

/// RunPodSandbox: the pod's network is attached (CNI ADD done); its record
/// does not say so yet.
pub const POD_AFTER_NETWORK: &str = "pod-after-network";
/// CreateContainer: the shim and the runtime's container exist; the record
/// does not have its pid yet.
pub const CONTAINER_AFTER_SHIM: &str = "container-after-shim";

/// Every failpoint there is.
pub const ALL: &[&str] = &[POD_AFTER_NETWORK, CONTAINER_AFTER_SHIM];

/// The variable that arms a failpoint.
pub const ENV: &str = "BERTH_FAILPOINT";

/// The armed failpoint's name, if any; the environment is read at the first call.
pub fn armed() -> Option<&'static str> {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    ARMED
        .get_or_init(|| std::env::var(ENV).ok().filter(|name| !name.is_empty()))
        .as_deref()
}

/// Kills this process with SIGKILL if `name` is the armed failpoint.
pub fn hit(name: &str) {
    if armed() == Some(name) {
        // Written unbuffered, before the signal: the test reads it.
        eprintln!("{ENV}: reached failpoint {name}; killing the process");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
