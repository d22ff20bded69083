//! End-to-end tests of Dynamo on a real Kubernetes control plane built from Go modules.
//!
//! [`environment::Environment`] brings up everything a scenario needs on one machine: a pod
//! network ([`network`]), etcd and the Kubernetes control plane with kwok and CoreDNS
//! ([`control_plane`]), fake Nodes in three zones, and a kubelet that runs every pod scheduled to
//! them as a real process ([`kubelet`]); the operator's chart installed with helm and the
//! operator run out of cluster ([`operator`]). The scenarios live in `tests/scenarios.rs`;
//! `dynamo-e2e up` starts the same environment for a person to use.

pub mod access;
pub mod control_plane;
pub mod environment;
pub mod kubelet;
pub mod network;
pub mod operator;
pub mod process;
pub mod readiness;
pub mod storage;
pub mod traffic;
