//! `berth-shim init`: PID 1 of a pod that shares one PID namespace.
//!
//! It holds the namespace open, reaps every orphan re-parented to it, and
//! exits cleanly on SIGTERM or SIGINT. It takes no image: this is what replaces
//! the pause container.

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// Runs the init loop until SIGTERM or SIGINT; returns the exit code.
pub fn run() -> i32 {
    let mut set = SigSet::empty();
    for sig in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT] {
        set.add(sig);
    }
    // Blocked signals stay deliverable to a namespace's PID 1 even without a
    // handler, and sigwait picks them up synchronously.
    if let Err(err) = set.thread_block() {
        eprintln!("berth-shim init: cannot block signals: {err}");
        return 1;
    }
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => reap_all(),
            Ok(Signal::SIGTERM | Signal::SIGINT) => return 0,
            Ok(_) => {}
            Err(err) => {
                eprintln!("berth-shim init: sigwait failed: {err}");
                return 1;
            }
        }
    }
}

fn reap_all() {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
