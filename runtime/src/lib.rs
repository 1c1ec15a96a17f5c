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

pub mod apparmor;
pub mod containers;
pub mod cri_spec;
pub mod features;
pub mod lifecycle;
pub mod mounts;
pub mod oci;
pub mod overlay;
pub mod private;
pub mod record;
pub mod resources;
pub mod seccomp;
pub mod spec;
pub mod stats;
pub mod update;
pub mod user;
