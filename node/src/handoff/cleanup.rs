//! Cleanup: a node deletes its copies of the partitions it no longer replicates, once the ring
//! has been settled for a while (Cassandra's `nodetool cleanup`, without anyone having to run
//! it). After a join, the nodes that gave partitions to the new one keep stale copies; after a
//! decommission, the node that left keeps everything. Both only cost disk, but they grow with
//! every change.
//!
//! Safe because ownership flips only after the new replicas pulled the data (see
//! [`crate::membership::claimant`]); the delay ([`crate::config::BackgroundConfig::cleanup_after_ms`])
//! covers coordinators that learn of the new layout late. Runs only while no change is under
//! way and this node is a normal member (or has left), never on a node still joining.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::membership::gossip::Membership;
use crate::membership::view::Status;
use crate::ring::{NodeId, PartitionId, Ring};
use crate::storage::{blocking, Store};
use crate::worker::{Worker, WorkerState};

/// The partitions `me` does not replicate in `ring` (not among the first `n` of their
/// preference list): those whose copies it may delete.
pub fn not_replicated(ring: &Ring, me: &NodeId, n: usize) -> Vec<PartitionId> {
    (0..ring.partitions())
        .filter(|&p| !ring.preference_list(p).iter().take(n).any(|m| m.id == *me))
        .collect()
}

/// Deletes the copies of partitions this node no longer replicates, once the layout has been
/// settled for `after`; checks every `after / 4` (at most every 10 s).
pub struct CleanupWorker {
    membership: Arc<Membership>,
    store: Arc<Store>,
    /// Replicas per key.
    n: usize,
    after: Duration,
    /// Checked between partitions: deleting is synchronous, so shutdown cannot drop it midway.
    shutdown: CancellationToken,
    /// The epoch seen settled, and since when.
    settled: Option<(u64, Instant)>,
    /// The epoch already cleaned up.
    cleaned: Option<u64>,
}

impl CleanupWorker {
    pub fn new(
        membership: Arc<Membership>,
        store: Arc<Store>,
        n: usize,
        after: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        CleanupWorker { membership, store, n, after, shutdown, settled: None, cleaned: None }
    }

    fn pass(&mut self) -> WorkerState {
        let (membership, store) = (&self.membership, &self.store);
        let placement = membership.placement().borrow().clone();
        let (Some(ring), None) = (&placement.current, &placement.next) else {
            self.settled = None;
            return WorkerState::Idle;
        };
        let since = match self.settled {
            Some((epoch, since)) if epoch == placement.epoch => since,
            _ => {
                self.settled = Some((placement.epoch, Instant::now()));
                return WorkerState::Idle;
            }
        };
        if since.elapsed() < self.after || self.cleaned == Some(placement.epoch) {
            return WorkerState::Idle;
        }
        let me = membership.me().clone();
        let member = ring.members().iter().any(|m| m.id == me);
        let ok = match membership.status() {
            Status::Normal => member,
            Status::Left => !member,
            Status::Joining | Status::Leaving => false,
        };
        if !ok {
            return WorkerState::Idle;
        }
        let mut dropped: BTreeSet<PartitionId> = BTreeSet::new();
        let mut keys = 0;
        for p in not_replicated(ring, &me, self.n) {
            if self.shutdown.is_cancelled()
                || membership.placement().borrow().epoch != placement.epoch
            {
                break;
            }
            let removed = blocking(|| {
                store.holds(p).and_then(|h| if h { store.drop_partition(p) } else { Ok(0) })
            });
            match removed {
                Ok(0) => {}
                Ok(k) => {
                    dropped.insert(p);
                    keys += k;
                    crate::metrics::METRICS.cleanup_partitions.inc();
                    crate::metrics::METRICS.cleanup_keys.inc_by(k);
                }
                Err(e) => tracing::warn!(partition = p, error = %e, "cleanup failed; will retry"),
            }
        }
        if !dropped.is_empty() {
            tracing::info!(
                epoch = placement.epoch,
                partitions = dropped.len(),
                keys,
                "deleted copies of partitions this node no longer replicates"
            );
        }
        self.cleaned = Some(placement.epoch);
        if dropped.is_empty() {
            WorkerState::Idle
        } else {
            WorkerState::Busy
        }
    }
}

impl Worker for CleanupWorker {
    fn name(&self) -> &'static str {
        "cleanup"
    }

    fn wait(&self) -> Duration {
        (self.after / 4).clamp(Duration::from_millis(100), Duration::from_secs(10))
    }

    fn step(&mut self) -> BoxFuture<'_, WorkerState> {
        Box::pin(async move { self.pass() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::Member;

    #[test]
    fn a_node_cleans_exactly_the_partitions_it_is_not_a_replica_of() {
        let members: Vec<Member> = ["a", "b", "c", "d"]
            .iter()
            .map(|id| Member { id: NodeId((*id).into()), zone: (*id).into(), weight: 1 })
            .collect();
        let ring = Ring::new(64, members).unwrap();
        let me = NodeId("a".into());
        let clean = not_replicated(&ring, &me, 3);
        for p in 0..64 {
            let replica = ring.preference_list(p).iter().take(3).any(|m| m.id == me);
            assert_eq!(clean.contains(&p), !replica, "partition {p}");
        }
        // With N=3 on four nodes, a node replicates about 3/4 of the partitions.
        assert!((10..=22).contains(&clean.len()), "{}", clean.len());
        // A node outside the ring replicates nothing.
        assert_eq!(not_replicated(&ring, &NodeId("z".into()), 3).len(), 64);
    }
}
