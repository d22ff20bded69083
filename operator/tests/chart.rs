//! The Helm chart rendered by a real `helm template`: every document is a valid Kubernetes
//! object (it decodes into its k8s-openapi type and encodes back to the same JSON, so no field
//! is misspelled or misplaced), the operator's arguments parse, RBAC grants what the controller
//! uses, and the CRD is the generated one. Needs helm: run through `scripts/helm-lint`, which
//! installs it and sets DYNAMO_HELM (the tests are ignored in a plain `cargo test`).

use std::process::Command;

use clap::Parser;
use dynamo_operator::config::Config;
use dynamo_operator::crd::DynamoCluster;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

fn helm() -> String {
    std::env::var("DYNAMO_HELM").unwrap_or_else(|_| "helm".into())
}

/// `helm template` of the chart with `--set` values; Err(stderr) when helm refuses.
fn render(sets: &[&str]) -> Result<Vec<Value>, String> {
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/dynamo-operator");
    let mut cmd = Command::new(helm());
    cmd.args([
        "template",
        "dyn",
        chart,
        "--namespace",
        "dynamo-system",
        "--include-crds",
        "--kube-version",
        "1.34.0",
    ]);
    for set in sets {
        cmd.args(["--set", set]);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} (run scripts/helm-lint): {e}", helm()));
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8(out.stdout).unwrap();
    Ok(serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde_yaml::Value::deserialize(doc).expect("helm prints YAML"))
        .filter(|v| !v.is_null())
        .map(|v| serde_json::to_value(v).unwrap())
        .collect())
}

fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// Decodes `doc` as `T` and checks nothing was dropped or changed on the way.
fn typed<T: DeserializeOwned + serde::Serialize>(doc: &Value) -> T {
    let object: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| {
        panic!("{} {} is not valid: {e}", doc["kind"], doc["metadata"]["name"])
    });
    let mut back = serde_json::to_value(&object).unwrap();
    let mut original = doc.clone();
    strip_nulls(&mut back);
    strip_nulls(&mut original);
    assert_eq!(
        back, original,
        "{} {} has fields its type does not know",
        doc["kind"], doc["metadata"]["name"]
    );
    object
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn grants(rules: &[PolicyRule], group: &str, resource: &str, verb: &str) -> bool {
    rules.iter().any(|r| {
        r.api_groups.as_ref().is_some_and(|g| g.iter().any(|g| g == group))
            && r.resources.as_ref().is_some_and(|rs| rs.iter().any(|r| r == resource))
            && r.verbs.iter().any(|v| v == verb)
    })
}

/// What the controller calls (see operator/src/controller.rs).
const NEEDED: &[(&str, &str, &[&str])] = &[
    ("dynamokv.io", "dynamoclusters", &["get", "list", "watch"]),
    ("dynamokv.io", "dynamoclusters/status", &["patch"]),
    ("dynamokv.io", "dynamoclusters/finalizers", &["update"]),
    ("apps", "statefulsets", &["get", "list", "watch", "create", "patch", "delete"]),
    ("", "services", &["list", "watch", "create", "patch"]),
    ("", "configmaps", &["list", "watch", "create", "patch"]),
    ("policy", "poddisruptionbudgets", &["list", "watch", "create", "patch"]),
    ("networking.k8s.io", "networkpolicies", &["list", "watch", "create", "patch"]),
    ("", "secrets", &["get", "create", "patch"]),
    ("cert-manager.io", "certificates", &["get", "create", "patch"]),
    ("", "pods", &["list", "delete"]),
    ("", "persistentvolumeclaims", &["list", "patch", "delete"]),
    ("events.k8s.io", "events", &["create", "patch"]),
];

/// Cluster-scoped reads, granted by a ClusterRole whatever namespace is watched.
const NEEDED_CLUSTER_WIDE: &[(&str, &str, &[&str])] = &[
    ("storage.k8s.io", "storageclasses", &["list"]),
    ("", "persistentvolumes", &["get"]),
    ("", "nodes", &["list"]),
];

fn cluster_reader(docs: &[Value]) -> ClusterRole {
    let role = of_kind(docs, "ClusterRole")
        .into_iter()
        .map(typed::<ClusterRole>)
        .find(|r| r.metadata.name.as_deref().is_some_and(|n| n.ends_with("-cluster-reader")))
        .expect("a cluster-reader ClusterRole");
    for (group, resource, verbs) in NEEDED_CLUSTER_WIDE {
        for verb in *verbs {
            assert!(
                grants(role.rules.as_ref().unwrap(), group, resource, verb),
                "the cluster reader lacks {verb} on {group}/{resource}"
            );
        }
    }
    role
}

fn check_every_document(docs: &[Value]) {
    for doc in docs {
        match doc["kind"].as_str().unwrap_or_default() {
            "Deployment" => drop(typed::<Deployment>(doc)),
            "ServiceAccount" => drop(typed::<ServiceAccount>(doc)),
            "Service" => drop(typed::<Service>(doc)),
            "ClusterRole" => drop(typed::<ClusterRole>(doc)),
            "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(doc)),
            "Role" => drop(typed::<Role>(doc)),
            "RoleBinding" => drop(typed::<RoleBinding>(doc)),
            "CustomResourceDefinition" => drop(typed::<CustomResourceDefinition>(doc)),
            other => panic!("unexpected kind {other} in the chart"),
        }
    }
}

fn operator_config(docs: &[Value]) -> Config {
    let deployment: Deployment = typed(of_kind(docs, "Deployment")[0]);
    let container = &deployment.spec.template.spec.unwrap().containers[0];
    let args = std::iter::once("dynamo-operator".to_string())
        .chain(container.args.clone().unwrap_or_default());
    let config = Config::try_parse_from(args).expect("the chart's arguments parse");
    config.validate().expect("the chart's arguments are consistent");
    config
}

#[test]
#[ignore = "needs helm: run scripts/helm-lint"]
fn default_values_render_a_cluster_wide_operator() {
    let docs = render(&[]).unwrap();
    check_every_document(&docs);
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    for kind in [
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
    ] {
        assert!(kinds.contains(&kind), "no {kind} in {kinds:?}");
    }
    let crd = serde_json::to_value(DynamoCluster::crd()).unwrap();
    assert_eq!(
        of_kind(&docs, "CustomResourceDefinition")[0],
        &crd,
        "the chart's CRD is the generated one"
    );

    let config = operator_config(&docs);
    assert!(config.leader_elect);
    assert_eq!(config.namespace, None);
    let deployment: Deployment = typed(of_kind(&docs, "Deployment")[0]);
    assert_eq!(deployment.spec.replicas, Some(2));

    let role: ClusterRole = typed(of_kind(&docs, "ClusterRole")[0]);
    let rules = role.rules.unwrap();
    cluster_reader(&docs);
    for (group, resource, verbs) in NEEDED {
        for verb in *verbs {
            assert!(
                grants(&rules, group, resource, verb),
                "the ClusterRole lacks {verb} on {group}/{resource}"
            );
        }
    }
    for verb in ["list", "watch", "delete", "*"] {
        assert!(!grants(&rules, "", "secrets", verb), "least privilege: no {verb} of Secrets");
    }
    assert!(!grants(&rules, "cert-manager.io", "certificates", "delete"));
    // The nodes' NetworkPolicy admits exactly the chart's operator pods.
    assert_eq!(
        dynamo_operator::render::parse_labels(&config.operator_pod_labels).unwrap(),
        std::collections::BTreeMap::from([
            ("app.kubernetes.io/name".to_string(), "dynamo-operator".to_string()),
            ("app.kubernetes.io/instance".to_string(), "dyn".to_string()),
        ])
    );
    let pod_labels = deployment.spec.template.metadata.as_ref().unwrap();
    for (k, v) in dynamo_operator::render::parse_labels(&config.operator_pod_labels).unwrap() {
        assert_eq!(pod_labels.labels.as_ref().unwrap().get(&k), Some(&v), "pod label {k}");
    }
    let lease: Role = typed(of_kind(&docs, "Role")[0]);
    let lease_rules = lease.rules.unwrap();
    for verb in ["get", "create", "update"] {
        assert!(grants(&lease_rules, "coordination.k8s.io", "leases", verb), "no {verb} on leases");
    }
    assert_eq!(lease.metadata.namespace.as_deref(), Some("dynamo-system"));
    let service: Service = typed(of_kind(&docs, "Service")[0]);
    assert_eq!(service.spec.unwrap().ports.unwrap()[0].port, 8080);
}

#[test]
#[ignore = "needs helm: run scripts/helm-lint"]
fn a_watched_namespace_gets_a_role_there() {
    let docs = render(&["watchNamespace=databases"]).unwrap();
    check_every_document(&docs);
    assert_eq!(of_kind(&docs, "ClusterRole").len(), 1, "only the cluster-scoped reads");
    let reader = cluster_reader(&docs);
    assert!(!grants(reader.rules.as_ref().unwrap(), "apps", "statefulsets", "patch"));
    let roles: Vec<Role> = of_kind(&docs, "Role").into_iter().map(typed).collect();
    let main = roles
        .iter()
        .find(|r| r.metadata.namespace.as_deref() == Some("databases"))
        .expect("a Role in databases");
    assert!(grants(main.rules.as_ref().unwrap(), "apps", "statefulsets", "patch"));
    assert_eq!(operator_config(&docs).namespace.as_deref(), Some("databases"));
}

#[test]
#[ignore = "needs helm: run scripts/helm-lint"]
fn leader_election_off_needs_a_single_replica() {
    let docs = render(&["leaderElection.enabled=false", "replicaCount=1"]).unwrap();
    check_every_document(&docs);
    assert!(!operator_config(&docs).leader_elect);
    assert!(of_kind(&docs, "Role").is_empty(), "no Lease permissions without leader election");
    let err = render(&["leaderElection.enabled=false"]).unwrap_err();
    assert!(err.contains("replicaCount > 1 needs leaderElection.enabled=true"), "{err}");
}
