//! Containers: OCI spec generation, the OCI runtime driver, container records
//! and the `berth-shim` monitor.
//!
//! So far only the shim's `init` mode exists (the infra process of a pod that
//! shares one PID namespace); the container RPCs answer `UNIMPLEMENTED`.

pub mod init;
