//! Berth's image store: references, registry pulls, the content store, layer
//! unpacking and overlay snapshots.

pub mod digest;
pub mod reference;
pub mod registries;
pub mod unpack;
