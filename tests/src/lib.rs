//! Test support for process-level cluster tests: start real `dynamo-node` processes on
//! loopback, inject faults (kill -9, restart, pause, wipe, partitions), run workloads that
//! record a history, and check that history: no acknowledged write lost, no value from nowhere,
//! replicas converged.
//!
//! - [`cluster`]: the processes and the fault primitives;
//! - [`workload`]: clients that record every operation;
//! - [`nemesis`]: faults on a seeded schedule, healing and convergence;
//! - [`history`]: the history, the final state and the checker (pure).

pub mod cluster;
pub mod history;
pub mod nemesis;
pub mod workload;

pub use cluster::{Cluster, ClusterOptions};
