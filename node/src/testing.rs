//! Test support shared by unit tests of several modules: a [`Transport`] that calls other
//! in-memory stores directly, with a set of nodes that do not answer.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use crate::coordinator::{ForwardedPut, PeerError, PutOutcome, Transport};
use crate::merkle::Hash;
use crate::ring::{key_hash, partition_of_hash, NodeId, PartitionId};
use crate::storage::Store;
use crate::version::Clock;

/// Stores reached directly, as if over a network with no latency. Nodes listed in `down`
/// (or absent from `stores`) are unreachable.
pub struct Direct {
    /// Every node's store.
    pub stores: HashMap<NodeId, Arc<Store>>,
    /// Partition count, to place keys.
    pub partitions: u32,
    /// Nodes that do not answer.
    pub down: Mutex<BTreeSet<NodeId>>,
}

impl Direct {
    /// Stores of `partitions` partitions, all answering.
    pub fn new(stores: HashMap<NodeId, Arc<Store>>, partitions: u32) -> Direct {
        Direct { stores, partitions, down: Mutex::new(BTreeSet::new()) }
    }

    fn store(&self, to: &NodeId) -> Result<&Arc<Store>, PeerError> {
        if self.down.lock().expect("lock").contains(to) {
            return Err(PeerError::Unreachable(format!("{to} is down")));
        }
        self.stores.get(to).ok_or_else(|| PeerError::Unreachable(format!("no node {to}")))
    }

    fn partition(&self, key: &[u8]) -> PartitionId {
        partition_of_hash(key_hash(key), self.partitions)
    }
}

fn err(e: crate::error::Error) -> PeerError {
    PeerError::Remote { code: 2, message: e.to_string() }
}

impl Transport for Direct {
    fn is_up(&self, node: &NodeId) -> bool {
        self.store(node).is_ok()
    }

    async fn replicate(
        &self,
        to: &NodeId,
        key: &[u8],
        clock: &Clock,
        _: Option<&NodeId>,
    ) -> Result<(), PeerError> {
        self.store(to)?.merge(self.partition(key), key, clock).map(|_| ()).map_err(err)
    }

    async fn fetch(&self, to: &NodeId, key: &[u8], _: Option<&NodeId>) -> Result<Clock, PeerError> {
        self.store(to)?.get(self.partition(key), key).map_err(err)
    }

    async fn coordinate_put(&self, _: &NodeId, _: ForwardedPut) -> Result<PutOutcome, PeerError> {
        Err(PeerError::Unreachable("not used".into()))
    }

    async fn merkle_hashes(
        &self,
        to: &NodeId,
        p: PartitionId,
        level: u32,
        indices: Vec<u32>,
    ) -> Result<Vec<Hash>, PeerError> {
        self.store(to)?.with_tree(p, |t| t.level_hashes(level, &indices)).map_err(err)
    }

    async fn merkle_items(
        &self,
        to: &NodeId,
        p: PartitionId,
        leaves: Vec<u32>,
    ) -> Result<Vec<(Vec<u8>, Hash)>, PeerError> {
        self.store(to)?.items_in_leaves(p, &leaves).map_err(err)
    }
}
