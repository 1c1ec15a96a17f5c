//! Berth's end-to-end tests, one binary: the real berthd (and berth-shim,
//! runc, CNI plugins, a registry) driven over CRI gRPC as the kubelet and
//! crictl drive it. One module per area; the fixtures are the harness's
//! (`berth_e2e`). Filter by module: `cargo test -p berth-e2e -- pods::`.
//!
//! The node VM suite (hack/vm/suite.sh) runs `node::` and the other
//! node-only cases there, with `--ignored`.

mod abandoned;
mod apparmor;
mod bench_pull;
mod cgroup_stats;
mod chaos;
mod containers;
mod cri_api;
mod disk_full;
mod events;
mod foundation;
mod grpc_clients;
mod hostile;
mod hostile_layers;
mod image_volumes;
mod images;
mod load;
mod metrics;
mod node;
mod nri;
mod pods;
mod private_state;
mod probes;
mod recovery;
mod stats;
mod streaming_berthd;
mod streaming_clientgo;
mod streaming_memory;
mod systemd_driver;
mod userns;
