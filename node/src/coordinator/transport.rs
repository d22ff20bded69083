//! What a coordinator needs from the network, as a trait, so the request state machines run
//! against real gRPC peers in production and against a simulated network in tests.

use std::future::Future;

use crate::merkle::Hash;
use crate::ring::{NodeId, PartitionId};
use crate::version::Clock;

/// A write forwarded to a key's replica by a node that is not one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedPut {
    pub key: Vec<u8>,
    /// `None` writes a tombstone (a delete).
    pub value: Option<Vec<u8>>,
    pub context: Vec<u8>,
    pub w: Option<u32>,
    /// How often it has been forwarded, this hop included.
    pub hops: u32,
}

/// What a successful write returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOutcome {
    /// Sealed context of the version written.
    pub context: Vec<u8>,
    /// Replicas that acknowledged before the answer.
    pub acks: usize,
}

/// Why a call to another node did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// No connection could be made (refused, no route, unknown node). Nothing reached it.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// No answer in time; the request may or may not have been applied.
    #[error("timed out")]
    Timeout,
    /// The peer answered with an error of its own (`code` is a gRPC code).
    #[error("{message}")]
    Remote { code: i32, message: String },
}

/// Calls to other nodes. Implementations apply their own per-call timeouts and feed the local
/// failure detector behind [`Transport::is_up`].
pub trait Transport: Send + Sync + 'static {
    /// Whether this node currently considers `node` reachable (local failure detection).
    fn is_up(&self, node: &NodeId) -> bool;

    /// Merge `clock` into `to`'s replica of `key`; with `hint_for`, `to` is a stand-in and keeps
    /// it as a hint for that node.
    fn replicate(
        &self,
        to: &NodeId,
        key: &[u8],
        clock: &Clock,
        hint_for: Option<&NodeId>,
    ) -> impl Future<Output = Result<(), PeerError>> + Send;

    /// `to`'s replica of `key` (empty clock when it has none); with `hint_for`, merged with
    /// what `to` holds as a hint for that node.
    fn fetch(
        &self,
        to: &NodeId,
        key: &[u8],
        hint_for: Option<&NodeId>,
    ) -> impl Future<Output = Result<Clock, PeerError>> + Send;

    /// Hashes of nodes `indices` of `level` of `to`'s Merkle tree of `partition`.
    fn merkle_hashes(
        &self,
        to: &NodeId,
        partition: PartitionId,
        level: u32,
        indices: Vec<u32>,
    ) -> impl Future<Output = Result<Vec<Hash>, PeerError>> + Send;

    /// `to`'s (key, version digest) items of `partition` in the given leaves.
    fn merkle_items(
        &self,
        to: &NodeId,
        partition: PartitionId,
        leaves: Vec<u32>,
    ) -> impl Future<Output = Result<Vec<(Vec<u8>, Hash)>, PeerError>> + Send;

    /// Ask `to`, a replica of the key, to coordinate a write.
    fn coordinate_put(
        &self,
        to: &NodeId,
        put: ForwardedPut,
    ) -> impl Future<Output = Result<PutOutcome, PeerError>> + Send;
}
