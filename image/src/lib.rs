//! Berth's image store: references, registry pulls, the content store, layer
//! unpacking and overlay snapshots.
//!
//! Nothing is implemented yet: berthd answers every `ImageService` RPC with
//! `UNIMPLEMENTED` until this crate lands.
