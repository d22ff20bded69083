//! Controller flows against the in-memory API server and fake nodes: creation, scale-up one node
//! at a time, scale-down through decommission (with operator restarts in the middle), status,
//! invalid specs and deletion. Each pass is a real `reconcile` call through a kube `Client`.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::runtime::controller::Action;
use serde_json::Value;

use super::*;
use crate::crd::{DynamoClusterSpec, ZoneSpec};
use crate::fixtures::{simulate_kubernetes, FakeApiServer, FakeNodes};
use crate::status::{find, DEGRADED, PROGRESSING, READY};

const CLUSTER: &str = "/apis/dynamokv.io/v1alpha1/namespaces/default/dynamoclusters/demo";
const CLUSTERS: &str = "/apis/dynamokv.io/v1alpha1/namespaces/default/dynamoclusters";
const STS: &str = "/apis/apps/v1/namespaces/default/statefulsets";
const PVCS: &str = "/api/v1/namespaces/default/persistentvolumeclaims";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";
const SECRETS: &str = "/api/v1/namespaces/default/secrets";

struct Harness {
    server: FakeApiServer,
    nodes: FakeNodes,
    ctx: Arc<Context>,
}

impl Harness {
    fn new(zones: &[(&str, i32)]) -> Harness {
        let server = FakeApiServer::start();
        let spec = DynamoClusterSpec::with_zones(
            zones.iter().map(|(z, r)| ZoneSpec::new(z, *r)).collect(),
        );
        server.create(CLUSTERS, &DynamoCluster::new("demo", spec));
        let nodes = FakeNodes::default();
        let ctx = Self::context(&server, &nodes);
        Harness { server, nodes, ctx }
    }

    fn context(server: &FakeApiServer, nodes: &FakeNodes) -> Arc<Context> {
        let metrics = Arc::new(Metrics::default());
        Arc::new(Context::new(
            server.client(),
            Arc::new(nodes.clone()),
            metrics,
            RenderOptions::default(),
            Some("test".into()),
        ))
    }

    /// A new operator process: nothing carried over but what is in the API server and the nodes.
    fn restart(&mut self) {
        self.ctx = Self::context(&self.server, &self.nodes);
    }

    fn cluster(&self) -> DynamoCluster {
        self.server.get(CLUSTER).expect("the cluster exists")
    }

    fn edit(&self, f: impl FnOnce(&mut DynamoClusterSpec)) {
        let mut c = self.cluster();
        f(&mut c.spec);
        let generation = c.metadata.generation.unwrap_or(1);
        c.metadata.generation = Some(generation + 1);
        self.server.put(CLUSTER, &c);
    }

    async fn pass(&self) -> Action {
        reconcile(Arc::new(self.cluster()), self.ctx.clone()).await.expect("the pass succeeds")
    }

    fn replicas(&self) -> Vec<(String, i32)> {
        self.server
            .list::<StatefulSet>(STS)
            .into_iter()
            .map(|s| (s.metadata.name.unwrap(), s.spec.replicas.unwrap()))
            .collect()
    }

    fn status(&self) -> DynamoClusterStatus {
        self.cluster().status.expect("a status was written")
    }

    fn condition(&self, type_: &str) -> (String, String, String) {
        let status = self.status();
        let c = find(&status, type_).expect("condition set");
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    fn event_reasons(&self) -> Vec<String> {
        self.server.list::<K8sEvent>(EVENTS).into_iter().filter_map(|e| e.reason).collect()
    }

    /// Every request that changed something, as `METHOD path`.
    fn writes(&self) -> Vec<String> {
        self.server
            .requests()
            .iter()
            .filter(|r| r.method != http::Method::GET)
            .map(|r| r.line())
            .collect()
    }

    fn pvcs(&self) -> Vec<String> {
        self.server
            .list::<PersistentVolumeClaim>(PVCS)
            .into_iter()
            .map(|p| p.metadata.name.unwrap())
            .collect()
    }

    /// Passes, with Kubernetes and the nodes catching up in between, until the cluster reports
    /// Ready; panics if it does not within `max` rounds.
    async fn settle(&self, max: usize) {
        for _ in 0..max {
            self.pass().await;
            simulate_kubernetes(&self.server, &self.nodes);
            self.nodes.finish_joins();
            simulate_kubernetes(&self.server, &self.nodes);
            self.pass().await;
            if self.condition(READY).0 == "True" {
                return;
            }
        }
        panic!("not Ready after {max} rounds: {:?}", self.status());
    }
}

fn names(pairs: &[(&str, i32)]) -> Vec<(String, i32)> {
    pairs.iter().map(|(n, r)| (n.to_string(), *r)).collect()
}

#[tokio::test]
async fn create_renders_every_child_and_starts_one_seed_per_zone() {
    let h = Harness::new(&[("zone-a", 1), ("zone-b", 2), ("zone-c", 1)]);
    assert_eq!(h.pass().await, Action::requeue(BUSY_REQUEUE));

    let writes: Vec<String> = h
        .server
        .requests()
        .iter()
        .filter(|r| r.method != http::Method::GET && !r.path.starts_with(EVENTS))
        .map(|r| r.line())
        .collect();
    assert_eq!(
        writes,
        [
            // Admin token, client token, the token file, the CA, the nodes' certificate.
            "POST /api/v1/namespaces/default/secrets",
            "POST /api/v1/namespaces/default/secrets",
            "PATCH /api/v1/namespaces/default/secrets/demo-tokens",
            "POST /api/v1/namespaces/default/secrets",
            "PATCH /api/v1/namespaces/default/secrets/demo-tls",
            // The cluster secret.
            "POST /api/v1/namespaces/default/secrets",
            "PATCH /api/v1/namespaces/default/configmaps/demo-config",
            "PATCH /api/v1/namespaces/default/services/demo-peers",
            "PATCH /api/v1/namespaces/default/services/demo",
            "PATCH /apis/policy/v1/namespaces/default/poddisruptionbudgets/demo",
            "PATCH /apis/networking.k8s.io/v1/namespaces/default/networkpolicies/demo",
            "PATCH /apis/apps/v1/namespaces/default/statefulsets/demo-zone-a",
            "PATCH /apis/apps/v1/namespaces/default/statefulsets/demo-zone-b",
            "PATCH /apis/apps/v1/namespaces/default/statefulsets/demo-zone-c",
            "PATCH /apis/dynamokv.io/v1alpha1/namespaces/default/dynamoclusters/demo/status",
        ]
    );
    for r in h.server.requests().iter().filter(|r| r.method == http::Method::PATCH) {
        assert!(r.query.contains("fieldManager=dynamo-operator"), "{} {}", r.line(), r.query);
        assert!(r.query.contains("force=true"), "{} {}", r.line(), r.query);
    }
    assert_eq!(h.replicas(), names(&[("demo-zone-a", 1), ("demo-zone-b", 1), ("demo-zone-c", 1)]));
    let sts: StatefulSet = h.server.get(&format!("{STS}/demo-zone-a")).unwrap();
    let owner = &sts.metadata.owner_references.unwrap()[0];
    assert_eq!(owner.uid, h.cluster().metadata.uid.unwrap());
    let secret: Secret = h.server.get("/api/v1/namespaces/default/secrets/demo-secret").unwrap();
    assert_eq!(secret.data.unwrap()["secret"].0.len(), 64);
    assert_eq!(h.condition(PROGRESSING).1, "Creating");
    assert_eq!(h.condition(READY).0, "False");
    assert!(h.event_reasons().contains(&"SecretCreated".to_string()));

    // The secrets are created once and never rewritten; the certificate is not issued again.
    let tls_before: Secret = h.server.get(&format!("{SECRETS}/demo-tls")).unwrap();
    h.server.clear_requests();
    h.pass().await;
    assert!(!h
        .server
        .requests()
        .iter()
        .any(|r| r.method == http::Method::POST && r.path.contains("secrets")));
    let tls_after: Secret = h.server.get(&format!("{SECRETS}/demo-tls")).unwrap();
    assert_eq!(tls_before.data, tls_after.data);

    // Seeds come up, join, and only then does zone-b get its second node.
    simulate_kubernetes(&h.server, &h.nodes);
    h.pass().await;
    assert_eq!(h.replicas(), names(&[("demo-zone-a", 1), ("demo-zone-b", 1), ("demo-zone-c", 1)]));
    assert_eq!(h.condition(PROGRESSING).1, "WaitingToScaleUp");
    h.settle(5).await;
    assert_eq!(h.replicas(), names(&[("demo-zone-a", 1), ("demo-zone-b", 2), ("demo-zone-c", 1)]));
    let status = h.status();
    assert_eq!((status.ready_nodes, status.desired_nodes, status.zone_count), (4, 4, 3));
    assert_eq!(
        h.condition(READY),
        ("True".into(), "ClusterReady".into(), "4/4 nodes ready and in the ring".into())
    );
    assert_eq!(h.condition(DEGRADED).0, "False");
    assert_eq!(h.pass().await, Action::requeue(IDLE_REQUEUE));
}

/// A text key of a Secret.
fn secret_text(h: &Harness, name: &str, key: &str) -> String {
    let secret: Secret = h.server.get(&format!("{SECRETS}/{name}")).unwrap_or_else(|| {
        panic!("no Secret {name}");
    });
    String::from_utf8(secret.data.unwrap()[key].0.clone()).unwrap()
}

#[tokio::test]
async fn a_new_cluster_gets_its_ca_certificate_tokens_and_network_policy() {
    use dynamo_api::security::{identity_of, not_after, Ca, Role, Tokens};
    let h = Harness::new(&[("zone-a", 1), ("zone-b", 1), ("zone-c", 1)]);
    h.settle(5).await;

    let ca =
        Ca::from_pem(&secret_text(&h, "demo-ca", "ca.crt"), &secret_text(&h, "demo-ca", "ca.key"))
            .expect("a usable CA");
    assert_eq!(secret_text(&h, "demo-tls", "ca.crt"), ca.cert_pem());
    let cert = secret_text(&h, "demo-tls", "tls.crt");
    assert!(secret_text(&h, "demo-tls", "tls.key").contains("PRIVATE KEY"));
    let der = x509_der(&cert);
    let identity = identity_of(&der).expect("the certificate names a role");
    assert_eq!(identity.role, Role::Peer);
    // Valid for the default 2160h, renewed a third before its end.
    let tls = h.status().tls.expect("status.tls");
    assert_eq!(tls.issuer, "operator");
    assert_eq!(tls.secret_name, "demo-tls");
    let expires = not_after(&cert).unwrap();
    let left = expires.duration_since(std::time::SystemTime::now()).unwrap();
    assert!(left > Duration::from_secs(2159 * 3600), "{left:?}");
    assert!(tls
        .not_after
        .as_deref()
        .unwrap()
        .starts_with(&k8s_openapi::jiff::Timestamp::try_from(expires).unwrap().to_string()[..16]));
    assert!(tls.renewal_time.is_some());

    let admin = secret_text(&h, "demo-admin-token", "token");
    let client = secret_text(&h, "demo-client-token", "token");
    assert_eq!((admin.len(), client.len()), (64, 64));
    assert_ne!(admin, client);
    let tokens = Tokens::parse(&secret_text(&h, "demo-tokens", "tokens"), "demo-tokens").unwrap();
    assert_eq!(tokens.verify(&admin).unwrap().role, Role::Admin);
    assert_eq!(tokens.verify(&client).unwrap().role, Role::ReadWrite);

    let policy: k8s_openapi::api::networking::v1::NetworkPolicy = h
        .server
        .get("/apis/networking.k8s.io/v1/namespaces/default/networkpolicies/demo")
        .expect("a NetworkPolicy");
    assert_eq!(policy.spec.unwrap().ingress.unwrap().len(), 3);

    // The pods roll onto this certificate: its hash is in the template.
    let sts: StatefulSet = h.server.get(&format!("{STS}/demo-zone-a")).unwrap();
    let annotations = sts.spec.template.metadata.unwrap().annotations.unwrap();
    assert_eq!(
        annotations[render::security::TLS_HASH_ANNOTATION],
        render::security::cert_hash(&cert)
    );

    // The operator calls the nodes with the cluster CA, under the client Service's name, with an
    // admin certificate of its own from that CA.
    let callers = h.nodes.callers();
    assert!(!callers.is_empty());
    for caller in &callers {
        assert_eq!(caller.ca_pem.as_deref(), Some(ca.cert_pem()));
        assert_eq!(caller.server_name.as_deref(), Some("demo.default.svc"));
        assert_eq!(caller.token, None);
        let mine = identity_of(&x509_der(caller.cert_pem.as_ref().unwrap())).unwrap();
        assert_eq!((mine.name.as_str(), mine.role), ("dynamo-operator", Role::Admin));
    }
    let reasons = h.event_reasons();
    for reason in ["CACreated", "CertificateIssued", "TokenCreated"] {
        assert!(reasons.contains(&reason.to_string()), "no {reason} event in {reasons:?}");
    }
}

/// The DER of the first certificate of a PEM text.
fn x509_der(pem: &str) -> Vec<u8> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64_decode(&body)
}

fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut buffer, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|c| *c != b'=') {
        let value = ALPHABET.iter().position(|a| *a == c).expect("base64") as u32;
        buffer = (buffer << 6) | value;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    out
}

#[tokio::test]
async fn a_certificate_due_for_renewal_is_issued_again_and_rolls_every_pod() {
    let h = Harness::new(&[("zone-a", 2), ("zone-b", 1), ("zone-c", 1)]);
    h.settle(8).await;
    let first = secret_text(&h, "demo-tls", "tls.crt");

    // A shorter lifetime: the certificate no longer says what the spec asks.
    h.edit(|s| {
        s.tls.certificate_lifetime = "3m".into();
        s.tls.renew_before = Some("2m".into());
    });
    let deleted = roll(&h, 3).await;
    assert_eq!(deleted, ["demo-zone-a-1", "demo-zone-a-0", "demo-zone-b-0", "demo-zone-c-0"]);
    let second = secret_text(&h, "demo-tls", "tls.crt");
    assert_ne!(first, second);
    let left = dynamo_api::security::not_after(&second)
        .unwrap()
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(left <= Duration::from_secs(180), "{left:?}");
    assert!(h.event_reasons().contains(&"CertificateRenewed".to_string()));
    // The next pass comes back when the renewal is due (about a minute), not in ten.
    let Action { .. } = h.pass().await;
    let renewal = h.status().tls.unwrap().renewal_time.unwrap();
    assert!(!renewal.is_empty());

    // A certificate close to its end (issued for a minute, as an old one would be) is renewed.
    let ca = dynamo_api::security::Ca::from_pem(
        &secret_text(&h, "demo-ca", "ca.crt"),
        &secret_text(&h, "demo-ca", "ca.key"),
    )
    .unwrap();
    let c = h.cluster();
    let request = render::security::node_cert_request(&c, &RenderOptions::default()).unwrap();
    let short =
        dynamo_api::security::CertRequest { lifetime: Duration::from_secs(60), ..request.clone() };
    let issued = ca.issue(&short).unwrap();
    let expiring = render::security::tls_secret(
        &c,
        ca.cert_pem(),
        &issued.cert_pem,
        &issued.key_pem,
        &render::security::request_hash(&request),
    );
    h.server.put(&format!("{SECRETS}/demo-tls"), &expiring);
    let deleted = roll(&h, 3).await;
    assert_eq!(deleted.len(), 4, "every pod restarts onto the renewed certificate once");
    assert_ne!(secret_text(&h, "demo-tls", "tls.crt"), issued.cert_pem);
    assert_eq!(h.condition(READY).0, "True");
}

#[tokio::test]
async fn with_cert_manager_the_operator_renders_a_certificate_and_waits_for_its_secret() {
    let h = Harness::new(&[("zone-a", 1), ("zone-b", 1), ("zone-c", 1)]);
    h.edit(|s| {
        s.tls.issuer_ref = Some(crate::crd::IssuerRef {
            name: "cluster-ca".into(),
            kind: crate::crd::IssuerKind::ClusterIssuer,
            group: None,
        })
    });
    h.pass().await;
    let certificate: Value = h
        .server
        .get("/apis/cert-manager.io/v1/namespaces/default/certificates/demo-tls")
        .expect("a cert-manager Certificate");
    assert_eq!(certificate["spec"]["secretName"], "demo-tls");
    assert_eq!(certificate["spec"]["issuerRef"]["kind"], "ClusterIssuer");
    assert!(h.server.get::<Secret>(&format!("{SECRETS}/demo-ca")).is_none(), "no own CA");
    assert!(h.replicas().is_empty(), "no StatefulSet before the certificate exists");
    let (_, reason, message) = h.condition(PROGRESSING);
    assert_eq!(reason, "WaitingForCertificate");
    assert!(message.contains("ClusterIssuer/cluster-ca"), "{message}");

    // cert-manager writes the Secret.
    let ca =
        dynamo_api::security::Ca::generate("demo.default", Duration::from_secs(86_400)).unwrap();
    let c = h.cluster();
    let issued = ca
        .issue(&render::security::node_cert_request(&c, &RenderOptions::default()).unwrap())
        .unwrap();
    let written =
        render::security::tls_secret(&c, ca.cert_pem(), &issued.cert_pem, &issued.key_pem, "");
    h.server.put(&format!("{SECRETS}/demo-tls"), &written);
    h.settle(5).await;
    assert_eq!(h.replicas().len(), 3);
    let tls = h.status().tls.unwrap();
    assert_eq!(tls.issuer, "ClusterIssuer/cluster-ca");
    assert_eq!(tls.hash, Some(render::security::cert_hash(&issued.cert_pem)));
    // The operator has no CA key: it calls the nodes with the admin token.
    let admin = secret_text(&h, "demo-admin-token", "token");
    let caller = h.nodes.callers().pop().expect("admin calls were made");
    assert_eq!(caller.token.as_deref(), Some(admin.as_str()));
    assert_eq!(caller.cert_pem, None);
    assert_eq!(caller.ca_pem.as_deref(), Some(ca.cert_pem()));

    // cert-manager renews it: the pods roll onto the new one.
    let renewed = ca
        .issue(&render::security::node_cert_request(&c, &RenderOptions::default()).unwrap())
        .unwrap();
    let written =
        render::security::tls_secret(&c, ca.cert_pem(), &renewed.cert_pem, &renewed.key_pem, "");
    h.server.put(&format!("{SECRETS}/demo-tls"), &written);
    assert_eq!(roll(&h, 3).await.len(), 3);
}

#[tokio::test]
async fn a_settled_cluster_writes_nothing() {
    let h = Harness::new(&[("zone-a", 1), ("zone-b", 1), ("zone-c", 1)]);
    h.settle(5).await;
    h.pass().await;
    h.server.clear_requests();
    h.pass().await;
    let status_writes = h.server.requests().iter().filter(|r| r.path.ends_with("/status")).count();
    assert_eq!(status_writes, 0, "an unchanged status is not written");
}

#[tokio::test]
async fn scale_up_adds_one_node_at_a_time() {
    let h = Harness::new(&[("zone-a", 1), ("zone-b", 1), ("zone-c", 1)]);
    h.settle(5).await;
    h.edit(|s| {
        s.zones[0].replicas = 3;
        s.zones[1].replicas = 2;
    });

    h.pass().await;
    assert_eq!(h.replicas(), names(&[("demo-zone-a", 2), ("demo-zone-b", 1), ("demo-zone-c", 1)]));
    assert!(h.event_reasons().contains(&"ScalingUp".to_string()));
    h.pass().await;
    assert_eq!(h.replicas()[0].1, 2, "no second node while the first has no pod");
    simulate_kubernetes(&h.server, &h.nodes);
    h.pass().await;
    assert_eq!(h.replicas()[0].1, 2, "no second node while the first is joining");
    assert_eq!(h.nodes.membership("demo-zone-a-1").as_deref(), Some("joining"));
    assert_eq!(
        h.condition(PROGRESSING).2,
        "waiting for demo-zone-a-1 to be Ready (joined the ring)"
    );

    h.nodes.finish_joins();
    simulate_kubernetes(&h.server, &h.nodes);
    h.pass().await;
    // Zones grow evenly: zone-b (1 node) goes before zone-a's third.
    assert_eq!(h.replicas(), names(&[("demo-zone-a", 2), ("demo-zone-b", 2), ("demo-zone-c", 1)]));
    h.settle(5).await;
    assert_eq!(h.replicas(), names(&[("demo-zone-a", 3), ("demo-zone-b", 2), ("demo-zone-c", 1)]));
    assert_eq!(h.status().zones[0].ready_replicas, 3);
    assert_eq!(h.status().members.len(), 6);
}

#[tokio::test]
async fn scale_down_decommissions_first_and_survives_operator_restarts() {
    let mut h = Harness::new(&[("zone-a", 3), ("zone-b", 1), ("zone-c", 1)]);
    h.settle(8).await;
    h.edit(|s| s.zones[0].replicas = 1);

    h.pass().await;
    let calls = h.nodes.decommissions();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].1, "demo-zone-a-2");
    assert_eq!(h.replicas()[0].1, 3, "replicas stay until the node has left");
    let d = h.status().decommission.expect("the intent is recorded");
    assert_eq!((d.node.as_str(), d.state.as_str()), ("demo-zone-a-2", "leaving"));
    assert_eq!(h.condition(PROGRESSING).1, "Decommissioning");

    // The operator restarts mid-decommission: it re-derives the step, asks nobody twice.
    h.restart();
    h.pass().await;
    assert_eq!(h.nodes.decommissions().len(), 1);
    assert_eq!(h.replicas()[0].1, 3);

    h.nodes.finish_leave("demo-zone-a-2");
    h.restart();
    h.pass().await;
    assert_eq!(h.replicas()[0].1, 2, "lowered once the node reports left");
    assert!(h.event_reasons().contains(&"NodeRemoved".to_string()));
    assert!(
        h.pvcs().contains(&"data-demo-zone-a-2".to_string()),
        "volume kept while the pod is there"
    );

    h.pass().await;
    assert_eq!(h.nodes.decommissions().len(), 1, "the next node waits for the pod to go");
    simulate_kubernetes(&h.server, &h.nodes);
    h.pass().await;
    assert!(
        !h.pvcs().contains(&"data-demo-zone-a-2".to_string()),
        "whenScaled: Delete removes the volume"
    );
    assert_eq!(h.nodes.decommissions().last().unwrap().1, "demo-zone-a-1");

    h.nodes.finish_leave("demo-zone-a-1");
    h.pass().await;
    simulate_kubernetes(&h.server, &h.nodes);
    h.settle(3).await;
    assert_eq!(h.replicas(), names(&[("demo-zone-a", 1), ("demo-zone-b", 1), ("demo-zone-c", 1)]));
    assert_eq!(h.pvcs(), ["data-demo-zone-a-0", "data-demo-zone-b-0", "data-demo-zone-c-0"]);
    assert_eq!(h.status().decommission, None);
    assert_eq!(h.nodes.decommissions().len(), 2);
}

#[tokio::test]
async fn a_lost_decommission_request_is_sent_again() {
    let mut h = Harness::new(&[("zone-a", 2), ("zone-b", 1), ("zone-c", 1)]);
    h.settle(6).await;
    h.edit(|s| s.zones[0].replicas = 1);
    h.nodes.lose_decommissions(true);
    h.pass().await;
    assert_eq!(h.nodes.membership("demo-zone-a-1").as_deref(), Some("normal"));
    h.restart();
    h.nodes.lose_decommissions(false);
    h.pass().await;
    assert_eq!(h.nodes.decommissions().len(), 2);
    assert_eq!(h.nodes.membership("demo-zone-a-1").as_deref(), Some("leaving"));
    assert_eq!(h.replicas()[0].1, 2);
}

#[tokio::test]
async fn a_scale_up_during_a_decommission_waits_for_the_leave() {
    let h = Harness::new(&[("zone-a", 2), ("zone-b", 1), ("zone-c", 1)]);
    h.settle(6).await;
    h.edit(|s| s.zones[0].replicas = 1);
    h.pass().await;
    assert_eq!(h.nodes.membership("demo-zone-a-1").as_deref(), Some("leaving"));
    h.edit(|s| s.zones[0].replicas = 3);
    h.pass().await;
    assert_eq!(h.replicas()[0].1, 2, "nothing is added while a node leaves");
    h.nodes.finish_leave("demo-zone-a-1");
    h.pass().await;
    assert_eq!(h.replicas()[0].1, 1, "the leave completes first");
    simulate_kubernetes(&h.server, &h.nodes);
    h.settle(6).await;
    assert_eq!(h.replicas()[0].1, 3);
    assert_eq!(
        h.nodes.membership("demo-zone-a-1").as_deref(),
        Some("normal"),
        "added back as a new member"
    );
}

#[tokio::test]
async fn a_zone_removed_from_the_spec_is_drained_and_deleted() {
    let h = Harness::new(&[("zone-a", 1), ("zone-b", 1), ("zone-c", 1), ("zone-d", 1)]);
    h.settle(5).await;
    h.edit(|s| s.zones.retain(|z| z.name != "zone-d"));
    h.pass().await;
    assert_eq!(h.nodes.decommissions()[0].1, "demo-zone-d-0");
    h.nodes.finish_leave("demo-zone-d-0");
    h.pass().await;
    assert!(h.replicas().contains(&("demo-zone-d".to_string(), 0)));
    simulate_kubernetes(&h.server, &h.nodes);
    h.pass().await;
    assert!(!h.replicas().iter().any(|(n, _)| n == "demo-zone-d"), "{:?}", h.replicas());
    assert!(h.event_reasons().contains(&"ZoneRemoved".to_string()));
    assert!(!h.pvcs().contains(&"data-demo-zone-d-0".to_string()));
}

#[tokio::test]
async fn unreachable_nodes_block_scale_down_and_degrade() {
    let h = Harness::new(&[("zone-a", 2), ("zone-b", 1), ("zone-c", 1)]);
    h.settle(6).await;
    h.edit(|s| s.zones[0].replicas = 1);
    h.nodes.silence_all(true);
    assert_eq!(h.pass().await, Action::requeue(BUSY_REQUEUE));
    assert!(h.nodes.decommissions().is_empty());
    assert_eq!(h.replicas()[0].1, 2);
    let (status, reason, message) = h.condition(DEGRADED);
    assert_eq!((status.as_str(), reason.as_str()), ("True", "ActionBlocked"));
    assert!(message.contains("no node answers its admin API"), "{message}");
}

#[tokio::test]
async fn an_invalid_spec_is_reported_and_nothing_is_applied() {
    let h = Harness::new(&[("zone-a", 1), ("zone-b", 1), ("zone-c", 1)]);
    h.edit(|s| s.replication.w = 5);
    assert_eq!(h.pass().await, Action::requeue(IDLE_REQUEUE));
    assert!(h.replicas().is_empty());
    let writes = h.writes();
    assert_eq!(writes, [format!("POST {EVENTS}"), format!("PATCH {CLUSTER}/status")]);
    let status_patch =
        h.server.requests().into_iter().find(|r| r.path.ends_with("/status")).unwrap();
    let body = status_patch.body.expect("a server-side apply body");
    assert_eq!(body["apiVersion"], "dynamokv.io/v1alpha1");
    assert_eq!(body["kind"], "DynamoCluster");
    assert_eq!(body["status"]["observedGeneration"], 2);
    let (status, reason, message) = h.condition(DEGRADED);
    assert_eq!((status.as_str(), reason.as_str()), ("True", "InvalidSpec"));
    assert!(
        message.contains("replication.w: replication.w must be between 1 and replication.factor"),
        "{message}"
    );
    assert_eq!(h.event_reasons(), ["InvalidSpec"]);
}

#[tokio::test]
async fn a_cluster_being_deleted_is_left_to_the_garbage_collector() {
    let h = Harness::new(&[("zone-a", 1), ("zone-b", 1), ("zone-c", 1)]);
    h.settle(5).await;
    let mut c = h.cluster();
    c.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    h.server.put(CLUSTER, &c);
    h.server.clear_requests();
    assert_eq!(h.pass().await, Action::await_change());
    assert!(h.server.requests().is_empty(), "no request: {:?}", h.server.requests());

    // Garbage collection works through owner references on every child, and the volumes
    // follow the StatefulSets' retention policy.
    let uid = c.metadata.uid.unwrap();
    for path in [
        "/api/v1/namespaces/default/configmaps/demo-config",
        "/api/v1/namespaces/default/services/demo-peers",
        "/api/v1/namespaces/default/services/demo",
        "/apis/policy/v1/namespaces/default/poddisruptionbudgets/demo",
        "/apis/apps/v1/namespaces/default/statefulsets/demo-zone-a",
    ] {
        let child: Value = h.server.get(path).unwrap();
        assert_eq!(child["metadata"]["ownerReferences"][0]["uid"], uid.as_str(), "{path}");
        assert_eq!(child["metadata"]["ownerReferences"][0]["controller"], true, "{path}");
    }
    let sts: StatefulSet = h.server.get(&format!("{STS}/demo-zone-a")).unwrap();
    let policy = sts.spec.persistent_volume_claim_retention_policy.unwrap();
    assert_eq!(policy.when_deleted.as_deref(), Some("Retain"));
}

#[tokio::test]
async fn metrics_count_passes_and_actions() {
    let h = Harness::new(&[("zone-a", 1), ("zone-b", 1), ("zone-c", 1)]);
    h.settle(5).await;
    let text = h.ctx.metrics.render();
    assert!(
        text.contains("dynamo_operator_cluster_ready_nodes{namespace=\"default\",name=\"demo\"} 3"),
        "{text}"
    );
    assert!(!text.contains("dynamo_operator_reconciles_total 0"), "{text}");
}

impl Harness {
    /// Pods deleted by the operator since the requests were last cleared.
    fn deleted_pods(&self) -> Vec<String> {
        self.server
            .requests()
            .iter()
            .filter(|r| r.method == http::Method::DELETE && r.path.contains("/pods/"))
            .map(|r| r.path.rsplit('/').next().unwrap().to_string())
            .collect()
    }

    fn pod_revisions(&self) -> Vec<(String, String)> {
        self.server
            .list::<k8s_openapi::api::core::v1::Pod>("/api/v1/namespaces/default/pods")
            .into_iter()
            .map(|p| {
                let revision = p.metadata.labels.unwrap()[render::REVISION_LABEL].clone();
                (p.metadata.name.unwrap(), revision)
            })
            .collect()
    }
}

/// Runs passes with Kubernetes catching up after each, until no pod is deleted in `quiet`
/// consecutive rounds; returns every pod deleted, in order, and checks that no pass deleted a
/// pod while another was missing or unready.
async fn roll(h: &Harness, quiet: usize) -> Vec<String> {
    let mut deleted = Vec::new();
    let mut idle = 0;
    while idle < quiet {
        h.server.clear_requests();
        h.pass().await;
        let now = h.deleted_pods();
        assert!(now.len() <= 1, "one pod at a time, got {now:?}");
        // A second pass before Kubernetes recreates the pod must not delete another.
        if !now.is_empty() {
            h.server.clear_requests();
            h.pass().await;
            assert_eq!(h.deleted_pods(), Vec::<String>::new(), "deleted while {now:?} is down");
            if h.status().rollout.is_some_and(|r| r.updated_pods + 1 < r.total_pods) {
                assert_eq!(h.condition(PROGRESSING).1, "RollingUpdate");
            }
            assert_eq!(h.condition(DEGRADED).0, "False", "a rollout is not a degradation");
        }
        idle = if now.is_empty() { idle + 1 } else { 0 };
        deleted.extend(now);
        simulate_kubernetes(&h.server, &h.nodes);
    }
    deleted
}

#[tokio::test]
async fn a_template_change_restarts_every_pod_once_one_at_a_time_in_order() {
    let h = Harness::new(&[("zone-a", 2), ("zone-b", 1), ("zone-c", 1)]);
    h.settle(8).await;
    let before = h.pod_revisions();
    h.edit(|s| s.image = "ghcr.io/dynamokv/dynamo-node:next".into());

    let deleted = roll(&h, 3).await;
    assert_eq!(deleted, ["demo-zone-a-1", "demo-zone-a-0", "demo-zone-b-0", "demo-zone-c-0"]);
    let after = h.pod_revisions();
    for ((pod, old), (_, new)) in before.iter().zip(&after) {
        assert_ne!(old, new, "{pod} runs the new revision");
    }
    let rollout = h.status().rollout.expect("rollout status");
    assert_eq!((rollout.updated_pods, rollout.total_pods, rollout.restarting), (4, 4, None));
    assert_eq!(h.condition(READY).0, "True");
    assert!(h.event_reasons().contains(&"RollingUpdate".to_string()));

    // The restart annotation rolls every pod again, the same way.
    let mut c = h.cluster();
    c.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(render::RESTARTED_AT_ANNOTATION.into(), "2026-12-02T10:00:00Z".into());
    h.server.put(CLUSTER, &c);
    assert_eq!(roll(&h, 3).await.len(), 4);
}

#[tokio::test]
async fn an_operator_restarted_mid_rollout_finishes_it() {
    let mut h = Harness::new(&[("zone-a", 1), ("zone-b", 1), ("zone-c", 1)]);
    h.settle(6).await;
    h.edit(|s| s.resources.limits = None);
    h.pass().await;
    simulate_kubernetes(&h.server, &h.nodes);
    h.server.clear_requests();
    h.pass().await;
    assert_eq!(h.deleted_pods(), ["demo-zone-a-0"]);
    simulate_kubernetes(&h.server, &h.nodes);
    h.restart();
    assert_eq!(roll(&h, 3).await, ["demo-zone-b-0", "demo-zone-c-0"]);
}

#[tokio::test]
async fn a_paused_cluster_is_left_alone_until_unpaused() {
    let h = Harness::new(&[("zone-a", 1), ("zone-b", 1), ("zone-c", 1)]);
    h.settle(6).await;
    h.edit(|s| {
        s.paused = true;
        s.zones[0].replicas = 2;
        s.image = "ghcr.io/dynamokv/dynamo-node:next".into();
    });
    h.server.clear_requests();
    assert_eq!(h.pass().await, Action::requeue(IDLE_REQUEUE));
    let writes = h.writes();
    assert_eq!(writes.len(), 1, "only the status is written: {writes:?}");
    assert!(writes[0].contains("/status"), "{writes:?}");
    let (status, reason, _) = h.condition(PROGRESSING);
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Paused"));

    let before = h.pod_revisions();
    h.edit(|s| s.paused = false);
    h.settle(12).await;
    assert_eq!(h.replicas()[0].1, 2, "the scale-up ran");
    let after = h.pod_revisions();
    assert_eq!(after.len(), 4);
    for (pod, old) in &before {
        let new = &after.iter().find(|(p, _)| p == pod).unwrap().1;
        assert_ne!(old, new, "{pod} was rolled to the new image");
    }
    let rollout = h.status().rollout.unwrap();
    assert_eq!((rollout.updated_pods, rollout.total_pods), (4, 4));
}

#[tokio::test]
async fn growing_storage_expands_every_claim_and_recreates_the_statefulsets_without_restarts() {
    let h = Harness::new(&[("zone-a", 2), ("zone-b", 1), ("zone-c", 1)]);
    h.server.create(
        "/apis/storage.k8s.io/v1/storageclasses",
        &serde_json::json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "standard",
                         "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": "test", "allowVolumeExpansion": true}),
    );
    h.settle(8).await;
    let uids = |h: &Harness| -> Vec<String> {
        h.server
            .list::<k8s_openapi::api::core::v1::Pod>("/api/v1/namespaces/default/pods")
            .into_iter()
            .map(|p| p.metadata.uid.unwrap())
            .collect()
    };
    let before = uids(&h);
    h.edit(|s| {
        s.storage.size = k8s_openapi::apimachinery::pkg::api::resource::Quantity("20Gi".into())
    });
    h.settle(12).await;
    assert_eq!(uids(&h), before, "no pod was restarted");
    for pvc in h.server.list::<PersistentVolumeClaim>(PVCS) {
        let capacity = pvc.status.unwrap().capacity.unwrap()["storage"].0.clone();
        assert_eq!(capacity, "20Gi", "{:?}", pvc.metadata.name);
    }
    for sts in h.server.list::<StatefulSet>(STS) {
        let template = &sts.spec.volume_claim_templates.unwrap()[0];
        let size =
            &template.spec.as_ref().unwrap().resources.as_ref().unwrap().requests.as_ref().unwrap()
                ["storage"];
        assert_eq!(size.0, "20Gi");
    }
    assert_eq!(h.replicas(), names(&[("demo-zone-a", 2), ("demo-zone-b", 1), ("demo-zone-c", 1)]));
    assert!(h.event_reasons().contains(&"ResizingStorage".to_string()));
    assert_eq!(h.status().storage, None, "settled");
}
