//! What the protocol needs from the network, as small traits owned by the side that needs
//! them: the coordinator needs [`Replicas`], anti-entropy [`Replicas`] and [`Merkle`], partition
//! transfer a [`PartitionSource`], membership [`Gossip`], and all of them [`Liveness`] (local
//! failure detection). The gRPC peers (`rpc::peers`) implement them in production; the one
//! in-memory simulator ([`sim`]) implements them for every unit test.
//!
//! The hot-path traits ([`Replicas`], [`Merkle`], [`PartitionSource`]) return `impl Future`, so
//! the coordinator's calls are not boxed; [`Liveness`] and [`Gossip`] are object safe (boxed
//! futures, off the hot path) so membership holds an `Arc<dyn Gossip>` and is not generic.

#[cfg(test)]
pub mod sim;

use std::future::Future;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::merkle::Hash;
use crate::ring::{NodeId, PartitionId};
use crate::storage::Budget;
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

/// One page of a replica's Merkle items.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemsPage {
    /// (key, version digest), in key order.
    pub items: Vec<(Vec<u8>, Hash)>,
    /// Whether more items follow the last one.
    pub more: bool,
}

/// One page of a partition stream.
#[derive(Debug, Clone)]
pub struct PartitionPage {
    /// (key, clock, encoded size in bytes) entries, in key order.
    pub entries: Vec<(Vec<u8>, Clock, usize)>,
    /// Whether this is the last page.
    pub done: bool,
}

/// Who answered a ping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub node_id: String,
    pub cluster: String,
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
    /// The connection broke after the request was sent (reset, closed): the request may or
    /// may not have been applied, as with a timeout.
    #[error("connection lost after sending: {0}")]
    Interrupted(String),
    /// The peer answered with an error of its own (`code` is a gRPC code).
    #[error("{message}")]
    Remote { code: i32, message: String },
}

/// Local failure detection (paper section 4.8.3): which peers this node currently finds
/// reachable, fed by every call's outcome, and the probes that revive peers marked down.
pub trait Liveness: Send + Sync + 'static {
    /// Whether this node currently considers `node` reachable.
    fn is_up(&self, node: &NodeId) -> bool;

    /// `node` answered a call made outside this trait's implementations (e.g. gossip with a
    /// seed that turned out to be `node`): it is up.
    fn heard_from(&self, node: &NodeId);

    /// A call to `node` got no answer: it is down until a probe succeeds.
    fn lost(&self, node: &NodeId, error: &str);

    /// How long this node has found `node` unreachable without a success since; `None` while it
    /// is up.
    fn down_for(&self, node: &NodeId) -> Option<Duration>;

    /// Down peers whose next probe is due.
    fn due_probes(&self) -> Vec<NodeId>;

    /// Asks `to` who it is; the outcome feeds the failure detector.
    fn ping<'a>(
        &'a self,
        to: &'a NodeId,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<PeerIdentity, PeerError>>;
}

/// Reads and writes of replicas of single keys (the coordinator, hinted handoff, anti-entropy).
/// Implementations apply their own per-call timeouts and feed [`Liveness`].
pub trait Replicas: Liveness {
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

    /// Ask `to`, a replica of the key, to coordinate a write.
    fn coordinate_put(
        &self,
        to: &NodeId,
        put: ForwardedPut,
    ) -> impl Future<Output = Result<PutOutcome, PeerError>> + Send;
}

/// Another replica's Merkle trees (anti-entropy).
pub trait Merkle: Send + Sync + 'static {
    /// Hashes of nodes `indices` of `level` of `to`'s Merkle tree of `partition`.
    fn merkle_hashes(
        &self,
        to: &NodeId,
        partition: PartitionId,
        level: u32,
        indices: Vec<u32>,
    ) -> impl Future<Output = Result<Vec<Hash>, PeerError>> + Send;

    /// `to`'s (key, version digest) items of `partition` in the given leaves, after key
    /// `after`, as many as `budget` admits (at least one).
    fn merkle_items(
        &self,
        to: &NodeId,
        partition: PartitionId,
        leaves: Vec<u32>,
        after: Option<Vec<u8>>,
        budget: Budget,
    ) -> impl Future<Output = Result<ItemsPage, PeerError>> + Send;
}

/// Whole partitions, page by page (partition transfer on join and leave).
pub trait PartitionSource: Liveness {
    /// The entries of `partition` held by `from` after key `after`, as many as `budget`
    /// admits (at least one).
    fn stream_partition(
        &self,
        from: &NodeId,
        partition: PartitionId,
        after: Option<Vec<u8>>,
        budget: Budget,
    ) -> impl Future<Output = Result<PartitionPage, PeerError>> + Send;
}

/// Membership gossip: exchanging encoded views, and learning members' addresses.
pub trait Gossip: Liveness {
    /// Adds peers and updates addresses that changed (a restarted pod has a new address).
    fn set_addresses(&self, members: &[(NodeId, String)]);

    /// Push-pull gossip: sends this node's encoded view to the node at `address` (a member, then
    /// `to` names it, or a seed) and returns its encoded view.
    fn gossip<'a>(
        &'a self,
        to: Option<&'a NodeId>,
        address: &'a str,
        view: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<u8>, PeerError>>;
}

/// Everything a node needs from the network.
pub trait Net: Replicas + Merkle + PartitionSource + Gossip {}

impl<T: Replicas + Merkle + PartitionSource + Gossip> Net for T {}
