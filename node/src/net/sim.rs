//! The one in-memory network every unit test runs on: each simulated node is a [`Store`] (and,
//! where a test needs them, handlers for forwarded writes and gossip), calls reach it directly,
//! and faults make a node refuse calls ([`Fault::Down`]) or never answer ([`Fault::Hang`]).
//! Deterministic: no sockets, and with tokio's paused clock a hang costs no real time.
//!
//! Like a failure detector, the network remembers which nodes refused the last call
//! (`is_up` is false for them) until a call succeeds again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use super::{
    ForwardedPut, Gossip, ItemsPage, Liveness, Merkle, PartitionPage, PartitionSource, PeerError,
    PeerIdentity, PutOutcome, Replicas,
};
use crate::merkle::Hash;
use crate::ring::{key_hash, partition_of_hash, NodeId, PartitionId};
use crate::storage::{Budget, Store};
use crate::version::Clock;

/// A fault of one simulated node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Connection refused at once.
    Down,
    /// Never answers; the caller's timeout fires (after 30 s of simulated time).
    Hang,
    /// Takes a write or a forwarded put and applies it, then the connection breaks before the
    /// answer (the caller sees [`PeerError::Interrupted`]). Other calls are served normally.
    Reset,
}

/// Coordinates a forwarded write on a node (a test wires it to that node's coordinator).
pub type ForwardHandler =
    Arc<dyn Fn(ForwardedPut) -> BoxFuture<'static, Result<PutOutcome, PeerError>> + Send + Sync>;
/// Answers gossip on a node: takes an encoded view, returns one.
pub type GossipHandler = Arc<dyn Fn(Vec<u8>) -> Result<Vec<u8>, PeerError> + Send + Sync>;

struct SimNode {
    store: Arc<Store>,
    address: String,
    forward: Option<ForwardHandler>,
    gossip: Option<GossipHandler>,
}

/// See the module docs.
pub struct SimNet {
    /// Partition count, to place keys.
    partitions: u32,
    nodes: RwLock<HashMap<NodeId, SimNode>>,
    faults: Mutex<HashMap<NodeId, Fault>>,
    /// What a failure detector would have learnt: peers whose last call was refused.
    known_down: Mutex<HashMap<NodeId, Instant>>,
    /// (call, target) in the order made.
    calls: Mutex<Vec<(&'static str, NodeId)>>,
}

/// A store error as a remote node would report it.
pub fn remote(e: crate::error::Error) -> PeerError {
    PeerError::Remote { code: 2, message: e.to_string() }
}

impl SimNet {
    /// A network of no nodes, placing keys in `partitions` partitions.
    pub fn new(partitions: u32) -> SimNet {
        SimNet {
            partitions,
            nodes: RwLock::new(HashMap::new()),
            faults: Mutex::new(HashMap::new()),
            known_down: Mutex::new(HashMap::new()),
            calls: Mutex::new(Vec::new()),
        }
    }

    /// Adds a node with its store; its address is its id.
    pub fn add(&self, id: &NodeId, store: Arc<Store>) {
        let node = SimNode { store, address: id.0.clone(), forward: None, gossip: None };
        self.nodes.write().unwrap().insert(id.clone(), node);
    }

    /// Makes `id` coordinate forwarded writes with `handler`.
    pub fn on_forward(&self, id: &NodeId, handler: ForwardHandler) {
        self.nodes.write().unwrap().get_mut(id).expect("a node added first").forward =
            Some(handler);
    }

    /// Makes `id` answer gossip at `address` with `handler`.
    pub fn on_gossip(&self, id: &NodeId, address: &str, handler: GossipHandler) {
        let mut nodes = self.nodes.write().unwrap();
        let node = nodes.get_mut(id).expect("a node added first");
        node.address = address.to_string();
        node.gossip = Some(handler);
    }

    /// Sets (`Some`) or clears (`None`) a node's fault.
    pub fn fault(&self, node: &NodeId, fault: Option<Fault>) {
        let mut faults = self.faults.lock().unwrap();
        match fault {
            Some(f) => faults.insert(node.clone(), f),
            None => faults.remove(node),
        };
    }

    /// The calls made since the last time this was called, in order.
    pub fn calls(&self) -> Vec<(&'static str, NodeId)> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }

    fn partition(&self, key: &[u8]) -> PartitionId {
        partition_of_hash(key_hash(key), self.partitions)
    }

    /// Records the call and applies `to`'s fault; returns its store.
    async fn enter(&self, call: &'static str, to: &NodeId) -> Result<Arc<Store>, PeerError> {
        self.calls.lock().unwrap().push((call, to.clone()));
        let fault = self.faults.lock().unwrap().get(to).copied();
        match fault {
            Some(Fault::Down) => {
                self.known_down.lock().unwrap().entry(to.clone()).or_insert_with(Instant::now);
                Err(PeerError::Unreachable("connection refused".into()))
            }
            Some(Fault::Hang) => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Err(PeerError::Timeout)
            }
            Some(Fault::Reset) | None => {
                let store = self.nodes.read().unwrap().get(to).map(|n| n.store.clone());
                match store {
                    Some(store) => {
                        self.known_down.lock().unwrap().remove(to);
                        Ok(store)
                    }
                    None => {
                        self.known_down
                            .lock()
                            .unwrap()
                            .entry(to.clone())
                            .or_insert_with(Instant::now);
                        Err(PeerError::Unreachable(format!("no node {to}")))
                    }
                }
            }
        }
    }
}

impl SimNet {
    /// The answer of a call that was applied: lost on the way back under [`Fault::Reset`].
    fn answer<T>(&self, to: &NodeId, result: Result<T, PeerError>) -> Result<T, PeerError> {
        match self.faults.lock().unwrap().get(to) {
            Some(Fault::Reset) => Err(PeerError::Interrupted("connection reset by peer".into())),
            _ => result,
        }
    }
}

impl Liveness for SimNet {
    fn is_up(&self, node: &NodeId) -> bool {
        !self.known_down.lock().unwrap().contains_key(node)
    }

    fn heard_from(&self, node: &NodeId) {
        self.known_down.lock().unwrap().remove(node);
    }

    fn lost(&self, node: &NodeId, _error: &str) {
        self.known_down.lock().unwrap().entry(node.clone()).or_insert_with(Instant::now);
    }

    fn down_for(&self, node: &NodeId) -> Option<Duration> {
        self.known_down.lock().unwrap().get(node).map(Instant::elapsed)
    }

    fn due_probes(&self) -> Vec<NodeId> {
        let mut down: Vec<NodeId> = self.known_down.lock().unwrap().keys().cloned().collect();
        down.sort();
        down
    }

    fn ping<'a>(
        &'a self,
        to: &'a NodeId,
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<PeerIdentity, PeerError>> {
        Box::pin(async move {
            self.enter("ping", to).await?;
            Ok(PeerIdentity { node_id: to.0.clone(), cluster: "sim".into() })
        })
    }
}

impl Replicas for SimNet {
    async fn replicate(
        &self,
        to: &NodeId,
        key: &[u8],
        clock: &Clock,
        hint_for: Option<&NodeId>,
    ) -> Result<(), PeerError> {
        let store = self.enter("replicate", to).await?;
        let applied = store.accept(to, self.partition(key), key, clock, hint_for).map_err(remote);
        self.answer(to, applied)
    }

    async fn fetch(
        &self,
        to: &NodeId,
        key: &[u8],
        hint_for: Option<&NodeId>,
    ) -> Result<Clock, PeerError> {
        let store = self.enter("fetch", to).await?;
        store.replica(to, self.partition(key), key, hint_for).map_err(remote)
    }

    async fn coordinate_put(
        &self,
        to: &NodeId,
        put: ForwardedPut,
    ) -> Result<PutOutcome, PeerError> {
        self.enter("coordinate_put", to).await?;
        let handler = self.nodes.read().unwrap().get(to).and_then(|n| n.forward.clone());
        let outcome = match handler {
            // Boxed by the handler: a forwarded put runs a put, whose future contains this one.
            Some(handler) => handler(put).await,
            None => Err(PeerError::Unreachable(format!("{to} coordinates no writes here"))),
        };
        self.answer(to, outcome)
    }
}

impl Merkle for SimNet {
    async fn merkle_hashes(
        &self,
        to: &NodeId,
        partition: PartitionId,
        level: u32,
        indices: Vec<u32>,
    ) -> Result<Vec<Hash>, PeerError> {
        let store = self.enter("merkle_hashes", to).await?;
        store.with_tree(partition, |t| t.level_hashes(level, &indices)).map_err(remote)
    }

    async fn merkle_items(
        &self,
        to: &NodeId,
        partition: PartitionId,
        leaves: Vec<u32>,
        after: Option<Vec<u8>>,
        budget: Budget,
    ) -> Result<ItemsPage, PeerError> {
        let store = self.enter("merkle_items", to).await?;
        let (items, done) = store
            .items_in_leaves(partition, &leaves, after.as_deref(), None, budget)
            .map_err(remote)?;
        Ok(ItemsPage { items, more: !done })
    }
}

impl PartitionSource for SimNet {
    async fn stream_partition(
        &self,
        from: &NodeId,
        partition: PartitionId,
        after: Option<Vec<u8>>,
        budget: Budget,
    ) -> Result<PartitionPage, PeerError> {
        let store = self.enter("stream_partition", from).await?;
        let (page, done) =
            store.partition_page(partition, after.as_deref(), budget).map_err(remote)?;
        let mut entries = Vec::with_capacity(page.len());
        for (key, bytes) in page {
            let clock =
                Clock::decode(&bytes).map_err(|e| remote(crate::error::Error::Corrupt(e)))?;
            entries.push((key, clock, bytes.len()));
        }
        Ok(PartitionPage { entries, done })
    }
}

impl Gossip for SimNet {
    fn set_addresses(&self, _members: &[(NodeId, String)]) {}

    fn gossip<'a>(
        &'a self,
        _to: Option<&'a NodeId>,
        address: &'a str,
        view: Vec<u8>,
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<u8>, PeerError>> {
        Box::pin(async move {
            let found = self
                .nodes
                .read()
                .unwrap()
                .iter()
                .find(|(_, n)| n.address == address)
                .map(|(id, n)| (id.clone(), n.gossip.clone()));
            let Some((id, handler)) = found else {
                return Err(PeerError::Unreachable(format!("nothing listens at {address}")));
            };
            // As the gRPC peers: an answer proves the peer up, but a failed gossip round does
            // not mark it down (only replica, Merkle and transfer calls and probes do).
            let was_down = self.known_down.lock().unwrap().contains_key(&id);
            if let Err(e) = self.enter("gossip", &id).await {
                if !was_down {
                    self.known_down.lock().unwrap().remove(&id);
                }
                return Err(e);
            }
            match handler {
                Some(handler) => handler(view),
                None => Err(PeerError::Unreachable(format!("{id} does not gossip"))),
            }
        })
    }
}
