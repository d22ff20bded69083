//! One StatefulSet per zone, `<cluster>-<zone>`, pinned to that zone: the node container with
//! its environment (the node's contract), its three ports (client, peer, health), gRPC probes on
//! the plaintext health port (Ready only once the node has joined the ring), the TLS and token
//! Secrets mounted read-only, a volume per pod, and the volume retention policy.
//!
//! Pods are managed in parallel: the operator, not the StatefulSet controller, paces joins and
//! removals (one node at a time, removals only after a decommission), and ordered management
//! would block a scale-down behind any unhealthy lower ordinal.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    GRPCAction, KeyToPath, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile, SecretKeySelector,
    SecretVolumeSource, SecurityContext, TopologySpreadConstraint, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::ResourceExt;
use sha2::{Digest, Sha256};

use super::config::{node_toml, CONFIG_FILE, CONFIG_KEY};
use super::secret::SECRET_KEY;
use super::security::{
    tls_secret_name, tokens_secret_name, CA_CERT_KEY, TLS_CERT_KEY, TLS_DIR, TLS_HASH_ANNOTATION,
    TLS_KEY_KEY, TOKENS_DIR, TOKENS_KEY,
};
use super::{
    child_meta, config_map_name, headless_service_name, pod_name, secret_name, statefulset_name,
    zone_labels, zone_selector, RenderOptions, CLIENT_PORT, CONFIG_HASH_ANNOTATION, HEALTH_PORT,
    PEER_PORT, RESTARTED_AT_ANNOTATION, TOPOLOGY_ZONE_LABEL,
};
use crate::crd::{DynamoCluster, ZoneSpec};
use dynamo_api::contract::env as node_env;

/// Where the node's volume is mounted; the node's data directory.
pub const DATA_DIR: &str = "/var/lib/dynamo";
pub use dynamo_api::contract::READY_SERVICE;
/// Name of the volume claim template (PVCs are `<this>-<pod>`).
pub const VOLUME_NAME: &str = "data";
/// User and group the node runs as (the image's non-root user).
const NODE_UID: i64 = 10001;

/// The seed list: the peer port of the first pod of every zone in the spec, through the
/// headless Service. Every zone is listed whatever its replicas, so the list (and so the pods)
/// change only when zones are added or removed; the node re-resolves names, so a seed that does
/// not exist yet is harmless.
pub fn seeds(cluster: &DynamoCluster, options: &RenderOptions) -> String {
    let name = cluster.name_any();
    let namespace = cluster.namespace().unwrap_or_else(|| "default".into());
    let peers = headless_service_name(&name);
    cluster
        .spec
        .zones
        .iter()
        .map(|z| {
            format!(
                "{}.{peers}.{namespace}.svc.{}:{PEER_PORT}",
                pod_name(&name, &z.name, 0),
                options.cluster_domain
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..EnvVar::default() }
}

fn env_field(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn grpc_probe(service: Option<&str>, period: i32, failures: i32) -> Probe {
    Probe {
        grpc: Some(GRPCAction {
            port: HEALTH_PORT,
            service: service.map(Into::into),
            ..GRPCAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(5),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

fn config_hash(cluster: &DynamoCluster) -> String {
    hex::encode(&Sha256::digest(node_toml(cluster).as_bytes())[..8])
}

fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// A Secret volume of the given keys, readable by the node's group only (the pod's fsGroup).
fn secret_volume(name: &str, secret: String, keys: &[&str]) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret),
            items: Some(
                keys.iter()
                    .map(|k| KeyToPath {
                        key: (*k).into(),
                        path: (*k).into(),
                        ..KeyToPath::default()
                    })
                    .collect(),
            ),
            default_mode: Some(0o440),
            optional: Some(false),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// The node container. Its settings follow the node's contract: the shared file from the
/// ConfigMap, and per pod `DYNAMO_*` variables. A node advertises its name through the headless
/// Service (which the nodes' certificate covers), not its IP.
fn node_container(cluster: &DynamoCluster, zone: &ZoneSpec, options: &RenderOptions) -> Container {
    let name = cluster.name_any();
    let spec = &cluster.spec;
    let own_name = format!(
        "$({}).{}.{}.svc.{}",
        node_env::ID,
        headless_service_name(&name),
        cluster.namespace().unwrap_or_else(|| "default".into()),
        options.cluster_domain
    );
    Container {
        name: "node".into(),
        image: Some(spec.image.clone()),
        image_pull_policy: Some(spec.image_pull_policy.as_str().into()),
        args: Some(vec!["--config".into(), CONFIG_FILE.into()]),
        ports: Some(vec![
            container_port("client", CLIENT_PORT),
            container_port("peer", PEER_PORT),
            container_port("health", HEALTH_PORT),
        ]),
        env: Some(vec![
            env_field(node_env::ID, "metadata.name"),
            env(node_env::LISTEN, format!("0.0.0.0:{CLIENT_PORT}")),
            env(node_env::ADVERTISE, format!("{own_name}:{CLIENT_PORT}")),
            env(node_env::PEER_ADVERTISE, format!("{own_name}:{PEER_PORT}")),
            env(node_env::ZONE, zone.name.clone()),
            env(node_env::DATA_DIR, DATA_DIR),
            env(node_env::SEEDS, seeds(cluster, options)),
            EnvVar {
                name: node_env::CLUSTER_SECRET.into(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: secret_name(&name),
                        key: SECRET_KEY.into(),
                        optional: Some(false),
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            },
        ]),
        resources: Some(spec.resources.clone()),
        // Serving (alive) as soon as the process runs; RocksDB may take a while to open, which the
        // startup probe allows for (up to 5 minutes) before liveness counts.
        startup_probe: Some(grpc_probe(None, 5, 60)),
        liveness_probe: Some(grpc_probe(None, 10, 6)),
        // Ready only once the node has joined the ring: Services, PDBs and rolling updates then
        // reflect membership, not just a running process.
        readiness_probe: Some(grpc_probe(Some(READY_SERVICE), 5, 3)),
        volume_mounts: Some(vec![
            VolumeMount {
                name: VOLUME_NAME.into(),
                mount_path: DATA_DIR.into(),
                ..VolumeMount::default()
            },
            mount("config", "/etc/dynamo"),
            mount("tls", TLS_DIR),
            mount("tokens", TOKENS_DIR),
        ]),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

/// Annotations of the pod template: the hash of the node configuration (a settings change is a
/// template change, so it rolls), the hash of the nodes' certificate (a renewed certificate rolls
/// the pods onto it), and the cluster's `dynamokv.io/restartedAt` when set (changing it rolls
/// every pod, as `kubectl rollout restart` does for a Deployment).
fn template_annotations(cluster: &DynamoCluster, tls_hash: &str) -> BTreeMap<String, String> {
    let mut annotations = BTreeMap::from([
        (CONFIG_HASH_ANNOTATION.into(), config_hash(cluster)),
        (TLS_HASH_ANNOTATION.into(), tls_hash.into()),
    ]);
    if let Some(at) = cluster.annotations().get(RESTARTED_AT_ANNOTATION) {
        annotations.insert(RESTARTED_AT_ANNOTATION.into(), at.clone());
    }
    annotations
}

/// The StatefulSet of `zone` with `replicas` pods. `replicas` is the operator's decision for
/// this pass (one step from the current towards the spec), not necessarily the spec's;
/// `tls_hash` is the [`super::security::cert_hash`] of the certificate in `<cluster>-tls`.
pub fn statefulset(
    cluster: &DynamoCluster,
    zone: &ZoneSpec,
    replicas: i32,
    options: &RenderOptions,
    tls_hash: &str,
) -> StatefulSet {
    let name = cluster.name_any();
    let spec = &cluster.spec;
    let labels = zone_labels(&name, &zone.name);
    let node_selector = zone
        .node_selector
        .clone()
        .unwrap_or_else(|| BTreeMap::from([(TOPOLOGY_ZONE_LABEL.to_string(), zone.name.clone())]));
    let retention = spec.persistent_volume_claim_retention_policy;

    let pod = PodSpec {
        containers: vec![node_container(cluster, zone, options)],
        node_selector: (!node_selector.is_empty()).then_some(node_selector),
        affinity: zone.affinity.clone(),
        tolerations: (!zone.tolerations.is_empty()).then(|| zone.tolerations.clone()),
        // Within a zone, spread nodes over machines when the scheduler can.
        topology_spread_constraints: Some(vec![TopologySpreadConstraint {
            max_skew: 1,
            topology_key: "kubernetes.io/hostname".into(),
            when_unsatisfiable: "ScheduleAnyway".into(),
            label_selector: Some(LabelSelector {
                match_labels: Some(zone_selector(&name, &zone.name)),
                ..LabelSelector::default()
            }),
            ..TopologySpreadConstraint::default()
        }]),
        image_pull_secrets: (!spec.image_pull_secrets.is_empty())
            .then(|| spec.image_pull_secrets.clone()),
        // Time to finish in-flight requests and flush on SIGTERM.
        termination_grace_period_seconds: Some(60),
        // A node never calls the Kubernetes API: a stolen pod gets no token.
        automount_service_account_token: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(NODE_UID),
            run_as_group: Some(NODE_UID),
            fs_group: Some(NODE_UID),
            fs_group_change_policy: Some("OnRootMismatch".into()),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        volumes: Some(vec![
            Volume {
                name: "config".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: config_map_name(&name),
                    items: Some(vec![KeyToPath {
                        key: CONFIG_KEY.into(),
                        path: CONFIG_KEY.into(),
                        ..Default::default()
                    }]),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
            secret_volume("tls", tls_secret_name(&name), &[CA_CERT_KEY, TLS_CERT_KEY, TLS_KEY_KEY]),
            secret_volume("tokens", tokens_secret_name(&name), &[TOKENS_KEY]),
        ]),
        ..PodSpec::default()
    };

    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(VOLUME_NAME.into()),
            labels: Some(zone_selector(&name, &zone.name)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: spec.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".into(), spec.storage.size.clone())])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    };

    StatefulSet {
        metadata: child_meta(cluster, statefulset_name(&name, &zone.name), labels.clone()),
        spec: StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(headless_service_name(&name)),
            pod_management_policy: Some("Parallel".into()),
            // The operator restarts pods itself, one at a time across every zone, when each
            // restart is safe (crate::rollout); Kubernetes never restarts one on its own.
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                ..StatefulSetUpdateStrategy::default()
            }),
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_scaled: Some(retention.when_scaled.as_str().into()),
                    when_deleted: Some(retention.when_deleted.as_str().into()),
                },
            ),
            selector: LabelSelector {
                match_labels: Some(zone_selector(&name, &zone.name)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(template_annotations(cluster, tls_hash)),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            volume_claim_templates: Some(vec![claim]),
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Toleration;
    use serde_json::{json, Value};

    use super::*;
    use crate::crd::RetentionPolicy;
    use crate::render::tests::cluster;

    fn render(c: &DynamoCluster, zone: &str, replicas: i32) -> Value {
        let z = c.spec.zone(zone).unwrap();
        serde_json::to_value(statefulset(c, z, replicas, &RenderOptions::default(), "tls-hash-1"))
            .unwrap()
    }

    #[test]
    fn statefulset_of_the_example_cluster() {
        let c = cluster(&[("zone-a", 1), ("zone-b", 1), ("zone-c", 1)]);
        let sts = render(&c, "zone-b", 1);
        let hash =
            sts["spec"]["template"]["metadata"]["annotations"]["dynamokv.io/config-hash"].clone();
        assert_eq!(hash.as_str().unwrap().len(), 16);
        let labels = json!({
            "app.kubernetes.io/name": "dynamo",
            "app.kubernetes.io/instance": "demo",
            "app.kubernetes.io/managed-by": "dynamo-operator",
            "app.kubernetes.io/component": "node",
            "dynamokv.io/cluster": "demo",
            "dynamokv.io/zone": "zone-b",
        });
        let selector = json!({
            "app.kubernetes.io/name": "dynamo", "dynamokv.io/cluster": "demo", "dynamokv.io/zone": "zone-b",
        });
        let probe = |service: Option<&str>, period: i32, failures: i32| {
            let mut grpc = json!({"port": 7072});
            if let Some(s) = service {
                grpc["service"] = json!(s);
            }
            json!({"grpc": grpc, "periodSeconds": period, "timeoutSeconds": 5, "failureThreshold": failures})
        };
        let want = json!({
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {
                "name": "demo-zone-b",
                "namespace": "default",
                "labels": labels,
                "ownerReferences": [{
                    "apiVersion": "dynamokv.io/v1alpha1", "kind": "DynamoCluster", "name": "demo",
                    "uid": "6f1f0b2e-0000-4000-8000-000000000001", "controller": true,
                    "blockOwnerDeletion": true,
                }],
            },
            "spec": {
                "replicas": 1,
                "serviceName": "demo-peers",
                "podManagementPolicy": "Parallel",
                "updateStrategy": {"type": "OnDelete"},
                "persistentVolumeClaimRetentionPolicy": {"whenScaled": "Delete", "whenDeleted": "Retain"},
                "selector": {"matchLabels": selector},
                "template": {
                    "metadata": {"labels": labels, "annotations": {
                        "dynamokv.io/config-hash": hash, "dynamokv.io/tls-hash": "tls-hash-1"}},
                    "spec": {
                        "containers": [{
                            "name": "node",
                            "image": crate::crd::default_node_image(),
                            "imagePullPolicy": "IfNotPresent",
                            "args": ["--config", "/etc/dynamo/node.toml"],
                            "ports": [
                                {"name": "client", "containerPort": 7070, "protocol": "TCP"},
                                {"name": "peer", "containerPort": 7071, "protocol": "TCP"},
                                {"name": "health", "containerPort": 7072, "protocol": "TCP"},
                            ],
                            "env": [
                                {"name": "DYNAMO_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                                {"name": "DYNAMO_LISTEN", "value": "0.0.0.0:7070"},
                                {"name": "DYNAMO_ADVERTISE", "value":
                                    "$(DYNAMO_ID).demo-peers.default.svc.cluster.local:7070"},
                                {"name": "DYNAMO_PEER_ADVERTISE", "value":
                                    "$(DYNAMO_ID).demo-peers.default.svc.cluster.local:7071"},
                                {"name": "DYNAMO_ZONE", "value": "zone-b"},
                                {"name": "DYNAMO_DATA_DIR", "value": "/var/lib/dynamo"},
                                {"name": "DYNAMO_SEEDS", "value":
                                    "demo-zone-a-0.demo-peers.default.svc.cluster.local:7071,\
                                     demo-zone-b-0.demo-peers.default.svc.cluster.local:7071,\
                                     demo-zone-c-0.demo-peers.default.svc.cluster.local:7071"},
                                {"name": "DYNAMO_CLUSTER_SECRET", "valueFrom": {"secretKeyRef": {
                                    "name": "demo-secret", "key": "secret", "optional": false}}},
                            ],
                            "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
                            "startupProbe": probe(None, 5, 60),
                            "livenessProbe": probe(None, 10, 6),
                            "readinessProbe": probe(Some("dynamo.ready"), 5, 3),
                            "volumeMounts": [
                                {"name": "data", "mountPath": "/var/lib/dynamo"},
                                {"name": "config", "mountPath": "/etc/dynamo", "readOnly": true},
                                {"name": "tls", "mountPath": "/etc/dynamo-tls", "readOnly": true},
                                {"name": "tokens", "mountPath": "/etc/dynamo-tokens", "readOnly": true},
                            ],
                            "securityContext": {
                                "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                "runAsNonRoot": true, "capabilities": {"drop": ["ALL"]},
                            },
                        }],
                        "nodeSelector": {"topology.kubernetes.io/zone": "zone-b"},
                        "topologySpreadConstraints": [{
                            "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": selector},
                        }],
                        "terminationGracePeriodSeconds": 60,
                        "automountServiceAccountToken": false,
                        "securityContext": {
                            "runAsNonRoot": true, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
                            "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "volumes": [
                            {"name": "config", "configMap": {
                                "name": "demo-config", "items": [{"key": "node.toml", "path": "node.toml"}]}},
                            {"name": "tls", "secret": {
                                "secretName": "demo-tls", "defaultMode": 0o440, "optional": false,
                                "items": [{"key": "ca.crt", "path": "ca.crt"},
                                          {"key": "tls.crt", "path": "tls.crt"},
                                          {"key": "tls.key", "path": "tls.key"}]}},
                            {"name": "tokens", "secret": {
                                "secretName": "demo-tokens", "defaultMode": 0o440, "optional": false,
                                "items": [{"key": "tokens", "path": "tokens"}]}},
                        ],
                    },
                },
                "volumeClaimTemplates": [{
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "metadata": {"name": "data", "labels": selector},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}},
                }],
            },
        });
        assert_eq!(sts, want, "got:\n{}", serde_json::to_string_pretty(&sts).unwrap());
    }

    #[test]
    fn placement_resources_and_storage_follow_the_spec() {
        let mut c = cluster(&[("us-east-1a", 2), ("b", 2)]);
        c.metadata.namespace = Some("prod".into());
        let z = &mut c.spec.zones[0];
        z.node_selector = Some(BTreeMap::from([("pool".into(), "storage".into())]));
        z.tolerations = vec![Toleration {
            key: Some("dedicated".into()),
            operator: Some("Equal".into()),
            value: Some("dynamo".into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        }];
        c.spec.zones[1].node_selector = Some(BTreeMap::new());
        c.spec.storage.size =
            k8s_openapi::apimachinery::pkg::api::resource::Quantity("100Gi".into());
        c.spec.storage.storage_class_name = Some("fast-ssd".into());
        c.spec.resources.limits = Some(BTreeMap::from([(
            "cpu".into(),
            k8s_openapi::apimachinery::pkg::api::resource::Quantity("2".into()),
        )]));
        c.spec.persistent_volume_claim_retention_policy.when_deleted = RetentionPolicy::Delete;
        c.spec.persistent_volume_claim_retention_policy.when_scaled = RetentionPolicy::Retain;

        let a = render(&c, "us-east-1a", 2);
        let pod = &a["spec"]["template"]["spec"];
        assert_eq!(a["spec"]["replicas"], 2);
        assert_eq!(pod["nodeSelector"], json!({"pool": "storage"}));
        assert_eq!(pod["tolerations"][0]["key"], "dedicated");
        assert_eq!(pod["containers"][0]["resources"]["limits"], json!({"cpu": "2"}));
        assert_eq!(
            a["spec"]["volumeClaimTemplates"][0]["spec"],
            json!({"accessModes": ["ReadWriteOnce"], "storageClassName": "fast-ssd",
                   "resources": {"requests": {"storage": "100Gi"}}})
        );
        assert_eq!(
            a["spec"]["persistentVolumeClaimRetentionPolicy"],
            json!({"whenScaled": "Retain", "whenDeleted": "Delete"})
        );
        let env = &pod["containers"][0]["env"];
        assert_eq!(env[4], json!({"name": "DYNAMO_ZONE", "value": "us-east-1a"}));
        assert_eq!(
            env[6]["value"],
            "demo-us-east-1a-0.demo-peers.prod.svc.cluster.local:7071,demo-b-0.demo-peers.prod.svc.cluster.local:7071"
        );
        assert_eq!(env[2]["value"], "$(DYNAMO_ID).demo-peers.prod.svc.cluster.local:7070");

        let b = render(&c, "b", 0);
        assert_eq!(b["spec"]["replicas"], 0);
        assert_eq!(
            b["spec"]["template"]["spec"].get("nodeSelector"),
            None,
            "an empty selector unpins"
        );
    }

    #[test]
    fn a_new_certificate_rolls_the_pods() {
        let c = cluster(&[("a", 3)]);
        let z = c.spec.zone("a").unwrap();
        let template = |hash: &str| {
            serde_json::to_value(statefulset(&c, z, 3, &RenderOptions::default(), hash)).unwrap()
                ["spec"]["template"]
                .clone()
        };
        assert_eq!(template("one"), template("one"));
        assert_ne!(template("one"), template("two"));
        assert_eq!(template("two")["metadata"]["annotations"]["dynamokv.io/tls-hash"], "two");
    }

    #[test]
    fn config_changes_roll_the_pods_and_replicas_do_not() {
        let mut c = cluster(&[("a", 3)]);
        let hash = |v: &Value| v["spec"]["template"]["metadata"]["annotations"].clone();
        let before = render(&c, "a", 3);
        assert_eq!(hash(&before), hash(&render(&c, "a", 2)));
        c.spec.node_config.request_timeout_ms = Some(100);
        assert_ne!(hash(&before), hash(&render(&c, "a", 3)));
    }

    #[test]
    fn seeds_use_the_cluster_domain() {
        let c = cluster(&[("a", 1)]);
        let options =
            RenderOptions { cluster_domain: "example.internal".into(), ..RenderOptions::default() };
        assert_eq!(seeds(&c, &options), "demo-a-0.demo-peers.default.svc.example.internal:7071");
    }

    #[test]
    fn every_variable_is_one_the_node_reads() {
        let node_vars = crate::render::NODE_ENV;
        let sts = render(&cluster(&[("a", 1)]), "a", 1);
        for var in sts["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap() {
            let name = var["name"].as_str().unwrap();
            assert!(node_vars.contains(&name), "{name} is not in the node's contract");
        }
    }
}
