//! Containers: OCI spec generation, the OCI runtime driver, container records
//! and the `berth-shim` monitor.
//!
//! What berthd calls, from its container RPCs (blocking functions: run them on
//! `spawn_blocking`):
//! - [`lifecycle::create`] (overlay rootfs + [`spec::generate`] + shim) and
//!   [`lifecycle::remove`];
//! - [`oci::OciRuntime`]: `start`, `stop` (stop signal, then SIGKILL),
//!   `kill`, `state`, `exec_sync`;
//! - [`shim::control`] (`reopen`, `resize`) and [`shim::ExitRecord::read`];
//! - [`record::RecordStore`] for the records reloaded after a restart.
//!
//! The shim binary is found next to berthd's own executable by default
//! ([`oci::default_shim_path`]).

pub mod atomic;
pub mod init;
pub mod lifecycle;
pub mod oci;
pub mod overlay;
pub mod record;
pub mod seccomp;
pub mod shim;
pub mod spec;
pub mod user;
