//! berth-shim: Berth's per-container monitor.
//!
//! Modes are chosen by the first argument. Only `init` exists so far; the
//! container monitor mode arrives with the container RPCs.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mode = std::env::args().nth(1);
    match mode.as_deref() {
        Some("init") => ExitCode::from(u8::try_from(berth_runtime::init::run()).unwrap_or(1)),
        Some("--version") => {
            println!("berth-shim {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        other => {
            eprintln!(
                "berth-shim: unknown mode {:?}; usage: berth-shim init | --version",
                other.unwrap_or("")
            );
            ExitCode::from(2)
        }
    }
}
