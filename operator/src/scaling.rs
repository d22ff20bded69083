//! Scaling decisions, made fresh on every pass from what is observed: the spec, the
//! StatefulSets, the pods, the volumes and the nodes' own membership reports. Nothing is
//! remembered between passes, so a restarted operator (or a second replica taking over) picks
//! up exactly where the last one stopped, and no step can be skipped. Pure: no I/O.
//!
//! With `spec.paused` nothing changes: every zone keeps its replicas, nothing is called or
//! deleted. Otherwise the rules, one change at a time across the whole cluster:
//! 1. A leave in flight comes first. If a zone's highest ordinal reports `leaving`, wait. If it
//!    reports `left`, lower that StatefulSet's replicas by one (its data is handed off; the pod
//!    may go). This holds whatever the spec now says: a scale-up that arrives during a
//!    decommission waits for the leave to finish, and the node is then added back as a new
//!    member (it does not race the transfer or cancel it half-way).
//! 2. Then a replacement: a pod annotated `dynamokv.io/replace=true` (or, with
//!    `failure.replaceLostVolumes`, one whose volume's Kubernetes node is gone) has its member
//!    removed by force through another node (never while any node finds it alive; automatic
//!    replacements also wait `failure.forceRemoveAfter`), then its claim and pod are deleted
//!    and its StatefulSet creates both again: a new, empty node joins.
//! 3. Then a rolling change of the pod template, one pod at a time ([`crate::rollout`]).
//! 4. Then scale-down: the first zone (spec order, then zones removed from the spec) with more
//!    replicas than it should have. Once no node is joining, every other pod is Ready, no
//!    partition is moving and every pod of an earlier removal is gone, its highest ordinal is
//!    asked to decommission (through its own admin API, or another node's when its pod is
//!    down). A node that never joined the ring has nothing to hand off and is removed at once.
//! 5. Then scale-up: only when every pod is Ready, every StatefulSet has caught up and no node
//!    is joining or leaving, the zone with the fewest replicas among those short of their spec
//!    gets one more. The seeds of a new cluster (the first pod of each zone) start together
//!    and form the initial ring; every later node joins alone.
//! 6. Volumes of removed ordinals are deleted once their pod is gone when `whenScaled: Delete`,
//!    and a node is not added back at an ordinal whose old volume is still being deleted.
//! 7. A zone removed from the spec is drained like a scale-down to 0, then its StatefulSet is
//!    deleted.
//! 8. When `storage.size` grew, every claim is expanded (if its StorageClass allows it), then
//!    each zone's StatefulSet is deleted with its pods orphaned and created again with the new
//!    claim template; no pod restarts.
//!
//! A node that does not answer is removed by force (through another node) only once every node
//! that answers has found it down for `failure.forceRemoveAfter`, and never while any finds it
//! alive.

use std::collections::{BTreeMap, BTreeSet};

use crate::admin::{Membership, RingView};
use std::time::Duration;

use crate::crd::{
    DecommissionStatus, DynamoClusterSpec, RetentionPolicy, RolloutStatus, StorageStatus,
};
use crate::quantity;
use crate::render::pod_name;

/// A node pod as observed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
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
    /// Pod uid (deletes are conditional on it, so a recreated pod is never deleted by mistake).
    pub uid: Option<String>,
    /// Its `controller-revision-hash` label: the template revision it runs.
    pub revision: Option<String>,
    /// Annotated `dynamokv.io/replace=true`.
    pub replace: bool,
    /// Why it cannot be scheduled, when it is Pending unscheduled.
    pub unschedulable: Option<String>,
    /// Unscheduled, and its volume is bound to a Kubernetes node that no longer exists.
    pub lost_volume: bool,
}

impl ObservedPod {
    /// A Ready, running pod with an address and nothing else of note (tests start from it).
    pub fn ready(name: &str, zone: &str, ordinal: i32) -> ObservedPod {
        let last = name.bytes().fold(0u8, |h, b| h.wrapping_mul(31).wrapping_add(b));
        ObservedPod {
            name: name.into(),
            zone: zone.into(),
            ordinal,
            ip: Some(format!("10.0.{last}.{}", ordinal + 1)),
            ready: true,
            terminating: false,
            uid: None,
            revision: None,
            replace: false,
            unschedulable: None,
            lost_volume: false,
        }
    }
}

/// A zone's StatefulSet as observed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedStatefulSet {
    /// `spec.replicas`: what the operator last set.
    pub replicas: i32,
    /// `status.readyReplicas`.
    pub ready_replicas: i32,
    /// `status.observedGeneration` has reached `metadata.generation`.
    pub caught_up: bool,
    /// `status.updateRevision`: the revision of its current pod template.
    pub update_revision: Option<String>,
    /// The storage its volume claim template requests.
    pub claim_size: Option<String>,
}

/// A node's volume claim as observed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedPvc {
    /// Claim name.
    pub name: String,
    /// Zone label.
    pub zone: String,
    /// Ordinal of the pod it belongs to.
    pub ordinal: i32,
    /// Being deleted.
    pub terminating: bool,
    /// Storage requested.
    pub requested: Option<String>,
    /// Storage the volume has (`status.capacity`).
    pub capacity: Option<String>,
    /// Whether its StorageClass allows expansion; `None` when the class is unknown.
    pub expandable: Option<bool>,
    /// Its StorageClass (the default class when it names none).
    pub class: Option<String>,
    /// Bound to a volume (only a bound claim can be resized).
    pub bound: bool,
    /// Its volume grew but the filesystem grows only when the pod restarts.
    pub filesystem_resize_pending: bool,
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
    /// Pods to delete this pass: the next pod of a rollout, or a node being replaced.
    pub delete_pods: Vec<String>,
    /// The rollout of the pod template, for the status.
    pub rollout: Option<RolloutStatus>,
    /// Claims to expand to a new size: (claim, size).
    pub expand_pvcs: Vec<(String, String)>,
    /// Zones whose StatefulSet is deleted with its pods orphaned, to be created again with the
    /// new volume claim template (a StatefulSet's claim template cannot change in place).
    pub recreate_statefulsets: Vec<String>,
    /// The volume size each zone's StatefulSet is rendered with: the spec's once its claims are
    /// expanded, the one it has until then.
    pub claim_sizes: BTreeMap<String, String>,
    /// Volume expansion, for the status.
    pub storage: Option<StorageStatus>,
    /// `spec.paused`: nothing may be changed this pass.
    pub paused: bool,
}

/// `1h2m3s` style, whole seconds.
pub fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
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
        // A new cluster: no pod and no node knows of any member. Its seeds (ordinal 0 of each
        // zone) start together; a zone added to a running cluster starts empty and grows one
        // node at a time like any other.
        let bootstrap = observed.pods.is_empty() && observed.ring.members.is_empty();
        let current = zones
            .iter()
            .map(|(zone, desired)| {
                let now = match observed.statefulsets.get(zone) {
                    Some(sts) => sts.replicas,
                    None if bootstrap => (*desired).min(1),
                    // Deleted to be created again (a new claim template) with its pods
                    // orphaned: as many as it had, counting a pod that is gone meanwhile but
                    // whose node is still a member.
                    None => {
                        let members = observed
                            .ring
                            .members
                            .iter()
                            .filter(|(_, m)| m.membership != Membership::Left)
                            .filter_map(|(id, _)| crate::render::ordinal_of(cluster, zone, id));
                        observed
                            .pods
                            .iter()
                            .filter(|p| &p.zone == zone)
                            .map(|p| p.ordinal)
                            .chain(members)
                            .map(|ordinal| ordinal + 1)
                            .max()
                            .unwrap_or(0)
                    }
                };
                (zone.clone(), now)
            })
            .collect();
        Planner { cluster, spec, observed, zones, current, plan: Plan::default() }
    }

    fn run(mut self) -> Plan {
        if self.spec.paused {
            return self.paused();
        }
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
        let rollout = crate::rollout::plan(self.cluster, self.spec, self.observed);
        self.plan.rollout = rollout.status.clone();
        // A lost node is replaced even while a leave is in flight: the leave may be waiting
        // on transfers to that very node.
        let lost = self.observed.pods.iter().any(|p| self.replacing(&p.name) && !p.ready);
        let membership =
            (lost && self.replace()) || self.finish_leaves() || (!lost && self.replace());
        let busy = membership || self.roll(rollout) || self.scale_down() || self.scale_up();
        self.resize_storage(busy);
        self.clean_volumes();
        self.finish();
        self.plan
    }

    /// `spec.paused`: every zone keeps what it has, nothing is called or deleted.
    fn paused(mut self) -> Plan {
        for (zone, _) in self.zones.clone() {
            let now = self.current[&zone];
            match self.spec.zone(&zone) {
                Some(_) => {
                    self.plan.replicas.insert(zone.clone(), now);
                }
                None => {
                    self.plan.removed_zones.insert(zone.clone(), RemovedZone::Replicas(now));
                }
            }
        }
        self.plan.rollout = crate::rollout::plan(self.cluster, self.spec, self.observed).status;
        self.plan.paused = true;
        self.plan.progress = Some(Progress {
            reason: "Paused",
            message: "spec.paused is true: the operator changes nothing (no scaling, rollout, \
                      removal or resize) until it is set to false"
                .into(),
        });
        self.plan
    }

    /// The grace period before a node that does not answer is removed without its cooperation.
    fn force_remove_after(&self) -> Duration {
        self.spec.failure.force_remove_after().unwrap_or(Duration::from_secs(300))
    }

    /// Pods to replace: annotated `dynamokv.io/replace=true`, or (with
    /// `failure.replaceLostVolumes`) stuck because their volume's Kubernetes node is gone.
    fn replacing(&self, node: &str) -> bool {
        self.pod(node)
            .is_some_and(|p| p.replace || (self.spec.failure.replace_lost_volumes && p.lost_volume))
    }

    /// A running node other than `node` to send an admin call through.
    fn other_node(&self, node: &str) -> Option<String> {
        self.observed
            .pods
            .iter()
            .filter(|p| p.ready && !p.terminating && p.name != node)
            .filter(|p| self.observed.ring.members.get(&p.name).is_some_and(|m| m.reachable))
            .find_map(|p| p.ip.clone())
    }

    /// Rule 2, replacing a node whose volume or machine is lost: remove its member by force
    /// (never one that any node finds alive), then delete its claim and pod so its StatefulSet
    /// creates both again and a new, empty node joins and receives its partitions. Returns true
    /// while a replacement is under way.
    fn replace(&mut self) -> bool {
        let Some(pod) = self.observed.pods.iter().find(|p| self.replacing(&p.name)).cloned() else {
            return false;
        };
        let node = pod.name.clone();
        let why = if pod.replace {
            "annotated dynamokv.io/replace=true".to_string()
        } else {
            format!(
                "its volume is bound to a Kubernetes node that no longer exists ({})",
                pod.unschedulable.as_deref().unwrap_or("unschedulable")
            )
        };
        match self.membership(&node) {
            None | Some(Membership::Left) if self.observed.ring.answered == 0 || pod.ready => {
                let problem = format!(
                    "cannot replace {node} ({why}): {}",
                    if pod.ready {
                        "its pod is Ready; a running node is not replaced (remove the annotation)"
                    } else {
                        "no node answers its admin API, so whether it still holds data is unknown; check that \
                         the operator reaches the nodes' peer port 7071"
                    }
                );
                self.plan.problems.push(problem);
                return false;
            }
            None | Some(Membership::Left) => {
                self.plan.delete_pods.push(node.clone());
                let claim = crate::render::pvc_name(self.cluster, &pod.zone, pod.ordinal);
                if self.observed.pvcs.iter().any(|v| v.name == claim && !v.terminating) {
                    self.plan.delete_pvcs.push(claim);
                }
                self.progress(
                    "ReplacingNode",
                    format!("replacing {node} ({why}): it is out of the ring; deleting its claim and pod so a new, empty node takes its place"),
                );
            }
            Some(Membership::Leaving) => {
                let ring = &self.observed.ring;
                self.progress(
                    "ReplacingNode",
                    format!(
                        "replacing {node} ({why}): its partitions move from the other replicas ({} pending, {} transfer(s) active)",
                        ring.pending_partitions, ring.active_transfers
                    ),
                );
            }
            Some(_) => {
                let grace = self.force_remove_after();
                let member = self.observed.ring.members[&node].clone();
                if member.reachable || member.seen_up_by > 0 {
                    self.plan.problems.push(format!(
                        "{node} is to be replaced ({why}) but is alive ({} node(s) reach it): a live node is \
                         never removed by force; remove the annotation, or lower its zone's replicas to decommission it",
                        member.seen_up_by + usize::from(member.reachable)
                    ));
                    return false;
                }
                let gone =
                    if pod.replace { member.seen_down_by > 0 } else { member.gone_for(grace) };
                if !gone {
                    self.progress(
                        "ReplacingNode",
                        format!(
                            "replacing {node} ({why}): waiting until every node that answers finds it down{}",
                            if pod.replace { String::new() } else { format!(" for {}", humanize(grace)) }
                        ),
                    );
                    return true;
                }
                match self.other_node(&node) {
                    Some(ip) => {
                        self.plan.decommission_call = Some(DecommissionCall {
                            address: crate::render::node_address(&ip),
                            node: node.clone(),
                            force: true,
                        });
                        let message =
                            format!("replacing {node} ({why}): removing it from the ring by force");
                        self.decommission_status(&pod.zone, &node, "requested", message.clone());
                        self.progress("ReplacingNode", message);
                    }
                    None => {
                        let problem = format!(
                            "cannot replace {node}: no running node answers to remove it through"
                        );
                        self.plan.problems.push(problem.clone());
                        self.progress("ReplacingNode", problem);
                    }
                }
            }
        }
        true
    }

    /// Rule 3: the next step of a rolling change of the pod template. Returns true while a
    /// rollout is unfinished (no scaling starts meanwhile).
    fn roll(&mut self, rollout: crate::rollout::Rollout) -> bool {
        if !rollout.unfinished {
            return false;
        }
        let message = rollout.status.as_ref().map(|s| s.message.clone()).unwrap_or_default();
        if let Some(pod) = rollout.restart {
            self.plan.delete_pods.push(pod);
        }
        self.progress("RollingUpdate", message);
        true
    }

    /// Rule 8: expands every bound claim to `storage.size` when the spec grew it, then has each
    /// zone's StatefulSet created again with the new claim template (pods orphaned, not
    /// restarted): one zone per pass, only while nothing else is under way and every pod is
    /// Ready. Until then each StatefulSet is rendered with the claim template it has (the API
    /// server refuses a change of it).
    fn resize_storage(&mut self, busy: bool) {
        let want = self.spec.storage.size.0.clone();
        if quantity::bytes(&want).is_none() {
            self.plan.problems.push(format!(
                "storage.size '{want}' is not a size this operator can compare; write it like 10Gi or 500G"
            ));
        }
        let mut claims = 0;
        let mut expanded = 0;
        let mut blocked = BTreeSet::new();
        let mut offline = Vec::new();
        for pvc in &self.observed.pvcs {
            let top = self.current.get(&pvc.zone).copied().unwrap_or(0);
            if pvc.terminating || pvc.ordinal >= top || self.spec.zone(&pvc.zone).is_none() {
                continue;
            }
            claims += 1;
            let requested = pvc.requested.as_deref().unwrap_or(&want);
            if quantity::greater(requested, &want) == Some(true) {
                self.plan.problems.push(format!(
                    "storage.size {want} is smaller than claim {} ({requested}): volumes cannot shrink; set it back to at least {requested}",
                    pvc.name
                ));
                blocked.insert(pvc.zone.clone());
                continue;
            }
            if quantity::greater(&want, requested) == Some(true) {
                blocked.insert(pvc.zone.clone());
                let class = pvc.class.as_deref().unwrap_or("(the default class)");
                match pvc.expandable {
                    // An unbound claim cannot be resized; it is expanded once bound.
                    _ if !pvc.bound => {}
                    Some(true) => self.plan.expand_pvcs.push((pvc.name.clone(), want.clone())),
                    Some(false) => self.plan.problems.push(format!(
                        "cannot grow claim {} to {want}: StorageClass {class} does not allow volume expansion \
                         (allowVolumeExpansion is not true); set storage.size back to {requested}, or expand the volumes \
                         outside Kubernetes",
                        pvc.name
                    )),
                    None => self.plan.problems.push(format!(
                        "cannot grow claim {} to {want}: StorageClass {class} is not found (or the operator may not \
                         list StorageClasses: check its ClusterRole)",
                        pvc.name
                    )),
                }
                continue;
            }
            if pvc.filesystem_resize_pending {
                offline.push(pvc.name.clone());
            }
            // Unbound claims are provisioned at their request; bound ones have grown once their
            // capacity reaches it.
            if pvc.capacity.as_deref().is_none_or(|c| quantity::greater(&want, c) != Some(true)) {
                expanded += 1;
            }
        }
        let all_ready = self.observed.pods.iter().all(|p| p.ready && !p.terminating);
        let mut recreate = !busy && all_ready && self.plan.delete_pods.is_empty();
        let mut behind = Vec::new();
        for zone in &self.spec.zones {
            let Some(sts) = self.observed.statefulsets.get(&zone.name) else {
                self.plan.claim_sizes.insert(zone.name.clone(), want.clone());
                recreate = false;
                continue;
            };
            recreate &= sts.caught_up;
            let have = sts.claim_size.clone().unwrap_or_else(|| want.clone());
            if quantity::greater(&want, &have) == Some(true) {
                behind.push(zone.name.clone());
            }
            self.plan.claim_sizes.insert(zone.name.clone(), have);
        }
        if recreate {
            if let Some(zone) = behind.iter().find(|z| !blocked.contains(*z)) {
                self.plan.recreate_statefulsets.push(zone.clone());
            }
        }
        if claims > 0 && (expanded < claims || !behind.is_empty()) {
            let message = if !self.plan.expand_pvcs.is_empty() {
                format!("expanding {} claim(s) to {want}", self.plan.expand_pvcs.len())
            } else if !behind.is_empty() && !blocked.is_empty() {
                "waiting for the claims to be expanded".to_string()
            } else if !behind.is_empty() {
                format!(
                    "re-creating the StatefulSets of {} with the new volume size, one at a time (pods keep running)",
                    behind.join(", ")
                )
            } else if !offline.is_empty() {
                format!(
                    "the volumes of {} finish growing when their pod restarts (the driver resizes filesystems offline): \
                     restart the cluster with the dynamokv.io/restartedAt annotation",
                    offline.join(", ")
                )
            } else {
                format!("waiting for the volumes to reach {want}")
            };
            self.plan.storage = Some(StorageStatus {
                size: want.clone(),
                expanded_claims: expanded,
                total_claims: claims,
                message: message.clone(),
            });
            let stuck = self.plan.problems.iter().any(|p| p.contains("cannot grow claim"));
            if !stuck {
                self.progress(
                    "ResizingStorage",
                    format!("{message} ({expanded}/{claims} claims expanded)"),
                );
            }
        }
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
            if pod.ordinal < top && pod.ready && !self.replacing(&pod.name) {
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
            if self.replacing(&node) {
                continue;
            }
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

    /// Rule 4. Returns true when a scale-down is under way or waiting.
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
        // A decommission moves data: it starts only when every other node is up to serve and
        // receive it, and no earlier move is still running.
        if let Some(pod) =
            self.observed.pods.iter().find(|p| p.name != node && (!p.ready || p.terminating))
        {
            waiting(self, format!("waiting for {} to be Ready first", pod.name));
            return true;
        }
        let ring = &self.observed.ring;
        if ring.pending_partitions > 0 || ring.active_transfers > 0 {
            let why = format!(
                "waiting for partitions to settle first ({} pending, {} transfer(s) active)",
                ring.pending_partitions, ring.active_transfers
            );
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
                if own.is_none() {
                    // Removal without its cooperation: only of a node that is really gone.
                    let grace = self.force_remove_after();
                    let member = self.observed.ring.members[&node].clone();
                    if member.seen_up_by > 0 {
                        let why = format!(
                            "{node} does not answer the operator but {} node(s) reach it: it is not removed by force \
                             while any node finds it alive",
                            member.seen_up_by
                        );
                        self.plan.problems.push(why.clone());
                        waiting(self, why);
                        return true;
                    }
                    if !member.gone_for(grace) {
                        let down = member
                            .down_for
                            .map_or("not yet seen down by the others".to_string(), |d| {
                                format!("down for {}", humanize(d))
                            });
                        waiting(
                            self,
                            format!(
                                "{node} does not answer ({down}); it is removed by force once every node finds it \
                                 down for {} (failure.forceRemoveAfter)",
                                humanize(grace)
                            ),
                        );
                        return true;
                    }
                }
                let via = match own.clone() {
                    Some(ip) => Some(ip),
                    None => self.other_node(&node),
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

    /// Rule 5. Returns true when a node was added or one is waiting to be.
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

    /// Rule 6.
    fn clean_volumes(&mut self) {
        if self.spec.persistent_volume_claim_retention_policy.when_scaled != RetentionPolicy::Delete
        {
            return;
        }
        if self.observed.ring.answered == 0 {
            // Whether a claim's node still holds data is unknown: delete nothing.
            return;
        }
        for pvc in &self.observed.pvcs {
            let kept = self.current.get(&pvc.zone).copied().unwrap_or(0);
            let node = pod_name(self.cluster, &pvc.zone, pvc.ordinal);
            let member = matches!(
                self.membership(&node),
                Some(Membership::Joining | Membership::Normal | Membership::Leaving)
            );
            if pvc.ordinal >= kept && !pvc.terminating && self.pod(&node).is_none() && !member {
                self.plan.delete_pvcs.push(pvc.name.clone());
            }
        }
    }

    /// Rule 7 and the outputs.
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
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    /// A test world: zones with (StatefulSet replicas, desired replicas), all pods ready and
    /// normal members unless changed.
    struct World {
        spec: DynamoClusterSpec,
        observed: Observed,
        members: Vec<(String, String, &'static str)>,
        /// Nodes the others find down, with for how long (ms).
        down: BTreeMap<String, u64>,
        /// Pods with an address whose admin API does not answer.
        silent: BTreeSet<String>,
    }

    impl World {
        fn new(zones: &[(&str, i32, i32)]) -> World {
            let spec = DynamoClusterSpec::with_zones(
                zones.iter().map(|(z, _, want)| ZoneSpec::new(z, *want)).collect(),
            );
            let mut world = World {
                spec,
                observed: Observed::default(),
                members: Vec::new(),
                down: BTreeMap::new(),
                silent: BTreeSet::new(),
            };
            for (zone, now, _) in zones {
                world.observed.statefulsets.insert(
                    zone.to_string(),
                    ObservedStatefulSet {
                        replicas: *now,
                        ready_replicas: *now,
                        caught_up: true,
                        ..ObservedStatefulSet::default()
                    },
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
                ..Default::default()
            });
            self.observed.pvcs.push(ObservedPvc {
                name: format!("data-{name}"),
                zone: zone.into(),
                ordinal,
                terminating: false,
                ..Default::default()
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
                .filter(|p| p.ip.is_some() && !self.silent.contains(&p.name))
                .map(|p| {
                    let mut r = report(&p.name, &members);
                    for node in &mut r.nodes {
                        if let Some(ms) = self.down.get(&node.id) {
                            (node.reachable, node.down_for_ms) = (false, *ms);
                        }
                    }
                    r
                })
                .collect();
            self.observed.ring = RingView::merge(&reports);
            plan("demo", &self.spec, &self.observed)
        }

        /// `node`'s process is gone: no address, not Ready, found down by the others for `ms`.
        fn crash(&mut self, node: &str, ms: u64) {
            self.pod_mut(node).ip = None;
            self.pod_mut(node).ready = false;
            self.down.insert(node.into(), ms);
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
                address: "10.0.0.3:7071".into(),
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
        w.crash("demo-a-2", 301_000);
        let p = w.plan();
        assert_eq!(p.decommission_call.unwrap().node, "demo-a-2");
    }

    #[test]
    fn a_down_node_is_removed_through_another_only_after_the_grace_period() {
        let mut w = World::new(&[("a", 3, 2)]);
        w.crash("demo-a-2", 20_000);
        let p = w.plan();
        assert_eq!(p.decommission_call, None, "one missed call is not a dead node");
        let message = p.progress.unwrap().message;
        assert!(message.contains("down for 20s"), "{message}");
        assert!(message.contains("5m (failure.forceRemoveAfter)"), "{message}");

        w.down.insert("demo-a-2".into(), 300_000);
        assert_eq!(
            w.plan().decommission_call,
            Some(DecommissionCall {
                address: "10.0.0.1:7071".into(),
                node: "demo-a-2".into(),
                force: true
            })
        );

        // A shorter grace set in the spec.
        let mut w = World::new(&[("a", 3, 2)]);
        w.spec.failure.force_remove_after = "15s".into();
        w.crash("demo-a-2", 16_000);
        assert!(w.plan().decommission_call.unwrap().force);
    }

    #[test]
    fn a_node_any_member_finds_alive_is_never_removed_by_force() {
        let mut w = World::new(&[("a", 3, 2)]);
        // Its admin API is silent to the operator, but its peers still reach it.
        w.silent.insert("demo-a-2".into());
        let p = w.plan();
        assert_eq!(p.decommission_call, None);
        assert!(p.problems[0].contains("2 node(s) reach it"), "{:?}", p.problems);

        // Once every node that answers finds it down for the grace period, it goes by force.
        w.down.insert("demo-a-2".into(), 400_000);
        let call = w.plan().decommission_call.unwrap();
        assert_eq!(call.address, "10.0.0.1:7071");
        assert!(call.force, "a node that does not answer is removed without its cooperation");
    }

    #[test]
    fn scale_down_waits_for_every_other_pod_and_for_settled_partitions() {
        let mut w = World::new(&[("a", 3, 2)]);
        w.pod_mut("demo-a-0").ready = false;
        let p = w.plan();
        assert_eq!(p.decommission_call, None);
        assert_eq!(p.decommission.unwrap().message, "waiting for demo-a-0 to be Ready first");

        let mut w = World::new(&[("a", 3, 2)]);
        w.plan();
        w.observed.ring.pending_partitions = 4;
        let p = plan("demo", &w.spec, &w.observed);
        assert_eq!(p.decommission_call, None);
        assert!(p.decommission.unwrap().message.contains("4 pending"));
    }

    #[test]
    fn scaling_waits_for_an_unfinished_rollout() {
        for (now, want) in [(3, 2), (2, 3)] {
            let mut w = World::new(&[("a", now, want)]);
            let sts = w.observed.statefulsets.get_mut("a").unwrap();
            sts.update_revision = Some("new".into());
            for pod in &mut w.observed.pods {
                pod.revision = Some("old".into());
            }
            let p = w.plan();
            assert_eq!(p.decommission_call, None);
            assert_eq!(p.added, None);
            assert_eq!(replicas(&p), [("a", now)]);
            assert_eq!(p.progress.unwrap().reason, "RollingUpdate");
            assert_eq!(p.delete_pods, [format!("demo-a-{}", now - 1)]);
        }
    }

    #[test]
    fn a_paused_cluster_changes_nothing() {
        let mut w = World::new(&[("a", 2, 3), ("gone", 1, 0)]);
        w.spec.zones.retain(|z| z.name != "gone");
        w.spec.paused = true;
        w.pod_mut("demo-a-1").replace = true;
        let p = w.plan();
        assert_eq!(replicas(&p), [("a", 2)]);
        assert_eq!(p.removed_zones["gone"], RemovedZone::Replicas(1));
        assert_eq!((p.added, p.decommission_call), (None, None));
        assert!(p.delete_pods.is_empty() && p.delete_pvcs.is_empty() && p.expand_pvcs.is_empty());
        assert!(p.paused);
        assert_eq!(p.progress.unwrap().reason, "Paused");

        w.spec.paused = false;
        assert!(!w.plan().paused);
    }

    #[test]
    fn a_replaced_node_is_removed_by_force_then_its_claim_and_pod_deleted() {
        let mut w = World::new(&[("a", 2, 2), ("b", 1, 1)]);
        w.pod_mut("demo-a-0").replace = true;
        // Alive: refused.
        let p = w.plan();
        assert_eq!(p.decommission_call, None);
        assert!(p.problems[0].contains("is alive"), "{:?}", p.problems);
        assert!(p.delete_pods.is_empty());

        // Its machine is gone: asked at once (the annotation is the person's word), by force.
        w.crash("demo-a-0", 2_000);
        let p = w.plan();
        let call = p.decommission_call.unwrap();
        assert_eq!((call.node.as_str(), call.force), ("demo-a-0", true));
        assert_ne!(call.address, "", "through another node");
        assert_eq!(p.progress.unwrap().reason, "ReplacingNode");

        w.set_membership("demo-a-0", "leaving");
        let p = w.plan();
        assert_eq!(p.decommission_call, None);
        assert_eq!(p.progress.unwrap().reason, "ReplacingNode");

        w.set_membership("demo-a-0", "left");
        let p = w.plan();
        assert_eq!(p.delete_pods, ["demo-a-0"]);
        assert_eq!(p.delete_pvcs, ["data-demo-a-0"]);
        assert_eq!(replicas(&p), [("a", 2), ("b", 1)], "the StatefulSet keeps its size");
        assert!(p.problems.is_empty(), "{:?}", p.problems);

        // The StatefulSet created a new pod (no annotation) that has not joined yet: nothing
        // else starts, and the old left record raises no alarm.
        let pod = w.pod_mut("demo-a-0");
        (pod.replace, pod.ip) = (false, Some("10.0.9.9".into()));
        w.down.clear();
        let p = w.plan();
        assert!(p.delete_pods.is_empty() && p.decommission_call.is_none());
        assert!(p.problems.is_empty(), "{:?}", p.problems);
    }

    #[test]
    fn lost_volumes_are_replaced_automatically_only_when_asked_and_after_the_grace() {
        let mut w = World::new(&[("a", 2, 2), ("b", 1, 1)]);
        w.crash("demo-a-0", 10_000);
        let pod = w.pod_mut("demo-a-0");
        pod.lost_volume = true;
        pod.unschedulable = Some("Unschedulable: volume node affinity conflict".into());
        let p = w.plan();
        assert_eq!(p.decommission_call, None, "replaceLostVolumes is off");

        w.spec.failure.replace_lost_volumes = true;
        let p = w.plan();
        assert_eq!(p.decommission_call, None, "down for 10s only");
        assert!(p.progress.unwrap().message.contains("for 5m"));

        w.down.insert("demo-a-0".into(), 300_000);
        let call = w.plan().decommission_call.unwrap();
        assert_eq!((call.node.as_str(), call.force), ("demo-a-0", true));
    }

    #[test]
    fn growing_storage_expands_claims_then_recreates_the_statefulsets() {
        let mut w = World::new(&[("a", 2, 2), ("b", 1, 1)]);
        for sts in w.observed.statefulsets.values_mut() {
            sts.claim_size = Some("10Gi".into());
        }
        for pvc in &mut w.observed.pvcs {
            pvc.requested = Some("10Gi".into());
            pvc.capacity = Some("10Gi".into());
            pvc.expandable = Some(true);
            pvc.bound = true;
        }
        assert_eq!(w.plan().storage, None, "nothing to do at the same size");

        w.spec.storage.size = Quantity("20Gi".into());
        let p = w.plan();
        assert_eq!(p.expand_pvcs.len(), 3);
        assert_eq!(p.expand_pvcs[0], ("data-demo-a-0".to_string(), "20Gi".to_string()));
        assert!(p.recreate_statefulsets.is_empty(), "claims first");
        assert_eq!(p.claim_sizes["a"], "10Gi", "the template keeps its size until then");
        assert_eq!(p.progress.unwrap().reason, "ResizingStorage");

        // Requested, not yet grown: the StatefulSets are re-created with the new template.
        for pvc in &mut w.observed.pvcs {
            pvc.requested = Some("20Gi".into());
        }
        let p = w.plan();
        assert!(p.expand_pvcs.is_empty());
        assert_eq!(p.recreate_statefulsets, ["a"], "one zone at a time");
        assert_eq!(p.storage.as_ref().unwrap().expanded_claims, 0);

        // While a pod is down, no StatefulSet is re-created.
        w.pod_mut("demo-b-0").ready = false;
        assert!(w.plan().recreate_statefulsets.is_empty());
        w.pod_mut("demo-b-0").ready = true;

        // Re-created, volumes grown: settled. Meanwhile a's top pod went away: its node is
        // still a member, so the zone keeps its size and its claim.
        w.observed.statefulsets.remove("a");
        w.observed.pods.retain(|p| p.name != "demo-a-1");
        let p = w.plan();
        assert_eq!(replicas(&p)[0], ("a", 2), "a missing StatefulSet keeps its nodes' count");
        assert_eq!(p.claim_sizes["a"], "20Gi");
        assert!(p.delete_pvcs.is_empty(), "{:?}", p.delete_pvcs);
        assert!(p.recreate_statefulsets.is_empty(), "b waits for a to be back");
        w.add_pod("a", 1, "normal");
        w.observed.pvcs.pop();
        for sts in w.observed.statefulsets.values_mut() {
            sts.claim_size = Some("20Gi".into());
        }
        w.observed.statefulsets.insert(
            "a".into(),
            ObservedStatefulSet {
                replicas: 2,
                ready_replicas: 2,
                caught_up: true,
                claim_size: Some("20Gi".into()),
                ..ObservedStatefulSet::default()
            },
        );
        for pvc in &mut w.observed.pvcs {
            pvc.capacity = Some("20Gi".into());
        }
        let p = w.plan();
        assert_eq!((p.storage, p.progress), (None, None));
    }

    #[test]
    fn storage_that_cannot_grow_or_would_shrink_is_reported() {
        let mut w = World::new(&[("a", 1, 1)]);
        w.observed.statefulsets.get_mut("a").unwrap().claim_size = Some("10Gi".into());
        w.observed.pvcs[0].requested = Some("10Gi".into());
        w.observed.pvcs[0].expandable = Some(false);
        w.observed.pvcs[0].bound = true;
        w.spec.storage.size = Quantity("20Gi".into());
        let p = w.plan();
        assert!(p.expand_pvcs.is_empty() && p.recreate_statefulsets.is_empty());
        assert!(p.problems[0].contains("does not allow volume expansion"), "{:?}", p.problems);
        assert_eq!(p.claim_sizes["a"], "10Gi");

        w.spec.storage.size = Quantity("5Gi".into());
        let p = w.plan();
        assert!(p.problems[0].contains("volumes cannot shrink"), "{:?}", p.problems);
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
            ..Default::default()
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
