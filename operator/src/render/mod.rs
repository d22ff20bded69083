//! From a `DynamoCluster` to the Kubernetes objects that run it. Pure functions: the same spec
//! gives byte-for-byte the same objects, so server-side apply is a no-op when nothing changed.
//! Names, labels and the node's port are defined here, once.

mod config;
mod pdb;
mod secret;
pub mod security;
mod services;
mod statefulset;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::crd::DynamoCluster;

pub use config::{config_map, dynamo_cluster_name, node_toml, CONFIG_FILE, CONFIG_KEY};
pub use pdb::{max_unavailable, pod_disruption_budget};
pub use secret::{cluster_secret, random_secret, SECRET_KEY};
pub use services::{client_service, headless_service};
pub use statefulset::{seeds, statefulset, DATA_DIR, READY_SERVICE, VOLUME_NAME};

/// The node's client port (TLS; the client API and gRPC health): what the client Service exposes.
pub const CLIENT_PORT: i32 = dynamo_api::contract::DEFAULT_PORT as i32;
/// The node's peer port (mutual TLS; the internode and admin APIs): other nodes and the operator.
pub const PEER_PORT: i32 = dynamo_api::contract::DEFAULT_PEER_PORT as i32;
/// The node's health port (plaintext gRPC health only): kubelet probes.
pub const HEALTH_PORT: i32 = dynamo_api::contract::DEFAULT_HEALTH_PORT as i32;

/// The environment variables `dynamo-node` reads (its flags' `env` names, from the node's
/// contract in `dynamo-api`). Tests check rendered pods and images against it.
pub const NODE_ENV: &[&str] = dynamo_api::contract::env::ALL;
/// Name of the operator as a field manager and in `app.kubernetes.io/managed-by`.
pub const MANAGER: &str = "dynamo-operator";

/// Label: the cluster a child object belongs to.
pub const CLUSTER_LABEL: &str = "dynamokv.io/cluster";
/// Label: the zone of a StatefulSet, pod or volume.
pub const ZONE_LABEL: &str = "dynamokv.io/zone";
/// Annotation on the pod template: hash of the node configuration, so a change rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "dynamokv.io/config-hash";
/// Annotation on a DynamoCluster: changing its value restarts every node, one at a time (copied
/// into the pod template, so it is a template change like any other).
pub const RESTARTED_AT_ANNOTATION: &str = "dynamokv.io/restartedAt";
/// Annotation on a node pod, value `true`: replace this node (its volume or machine is lost):
/// remove its member by force, delete its claim and its pod, and let a new, empty one join.
pub const REPLACE_ANNOTATION: &str = "dynamokv.io/replace";
/// Label the StatefulSet controller puts on every pod: the revision of the template it runs.
pub const REVISION_LABEL: &str = "controller-revision-hash";
/// The Kubernetes node label a zone is pinned to by default.
pub const TOPOLOGY_ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Settings of the rendering that come from the operator, not from the cluster's spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderOptions {
    /// DNS domain of the Kubernetes cluster, for the seeds' names (usually `cluster.local`).
    pub cluster_domain: String,
    /// Namespace of the operator's pods: the NetworkPolicy lets them reach the peer port.
    pub operator_namespace: String,
    /// Labels of the operator's pods, for the same rule.
    pub operator_labels: BTreeMap<String, String>,
}

/// The namespace the chart installs the operator in by default.
pub const DEFAULT_OPERATOR_NAMESPACE: &str = "dynamo-system";
/// The label every operator pod of the chart carries.
pub const DEFAULT_OPERATOR_LABELS: &str = "app.kubernetes.io/name=dynamo-operator";

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            cluster_domain: "cluster.local".into(),
            operator_namespace: DEFAULT_OPERATOR_NAMESPACE.into(),
            operator_labels: parse_labels(DEFAULT_OPERATOR_LABELS)
                .expect("the default labels parse"),
        }
    }
}

/// Parses `k=v,k2=v2` (a label selector of equalities); `None` if a term has no `=` or an empty
/// key.
pub fn parse_labels(text: &str) -> Option<BTreeMap<String, String>> {
    text.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|term| {
            let (k, v) = term.split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then(|| (k.to_string(), v.trim().to_string()))
        })
        .collect()
}

/// `host:port` of a node's peer port (internode and admin APIs) at `ip` (IPv6 addresses in
/// brackets): where the operator calls the admin API.
pub fn node_address(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{PEER_PORT}")
    } else {
        format!("{ip}:{PEER_PORT}")
    }
}

/// Name of a zone's StatefulSet: `<cluster>-<zone>`.
pub fn statefulset_name(cluster: &str, zone: &str) -> String {
    format!("{cluster}-{zone}")
}

/// Name of a node's pod, which is also its node id: `<cluster>-<zone>-<ordinal>`.
pub fn pod_name(cluster: &str, zone: &str, ordinal: i32) -> String {
    format!("{cluster}-{zone}-{ordinal}")
}

/// Name of a node's volume claim, as the StatefulSet controller names it.
pub fn pvc_name(cluster: &str, zone: &str, ordinal: i32) -> String {
    format!("{}-{}", statefulset::VOLUME_NAME, pod_name(cluster, zone, ordinal))
}

/// Name of the headless Service that gives every pod a DNS name (peer discovery, seeds).
pub fn headless_service_name(cluster: &str) -> String {
    format!("{cluster}-peers")
}

/// Name of the Service clients use: the cluster's own name.
pub fn client_service_name(cluster: &str) -> String {
    cluster.to_string()
}

/// Name of the ConfigMap holding `node.toml`.
pub fn config_map_name(cluster: &str) -> String {
    format!("{cluster}-config")
}

/// Name of the Secret holding the cluster secret.
pub fn secret_name(cluster: &str) -> String {
    format!("{cluster}-secret")
}

/// Name of the PodDisruptionBudget.
pub fn pdb_name(cluster: &str) -> String {
    cluster.to_string()
}

/// The ordinal of pod `name` in zone `zone` of `cluster`, if it is one of that zone's pods.
pub fn ordinal_of(cluster: &str, zone: &str, name: &str) -> Option<i32> {
    let rest =
        name.strip_prefix(cluster)?.strip_prefix('-')?.strip_prefix(zone)?.strip_prefix('-')?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse().ok()
}

/// Labels selecting every node pod of a cluster.
pub fn cluster_selector(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "dynamo".into()),
        (CLUSTER_LABEL.into(), cluster.into()),
    ])
}

/// The same selector as a `labelSelector` query string.
pub fn cluster_selector_string(cluster: &str) -> String {
    selector_string(&cluster_selector(cluster))
}

/// Labels selecting the pods of one zone (a StatefulSet's selector, which cannot change).
pub fn zone_selector(cluster: &str, zone: &str) -> BTreeMap<String, String> {
    let mut labels = cluster_selector(cluster);
    labels.insert(ZONE_LABEL.into(), zone.into());
    labels
}

/// Labels of every object the operator creates for a cluster.
pub fn common_labels(cluster: &str) -> BTreeMap<String, String> {
    let mut labels = cluster_selector(cluster);
    labels.insert("app.kubernetes.io/instance".into(), cluster.into());
    labels.insert("app.kubernetes.io/managed-by".into(), MANAGER.into());
    labels
}

fn zone_labels(cluster: &str, zone: &str) -> BTreeMap<String, String> {
    let mut labels = common_labels(cluster);
    labels.insert(ZONE_LABEL.into(), zone.into());
    labels.insert("app.kubernetes.io/component".into(), "node".into());
    labels
}

fn selector_string(labels: &BTreeMap<String, String>) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// The owner reference that ties a child to its cluster, so deleting the cluster deletes it.
pub fn owner_reference(cluster: &DynamoCluster) -> OwnerReference {
    OwnerReference {
        api_version: DynamoCluster::api_version(&()).into_owned(),
        kind: DynamoCluster::kind(&()).into_owned(),
        name: cluster.name_any(),
        uid: cluster.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Metadata of a child object: name, the cluster's namespace, labels and owner reference.
fn child_meta(
    cluster: &DynamoCluster,
    name: String,
    labels: BTreeMap<String, String>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: cluster.namespace(),
        labels: Some(labels),
        owner_references: Some(vec![owner_reference(cluster)]),
        ..ObjectMeta::default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crd::{DynamoClusterSpec, ZoneSpec};

    /// A cluster `demo` in namespace `default` with the given zones, as the API server returns it.
    pub fn cluster(zones: &[(&str, i32)]) -> DynamoCluster {
        let spec = DynamoClusterSpec::with_zones(
            zones.iter().map(|(name, replicas)| ZoneSpec::new(name, *replicas)).collect(),
        );
        let mut c = DynamoCluster::new("demo", spec);
        c.metadata.namespace = Some("default".into());
        c.metadata.uid = Some("6f1f0b2e-0000-4000-8000-000000000001".into());
        c.metadata.generation = Some(1);
        c
    }

    #[test]
    fn names_follow_the_node_id_contract() {
        assert_eq!(statefulset_name("demo", "zone-a"), "demo-zone-a");
        assert_eq!(pod_name("demo", "zone-a", 2), "demo-zone-a-2");
        assert_eq!(pvc_name("demo", "zone-a", 2), "data-demo-zone-a-2");
        assert_eq!(headless_service_name("demo"), "demo-peers");
    }

    #[test]
    fn node_addresses_bracket_ipv6() {
        assert_eq!(node_address("10.0.0.7"), "10.0.0.7:7071");
        assert_eq!(node_address("fd00::7"), "[fd00::7]:7071");
    }

    #[test]
    fn operator_labels_parse() {
        assert_eq!(
            parse_labels("a=b, c = d,"),
            Some(BTreeMap::from([("a".into(), "b".into()), ("c".into(), "d".into())]))
        );
        assert_eq!(parse_labels("a"), None);
        assert_eq!(parse_labels("=b"), None);
        assert_eq!(RenderOptions::default().operator_labels.len(), 1);
    }

    #[test]
    fn ordinals_are_parsed_only_for_the_zone_asked() {
        assert_eq!(ordinal_of("demo", "zone-a", "demo-zone-a-12"), Some(12));
        assert_eq!(ordinal_of("demo", "zone-a", "demo-zone-a-b-1"), None);
        assert_eq!(ordinal_of("demo", "zone", "demo-zone-a-1"), None);
        assert_eq!(ordinal_of("demo", "zone-a", "demo-zone-a-"), None);
        assert_eq!(ordinal_of("demo", "zone-a", "other-zone-a-1"), None);
    }

    #[test]
    fn children_are_owned_by_the_cluster_as_controller() {
        let owner = owner_reference(&cluster(&[("a", 1)]));
        assert_eq!(owner.api_version, "dynamokv.io/v1alpha1");
        assert_eq!(owner.kind, "DynamoCluster");
        assert_eq!(owner.name, "demo");
        assert_eq!(owner.controller, Some(true));
        assert_eq!(owner.block_owner_deletion, Some(true));
        assert!(!owner.uid.is_empty());
    }

    #[test]
    fn selector_string_lists_every_label() {
        assert_eq!(
            cluster_selector_string("demo"),
            "app.kubernetes.io/name=dynamo,dynamokv.io/cluster=demo"
        );
    }
}
