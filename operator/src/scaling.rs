//! Scaling decisions, made fresh on every pass from what is observed: the spec, the
//! StatefulSets, the pods, the volumes and the nodes' own membership reports. Nothing is
//! remembered between passes, so a restarted operator (or a second replica taking over) picks
//! up exactly where the last one stopped, and no step can be skipped. Pure: no I/O.
//!
//! The rules, one membership change at a time across the whole cluster:
//! 1. A leave in flight comes first. If a zone's highest ordinal reports `leaving`, wait. If it
//!    reports `left`, lower that StatefulSet's replicas by one (its data is handed off; the pod
//!    may go). This holds whatever the spec now says: a scale-up that arrives during a
//!    decommission waits for the leave to finish, and the node is then added back as a new
//!    member (it does not race the transfer or cancel it half-way).
//! 2. Then scale-down: the first zone (spec order, then zones removed from the spec) with more
//!    replicas than it should have. Once no node is joining and every pod of an earlier removal
//!    is gone, its highest ordinal is asked to decommission (through its own admin API, or
//!    another node's when its pod is down). A node that never joined the ring has nothing to hand
//!    off and is removed at once.
//! 3. Then scale-up: only when every pod is Ready, every StatefulSet has caught up and no node is
//!    joining or leaving, the zone with the fewest replicas among those short of their spec gets
//!    one more. The seeds of a new cluster (the first pod of each zone) start together and form
//!    the initial ring; every later node joins alone.
//! 4. Volumes of removed ordinals are deleted once their pod is gone when `whenScaled: Delete`,
//!    and a node is not added back at an ordinal whose old volume is still being deleted.
//! 5. A zone removed from the spec is drained like a scale-down to 0, then its StatefulSet is
//!    deleted.

use std::collections::{BTreeMap, BTreeSet};

use crate::admin::{Membership, RingView};
use crate::crd::{DecommissionStatus, DynamoClusterSpec, RetentionPolicy};
use crate::render::pod_name;

/// A node pod as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedPod {
    /// Pod name (the node id).
    pub name: String,
    /// Zone label.
    pub zone: String,
    /// Ordinal in its StatefulSet.
    pub ordinal: i32,
    /// Pod IP, once it has one.
    pub ip: Option<String>,
    /// Ready condition true (the node has joined the ring).
    pub ready: bool,
    /// Being deleted.
    pub terminating: bool,
}

/// A zone's StatefulSet as observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObservedStatefulSet {
    /// `spec.replicas`: what the operator last set.
    pub replicas: i32,
    /// `status.readyReplicas`.
    pub ready_replicas: i32,
    /// `status.observedGeneration` has reached `metadata.generation`.
    pub caught_up: bool,
}

/// A node's volume claim as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedPvc {
    /// Claim name.
    pub name: String,
    /// Zone label.
    pub zone: String,
    /// Ordinal of the pod it belongs to.
    pub ordinal: i32,
    /// Being deleted.
    pub terminating: bool,
}

/// Everything a pass observed.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// StatefulSets of the cluster, by zone.
    pub statefulsets: BTreeMap<String, ObservedStatefulSet>,
    /// Node pods of the cluster.
    pub pods: Vec<ObservedPod>,
    /// Volume claims of the cluster's nodes.
    pub pvcs: Vec<ObservedPvc>,
    /// The ring, as the nodes that answered report it.
    pub ring: RingView,
}

/// An admin call the pass must make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecommissionCall {
    /// `host:port` of the node asked.
    pub address: String,
    /// The node to decommission.
    pub node: String,
    /// Asked through another node because it does not answer: remove it even if it stays
    /// silent (its partitions move from the surviving replicas).
    pub force: bool,
}

/// What a zone removed from the spec becomes this pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemovedZone {
    /// Keep its StatefulSet at this many replicas.
    Replicas(i32),
    /// Empty and no pod left: delete the StatefulSet.
    Delete,
}

/// Why the cluster is not settled, for the Progressing condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// CamelCase reason.
    pub reason: &'static str,
    /// Details for people.
    pub message: String,
}

/// The outcome of a pass: what to apply, call and delete.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Replicas to render for each zone of the spec.
    pub replicas: BTreeMap<String, i32>,
    /// What to do with each zone that is no longer in the spec but still has a StatefulSet.
    pub removed_zones: BTreeMap<String, RemovedZone>,
    /// Decommission to request this pass.
    pub decommission_call: Option<DecommissionCall>,
    /// The scale-down in progress, for the status.
    pub decommission: Option<DecommissionStatus>,
    /// Volume claims to delete (retention `Delete`, pod gone).
    pub delete_pvcs: Vec<String>,
    /// Node added this pass, if any.
    pub added: Option<String>,
    /// Node removed from its StatefulSet this pass (after it left, or never joined), if any.
    pub removed: Option<String>,
    /// Why the cluster is not settled; `None` when it is.
    pub progress: Option<Progress>,
    /// Problems that need a person, for the Degraded condition.
    pub problems: Vec<String>,
}

/// Decides this pass. `spec` must be valid (see [`crate::validate`]).
pub fn plan(cluster: &str, spec: &DynamoClusterSpec, observed: &Observed) -> Plan {
    Planner::new(cluster, spec, observed).run()
}

struct Planner<'a> {
    cluster: &'a str,
    spec: &'a DynamoClusterSpec,
    observed: &'a Observed,
    /// Every zone with its desired replicas: the spec's, then removed ones (desired 0).
    zones: Vec<(String, i32)>,
    /// Current replicas of every zone (after creation defaults), updated as the plan decides.
    current: BTreeMap<String, i32>,
    plan: Plan,
}

impl<'a> Planner<'a> {
    fn new(cluster: &'a str, spec: &'a DynamoClusterSpec, observed: &'a Observed) -> Self {
        let in_spec: BTreeSet<&str> = spec.zones.iter().map(|z| z.name.as_str()).collect();
        let mut zones: Vec<(String, i32)> =
            spec.zones.iter().map(|z| (z.name.clone(), z.replicas)).collect();
        zones.extend(
            observed
                .statefulsets
                .keys()
                .filter(|z| !in_spec.contains(z.as_str()))
                .map(|z| (z.clone(), 0)),
        );
        // A new cluster: nothing is ready and no node knows of any member. Its seeds (ordinal 0
        // of each zone) start together; a zone added to a running cluster starts empty and grows
        // one node at a time like any other.
        let bootstrap = !observed.pods.iter().any(|p| p.ready) && observed.ring.members.is_empty();
        let current = zones
            .iter()
            .map(|(zone, desired)| {
                let now = match observed.statefulsets.get(zone) {
                    Some(sts) => sts.replicas,
                    None if bootstrap => (*desired).min(1),
                    None => 0,
                };
                (zone.clone(), now)
            })
            .collect();
        Planner { cluster, spec, observed, zones, current, plan: Plan::default() }
    }

    fn run(mut self) -> Plan {
        let missing: Vec<&str> = self
            .spec
            .zones
            .iter()
            .filter(|z| !self.observed.statefulsets.contains_key(&z.name))
            .map(|z| z.name.as_str())
            .collect();
        if !missing.is_empty() {
            self.progress(
                "Creating",
                format!("creating the StatefulSets of {}", missing.join(", ")),
            );
        }
        self.check_members();
        if !self.finish_leaves() && !self.scale_down() {
            self.scale_up();
        }
        self.clean_volumes();
        self.finish();
        self.plan
    }

    fn pod(&self, name: &str) -> Option<&ObservedPod> {
        self.observed.pods.iter().find(|p| p.name == name)
    }

    fn membership(&self, node: &str) -> Option<Membership> {
        self.observed.ring.membership(node)
    }

    fn progress(&mut self, reason: &'static str, message: String) {
        if self.plan.progress.is_none() {
            self.plan.progress = Some(Progress { reason, message });
        }
    }

    fn decommission_status(&mut self, zone: &str, node: &str, state: &str, message: String) {
        self.plan.decommission = Some(DecommissionStatus {
            zone: zone.into(),
            node: node.into(),
            state: state.into(),
            message,
        });
    }

    /// Members leaving or gone below their zone's highest ordinal: the operator did not ask for
    /// that (someone ran a decommission by hand) and will not remove a pod from the middle.
    fn check_members(&mut self) {
        for pod in &self.observed.pods {
            let top = self.current.get(&pod.zone).copied().unwrap_or(0) - 1;
            if pod.ordinal < top {
                if let Some(m @ (Membership::Leaving | Membership::Left)) =
                    self.membership(&pod.name)
                {
                    self.plan.problems.push(format!(
                        "node {} is {} but is not the highest ordinal of zone {}: the operator only removes \
                         the highest ordinal; lower that zone's replicas to below {} or recommission the node",
                        pod.name,
                        m.as_str(),
                        pod.zone,
                        pod.ordinal + 1
                    ));
                }
            }
        }
    }

    /// Rule 1. Returns true when a leave is in flight (nothing else may start).
    fn finish_leaves(&mut self) -> bool {
        let mut busy = false;
        for (zone, _) in self.zones.clone() {
            let now = self.current[&zone];
            if now == 0 {
                continue;
            }
            let node = pod_name(self.cluster, &zone, now - 1);
            match self.membership(&node) {
                Some(Membership::Left) if !self.left_confirmed(&zone, &node) => {
                    // Only others say so: that may be an old record of a node since added back
                    // at this ordinal, which has not reported itself yet.
                    let message = format!("waiting for {node} to confirm it has left the ring");
                    self.decommission_status(&zone, &node, "leaving", message.clone());
                    self.progress("Decommissioning", message);
                    busy = true;
                }
                Some(Membership::Left) => {
                    self.current.insert(zone.clone(), now - 1);
                    self.plan.removed = Some(node.clone());
                    self.decommission_status(
                        &zone,
                        &node,
                        "left",
                        format!(
                            "{node} has handed off its data and left the ring; removing its pod"
                        ),
                    );
                    self.progress(
                        "RemovingNode",
                        format!("{node} has left the ring; removing its pod"),
                    );
                    busy = true;
                }
                Some(Membership::Leaving) => {
                    let ring = &self.observed.ring;
                    let message = format!(
                        "{node} is handing off its data: {} partition(s) pending, {} transfer(s) active, {} key(s) sent",
                        ring.pending_partitions, ring.active_transfers, ring.keys_sent
                    );
                    self.decommission_status(&zone, &node, "leaving", message.clone());
                    self.progress("Decommissioning", message);
                    busy = true;
                }
                _ => {}
            }
        }
        busy
    }

    /// A node has left for sure when it says so itself. Without its own word, others' record of
    /// it as left may be an old one, of an incarnation since removed: the operator may just have
    /// raised the replicas to add the node back, and its pod does not exist yet. That record is
    /// trusted only when the zone is being scaled down anyway (a crashed node removed by force
    /// never says so itself).
    fn left_confirmed(&self, zone: &str, node: &str) -> bool {
        let desired = self.zones.iter().find(|(z, _)| z == zone).map_or(0, |(_, d)| *d);
        self.observed.ring.members.get(node).is_some_and(|m| m.reachable)
            || self.current[zone] > desired
    }

    /// Zones with more replicas than desired, in order.
    fn over(&self) -> Option<(String, i32, i32)> {
        self.zones
            .iter()
            .map(|(zone, desired)| (zone.clone(), self.current[zone], *desired))
            .find(|(_, now, desired)| now > desired)
    }

    /// A pod still present above its zone's replicas (an earlier removal not finished).
    fn leftover_pod(&self) -> Option<&ObservedPod> {
        self.observed
            .pods
            .iter()
            .find(|p| p.ordinal >= self.current.get(&p.zone).copied().unwrap_or(0))
    }

    /// Rule 2. Returns true when a scale-down is under way or waiting.
    fn scale_down(&mut self) -> bool {
        let Some((zone, now, desired)) = self.over() else { return false };
        let node = pod_name(self.cluster, &zone, now - 1);
        let waiting = |this: &mut Self, why: String| {
            this.decommission_status(&zone, &node, "waiting", why.clone());
            this.progress(
                "WaitingToScaleDown",
                format!("{zone}: {now} -> {desired} replicas: {why}"),
            );
        };
        // Another node's join finishes first; the node to remove itself may be asked while
        // joining (its pod may have crashed half-way, and the join would never finish).
        let joining = self.observed.ring.in_state(Membership::Joining);
        if let Some(other) = joining.iter().find(|id| **id != node) {
            waiting(self, format!("waiting for {other} to finish joining first"));
            return true;
        }
        if let Some(pod) = self.leftover_pod() {
            let why = format!("waiting for pod {} of an earlier removal to terminate", pod.name);
            waiting(self, why);
            return true;
        }
        if self.observed.ring.answered == 0 {
            let why =
                "no node answers its admin API, so the membership of the node to remove is unknown"
                    .to_string();
            self.plan.problems.push(format!("cannot scale {zone} down: {why}"));
            waiting(self, why);
            return true;
        }
        let pod = self.pod(&node).cloned();
        match self.membership(&node) {
            None if !pod.as_ref().is_some_and(|p| p.ready) => {
                // Never joined: nothing to hand off.
                self.current.insert(zone.clone(), now - 1);
                self.plan.removed = Some(node.clone());
                self.progress(
                    "RemovingNode",
                    format!("{node} never joined the ring; removing its pod"),
                );
            }
            None => {
                waiting(self, format!("{node} is Ready but no node reports it as a member yet"));
            }
            Some(_) => {
                // Its own admin API when it answered on this pass; otherwise another node's,
                // naming it (a crashed node is decommissioned by the others).
                let answers = self.observed.ring.members.get(&node).is_some_and(|m| m.reachable);
                let own =
                    pod.as_ref().and_then(|p| p.ip.clone().filter(|_| answers && !p.terminating));
                let via = match own.clone() {
                    Some(ip) => Some(ip),
                    None => self
                        .observed
                        .pods
                        .iter()
                        .filter(|p| p.ready && !p.terminating && p.name != node)
                        .find_map(|p| p.ip.clone()),
                };
                match via {
                    Some(ip) => {
                        self.plan.decommission_call = Some(DecommissionCall {
                            address: crate::render::node_address(&ip),
                            node: node.clone(),
                            force: own.is_none(),
                        });
                        let message = format!(
                            "asked {node} to decommission ({zone}: {now} -> {desired} replicas)"
                        );
                        self.decommission_status(&zone, &node, "requested", message.clone());
                        self.progress("Decommissioning", message);
                    }
                    None => {
                        let why = format!("no running node can be asked to decommission {node}");
                        self.plan.problems.push(why.clone());
                        waiting(self, why);
                    }
                }
            }
        }
        true
    }

    /// Rule 3. Returns true when a node was added or one is waiting to be.
    fn scale_up(&mut self) -> bool {
        let short: Vec<(String, i32)> = self
            .spec
            .zones
            .iter()
            .filter(|z| self.current[&z.name] < z.replicas)
            .map(|z| (z.name.clone(), self.current[&z.name]))
            .collect();
        if short.is_empty() {
            return false;
        }
        if let Some(why) = self.scale_up_blocker() {
            self.progress("WaitingToScaleUp", why);
            return true;
        }
        // The zone with the fewest nodes first (spec order among equals): zones grow evenly.
        let (zone, now) =
            short.iter().min_by_key(|(_, now)| *now).cloned().expect("short is not empty");
        let node = pod_name(self.cluster, &zone, now);
        let delete_policy = self.spec.persistent_volume_claim_retention_policy.when_scaled
            == RetentionPolicy::Delete;
        if let Some(pvc) = self.observed.pvcs.iter().find(|v| v.zone == zone && v.ordinal == now) {
            if pvc.terminating || delete_policy {
                self.progress(
                    "WaitingToScaleUp",
                    format!("waiting for the old volume {} of {node} to be deleted", pvc.name),
                );
                return true;
            }
        }
        self.current.insert(zone.clone(), now + 1);
        self.plan.added = Some(node.clone());
        self.progress(
            "ScalingUp",
            format!("adding {node} ({zone}: {now} -> {} replicas)", now + 1),
        );
        true
    }

    /// Why no node may be added now, if something stands in the way.
    fn scale_up_blocker(&self) -> Option<String> {
        for (zone, _) in &self.zones {
            let now = self.current[zone];
            for ordinal in 0..now {
                let name = pod_name(self.cluster, zone, ordinal);
                match self.pod(&name) {
                    None => return Some(format!("waiting for pod {name} to be created")),
                    Some(p) if p.terminating => {
                        return Some(format!("waiting for pod {name} to restart"))
                    }
                    Some(p) if !p.ready => {
                        return Some(format!("waiting for {name} to be Ready (joined the ring)"))
                    }
                    Some(_) => {}
                }
            }
            match self.observed.statefulsets.get(zone) {
                Some(sts) if !sts.caught_up || sts.ready_replicas < sts.replicas => {
                    return Some(format!("waiting for StatefulSet of {zone} to roll out"));
                }
                None if now > 0 => {
                    return Some(format!("waiting for StatefulSet of {zone} to be created"))
                }
                _ => {}
            }
        }
        if let Some(pod) = self.leftover_pod() {
            return Some(format!(
                "waiting for pod {} of an earlier removal to terminate",
                pod.name
            ));
        }
        let ring = &self.observed.ring;
        if ring.answered == 0 && !self.observed.pods.is_empty() {
            return Some("waiting for a node to answer its admin API".into());
        }
        if let Some(node) = ring.in_state(Membership::Joining).first() {
            return Some(format!("waiting for {node} to finish joining"));
        }
        if let Some(node) = ring.in_state(Membership::Leaving).first() {
            return Some(format!("waiting for {node} to finish leaving"));
        }
        None
    }

    /// Rule 4.
    fn clean_volumes(&mut self) {
        if self.spec.persistent_volume_claim_retention_policy.when_scaled != RetentionPolicy::Delete
        {
            return;
        }
        for pvc in &self.observed.pvcs {
            let kept = self.current.get(&pvc.zone).copied().unwrap_or(0);
            let node = pod_name(self.cluster, &pvc.zone, pvc.ordinal);
            if pvc.ordinal >= kept && !pvc.terminating && self.pod(&node).is_none() {
                self.plan.delete_pvcs.push(pvc.name.clone());
            }
        }
    }

    /// Rule 5 and the outputs.
    fn finish(&mut self) {
        for zone in &self.spec.zones {
            self.plan.replicas.insert(zone.name.clone(), self.current[&zone.name]);
        }
        for (zone, _) in self.zones.clone() {
            let zone = &zone;
            if self.spec.zone(zone).is_some() {
                continue;
            }
            let now = self.current[zone];
            let empty = now == 0 && !self.observed.pods.iter().any(|p| &p.zone == zone);
            self.plan.removed_zones.insert(
                zone.clone(),
                if empty { RemovedZone::Delete } else { RemovedZone::Replicas(now) },
            );
            if empty {
                self.progress(
                    "RemovingZone",
                    format!("zone {zone} is empty; deleting its StatefulSet"),
                );
            }
        }
        if self.plan.progress.is_none() && self.observed.ring.pending_partitions > 0 {
            let ring = &self.observed.ring;
            self.plan.progress = Some(Progress {
                reason: "Rebalancing",
                message: format!(
                    "{} partition(s) still moving ({} transfer(s) active)",
                    ring.pending_partitions, ring.active_transfers
                ),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::tests::report;
    use crate::crd::ZoneSpec;

    /// A test world: zones with (StatefulSet replicas, desired replicas), all pods ready and
    /// normal members unless changed.
    struct World {
        spec: DynamoClusterSpec,
        observed: Observed,
        members: Vec<(String, String, &'static str)>,
    }

    impl World {
        fn new(zones: &[(&str, i32, i32)]) -> World {
            let spec = DynamoClusterSpec::with_zones(
                zones.iter().map(|(z, _, want)| ZoneSpec::new(z, *want)).collect(),
            );
            let mut world = World { spec, observed: Observed::default(), members: Vec::new() };
            for (zone, now, _) in zones {
                world.observed.statefulsets.insert(
                    zone.to_string(),
                    ObservedStatefulSet { replicas: *now, ready_replicas: *now, caught_up: true },
                );
                for ordinal in 0..*now {
                    world.add_pod(zone, ordinal, "normal");
                }
            }
            world
        }

        fn add_pod(&mut self, zone: &str, ordinal: i32, membership: &'static str) {
            let name = pod_name("demo", zone, ordinal);
            self.observed.pods.push(ObservedPod {
                name: name.clone(),
                zone: zone.into(),
                ordinal,
                ip: Some(format!("10.0.0.{}", self.observed.pods.len() + 1)),
                ready: membership == "normal",
                terminating: false,
            });
            self.observed.pvcs.push(ObservedPvc {
                name: format!("data-{name}"),
                zone: zone.into(),
                ordinal,
                terminating: false,
            });
            self.members.push((name, zone.into(), membership));
        }

        fn set_membership(&mut self, node: &str, membership: &'static str) {
            self.members.iter_mut().find(|m| m.0 == node).unwrap().2 = membership;
        }

        fn pod_mut(&mut self, node: &str) -> &mut ObservedPod {
            self.observed.pods.iter_mut().find(|p| p.name == node).unwrap()
        }

        fn plan(&mut self) -> Plan {
            let members: Vec<(&str, &str, &str)> =
                self.members.iter().map(|(a, b, c)| (a.as_str(), b.as_str(), *c)).collect();
            let reports: Vec<_> = self
                .observed
                .pods
                .iter()
                .filter(|p| p.ip.is_some())
                .map(|p| report(&p.name, &members))
                .collect();
            self.observed.ring = RingView::merge(&reports);
            plan("demo", &self.spec, &self.observed)
        }
    }

    fn replicas(plan: &Plan) -> Vec<(&str, i32)> {
        plan.replicas.iter().map(|(z, r)| (z.as_str(), *r)).collect()
    }

    #[test]
    fn a_new_cluster_starts_one_seed_per_zone() {
        let mut w = World::new(&[]);
        w.spec = DynamoClusterSpec::with_zones(vec![
            ZoneSpec::new("a", 3),
            ZoneSpec::new("b", 3),
            ZoneSpec::new("c", 0),
        ]);
        let p = w.plan();
        assert_eq!(replicas(&p), [("a", 1), ("b", 1), ("c", 0)]);
        assert_eq!(p.progress.unwrap().reason, "Creating");
        assert_eq!(p.added, None);
    }

    #[test]
    fn a_settled_cluster_changes_nothing() {
        let mut w = World::new(&[("a", 2, 2), ("b", 1, 1)]);
        let p = w.plan();
        assert_eq!(replicas(&p), [("a", 2), ("b", 1)]);
        assert_eq!(p.progress, None);
        assert_eq!(p.decommission_call, None);
        assert!(p.delete_pvcs.is_empty() && p.problems.is_empty());
    }

    #[test]
    fn scale_up_adds_one_node_to_the_smallest_zone() {
        let mut w = World::new(&[("a", 2, 3), ("b", 1, 3)]);
        let p = w.plan();
        assert_eq!(replicas(&p), [("a", 2), ("b", 2)]);
        assert_eq!(p.added.as_deref(), Some("demo-b-1"));
        assert_eq!(p.progress.unwrap().reason, "ScalingUp");
    }

    #[test]
    fn scale_up_waits_for_every_pod_and_for_joins() {
        let mut w = World::new(&[("a", 2, 3)]);
        w.pod_mut("demo-a-0").ready = false;
        let p = w.plan();
        assert_eq!(replicas(&p), [("a", 2)]);
        assert_eq!(
            p.progress.unwrap().message,
            "waiting for demo-a-0 to be Ready (joined the ring)"
        );

        let mut w = World::new(&[("a", 2, 3)]);
        w.set_membership("demo-a-1", "joining");
        let p = w.plan();
        assert_eq!(replicas(&p), [("a", 2)]);
        assert_eq!(p.progress.unwrap().message, "waiting for demo-a-1 to finish joining");

        let mut w = World::new(&[("a", 2, 3)]);
        w.observed.statefulsets.get_mut("a").unwrap().caught_up = false;
        assert_eq!(w.plan().progress.unwrap().reason, "WaitingToScaleUp");

        let mut w = World::new(&[("a", 2, 3)]);
        w.observed.pods.pop();
        assert_eq!(w.plan().progress.unwrap().message, "waiting for pod demo-a-1 to be created");
    }

    #[test]
    fn scale_down_asks_the_highest_ordinal_to_decommission_first() {
        let mut w = World::new(&[("a", 3, 1), ("b", 1, 1)]);
        let p = w.plan();
        assert_eq!(replicas(&p), [("a", 3), ("b", 1)], "replicas only drop once the node has left");
        assert_eq!(
            p.decommission_call,
            Some(DecommissionCall {
                address: "10.0.0.3:7070".into(),
                node: "demo-a-2".into(),
                force: false
            })
        );
        let d = p.decommission.unwrap();
        assert_eq!(
            (d.zone.as_str(), d.node.as_str(), d.state.as_str()),
            ("a", "demo-a-2", "requested")
        );

        w.set_membership("demo-a-2", "leaving");
        let p = w.plan();
        assert_eq!(replicas(&p), [("a", 3), ("b", 1)]);
        assert_eq!(p.decommission_call, None, "a leaving node is not asked again");
        assert_eq!(p.decommission.unwrap().state, "leaving");

        w.set_membership("demo-a-2", "left");
        let p = w.plan();
        assert_eq!(replicas(&p), [("a", 2), ("b", 1)]);
        assert_eq!(p.removed.as_deref(), Some("demo-a-2"));

        // The StatefulSet was lowered; its pod terminates: nothing new starts meanwhile.
        w.observed.statefulsets.get_mut("a").unwrap().replicas = 2;
        w.pod_mut("demo-a-2").terminating = true;
        let p = w.plan();
        assert_eq!(replicas(&p), [("a", 2), ("b", 1)]);
        assert_eq!(p.decommission_call, None);
        assert!(p.progress.unwrap().message.contains("demo-a-2"));
        assert!(p.delete_pvcs.is_empty(), "the volume stays until the pod is gone");

        // Pod gone: its volume is deleted and the next node is asked.
        w.observed.pods.retain(|p| p.name != "demo-a-2");
        let p = w.plan();
        assert_eq!(p.delete_pvcs, ["data-demo-a-2"]);
        assert_eq!(p.decommission_call.unwrap().node, "demo-a-1");
    }

    #[test]
    fn scale_down_waits_for_joins_and_for_the_admin_api() {
        let mut w = World::new(&[("a", 3, 2)]);
        w.set_membership("demo-a-0", "joining");
        let p = w.plan();
        assert_eq!(p.decommission_call, None);
        assert_eq!(p.decommission.unwrap().state, "waiting");

        let mut w = World::new(&[("a", 3, 2)]);
        for pod in &mut w.observed.pods {
            pod.ip = None;
        }
        let p = w.plan();
        assert_eq!(p.decommission_call, None);
        assert_eq!(replicas(&p), [("a", 3)]);
        assert!(p.problems[0].contains("no node answers its admin API"), "{:?}", p.problems);
    }

    #[test]
    fn a_node_stuck_joining_can_itself_be_removed() {
        let mut w = World::new(&[("a", 3, 2)]);
        w.set_membership("demo-a-2", "joining");
        w.pod_mut("demo-a-2").ip = None;
        w.pod_mut("demo-a-2").ready = false;
        let p = w.plan();
        assert_eq!(p.decommission_call.unwrap().node, "demo-a-2");
    }

    #[test]
    fn a_down_node_is_decommissioned_through_another() {
        let mut w = World::new(&[("a", 3, 2)]);
        w.pod_mut("demo-a-2").ip = None;
        w.pod_mut("demo-a-2").ready = false;
        let p = w.plan();
        assert_eq!(
            p.decommission_call,
            Some(DecommissionCall {
                address: "10.0.0.1:7070".into(),
                node: "demo-a-2".into(),
                force: true
            })
        );
    }

    #[test]
    fn a_running_node_that_does_not_answer_is_decommissioned_through_another() {
        let mut w = World::new(&[("a", 3, 2)]);
        // Its pod has an address but its admin API is silent (the process is stuck).
        let silent = w.observed.pods.iter().position(|p| p.name == "demo-a-2").unwrap();
        w.plan();
        let reports: Vec<_> = {
            let members: Vec<(&str, &str, &str)> =
                w.members.iter().map(|(a, b, c)| (a.as_str(), b.as_str(), *c)).collect();
            w.observed
                .pods
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != silent)
                .map(|(_, p)| report(&p.name, &members))
                .collect()
        };
        w.observed.ring = RingView::merge(&reports);
        let p = plan("demo", &w.spec, &w.observed);
        let call = p.decommission_call.unwrap();
        assert_eq!(call.address, "10.0.0.1:7070");
        assert!(call.force, "a node that does not answer is removed without its cooperation");
    }

    #[test]
    fn a_node_that_never_joined_is_removed_at_once() {
        let mut w = World::new(&[("a", 2, 2)]);
        w.spec.zones[0].replicas = 1;
        w.members.retain(|m| m.0 != "demo-a-1");
        w.pod_mut("demo-a-1").ready = false;
        let p = w.plan();
        assert_eq!(replicas(&p), [("a", 1)]);
        assert_eq!(p.decommission_call, None);
        assert_eq!(p.removed.as_deref(), Some("demo-a-1"));
    }

    #[test]
    fn a_scale_up_during_a_decommission_finishes_the_leave_first() {
        let mut w = World::new(&[("a", 3, 3)]);
        w.spec.zones[0].replicas = 4; // raised while demo-a-2 is leaving
        w.set_membership("demo-a-2", "leaving");
        let p = w.plan();
        assert_eq!(replicas(&p), [("a", 3)]);
        assert_eq!(p.added, None);
        assert_eq!(p.progress.unwrap().reason, "Decommissioning");

        w.set_membership("demo-a-2", "left");
        let p = w.plan();
        assert_eq!(replicas(&p), [("a", 2)], "the left node's pod goes before any node is added");

        w.observed.statefulsets.get_mut("a").unwrap().replicas = 2;
        w.observed.pods.retain(|p| p.name != "demo-a-2");
        let p = w.plan();
        assert_eq!(p.delete_pvcs, ["data-demo-a-2"]);
        assert_eq!(replicas(&p), [("a", 2)], "not re-added onto its old volume");
        assert_eq!(p.progress.unwrap().reason, "WaitingToScaleUp");

        w.observed.pvcs.retain(|v| v.name != "data-demo-a-2");
        w.members.retain(|m| m.0 != "demo-a-2");
        let p = w.plan();
        assert_eq!(replicas(&p), [("a", 3)]);
        assert_eq!(p.added.as_deref(), Some("demo-a-2"));
    }

    #[test]
    fn an_old_left_record_does_not_remove_a_node_added_back() {
        let mut w = World::new(&[("a", 3, 3)]);
        // demo-a-2 left earlier and was added back: its new pod has no address yet, and the
        // others still remember the old incarnation as left.
        w.pod_mut("demo-a-2").ip = None;
        w.pod_mut("demo-a-2").ready = false;
        w.set_membership("demo-a-2", "left");
        let p = w.plan();
        assert_eq!(replicas(&p), [("a", 3)]);
        assert_eq!(p.removed, None);
        assert_eq!(
            p.progress.unwrap().message,
            "waiting for demo-a-2 to confirm it has left the ring"
        );
    }

    #[test]
    fn retained_volumes_are_kept_and_reused() {
        let mut w = World::new(&[("a", 2, 3)]);
        w.spec.persistent_volume_claim_retention_policy.when_scaled = RetentionPolicy::Retain;
        w.observed.pvcs.push(ObservedPvc {
            name: "data-demo-a-2".into(),
            zone: "a".into(),
            ordinal: 2,
            terminating: false,
        });
        let p = w.plan();
        assert!(p.delete_pvcs.is_empty());
        assert_eq!(p.added.as_deref(), Some("demo-a-2"));
    }

    #[test]
    fn a_zone_removed_from_the_spec_is_drained_then_deleted() {
        let mut w = World::new(&[("a", 1, 1), ("b", 1, 1), ("gone", 1, 0)]);
        w.spec.zones.retain(|z| z.name != "gone");
        let p = w.plan();
        assert_eq!(p.removed_zones, BTreeMap::from([("gone".into(), RemovedZone::Replicas(1))]));
        assert_eq!(p.decommission_call.unwrap().node, "demo-gone-0");

        w.set_membership("demo-gone-0", "left");
        let p = w.plan();
        assert_eq!(p.removed_zones["gone"], RemovedZone::Replicas(0));

        w.observed.statefulsets.get_mut("gone").unwrap().replicas = 0;
        w.observed.pods.retain(|p| p.zone != "gone");
        let p = w.plan();
        assert_eq!(p.removed_zones["gone"], RemovedZone::Delete);
        assert_eq!(p.delete_pvcs, ["data-demo-gone-0"]);
    }

    #[test]
    fn a_zone_added_to_a_running_cluster_grows_one_node_at_a_time() {
        let mut w = World::new(&[("a", 1, 1), ("b", 1, 1)]);
        w.spec.zones.push(ZoneSpec::new("c", 2));
        let p = w.plan();
        assert_eq!(replicas(&p), [("a", 1), ("b", 1), ("c", 1)]);
        assert_eq!(p.added.as_deref(), Some("demo-c-0"));
    }

    #[test]
    fn a_leave_nobody_asked_for_is_reported() {
        let mut w = World::new(&[("a", 3, 3)]);
        w.set_membership("demo-a-0", "leaving");
        let p = w.plan();
        assert!(
            p.problems[0].contains("demo-a-0 is leaving but is not the highest ordinal"),
            "{:?}",
            p.problems
        );
    }

    #[test]
    fn pending_partitions_show_as_rebalancing() {
        let mut w = World::new(&[("a", 3, 3)]);
        let mut p = w.plan();
        assert_eq!(p.progress, None);
        w.observed.ring.pending_partitions = 7;
        p = plan("demo", &w.spec, &w.observed);
        assert_eq!(p.progress.unwrap().reason, "Rebalancing");
    }
}
