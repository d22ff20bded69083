//! A Dynamo-style key-value store node (DeCandia et al., SOSP 2007): consistent hashing over
//! fixed partitions, dotted version vectors, quorum reads and writes with read repair, sloppy
//! quorum with hinted handoff, and Merkle-tree anti-entropy.
//!
//! Modules follow the protocol concerns: `ring`, `version`, `merkle` (pure), `membership`,
//! `storage`, `coordinator`, `handoff`, `antientropy`, `rpc`, `server`. The ring and the
//! configuration schema live in `dynamo-api` (shared with the client and the operator) and are
//! re-exported here under their old names.

pub mod antientropy;
pub use dynamo_api::config;
pub mod coordinator;
pub mod error;
pub mod handoff;
pub mod membership;
pub mod merkle;
pub use dynamo_api::ring;
pub mod rpc;
pub mod server;
pub mod storage;
#[cfg(test)]
mod testing;
pub mod throttle;
pub mod version;
