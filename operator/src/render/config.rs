//! The ConfigMap with the node configuration file (`node.toml`): the settings every node of a
//! cluster shares, among them the peer and health ports and where the TLS material and the token
//! file are mounted. Per-pod settings (id, addresses, zone, data directory, seeds) and the secret
//! come from the environment the StatefulSet sets, so one file serves every pod.

use std::collections::BTreeMap;

use std::path::PathBuf;

use dynamo_api::config::{ClusterConfig, EngineKind, Limits, NodeConfig, TlsConfig};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;

use super::security::{CA_CERT_KEY, TLS_CERT_KEY, TLS_DIR, TLS_KEY_KEY, TOKENS_DIR, TOKENS_KEY};
use super::{child_meta, common_labels, config_map_name, HEALTH_PORT, PEER_PORT};
use crate::crd::{DynamoCluster, Engine};

/// Key of the file in the ConfigMap.
pub const CONFIG_KEY: &str = "node.toml";
/// Where the pod sees the file (passed as `--config`).
pub const CONFIG_FILE: &str = "/etc/dynamo/node.toml";

/// Settings the operator always writes, even when they equal the node's defaults: they are
/// fixed at creation (a later change of a node default must not change them), and readers of
/// the ConfigMap see the cluster's shape at a glance. Other settings are written only when the
/// spec sets them to something other than the node's default.
const PINNED: &[&str] =
    &["engine", "cluster.name", "cluster.partitions", "cluster.n", "cluster.r", "cluster.w"];

/// The node's cluster name: `<name>.<namespace>`, unique in the Kubernetes cluster, so nodes
/// of two DynamoClusters never accept each other.
pub fn dynamo_cluster_name(cluster: &DynamoCluster) -> String {
    format!("{}.{}", cluster.name_any(), cluster.namespace().unwrap_or_else(|| "default".into()))
}

/// The node configuration every pod of the cluster shares, in the node's own types. Per-pod
/// settings (id, addresses, zone, data directory, seeds) and the secret stay at their defaults
/// here: the pod's environment sets them.
pub fn node_config(cluster: &DynamoCluster) -> NodeConfig {
    let spec = &cluster.spec;
    let overrides = &spec.node_config;
    let defaults = NodeConfig::default();
    // The CRD's schema keeps these positive; a negative value would only reach the node's own
    // validation, which names the setting.
    let unsigned = |v: i64| u64::try_from(v).unwrap_or(0);
    let size = |v: Option<i64>, default: usize| v.map_or(default, |v| unsigned(v) as usize);
    let limits = &overrides.limits;
    NodeConfig {
        engine: match overrides.engine.unwrap_or_default() {
            Engine::Rocksdb => EngineKind::Rocksdb,
            Engine::Memory => EngineKind::Memory,
        },
        request_timeout_ms: overrides
            .request_timeout_ms
            .map_or(defaults.request_timeout_ms, unsigned),
        sync_writes: overrides.sync_writes.unwrap_or(defaults.sync_writes),
        // Every interface of the pod: other nodes and the operator dial the peer port, the
        // kubelet probes the health port.
        peer_listen: format!("0.0.0.0:{PEER_PORT}"),
        health_listen: format!("0.0.0.0:{HEALTH_PORT}"),
        tls: TlsConfig {
            ca_cert: Some(PathBuf::from(format!("{TLS_DIR}/{CA_CERT_KEY}"))),
            cert: Some(PathBuf::from(format!("{TLS_DIR}/{TLS_CERT_KEY}"))),
            key: Some(PathBuf::from(format!("{TLS_DIR}/{TLS_KEY_KEY}"))),
        },
        tokens_file: Some(PathBuf::from(format!("{TOKENS_DIR}/{TOKENS_KEY}"))),
        cluster: ClusterConfig {
            name: dynamo_cluster_name(cluster),
            secret: String::new(),
            partitions: spec.partitions as u32,
            n: Some(spec.replication.n as usize),
            r: Some(spec.replication.r as usize),
            w: Some(spec.replication.w as usize),
        },
        limits: Limits {
            max_key_bytes: size(limits.max_key_bytes, defaults.limits.max_key_bytes),
            max_value_bytes: size(limits.max_value_bytes, defaults.limits.max_value_bytes),
            max_siblings: size(limits.max_siblings, defaults.limits.max_siblings),
            max_object_bytes: size(limits.max_object_bytes, defaults.limits.max_object_bytes),
            ..defaults.limits.clone()
        },
        ..defaults
    }
}

/// The `node.toml` every pod of the cluster reads: [`node_config`] without the settings left at
/// the node's defaults (except the [`PINNED`] ones).
pub fn node_toml(cluster: &DynamoCluster) -> String {
    let table = |c: &NodeConfig| {
        toml::Table::try_from(c).expect("the node configuration always serializes to TOML")
    };
    let mut file = table(&node_config(cluster));
    prune(&mut file, &table(&NodeConfig::default()), "");
    let body = toml::to_string(&file).expect("a TOML table always serializes");
    format!(
        "# Written by dynamo-operator from DynamoCluster {}; edits are overwritten.\n{body}",
        cluster.name_any()
    )
}

/// Removes from `table` the values equal to `defaults` (unless pinned) and tables left empty.
fn prune(table: &mut toml::Table, defaults: &toml::Table, prefix: &str) {
    let keys: Vec<String> = table.keys().cloned().collect();
    for key in keys {
        let path = format!("{prefix}{key}");
        let default = defaults.get(&key);
        let remove = match (table.get_mut(&key), default) {
            (Some(toml::Value::Table(inner)), Some(toml::Value::Table(d))) => {
                prune(inner, d, &format!("{path}."));
                inner.is_empty()
            }
            (Some(value), default) => !PINNED.contains(&path.as_str()) && default == Some(value),
            (None, _) => false,
        };
        if remove {
            table.remove(&key);
        }
    }
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
        let text = node_toml(&c);
        assert!(
            text.starts_with(
                "# Written by dynamo-operator from DynamoCluster demo; edits are overwritten.\n"
            ),
            "{text}"
        );
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        let expected: toml::Table = toml::from_str(
            "engine = \"rocksdb\"\n\
             peer_listen = \"0.0.0.0:7071\"\n\
             health_listen = \"0.0.0.0:7072\"\n\
             tokens_file = \"/etc/dynamo-tokens/tokens\"\n\
             [tls]\n\
             ca_cert = \"/etc/dynamo-tls/ca.crt\"\n\
             cert = \"/etc/dynamo-tls/tls.crt\"\n\
             key = \"/etc/dynamo-tls/tls.key\"\n\
             [cluster]\n\
             name = \"demo.default\"\n\
             partitions = 256\n\
             n = 3\n\
             r = 2\n\
             w = 2\n",
        )
        .unwrap();
        assert_eq!(parsed, expected);
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
        assert_eq!(
            keys,
            [
                "cluster",
                "engine",
                "health_listen",
                "limits",
                "peer_listen",
                "request_timeout_ms",
                "sync_writes",
                "tls",
                "tokens_file"
            ]
        );
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
            "peer_listen",
            "health_listen",
            "tls",
            "tokens_file",
        ];
        let tls_keys = ["ca_cert", "cert", "key"];
        let cluster_keys = ["name", "secret", "partitions", "n", "r", "w"];
        let limit_keys = ["max_key_bytes", "max_value_bytes", "max_siblings", "max_object_bytes"];
        let mut c = cluster(&[("zone-a", 3)]);
        c.spec.node_config.request_timeout_ms = Some(1);
        c.spec.node_config.sync_writes = Some(false);
        c.spec.node_config.limits.max_key_bytes = Some(1);
        c.spec.node_config.limits.max_value_bytes = Some(1);
        c.spec.node_config.limits.max_siblings = Some(1);
        c.spec.node_config.limits.max_object_bytes = Some(1);
        let text = node_toml(&c);
        let node: NodeConfig = toml::from_str(&text).expect("the node reads the file");
        assert_eq!(node.tls.cert, Some(PathBuf::from("/etc/dynamo-tls/tls.crt")));
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        for (key, value) in &parsed {
            assert!(top.contains(&key.as_str()), "unknown top-level key {key}");
            let allowed: &[&str] = match key.as_str() {
                "cluster" => &cluster_keys,
                "limits" => &limit_keys,
                "tls" => &tls_keys,
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
