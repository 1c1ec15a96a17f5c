//! berth-shim: Berth's per-container monitor.
//!
//! Modes are chosen by the first argument: `init` (the infra process of a pod
//! sharing one PID namespace) and `monitor <run dir>` (one per container; its
//! contract with berthd is `berth_shim_protocol`).

mod init;
mod logfmt;
mod monitor;

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let mode = args.next();
    let code = match (mode.as_ref().and_then(|m| m.to_str()), args.next()) {
        (Some("init"), None) => init::run(),
        (Some("monitor"), Some(run_dir)) => monitor::run(Path::new(&run_dir)),
        (Some("--version"), None) => {
            println!("berth-shim {}", env!("CARGO_PKG_VERSION"));
            0
        }
        (other, _) => {
            eprintln!(
                "berth-shim: unknown mode {:?}; usage: berth-shim init | monitor <run dir> | --version",
                other.unwrap_or("")
            );
            2
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
