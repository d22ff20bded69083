//! Who may call what, on real TLS processes: for every service (client port: Get, Put, Delete,
//! Ring; peer port: Admin Status, Decommission, Repair, SetFaults; peer port: Internode
//! Replicate, Fetch, StreamPartition, Gossip), a call without a credential, with a client
//! certificate of another CA, with a read token on a write, with a client (readwrite) token or
//! certificate on an admin or internode method, is refused with the right code (no credential,
//! or a token on the internode API, which takes node certificates only: UNAUTHENTICATED; a
//! credential without the role: PERMISSION_DENIED; another CA: the TLS handshake fails or the
//! call is refused), and nothing
//! changes: the value, every replica of it, the ring and the membership are as before, and no
//! fault was switched on. The right credentials work: a readwrite certificate puts and gets,
//! an admin token calls status; SetFaults with an admin credential is refused on a node without
//! fault injection. Raw tonic clients make the calls the client library cannot express.

use std::time::Duration;

use dynamo_api::pb::admin::{
    admin_client::AdminClient, DecommissionRequest, RepairRequest, SetFaultsRequest, StatusRequest,
};
use dynamo_api::pb::client::{
    client_client::ClientClient, DeleteRequest, GetRequest, PutRequest, RingRequest,
};
use dynamo_api::pb::internode::{
    internode_client::InternodeClient, FetchRequest, GossipRequest, ReplicateRequest,
    StreamPartitionRequest,
};
use dynamo_api::security::{Ca, CertRequest, Credentials, Role};
use dynamo_client::{Client, ClientError, MemberState};
use dynamo_tests::{Cluster, ClusterOptions};
use tonic::{Code, Request, Status};

/// Every method under test, by service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Get,
    Put,
    Delete,
    Ring,
    Status,
    Decommission,
    Repair,
    SetFaults,
    Replicate,
    Fetch,
    StreamPartition,
    Gossip,
}

use Call::*;

const CLIENT_API: [Call; 4] = [Get, Put, Delete, Ring];
const ADMIN_API: [Call; 4] = [Status, Decommission, Repair, SetFaults];
const INTERNODE_API: [Call; 4] = [Replicate, Fetch, StreamPartition, Gossip];

/// What the calls aim at: node 0's ports, and requests that would change the cluster if they
/// were served (overwrite or delete `k`, decommission node-2, cut node 0 off, slip another
/// key's version into `k`).
struct Target {
    client: String,
    peer: String,
    /// The context of `k`'s value.
    context: Vec<u8>,
    /// The encoded version of another key (value "evil"), to replicate into `k`.
    evil_clock: Vec<u8>,
    /// The other nodes' ids.
    others: Vec<String>,
}

const KEY: &[u8] = b"k";
const VALUE: &[u8] = b"v1";

fn request<T>(credentials: &Credentials, body: T) -> Request<T> {
    let mut request = Request::new(body);
    credentials.authorize(&mut request);
    request
}

/// Makes `call` against `target` with `credentials`: Ok if the node served it.
async fn call(target: &Target, call: Call, credentials: &Credentials) -> Result<(), Status> {
    let timeout = Duration::from_secs(5);
    let address = if CLIENT_API.contains(&call) { &target.client } else { &target.peer };
    let channel = dynamo_client::channel(address, timeout, credentials).expect("valid address");
    let mut client = ClientClient::new(channel.clone());
    let mut admin = AdminClient::new(channel.clone());
    let mut internode = InternodeClient::new(channel);
    match call {
        Get => client
            .get(request(credentials, GetRequest { key: KEY.to_vec(), r: None }))
            .await
            .map(drop),
        Put => client
            .put(request(
                credentials,
                PutRequest {
                    key: KEY.to_vec(),
                    value: b"overwritten".to_vec(),
                    context: target.context.clone(),
                    w: None,
                },
            ))
            .await
            .map(drop),
        Delete => client
            .delete(request(
                credentials,
                DeleteRequest { key: KEY.to_vec(), context: target.context.clone(), w: None },
            ))
            .await
            .map(drop),
        Ring => client.ring(request(credentials, RingRequest {})).await.map(drop),
        Status => admin.status(request(credentials, StatusRequest {})).await.map(drop),
        Decommission => admin
            .decommission(request(
                credentials,
                DecommissionRequest { node_id: target.others[0].clone(), force: true },
            ))
            .await
            .map(drop),
        Repair => {
            admin.repair(request(credentials, RepairRequest { partition: None })).await.map(drop)
        }
        SetFaults => admin
            .set_faults(request(
                credentials,
                SetFaultsRequest { blocked_peers: target.others.clone() },
            ))
            .await
            .map(drop),
        Replicate => internode
            .replicate(request(
                credentials,
                ReplicateRequest {
                    key: KEY.to_vec(),
                    clock: target.evil_clock.clone(),
                    from: "intruder".into(),
                    hint_for: String::new(),
                },
            ))
            .await
            .map(drop),
        Fetch => internode
            .fetch(request(
                credentials,
                FetchRequest { key: KEY.to_vec(), hint_for: String::new() },
            ))
            .await
            .map(drop),
        StreamPartition => internode
            .stream_partition(request(
                credentials,
                StreamPartitionRequest { partition: 0, after: None, limit: 100, max_bytes: 0 },
            ))
            .await
            .map(drop),
        Gossip => internode
            .gossip(request(
                credentials,
                GossipRequest {
                    view: b"{}".to_vec(),
                    cluster: "test".into(),
                    ca_fingerprint: String::new(),
                },
            ))
            .await
            .map(drop),
    }
}

/// Asserts `calls` with `credentials` are each refused with `code`, whose message names what
/// the method needs.
async fn refused(
    target: &Target,
    who: &str,
    credentials: &Credentials,
    calls: &[Call],
    code: Code,
) {
    for &c in calls {
        match call(target, c, credentials).await {
            Ok(()) => panic!("{c:?} with {who} was served"),
            Err(status) => {
                assert_eq!(status.code(), code, "{c:?} with {who}: {status:?}");
                let message = status.message();
                assert!(
                    message.contains("certificate") || message.contains("token"),
                    "{c:?} with {who}: the message says what is needed: {message}"
                );
            }
        }
    }
}

/// The cluster's CA with no client credential: TLS, nothing else.
fn anonymous(cluster: &Cluster) -> Credentials {
    Credentials {
        ca_pem: Some(cluster.pki().unwrap().ca().cert_pem().to_string()),
        identity: None,
        token: None,
        server_name: None,
    }
}

#[tokio::test]
async fn every_service_refuses_calls_without_the_right_credential_and_nothing_changes() {
    let cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    assert!(cluster.is_tls(), "TLS is the harness's default");
    let admin = cluster.client(0);
    let written = admin.put(KEY, VALUE.to_vec(), vec![], Some(3)).await.unwrap();
    admin.put(b"other", b"evil".to_vec(), vec![], Some(3)).await.unwrap();
    let other_replica = cluster.placement().await.unwrap().replicas(b"other")[0];
    let evil_clock = cluster.local_replica(other_replica, b"other").await.unwrap().encode();
    let epoch = admin.ring().await.unwrap().epoch;
    let target = Target {
        client: cluster.nodes[0].address.clone(),
        peer: cluster.nodes[0].peer_address.clone(),
        context: written.context,
        evil_clock,
        others: cluster.nodes[1..].iter().map(|n| n.id.clone()).collect(),
    };
    let all: Vec<Call> = [CLIENT_API, ADMIN_API, INTERNODE_API].concat();

    // No credential at all (TLS with the right CA, no certificate, no token).
    refused(&target, "no credential", &anonymous(&cluster), &all, Code::Unauthenticated).await;

    // A client certificate of another CA: the handshake fails or the call is refused.
    let foreign_ca = Ca::generate("test", Duration::from_secs(3600)).unwrap();
    for role in [Role::ReadWrite, Role::Admin, Role::Peer] {
        let issued = foreign_ca
            .issue(&CertRequest::client(format!("foreign-{role}"), role, Duration::from_secs(3600)))
            .unwrap();
        let foreign = Credentials {
            identity: Some((issued.cert_pem, issued.key_pem)),
            ..anonymous(&cluster)
        };
        for &c in &all {
            let result = call(&target, c, &foreign).await;
            assert!(result.is_err(), "{c:?} with a {role} certificate of another CA was served");
        }
    }

    // A read token on the writes; a read or readwrite token, or a readwrite certificate, on
    // the admin API.
    let read = cluster.token_credentials(Role::Read).unwrap();
    refused(&target, "a read token", &read, &[Put, Delete], Code::PermissionDenied).await;
    refused(&target, "a read token", &read, &ADMIN_API, Code::PermissionDenied).await;
    let readwrite = cluster.token_credentials(Role::ReadWrite).unwrap();
    refused(&target, "a readwrite token", &readwrite, &ADMIN_API, Code::PermissionDenied).await;
    let readwrite_cert = cluster.cert_credentials("app", Role::ReadWrite).unwrap();
    refused(
        &target,
        "a readwrite certificate",
        &readwrite_cert,
        &ADMIN_API,
        Code::PermissionDenied,
    )
    .await;
    // The internode API: a client certificate has the wrong role; a token, even an admin's,
    // is no credential there at all (only a node certificate is).
    refused(
        &target,
        "a readwrite certificate",
        &readwrite_cert,
        &INTERNODE_API,
        Code::PermissionDenied,
    )
    .await;
    let admin_token = cluster.token_credentials(Role::Admin).unwrap();
    for (who, token) in [
        ("a read token", &read),
        ("a readwrite token", &readwrite),
        ("an admin token", &admin_token),
    ] {
        refused(&target, who, token, &INTERNODE_API, Code::Unauthenticated).await;
    }

    // Nothing changed: the value on every replica, the ring, the membership, no fault set.
    let got = admin.get(KEY, Some(3)).await.unwrap();
    assert_eq!(got.values, [VALUE.to_vec()]);
    for i in 0..cluster.nodes.len() {
        assert_eq!(cluster.local_values(i, KEY).await.unwrap(), [VALUE.to_vec()], "node {i}");
        let ring = cluster.client(i).ring().await.unwrap();
        assert_eq!((ring.members.len(), ring.epoch), (3, epoch), "node {i}'s ring");
        let status = cluster.status(i).await.unwrap();
        for node in &cluster.nodes {
            assert_eq!(status.membership_of(&node.id), Some(MemberState::Normal), "{}", node.id);
        }
        // No node was cut off: a write every replica must acknowledge succeeds through it.
        cluster.client(i).put(b"probe", b"p".to_vec(), vec![], Some(3)).await.unwrap();
    }

    // The right credentials work, over the client library too.
    for &c in &[Get, Ring] {
        call(&target, c, &read).await.unwrap_or_else(|e| panic!("{c:?} with a read token: {e:?}"));
    }
    call(&target, Fetch, &cluster.access().peer).await.unwrap();
    let app =
        Client::builder([target.client.as_str()]).credentials(readwrite_cert).build().unwrap();
    app.put(b"app-key", b"app-value".to_vec(), vec![], None).await.unwrap();
    assert_eq!(app.get(b"app-key", None).await.unwrap().values, [b"app-value".to_vec()]);
    let err = app.status().await.unwrap_err();
    assert!(matches!(err, ClientError::PermissionDenied { .. }), "{err}");
    let ops = Client::builder([target.client.as_str()])
        .credentials(admin_token.clone())
        .admin_endpoint(target.peer.as_str())
        .build()
        .unwrap();
    assert_eq!(ops.status().await.unwrap().nodes.len(), 3);
    // An admin call to the client port says where admin calls go.
    let misdirected =
        Client::builder([target.client.as_str()]).credentials(admin_token).build().unwrap();
    let err = misdirected.status().await.unwrap_err();
    assert!(matches!(err, ClientError::NotAdminPort { .. }), "status on a client port: {err}");
    let reader = Client::builder([target.client.as_str()]).credentials(read).build().unwrap();
    let err = reader.put(b"app-key", b"x".to_vec(), vec![], None).await.unwrap_err();
    assert!(matches!(err, ClientError::PermissionDenied { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("readwrite") && message.contains("token create"), "{message}");
}

#[tokio::test]
async fn set_faults_needs_fault_injection_even_for_an_admin() {
    let opts = ClusterOptions { fault_injection: false, ..ClusterOptions::single_node() };
    let cluster = Cluster::start(opts).await.unwrap();
    let target = Target {
        client: cluster.nodes[0].address.clone(),
        peer: cluster.nodes[0].peer_address.clone(),
        context: vec![],
        evil_clock: vec![],
        others: vec!["node-2".into()],
    };
    for admin in [cluster.access().admin.clone(), cluster.token_credentials(Role::Admin).unwrap()] {
        let status = call(&target, SetFaults, &admin).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("fault injection is disabled"), "{status:?}");
    }
    // Without a credential it is refused before that.
    let status = call(&target, SetFaults, &anonymous(&cluster)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}
