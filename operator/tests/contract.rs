//! The operator and the node agree on the node's contract: the environment and `node.toml` the
//! operator renders for a pod load, through the node's own flag parser and validation, into
//! the configuration the operator meant. (One test in its own binary: it sets environment
//! variables, which no other test of this binary reads.)

use clap::Parser;
use dynamo_api::config::{EngineKind, NodeArgs, NodeConfig};
use dynamo_operator::crd::{DynamoCluster, DynamoClusterSpec, Engine, ZoneSpec};
use dynamo_operator::render::{node_toml, statefulset, RenderOptions, CONFIG_FILE, NODE_ENV};

/// Resolves a rendered env var as the kubelet would for a pod named `pod` with IP `ip`
/// (`$(DYNAMO_ID)` is the variable set before it from the pod's name).
fn resolve(var: &serde_json::Value, pod: &str, ip: &str, secret: &str) -> String {
    if let Some(v) = var["value"].as_str() {
        return v.replace("$(POD_IP)", ip).replace("$(DYNAMO_ID)", pod);
    }
    let from = &var["valueFrom"];
    match (from["fieldRef"]["fieldPath"].as_str(), from["secretKeyRef"]["key"].as_str()) {
        (Some("metadata.name"), _) => pod.into(),
        (Some("status.podIP"), _) => ip.into(),
        (None, Some(_)) => secret.into(),
        other => panic!("an env source the test does not know: {other:?} in {var}"),
    }
}

#[test]
fn rendered_environment_and_config_file_load_as_the_nodes_config() {
    let mut spec = DynamoClusterSpec::with_zones(vec![
        ZoneSpec::new("zone-a", 2),
        ZoneSpec::new("zone-b", 1),
        ZoneSpec::new("zone-c", 1),
    ]);
    spec.partitions = 1024;
    spec.replication.r = 1;
    spec.node_config.engine = Some(Engine::Rocksdb);
    spec.node_config.request_timeout_ms = Some(750);
    spec.node_config.sync_writes = Some(true);
    spec.node_config.limits.max_siblings = Some(16);
    let mut cluster = DynamoCluster::new("demo", spec);
    cluster.metadata.namespace = Some("prod".into());

    let sts =
        statefulset(&cluster, &cluster.spec.zones[1], 1, &RenderOptions::default(), "tls-hash");
    let sts = serde_json::to_value(&sts).unwrap();
    let container = &sts["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["args"], serde_json::json!(["--config", CONFIG_FILE]));

    // The pod's file, at a path of this test instead of the ConfigMap's mount.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(&file, node_toml(&cluster)).unwrap();

    for var in container["env"].as_array().unwrap() {
        let name = var["name"].as_str().unwrap();
        let value = resolve(var, "demo-zone-b-0", "10.244.1.7", "s3cret");
        if name.starts_with("DYNAMO_") {
            assert!(NODE_ENV.contains(&name), "{name} is not read by dynamo-node");
        }
        std::env::set_var(name, value);
    }
    let args = NodeArgs::try_parse_from(["dynamo-node", "--config", file.to_str().unwrap()])
        .expect("the node's flag parser accepts the rendered environment");
    let config = NodeConfig::load(args).expect("the node validates the rendered configuration");

    assert_eq!(config.id, "demo-zone-b-0");
    assert_eq!(config.listen, "0.0.0.0:7070");
    // Nodes are reached by name (the certificate names every pod through the headless Service).
    let own = "demo-zone-b-0.demo-peers.prod.svc.cluster.local";
    assert_eq!(config.advertise_addr(), format!("{own}:7070"));
    assert_eq!(config.peer_advertise_addr(), format!("{own}:7071"));
    assert_eq!(config.peer_listen, "0.0.0.0:7071");
    assert_eq!(config.health_listen, "0.0.0.0:7072");
    assert_eq!(config.tls.ca_cert.as_deref(), Some(std::path::Path::new("/etc/dynamo-tls/ca.crt")));
    assert_eq!(config.tls.cert.as_deref(), Some(std::path::Path::new("/etc/dynamo-tls/tls.crt")));
    assert_eq!(config.tls.key.as_deref(), Some(std::path::Path::new("/etc/dynamo-tls/tls.key")));
    assert_eq!(
        config.tokens_file.as_deref(),
        Some(std::path::Path::new("/etc/dynamo-tokens/tokens"))
    );
    assert!(!config.dev && !config.insecure, "TLS on, no development mode");
    assert_eq!(config.zone, "zone-b");
    assert_eq!(config.data_dir.as_deref(), Some(std::path::Path::new("/var/lib/dynamo")));
    assert_eq!(config.engine, EngineKind::Rocksdb);
    assert_eq!(config.seeds.len(), 3, "{:?}", config.seeds);
    assert_eq!(
        config.seeds[0], "demo-zone-a-0.demo-peers.prod.svc.cluster.local:7071",
        "seeds are the peer port"
    );
    assert_eq!(config.cluster.name, "demo.prod");
    assert_eq!(config.cluster.secret, "s3cret");
    assert_eq!(config.cluster.partitions, 1024);
    let q = config.quorum();
    assert_eq!((q.n, q.r, q.w), (3, 1, 2));
    assert_eq!(config.request_timeout_ms, 750);
    assert!(config.sync_writes);
    assert_eq!(config.limits.max_siblings, 16);
    assert!(!config.fault_injection, "production pods never accept fault injection");
}
