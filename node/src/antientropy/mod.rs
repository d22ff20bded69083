//! Anti-entropy (paper section 4.7): replicas of a partition compare their Merkle trees level
//! by level, descend only into differing subtrees, list the (key, version digest) items of the
//! differing leaves, and exchange only the keys that differ, merging versions so both sides end
//! equal. A background worker does this for one partition at a time, round robin over the
//! partitions this node replicates; `repair` does it on demand (`dynamoctl repair`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::watch;

use crate::merkle::{diff_items, DiffWalk};
use crate::metrics::{DirectionLabel, OutcomeLabel, METRICS};
use crate::net::{Merkle, Replicas};
use crate::ring::{NodeId, PartitionId, Placement};
use crate::storage::{blocking, Budget, Store, SCAN_BYTES, TREE_SHAPE};
use crate::throttle::Throttle;
use crate::worker::{Worker, WorkerState};

/// What one or more exchanges did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExchangeStats {
    pub partitions: u32,
    pub exchanges: u32,
    /// Items compared in differing leaves (both sides).
    pub keys_compared: u64,
    /// Keys fetched from the peer and merged here.
    pub keys_pulled: u64,
    /// Keys sent to the peer.
    pub keys_pushed: u64,
    pub errors: Vec<String>,
}

impl ExchangeStats {
    fn add(&mut self, other: ExchangeStats) {
        self.exchanges += other.exchanges;
        self.keys_compared += other.keys_compared;
        self.keys_pulled += other.keys_pulled;
        self.keys_pushed += other.keys_pushed;
        self.errors.extend(other.errors);
    }
}

/// Synchronises this node's replica of `partition` with `peer`'s.
pub async fn exchange<T: Replicas + Merkle>(
    store: &Store,
    transport: &T,
    partition: PartitionId,
    peer: &NodeId,
    throttle: &mut Throttle,
) -> Result<ExchangeStats, String> {
    let result = exchange_paged(store, transport, partition, peer, throttle, ITEMS_PAGE).await;
    let outcome = if result.is_ok() { "ok" } else { "error" };
    METRICS.antientropy_exchanges.get_or_create(&OutcomeLabel { outcome }).inc();
    result
}

/// [`exchange`], listing the peer's items in pages of `items_page`.
pub(crate) async fn exchange_paged<T: Replicas + Merkle>(
    store: &Store,
    transport: &T,
    partition: PartitionId,
    peer: &NodeId,
    throttle: &mut Throttle,
    items_page: Budget,
) -> Result<ExchangeStats, String> {
    let mut walk = DiffWalk::new(TREE_SHAPE);
    while let Some((level, indices)) = walk.next_request() {
        let remote = transport
            .merkle_hashes(peer, partition, level, indices.clone())
            .await
            .map_err(|e| format!("{peer}: {e}"))?;
        store
            .with_tree(partition, |tree| walk.on_remote_hashes(tree, level, &indices, &remote))
            .map_err(|e| e.to_string())?;
    }
    let leaves = walk.differing_leaves();
    let mut stats = ExchangeStats { exchanges: 1, ..ExchangeStats::default() };
    if leaves.is_empty() {
        return Ok(stats);
    }
    // Page by page through the differing leaves' keys: each page of the peer's items, with
    // this replica's items of the same key range.
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = transport
            .merkle_items(peer, partition, leaves.clone(), after.clone(), items_page)
            .await
            .map_err(|e| format!("{peer}: {e}"))?;
        let upto = match page.items.last() {
            Some((last, _)) if page.more => Some(last.clone()),
            _ => None,
        };
        let unbounded = Budget { items: usize::MAX, bytes: usize::MAX };
        let (local, _) = blocking(|| {
            store.items_in_leaves(partition, &leaves, after.as_deref(), upto.as_deref(), unbounded)
        })
        .map_err(|e| e.to_string())?;
        reconcile(store, transport, partition, peer, throttle, &local, &page.items, &mut stats)
            .await?;
        match upto {
            Some(last) => after = Some(last),
            None => break,
        }
    }
    Ok(stats)
}

/// Most bytes of one page of a peer's Merkle items.
const ITEMS_PAGE: Budget = Budget { items: usize::MAX, bytes: SCAN_BYTES };

/// Makes both replicas equal on the keys of one page: pulls what differs, then pushes.
#[allow(clippy::too_many_arguments)]
async fn reconcile<T: Replicas + Merkle>(
    store: &Store,
    transport: &T,
    partition: PartitionId,
    peer: &NodeId,
    throttle: &mut Throttle,
    local: &[(Vec<u8>, crate::merkle::Hash)],
    remote: &[(Vec<u8>, crate::merkle::Hash)],
    stats: &mut ExchangeStats,
) -> Result<(), String> {
    stats.keys_compared += (local.len() + remote.len()) as u64;
    METRICS.antientropy_keys_compared.inc_by((local.len() + remote.len()) as u64);
    let diff = diff_items(local, remote);

    // Pull what the peer has that we lack or hold differently, merging it here...
    for key in diff.missing_locally.iter().chain(&diff.different) {
        throttle.acquire().await;
        let clock = transport.fetch(peer, key, None).await.map_err(|e| format!("{peer}: {e}"))?;
        store.merge(partition, key, &clock).map_err(|e| e.to_string())?;
        stats.keys_pulled += 1;
        METRICS
            .antientropy_keys_repaired
            .get_or_create(&DirectionLabel { direction: "pulled" })
            .inc();
    }
    // ...then push our (now merged) version of everything that differed or it lacks.
    let to_push: BTreeSet<&Vec<u8>> = diff.missing_remotely.iter().chain(&diff.different).collect();
    for key in to_push {
        throttle.acquire().await;
        let clock = store.get(partition, key).map_err(|e| e.to_string())?;
        transport.replicate(peer, key, &clock, None).await.map_err(|e| format!("{peer}: {e}"))?;
        stats.keys_pushed += 1;
        METRICS
            .antientropy_keys_repaired
            .get_or_create(&DirectionLabel { direction: "pushed" })
            .inc();
    }
    Ok(())
}

/// This node's side of anti-entropy: its store, the network, and where partitions live.
pub struct AntiEntropy<N> {
    me: NodeId,
    /// Replicas per key.
    n: usize,
    store: Arc<Store>,
    net: Arc<N>,
    /// Where keys live; only the current ring's replicas are synchronised.
    placement: watch::Receiver<Arc<Placement>>,
}

impl<N: Replicas + Merkle> AntiEntropy<N> {
    pub fn new(
        me: NodeId,
        n: usize,
        store: Arc<Store>,
        net: Arc<N>,
        placement: watch::Receiver<Arc<Placement>>,
    ) -> AntiEntropy<N> {
        AntiEntropy { me, n, store, net, placement }
    }

    /// The other replicas of `partition` in the current ring.
    fn peers_of(&self, partition: PartitionId) -> Vec<NodeId> {
        let placement = self.placement.borrow().clone();
        let Some(ring) = placement.current.as_ref() else { return Vec::new() };
        ring.replicas(partition, self.n).into_iter().filter(|id| *id != self.me).collect()
    }

    /// The partitions this node replicates in the current ring.
    fn replicated(&self) -> Vec<PartitionId> {
        let placement = self.placement.borrow().clone();
        placement.current.as_ref().map_or_else(Vec::new, |r| r.replica_partitions(&self.me, self.n))
    }

    /// Runs exchanges now with every other replica of `partition`, or of every partition this
    /// node replicates.
    pub async fn repair(&self, partition: Option<PartitionId>) -> ExchangeStats {
        let partitions = match partition {
            Some(p) => vec![p],
            None => self.replicated(),
        };
        let mut total =
            ExchangeStats { partitions: partitions.len() as u32, ..ExchangeStats::default() };
        let mut throttle = Throttle::new(0);
        for p in partitions {
            for peer in self.peers_of(p) {
                match exchange(&self.store, &*self.net, p, &peer, &mut throttle).await {
                    Ok(stats) => total.add(stats),
                    Err(e) => total.errors.push(format!("partition {p}: {e}")),
                }
            }
        }
        total
    }
}

/// Every `interval`, synchronises the next partition (round robin over those this node
/// replicates) with each of its other replicas that is up, paced to `per_second` keys.
pub struct AntiEntropyWorker<N> {
    ae: Arc<AntiEntropy<N>>,
    interval: Duration,
    throttle: Throttle,
    /// Round-robin position.
    next: usize,
}

impl<N> AntiEntropyWorker<N> {
    pub fn new(ae: Arc<AntiEntropy<N>>, interval: Duration, per_second: u32) -> Self {
        AntiEntropyWorker { ae, interval, throttle: Throttle::new(per_second), next: 0 }
    }
}

impl<N: Replicas + Merkle> Worker for AntiEntropyWorker<N> {
    fn name(&self) -> &'static str {
        "anti-entropy"
    }

    fn wait(&self) -> Duration {
        self.interval
    }

    fn step(&mut self) -> BoxFuture<'_, WorkerState> {
        Box::pin(async move {
            let partitions = self.ae.replicated();
            if partitions.is_empty() {
                return WorkerState::Idle;
            }
            let p = partitions[self.next % partitions.len()];
            self.next = self.next.wrapping_add(1);
            let mut state = WorkerState::Idle;
            for peer in self.ae.peers_of(p) {
                if !self.ae.net.is_up(&peer) {
                    continue;
                }
                match exchange(&self.ae.store, &*self.ae.net, p, &peer, &mut self.throttle).await {
                    Ok(s) if s.keys_pulled + s.keys_pushed > 0 => {
                        state = WorkerState::Busy;
                        tracing::info!(
                            partition = p, %peer, pulled = s.keys_pulled, pushed = s.keys_pushed,
                            "anti-entropy repaired keys"
                        )
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(partition = p, %peer, error = %e, "anti-entropy exchange failed")
                    }
                }
            }
            state
        })
    }
}

#[cfg(test)]
mod tests;
