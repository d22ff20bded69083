//! A Dynamo-style key-value store node (DeCandia et al., SOSP 2007): consistent hashing over
//! fixed partitions, dotted version vectors, quorum reads and writes with read repair, sloppy
//! quorum with hinted handoff, and Merkle-tree anti-entropy.
//!
//! Modules follow the protocol concerns, in layers where a module imports only from layers
//! below it: `ring`, `version`, `merkle` (pure); `metrics` (the registry every layer records
//! to); `storage`, `throttle`, `worker`; `net` (the
//! traits the protocol needs from the network, and the simulator unit tests run on);
//! `membership`, `coordinator`, `handoff`, `antientropy`, `reap` (on `net` and `storage`);
//! `backup` (checkpoints to a destination and restores, on `storage`); `rpc` (gRPC
//! peers and services); `node` (the context owning storage, ring view and peers, and the
//! background workers); `server` (wiring). The ring and the configuration schema live in
//! `dynamo-api` (shared with the client and the operator) and are re-exported here.

pub mod antientropy;
pub mod backup;
pub use dynamo_api::config;
pub mod coordinator;
pub mod error;
pub mod handoff;
pub mod membership;
pub mod merkle;
pub mod metrics;
pub mod net;
pub mod node;
pub mod reap;
pub use dynamo_api::ring;
pub mod rpc;
pub mod server;
pub mod storage;
pub mod throttle;
pub mod version;
pub mod worker;
