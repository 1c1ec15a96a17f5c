//! Containers: OCI spec generation, the OCI runtime driver and container
//! records. The `berth-shim` monitor is its own crate; this one speaks to it
//! through `berth_shim_protocol`.
//!
//! What berthd calls, from its container RPCs (blocking functions: run them on
//! `spawn_blocking`):
//! - [`lifecycle::create`] (overlay rootfs + [`spec::generate`] + shim) and
//!   [`lifecycle::remove`];
//! - [`oci::OciRuntime`]: `start`, `stop` (stop signal, then SIGKILL),
//!   `kill`, `state`, `exec_sync`;
//! - `berth_shim_protocol::control` (`reopen`, `resize`) and
//!   `berth_shim_protocol::ExitRecord::read`;
//! - [`update`] (new limits as OCI `linux.resources` fields, merged into
//!   the saved `config.json`);
//! - [`record::RecordStore`] for the records reloaded after a restart;
//! - [`containers::Containers`]: the index, name reservation and per-container
//!   locking over all of the above (what the container RPCs call);
//! - [`features::probe`] (Status.runtime_handlers features).
//!
//! It knows no CRI types: crate `berth-cri` turns the CRI's requests into
//! [`spec::ContainerSpec`] and [`spec::Resources`].
//!
//! The shim binary is found next to berthd's own executable by default
//! ([`oci::default_shim_path`]).

pub mod apparmor;
pub mod containers;
pub mod exit_watch;
pub mod features;
pub mod in_root;
pub mod lifecycle;
pub mod mounts;
pub mod oci;
pub mod overlay;
pub mod private;
pub mod record;
pub mod seccomp;
pub mod signal;
pub mod spec;
pub mod stats;
pub mod update;
pub mod user;
