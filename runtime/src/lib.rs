//! Containers: OCI spec generation, the OCI runtime driver, container records
//! and the `berth-shim` monitor.

pub mod atomic;
pub mod init;
pub mod lifecycle;
pub mod oci;
pub mod overlay;
pub mod record;
pub mod shim;
pub mod spec;
pub mod user;
