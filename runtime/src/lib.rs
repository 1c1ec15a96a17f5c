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
//! - [`update`] (UpdateContainerResources' checks and OCI fields);
//! - [`record::RecordStore`] for the records reloaded after a restart;
//! - [`containers::Containers`]: the index, name reservation and per-container
//!   locking over all of the above (what the container RPCs call);
//! - [`cri_spec::convert`] (CreateContainer's request → [`spec::ContainerSpec`]),
//!   [`cri_spec::container_user`] (ContainerStatus.user) and
//!   [`features::probe`] (Status.runtime_handlers features).
//!
//! The shim binary is found next to berthd's own executable by default
//! ([`oci::default_shim_path`]).

pub mod containers;
pub mod cri_spec;
pub mod features;
pub mod init;
pub mod lifecycle;
pub mod mounts;
pub mod oci;
pub mod overlay;
pub mod private;
pub mod record;
pub mod seccomp;
pub mod shim;
pub mod spec;
pub mod stats;
pub mod update;
pub mod user;
