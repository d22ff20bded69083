//! Layout decisions (as Riak's claimant does): one node, the claimant, turns membership
//! changes into partition layouts. The claimant is the node with the smallest id among the
//! layout's members that are `normal` and that this node finds reachable; every node runs the
//! same pure decision on its own view, so if two nodes both think they are claimant (a logical
//! partition), their layouts are ordered by (epoch, author) and one wins everywhere.
//!
//! A change is two steps. *Propose*: the target layout (`Ring::rebalance`, so only the
//! partitions that must move do) is published as `next`; writes now go to the replicas of both
//! layouts while every node that gains a partition pulls it from a current replica. *Commit*:
//! once every such node reports it has all its new partitions for this epoch, `next` becomes
//! the layout. Ownership therefore flips only after the data has moved.
//!
//! Also here: each node's own status transitions (joining -> normal once in the layout,
//! leaving -> left once out of it). Pure: views in, decisions out.

use std::collections::{BTreeMap, BTreeSet};

use super::view::{Layout, Status, Target, View};
use crate::ring::{Member, NodeId, PartitionId, Ring, RingError};

/// For a layout change, the partitions each node gains: nodes among the first `n` of a
/// partition's preference list in `next` that are not among them in `current`.
pub fn gains(current: &Ring, next: &Ring, n: usize) -> BTreeMap<NodeId, Vec<PartitionId>> {
    let mut out: BTreeMap<NodeId, Vec<PartitionId>> = BTreeMap::new();
    for p in 0..current.partitions() {
        let now: BTreeSet<&NodeId> =
            current.preference_list(p).iter().take(n).map(|m| &m.id).collect();
        for m in next.preference_list(p).iter().take(n) {
            if !now.contains(&m.id) {
                out.entry(m.id.clone()).or_default().push(p);
            }
        }
    }
    out
}

/// The members a layout should have now: every node that is joining or normal (a normal node
/// that is not in the layout, e.g. one that bootstrapped its own ring, joins it); joining nodes
/// only while reachable, so a node that died while joining does not stall the cluster.
fn desired_members(view: &View, is_up: &dyn Fn(&NodeId) -> bool) -> Vec<Member> {
    view.nodes
        .values()
        .filter(|n| match n.status {
            Status::Normal => true,
            Status::Joining => is_up(&n.id),
            Status::Leaving | Status::Left => false,
        })
        .map(|n| n.member())
        .collect()
}

/// The ring to move to from `current`, if the members it should have differ from its own.
fn change_target(
    view: &View,
    current: &Ring,
    is_up: &dyn Fn(&NodeId) -> bool,
) -> Result<Option<Ring>, RingError> {
    // Sorted by id already: the view's nodes are a BTreeMap keyed by id, like ring members.
    let desired = desired_members(view, is_up);
    if desired.is_empty() || desired == current.members() {
        return Ok(None);
    }
    current.rebalance(desired).map(Some)
}

/// The claimant as `me` sees it.
pub fn claimant(view: &View, me: &NodeId, is_up: &dyn Fn(&NodeId) -> bool) -> Option<NodeId> {
    view.layout
        .members
        .iter()
        .map(|m| &m.id)
        .filter(|id| *id == me || is_up(id))
        .find(|id| view.status(id) == Some(Status::Normal))
        .cloned()
}

/// What the claimant (or a bootstrapping node) decides from its view: a new layout to publish,
/// or nothing. `may_bootstrap` says this node has waited long enough to have heard of its
/// peers, so that it may create the very first layout.
pub fn decide(
    view: &View,
    me: &NodeId,
    n: usize,
    may_bootstrap: bool,
    is_up: &dyn Fn(&NodeId) -> bool,
) -> Result<Option<Layout>, RingError> {
    let layout = &view.layout;
    if layout.epoch == 0 {
        // First layout: created by the smallest reachable candidate, with every candidate.
        let candidates = desired_members(view, is_up);
        let first = candidates.iter().map(|m| &m.id).min();
        if !may_bootstrap || first != Some(me) {
            return Ok(None);
        }
        let ring = Ring::new(layout.partitions, candidates)?;
        return Ok(Some(Layout {
            epoch: 1,
            author: me.clone(),
            partitions: layout.partitions,
            members: ring.members().to_vec(),
            owners: ring.owners(),
            next: None,
        }));
    }
    if claimant(view, me, is_up).as_ref() != Some(me) {
        return Ok(None);
    }
    let Some(current) = layout.ring()? else { return Ok(None) };
    match layout.next_ring()? {
        None => {
            let Some(next) = change_target(view, &current, is_up)? else { return Ok(None) };
            Ok(Some(Layout {
                epoch: layout.epoch + 1,
                author: me.clone(),
                next: Some(Target { members: next.members().to_vec(), owners: next.owners() }),
                ..layout.clone()
            }))
        }
        Some(next) => {
            let receivers = gains(&current, &next, n);
            // A joining node that died (or was decommissioned) before receiving its partitions
            // would stall the change and every change after it: drop it from the target.
            let dead_joiner = receivers.keys().any(|id| match view.status(id) {
                Some(Status::Joining) => !is_up(id),
                Some(Status::Left) | None => true,
                _ => false,
            });
            if dead_joiner {
                let next = change_target(view, &current, is_up)?;
                return Ok(Some(Layout {
                    epoch: layout.epoch + 1,
                    author: me.clone(),
                    next: next
                        .map(|r| Target { members: r.members().to_vec(), owners: r.owners() }),
                    ..layout.clone()
                }));
            }
            let done = receivers
                .keys()
                .all(|id| view.nodes.get(id).is_some_and(|s| s.synced_epoch >= layout.epoch));
            if !done {
                return Ok(None);
            }
            Ok(Some(Layout {
                epoch: layout.epoch + 1,
                author: me.clone(),
                partitions: layout.partitions,
                members: next.members().to_vec(),
                owners: next.owners(),
                next: None,
            }))
        }
    }
}

/// The status this node should move to, if any, given the layout in its view.
pub fn own_transition(view: &View, me: &NodeId) -> Option<Status> {
    let status = view.status(me)?;
    let layout = &view.layout;
    let member = layout.members.iter().any(|m| m.id == *me);
    match status {
        Status::Joining if member && layout.epoch > 0 => Some(Status::Normal),
        Status::Normal if !member && layout.epoch > 0 && layout.next.is_none() => {
            Some(Status::Joining)
        }
        Status::Leaving if !member && layout.epoch > 0 && layout.next.is_none() => {
            Some(Status::Left)
        }
        _ => None,
    }
}

/// Nodes removed by force (see [`crate::membership::view::NodeState::removed_by`]) that are
/// still leaving, do not answer, and are out of the layout with no change under way: they
/// cannot say "left" themselves, so the claimant writes it for them. Every claimant writes the
/// same entry (status left, version + 1), so two of them cannot disagree.
pub fn removed_nodes_out(view: &View, is_up: &dyn Fn(&NodeId) -> bool) -> Vec<NodeId> {
    let layout = &view.layout;
    if layout.epoch == 0 || layout.next.is_some() {
        return Vec::new();
    }
    view.nodes
        .values()
        .filter(|n| n.status == Status::Leaving && n.removed_by.is_some() && !is_up(&n.id))
        .filter(|n| !layout.members.iter().any(|m| m.id == n.id))
        .map(|n| n.id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::view::NodeState;

    fn state(id: &str, zone: &str, status: Status) -> NodeState {
        NodeState {
            id: NodeId(id.into()),
            address: format!("{id}:7071"),
            client_address: format!("{id}:7070"),
            metrics_address: String::new(),
            zone: zone.into(),
            weight: 1,
            status,
            generation: 1,
            version: 0,
            heartbeat: 0,
            synced_epoch: 0,
            removed_by: None,
        }
    }

    fn view_of(nodes: &[(&str, &str, Status)]) -> View {
        let mut v = View::new(64);
        for (id, zone, st) in nodes {
            v.nodes.insert(NodeId(id.to_string()), state(id, zone, *st));
        }
        v
    }

    fn up(_: &NodeId) -> bool {
        true
    }

    fn id(s: &str) -> NodeId {
        NodeId(s.into())
    }

    #[test]
    fn the_smallest_candidate_bootstraps_with_everyone_it_knows() {
        let v = view_of(&[
            ("a", "z1", Status::Joining),
            ("b", "z2", Status::Joining),
            ("c", "z3", Status::Joining),
        ]);
        assert_eq!(decide(&v, &id("b"), 3, true, &up).unwrap(), None, "only the smallest");
        assert_eq!(decide(&v, &id("a"), 3, false, &up).unwrap(), None, "not before waiting");
        let layout = decide(&v, &id("a"), 3, true, &up).unwrap().unwrap();
        assert_eq!((layout.epoch, layout.members.len(), layout.next.is_none()), (1, 3, true));
    }

    /// Drives a cluster of views through decisions until nothing changes; `synced` nodes report
    /// having pulled their partitions as soon as a target appears.
    fn settle(mut v: View, n: usize) -> (View, usize) {
        let mut steps = 0;
        loop {
            let mut changed = false;
            let ids: Vec<NodeId> = v.nodes.keys().cloned().collect();
            for me in &ids {
                if let Some(s) = own_transition(&v, me) {
                    v.nodes.get_mut(me).unwrap().status = s;
                    changed = true;
                }
                if let Some(l) = decide(&v, me, n, true, &up).unwrap() {
                    v.layout = l;
                    changed = true;
                }
            }
            if let Some(next) = v.layout.next_ring().unwrap() {
                let current = v.layout.ring().unwrap().unwrap();
                for receiver in gains(&current, &next, n).keys() {
                    v.nodes.get_mut(receiver).unwrap().synced_epoch = v.layout.epoch;
                }
            }
            steps += 1;
            if !changed || steps > 50 {
                return (v, steps);
            }
        }
    }

    #[test]
    fn a_join_is_proposed_then_committed_only_after_the_receivers_synced() {
        let v = view_of(&[
            ("a", "z1", Status::Joining),
            ("b", "z2", Status::Joining),
            ("c", "z3", Status::Joining),
        ]);
        let (mut v, _) = settle(v, 3);
        assert!(v.nodes.values().all(|n| n.status == Status::Normal));
        let epoch = v.layout.epoch;
        v.nodes.insert(id("d"), state("d", "z1", Status::Joining));
        // The claimant is "a" (smallest normal member): it proposes, others do not.
        assert_eq!(decide(&v, &id("b"), 3, true, &up).unwrap(), None);
        let proposed = decide(&v, &id("a"), 3, true, &up).unwrap().unwrap();
        assert_eq!(proposed.epoch, epoch + 1);
        let target = proposed.next.clone().unwrap();
        assert!(target.members.iter().any(|m| m.id == id("d")));
        assert_eq!(proposed.owners, v.layout.owners, "ownership does not flip at proposal");
        v.layout = proposed;
        // Not committed while "d" has not pulled its partitions.
        assert_eq!(decide(&v, &id("a"), 3, true, &up).unwrap(), None);
        v.nodes.get_mut(&id("d")).unwrap().synced_epoch = v.layout.epoch;
        let current = v.layout.ring().unwrap().unwrap();
        let next = v.layout.next_ring().unwrap().unwrap();
        let receivers: Vec<NodeId> = gains(&current, &next, 3).into_keys().collect();
        for r in &receivers {
            v.nodes.get_mut(r).unwrap().synced_epoch = v.layout.epoch;
        }
        let committed = decide(&v, &id("a"), 3, true, &up).unwrap().unwrap();
        assert_eq!(committed.owners, target.owners);
        assert!(committed.next.is_none());
        v.layout = committed;
        assert_eq!(own_transition(&v, &id("d")), Some(Status::Normal));
    }

    #[test]
    fn a_joining_node_that_dies_mid_transfer_is_dropped_from_the_change() {
        let v = view_of(&[
            ("a", "z1", Status::Joining),
            ("b", "z2", Status::Joining),
            ("c", "z3", Status::Joining),
        ]);
        let (mut v, _) = settle(v, 3);
        let members = v.layout.members.clone();
        v.nodes.insert(id("d"), state("d", "z1", Status::Joining));
        v.layout = decide(&v, &id("a"), 3, true, &up).unwrap().unwrap();
        assert!(v.layout.next.is_some());
        let d_down = |n: &NodeId| n.0 != "d";
        let cancelled = decide(&v, &id("a"), 3, true, &d_down).unwrap().unwrap();
        assert_eq!(cancelled.epoch, v.layout.epoch + 1);
        assert!(cancelled.next.is_none(), "back to the current layout");
        assert_eq!(cancelled.members, members);
    }

    #[test]
    fn a_leaving_node_is_removed_and_then_reports_left() {
        let v = view_of(&[
            ("a", "z1", Status::Joining),
            ("b", "z2", Status::Joining),
            ("c", "z3", Status::Joining),
            ("d", "z1", Status::Joining),
        ]);
        let (mut v, _) = settle(v, 3);
        assert_eq!(v.layout.members.len(), 4);
        v.nodes.get_mut(&id("d")).unwrap().status = Status::Leaving;
        let (v, _) = settle(v, 3);
        assert_eq!(v.layout.members.len(), 3);
        assert!(v.layout.owners.iter().all(|o| *o != id("d")));
        assert_eq!(v.status(&id("d")), Some(Status::Left));
    }

    #[test]
    fn gains_lists_exactly_the_new_replicas() {
        let members = |ids: &[&str]| -> Vec<Member> {
            ids.iter()
                .enumerate()
                .map(|(i, s)| Member { id: id(s), zone: format!("z{}", i % 3), weight: 1 })
                .collect()
        };
        let current = Ring::new(64, members(&["a", "b", "c"])).unwrap();
        let next = current.rebalance(members(&["a", "b", "c", "d"])).unwrap();
        let g = gains(&current, &next, 3);
        assert_eq!(
            g.keys().collect::<Vec<_>>(),
            vec![&id("d")],
            "with N=3 of 3, only the new node gains"
        );
        assert_eq!(g[&id("d")].len(), next.replica_partitions(&id("d"), 3).len());
        assert!(gains(&current, &current, 3).is_empty());
    }

    #[test]
    fn two_logical_rings_merge_into_one_through_a_seed() {
        // Two groups bootstrapped apart (each only knew its own seed)...
        let (left, _) =
            settle(view_of(&[("a", "z1", Status::Joining), ("b", "z2", Status::Joining)]), 2);
        let (right, _) =
            settle(view_of(&[("c", "z1", Status::Joining), ("d", "z2", Status::Joining)]), 2);
        assert_eq!((left.layout.epoch, right.layout.epoch), (1, 1));
        // ...then gossip through a common seed merges their views: one layout wins, the other
        // group's nodes find themselves outside it and join it.
        let mut merged = left.clone();
        merged.merge(&right);
        let (one, _) = settle(merged, 2);
        let ids: Vec<&str> = one.layout.members.iter().map(|m| m.id.0.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c", "d"]);
        assert!(one.nodes.values().all(|n| n.status == Status::Normal));
    }

    #[test]
    fn only_one_claimant_and_a_down_claimant_is_replaced() {
        let v = view_of(&[("a", "z1", Status::Joining), ("b", "z2", Status::Joining)]);
        let (v, _) = settle(v, 2);
        assert_eq!(claimant(&v, &id("b"), &up), Some(id("a")));
        let a_down = |n: &NodeId| n.0 != "a";
        assert_eq!(claimant(&v, &id("b"), &a_down), Some(id("b")));
    }

    #[test]
    fn the_claimant_writes_left_for_a_removed_node_once_it_is_out_and_down() {
        let mut v = view_of(&[
            ("a", "z1", Status::Normal),
            ("b", "z2", Status::Normal),
            ("c", "z3", Status::Leaving),
        ]);
        v.nodes.get_mut(&NodeId("c".into())).unwrap().removed_by = Some(NodeId("a".into()));
        let down_c = |id: &NodeId| id.0 != "c";
        // Still in the layout: the change has not happened yet.
        let ring = Ring::new(64, v.nodes.values().map(|n| n.member()).collect()).unwrap();
        v.layout = Layout {
            epoch: 3,
            author: NodeId("a".into()),
            partitions: 64,
            members: ring.members().to_vec(),
            owners: ring.owners(),
            next: None,
        };
        assert!(removed_nodes_out(&v, &down_c).is_empty());
        // Out of the layout and down: left. Up (it will say so itself) or not forced: nothing.
        let ring =
            Ring::new(64, v.nodes.values().filter(|n| n.id.0 != "c").map(|n| n.member()).collect())
                .unwrap();
        v.layout.members = ring.members().to_vec();
        v.layout.owners = ring.owners();
        assert_eq!(removed_nodes_out(&v, &down_c), vec![NodeId("c".into())]);
        assert!(removed_nodes_out(&v, &up).is_empty());
        v.nodes.get_mut(&NodeId("c".into())).unwrap().removed_by = None;
        assert!(removed_nodes_out(&v, &down_c).is_empty());
    }
}
