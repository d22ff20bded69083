//! The PodDisruptionBudget, derived from N, R and W.
//!
//! Every key lives on N nodes, and those nodes are spread over zones. If k nodes are down at
//! once, a key may have lost k of its replicas, which leaves N-k: reads still reach R replies
//! while k <= N-R, and writes W acknowledgements while k <= N-W. So voluntary disruptions (node
//! drains, upgrades) may take down `max(1, min(N-R, N-W))` pods at a time. The floor of 1 is on
//! purpose: a budget of 0 would block every node drain forever. When R = N or W = N the budget
//! is 1 and a drain briefly leaves some keys one replica short: writes still succeed through the
//! sloppy quorum (hinted handoff), and reads with R = N wait for the pod to come back.
//! N=3 R=2 W=2 gives 1; N=5 R=2 W=2 gives 3; N=3 R=1 W=1 gives 2.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{child_meta, cluster_selector, common_labels, pdb_name};
use crate::crd::{DynamoCluster, Replication};

/// Pods that may be disrupted at once: `max(1, min(n - r, n - w))` (see the module doc).
pub fn max_unavailable(replication: &Replication) -> i32 {
    let Replication { n, r, w } = *replication;
    (n - r).min(n - w).max(1)
}

/// The budget over every node pod of the cluster. Unhealthy pods may always be evicted: they
/// serve nothing, and keeping them would only block a drain.
pub fn pod_disruption_budget(cluster: &DynamoCluster) -> PodDisruptionBudget {
    let name = cluster.name_any();
    PodDisruptionBudget {
        metadata: child_meta(cluster, pdb_name(&name), common_labels(&name)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(max_unavailable(&cluster.spec.replication))),
            selector: Some(LabelSelector {
                match_labels: Some(cluster_selector(&name)),
                ..LabelSelector::default()
            }),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::render::tests::cluster;

    #[test]
    fn budget_keeps_quorums() {
        let cases = [
            ((3, 2, 2), 1),
            ((3, 1, 1), 2),
            ((3, 1, 3), 1),
            ((3, 3, 3), 1),
            ((5, 2, 2), 3),
            ((5, 3, 2), 2),
            ((1, 1, 1), 1),
        ];
        for ((n, r, w), want) in cases {
            assert_eq!(max_unavailable(&Replication { n, r, w }), want, "n={n} r={r} w={w}");
        }
    }

    #[test]
    fn budget_is_never_zero() {
        for n in 1..=7 {
            for r in 1..=n {
                for w in 1..=n {
                    assert!(max_unavailable(&Replication { n, r, w }) >= 1);
                }
            }
        }
    }

    #[test]
    fn pdb_selects_every_node_of_the_cluster() {
        let pdb =
            serde_json::to_value(pod_disruption_budget(&cluster(&[("a", 2), ("b", 2)]))).unwrap();
        assert_eq!(pdb["apiVersion"], "policy/v1");
        assert_eq!(pdb["metadata"]["name"], "demo");
        assert_eq!(
            pdb["spec"],
            json!({
                "maxUnavailable": 1,
                "selector": {"matchLabels": {"app.kubernetes.io/name": "dynamo", "dynamokv.io/cluster": "demo"}},
                "unhealthyPodEvictionPolicy": "AlwaysAllow",
            })
        );
    }
}
