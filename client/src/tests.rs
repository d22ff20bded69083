//! The client against fake nodes served in-process (gRPC on loopback): which node each request
//! reaches, when the ring is fetched again, which failures go to another node, what the
//! client sends as its credential and how refusals and admin calls to a client port end.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dynamo_api::contract::{AUTHORIZATION_KEY, EPOCH_KEY};
use dynamo_api::pb::client::{self as wire, client_server};
use dynamo_api::ring::{Member, NodeId, Ring};
use tonic::{Request, Response, Status};

use super::*;

/// What every fake node reports: the ring (`Client.Ring`) and the epoch stamped on answers.
struct FakeCluster {
    layout: Mutex<wire::RingResponse>,
    epoch: AtomicU64,
}

/// One fake node: answers gets and puts with the cluster's epoch and records their keys.
#[derive(Clone)]
struct FakeNode {
    cluster: Arc<FakeCluster>,
    /// Keys of the gets and puts received.
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    /// When set, puts never answer.
    hang: Arc<AtomicBool>,
    /// How many ring requests it served.
    ring_calls: Arc<AtomicUsize>,
    /// The `authorization` value of every get and put received ("" without one).
    authorizations: Arc<Mutex<Vec<String>>>,
    /// How many more puts it refuses as overloaded, before reading them.
    overloaded: Arc<AtomicUsize>,
    /// How many puts it refused as overloaded.
    refused: Arc<AtomicUsize>,
}

/// Keys a fake node refuses: as a node does a caller without a credential, or with a role
/// that does not allow the call.
const UNAUTHENTICATED_KEY: &[u8] = b"needs-a-credential";
const DENIED_KEY: &[u8] = b"needs-another-role";

impl FakeNode {
    /// Records the call's key and credential; refuses the keys that stand for a refusal.
    fn receive<T>(&self, request: &Request<T>, key: &[u8]) -> Result<(), Status> {
        let authorization = request
            .metadata()
            .get(AUTHORIZATION_KEY)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        self.authorizations.lock().unwrap().push(authorization);
        self.received.lock().unwrap().push(key.to_vec());
        match key {
            UNAUTHENTICATED_KEY => Err(Status::unauthenticated(
                "the client API needs a client certificate of the cluster CA or a bearer token",
            )),
            DENIED_KEY => Err(Status::permission_denied(
                "put needs the readwrite role; this credential has read",
            )),
            _ => Ok(()),
        }
    }

    fn answer<T>(&self, body: T) -> Response<T> {
        let mut response = Response::new(body);
        let epoch = self.cluster.epoch.load(Ordering::SeqCst);
        response.metadata_mut().insert(EPOCH_KEY, epoch.into());
        response
    }

    fn received(&self, key: &[u8]) -> bool {
        self.received.lock().unwrap().iter().any(|k| k == key)
    }
}

#[tonic::async_trait]
impl client_server::Client for FakeNode {
    async fn get(
        &self,
        req: Request<wire::GetRequest>,
    ) -> Result<Response<wire::GetResponse>, Status> {
        self.receive(&req, &req.get_ref().key)?;
        Ok(self.answer(wire::GetResponse::default()))
    }

    async fn put(
        &self,
        req: Request<wire::PutRequest>,
    ) -> Result<Response<wire::PutResponse>, Status> {
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let more = |n: usize| n.checked_sub(1);
        if self.overloaded.fetch_update(Ordering::SeqCst, Ordering::SeqCst, more).is_ok() {
            // As a node's admission layer answers: before the request is read.
            self.refused.fetch_add(1, Ordering::SeqCst);
            let mut status = Status::resource_exhausted(
                "node overloaded: 1024 client requests are in progress, the most it takes at \
                 once; retry with backoff",
            );
            status
                .metadata_mut()
                .insert(dynamo_api::contract::ERROR_KIND_KEY, "overloaded".parse().unwrap());
            return Err(status);
        }
        self.receive(&req, &req.get_ref().key)?;
        Ok(self.answer(wire::PutResponse { context: vec![1], acks: 2 }))
    }

    async fn ring(
        &self,
        _: Request<wire::RingRequest>,
    ) -> Result<Response<wire::RingResponse>, Status> {
        self.ring_calls.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(self.cluster.layout.lock().unwrap().clone()))
    }
}

/// `live` fake nodes serving, and `dead` members whose address nothing listens on.
struct Fakes {
    cluster: Arc<FakeCluster>,
    nodes: Vec<FakeNode>,
    /// Member id -> address, live ones first.
    addresses: Vec<(String, String)>,
    servers: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Fakes {
    fn drop(&mut self) {
        self.servers.iter().for_each(|s| s.abort());
    }
}

/// The ring over the first `members` of `addresses` as a node reports it.
fn layout(addresses: &[(String, String)], members: usize, epoch: u64) -> wire::RingResponse {
    let ring_members: Vec<Member> = addresses[..members]
        .iter()
        .enumerate()
        .map(|(i, (id, _))| Member {
            id: NodeId(id.clone()),
            zone: format!("z{}", i % 3),
            weight: 1,
        })
        .collect();
    let ring = Ring::new(16, ring_members).unwrap();
    let members: Vec<wire::RingMember> = ring
        .members()
        .iter()
        .map(|m| wire::RingMember {
            id: m.id.0.clone(),
            address: addresses.iter().find(|(id, _)| *id == m.id.0).unwrap().1.clone(),
            peer_address: format!("{}-peer", m.id.0),
            zone: m.zone.clone(),
            weight: m.weight,
        })
        .collect();
    let owners: Vec<u32> = ring.owner_indices();
    wire::RingResponse { partitions: 16, n: 3, members, owners, epoch }
}

async fn fakes(live: usize, dead: usize) -> Fakes {
    fakes_with(live, dead, None).await
}

/// [`fakes`] serving TLS with `tls` (a server certificate, optionally client verification).
async fn fakes_with(
    live: usize,
    dead: usize,
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> Fakes {
    let mut listeners = Vec::new();
    let mut addresses = Vec::new();
    for i in 0..live {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        addresses.push((format!("n{i}"), listener.local_addr().unwrap().to_string()));
        listeners.push(listener);
    }
    for i in 0..dead {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        addresses.push((format!("dead{i}"), listener.local_addr().unwrap().to_string()));
    }
    let cluster = Arc::new(FakeCluster {
        layout: Mutex::new(layout(&addresses, live + dead, 1)),
        epoch: AtomicU64::new(1),
    });
    let mut nodes = Vec::new();
    let mut servers = Vec::new();
    for listener in listeners {
        let node = FakeNode {
            cluster: cluster.clone(),
            received: Arc::default(),
            hang: Arc::default(),
            ring_calls: Arc::default(),
            authorizations: Arc::default(),
            overloaded: Arc::default(),
            refused: Arc::default(),
        };
        nodes.push(node.clone());
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let tls = tls.clone();
        // Aborted when the test's `Fakes` is dropped.
        servers.push(tokio::spawn(async move {
            // The client port of a node: no admin service.
            let mut server = tonic::transport::Server::builder();
            if let Some(tls) = tls {
                server = server.tls_config(tls).unwrap();
            }
            server
                .add_service(client_server::ClientServer::new(node))
                .serve_with_incoming(incoming)
                .await
                .unwrap();
        }));
    }
    Fakes { cluster, nodes, addresses, servers }
}

impl Fakes {
    fn address(&self, i: usize) -> String {
        self.addresses[i].1.clone()
    }

    /// The index of the node at `address`.
    fn index_of(&self, address: &str) -> usize {
        self.addresses.iter().position(|(_, a)| a == address).unwrap()
    }

    fn ring_calls(&self) -> usize {
        self.nodes.iter().map(|n| n.ring_calls.load(Ordering::SeqCst)).sum()
    }
}

/// Polls `done` every few milliseconds for up to 5 s.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn requests_go_to_the_first_replica_of_their_key_over_one_connection_per_node() {
    let fakes = fakes(4, 0).await;
    let client = Client::builder([fakes.address(0)]).build().unwrap();
    assert_eq!(client.refresh_ring().await.unwrap(), Some(1));
    for i in 0..40 {
        let key = format!("key-{i}").into_bytes();
        let first = fakes.index_of(&client.endpoints_for(&key)[0]);
        client.put(&key, b"v".to_vec(), vec![], None).await.unwrap();
        client.get(&key, None).await.unwrap();
        for (j, node) in fakes.nodes.iter().enumerate() {
            assert_eq!(node.received(&key), j == first, "key-{i} at n{j} (first replica n{first})");
        }
        let ring = layout(&fakes.addresses, 4, 1);
        let ring = RingLayout::from(ring).to_ring().unwrap();
        let replica = &ring.preference_list(ring.partition_of(&key))[0].id;
        assert_eq!(replica.0, format!("n{first}"), "the node's own first replica");
    }
    assert_eq!(client.inner.pool.len(), 4, "one connection per node, reused");
}

#[tokio::test]
async fn without_a_ring_a_request_goes_to_a_seed_and_the_ring_follows() {
    let fakes = fakes(3, 0).await;
    let client = Client::builder([fakes.address(1)]).build().unwrap();
    assert_eq!(client.ring_epoch(), None);
    client.put(b"k", b"v".to_vec(), vec![], None).await.unwrap();
    assert!(fakes.nodes[1].received(b"k"));
    eventually("the client has the ring", || client.ring_epoch() == Some(1)).await;
    assert_eq!(fakes.ring_calls(), 1);
}

#[tokio::test]
async fn an_answer_with_a_newer_epoch_brings_the_new_ring_once() {
    let fakes = fakes(4, 0).await;
    *fakes.cluster.layout.lock().unwrap() = layout(&fakes.addresses, 3, 1);
    let client = Client::builder([fakes.address(0)]).build().unwrap();
    client.refresh_ring().await.unwrap();
    // Requests answered at the ring's epoch fetch nothing.
    for i in 0..10 {
        client.put(format!("a{i}").as_bytes(), b"v".to_vec(), vec![], None).await.unwrap();
    }
    assert_eq!(fakes.ring_calls(), 1);
    assert!(fakes.nodes[3].received.lock().unwrap().is_empty(), "n3 is not in the ring yet");

    // n3 joins: the nodes answer with epoch 2.
    *fakes.cluster.layout.lock().unwrap() = layout(&fakes.addresses, 4, 2);
    fakes.cluster.epoch.store(2, Ordering::SeqCst);
    client.put(b"b", b"v".to_vec(), vec![], None).await.unwrap();
    eventually("the client routes with epoch 2", || client.ring_epoch() == Some(2)).await;
    let calls = fakes.ring_calls();
    assert_eq!(calls, 2, "one fetch for the new epoch");
    for i in 0..40 {
        let key = format!("c{i}").into_bytes();
        client.put(&key, b"v".to_vec(), vec![], None).await.unwrap();
    }
    assert_eq!(fakes.ring_calls(), calls, "no fetch once the ring is current");
    assert!(!fakes.nodes[3].received.lock().unwrap().is_empty(), "n3 gets its keys");
}

#[tokio::test]
async fn a_replica_that_refuses_connections_is_skipped_then_avoided() {
    let fakes = fakes(3, 1).await;
    let dead = fakes.address(3);
    let client = Client::builder([fakes.address(0)]).build().unwrap();
    client.refresh_ring().await.unwrap();
    let key = (0..)
        .map(|i| format!("key-{i}").into_bytes())
        .find(|k| client.endpoints_for(k)[0] == dead)
        .unwrap();
    let second = fakes.index_of(&client.endpoints_for(&key)[1]);
    client.put(&key, b"v".to_vec(), vec![], None).await.unwrap();
    assert!(fakes.nodes[second].received(&key), "the next replica took the put");
    let plan = client.endpoints_for(&key);
    assert_eq!(plan[0], fakes.address(second), "the next replica now comes first: {plan:?}");
    assert!(!plan.contains(&dead), "the dead node is tried after every other: {plan:?}");
    // The failover made the client fetch the ring again (it is unchanged).
    eventually("the ring is fetched after the failover", || fakes.ring_calls() == 2).await;
}

#[tokio::test]
async fn a_put_that_times_out_is_not_sent_again() {
    let fakes = fakes(3, 0).await;
    let client =
        Client::builder([fakes.address(0)]).timeout(Duration::from_millis(300)).build().unwrap();
    client.refresh_ring().await.unwrap();
    let key = b"slow".to_vec();
    let first = fakes.index_of(&client.endpoints_for(&key)[0]);
    fakes.nodes[first].hang.store(true, Ordering::SeqCst);
    let err = client.put(&key, b"v".to_vec(), vec![], None).await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
    assert!(fakes.nodes.iter().all(|n| !n.received(&key)), "the put went nowhere else");
}

#[tokio::test]
async fn an_overloaded_node_is_asked_again_after_a_backoff_and_then_the_caller_is_told() {
    let fakes = fakes(1, 0).await;
    let node = &fakes.nodes[0];
    let client = Client::builder([fakes.address(0)]).partition_aware(false).build().unwrap();
    // Refused three times, then taken: the put succeeds, written once.
    node.overloaded.store(3, Ordering::SeqCst);
    let started = Instant::now();
    client.put(b"busy", b"v".to_vec(), vec![], None).await.unwrap();
    let waited = started.elapsed();
    assert_eq!(node.refused.load(Ordering::SeqCst), 3);
    assert_eq!(node.received.lock().unwrap().len(), 1, "the put was read once");
    // Three waits of at least half of 25, 50 and 100 ms.
    assert!(waited >= Duration::from_micros(87_500), "waited only {waited:?}");
    // Refused more often than the client retries: the caller gets the node's refusal.
    let client = Client::builder([fakes.address(0)])
        .partition_aware(false)
        .overload_retries(2)
        .build()
        .unwrap();
    node.overloaded.store(100, Ordering::SeqCst);
    node.refused.store(0, Ordering::SeqCst);
    let err = client.put(b"busier", b"v".to_vec(), vec![], None).await.unwrap_err();
    assert_eq!(node.refused.load(Ordering::SeqCst), 3, "one try and two retries");
    assert_eq!(err.code(), Some(Code::ResourceExhausted), "{err}");
    assert!(err.to_string().contains("retry with backoff"), "{err}");
    assert!(!node.received(b"busier"));
}

#[tokio::test]
async fn a_client_that_is_not_partition_aware_talks_to_its_endpoint_only() {
    let fakes = fakes(3, 0).await;
    let client = Client::new(&fakes.address(2), Duration::from_secs(5)).unwrap();
    assert!(!client.is_partition_aware());
    for i in 0..20 {
        client.put(format!("k{i}").as_bytes(), b"v".to_vec(), vec![], None).await.unwrap();
    }
    assert_eq!(fakes.nodes[2].received.lock().unwrap().len(), 20);
    assert_eq!(client.refresh_ring().await.unwrap(), None);
    assert_eq!(client.ring_epoch(), None);
    assert_eq!(fakes.ring_calls(), 0);
}

#[tokio::test]
async fn with_every_node_down_the_error_lists_what_was_tried() {
    let fakes = fakes(0, 2).await;
    let client = Client::builder([fakes.address(0), fakes.address(1)]).build().unwrap();
    let err = client.get(b"k", None).await.unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, ClientError::Exhausted { ref errors } if errors.len() == 2), "{message}");
    assert!(message.contains(&fakes.address(1)), "{message}");
    assert!(matches!(Client::builder(Vec::<String>::new()).build(), Err(ClientError::NoEndpoint)));
}

#[tokio::test]
async fn every_call_carries_the_token_and_the_ring_comes_from_the_client_port() {
    let fakes = fakes(3, 0).await;
    let credentials = Credentials { token: Some("s3cret".into()), ..Credentials::insecure() };
    let client = Client::builder([fakes.address(0)]).credentials(credentials).build().unwrap();
    let layout = client.ring().await.unwrap();
    assert_eq!(layout.members.len(), 3);
    assert!(layout.members.iter().all(|m| m.peer_address == format!("{}-peer", m.id)));
    for i in 0..10 {
        client.put(format!("k{i}").as_bytes(), b"v".to_vec(), vec![], None).await.unwrap();
        client.get(format!("k{i}").as_bytes(), None).await.unwrap();
    }
    let seen: Vec<String> =
        fakes.nodes.iter().flat_map(|n| n.authorizations.lock().unwrap().clone()).collect();
    assert_eq!(seen.len(), 20);
    assert!(seen.iter().all(|a| a == "Bearer s3cret"), "{seen:?}");
    // Without a token, nothing is sent.
    let anonymous = Client::new(&fakes.address(1), Duration::from_secs(5)).unwrap();
    anonymous.get(b"x", None).await.unwrap();
    assert_eq!(fakes.nodes[1].authorizations.lock().unwrap().last().unwrap(), "");
}

#[tokio::test]
async fn a_refused_credential_is_reported_and_never_sent_to_another_node() {
    let fakes = fakes(3, 0).await;
    let client = Client::builder([fakes.address(0), fakes.address(1), fakes.address(2)])
        .partition_aware(false)
        .retries(2)
        .build()
        .unwrap();
    let err = client.put(UNAUTHENTICATED_KEY, b"v".to_vec(), vec![], None).await.unwrap_err();
    assert!(matches!(err, ClientError::Unauthenticated { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("needs a client certificate"), "{message}");
    assert!(message.contains("--token") && message.contains("--cert"), "{message}");
    let err = client.get(DENIED_KEY, None).await.unwrap_err();
    assert!(matches!(err, ClientError::PermissionDenied { .. }), "{err}");
    assert!(err.to_string().contains("this credential has read"), "{err}");
    let asked = |key: &[u8]| fakes.nodes.iter().filter(|n| n.received(key)).count();
    assert_eq!(asked(UNAUTHENTICATED_KEY), 1, "a refused put went to one node only");
    assert_eq!(asked(DENIED_KEY), 1, "a refused get went to one node only");
}

#[tokio::test]
async fn admin_calls_to_a_client_port_say_where_they_go() {
    let fakes = fakes(1, 0).await;
    let client = Client::builder([fakes.address(0)]).build().unwrap();
    assert_eq!(client.admin_endpoint(), fakes.address(0), "the first seed by default");
    let err = client.status().await.unwrap_err();
    assert!(matches!(err, ClientError::NotAdminPort { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("peer port (7071 by default)"), "{message}");
    assert!(message.contains("--admin-addr") && message.contains("DYNAMO_ADMIN_ADDR"), "{message}");
    // An admin endpoint of its own: admin calls go there, data calls do not.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let client = Client::builder([fakes.address(0)])
        .admin_endpoint(dead.to_string())
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    assert_eq!(client.admin_endpoint(), dead.to_string());
    let err = client.repair(None).await.unwrap_err();
    assert!(err.to_string().contains(&dead.to_string()), "{err}");
    client.get(b"k", None).await.unwrap();
}

#[tokio::test]
async fn tls_nodes_are_verified_with_the_cluster_ca() {
    use dynamo_api::security::{Ca, CertRequest, Role};
    let day = Duration::from_secs(86_400);
    let ca = Ca::generate("t", day).unwrap();
    let node = ca
        .issue(&CertRequest {
            name: "n0".into(),
            role: Role::Peer,
            dns_names: vec!["localhost".into()],
            ips: vec!["127.0.0.1".parse().unwrap()],
            lifetime: day,
        })
        .unwrap();
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(&node.cert_pem, &node.key_pem));
    let fakes = fakes_with(3, 0, Some(tls)).await;
    let trusted = Credentials {
        ca_pem: Some(ca.cert_pem().to_string()),
        token: Some("t0k".into()),
        ..Credentials::default()
    };
    let client = Client::builder([fakes.address(0)]).credentials(trusted).build().unwrap();
    client.refresh_ring().await.unwrap();
    client.put(b"k", b"v".to_vec(), vec![], None).await.unwrap();
    let first = fakes.index_of(&client.endpoints_for(b"k")[0]);
    assert!(fakes.nodes[first].received(b"k"), "routed over TLS to the first replica");
    assert_eq!(fakes.nodes[first].authorizations.lock().unwrap().last().unwrap(), "Bearer t0k");

    // A client trusting another CA does not talk to these nodes, and says why.
    let other = Ca::generate("t", day).unwrap();
    let foreign =
        Credentials { ca_pem: Some(other.cert_pem().to_string()), ..Credentials::default() };
    let client = Client::builder([fakes.address(1)])
        .credentials(foreign)
        .partition_aware(false)
        .build()
        .unwrap();
    let err = client.put(b"k2", b"v".to_vec(), vec![], None).await.unwrap_err();
    assert!(matches!(err, ClientError::Tls { .. }), "{err}");
    assert!(err.to_string().contains("--ca-cert"), "{err}");
    assert!(fakes.nodes.iter().all(|n| !n.received(b"k2")));
    // Plaintext to a TLS node fails too (no silent downgrade).
    let plain = Client::new(&fakes.address(1), Duration::from_secs(2)).unwrap();
    assert!(plain.get(b"k3", None).await.is_err());
    assert!(fakes.nodes.iter().all(|n| !n.received(b"k3")));
}
