//! Anti-entropy (paper section 4.7): replicas of a partition compare their Merkle trees level
//! by level, descend only into differing subtrees, list the (key, version digest) items of the
//! differing leaves, and exchange only the keys that differ, merging versions so both sides end
//! equal. A background worker does this for one partition at a time, round robin over the
//! partitions this node replicates; `repair` does it on demand (`dynamoctl repair`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::coordinator::{Coordinator, Transport};
use crate::merkle::{diff_items, DiffWalk};
use crate::ring::{NodeId, PartitionId};
use crate::storage::{Store, TREE_SHAPE};
use crate::throttle::Throttle;

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
pub async fn exchange<T: Transport>(
    store: &Store,
    transport: &T,
    partition: PartitionId,
    peer: &NodeId,
    throttle: &mut Throttle,
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
    let remote = transport
        .merkle_items(peer, partition, leaves.clone())
        .await
        .map_err(|e| format!("{peer}: {e}"))?;
    let local = store.items_in_leaves(partition, &leaves).map_err(|e| e.to_string())?;
    stats.keys_compared = (local.len() + remote.len()) as u64;
    let diff = diff_items(&local, &remote);

    // Pull what the peer has that we lack or hold differently, merging it here...
    for key in diff.missing_locally.iter().chain(&diff.different) {
        throttle.acquire().await;
        let clock = transport.fetch(peer, key, None).await.map_err(|e| format!("{peer}: {e}"))?;
        store.merge(partition, key, &clock).map_err(|e| e.to_string())?;
        stats.keys_pulled += 1;
    }
    // ...then push our (now merged) version of everything that differed or it lacks.
    let to_push: BTreeSet<&Vec<u8>> = diff.missing_remotely.iter().chain(&diff.different).collect();
    for key in to_push {
        throttle.acquire().await;
        let clock = store.get(partition, key).map_err(|e| e.to_string())?;
        transport.replicate(peer, key, &clock, None).await.map_err(|e| format!("{peer}: {e}"))?;
        stats.keys_pushed += 1;
    }
    Ok(stats)
}

/// The other replicas of `partition` this node should synchronise with (those it finds up).
fn peers_of<T: Transport>(coordinator: &Coordinator<T>, partition: PartitionId) -> Vec<NodeId> {
    let placement = coordinator.placement();
    let Some(ring) = placement.current.as_ref() else { return Vec::new() };
    ring.preference_list(partition)
        .iter()
        .take(coordinator.settings().n)
        .map(|m| m.id.clone())
        .filter(|id| id != coordinator.me())
        .collect()
}

/// Runs exchanges now with every other replica of `partition`, or of every partition this node
/// replicates.
pub async fn repair<T: Transport>(
    coordinator: &Coordinator<T>,
    partition: Option<PartitionId>,
) -> ExchangeStats {
    let placement = coordinator.placement();
    let partitions = match (partition, placement.current.as_ref()) {
        (Some(p), _) => vec![p],
        (None, Some(ring)) => ring.replica_partitions(coordinator.me(), coordinator.settings().n),
        (None, None) => Vec::new(),
    };
    let mut total =
        ExchangeStats { partitions: partitions.len() as u32, ..ExchangeStats::default() };
    let mut throttle = Throttle::new(0);
    for p in partitions {
        for peer in peers_of(coordinator, p) {
            match exchange(coordinator.store(), &**coordinator.transport(), p, &peer, &mut throttle)
                .await
            {
                Ok(stats) => total.add(stats),
                Err(e) => total.errors.push(format!("partition {p}: {e}")),
            }
        }
    }
    total
}

/// Every `interval`, synchronises the next partition (round robin over those this node
/// replicates) with each of its other replicas that is up, paced to `per_second` keys.
pub async fn run<T: Transport>(
    coordinator: Arc<Coordinator<T>>,
    interval: Duration,
    per_second: u32,
    shutdown: CancellationToken,
) {
    let mut throttle = Throttle::new(per_second);
    let mut next = 0usize;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let placement = coordinator.placement();
        let Some(ring) = placement.current.as_ref() else { continue };
        let partitions = ring.replica_partitions(coordinator.me(), coordinator.settings().n);
        if partitions.is_empty() {
            continue;
        }
        let p = partitions[next % partitions.len()];
        next = next.wrapping_add(1);
        for peer in peers_of(&coordinator, p) {
            if !coordinator.transport().is_up(&peer) {
                continue;
            }
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = exchange(coordinator.store(), &**coordinator.transport(), p, &peer, &mut throttle) => r,
            };
            match result {
                Ok(s) if s.keys_pulled + s.keys_pushed > 0 => tracing::info!(
                    partition = p, %peer, pulled = s.keys_pulled, pushed = s.keys_pushed,
                    "anti-entropy repaired keys"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(partition = p, %peer, error = %e, "anti-entropy exchange failed")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
