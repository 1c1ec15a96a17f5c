//! Berth's image store: references, registry pulls, the content store and
//! layer unpacking.
//!
//! [`ImageStore`] is the API the rest of Berth uses: pull, list, look up,
//! remove, measure; and for containers, an image's config
//! ([`manifest::RunConfig`]: Entrypoint, Cmd, Env, WorkingDir, User,
//! StopSignal) and its layer dirs in overlay `lowerdir` order
//! ([`ImageStore::lower_dirs`]).

pub mod client;
pub mod digest;
mod fsutil;
pub mod manifest;
pub mod reference;
pub mod registries;
pub mod store;
pub mod unpack;

pub use client::{ClientError, Credentials};
pub use digest::{ChainId, Digest};
pub use reference::{ImageRef, ParsedRef};
pub use store::{Image, ImageStore, Pin, PullSettings, Pulled, StoreError, StoreOptions};
