//! `berth-shim init`, the infra process of a pod that shares a PID namespace.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn shim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_berth-shim"))
}

#[test]
fn init_exits_cleanly_on_sigterm() {
    let mut child = shim().arg("init").stdin(Stdio::null()).spawn().unwrap();
    // Give it time to block its signals; an early SIGTERM would kill it with
    // the default action and fail the exit-code check below.
    std::thread::sleep(Duration::from_millis(200));
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "init ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0));
}

#[test]
fn unknown_mode_is_refused_with_usage() {
    let output = shim().arg("monitor-everything").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown mode"), "{stderr}");
    assert!(stderr.contains("usage"), "{stderr}");
}
