//! Hinted handoff (paper section 4.6): a stand-in periodically scans the hints it holds and
//! hands each one to the node it was meant for once that node answers; a hint is deleted only
//! after the owner acknowledged it (and only if no newer write was hinted meanwhile). Paced by
//! a throttle so a node coming back is not flooded (no hinted-handoff storms).
//!
//! A node that has left the cluster (decommissioned, or removed by force after a crash) never
//! comes back for its hints: they are re-routed to the key's replicas in the current ring
//! ([`Route::Replicas`]) and deleted once every one of them has it.

pub mod cleanup;
pub mod transfer;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::membership::gossip::Membership;
use crate::membership::view::Status;
use crate::net::Replicas;
use crate::ring::{NodeId, PartitionId, Ring};
use crate::storage::Store;
use crate::throttle::Throttle;
use crate::worker::{Worker, WorkerState};

/// Where the hints held for a target go.
pub enum Route {
    /// To the target itself (it is a member, maybe down for now).
    Target,
    /// The target has left: to the first `n` nodes of each key's preference list in this ring.
    Replicas { ring: Arc<Ring>, n: usize },
}

/// Decides, once per target and pass, where its hints go.
pub type Router = Arc<dyn Fn(&NodeId) -> Route + Send + Sync>;

/// Routes by membership: a target that left never comes back, so its hints go to the current
/// replicas (`n` per key), once no layout change is under way (so "current" is where the data
/// lives); any other target gets its own hints.
pub fn membership_router(membership: Arc<Membership>, n: usize) -> Router {
    Arc::new(move |target: &NodeId| {
        let left = membership.status_of(target) == Some(Status::Left);
        let placement = membership.placement().borrow().clone();
        match (&placement.current, &placement.next) {
            (Some(ring), None) if left => Route::Replicas { ring: Arc::new(ring.clone()), n },
            _ => Route::Target,
        }
    })
}

/// Hints per page read from storage.
const PAGE: usize = 128;

/// What one delivery pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeliveryStats {
    pub delivered: u64,
    /// Targets skipped because a delivery to them failed this pass.
    pub unreachable: Vec<String>,
}

/// One pass over every target's hints. `me` is this node (a re-routed hint for which it is a
/// replica is merged locally).
pub async fn deliver_once<T: Replicas>(
    store: &Store,
    transport: &T,
    throttle: &mut Throttle,
    me: &NodeId,
    router: &Router,
) -> DeliveryStats {
    let mut stats = DeliveryStats::default();
    for target in store.hint_stats().into_keys() {
        let route = router(&target);
        let mut after: Option<(u32, Vec<u8>)> = None;
        'target: loop {
            let page = match store.hints_for(
                &target,
                after.as_ref().map(|(p, k)| (*p, k.as_slice())),
                PAGE,
            ) {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(%target, error = %e, "cannot read hints");
                    break;
                }
            };
            let Some(last) = page.last() else { break };
            after = Some((last.0, last.1.clone()));
            for (partition, key, clock) in page {
                throttle.acquire().await;
                let sent = match &route {
                    Route::Target => transport
                        .replicate(&target, &key, &clock, None)
                        .await
                        .map_err(|e| e.to_string()),
                    Route::Replicas { ring, n } => {
                        reroute(store, transport, me, ring, *n, partition, &key, &clock).await
                    }
                };
                match sent {
                    Ok(()) => {
                        match store.remove_hint_if_unchanged(&target, partition, &key, &clock) {
                            Ok(true) => {
                                stats.delivered += 1;
                                crate::metrics::METRICS.hints_delivered.inc();
                            }
                            Ok(false) => {}
                            Err(e) => {
                                tracing::warn!(%target, error = %e, "cannot remove a delivered hint")
                            }
                        }
                    }
                    Err(e) => {
                        tracing::debug!(%target, error = %e, "hint delivery failed; will retry");
                        stats.unreachable.push(target.0.clone());
                        break 'target;
                    }
                }
            }
        }
    }
    if stats.delivered > 0 {
        tracing::info!(delivered = stats.delivered, "hints handed off");
    }
    stats
}

/// Hands a hint whose target left to every current replica of its key.
#[allow(clippy::too_many_arguments)]
async fn reroute<T: Replicas>(
    store: &Store,
    transport: &T,
    me: &NodeId,
    ring: &Ring,
    n: usize,
    partition: PartitionId,
    key: &[u8],
    clock: &crate::version::Clock,
) -> Result<(), String> {
    for m in ring.preference_list(partition).iter().take(n) {
        if m.id == *me {
            store.merge(partition, key, clock).map_err(|e| e.to_string())?;
        } else {
            transport
                .replicate(&m.id, key, clock, None)
                .await
                .map_err(|e| format!("{}: {e}", m.id))?;
        }
    }
    Ok(())
}

/// Delivers hints every `interval`, paced by a throttle.
pub struct HintWorker<T> {
    store: Arc<Store>,
    net: Arc<T>,
    me: NodeId,
    router: Router,
    interval: Duration,
    throttle: Throttle,
}

impl<T> HintWorker<T> {
    pub fn new(
        store: Arc<Store>,
        net: Arc<T>,
        me: NodeId,
        router: Router,
        interval: Duration,
        per_second: u32,
    ) -> Self {
        HintWorker { store, net, me, router, interval, throttle: Throttle::new(per_second) }
    }
}

impl<T: Replicas> Worker for HintWorker<T> {
    fn name(&self) -> &'static str {
        "handoff"
    }

    fn wait(&self) -> Duration {
        self.interval
    }

    fn step(&mut self) -> BoxFuture<'_, WorkerState> {
        Box::pin(async move {
            let stats =
                deliver_once(&self.store, &*self.net, &mut self.throttle, &self.me, &self.router)
                    .await;
            if stats.delivered > 0 {
                WorkerState::Busy
            } else {
                WorkerState::Idle
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::sim::{Fault, SimNet};
    use crate::ring::{key_hash, partition_of_hash, Member};
    use crate::storage::MemoryEngine;
    use crate::version::{Clock, Value, VersionVector};

    const Q: u32 = 8;

    fn store() -> Arc<Store> {
        Arc::new(Store::open(Arc::new(MemoryEngine::default()), Q).unwrap())
    }

    fn id(s: &str) -> NodeId {
        NodeId(s.into())
    }

    #[tokio::test]
    async fn hints_for_a_node_that_left_go_to_the_current_replicas() {
        let (a, b, c) = (store(), store(), store());
        let net = SimNet::new(Q);
        for (name, store) in [("a", &a), ("b", &b), ("c", &c)] {
            net.add(&id(name), store.clone());
        }
        let members: Vec<Member> = ["a", "b", "c"]
            .iter()
            .map(|n| Member { id: id(n), zone: (*n).into(), weight: 1 })
            .collect();
        let ring = Arc::new(Ring::new(Q, members).unwrap());
        let mut keys = Vec::new();
        for i in 0..50 {
            let key = format!("k{i}");
            let clock =
                Clock::new().update(&VersionVector::default(), Value::Data(b"v".to_vec()), 7);
            let p = partition_of_hash(key_hash(key.as_bytes()), Q);
            a.store_hint(&id("x"), p, key.as_bytes(), &clock).unwrap();
            keys.push((p, key));
        }
        let mut throttle = Throttle::new(0);

        // While x is a member (down), its hints wait for it.
        let to_target: Router = Arc::new(|_: &NodeId| Route::Target);
        let s = deliver_once(&a, &net, &mut throttle, &id("a"), &to_target).await;
        assert_eq!((s.delivered, s.unreachable.clone()), (0, vec!["x".to_string()]));
        assert_eq!(a.hint_stats()[&id("x")].count, 50);

        // Once x has left, every hint lands on all three current replicas, then goes.
        let r = ring.clone();
        let left: Router = Arc::new(move |t: &NodeId| {
            if t.0 == "x" {
                Route::Replicas { ring: r.clone(), n: 3 }
            } else {
                Route::Target
            }
        });
        net.fault(&id("c"), Some(Fault::Down));
        let s = deliver_once(&a, &net, &mut throttle, &id("a"), &left).await;
        assert_eq!(s.delivered, 0, "c is down: nothing is deleted yet");
        net.fault(&id("c"), None);
        let s = deliver_once(&a, &net, &mut throttle, &id("a"), &left).await;
        assert_eq!(s.delivered, 50);
        assert!(a.hint_stats().get(&id("x")).is_none_or(|h| h.count == 0));
        for (p, key) in &keys {
            for node in [&a, &b, &c] {
                assert_eq!(node.get(*p, key.as_bytes()).unwrap().live_values().len(), 1, "{key}");
            }
        }
    }
}
