//! Rolling changes of the pod template (a new image, node settings, resources, an operator
//! upgrade that renders differently, or a restart asked for with `dynamokv.io/restartedAt`),
//! one pod at a time across the whole cluster. The StatefulSets use the `OnDelete` strategy, so
//! Kubernetes never restarts a pod by itself: each pass decides afresh, from what is observed,
//! whether one pod may be deleted now (its StatefulSet recreates it on the new revision). Nothing
//! is remembered between passes: an operator restarted in the middle resumes where it was.
//!
//! Order: zones in spec order; within a zone, the highest ordinal first (as a StatefulSet's own
//! rolling update does), so the seeds (ordinal 0) go last.
//!
//! A pod is deleted only when
//! 1. no pod of the cluster is terminating or missing (a restart in flight finishes first);
//! 2. every other pod is Ready; the pod to restart may itself be down (it is already out, and
//!    its new revision may be the fix);
//! 3. every node is a `normal` ring member, and no partition is moving;
//! 4. no node holds more than [`HINT_THRESHOLD`] hints for any member (the hints written while
//!    the last restarted node was down are delivered before the next one goes down).
//!
//! Pure: no I/O.

use crate::admin::Membership;
use crate::crd::{DynamoClusterSpec, RolloutStatus};
use crate::scaling::{Observed, ObservedPod};

/// Hints (keys) any node may still hold for a member when the next pod is restarted. A few
/// writes arrive between a node's return and the next check; a backlog above this means the
/// handoff to the restarted node has not caught up, and restarting another would leave keys
/// with fewer live copies.
pub const HINT_THRESHOLD: u64 = 100;

/// This pass's rollout decision.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rollout {
    /// For the status; `None` before any StatefulSet has a revision.
    pub status: Option<RolloutStatus>,
    /// The pod to delete now (its StatefulSet recreates it on the new revision).
    pub restart: Option<String>,
    /// True while some pod does not run its StatefulSet's update revision.
    pub unfinished: bool,
}

/// Decides this pass's step of the rollout of the cluster named `cluster`.
pub fn plan(cluster: &str, spec: &DynamoClusterSpec, observed: &Observed) -> Rollout {
    let mut revisions = Vec::new();
    let mut pods: Vec<(&ObservedPod, bool)> = Vec::new();
    let mut missing = Vec::new();
    let mut stale = Vec::new();
    for zone in &spec.zones {
        let Some(sts) = observed.statefulsets.get(&zone.name) else {
            // Being re-created (orphaned pods): its revision is unknown for now.
            if observed.pods.iter().any(|p| p.zone == zone.name) {
                stale.push(zone.name.as_str());
            }
            continue;
        };
        let Some(target) = sts.update_revision.as_deref() else {
            stale.push(zone.name.as_str());
            continue;
        };
        if !sts.caught_up {
            stale.push(zone.name.as_str());
        }
        revisions.push(target.to_string());
        let mut zone_pods: Vec<&ObservedPod> = observed
            .pods
            .iter()
            .filter(|p| p.zone == zone.name && p.ordinal < sts.replicas)
            .collect();
        zone_pods.sort_by_key(|p| std::cmp::Reverse(p.ordinal));
        for ordinal in (0..sts.replicas).rev() {
            if !zone_pods.iter().any(|p| p.ordinal == ordinal) {
                missing.push(crate::render::pod_name(cluster, &zone.name, ordinal));
            }
        }
        pods.extend(zone_pods.into_iter().map(|p| {
            let updated = !p.terminating && p.revision.as_deref() == Some(target);
            (p, updated)
        }));
    }
    if revisions.is_empty() {
        // No StatefulSet reports a revision yet (being created, or an API without it).
        return Rollout::default();
    }
    let total = pods.len() as i32 + missing.len() as i32;
    let updated = pods.iter().filter(|(_, u)| *u).count() as i32;
    let mut status = RolloutStatus {
        target_revision: revisions.join(","),
        updated_pods: updated,
        total_pods: total,
        restarting: None,
        message: String::new(),
    };
    let outdated: Vec<&ObservedPod> =
        pods.iter().filter(|(_, u)| !u).map(|(p, _)| *p).filter(|p| !p.terminating).collect();
    let terminating = pods.iter().map(|(p, _)| *p).find(|p| p.terminating);
    // A StatefulSet that has not processed its latest spec may have a new revision to roll.
    let unfinished = !outdated.is_empty() || terminating.is_some() || !stale.is_empty();
    let mut decide = |message: String, restarting: Option<String>, restart: bool| {
        status.message = message;
        status.restarting = restarting.clone();
        Rollout {
            status: Some(status.clone()),
            restart: restarting.filter(|_| restart),
            unfinished,
        }
    };
    if !unfinished {
        let message = if updated == total {
            format!("all {total} pods run the target revision")
        } else {
            format!("{updated}/{total} pods run the target revision; the others are being created on it")
        };
        return decide(message, None, false);
    }
    if !stale.is_empty() {
        let message = format!(
            "waiting for the StatefulSets of {} to catch up with their spec",
            stale.join(", ")
        );
        return decide(message, None, false);
    }
    // Pods outside the rollout (a zone being removed, a pod above its StatefulSet's size)
    // are nodes too: one of them down is one node down.
    let others: Vec<&ObservedPod> =
        observed.pods.iter().filter(|p| !pods.iter().any(|(q, _)| q.name == p.name)).collect();
    if let Some(pod) = others.iter().find(|p| !p.ready || p.terminating) {
        let message =
            format!("waiting for {} to be Ready before restarting another node", pod.name);
        return decide(message, None, false);
    }
    if let Some(pod) = terminating {
        let message = format!("{} is restarting: waiting for it to terminate", pod.name);
        return decide(message, Some(pod.name.clone()), false);
    }
    if let Some(name) = missing.first() {
        let message = format!(
            "waiting for pod {name} to be recreated (if it does not appear, see the StatefulSet's FailedCreate events)"
        );
        return decide(message, Some(name.clone()), false);
    }
    let unready: Vec<&ObservedPod> = pods.iter().map(|(p, _)| *p).filter(|p| !p.ready).collect();
    let updated_unready = unready.iter().find(|p| !outdated.iter().any(|o| o.name == p.name));
    if let Some(pod) = updated_unready {
        let message = match &pod.unschedulable {
            Some(why) => format!(
                "{} runs the target revision but cannot be scheduled ({why}); if its machine or volume is \
                 lost: kubectl annotate pod {} dynamokv.io/replace=true",
                pod.name, pod.name
            ),
            None => format!("{} runs the target revision: waiting for it to be Ready", pod.name),
        };
        return decide(message, Some(pod.name.clone()), false);
    }
    if unready.len() > 1 {
        let names: Vec<&str> = unready.iter().map(|p| p.name.as_str()).collect();
        let message = format!(
            "{} are not Ready: restarting a pod now would take more than one node down",
            names.join(", ")
        );
        return decide(message, None, false);
    }
    // Either every pod is Ready, or the one that is not is itself outdated: restart it first.
    let next = unready.first().copied().unwrap_or(outdated[0]);
    for (pod, _) in &pods {
        if pod.name == next.name {
            continue;
        }
        if observed.ring.answered == 0 {
            let message =
                "no node answers its admin API, so the ring is unknown: waiting (check that \
                           the operator reaches the nodes' peer port 7071)"
                    .to_string();
            return decide(message, None, false);
        }
        match observed.ring.members.get(&pod.name) {
            Some(m) if m.membership == Membership::Normal && m.seen_down_by > 0 => {
                let message =
                    format!("waiting for {}: {} node(s) cannot reach it", pod.name, m.seen_down_by);
                return decide(message, None, false);
            }
            Some(m) if m.membership == Membership::Normal => {}
            member => {
                let state = member.map_or("not a ring member", |m| m.membership.as_str());
                let message =
                    format!("waiting for {} to be a normal member (it is {state})", pod.name);
                return decide(message, None, false);
            }
        }
    }
    let ring = &observed.ring;
    if ring.pending_partitions > 0 || ring.active_transfers > 0 {
        let message = format!(
            "waiting for partitions to settle ({} pending, {} transfer(s) active)",
            ring.pending_partitions, ring.active_transfers
        );
        return decide(message, None, false);
    }
    // Hints for nodes that are gone (left, removed) are not waited for: they are never
    // delivered and are dropped by the nodes in time.
    if let Some((target, hints)) = ring
        .hints_for
        .iter()
        .filter(|(target, _)| **target != next.name && pods.iter().any(|(p, _)| p.name == **target))
        .find(|(_, hints)| **hints > HINT_THRESHOLD)
    {
        let message = format!(
            "waiting for {hints} hinted write(s) held for {target} to be delivered (at most {HINT_THRESHOLD})"
        );
        return decide(message, None, false);
    }
    let message = format!("restarting {} ({updated}/{total} pods updated)", next.name);
    decide(message, Some(next.name.clone()), true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::tests::report;
    use crate::admin::RingView;
    use crate::crd::ZoneSpec;
    use crate::scaling::ObservedStatefulSet;

    /// Three zones of `per_zone` ready, normal pods on revision `old`, whose StatefulSets now
    /// want `new`.
    struct World {
        spec: DynamoClusterSpec,
        observed: Observed,
        members: Vec<(String, String, &'static str)>,
    }

    impl World {
        fn new(per_zone: i32) -> World {
            let zones = ["a", "b", "c"];
            let spec = DynamoClusterSpec::with_zones(
                zones.iter().map(|z| ZoneSpec::new(z, per_zone)).collect(),
            );
            let mut observed = Observed::default();
            let mut members = Vec::new();
            for zone in zones {
                observed.statefulsets.insert(
                    zone.into(),
                    ObservedStatefulSet {
                        replicas: per_zone,
                        ready_replicas: per_zone,
                        caught_up: true,
                        update_revision: Some(format!("demo-{zone}-new")),
                        claim_size: Some("10Gi".into()),
                    },
                );
                for ordinal in 0..per_zone {
                    let name = crate::render::pod_name("demo", zone, ordinal);
                    observed.pods.push(ObservedPod {
                        revision: Some(format!("demo-{zone}-old")),
                        ..ObservedPod::ready(&name, zone, ordinal)
                    });
                    members.push((name, zone.to_string(), "normal"));
                }
            }
            let mut w = World { spec, observed, members };
            w.refresh();
            w
        }

        fn refresh(&mut self) {
            let members: Vec<(&str, &str, &str)> =
                self.members.iter().map(|(a, b, c)| (a.as_str(), b.as_str(), *c)).collect();
            let reports: Vec<_> = self
                .observed
                .pods
                .iter()
                .filter(|p| p.ready)
                .map(|p| report(&p.name, &members))
                .collect();
            self.observed.ring = RingView::merge(&reports);
        }

        fn pod(&mut self, name: &str) -> &mut ObservedPod {
            self.observed.pods.iter_mut().find(|p| p.name == name).unwrap()
        }

        /// Carries out a restart the way Kubernetes does: the pod terminates, is recreated on
        /// the new revision, starts unready, then becomes Ready.
        fn restart(&mut self, name: &str) {
            self.pod(name).terminating = true;
            assert_eq!(
                plan("demo", &self.spec, &self.observed).restart,
                None,
                "waits while terminating"
            );
            self.observed.pods.retain(|p| p.name != name);
            assert_eq!(
                plan("demo", &self.spec, &self.observed).restart,
                None,
                "waits while missing"
            );
            let (zone, ordinal) = {
                let mut parts = name.rsplitn(2, '-');
                let ordinal: i32 = parts.next().unwrap().parse().unwrap();
                let zone = parts.next().unwrap().trim_start_matches("demo-").to_string();
                (zone, ordinal)
            };
            self.observed.pods.push(ObservedPod {
                revision: Some(format!("demo-{zone}-new")),
                ready: false,
                ..ObservedPod::ready(name, &zone, ordinal)
            });
            self.refresh();
            assert_eq!(
                plan("demo", &self.spec, &self.observed).restart,
                None,
                "waits while unready"
            );
            self.pod(name).ready = true;
            self.refresh();
        }
    }

    #[test]
    fn a_cluster_on_its_revision_has_nothing_to_roll() {
        let mut w = World::new(1);
        for pod in &mut w.observed.pods {
            pod.revision = Some(format!("demo-{}-new", pod.zone));
        }
        let r = plan("demo", &w.spec, &w.observed);
        assert!(!r.unfinished);
        assert_eq!(r.restart, None);
        let s = r.status.unwrap();
        assert_eq!((s.updated_pods, s.total_pods), (3, 3));
        assert_eq!(s.target_revision, "demo-a-new,demo-b-new,demo-c-new");
    }

    #[test]
    fn pods_restart_one_at_a_time_in_zone_order_highest_ordinal_first() {
        let mut w = World::new(2);
        let mut order = Vec::new();
        loop {
            let r = plan("demo", &w.spec, &w.observed);
            let Some(next) = r.restart else {
                assert!(!r.unfinished, "{:?}", r.status);
                break;
            };
            assert_eq!(r.status.as_ref().unwrap().restarting.as_deref(), Some(next.as_str()));
            order.push(next.clone());
            w.restart(&next);
        }
        assert_eq!(order, ["demo-a-1", "demo-a-0", "demo-b-1", "demo-b-0", "demo-c-1", "demo-c-0"]);
        let s = plan("demo", &w.spec, &w.observed).status.unwrap();
        assert_eq!((s.updated_pods, s.total_pods, s.restarting), (6, 6, None));
    }

    #[test]
    fn an_operator_restarted_mid_rollout_resumes_from_what_it_sees() {
        // Observed mid-way: demo-a-0 was recreated on the new revision and is not Ready yet.
        let mut w = World::new(1);
        w.pod("demo-a-0").revision = Some("demo-a-new".into());
        w.pod("demo-a-0").ready = false;
        w.refresh();
        let r = plan("demo", &w.spec, &w.observed);
        assert_eq!(r.restart, None);
        assert!(r.unfinished);
        assert_eq!(r.status.as_ref().unwrap().restarting.as_deref(), Some("demo-a-0"));
        w.pod("demo-a-0").ready = true;
        w.refresh();
        assert_eq!(plan("demo", &w.spec, &w.observed).restart.as_deref(), Some("demo-b-0"));
    }

    #[test]
    fn every_gate_holds_the_next_restart() {
        let base = World::new(1);
        let next = |w: &World| plan("demo", &w.spec, &w.observed);
        assert_eq!(next(&base).restart.as_deref(), Some("demo-a-0"));

        let mut w = World::new(1);
        w.members[1].2 = "joining";
        w.refresh();
        let r = next(&w);
        assert_eq!(r.restart, None);
        assert!(r.status.unwrap().message.contains("demo-b-0 to be a normal member"));

        let mut w = World::new(1);
        w.observed.ring.pending_partitions = 3;
        assert_eq!(next(&w).restart, None);

        let mut w = World::new(1);
        w.observed.ring.active_transfers = 1;
        assert_eq!(next(&w).restart, None);

        let mut w = World::new(1);
        w.observed.ring.hints_for.insert("demo-c-0".into(), HINT_THRESHOLD + 1);
        let r = next(&w);
        assert_eq!(r.restart, None);
        assert!(r.status.unwrap().message.contains("held for demo-c-0"));
        w.observed.ring.hints_for.insert("demo-c-0".into(), HINT_THRESHOLD);
        assert_eq!(next(&w).restart.as_deref(), Some("demo-a-0"), "at the threshold it goes on");
        w.observed.ring.hints_for.insert("demo-gone-0".into(), 10 * HINT_THRESHOLD);
        assert_eq!(next(&w).restart.as_deref(), Some("demo-a-0"), "hints for a removed node");

        let mut w = World::new(1);
        w.observed.statefulsets.get_mut("b").unwrap().caught_up = false;
        assert_eq!(next(&w).restart, None);
    }

    #[test]
    fn a_down_pod_that_is_outdated_is_restarted_first_but_never_a_second_one() {
        // A crash-looping node on the old image: restarting it takes no one else down.
        let mut w = World::new(1);
        w.pod("demo-b-0").ready = false;
        w.refresh();
        assert_eq!(plan("demo", &w.spec, &w.observed).restart.as_deref(), Some("demo-b-0"));

        // Two pods down: nothing is restarted.
        w.pod("demo-c-0").ready = false;
        w.refresh();
        let r = plan("demo", &w.spec, &w.observed);
        assert_eq!(r.restart, None);
        assert!(r.status.unwrap().message.contains("demo-b-0, demo-c-0 are not Ready"));

        // A pod down that is already updated: wait for it.
        let mut w = World::new(1);
        w.pod("demo-c-0").revision = Some("demo-c-new".into());
        w.pod("demo-c-0").ready = false;
        w.refresh();
        assert_eq!(plan("demo", &w.spec, &w.observed).restart, None);
    }

    #[test]
    fn nodes_outside_the_rollout_and_unreachable_ones_hold_it() {
        // A node of a zone being removed is down.
        let mut w = World::new(1);
        let gone = ObservedPod { ready: false, ..ObservedPod::ready("demo-gone-0", "gone", 0) };
        w.observed.pods.push(gone);
        let r = plan("demo", &w.spec, &w.observed);
        assert_eq!(r.restart, None);
        assert!(r.status.unwrap().message.contains("demo-gone-0"));

        // A zone whose StatefulSet is being re-created.
        let mut w = World::new(1);
        w.observed.statefulsets.remove("b");
        assert_eq!(plan("demo", &w.spec, &w.observed).restart, None);

        // A Ready pod its peers cannot reach.
        let mut w = World::new(1);
        w.observed.ring.members.get_mut("demo-c-0").unwrap().seen_down_by = 2;
        let r = plan("demo", &w.spec, &w.observed);
        assert_eq!(r.restart, None);
        assert!(r.status.unwrap().message.contains("2 node(s) cannot reach it"));
    }

    #[test]
    fn hints_held_for_the_pod_to_restart_do_not_hold_it() {
        // It is down and outdated; the hints for it are delivered once it is back.
        let mut w = World::new(1);
        w.pod("demo-a-0").ready = false;
        w.refresh();
        w.observed.ring.hints_for.insert("demo-a-0".into(), 5000);
        assert_eq!(plan("demo", &w.spec, &w.observed).restart.as_deref(), Some("demo-a-0"));
    }
}
