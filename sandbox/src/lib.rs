//! Pod sandboxes: pinned network / IPC / UTS namespaces, hostname, hosts,
//! resolv.conf and shm, the infra process and pod records.
//!
//! Nothing is implemented yet: berthd answers the pod RPCs with
//! `UNIMPLEMENTED` until this crate lands.
