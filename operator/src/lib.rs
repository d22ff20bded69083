//! `dynamo-operator`: runs Dynamo clusters on Kubernetes. A `DynamoCluster` resource becomes a
//! ConfigMap, two Services, a PodDisruptionBudget, a Secret and one StatefulSet per zone; nodes
//! are added one at a time and removed only after they have handed their data off.
//!
//! Layout: [`crd`] (the resource), [`validate`] (its rules, Rust side), [`render`] (objects from
//! a spec), [`scaling`] (the step to take, from what is observed), [`status`], [`admin`] (the
//! nodes' admin API), [`controller`] (the reconcile loop), [`leader`] (Lease election),
//! [`metrics`] (and the health server), [`config`] (flags).

pub mod admin;
pub mod config;
pub mod controller;
pub mod crd;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod quantity;
pub mod render;
pub mod rollout;
pub mod scaling;
pub mod status;
pub mod validate;

#[cfg(test)]
pub(crate) mod fixtures;

pub use crd::{DynamoCluster, DynamoClusterSpec, DynamoClusterStatus};
pub use error::{Error, Result};
