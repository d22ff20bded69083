//! Connections to the other nodes: one lazily connected HTTP/2 channel per peer, reused by
//! every request, implementing every `net` trait over the internode gRPC service. Every call
//! goes through one envelope ([`Peers::call`]): metadata and timeout, the peer's client, the
//! classification of failures, and the failure detector.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, RwLock};
use std::time::Duration;
use std::time::Instant;

use futures::future::BoxFuture;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use super::pb::internode::{
    internode_client::InternodeClient, CoordinatePutRequest, FetchRequest, GossipRequest,
    MerkleHashesRequest, MerkleItemsRequest, PingRequest, ReplicateRequest, StreamPartitionRequest,
};
use super::status::is_node_error;
use super::MAX_MESSAGE_BYTES;
use crate::membership::detector::FailureDetector;
use crate::membership::PROBE_INTERVAL;
use crate::merkle::Hash;
use crate::net::{
    ForwardedPut, Gossip, ItemsPage, Liveness, Merkle, PartitionPage, PartitionSource, PeerError,
    PeerIdentity, PutOutcome, Replicas,
};
use crate::ring::{NodeId, PartitionId};
use crate::storage::{Budget, TREE_SHAPE};
use crate::version::Clock;
use dynamo_api::security::Credentials;

pub use dynamo_api::contract::channel;

/// A peer's address, its client, and when the client was made.
type PeerClient = (String, InternodeClient<Channel>, Instant);

/// Least time between two fresh channels to the same peer.
const RECONNECT_AFTER: Duration = Duration::from_secs(2);

/// A cluster's identity: its name and its CA's fingerprint. Gossip carries it both ways, and a
/// view from another cluster is refused (pod-IP reuse or one wrong seed must not fuse two
/// clusters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterIdentity {
    pub name: String,
    /// SHA-256 of the CA certificate, hex; empty on a `--dev --insecure` node.
    pub ca_fingerprint: String,
}

impl ClusterIdentity {
    /// Refuses an identity other than this one, with what differs.
    pub fn check(&self, name: &str, ca_fingerprint: &str) -> Result<(), String> {
        if name != self.name {
            return Err(format!(
                "it belongs to cluster '{name}', this node to '{}': check the seeds and the \
                 cluster name",
                self.name
            ));
        }
        if ca_fingerprint != self.ca_fingerprint {
            let short = |f: &str| {
                if f.is_empty() {
                    "none (insecure)".to_string()
                } else {
                    f[..f.len().min(16)].to_string()
                }
            };
            return Err(format!(
                "it belongs to a cluster named '{name}' with another CA ({}, this node's {}): \
                 two clusters must not share seeds",
                short(ca_fingerprint),
                short(&self.ca_fingerprint)
            ));
        }
        Ok(())
    }
}

/// The most bytes of an encoded view gossip accepts.
pub const MAX_VIEW_BYTES: usize = 4 << 20;

/// See the module docs.
pub struct Peers {
    me: NodeId,
    /// What this node presents to the others (the cluster CA, its peer certificate).
    credentials: Credentials,
    /// This node's cluster, sent with every gossip.
    cluster: ClusterIdentity,
    /// Peer id -> (address, client, when the client was made). Behind a lock so membership
    /// changes can replace it.
    clients: RwLock<HashMap<NodeId, PeerClient>>,
    /// Per-call timeout for replicate and fetch; forwarded writes get twice this plus a second,
    /// so the remote coordinator's own quorum error arrives before our timeout fires.
    timeout: Duration,
    /// Which peers this node currently finds unreachable, fed by every call's outcome.
    detector: Mutex<FailureDetector>,
}

pub use dynamo_api::contract::FROM_KEY;

impl Peers {
    /// No peers yet: membership adds them with [`Peers::set_addresses`].
    pub fn new(
        me: NodeId,
        timeout: Duration,
        credentials: Credentials,
        cluster: ClusterIdentity,
    ) -> Peers {
        Peers {
            me,
            credentials,
            cluster,
            clients: RwLock::new(HashMap::new()),
            timeout,
            detector: Mutex::new(FailureDetector::new(PROBE_INTERVAL)),
        }
    }

    /// Feeds a call's outcome to the failure detector: no answer marks the peer down, any
    /// answer (even an error of its own) marks it up.
    fn observe<T>(&self, peer: &NodeId, result: &Result<T, PeerError>) {
        match result {
            Ok(_) | Err(PeerError::Remote { .. }) => self.heard_from(peer),
            Err(e) => {
                self.lost(peer, &e.to_string());
                if matches!(e, PeerError::Unreachable(_) | PeerError::Timeout) {
                    self.reconnect(peer);
                }
            }
        }
    }

    /// A fresh channel to a peer that did not answer: the old one may be stuck connecting to
    /// an address that is gone (a pod replaced under the same DNS name has a new IP) and would
    /// keep retrying it with growing backoff. At most once per [`RECONNECT_AFTER`].
    fn reconnect(&self, peer: &NodeId) {
        let Ok(mut clients) = self.clients.write() else { return };
        let Some((address, client, made)) = clients.get_mut(peer) else { return };
        if made.elapsed() < RECONNECT_AFTER {
            return;
        }
        if let Ok(fresh) = self.make_client(address) {
            (*client, *made) = (fresh, Instant::now());
        }
    }

    /// Adds peers and updates addresses that changed (a restarted pod has a new address).
    pub fn set_addresses(&self, members: &[(NodeId, String)]) {
        let Ok(mut clients) = self.clients.write() else { return };
        for (id, address) in members {
            if *id == self.me || clients.get(id).is_some_and(|(a, _, _)| a == address) {
                continue;
            }
            match self.make_client(address) {
                Ok(c) => {
                    clients.insert(id.clone(), (address.clone(), c, Instant::now()));
                }
                Err(e) => {
                    tracing::warn!(%id, %address, error = %e, "ignoring a peer with a bad address")
                }
            }
        }
    }

    fn make_client(&self, address: &str) -> Result<InternodeClient<Channel>, String> {
        let timeout = self.timeout * 2 + Duration::from_secs(1);
        Ok(InternodeClient::new(channel(address, timeout, &self.credentials)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    fn client(&self, to: &NodeId) -> Result<InternodeClient<Channel>, PeerError> {
        self.clients
            .read()
            .map_err(|_| PeerError::Unreachable("peer table lock poisoned".into()))?
            .get(to)
            .map(|(_, c, _)| c.clone())
            .ok_or_else(|| PeerError::Unreachable(format!("{to} is not a known member")))
    }

    /// The envelope of every call to a known peer: its client, the request with this node's
    /// id and the timeout, failures classified, and the outcome fed to the failure detector.
    async fn call<M, R, F, Fut>(
        &self,
        to: &NodeId,
        message: M,
        timeout: Duration,
        send: F,
    ) -> Result<R, PeerError>
    where
        F: FnOnce(InternodeClient<Channel>, Request<M>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let result = match self.client(to) {
            Ok(client) => send(client, self.request(message, timeout))
                .await
                .map(Response::into_inner)
                .map_err(peer_error),
            Err(e) => Err(e),
        };
        self.observe(to, &result);
        result
    }

    fn request<T>(&self, message: T, timeout: Duration) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(timeout);
        if let Ok(v) = self.me.0.parse() {
            request.metadata_mut().insert(FROM_KEY, v);
        }
        request
    }
}

/// Classifies a failed call: a node's own error, a timeout, or a transport failure.
pub fn peer_error(status: Status) -> PeerError {
    if is_node_error(&status) {
        return PeerError::Remote {
            code: status.code() as i32,
            message: status.message().to_string(),
        };
    }
    match status.code() {
        Code::DeadlineExceeded | Code::Cancelled => PeerError::Timeout,
        Code::Unavailable | Code::Unknown | Code::Internal
            if dynamo_api::contract::never_connected(&status) =>
        {
            PeerError::Unreachable(dynamo_api::contract::transport_cause(&status))
        }
        Code::Unavailable | Code::Unknown | Code::Internal => {
            PeerError::Interrupted(dynamo_api::contract::transport_cause(&status))
        }
        code => PeerError::Remote { code: code as i32, message: status.message().to_string() },
    }
}

impl Liveness for Peers {
    fn is_up(&self, node: &NodeId) -> bool {
        *node == self.me || self.detector.lock().map(|d| d.is_up(node)).unwrap_or(true)
    }

    fn heard_from(&self, node: &NodeId) {
        if let Ok(mut d) = self.detector.lock() {
            d.record_success(node);
        }
    }

    fn lost(&self, node: &NodeId, error: &str) {
        if let Ok(mut d) = self.detector.lock() {
            d.record_failure(node, error, Instant::now());
        }
    }

    fn down_for(&self, node: &NodeId) -> Option<Duration> {
        let now = Instant::now();
        self.detector.lock().ok().and_then(|d| d.down_for(node, now))
    }

    fn due_probes(&self) -> Vec<NodeId> {
        self.detector.lock().map(|mut d| d.due_probes(Instant::now())).unwrap_or_default()
    }

    fn ping<'a>(
        &'a self,
        to: &'a NodeId,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<PeerIdentity, PeerError>> {
        Box::pin(async move {
            let message = PingRequest { from: self.me.0.clone() };
            let reply =
                self.call(to, message, timeout, |mut c, r| async move { c.ping(r).await }).await?;
            Ok(PeerIdentity { node_id: reply.node_id, cluster: reply.cluster })
        })
    }
}

impl Replicas for Peers {
    async fn replicate(
        &self,
        to: &NodeId,
        key: &[u8],
        clock: &Clock,
        hint_for: Option<&NodeId>,
    ) -> Result<(), PeerError> {
        let message = ReplicateRequest {
            key: key.to_vec(),
            clock: clock.encode(),
            from: self.me.0.clone(),
            hint_for: hint_for.map(|h| h.0.clone()).unwrap_or_default(),
        };
        self.call(to, message, self.timeout, |mut c, r| async move { c.replicate(r).await })
            .await
            .map(|_| ())
    }

    async fn fetch(
        &self,
        to: &NodeId,
        key: &[u8],
        hint_for: Option<&NodeId>,
    ) -> Result<Clock, PeerError> {
        let message = FetchRequest {
            key: key.to_vec(),
            hint_for: hint_for.map(|h| h.0.clone()).unwrap_or_default(),
        };
        let reply = self
            .call(to, message, self.timeout, |mut c, r| async move { c.fetch(r).await })
            .await?;
        if reply.clock.is_empty() {
            return Ok(Clock::new());
        }
        decode_clock(&reply.clock)
    }

    async fn coordinate_put(
        &self,
        to: &NodeId,
        put: ForwardedPut,
    ) -> Result<PutOutcome, PeerError> {
        let message = CoordinatePutRequest {
            key: put.key,
            value: put.value,
            context: put.context,
            w: put.w,
            from: self.me.0.clone(),
            hops: put.hops,
        };
        // Twice the replica timeout plus a second, so the remote coordinator's own quorum
        // error arrives before our timeout fires.
        let timeout = self.timeout * 2 + Duration::from_secs(1);
        let reply = self
            .call(to, message, timeout, |mut c, r| async move { c.coordinate_put(r).await })
            .await?;
        Ok(PutOutcome { context: reply.context, acks: reply.acks as usize })
    }
}

impl Merkle for Peers {
    async fn merkle_hashes(
        &self,
        to: &NodeId,
        partition: PartitionId,
        level: u32,
        indices: Vec<u32>,
    ) -> Result<Vec<Hash>, PeerError> {
        let message = MerkleHashesRequest {
            partition,
            level,
            indices,
            fanout: TREE_SHAPE.fanout,
            depth: TREE_SHAPE.depth,
        };
        let reply = self
            .call(to, message, self.timeout, |mut c, r| async move { c.merkle_hashes(r).await })
            .await?;
        reply.hashes.into_iter().map(|h| to_hash(&h)).collect()
    }

    async fn merkle_items(
        &self,
        to: &NodeId,
        partition: PartitionId,
        leaves: Vec<u32>,
        after: Option<Vec<u8>>,
        budget: Budget,
    ) -> Result<ItemsPage, PeerError> {
        let message = MerkleItemsRequest {
            partition,
            leaves,
            fanout: TREE_SHAPE.fanout,
            depth: TREE_SHAPE.depth,
            after,
            max_bytes: budget.bytes as u64,
        };
        let reply = self
            .call(to, message, self.timeout, |mut c, r| async move { c.merkle_items(r).await })
            .await?;
        let items = reply
            .items
            .into_iter()
            .map(|i| Ok((i.key, to_hash(&i.digest)?)))
            .collect::<Result<_, PeerError>>()?;
        Ok(ItemsPage { items, more: reply.more })
    }
}

impl PartitionSource for Peers {
    async fn stream_partition(
        &self,
        from: &NodeId,
        partition: PartitionId,
        after: Option<Vec<u8>>,
        budget: Budget,
    ) -> Result<PartitionPage, PeerError> {
        let message = StreamPartitionRequest {
            partition,
            after,
            limit: budget.items.min(u32::MAX as usize) as u32,
            max_bytes: budget.bytes as u64,
        };
        let reply =
            self.call(from, message, self.timeout * 5, |mut c, r| async move {
                c.stream_partition(r).await
            })
            .await?;
        let mut entries = Vec::with_capacity(reply.entries.len());
        for e in reply.entries {
            let size = e.clock.len();
            entries.push((e.key, decode_clock(&e.clock)?, size));
        }
        Ok(PartitionPage { entries, done: reply.done })
    }
}

impl Gossip for Peers {
    fn set_addresses(&self, members: &[(NodeId, String)]) {
        Peers::set_addresses(self, members)
    }

    fn gossip<'a>(
        &'a self,
        to: Option<&'a NodeId>,
        address: &'a str,
        view: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<u8>, PeerError>> {
        Box::pin(async move {
            // A member's channel is reused; a seed's address is resolved on this connection.
            let known = to.and_then(|id| {
                self.clients
                    .read()
                    .ok()?
                    .get(id)
                    .filter(|(a, _, _)| a == address)
                    .map(|(_, c, _)| c.clone())
            });
            let mut client = match known {
                Some(c) => c,
                None => self.make_client(address).map_err(PeerError::Unreachable)?,
            };
            let request = GossipRequest {
                view,
                cluster: self.cluster.name.clone(),
                ca_fingerprint: self.cluster.ca_fingerprint.clone(),
            };
            let reply = client
                .gossip(self.request(request, timeout))
                .await
                .map_err(peer_error)?
                .into_inner();
            let refused = |message: String| PeerError::Remote {
                code: Code::FailedPrecondition as i32,
                message,
            };
            self.cluster
                .check(&reply.cluster, &reply.ca_fingerprint)
                .map_err(|e| refused(format!("the node at {address} answered gossip, but {e}")))?;
            if reply.view.len() > MAX_VIEW_BYTES {
                return Err(refused(format!(
                    "the node at {address} sent a {}-byte view, over the {MAX_VIEW_BYTES}-byte \
                     limit",
                    reply.view.len()
                )));
            }
            Ok(reply.view)
        })
    }
}

fn decode_clock(bytes: &[u8]) -> Result<Clock, PeerError> {
    Clock::decode(bytes).map_err(|e| PeerError::Remote {
        code: Code::DataLoss as i32,
        message: format!("sent an undecodable version: {e}"),
    })
}

fn to_hash(bytes: &[u8]) -> Result<Hash, PeerError> {
    bytes.try_into().map_err(|_| PeerError::Remote {
        code: Code::DataLoss as i32,
        message: format!("sent a {}-byte hash where 32 bytes were expected", bytes.len()),
    })
}
