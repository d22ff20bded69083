//! The ConfigMap with the node configuration file (`node.toml`): the settings every node of a
//! cluster shares. Per-pod settings (id, addresses, zone, data directory, seeds) and the secret
//! come from the environment the StatefulSet sets, so one file serves every pod.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use serde::Serialize;

use super::{child_meta, common_labels, config_map_name};
use crate::crd::{DynamoCluster, Engine};

/// Key of the file in the ConfigMap.
pub const CONFIG_KEY: &str = "node.toml";
/// Where the pod sees the file (passed as `--config`).
pub const CONFIG_FILE: &str = "/etc/dynamo/node.toml";

/// The part of the node's TOML the operator writes. Only keys the node knows: it rejects
/// unknown ones.
#[derive(Serialize)]
struct NodeToml {
    engine: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_timeout_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sync_writes: Option<bool>,
    cluster: ClusterToml,
    #[serde(skip_serializing_if = "Option::is_none")]
    limits: Option<LimitsToml>,
}

#[derive(Serialize)]
struct ClusterToml {
    name: String,
    partitions: i32,
    n: i32,
    r: i32,
    w: i32,
}

#[derive(Serialize)]
struct LimitsToml {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_key_bytes: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_value_bytes: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_siblings: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_object_bytes: Option<i64>,
}

/// The node's cluster name: `<name>.<namespace>`, unique in the Kubernetes cluster, so nodes
/// of two DynamoClusters never accept each other.
pub fn dynamo_cluster_name(cluster: &DynamoCluster) -> String {
    format!("{}.{}", cluster.name_any(), cluster.namespace().unwrap_or_else(|| "default".into()))
}

/// The `node.toml` every pod of the cluster reads.
pub fn node_toml(cluster: &DynamoCluster) -> String {
    let spec = &cluster.spec;
    let overrides = &spec.node_config;
    let limits = &overrides.limits;
    let file = NodeToml {
        engine: match overrides.engine.unwrap_or_default() {
            Engine::Rocksdb => "rocksdb",
            Engine::Memory => "memory",
        },
        request_timeout_ms: overrides.request_timeout_ms,
        sync_writes: overrides.sync_writes,
        cluster: ClusterToml {
            name: dynamo_cluster_name(cluster),
            partitions: spec.partitions,
            n: spec.replication.n,
            r: spec.replication.r,
            w: spec.replication.w,
        },
        limits: (!limits.is_empty()).then_some(LimitsToml {
            max_key_bytes: limits.max_key_bytes,
            max_value_bytes: limits.max_value_bytes,
            max_siblings: limits.max_siblings,
            max_object_bytes: limits.max_object_bytes,
        }),
    };
    let body = toml::to_string(&file).expect("the node configuration always serializes to TOML");
    format!(
        "# Written by dynamo-operator from DynamoCluster {}; edits are overwritten.\n{body}",
        cluster.name_any()
    )
}

/// The ConfigMap `<cluster>-config` with `node.toml`.
pub fn config_map(cluster: &DynamoCluster) -> ConfigMap {
    ConfigMap {
        metadata: child_meta(
            cluster,
            config_map_name(&cluster.name_any()),
            common_labels(&cluster.name_any()),
        ),
        data: Some(BTreeMap::from([(CONFIG_KEY.to_string(), node_toml(cluster))])),
        ..ConfigMap::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::tests::cluster;

    #[test]
    fn default_spec_renders_the_shared_settings_only() {
        let c = cluster(&[("zone-a", 1), ("zone-b", 1), ("zone-c", 1)]);
        assert_eq!(
            node_toml(&c),
            "# Written by dynamo-operator from DynamoCluster demo; edits are overwritten.\n\
             engine = \"rocksdb\"\n\
             \n\
             [cluster]\n\
             name = \"demo.default\"\n\
             partitions = 256\n\
             n = 3\n\
             r = 2\n\
             w = 2\n"
        );
    }

    #[test]
    fn overrides_are_rendered_with_the_node_key_names() {
        let mut c = cluster(&[("zone-a", 3)]);
        c.spec.node_config.engine = Some(Engine::Memory);
        c.spec.node_config.request_timeout_ms = Some(500);
        c.spec.node_config.sync_writes = Some(true);
        c.spec.node_config.limits.max_siblings = Some(8);
        c.spec.partitions = 1024;
        c.spec.replication.r = 1;
        let text = node_toml(&c);
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        let keys: Vec<&str> = parsed.keys().map(String::as_str).collect();
        assert_eq!(keys, ["cluster", "engine", "limits", "request_timeout_ms", "sync_writes"]);
        assert_eq!(parsed["engine"].as_str(), Some("memory"));
        assert_eq!(parsed["request_timeout_ms"].as_integer(), Some(500));
        assert_eq!(parsed["sync_writes"].as_bool(), Some(true));
        assert_eq!(parsed["limits"].as_table().unwrap().len(), 1);
        assert_eq!(parsed["limits"]["max_siblings"].as_integer(), Some(8));
        assert_eq!(parsed["cluster"]["partitions"].as_integer(), Some(1024));
        assert_eq!(parsed["cluster"]["r"].as_integer(), Some(1));
    }

    #[test]
    fn only_keys_the_node_accepts_are_written() {
        // The node rejects unknown keys: this is its contract (top level and both tables).
        let top = [
            "id",
            "listen",
            "advertise",
            "zone",
            "weight",
            "data_dir",
            "engine",
            "request_timeout_ms",
            "sync_writes",
            "seeds",
            "cluster",
            "limits",
        ];
        let cluster_keys = ["name", "secret", "partitions", "n", "r", "w"];
        let limit_keys = ["max_key_bytes", "max_value_bytes", "max_siblings", "max_object_bytes"];
        let mut c = cluster(&[("zone-a", 3)]);
        c.spec.node_config.request_timeout_ms = Some(1);
        c.spec.node_config.sync_writes = Some(false);
        c.spec.node_config.limits.max_key_bytes = Some(1);
        c.spec.node_config.limits.max_value_bytes = Some(1);
        c.spec.node_config.limits.max_siblings = Some(1);
        c.spec.node_config.limits.max_object_bytes = Some(1);
        let parsed: toml::Table = toml::from_str(&node_toml(&c)).unwrap();
        for (key, value) in &parsed {
            assert!(top.contains(&key.as_str()), "unknown top-level key {key}");
            let allowed: &[&str] = match key.as_str() {
                "cluster" => &cluster_keys,
                "limits" => &limit_keys,
                _ => continue,
            };
            for inner in value.as_table().unwrap().keys() {
                assert!(allowed.contains(&inner.as_str()), "unknown key {key}.{inner}");
            }
        }
    }

    #[test]
    fn config_map_is_owned_and_labelled() {
        let cm = config_map(&cluster(&[("zone-a", 1)]));
        assert_eq!(cm.metadata.name.as_deref(), Some("demo-config"));
        assert_eq!(cm.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(cm.metadata.owner_references.as_ref().unwrap().len(), 1);
        assert_eq!(
            cm.metadata
                .labels
                .as_ref()
                .unwrap()
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str),
            Some("dynamo-operator")
        );
        assert!(cm.data.unwrap()["node.toml"].contains("[cluster]"));
    }
}
