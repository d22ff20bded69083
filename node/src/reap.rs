//! Tombstone reaping: a node removes its tombstone of a key once it has held it for the grace
//! period (`background.delete_grace_ms`) and every replica of the key (the first N of its
//! preference list in the committed layout, with no layout change under way) holds that
//! tombstone, a newer one, or nothing.
//!
//! Why that is safe: a replica that missed the delete still holds the old value, answers with
//! it, and so blocks reaping until read repair, hinted handoff or anti-entropy gave it the
//! tombstone; a replica that cannot be asked blocks it too. A replica holding nothing has
//! nothing to bring back (it reaped already, or never had the key). The grace period covers
//! what is not on a replica: a write of the old value still in flight, or held as a hint by a
//! stand-in that cannot reach its node. Each replica reaps on its own; one that reaped may get
//! the tombstone back from anti-entropy with a replica that has not yet, and reaps it again a
//! grace period later, once the others hold nothing.
//!
//! [`verdict`] is the pure rule; [`ReapWorker`] reads the other replicas and applies it, one
//! key at a time, paced (`background.reap_keys_per_sec`). Its reads are ordinary replica
//! fetches, which the peers' admission control does not count (as for a client's reads).

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::membership::gossip::Membership;
use crate::net::{PeerError, Replicas};
use crate::ring::{NodeId, PartitionId};
use crate::storage::{blocking, now_ms, Store};
use crate::throttle::Throttle;
use crate::version::Clock;
use crate::worker::{Worker, WorkerState};

/// Why a tombstone stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keep {
    /// This replica no longer holds a tombstone (a write came after it).
    NotATombstone,
    /// A replica did not answer: it may hold the old value.
    Unanswered(NodeId),
    /// A replica holds something the tombstone does not cover, or an older version.
    Behind(NodeId),
}

/// The rule (pure): `local` (this replica's clock) may be reaped when it is a tombstone and
/// every other replica answered with a clock that is empty, or a tombstone that holds
/// everything `local` holds.
pub fn verdict(local: &Clock, others: &[(NodeId, Result<Clock, PeerError>)]) -> Result<(), Keep> {
    if !local.is_deleted() {
        return Err(Keep::NotATombstone);
    }
    for (node, answer) in others {
        match answer {
            Err(_) => return Err(Keep::Unanswered(node.clone())),
            Ok(c) if c.is_empty() => {}
            Ok(c) if c.is_deleted() && local.dominated_by(c) => {}
            Ok(_) => return Err(Keep::Behind(node.clone())),
        }
    }
    Ok(())
}

/// Reaps this node's tombstones (see the module docs): every `interval`, a pass over the
/// tombstones held longer than `grace`.
pub struct ReapWorker<N> {
    membership: Arc<Membership>,
    store: Arc<Store>,
    net: Arc<N>,
    /// Replicas per key.
    n: usize,
    grace: Duration,
    interval: Duration,
    throttle: Throttle,
    /// Where the current pass is in the tombstone index (`None`: at its start).
    cursor: Option<(PartitionId, Vec<u8>)>,
}

/// Tombstones read from the index at a time.
const PAGE: usize = 256;

impl<N: Replicas> ReapWorker<N> {
    pub fn new(
        membership: Arc<Membership>,
        store: Arc<Store>,
        net: Arc<N>,
        n: usize,
        grace: Duration,
        interval: Duration,
        keys_per_sec: u32,
    ) -> Self {
        ReapWorker {
            membership,
            store,
            net,
            n,
            grace,
            interval,
            throttle: Throttle::new(keys_per_sec),
            cursor: None,
        }
    }

    /// One page of the pass; Busy while the pass has more to look at.
    async fn page(&mut self) -> WorkerState {
        let placement = self.membership.placement().borrow().clone();
        let (Some(ring), None) = (&placement.current, &placement.next) else {
            self.cursor = None;
            return WorkerState::Idle;
        };
        let me = self.membership.me().clone();
        let held_since = now_ms().saturating_sub(self.grace.as_millis() as u64);
        let store = self.store.clone();
        let after = self.cursor.clone();
        let page = blocking(|| {
            store.tombstones_since(held_since, after.as_ref().map(|(p, k)| (*p, &k[..])), PAGE)
        });
        let page = match page {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the tombstone index; will retry");
                self.cursor = None;
                return WorkerState::Idle;
            }
        };
        let Some(last) = page.last().cloned() else {
            self.cursor = None;
            return WorkerState::Idle;
        };
        let mut reaped = 0;
        for (p, key) in page {
            let replicas: Vec<NodeId> =
                ring.preference_list(p).iter().take(self.n).map(|m| m.id.clone()).collect();
            if !replicas.contains(&me) {
                continue; // cleanup deletes copies of partitions this node does not replicate
            }
            self.throttle.acquire().await;
            let local = match self.store.get(p, &key) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read a tombstone; will retry");
                    continue;
                }
            };
            if !local.is_deleted() {
                continue;
            }
            let mut others = Vec::with_capacity(replicas.len());
            for r in replicas.into_iter().filter(|r| *r != me) {
                let answer = self.net.fetch(&r, &key, None).await;
                let failed = answer.is_err();
                others.push((r, answer));
                if failed {
                    break;
                }
            }
            if verdict(&local, &others).is_ok() {
                match self.store.reap(p, &key, &local) {
                    Ok(true) => reaped += 1,
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot reap a tombstone; will retry"),
                }
            }
        }
        if reaped > 0 {
            tracing::debug!(reaped, "reaped tombstones");
        }
        self.cursor = Some(last);
        WorkerState::Busy
    }
}

impl<N: Replicas> Worker for ReapWorker<N> {
    fn name(&self) -> &'static str {
        "reaper"
    }

    fn wait(&self) -> Duration {
        // Within a pass, pages follow each other; between passes, the interval.
        if self.cursor.is_some() {
            Duration::ZERO
        } else {
            self.interval
        }
    }

    fn step(&mut self) -> BoxFuture<'_, WorkerState> {
        Box::pin(self.page())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::{Value, VersionVector};

    fn node(id: &str) -> NodeId {
        NodeId(id.into())
    }

    #[test]
    fn a_tombstone_goes_only_when_every_replica_holds_it_a_newer_one_or_nothing() {
        let live = Clock::new().update(&VersionVector::new(), Value::Data(b"v".to_vec()), 1);
        let tomb = live.update(&live.context(), Value::Tombstone, 1);
        let newer_tomb = tomb.update(&tomb.context(), Value::Tombstone, 2);
        let resurrected = tomb.update(&tomb.context(), Value::Data(b"w".to_vec()), 2);
        let concurrent = live.update(&VersionVector::new(), Value::Data(b"x".to_vec()), 3);
        let ok = |c: &Clock| (node("b"), Ok(c.clone()));

        assert_eq!(verdict(&tomb, &[ok(&tomb), ok(&Clock::new())]), Ok(()));
        assert_eq!(verdict(&tomb, &[ok(&newer_tomb), ok(&tomb)]), Ok(()));
        assert_eq!(verdict(&tomb, &[]), Ok(()), "N = 1");
        // A replica that missed the delete still has the value: it would bring it back.
        assert_eq!(verdict(&tomb, &[ok(&tomb), ok(&live)]), Err(Keep::Behind(node("b"))));
        assert_eq!(verdict(&tomb, &[ok(&resurrected)]), Err(Keep::Behind(node("b"))));
        assert_eq!(verdict(&tomb, &[ok(&concurrent)]), Err(Keep::Behind(node("b"))));
        // Another tombstone that does not cover this one is not "newer".
        let other_tomb = Clock::new().update(&VersionVector::new(), Value::Tombstone, 4);
        assert_eq!(verdict(&tomb, &[ok(&other_tomb)]), Err(Keep::Behind(node("b"))));
        let down = (node("c"), Err(PeerError::Timeout));
        assert_eq!(verdict(&tomb, &[ok(&tomb), down]), Err(Keep::Unanswered(node("c"))));
        assert_eq!(verdict(&live, &[ok(&tomb)]), Err(Keep::NotATombstone));
        assert_eq!(verdict(&Clock::new(), &[]), Err(Keep::NotATombstone));
    }
}
