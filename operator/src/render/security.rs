//! What secures a cluster, as objects: the cluster CA's Secret, the nodes' certificate Secret
//! (or the cert-manager `Certificate` that writes it), the token Secrets and the hashed token
//! file the nodes read, and the NetworkPolicy that fences the nodes' ports.
//!
//! One certificate serves every node of a cluster. A StatefulSet gives all its pods one
//! template, so a pod cannot mount a Secret of its own; the certificate therefore names every pod
//! at once with the wildcard of the headless Service (`*.<cluster>-peers.<ns>.svc...`), and the
//! client Service's names. Its role is `peer`: nodes dial each other with it, and clients verify
//! a node with the cluster CA and those names.

use std::collections::BTreeMap;
use std::time::Duration;

use dynamo_api::security::{CertRequest, Role, TokenEntry, Tokens};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use kube::api::{ApiResource, DynamicObject};
use kube::ResourceExt;
use sha2::{Digest, Sha256};

use super::{
    child_meta, client_service_name, cluster_selector, common_labels, headless_service_name,
    RenderOptions, CLIENT_PORT, HEALTH_PORT, PEER_PORT,
};
use crate::crd::{DynamoCluster, IssuerRef, RetentionPolicy};

/// Key of the CA certificate (in `<cluster>-ca` and `<cluster>-tls`).
pub const CA_CERT_KEY: &str = "ca.crt";
/// Key of the CA's private key in `<cluster>-ca`.
pub const CA_KEY_KEY: &str = "ca.key";
/// Key of the nodes' certificate in `<cluster>-tls`.
pub const TLS_CERT_KEY: &str = "tls.crt";
/// Key of the nodes' private key in `<cluster>-tls`.
pub const TLS_KEY_KEY: &str = "tls.key";
/// Key of a token in `<cluster>-admin-token` and `<cluster>-client-token`.
pub const TOKEN_KEY: &str = "token";
/// Key of the token file in `<cluster>-tokens`.
pub const TOKENS_KEY: &str = "tokens";
/// Where the pods see `<cluster>-tls`.
pub const TLS_DIR: &str = "/etc/dynamo-tls";
/// Where the pods see `<cluster>-tokens`.
pub const TOKENS_DIR: &str = "/etc/dynamo-tokens";
/// Annotation on `<cluster>-tls` when the operator issued it: hash of what the certificate was
/// asked to say (names, role, lifetime), so a change of any of them issues a new one.
pub const CERT_REQUEST_ANNOTATION: &str = "dynamokv.io/cert-request";
/// Annotation on the pod template: hash of the nodes' certificate, so a new certificate rolls
/// the pods (one at a time) onto it.
pub const TLS_HASH_ANNOTATION: &str = "dynamokv.io/tls-hash";
/// Lifetime of a cluster CA the operator creates. The CA is never rotated by the operator (its
/// fingerprint is half the cluster's identity); ten years.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);
/// Subject name of the nodes' certificate.
pub const NODE_CERT_NAME: &str = "dynamo-node";

/// Name of the Secret holding the cluster CA (`ca.crt`, `ca.key`).
pub fn ca_secret_name(cluster: &str) -> String {
    format!("{cluster}-ca")
}

/// Name of the Secret holding the nodes' certificate (`ca.crt`, `tls.crt`, `tls.key`).
pub fn tls_secret_name(cluster: &str) -> String {
    format!("{cluster}-tls")
}

/// Name of the Secret holding the admin token in clear (key `token`).
pub fn admin_token_secret_name(cluster: &str) -> String {
    format!("{cluster}-admin-token")
}

/// Name of the Secret holding the client (readwrite) token in clear (key `token`).
pub fn client_token_secret_name(cluster: &str) -> String {
    format!("{cluster}-client-token")
}

/// Name of the Secret holding the hashed token file the nodes read (key `tokens`).
pub fn tokens_secret_name(cluster: &str) -> String {
    format!("{cluster}-tokens")
}

/// Name of the NetworkPolicy.
pub fn network_policy_name(cluster: &str) -> String {
    cluster.to_string()
}

/// SHA-256 of a PEM certificate, first 16 hex digits: the pod template annotation.
pub fn cert_hash(cert_pem: &str) -> String {
    hex::encode(&Sha256::digest(cert_pem.as_bytes())[..8])
}

/// The names the nodes' certificate must carry: every pod through the headless Service (the
/// nodes' advertised addresses), the client Service under each name a client may use, and
/// `localhost` (a process in the pod).
pub fn node_dns_names(cluster: &DynamoCluster, options: &RenderOptions) -> Vec<String> {
    let name = cluster.name_any();
    let ns = cluster.namespace().unwrap_or_else(|| "default".into());
    let peers = headless_service_name(&name);
    let svc = client_service_name(&name);
    let domain = &options.cluster_domain;
    vec![
        format!("*.{peers}.{ns}.svc"),
        format!("*.{peers}.{ns}.svc.{domain}"),
        svc.clone(),
        format!("{svc}.{ns}"),
        format!("{svc}.{ns}.svc"),
        format!("{svc}.{ns}.svc.{domain}"),
        "localhost".into(),
    ]
}

/// The DNS name of pod `pod` through the headless Service: what it advertises.
pub fn pod_dns_name(cluster: &DynamoCluster, pod: &str, options: &RenderOptions) -> String {
    let name = cluster.name_any();
    let ns = cluster.namespace().unwrap_or_else(|| "default".into());
    format!("{pod}.{}.{ns}.svc.{}", headless_service_name(&name), options.cluster_domain)
}

/// The name the operator verifies a node's certificate against when it dials a pod by IP: the
/// client Service's (every node's certificate carries it).
pub fn node_server_name(cluster: &DynamoCluster) -> String {
    let ns = cluster.namespace().unwrap_or_else(|| "default".into());
    format!("{}.{ns}.svc", client_service_name(&cluster.name_any()))
}

/// What the nodes' certificate says: role peer, [`node_dns_names`], the spec's lifetime.
/// `None` when the lifetime is not a duration (the spec is invalid and nothing is issued).
pub fn node_cert_request(cluster: &DynamoCluster, options: &RenderOptions) -> Option<CertRequest> {
    Some(CertRequest {
        name: NODE_CERT_NAME.into(),
        role: Role::Peer,
        dns_names: node_dns_names(cluster, options),
        ips: vec![],
        lifetime: cluster.spec.tls.lifetime()?,
    })
}

/// Hash of a certificate request (names, role, lifetime), recorded on the Secret.
pub fn request_hash(request: &CertRequest) -> String {
    let text = format!(
        "{}|{}|{}|{}",
        request.name,
        request.role,
        request.dns_names.join(","),
        request.lifetime.as_secs()
    );
    hex::encode(&Sha256::digest(text.as_bytes())[..8])
}

fn secret(
    cluster: &DynamoCluster,
    name: String,
    owned: bool,
    data: &[(&str, &str)],
    annotations: BTreeMap<String, String>,
) -> Secret {
    let mut metadata = child_meta(cluster, name, common_labels(&cluster.name_any()));
    if !owned {
        metadata.owner_references = None;
    }
    if !annotations.is_empty() {
        metadata.annotations = Some(annotations);
    }
    Secret {
        metadata,
        type_: Some("Opaque".into()),
        data: Some(
            data.iter().map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec()))).collect(),
        ),
        ..Secret::default()
    }
}

/// Whether Secrets that outlive the pods (the CA, the tokens) are deleted with the cluster: only
/// when its volumes are. Kept volumes keep their CA (the cluster's identity) and tokens, so a
/// cluster re-created with the same name finds them and its clients keep working.
fn kept_with_volumes(cluster: &DynamoCluster) -> bool {
    cluster.spec.persistent_volume_claim_retention_policy.when_deleted == RetentionPolicy::Delete
}

/// `<cluster>-ca`: the cluster CA's certificate and key. Created once, never rewritten.
pub fn ca_secret(cluster: &DynamoCluster, cert_pem: &str, key_pem: &str) -> Secret {
    secret(
        cluster,
        ca_secret_name(&cluster.name_any()),
        kept_with_volumes(cluster),
        &[(CA_CERT_KEY, cert_pem), (CA_KEY_KEY, key_pem)],
        BTreeMap::new(),
    )
}

/// `<cluster>-tls`: the CA's certificate and the nodes' certificate and key, with the hash of
/// the request it was issued for.
pub fn tls_secret(
    cluster: &DynamoCluster,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    request_hash: &str,
) -> Secret {
    secret(
        cluster,
        tls_secret_name(&cluster.name_any()),
        true,
        &[(CA_CERT_KEY, ca_pem), (TLS_CERT_KEY, cert_pem), (TLS_KEY_KEY, key_pem)],
        BTreeMap::from([(CERT_REQUEST_ANNOTATION.to_string(), request_hash.to_string())]),
    )
}

/// A token Secret (`<cluster>-admin-token` or `<cluster>-client-token`). Created once.
pub fn token_secret(cluster: &DynamoCluster, name: String, token: &str) -> Secret {
    secret(cluster, name, kept_with_volumes(cluster), &[(TOKEN_KEY, token)], BTreeMap::new())
}

/// The token file: the admin token with role admin (name `admin`), the client token with role
/// readwrite (name `client`), hashed.
pub fn tokens_file(admin_token: &str, client_token: &str) -> String {
    Tokens::new(vec![
        TokenEntry::for_token(Role::Admin, "admin", admin_token),
        TokenEntry::for_token(Role::ReadWrite, "client", client_token),
    ])
    .render()
}

/// `<cluster>-tokens`: the hashed token file the nodes read (`tokens_file`).
pub fn tokens_secret(cluster: &DynamoCluster, admin_token: &str, client_token: &str) -> Secret {
    secret(
        cluster,
        tokens_secret_name(&cluster.name_any()),
        true,
        &[(TOKENS_KEY, &tokens_file(admin_token, client_token))],
        BTreeMap::new(),
    )
}

/// cert-manager's `Certificate` resource (no dependency on its types).
pub fn certificate_resource() -> ApiResource {
    ApiResource {
        group: "cert-manager.io".into(),
        version: "v1".into(),
        api_version: "cert-manager.io/v1".into(),
        kind: "Certificate".into(),
        plural: "certificates".into(),
    }
}

/// The cert-manager `Certificate` `<cluster>-tls` that has `issuer` write the nodes'
/// certificate into the Secret `<cluster>-tls`, with the same names, role URI and lifetime as
/// the operator's own. A new private key at every renewal.
pub fn certificate(
    cluster: &DynamoCluster,
    issuer: &IssuerRef,
    options: &RenderOptions,
) -> DynamicObject {
    let name = cluster.name_any();
    let tls = &cluster.spec.tls;
    let renew_before = tls.renew_before().map(|d| format!("{}s", d.as_secs()));
    let mut spec = serde_json::json!({
        "secretName": tls_secret_name(&name),
        "secretTemplate": {"labels": common_labels(&name)},
        "commonName": NODE_CERT_NAME,
        "duration": tls.certificate_lifetime,
        "dnsNames": node_dns_names(cluster, options),
        "uris": [Role::Peer.uri()],
        "usages": ["digital signature", "key encipherment", "server auth", "client auth"],
        "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
        "issuerRef": {
            "name": issuer.name,
            "kind": issuer.kind.as_str(),
            "group": issuer.group.clone().unwrap_or_else(|| "cert-manager.io".into()),
        },
    });
    if let Some(r) = renew_before {
        spec["renewBefore"] = serde_json::json!(r);
    }
    let mut object = DynamicObject::new(&tls_secret_name(&name), &certificate_resource())
        .within(&cluster.namespace().unwrap_or_else(|| "default".into()))
        .data(serde_json::json!({ "spec": spec }));
    object.metadata = child_meta(cluster, tls_secret_name(&name), common_labels(&name));
    object
}

fn port(number: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(number)),
        protocol: Some("TCP".into()),
        ..NetworkPolicyPort::default()
    }
}

/// The NetworkPolicy `<cluster>` on the node pods: the peer port (internode and admin) only from
/// the cluster's own pods and the operator's pods, the client port from `spec.network.clientFrom`
/// (default: every pod of the cluster's namespace), the health port from anywhere (kubelet
/// probes come from the node, which no pod selector names). Other ingress is denied.
pub fn network_policy(cluster: &DynamoCluster, options: &RenderOptions) -> NetworkPolicy {
    let name = cluster.name_any();
    let own_pods = NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(cluster_selector(&name)),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    };
    let operator = NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                options.operator_namespace.clone(),
            )])),
            ..LabelSelector::default()
        }),
        pod_selector: Some(LabelSelector {
            match_labels: Some(options.operator_labels.clone()),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    };
    let namespace_pods = NetworkPolicyPeer {
        pod_selector: Some(LabelSelector::default()),
        ..NetworkPolicyPeer::default()
    };
    let mut ingress = vec![NetworkPolicyIngressRule {
        from: Some(vec![own_pods, operator]),
        ports: Some(vec![port(PEER_PORT)]),
    }];
    let clients = cluster.spec.network.client_from.clone().unwrap_or_else(|| vec![namespace_pods]);
    // An empty `from` would mean "everyone" to Kubernetes; an empty clientFrom means nobody.
    if !clients.is_empty() {
        ingress.push(NetworkPolicyIngressRule {
            from: Some(clients),
            ports: Some(vec![port(CLIENT_PORT)]),
        });
    }
    ingress.push(NetworkPolicyIngressRule { from: None, ports: Some(vec![port(HEALTH_PORT)]) });
    NetworkPolicy {
        metadata: child_meta(cluster, network_policy_name(&name), common_labels(&name)),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(cluster_selector(&name)),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(ingress),
            ..NetworkPolicySpec::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::crd::IssuerKind;
    use crate::render::tests::cluster;

    #[test]
    fn the_certificate_names_every_pod_and_the_client_service() {
        let c = cluster(&[("zone-a", 3)]);
        let names = node_dns_names(&c, &RenderOptions::default());
        assert_eq!(
            names,
            [
                "*.demo-peers.default.svc",
                "*.demo-peers.default.svc.cluster.local",
                "demo",
                "demo.default",
                "demo.default.svc",
                "demo.default.svc.cluster.local",
                "localhost",
            ]
        );
        // A pod's advertised name is covered by the wildcard (one label).
        let pod = pod_dns_name(&c, "demo-zone-a-2", &RenderOptions::default());
        assert_eq!(pod, "demo-zone-a-2.demo-peers.default.svc.cluster.local");
        assert!(names.iter().any(|n| n
            .strip_prefix('*')
            .is_some_and(|s| pod.ends_with(s) && !pod[..pod.len() - s.len()].contains('.'))));
        assert!(names.contains(&node_server_name(&c)));
        let request = node_cert_request(&c, &RenderOptions::default()).unwrap();
        assert_eq!(request.role, Role::Peer);
        assert_eq!(request.lifetime, Duration::from_secs(2160 * 3600));
    }

    #[test]
    fn an_issued_certificate_verifies_as_the_request_says() {
        let c = cluster(&[("zone-a", 1)]);
        let ca = dynamo_api::security::Ca::generate("demo.default", CA_LIFETIME).unwrap();
        let request = node_cert_request(&c, &RenderOptions::default()).unwrap();
        let issued = ca.issue(&request).unwrap();
        let secret = tls_secret(&c, ca.cert_pem(), &issued.cert_pem, &issued.key_pem, "h");
        let data = secret.data.unwrap();
        assert_eq!(data[CA_CERT_KEY].0, ca.cert_pem().as_bytes());
        assert_eq!(data[TLS_CERT_KEY].0, issued.cert_pem.as_bytes());
        assert_eq!(data[TLS_KEY_KEY].0, issued.key_pem.as_bytes());
        assert_eq!(secret.metadata.annotations.unwrap()[CERT_REQUEST_ANNOTATION], "h");
        assert_eq!(secret.metadata.owner_references.unwrap().len(), 1);
        assert_eq!(cert_hash(&issued.cert_pem).len(), 16);
    }

    #[test]
    fn request_hashes_change_with_what_the_certificate_says() {
        let mut c = cluster(&[("zone-a", 1)]);
        let options = RenderOptions::default();
        let before = request_hash(&node_cert_request(&c, &options).unwrap());
        assert_eq!(before, request_hash(&node_cert_request(&c, &options).unwrap()));
        c.spec.tls.certificate_lifetime = "3m".into();
        assert_ne!(before, request_hash(&node_cert_request(&c, &options).unwrap()));
        let c = cluster(&[("zone-a", 1)]);
        let other = RenderOptions { cluster_domain: "example.internal".into(), ..options };
        assert_ne!(before, request_hash(&node_cert_request(&c, &other).unwrap()));
    }

    #[test]
    fn the_token_file_holds_hashes_with_their_roles() {
        let c = cluster(&[("zone-a", 1)]);
        let secret = tokens_secret(&c, "admin-secret-token", "client-secret-token");
        let text = String::from_utf8(secret.data.unwrap()[TOKENS_KEY].0.clone()).unwrap();
        assert!(!text.contains("secret-token"), "no token in clear: {text}");
        let tokens = Tokens::parse(&text, "test").unwrap();
        assert_eq!(tokens.verify("admin-secret-token").unwrap().role, Role::Admin);
        assert_eq!(tokens.verify("client-secret-token").unwrap().role, Role::ReadWrite);
        assert!(tokens.verify("guess").is_none());
    }

    #[test]
    fn long_lived_secrets_follow_the_volumes() {
        let mut c = cluster(&[("zone-a", 1)]);
        let token = token_secret(&c, admin_token_secret_name("demo"), "t");
        assert_eq!(token.metadata.name.as_deref(), Some("demo-admin-token"));
        assert_eq!(token.metadata.owner_references, None, "kept with retained volumes");
        assert_eq!(token.data.unwrap()[TOKEN_KEY].0, b"t");
        assert_eq!(ca_secret(&c, "c", "k").metadata.owner_references, None);
        c.spec.persistent_volume_claim_retention_policy.when_deleted = RetentionPolicy::Delete;
        assert!(ca_secret(&c, "c", "k").metadata.owner_references.is_some());
        // Derived ones are always owned: the operator renders them again.
        assert!(tokens_secret(&c, "a", "b").metadata.owner_references.is_some());
    }

    #[test]
    fn network_policy_fences_each_port() {
        let c = cluster(&[("zone-a", 1)]);
        let options = RenderOptions {
            operator_namespace: "ops".into(),
            operator_labels: BTreeMap::from([("app".into(), "op".into())]),
            ..RenderOptions::default()
        };
        let policy = serde_json::to_value(network_policy(&c, &options)).unwrap();
        assert_eq!(policy["metadata"]["name"], "demo");
        let selector = json!({"app.kubernetes.io/name": "dynamo", "dynamokv.io/cluster": "demo"});
        assert_eq!(
            policy["spec"],
            json!({
                "podSelector": {"matchLabels": selector},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {"from": [
                        {"podSelector": {"matchLabels": selector}},
                        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}},
                         "podSelector": {"matchLabels": {"app": "op"}}},
                     ],
                     "ports": [{"port": 7071, "protocol": "TCP"}]},
                    {"from": [{"podSelector": {}}], "ports": [{"port": 7070, "protocol": "TCP"}]},
                    {"ports": [{"port": 7072, "protocol": "TCP"}]},
                ],
            })
        );

        let mut c = cluster(&[("zone-a", 1)]);
        let app = NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([("team".into(), "shop".into())])),
                ..LabelSelector::default()
            }),
            ..NetworkPolicyPeer::default()
        };
        c.spec.network.client_from = Some(vec![app]);
        let policy = serde_json::to_value(network_policy(&c, &options)).unwrap();
        assert_eq!(
            policy["spec"]["ingress"][1]["from"],
            json!([{"namespaceSelector": {"matchLabels": {"team": "shop"}}}])
        );
        c.spec.network.client_from = Some(vec![]);
        let policy = serde_json::to_value(network_policy(&c, &options)).unwrap();
        let ports: Vec<i64> = policy["spec"]["ingress"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["ports"][0]["port"].as_i64().unwrap())
            .collect();
        assert_eq!(ports, [7071, 7072], "an empty clientFrom opens the client port to nobody");
    }

    #[test]
    fn cert_manager_certificate_asks_for_the_same_certificate() {
        let mut c = cluster(&[("zone-a", 1)]);
        c.spec.tls.certificate_lifetime = "720h".into();
        let issuer = IssuerRef { name: "ca".into(), kind: IssuerKind::ClusterIssuer, group: None };
        let cert =
            serde_json::to_value(certificate(&c, &issuer, &RenderOptions::default())).unwrap();
        assert_eq!(cert["apiVersion"], "cert-manager.io/v1");
        assert_eq!(cert["kind"], "Certificate");
        assert_eq!(cert["metadata"]["name"], "demo-tls");
        assert_eq!(cert["metadata"]["namespace"], "default");
        assert_eq!(cert["metadata"]["ownerReferences"][0]["kind"], "DynamoCluster");
        let spec = &cert["spec"];
        assert_eq!(spec["secretName"], "demo-tls");
        assert_eq!(spec["duration"], "720h");
        assert_eq!(spec["renewBefore"], "864000s", "a third of 720h");
        assert_eq!(spec["uris"], json!(["urn:dynamokv:role:peer"]));
        assert_eq!(spec["dnsNames"][0], "*.demo-peers.default.svc");
        assert_eq!(
            spec["issuerRef"],
            json!({"name": "ca", "kind": "ClusterIssuer", "group": "cert-manager.io"})
        );
        assert_eq!(spec["privateKey"]["rotationPolicy"], "Always");
    }
}
