//! The status the operator writes: Ready / Progressing / Degraded conditions (each keeping its
//! last transition time while it holds), per-zone replicas, ring members and rebalance progress.
//! Pure: built from the pass's observations and plan, so an unchanged cluster gives an equal
//! status and no write.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use crate::admin::Membership;
use crate::crd::{DynamoCluster, DynamoClusterStatus, MemberStatus, RebalanceStatus, ZoneStatus};
use crate::scaling::{Observed, Plan};
use crate::validate::InvalidSpec;

/// Condition type: every node is Ready and a normal ring member, nothing to do.
pub const READY: &str = "Ready";
/// Condition type: nodes are being added, removed, rolled or rebalanced.
pub const PROGRESSING: &str = "Progressing";
/// Condition type: something needs a person (invalid spec, unreachable nodes, a blocked step).
pub const DEGRADED: &str = "Degraded";

/// The status after a pass that planned `plan`.
pub fn build(
    cluster: &DynamoCluster,
    observed: &Observed,
    plan: &Plan,
    now: &Time,
) -> DynamoClusterStatus {
    let spec = &cluster.spec;
    let ready_pods = |zone: &str| {
        observed.pods.iter().filter(|p| p.zone == zone && p.ready && !p.terminating).count() as i32
    };
    let zones: Vec<ZoneStatus> = spec
        .zones
        .iter()
        .map(|z| ZoneStatus {
            name: z.name.clone(),
            desired_replicas: z.replicas,
            replicas: plan.replicas.get(&z.name).copied().unwrap_or(0),
            ready_replicas: ready_pods(&z.name),
        })
        .collect();
    let ready_nodes = observed.pods.iter().filter(|p| p.ready && !p.terminating).count() as i32;
    let desired_nodes = spec.total_replicas();
    let ring = &observed.ring;
    let members: Vec<MemberStatus> = ring
        .members
        .iter()
        .filter(|(id, m)| {
            m.membership != Membership::Left || observed.pods.iter().any(|p| &p.name == *id)
        })
        .map(|(id, m)| MemberStatus {
            id: id.clone(),
            zone: m.zone.clone(),
            membership: m.membership.as_str().into(),
            reachable: m.reachable,
        })
        .collect();
    let rebalance = (ring.answered > 0).then(|| RebalanceStatus {
        pending_partitions: ring.pending_partitions.into(),
        active_transfers: ring.active_transfers as i64,
        done_transfers: ring.done_transfers as i64,
        keys_sent: ring.keys_sent as i64,
        bytes_sent: ring.bytes_sent as i64,
    });

    let unready: Vec<&str> = observed
        .pods
        .iter()
        .filter(|p| !p.ready && !p.terminating)
        .map(|p| p.name.as_str())
        .collect();
    let not_normal: Vec<String> = observed
        .pods
        .iter()
        .filter_map(|p| match ring.membership(&p.name) {
            Some(Membership::Normal) => None,
            Some(m) => Some(format!("{} is {}", p.name, m.as_str())),
            None => Some(format!("{} is not a member", p.name)),
        })
        .collect();

    let mut degraded = plan.problems.clone();
    if plan.progress.is_none() && !unready.is_empty() {
        degraded.push(format!("not Ready: {}", unready.join(", ")));
    }
    // A pod the scheduler cannot place (no Kubernetes node in its zone, a volume pinned to a
    // machine that is gone) waits forever: say why, whatever else is going on.
    for pod in observed.pods.iter().filter(|p| !p.terminating) {
        if let Some(why) = &pod.unschedulable {
            degraded.push(format!("{} is Pending: {why}", pod.name));
        }
    }
    if ring.answered == 0 && ready_nodes > 0 {
        degraded.push("no node answers its admin API: ring membership unknown".into());
    }

    let settled = plan.progress.is_none() || plan.paused;
    let ready =
        settled && degraded.is_empty() && ready_nodes == desired_nodes && not_normal.is_empty();
    let generation = cluster.metadata.generation;
    let old = cluster.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let ready_condition = if ready {
        condition(
            READY,
            true,
            "ClusterReady",
            format!("{ready_nodes}/{desired_nodes} nodes ready and in the ring"),
        )
    } else if !settled {
        let p = plan.progress.as_ref().expect("not settled");
        condition(
            READY,
            false,
            p.reason,
            format!("{ready_nodes}/{desired_nodes} nodes ready: {}", p.message),
        )
    } else if !degraded.is_empty() {
        condition(
            READY,
            false,
            "Degraded",
            format!("{ready_nodes}/{desired_nodes} nodes ready: {}", degraded.join("; ")),
        )
    } else {
        condition(
            READY,
            false,
            "NodesNotInRing",
            format!("{ready_nodes}/{desired_nodes} nodes ready: {}", not_normal.join(", ")),
        )
    };
    let progressing = match &plan.progress {
        Some(p) => condition(PROGRESSING, true, p.reason, p.message.clone()),
        None => condition(
            PROGRESSING,
            false,
            "Settled",
            "every zone has the replicas its spec asks for".into(),
        ),
    };
    let degraded_condition = if degraded.is_empty() {
        condition(DEGRADED, false, "AsExpected", "no problem found".into())
    } else {
        let reason = if plan.problems.is_empty() { "NodesNotReady" } else { "ActionBlocked" };
        condition(DEGRADED, true, reason, degraded.join("; "))
    };

    DynamoClusterStatus {
        observed_generation: generation,
        conditions: [ready_condition, progressing, degraded_condition]
            .into_iter()
            .map(|c| stamp(c, old, generation, now))
            .collect(),
        ready_nodes,
        desired_nodes,
        zone_count: spec.zones.len() as i32,
        zones,
        members,
        rebalance,
        decommission: plan.decommission.clone(),
        rollout: plan.rollout.clone(),
        storage: plan.storage.clone(),
        // The controller fills it from the certificate it found (status::build sees no Secret).
        tls: cluster.status.as_ref().and_then(|s| s.tls.clone()),
    }
}

/// The status of a cluster whose spec is invalid: Degraded with every problem, nothing else
/// changed (the operator acts on no part of an invalid spec).
pub fn invalid(cluster: &DynamoCluster, error: &InvalidSpec, now: &Time) -> DynamoClusterStatus {
    let generation = cluster.metadata.generation;
    let mut status = cluster.status.clone().unwrap_or_default();
    let old = status.conditions.clone();
    let message =
        format!("{error}; fix the spec (kubectl edit dynamocluster {})", cluster.name_any());
    status.observed_generation = generation;
    status.conditions = [
        condition(READY, false, "InvalidSpec", message.clone()),
        condition(
            PROGRESSING,
            false,
            "InvalidSpec",
            "nothing is changed while the spec is invalid".into(),
        ),
        condition(DEGRADED, true, "InvalidSpec", message),
    ]
    .into_iter()
    .map(|c| stamp(c, &old, generation, now))
    .collect();
    status
}

fn condition(type_: &str, status: bool, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        observed_generation: None,
    }
}

/// Keeps the old transition time while the condition's status holds.
fn stamp(mut c: Condition, old: &[Condition], generation: Option<i64>, now: &Time) -> Condition {
    c.observed_generation = generation;
    c.last_transition_time = match old.iter().find(|o| o.type_ == c.type_) {
        Some(o) if o.status == c.status => o.last_transition_time.clone(),
        _ => now.clone(),
    };
    c
}

/// The condition of `type_` in `status`, if set.
pub fn find<'a>(status: &'a DynamoClusterStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::tests::report;
    use crate::admin::RingView;
    use crate::render::tests::cluster;
    use crate::scaling::{plan, ObservedPod, ObservedStatefulSet, Progress};

    fn t(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    fn settled() -> (DynamoCluster, Observed) {
        let c = cluster(&[("a", 1), ("b", 1), ("c", 1)]);
        let mut observed = Observed::default();
        let mut members = Vec::new();
        for (i, zone) in ["a", "b", "c"].into_iter().enumerate() {
            observed.statefulsets.insert(
                zone.into(),
                ObservedStatefulSet {
                    replicas: 1,
                    ready_replicas: 1,
                    caught_up: true,
                    ..ObservedStatefulSet::default()
                },
            );
            let name = format!("demo-{zone}-0");
            observed.pods.push(ObservedPod {
                name: name.clone(),
                zone: zone.into(),
                ordinal: 0,
                ip: Some(format!("10.0.0.{i}")),
                ready: true,
                terminating: false,
                ..Default::default()
            });
            members.push((name, zone));
        }
        let members: Vec<(&str, &str, &str)> =
            members.iter().map(|(n, z)| (n.as_str(), *z, "normal")).collect();
        observed.ring =
            RingView::merge(&[report("demo-a-0", &members), report("demo-b-0", &members)]);
        (c, observed)
    }

    #[test]
    fn a_settled_cluster_is_ready() {
        let (c, observed) = settled();
        let p = plan("demo", &c.spec, &observed);
        let s = build(&c, &observed, &p, &t(100));
        assert_eq!(s.observed_generation, Some(1));
        assert_eq!((s.ready_nodes, s.desired_nodes, s.zone_count), (3, 3, 3));
        let ready = find(&s, READY).unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("True", "ClusterReady"));
        assert_eq!(ready.message, "3/3 nodes ready and in the ring");
        assert_eq!(find(&s, PROGRESSING).unwrap().status, "False");
        assert_eq!(find(&s, DEGRADED).unwrap().status, "False");
        assert_eq!(s.members.len(), 3);
        assert_eq!(s.members[0].membership, "normal");
        assert!(s.members[0].reachable);
        assert!(!s.members[2].reachable, "demo-c-0 did not answer in this test");
        assert_eq!(
            s.zones[1],
            ZoneStatus { name: "b".into(), desired_replicas: 1, replicas: 1, ready_replicas: 1 }
        );
        assert_eq!(s.rebalance.unwrap().pending_partitions, 0);
    }

    #[test]
    fn transition_times_move_only_when_a_condition_flips() {
        let (mut c, observed) = settled();
        let p = plan("demo", &c.spec, &observed);
        c.status = Some(build(&c, &observed, &p, &t(100)));
        let again = build(&c, &observed, &p, &t(200));
        assert_eq!(Some(&again), c.status.as_ref(), "an unchanged cluster gives an equal status");

        let mut busy = p.clone();
        busy.progress = Some(Progress { reason: "ScalingUp", message: "adding demo-a-1".into() });
        let s = build(&c, &observed, &busy, &t(300));
        assert_eq!(find(&s, PROGRESSING).unwrap().last_transition_time, t(300));
        assert_eq!(find(&s, READY).unwrap().last_transition_time, t(300));
        assert_eq!(find(&s, READY).unwrap().reason, "ScalingUp");
        assert_eq!(find(&s, DEGRADED).unwrap().last_transition_time, t(100));
    }

    #[test]
    fn unready_pods_of_a_settled_cluster_are_degraded() {
        let (c, mut observed) = settled();
        observed.pods[2].ready = false;
        let p = plan("demo", &c.spec, &observed);
        let s = build(&c, &observed, &p, &t(1));
        let d = find(&s, DEGRADED).unwrap();
        assert_eq!((d.status.as_str(), d.reason.as_str()), ("True", "NodesNotReady"));
        assert_eq!(d.message, "not Ready: demo-c-0");
        assert_eq!(find(&s, READY).unwrap().status, "False");
    }

    #[test]
    fn why_a_pod_is_pending_is_in_the_status() {
        let (c, mut observed) = settled();
        observed.pods[0].ready = false;
        observed.pods[0].unschedulable = Some(
            "Unschedulable: 0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector".into(),
        );
        let p = plan("demo", &c.spec, &observed);
        let s = build(&c, &observed, &p, &t(1));
        let d = find(&s, DEGRADED).unwrap();
        assert_eq!(d.status, "True");
        assert!(
            d.message.contains("demo-a-0 is Pending: Unschedulable: 0/3 nodes are available"),
            "{}",
            d.message
        );
    }

    #[test]
    fn a_paused_cluster_says_so_and_is_not_ready() {
        let (mut c, observed) = settled();
        c.spec.paused = true;
        let p = plan("demo", &c.spec, &observed);
        let s = build(&c, &observed, &p, &t(1));
        let progressing = find(&s, PROGRESSING).unwrap();
        assert_eq!((progressing.status.as_str(), progressing.reason.as_str()), ("True", "Paused"));
        assert!(progressing.message.contains("spec.paused is true"));
        assert_eq!(find(&s, DEGRADED).unwrap().status, "False");
    }

    #[test]
    fn an_invalid_spec_keeps_the_rest_of_the_status() {
        let (mut c, observed) = settled();
        let p = plan("demo", &c.spec, &observed);
        c.status = Some(build(&c, &observed, &p, &t(1)));
        c.metadata.generation = Some(2);
        c.spec.replication.r = 9;
        let err = crate::validate::validate("demo", &c.spec).unwrap_err();
        let s = invalid(&c, &err, &t(2));
        assert_eq!(s.observed_generation, Some(2));
        assert_eq!(s.ready_nodes, 3);
        let d = find(&s, DEGRADED).unwrap();
        assert_eq!((d.status.as_str(), d.reason.as_str()), ("True", "InvalidSpec"));
        assert!(
            d.message.contains("replication.r must be between 1 and replication.factor"),
            "{}",
            d.message
        );
        assert!(d.message.contains("kubectl edit dynamocluster demo"), "{}", d.message);
    }
}
