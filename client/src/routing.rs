//! Where a partition-aware client sends a request (the Dynamo paper, section 6.4), pure: from
//! the ring it last fetched, a key's N replicas in preference order, then the other members,
//! then the seed endpoints; nodes that recently refused connections go last. No I/O and no
//! clock: the caller says which nodes are down ([`Health`] keeps that, with the time passed in).
//!
//! Why the first replica: a put must be coordinated by one of the key's N replicas in the
//! node's committed ring (any other node forwards it, one extra hop), and a get is best
//! coordinated by a replica too, because its own copy then counts towards R. The ring a node
//! reports (`Client.Ring`) is its committed ring, so a current replica is always a node the
//! coordinator accepts, also while a layout change is under way. With a stale ring the target
//! may no longer be a replica; the node then forwards, answers with its newer epoch, and the
//! client fetches the ring again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use dynamo_api::ring::{NodeId, Ring, RingError};

use crate::types::RingLayout;

/// How long a node that refused a connection is tried only after every other candidate.
pub(crate) const DOWN_FOR: Duration = Duration::from_secs(2);

/// The ring a client routes with, as one node reported it.
#[derive(Debug, Clone)]
struct Routes {
    /// The committed ring, rebuilt with the node's own code.
    ring: Ring,
    /// Replication factor: the first `n` of a preference list are the key's replicas.
    n: usize,
    /// The layout epoch of the node that reported the ring.
    epoch: u64,
    /// Member id -> HOST:PORT; members without a known address are never routed to.
    addresses: HashMap<NodeId, String>,
}

/// Chooses the nodes a request for a key is sent to, in order. See the module docs.
#[derive(Debug, Clone)]
pub struct Router {
    /// The endpoints the client was given: the fallback when there is no ring, or when every
    /// node of the ring is unreachable.
    seeds: Vec<String>,
    /// The ring, once one was fetched.
    routes: Option<Routes>,
}

impl Router {
    /// A router without a ring: every request goes to the seeds, in order.
    pub fn new(seeds: Vec<String>) -> Router {
        Router { seeds, routes: None }
    }

    /// The seed endpoints, in the order given.
    pub fn seeds(&self) -> &[String] {
        &self.seeds
    }

    /// The epoch of the ring routed with; `None` before a ring was installed.
    pub fn epoch(&self) -> Option<u64> {
        self.routes.as_ref().map(|r| r.epoch)
    }

    /// Routes with `layout` from now on, if it is newer than the ring held (a higher epoch) or
    /// there is none; returns whether it was installed. A layout that does not make a valid
    /// ring is refused and changes nothing.
    pub fn install(&mut self, layout: &RingLayout) -> Result<bool, RingError> {
        if self.epoch().is_some_and(|held| held >= layout.epoch) {
            return Ok(false);
        }
        let ring = layout.to_ring()?;
        let addresses = layout
            .members
            .iter()
            .filter(|m| !m.address.is_empty())
            .map(|m| (NodeId(m.id.clone()), m.address.clone()))
            .collect();
        self.routes =
            Some(Routes { ring, n: layout.n.max(1) as usize, epoch: layout.epoch, addresses });
        Ok(true)
    }

    /// The key's replicas in the ring held (the first N of its preference list); empty
    /// without a ring.
    pub fn replicas(&self, key: &[u8]) -> Vec<NodeId> {
        let Some(routes) = &self.routes else { return Vec::new() };
        routes.ring.replicas(routes.ring.partition_of(key), routes.n)
    }

    /// Every endpoint a request for `key` may go to, each once, best first: the key's replicas
    /// in preference order, the rest of its preference list (they forward a put to a replica),
    /// then the seeds; endpoints for which `is_down` holds keep that order but come after all
    /// the others. Without a ring: the seeds.
    pub fn route(&self, key: &[u8], is_down: impl Fn(&str) -> bool) -> Vec<String> {
        let mut order: Vec<&str> = Vec::new();
        if let Some(routes) = &self.routes {
            let ring = &routes.ring;
            for member in ring.preference_list(ring.partition_of(key)) {
                if let Some(address) = routes.addresses.get(&member.id) {
                    order.push(address);
                }
            }
        }
        order.extend(self.seeds.iter().map(String::as_str));
        let mut seen = std::collections::HashSet::new();
        order.retain(|a| seen.insert(*a));
        let (up, down): (Vec<&str>, Vec<&str>) = order.into_iter().partition(|a| !is_down(a));
        up.into_iter().chain(down).map(str::to_string).collect()
    }

    /// The endpoints one request tries, in order: the first `budget` of [`Router::route`], then
    /// the seeds not among them, so a client whose ring points at nodes it cannot reach still
    /// reaches the nodes it was configured with.
    pub fn plan(&self, key: &[u8], is_down: impl Fn(&str) -> bool, budget: usize) -> Vec<String> {
        let mut plan: Vec<String> = self.route(key, is_down).into_iter().take(budget).collect();
        for seed in &self.seeds {
            if !plan.contains(seed) {
                plan.push(seed.clone());
            }
        }
        plan
    }

    /// Every address the client may talk to: the ring's members, then the seeds.
    pub fn addresses(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        if let Some(routes) = &self.routes {
            for member in routes.ring.members() {
                if let Some(address) = routes.addresses.get(&member.id) {
                    out.push(address.clone());
                }
            }
        }
        for seed in &self.seeds {
            if !out.contains(seed) {
                out.push(seed.clone());
            }
        }
        out
    }
}

/// Which nodes recently refused a connection, so that requests try them last for
/// [`DOWN_FOR`]. Time is passed in, so it is tested without sleeping.
#[derive(Debug, Default)]
pub(crate) struct Health {
    /// Address -> until when it counts as down.
    down_until: HashMap<String, Instant>,
}

impl Health {
    /// Nothing reached `address` at `now`.
    pub(crate) fn mark_down(&mut self, address: &str, now: Instant) {
        self.down_until.insert(address.to_string(), now + DOWN_FOR);
    }

    /// `address` answered.
    pub(crate) fn mark_up(&mut self, address: &str) {
        self.down_until.remove(address);
    }

    /// Whether `address` counts as down at `now`.
    pub(crate) fn is_down(&self, address: &str, now: Instant) -> bool {
        self.down_until.get(address).is_some_and(|until| *until > now)
    }

    /// Forgets addresses that are no longer down or no longer candidates.
    pub(crate) fn retain(&mut self, now: Instant, keep: impl Fn(&str) -> bool) {
        self.down_until.retain(|a, until| *until > now && keep(a));
    }
}

#[cfg(test)]
mod tests {
    use dynamo_api::ring::{Member, Placement};
    use proptest::prelude::*;

    use super::*;
    use crate::types::RingMember;

    fn member(i: usize, zones: usize) -> Member {
        Member { id: NodeId(format!("n{i:02}")), zone: format!("z{}", i % zones), weight: 1 }
    }

    fn address_of(id: &NodeId) -> String {
        format!("addr-{}", id.0)
    }

    /// The ring as `Client.Ring` reports it (members, owner indices, epoch), every member with
    /// an address.
    fn layout(ring: &Ring, n: u32, epoch: u64) -> RingLayout {
        let members: Vec<RingMember> = ring
            .members()
            .iter()
            .map(|m| RingMember {
                id: m.id.0.clone(),
                address: address_of(&m.id),
                peer_address: format!("peer-{}", m.id.0),
                zone: m.zone.clone(),
                weight: m.weight,
            })
            .collect();
        let owners = ring.owner_indices();
        RingLayout { partitions: ring.partitions(), n, members, owners, epoch }
    }

    fn router_for(ring: &Ring, n: u32, epoch: u64) -> Router {
        let mut router = Router::new(vec!["seed:1".into()]);
        assert!(router.install(&layout(ring, n, epoch)).unwrap());
        router
    }

    /// The node's replicas of `key` (what its coordinator checks before coordinating a put).
    fn node_replicas(ring: &Ring, n: usize, key: &[u8]) -> Vec<String> {
        ring.preference_list(ring.partition_of(key))
            .into_iter()
            .take(n)
            .map(|m| address_of(&m.id))
            .collect()
    }

    #[test]
    fn without_a_ring_requests_go_to_the_seeds_in_order() {
        let router = Router::new(vec!["a:1".into(), "b:1".into()]);
        assert_eq!(router.epoch(), None);
        assert_eq!(router.route(b"k", |_| false), ["a:1", "b:1"]);
        assert_eq!(router.route(b"k", |a| a == "a:1"), ["b:1", "a:1"]);
        assert!(router.replicas(b"k").is_empty());
    }

    #[test]
    fn a_put_goes_to_the_first_replica_then_the_others_then_the_seeds() {
        let ring = Ring::new(64, (0..5).map(|i| member(i, 3)).collect()).unwrap();
        let router = router_for(&ring, 3, 7);
        assert_eq!(router.epoch(), Some(7));
        let route = router.route(b"cart:42", |_| false);
        let replicas = node_replicas(&ring, 3, b"cart:42");
        assert_eq!(route[..3], replicas[..]);
        assert_eq!(route.len(), 6, "5 members and the seed: {route:?}");
        assert_eq!(route.last().unwrap(), "seed:1");
        let ids: Vec<String> = router.replicas(b"cart:42").iter().map(address_of).collect();
        assert_eq!(ids, replicas);
    }

    #[test]
    fn replicas_marked_down_are_tried_last() {
        let ring = Ring::new(64, (0..5).map(|i| member(i, 3)).collect()).unwrap();
        let router = router_for(&ring, 3, 1);
        let replicas = node_replicas(&ring, 3, b"k");
        let down = replicas[0].clone();
        let route = router.route(b"k", |a| a == down);
        assert_eq!(route[..2], replicas[1..]);
        assert_eq!(route.last().unwrap(), &down);
    }

    #[test]
    fn a_plan_tries_the_budget_then_falls_back_to_the_seeds() {
        let ring = Ring::new(64, (0..5).map(|i| member(i, 3)).collect()).unwrap();
        let router = router_for(&ring, 3, 1);
        let plan = router.plan(b"k", |_| false, 2);
        assert_eq!(plan[..2], node_replicas(&ring, 3, b"k")[..2]);
        assert_eq!(plan[2..], ["seed:1"]);
        // A seed that is also a member is not tried twice.
        let mut router = Router::new(vec![address_of(&NodeId("n00".into()))]);
        router.install(&layout(&ring, 3, 1)).unwrap();
        let plan = router.plan(b"k", |_| false, 10);
        assert_eq!(plan.len(), 5, "{plan:?}");
    }

    #[test]
    fn only_a_newer_ring_is_installed() {
        let ring = Ring::new(64, (0..3).map(|i| member(i, 3)).collect()).unwrap();
        let grown = ring.rebalance((0..4).map(|i| member(i, 3)).collect()).unwrap();
        let mut router = router_for(&ring, 3, 5);
        assert!(!router.install(&layout(&grown, 3, 5)).unwrap());
        assert!(!router.install(&layout(&grown, 3, 4)).unwrap());
        assert_eq!(router.addresses().len(), 4, "3 members and the seed");
        assert!(router.install(&layout(&grown, 3, 6)).unwrap());
        assert_eq!(router.epoch(), Some(6));
        assert_eq!(router.addresses().len(), 5, "4 members and the seed");
    }

    #[test]
    fn an_invalid_layout_is_refused_and_the_ring_kept() {
        let ring = Ring::new(64, (0..3).map(|i| member(i, 3)).collect()).unwrap();
        let mut router = router_for(&ring, 3, 1);
        let mut bad = layout(&ring, 3, 2);
        bad.owners[0] = 9;
        assert!(router.install(&bad).is_err());
        assert_eq!(router.epoch(), Some(1));
    }

    #[test]
    fn members_without_an_address_are_not_routed_to() {
        let ring = Ring::new(64, (0..3).map(|i| member(i, 3)).collect()).unwrap();
        let mut l = layout(&ring, 3, 1);
        let first = node_replicas(&ring, 3, b"k")[0].clone();
        l.members
            .iter_mut()
            .filter(|m| address_of(&NodeId(m.id.clone())) == first)
            .for_each(|m| m.address.clear());
        let mut router = Router::new(vec!["seed:1".into()]);
        router.install(&l).unwrap();
        let route = router.route(b"k", |_| false);
        assert!(!route.contains(&first), "{route:?}");
        assert_eq!(route.len(), 3);
    }

    #[test]
    fn health_keeps_a_node_down_for_a_while() {
        let mut health = Health::default();
        let now = Instant::now();
        health.mark_down("a:1", now);
        assert!(health.is_down("a:1", now + DOWN_FOR / 2));
        assert!(!health.is_down("a:1", now + DOWN_FOR));
        assert!(!health.is_down("b:1", now));
        health.mark_up("a:1");
        assert!(!health.is_down("a:1", now));
        health.mark_down("a:1", now);
        health.retain(now + DOWN_FOR, |_| true);
        assert!(health.down_until.is_empty());
    }

    /// A random cluster: 1..=12 members over 1..=4 zones with weights 1..=3, Q in 16..=256.
    fn cluster() -> impl Strategy<Value = (u32, Vec<Member>)> {
        (4u32..=8, 1usize..=12, 1usize..=4, proptest::collection::vec(1u32..=3, 12)).prop_map(
            |(bits, s, zones, weights)| {
                let members =
                    (0..s).map(|i| Member { weight: weights[i], ..member(i, zones) }).collect();
                (1 << bits, members)
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The client computes each key's replicas exactly as the node does, from the ring as
        /// it comes over the wire, and sends a put to the first of them.
        #[test]
        fn the_put_target_is_the_nodes_first_replica(
            (partitions, members) in cluster(),
            n in 1u32..=4,
            keys in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..24), 1..40),
        ) {
            let ring = Ring::new(partitions, members).unwrap();
            let router = router_for(&ring, n, 3);
            for key in &keys {
                let replicas = node_replicas(&ring, n as usize, key);
                let route = router.route(key, |_| false);
                prop_assert_eq!(&route[..replicas.len()], &replicas[..]);
                prop_assert_eq!(router.replicas(key).iter().map(address_of).collect::<Vec<_>>(), replicas);
            }
        }

        /// During a layout change the node reports its committed ring; the client's target is
        /// then a replica in that ring, which the coordinator accepts, whatever the next ring.
        #[test]
        fn during_a_layout_change_the_target_may_coordinate(
            (partitions, members) in cluster(),
            joining in 0usize..=3,
            leaving in 0usize..=3,
            n in 1u32..=3,
            keys in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..24), 1..40),
        ) {
            let current = Ring::new(partitions, members.clone()).unwrap();
            let mut next_members: Vec<Member> = members.iter().skip(leaving).cloned().collect();
            next_members.extend((100..100 + joining).map(|i| member(i, 2)));
            prop_assume!(!next_members.is_empty() && next_members.len() <= partitions as usize);
            let next = current.rebalance(next_members).unwrap();
            let placement = Placement { epoch: 9, current: Some(current.clone()), next: Some(next) };
            let router = router_for(placement.ring().unwrap(), n, placement.epoch);
            for key in &keys {
                let target = router.route(key, |_| false)[0].clone();
                let partition = current.partition_of(key);
                // The coordinator's test: among the first N of its committed ring.
                prop_assert!(node_replicas(&current, n as usize, key).contains(&target));
                let may_write: Vec<String> =
                    placement.replicas(partition, n as usize).iter().map(address_of).collect();
                prop_assert!(may_write.contains(&target));
            }
        }

        /// With a replica down, the target is the next replica up (so a put still needs no hop).
        #[test]
        fn a_down_replica_is_skipped_for_the_next_one(
            (partitions, members) in cluster(),
            key in proptest::collection::vec(any::<u8>(), 0..24),
        ) {
            prop_assume!(members.len() >= 3);
            let ring = Ring::new(partitions, members).unwrap();
            let router = router_for(&ring, 3, 1);
            let replicas = node_replicas(&ring, 3, &key);
            let route = router.route(&key, |a| a == replicas[0]);
            prop_assert_eq!(&route[0], &replicas[1]);
            prop_assert_eq!(route.last().unwrap(), &replicas[0]);
        }
    }
}
