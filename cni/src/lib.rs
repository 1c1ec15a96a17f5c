//! A client of the CNI specification: network config lists, plugin
//! execution, results and the on-disk cache used for DEL.
//!
//! Nothing is implemented yet: berthd reports `NetworkReady=false` until this
//! crate lands.
