//! One node served in-process over TLS: each of its three ports accepts exactly the
//! credentials its methods need (client certificate, token, peer certificate), refuses the rest
//! with the documented code, and a gossip from another cluster or with an invalid layout is
//! refused without changing the node's view.

use std::path::Path;
use std::time::Duration;

use dynamo_api::config::{EngineKind, NodeConfig, TlsConfig};
use dynamo_api::pb::admin::{admin_client::AdminClient, StatusRequest};
use dynamo_api::pb::client::{client_client::ClientClient, GetRequest, PutRequest, RingRequest};
use dynamo_api::pb::internode::{internode_client::InternodeClient, GossipRequest};
use dynamo_api::security::{Ca, CertRequest, Credentials, Role, TokenEntry, Tokens};
use tokio_util::sync::CancellationToken;
use tonic::Code;

const DAY: Duration = Duration::from_secs(86_400);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Node {
    client: String,
    peer: String,
    ca: Ca,
    dir: tempfile::TempDir,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

async fn start() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("tls-test", DAY).unwrap();
    restart(dir, ca).await
}

/// Starts the node on `dir` (its data and TLS files), with `ca`.
async fn restart(dir: tempfile::TempDir, ca: Ca) -> Node {
    let cert = ca
        .issue(&CertRequest {
            name: "n1".into(),
            role: Role::Peer,
            dns_names: vec!["localhost".into()],
            ips: vec!["127.0.0.1".parse().unwrap()],
            lifetime: DAY,
        })
        .unwrap();
    let tokens = Tokens::new(vec![
        TokenEntry::for_token(Role::Read, "reader", "read-token"),
        TokenEntry::for_token(Role::ReadWrite, "app", "rw-token"),
        TokenEntry::for_token(Role::Admin, "ops", "admin-token"),
    ]);
    let (client, peer, health, metrics) = (free_port(), free_port(), free_port(), free_port());
    let config = NodeConfig {
        id: "n1".into(),
        listen: format!("127.0.0.1:{client}"),
        peer_listen: format!("127.0.0.1:{peer}"),
        health_listen: format!("127.0.0.1:{health}"),
        metrics_listen: format!("127.0.0.1:{metrics}"),
        engine: EngineKind::Rocksdb,
        data_dir: Some(dir.path().join("data")),
        tls: TlsConfig {
            ca_cert: Some(write(dir.path(), "ca.pem", ca.cert_pem())),
            cert: Some(write(dir.path(), "node.pem", &cert.cert_pem)),
            key: Some(write(dir.path(), "node.key", &cert.key_pem)),
        },
        tokens_file: Some(write(dir.path(), "tokens", &tokens.render())),
        gossip_interval_ms: 100,
        ..NodeConfig::default()
    };
    let mut config = config;
    config.cluster.name = "tls-test".into();
    config.cluster.secret = "s".into();
    config.cluster.n = Some(1);
    config.cluster.partitions = 8;
    config.validate().unwrap();
    let stop = CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move {
        dynamo_node::server::run(config, s).await.unwrap();
    });
    let node = Node {
        client: format!("127.0.0.1:{client}"),
        peer: format!("127.0.0.1:{peer}"),
        ca,
        dir,
        stop,
        task,
    };
    // Ready once the lone node made its ring.
    let admin = node.credentials(None, Some("admin-token"));
    for _ in 0..100 {
        if let Ok(r) = ClientClient::new(admin.endpoint(&node.client).unwrap().connect_lazy())
            .ring(request(&admin, RingRequest {}))
            .await
        {
            if r.get_ref().epoch > 0 {
                return node;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the node did not come up");
}

impl Node {
    fn credentials(&self, cert: Option<(&Ca, Role)>, token: Option<&str>) -> Credentials {
        let identity = cert.map(|(ca, role)| {
            let c = ca.issue(&CertRequest::client("tester", role, DAY)).unwrap();
            (c.cert_pem, c.key_pem)
        });
        Credentials {
            ca_pem: Some(self.ca.cert_pem().to_string()),
            identity,
            token: token.map(str::to_string),
            server_name: None,
        }
    }

    fn client(&self, c: &Credentials) -> ClientClient<tonic::transport::Channel> {
        ClientClient::new(c.endpoint(&self.client).unwrap().connect_lazy())
    }

    fn admin(&self, c: &Credentials) -> AdminClient<tonic::transport::Channel> {
        AdminClient::new(c.endpoint(&self.peer).unwrap().connect_lazy())
    }

    fn internode(&self, c: &Credentials) -> InternodeClient<tonic::transport::Channel> {
        InternodeClient::new(c.endpoint(&self.peer).unwrap().connect_lazy())
            .max_decoding_message_size(64 << 20)
    }

    /// Stops the node; returns its directory and CA for a restart.
    async fn stop(self) -> (tempfile::TempDir, Ca) {
        self.stop.cancel();
        self.task.await.unwrap();
        (self.dir, self.ca)
    }
}

fn request<T>(c: &Credentials, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    c.authorize(&mut r);
    r
}

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest { key: key.into(), value: value.into(), context: vec![], w: None }
}

async fn value_of(node: &Node, key: &str) -> Vec<Vec<u8>> {
    let c = node.credentials(None, Some("read-token"));
    let reply = node.client(&c).get(request(&c, GetRequest { key: key.into(), r: None })).await;
    reply.unwrap().into_inner().values
}

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    r.expect_err("the call should have been refused").code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_port_accepts_exactly_the_credentials_its_methods_need() {
    let node = start().await;
    let none = node.credentials(None, None);
    let read = node.credentials(None, Some("read-token"));
    let rw = node.credentials(None, Some("rw-token"));
    let admin = node.credentials(None, Some("admin-token"));
    let rw_cert = node.credentials(Some((&node.ca, Role::ReadWrite)), None);
    let peer_cert = node.credentials(Some((&node.ca, Role::Peer)), None);

    // Client port.
    node.client(&rw).put(request(&rw, put("k", "v1"))).await.unwrap();
    node.client(&rw_cert).put(request(&rw_cert, put("k2", "v"))).await.unwrap();
    assert_eq!(
        code(node.client(&none).put(request(&none, put("k", "x"))).await),
        Code::Unauthenticated
    );
    let refused = node.client(&read).put(request(&read, put("k", "x"))).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(refused.message().contains("needs role readwrite"), "{}", refused.message());
    // A node's certificate is not a client's.
    assert_eq!(
        code(node.client(&peer_cert).put(request(&peer_cert, put("k", "x"))).await),
        Code::PermissionDenied
    );
    // A value over the limit is refused by the coordinator; one far over it, from its length
    // alone.
    let over = |bytes| PutRequest { value: vec![0; bytes], ..put("k", "") };
    let refused = node.client(&rw).put(request(&rw, over((1 << 20) + 1))).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{}", refused.message());
    let refused = node.client(&rw).put(request(&rw, over(3 << 20))).await.unwrap_err();
    assert_eq!(refused.code(), Code::OutOfRange, "{}", refused.message());
    assert!(refused.message().contains("too large"), "{}", refused.message());
    assert_eq!(value_of(&node, "k").await, vec![b"v1".to_vec()], "nothing refused was written");

    // Peer port, admin API.
    node.admin(&admin).status(request(&admin, StatusRequest {})).await.unwrap();
    assert_eq!(
        code(node.admin(&none).status(request(&none, StatusRequest {})).await),
        Code::Unauthenticated
    );
    assert_eq!(
        code(node.admin(&rw).status(request(&rw, StatusRequest {})).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(node.admin(&peer_cert).status(request(&peer_cert, StatusRequest {})).await),
        Code::PermissionDenied
    );

    // Peer port, internode API: a peer certificate only; an admin token is no node.
    let gossip = GossipRequest {
        view: b"{}".to_vec(),
        cluster: "tls-test".into(),
        ca_fingerprint: node.ca.fingerprint(),
    };
    assert_eq!(
        code(node.internode(&admin).gossip(request(&admin, gossip.clone())).await),
        Code::Unauthenticated
    );
    assert_eq!(
        code(node.internode(&rw_cert).gossip(request(&rw_cert, gossip.clone())).await),
        Code::PermissionDenied
    );
    // Admitted, then refused as a malformed view (not as a credential problem).
    assert_eq!(code(node.internode(&peer_cert).gossip(gossip).await), Code::InvalidArgument);

    // A certificate of another CA does not even get through the handshake.
    let other = Ca::generate("tls-test", DAY).unwrap();
    let foreign = Credentials {
        ca_pem: Some(node.ca.cert_pem().into()),
        ..node.credentials(Some((&other, Role::Admin)), None)
    };
    assert!(node.admin(&foreign).status(request(&foreign, StatusRequest {})).await.is_err());
    // Plaintext is not served on the TLS ports.
    let plain = Credentials::insecure();
    assert!(node
        .client(&plain)
        .get(request(&plain, GetRequest { key: b"k".to_vec(), r: None }))
        .await
        .is_err());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_from_another_cluster_or_with_an_invalid_layout_changes_nothing() {
    let node = start().await;
    let admin = node.credentials(None, Some("admin-token"));
    let peer = node.credentials(Some((&node.ca, Role::Peer)), None);
    let ring_before =
        node.client(&admin).ring(request(&admin, RingRequest {})).await.unwrap().into_inner();

    let status =
        node.admin(&admin).status(request(&admin, StatusRequest {})).await.unwrap().into_inner();
    assert_eq!(status.nodes.len(), 1);

    // A view that adds a member and claims every partition for it.
    let fake_view = |partitions: usize, owner: &str| {
        serde_json::json!({
            "nodes": {
                "evil": {"id": "evil", "address": "127.0.0.1:1", "zone": "z", "weight": 1,
                          "status": "normal", "generation": 99, "version": 0, "heartbeat": 0,
                          "synced_epoch": 0}
            },
            "layout": {"epoch": 1000, "author": "evil", "partitions": 8,
                       "members": [{"id": "evil", "zone": "z", "weight": 1}],
                       "owners": vec![owner; partitions], "next": null}
        })
        .to_string()
        .into_bytes()
    };
    // From another cluster's name, and from the right name with another CA.
    for (cluster, fingerprint) in [("other", node.ca.fingerprint()), ("tls-test", "00".repeat(32))]
    {
        let forged = GossipRequest {
            view: fake_view(8, "evil"),
            cluster: cluster.into(),
            ca_fingerprint: fingerprint,
        };
        let refused = node.internode(&peer).gossip(forged).await.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{}", refused.message());
    }
    // From this cluster, but structurally invalid: 3 owners for 8 partitions, an unknown owner.
    for view in [fake_view(3, "evil"), fake_view(8, "nobody")] {
        let forged = GossipRequest {
            view,
            cluster: "tls-test".into(),
            ca_fingerprint: node.ca.fingerprint(),
        };
        let refused = node.internode(&peer).gossip(forged).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{}", refused.message());
        assert!(refused.message().contains("membership view refused"), "{}", refused.message());
    }
    let status =
        node.admin(&admin).status(request(&admin, StatusRequest {})).await.unwrap().into_inner();
    assert_eq!(status.nodes.len(), 1, "no member was added: {:?}", status.nodes);
    let ring_after =
        node.client(&admin).ring(request(&admin, RingRequest {})).await.unwrap().into_inner();
    assert_eq!(ring_after, ring_before, "the ring is unchanged");
    // Nothing invalid was saved: the node restarts on its data with the same ring.
    let (dir, ca) = node.stop().await;
    let node = restart(dir, ca).await;
    let ring_restarted =
        node.client(&admin).ring(request(&admin, RingRequest {})).await.unwrap().into_inner();
    // (It serves on new ports: compare the layout.)
    let shape = |r: &dynamo_api::pb::client::RingResponse| {
        (r.epoch, r.owners.clone(), r.members.iter().map(|m| m.id.clone()).collect::<Vec<_>>())
    };
    assert_eq!(shape(&ring_restarted), shape(&ring_before), "the restarted node has the same ring");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_removed_from_the_token_file_is_refused_without_a_restart() {
    let node = start().await;
    let rw = node.credentials(None, Some("rw-token"));
    node.client(&rw).put(request(&rw, put("k", "v"))).await.unwrap();
    // Revoke "app" (rw-token); keep the others.
    let tokens = Tokens::new(vec![TokenEntry::for_token(Role::Admin, "ops", "admin-token")]);
    // A later modification time than the first write, whatever the file system's resolution.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::write(node.dir.path().join("tokens"), tokens.render()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match node.client(&rw).put(request(&rw, put("k", "v2"))).await {
            Err(e) => {
                assert_eq!(e.code(), Code::Unauthenticated, "{}", e.message());
                break;
            }
            Ok(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Ok(_) => panic!("the revoked token was still accepted after 30 s"),
        }
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_replications_leave_the_key_readable() {
    use dynamo_api::pb::internode::ReplicateRequest;
    use dynamo_node::version::{Clock, Value, VersionVector};
    let node = start().await;
    let peer = node.credentials(Some((&node.ca, Role::Peer)), None);
    let siblings = |actor: u64, n: usize| {
        (0..n).fold(Clock::new(), |c, i| {
            c.update(&VersionVector::default(), Value::Data(format!("{actor}-{i}").into()), actor)
        })
    };
    let replicate = |clock: Clock| ReplicateRequest {
        key: b"k".to_vec(),
        clock: clock.encode(),
        from: "evil".into(),
        hint_for: String::new(),
    };
    // 300 concurrent values: more than a client write may leave (64), but what a replica sends
    // is copied as it is.
    node.internode(&peer).replicate(replicate(siblings(1, 300))).await.unwrap();
    // 300 more from another actor: merged, 600 values, over the merge cap (4 x 64): refused.
    let refused = node.internode(&peer).replicate(replicate(siblings(2, 300))).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{}", refused.message());
    let values = value_of(&node, "k").await;
    assert_eq!(values.len(), 300, "the key is still readable, with what was accepted");
    assert!(values.iter().all(|v| v.starts_with(b"1-")));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_are_answered_while_full_partition_scans_run() {
    use dynamo_api::pb::internode::{MerkleItemsRequest, PingRequest};
    use dynamo_node::storage::{RocksEngine, Store};
    use dynamo_node::version::{Clock, Value, VersionVector};
    // A partition of 150,000 keys, written before the node starts.
    let dir = tempfile::tempdir().unwrap();
    {
        let engine =
            std::sync::Arc::new(RocksEngine::open(&dir.path().join("data"), false).unwrap());
        let store = Store::open(engine, 8).unwrap();
        let clock = Clock::new().update(&VersionVector::default(), Value::Data(vec![1; 40]), 1);
        for i in 0..150_000u32 {
            store.merge(0, format!("key-{i:08}").as_bytes(), &clock).unwrap();
        }
    }
    let node = restart(dir, Ca::generate("tls-test", DAY).unwrap()).await;
    let peer = node.credentials(Some((&node.ca, Role::Peer)), None);
    let ping = || PingRequest { from: "test".into() };
    // Connections made (and TLS handshakes done) before the load starts.
    let mut pinger = node.internode(&peer);
    pinger.ping(ping()).await.unwrap();
    let mut scanners = Vec::new();
    for _ in 0..6 {
        let mut c = node.internode(&peer);
        c.ping(ping()).await.unwrap();
        scanners.push(c);
    }
    // Six scans of every item of the partition at once (three per worker thread).
    let started = tokio::time::Instant::now();
    let scans: Vec<_> = scanners
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let request = MerkleItemsRequest {
                    partition: 0,
                    leaves: (0..256).collect(),
                    fanout: 16,
                    depth: 2,
                    after: None,
                    max_bytes: 16 << 20,
                };
                let r = c.merkle_items(request).await.unwrap();
                (r.into_inner().items.len(), started.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let asked = tokio::time::Instant::now();
    pinger.ping(ping()).await.unwrap();
    let ping_took = asked.elapsed();
    let mut fastest_scan = Duration::MAX;
    for scan in scans {
        let (items, took) = scan.await.unwrap();
        assert_eq!(items, 150_000);
        fastest_scan = fastest_scan.min(took);
    }
    eprintln!("ping {ping_took:?} during scans, the fastest of which took {fastest_scan:?}");
    // Blocked behind the scans, the ping would wait for at least one of them to finish.
    assert!(
        ping_took * 4 < fastest_scan,
        "a ping took {ping_took:?} while scans ran (the fastest took {fastest_scan:?})"
    );
    node.stop().await;
}
