//! The membership driver: owns this node's [`View`], gossips it (push-pull, every interval,
//! with a random reachable peer and regularly with a seed so logical partitions heal), runs the
//! claimant's decisions and this node's own status transitions, persists the view, and
//! publishes the resulting [`Placement`] to the coordinator.
//!
//! Seeds are HOST:PORT strings; names are resolved again on every use, since pod addresses
//! change on Kubernetes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use rand::seq::SliceRandom;
use tokio::sync::watch;

use super::claimant;
use super::view::{NodeState, Status, View};
use crate::error::{Error, Result};
use crate::net::Gossip;
use crate::ring::{Member, NodeId, Placement};
use crate::storage::Store;
use crate::worker::{Worker, WorkerState};

const META_VIEW: &[u8] = b"view";
const META_GENERATION: &[u8] = b"generation";

/// Settings of the membership driver.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    pub me: Member,
    /// Where other nodes reach this one (peer port).
    pub address: String,
    /// Where clients reach this one (client port), published in the ring for them.
    pub client_address: String,
    /// Where its Prometheus metrics are served, published for `dynamoctl top`.
    pub metrics_address: String,
    pub seeds: Vec<String>,
    pub partitions: u32,
    pub n: usize,
    pub gossip_interval: Duration,
    /// How long a node gossips before it may create the first layout itself.
    pub bootstrap_after: Duration,
}

/// See the module docs.
pub struct Membership {
    config: MembershipConfig,
    view: Mutex<View>,
    store: Arc<Store>,
    /// Gossip and failure detection (object safe: membership is not generic over the network).
    net: Arc<dyn Gossip>,
    placement: watch::Sender<Arc<Placement>>,
    started: Instant,
    /// Started on a data directory that had never run a node: a new incarnation, whatever
    /// records of its name the cluster keeps.
    fresh: bool,
}

fn lock(view: &Mutex<View>) -> std::sync::MutexGuard<'_, View> {
    // A poisoned view is still a valid view: every mutation keeps it consistent.
    view.lock().unwrap_or_else(|e| e.into_inner())
}

impl Membership {
    /// Loads the persisted view (if any), starts a new generation for this node, and publishes
    /// the placement.
    pub fn start(
        config: MembershipConfig,
        store: Arc<Store>,
        net: Arc<dyn Gossip>,
    ) -> Result<Arc<Membership>> {
        let mut view = match store.meta_get(META_VIEW)? {
            Some(bytes) => serde_json::from_slice::<View>(&bytes).map_err(|e| {
                Error::Storage(format!("the persisted membership view is corrupt: {e}"))
            })?,
            None => View::new(config.partitions),
        };
        if view.layout.partitions != config.partitions {
            return Err(Error::Storage(format!(
                "the persisted ring has {} partitions but the node is configured with {}; the \
                 partition count is fixed when a cluster is created",
                view.layout.partitions, config.partitions
            )));
        }
        let stored = store.meta_get(META_GENERATION)?;
        let fresh = stored.is_none();
        let generation =
            stored.and_then(|b| b.as_slice().try_into().ok().map(u64::from_be_bytes)).unwrap_or(0)
                + 1;
        store.meta_put(META_GENERATION, &generation.to_be_bytes())?;
        let me = &config.me;
        // A node that had left and is started again is being added back: it joins anew.
        let status = match view.nodes.get(&me.id).map(|n| n.status) {
            Some(s @ (Status::Normal | Status::Leaving)) => s,
            _ => Status::Joining,
        };
        view.nodes.insert(
            me.id.clone(),
            NodeState {
                id: me.id.clone(),
                address: config.address.clone(),
                client_address: config.client_address.clone(),
                metrics_address: config.metrics_address.clone(),
                zone: me.zone.clone(),
                weight: me.weight,
                status,
                generation,
                version: 0,
                heartbeat: 0,
                synced_epoch: view.nodes.get(&me.id).map_or(0, |n| n.synced_epoch),
                removed_by: None,
            },
        );
        let (placement, _) = watch::channel(Arc::new(Placement::default()));
        let m = Arc::new(Membership {
            config,
            view: Mutex::new(view),
            store,
            net,
            placement,
            started: Instant::now(),
            fresh,
        });
        m.after_change(true)?;
        Ok(m)
    }

    pub fn me(&self) -> &NodeId {
        &self.config.me.id
    }

    /// Receives placement updates.
    pub fn placement(&self) -> watch::Receiver<Arc<Placement>> {
        self.placement.subscribe()
    }

    /// A copy of the current view.
    pub fn view(&self) -> View {
        lock(&self.view).clone()
    }

    /// This node's status.
    pub fn status(&self) -> Status {
        lock(&self.view).status(self.me()).unwrap_or(Status::Joining)
    }

    /// Another node's status, if it is known.
    pub fn status_of(&self, id: &NodeId) -> Option<Status> {
        lock(&self.view).status(id)
    }

    /// Merges a view received from a peer; returns ours (push-pull gossip). A view that does
    /// not validate (see [`View::validate`]) is refused whole: nothing of it is merged or saved.
    pub fn receive(&self, theirs: &View) -> Result<View> {
        if let Err(e) = theirs.validate(self.config.partitions) {
            tracing::warn!(error = %e, "refused a membership view");
            return Err(Error::InvalidArgument(format!("membership view refused: {e}")));
        }
        let changed = {
            let mut view = lock(&self.view);
            let before = view.nodes.get(self.me()).cloned();
            let changed = view.merge(theirs);
            // Only this node writes its entry, so a copy of it that outranks ours was written
            // by an earlier incarnation whose data this one does not have (wiped disk, new
            // volume, a node added back under the name of one that left, whose records can
            // carry the same generation and a higher version): take the entry back with a
            // newer generation, keeping what this process knows of itself.
            if let (Some(mine), Some(seen)) = (before, view.nodes.get(self.me())) {
                if seen.rank() <= mine.rank() {
                    // Ours is the newest copy: nothing to do.
                } else if seen.removed_by.is_some()
                    && seen.generation == mine.generation
                    && !(self.fresh && mine.status == Status::Joining)
                {
                    // Another node removed this one while it did not answer (a forced
                    // decommission): accept it as our own entry, and leave. Not when this
                    // process started on an empty data directory and has not joined yet: the
                    // removal was of an earlier incarnation under the same name (a lost volume
                    // replaced), whose records start at the same generation.
                    tracing::warn!(
                        by = ?seen.removed_by,
                        status = seen.status.as_str(),
                        "removed from the cluster by another node while unreachable; leaving"
                    );
                } else {
                    let generation = seen.generation + 1;
                    tracing::info!(
                        generation,
                        "a newer record of this node exists elsewhere; taking it over"
                    );
                    self.store.meta_put(META_GENERATION, &generation.to_be_bytes())?;
                    view.nodes.insert(
                        self.me().clone(),
                        NodeState { generation, version: 0, heartbeat: 0, ..mine },
                    );
                }
            }
            changed
        };
        if changed {
            self.after_change(false)?;
        }
        Ok(self.view())
    }

    /// Changes this node's own entry (status or synced epoch) and gossips it from now on.
    pub fn update_self(&self, f: impl FnOnce(&mut NodeState)) -> Result<()> {
        {
            let mut view = lock(&self.view);
            let me = self.config.me.id.clone();
            if let Some(entry) = view.nodes.get_mut(&me) {
                f(entry);
                entry.version += 1;
            }
        }
        self.after_change(false)
    }

    /// Starts decommissioning this node (idempotent).
    pub fn decommission(&self) -> Result<Status> {
        let member = lock(&self.view).layout.members.iter().any(|m| m.id == *self.me());
        match self.status() {
            Status::Leaving | Status::Left => {}
            // Not in the ring yet: nothing to move away, so it leaves at once.
            Status::Joining if !member => self.update_self(|s| s.status = Status::Left)?,
            Status::Joining | Status::Normal => self.update_self(|s| s.status = Status::Leaving)?,
        }
        Ok(self.status())
    }

    /// Removes another node that does not answer (a forced decommission): writes its entry on
    /// its behalf as leaving (left if it owns nothing), marked [`NodeState::removed_by`]. Its
    /// partitions then move to the other nodes from the surviving replicas; writes that only
    /// the removed node held are lost, which W >= 2 rules out for one removed node. Returns the
    /// status it now has.
    pub fn force_remove(&self, id: &NodeId) -> Result<Status> {
        if id == self.me() {
            return self.decommission();
        }
        let status = {
            let mut view = lock(&self.view);
            let layout = &view.layout;
            let member = layout.members.iter().any(|m| m.id == *id)
                || layout.next.as_ref().is_some_and(|t| t.members.iter().any(|m| m.id == *id));
            let me = self.me().clone();
            let Some(entry) = view.nodes.get_mut(id) else {
                return Err(Error::InvalidArgument(format!(
                    "there is no node '{id}' in this cluster: `dynamoctl status` lists the nodes"
                )));
            };
            if matches!(entry.status, Status::Joining | Status::Normal) {
                entry.status = if member { Status::Leaving } else { Status::Left };
                entry.version += 1;
                entry.removed_by = Some(me);
                tracing::warn!(node = %id, status = entry.status.as_str(), "forced removal of a node that does not answer");
            }
            entry.status
        };
        self.after_change(false)?;
        Ok(status)
    }

    /// Persists the view, refreshes peer addresses and republishes the placement.
    fn after_change(&self, force: bool) -> Result<()> {
        let view = self.view();
        let bytes = serde_json::to_vec(&view).map_err(|e| Error::Internal(e.to_string()))?;
        self.store.meta_put(META_VIEW, &bytes)?;
        let addresses: Vec<(NodeId, String)> = view
            .nodes
            .values()
            .filter(|n| n.id != *self.me())
            .map(|n| (n.id.clone(), n.address.clone()))
            .collect();
        self.net.set_addresses(&addresses);
        let old = self.placement.borrow().clone();
        if force || old.epoch != view.layout.epoch {
            let current =
                view.layout.ring().map_err(|e| Error::Internal(format!("invalid layout: {e}")))?;
            let next = view
                .layout
                .next_ring()
                .map_err(|e| Error::Internal(format!("invalid layout: {e}")))?;
            if view.layout.epoch != old.epoch {
                tracing::info!(
                    epoch = view.layout.epoch,
                    members = view.layout.members.len(),
                    changing = next.is_some(),
                    "ring layout changed"
                );
            }
            self.placement.send_replace(Arc::new(Placement {
                epoch: view.layout.epoch,
                current,
                next,
            }));
        }
        Ok(())
    }

    /// One gossip round's local work: heartbeat, own transitions, claimant decisions.
    fn tick(&self) -> Result<()> {
        let me = self.me().clone();
        let may_bootstrap = self.started.elapsed() >= self.config.bootstrap_after;
        {
            let mut view = lock(&self.view);
            if let Some(entry) = view.nodes.get_mut(&me) {
                entry.heartbeat += 1;
            }
            if let Some(status) = claimant::own_transition(&view, &me) {
                tracing::info!(from = ?view.status(&me), to = ?status, "membership status changes");
                if let Some(entry) = view.nodes.get_mut(&me) {
                    entry.status = status;
                    entry.version += 1;
                }
            }
            let is_up = |id: &NodeId| self.net.is_up(id);
            if claimant::claimant(&view, &me, &is_up).as_ref() == Some(&me) {
                for id in claimant::removed_nodes_out(&view, &is_up) {
                    tracing::info!(node = %id, "a removed node is out of the ring: it has left");
                    if let Some(entry) = view.nodes.get_mut(&id) {
                        entry.status = Status::Left;
                        entry.version += 1;
                    }
                }
            }
            match claimant::decide(&view, &me, self.config.n, may_bootstrap, &is_up) {
                Ok(Some(layout)) => view.layout = layout,
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot compute a layout"),
            }
        }
        self.after_change(false)
    }

    /// Picks whom to gossip with: usually a random reachable member, every third round (or
    /// when no member is known) a seed. Returns its address and, when known, its id.
    fn pick(&self, round: u64) -> Option<(Option<NodeId>, String)> {
        let view = self.view();
        let mut candidates: Vec<&NodeState> = view
            .nodes
            .values()
            .filter(|n| n.id != *self.me() && n.status != Status::Left)
            .filter(|n| self.net.is_up(&n.id))
            .collect();
        let mut rng = rand::thread_rng();
        candidates.shuffle(&mut rng);
        let seeds: Vec<&String> =
            self.config.seeds.iter().filter(|s| **s != self.config.address).collect();
        if (round.is_multiple_of(3) || candidates.is_empty()) && !seeds.is_empty() {
            let seed = seeds.choose(&mut rng)?.to_string();
            let id = view.nodes.values().find(|n| n.address == seed).map(|n| n.id.clone());
            return Some((id.filter(|id| id != self.me()), seed));
        }
        candidates.first().map(|n| (Some(n.id.clone()), n.address.clone()))
    }

    /// One gossip round: local work, then a push-pull exchange with one peer.
    async fn round(&self, round: u64) -> WorkerState {
        if let Err(e) = self.tick() {
            tracing::warn!(error = %e, "membership tick failed");
        }
        let Some((id, address)) = self.pick(round) else { return WorkerState::Idle };
        let view = match serde_json::to_vec(&self.view()) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode the membership view");
                return WorkerState::Idle;
            }
        };
        let timeout = self.config.gossip_interval.max(Duration::from_millis(500));
        let reply = self.net.gossip(id.as_ref(), &address, view, timeout).await;
        let theirs = reply.and_then(|bytes| {
            serde_json::from_slice::<View>(&bytes).map_err(|e| crate::net::PeerError::Remote {
                code: 13,
                message: format!("sent an undecodable view: {e}"),
            })
        });
        match theirs {
            Ok(theirs) => {
                // Any answer proves the peer is up.
                if let Some(n) = theirs.nodes.values().find(|n| n.address == address) {
                    self.net.heard_from(&n.id);
                }
                if let Err(e) = self.receive(&theirs) {
                    tracing::warn!(error = %e, "cannot apply gossip");
                }
                WorkerState::Busy
            }
            Err(e) => {
                tracing::debug!(%address, error = %e, "gossip failed");
                WorkerState::Idle
            }
        }
    }
}

/// Gossips every interval.
pub struct GossipWorker {
    membership: Arc<Membership>,
    round: u64,
}

impl GossipWorker {
    pub fn new(membership: Arc<Membership>) -> GossipWorker {
        GossipWorker { membership, round: 0 }
    }
}

impl Worker for GossipWorker {
    fn name(&self) -> &'static str {
        "gossip"
    }

    fn wait(&self) -> Duration {
        self.membership.config.gossip_interval
    }

    fn step(&mut self) -> BoxFuture<'_, WorkerState> {
        self.round += 1;
        let round = self.round;
        Box::pin(async move { self.membership.round(round).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::sim::{remote, Fault, SimNet};
    use crate::net::{Liveness, PeerError};
    use crate::storage::MemoryEngine;

    fn start(store: Arc<Store>) -> Arc<Membership> {
        let config = MembershipConfig {
            me: Member { id: NodeId("a".into()), zone: "z".into(), weight: 1 },
            address: "127.0.0.1:1".into(),
            client_address: String::new(),
            metrics_address: String::new(),
            seeds: vec![],
            partitions: 8,
            n: 1,
            gossip_interval: Duration::from_millis(100),
            bootstrap_after: Duration::ZERO,
        };
        Membership::start(config, store, Arc::new(SimNet::new(8))).unwrap()
    }

    #[test]
    fn generations_grow_across_restarts_and_a_lone_node_bootstraps() {
        let store = Arc::new(Store::open(Arc::new(MemoryEngine::default()), 8).unwrap());
        let m = start(store.clone());
        assert_eq!(m.status(), Status::Joining);
        m.tick().unwrap();
        m.tick().unwrap();
        assert_eq!(m.status(), Status::Normal, "alone, it creates its ring and joins it");
        assert!(m.placement().borrow().current.is_some());
        let g1 = m.view().nodes[&NodeId("a".into())].generation;
        drop(m);
        let again = start(store);
        assert_eq!(again.view().nodes[&NodeId("a".into())].generation, g1 + 1);
        assert_eq!(again.status(), Status::Normal, "the persisted view is kept");
    }

    #[test]
    fn a_wiped_node_takes_its_entry_back_from_an_older_record() {
        let m = start(Arc::new(Store::open(Arc::new(MemoryEngine::default()), 8).unwrap()));
        let mut theirs = m.view();
        let entry = theirs.nodes.get_mut(&NodeId("a".into())).unwrap();
        entry.generation = 5;
        entry.status = Status::Left;
        let merged = m.receive(&theirs).unwrap();
        let mine = &merged.nodes[&NodeId("a".into())];
        assert_eq!(mine.generation, 6, "newer than any record elsewhere");
        assert_eq!(mine.status, Status::Joining, "this process's own state, not the old record");
    }

    #[test]
    fn a_node_added_back_on_a_new_volume_outranks_the_record_of_its_leaving() {
        // The earlier incarnation on its own new volume also had generation 1; it went through
        // joining, normal, leaving and left, so its record has the higher version.
        let m = start(Arc::new(Store::open(Arc::new(MemoryEngine::default()), 8).unwrap()));
        let mut theirs = m.view();
        let entry = theirs.nodes.get_mut(&NodeId("a".into())).unwrap();
        let generation = entry.generation;
        entry.version += 7;
        entry.status = Status::Left;
        let merged = m.receive(&theirs).unwrap();
        let mine = &merged.nodes[&NodeId("a".into())];
        assert_eq!(mine.generation, generation + 1);
        assert_eq!(mine.status, Status::Joining);
        let mut elsewhere = theirs.clone();
        elsewhere.merge(&merged);
        assert_eq!(
            elsewhere.nodes[&NodeId("a".into())].status,
            Status::Joining,
            "gossip spreads it"
        );
    }

    #[test]
    fn a_forced_removal_is_accepted_by_the_same_incarnation_and_undone_by_a_restart() {
        // A new node on an empty volume, joining under the name of one removed by force, whose
        // records carry the same generation: it is not the node removed, and takes its name
        // back to join anew.
        let fresh = start(Arc::new(Store::open(Arc::new(MemoryEngine::default()), 8).unwrap()));
        let mut old = fresh.view();
        let entry = old.nodes.get_mut(&NodeId("a".into())).unwrap();
        (entry.status, entry.version) = (Status::Left, entry.version + 5);
        entry.removed_by = Some(NodeId("b".into()));
        let generation = entry.generation;
        let merged = fresh.receive(&old).unwrap();
        let mine = &merged.nodes[&NodeId("a".into())];
        assert_eq!((mine.status, mine.generation), (Status::Joining, generation + 1));

        // Node b removes a (which it cannot reach) on its behalf.
        let a = start(Arc::new(Store::open(Arc::new(MemoryEngine::default()), 8).unwrap()));
        a.update_self(|me| me.status = Status::Normal).unwrap();
        let mut theirs = a.view();
        let entry = theirs.nodes.get_mut(&NodeId("a".into())).unwrap();
        entry.status = Status::Leaving;
        entry.version += 1;
        entry.removed_by = Some(NodeId("b".into()));
        let generation = entry.generation;
        // a was alive after all, in the same generation: it accepts and leaves.
        let merged = a.receive(&theirs).unwrap();
        let mine = &merged.nodes[&NodeId("a".into())];
        assert_eq!((mine.status, mine.generation), (Status::Leaving, generation));
        assert_eq!(a.status(), Status::Leaving);

        // A restarted a (newer generation) is not bound by it.
        let b = start(Arc::new(Store::open(Arc::new(MemoryEngine::default()), 8).unwrap()));
        let mut old = b.view();
        let entry = old.nodes.get_mut(&NodeId("a".into())).unwrap();
        entry.generation = 0;
        entry.version = 9;
        entry.status = Status::Left;
        entry.removed_by = Some(NodeId("b".into()));
        let merged = b.receive(&old).unwrap();
        assert_ne!(merged.nodes[&NodeId("a".into())].status, Status::Left);
    }

    #[tokio::test]
    async fn force_remove_marks_another_node_leaving_on_its_behalf() {
        let m = start(Arc::new(Store::open(Arc::new(MemoryEngine::default()), 8).unwrap()));
        let mut theirs = m.view();
        let mut other = theirs.nodes[&NodeId("a".into())].clone();
        other.id = NodeId("z".into());
        other.status = Status::Normal;
        theirs.nodes.insert(other.id.clone(), other);
        m.receive(&theirs).unwrap();
        // z is not in the layout: it owns nothing, so it is left at once.
        assert_eq!(m.force_remove(&NodeId("z".into())).unwrap(), Status::Left);
        let z = &m.view().nodes[&NodeId("z".into())];
        assert_eq!(z.removed_by, Some(NodeId("a".into())));
        let err = m.force_remove(&NodeId("nope".into())).unwrap_err().to_string();
        assert!(err.contains("no node 'nope'"), "{err}");
    }

    /// A member of `net` named `name` at address "`name`:1", answering gossip.
    fn member(net: &Arc<SimNet>, name: &str, seeds: Vec<String>) -> Arc<Membership> {
        let id = NodeId(name.into());
        let store = Arc::new(Store::open(Arc::new(MemoryEngine::default()), 8).unwrap());
        net.add(&id, store.clone());
        let address = format!("{name}:1");
        let config = MembershipConfig {
            me: Member { id: id.clone(), zone: "z".into(), weight: 1 },
            address: address.clone(),
            client_address: String::new(),
            metrics_address: String::new(),
            seeds,
            partitions: 8,
            n: 1,
            gossip_interval: Duration::from_millis(100),
            bootstrap_after: Duration::ZERO,
        };
        let m = Membership::start(config, store, net.clone()).unwrap();
        // Weak: the network must not keep the membership (which holds it) alive.
        let weak = Arc::downgrade(&m);
        let handler = move |bytes: Vec<u8>| {
            let m = weak.upgrade().ok_or(PeerError::Unreachable("stopped".into()))?;
            let theirs: View = serde_json::from_slice(&bytes).unwrap();
            Ok(serde_json::to_vec(&m.receive(&theirs).map_err(remote)?).unwrap())
        };
        net.on_gossip(&id, &address, Arc::new(handler));
        m
    }

    #[tokio::test]
    async fn a_node_learns_the_cluster_from_its_seed_and_a_round_with_an_unreachable_peer_is_idle()
    {
        let net = Arc::new(SimNet::new(8));
        let a = member(&net, "a", vec![]);
        let b = member(&net, "b", vec!["a:1".into()]);
        let (ida, idb) = (NodeId("a".into()), NodeId("b".into()));
        assert!(!a.view().nodes.contains_key(&idb));
        // Knowing no member yet, b gossips with its seed: push-pull, both learn.
        assert_eq!(b.round(1).await, WorkerState::Busy);
        assert!(a.view().nodes.contains_key(&idb), "a learnt of b");
        assert!(b.view().nodes.contains_key(&ida), "b learnt of a");
        assert_eq!(net.calls(), vec![("gossip", ida.clone())]);
        // A peer that does not answer: the round fails (idle); gossip alone does not mark it
        // down (as with the gRPC peers), the failure detector's calls do.
        net.fault(&ida, Some(Fault::Down));
        assert_eq!(b.round(2).await, WorkerState::Idle);
        assert!(net.is_up(&ida), "gossip does not feed the failure detector");
        let only = Some((Some(ida.clone()), "a:1".to_string()));
        assert_eq!(b.pick(4), only, "the only member, which is also the seed");
    }
}
