//! Connections to the other nodes: one lazily connected HTTP/2 channel per peer, reused by
//! every request, and the coordinator's [`Transport`] on top of them.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, RwLock};
use std::time::Duration;
use std::time::Instant;

use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use super::pb::internode::{
    internode_client::InternodeClient, CoordinatePutRequest, FetchRequest, GossipRequest,
    MerkleHashesRequest, MerkleItemsRequest, PingRequest, PingResponse, ReplicateRequest,
    StreamPartitionRequest,
};
use super::status::is_node_error;
use super::MAX_MESSAGE_BYTES;
use crate::coordinator::{ForwardedPut, PeerError, PutOutcome, Transport};
use crate::membership::detector::FailureDetector;
use crate::membership::view::View;
use crate::merkle::Hash;
use crate::ring::{NodeId, PartitionId};
use crate::storage::TREE_SHAPE;
use crate::version::Clock;

pub use dynamo_api::contract::channel;

/// See the module docs.
pub struct Peers {
    me: NodeId,
    /// Peer id -> (address, client). Behind a lock so membership changes can replace it.
    clients: RwLock<HashMap<NodeId, (String, InternodeClient<Channel>)>>,
    /// Per-call timeout for replicate and fetch; forwarded writes get twice this plus a second,
    /// so the remote coordinator's own quorum error arrives before our timeout fires.
    timeout: Duration,
    /// Peers cut off by the test-only fault switch, in both directions.
    blocked: RwLock<HashSet<NodeId>>,
    /// Which peers this node currently finds unreachable, fed by every call's outcome.
    detector: Mutex<FailureDetector>,
}

/// One page of a partition stream: (key, clock, encoded size) entries.
#[derive(Debug, Clone)]
pub struct PartitionPage {
    pub entries: Vec<(Vec<u8>, Clock, usize)>,
    pub done: bool,
}

/// How long after a failure a down peer is probed again.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

pub use dynamo_api::contract::FROM_KEY;

impl Peers {
    /// No peers yet: membership adds them with [`Peers::set_addresses`].
    pub fn new(me: NodeId, timeout: Duration) -> Peers {
        Peers {
            me,
            clients: RwLock::new(HashMap::new()),
            timeout,
            blocked: RwLock::new(HashSet::new()),
            detector: Mutex::new(FailureDetector::new(PROBE_INTERVAL)),
        }
    }

    /// Feeds a call's outcome to the failure detector: no answer marks the peer down, any
    /// answer (even an error of its own) marks it up.
    fn observe<T>(&self, peer: &NodeId, result: &Result<T, PeerError>) {
        let Ok(mut d) = self.detector.lock() else { return };
        match result {
            Ok(_) | Err(PeerError::Remote { .. }) => d.record_success(peer),
            Err(e) => d.record_failure(peer, &e.to_string(), Instant::now()),
        }
    }

    /// Down peers due for a probe (see `membership::detector`).
    pub fn due_probes(&self) -> Vec<NodeId> {
        self.detector.lock().map(|mut d| d.due_probes(Instant::now())).unwrap_or_default()
    }

    /// Adds peers and updates addresses that changed (a restarted pod has a new address).
    pub fn set_addresses(&self, members: &[(NodeId, String)]) {
        let Ok(mut clients) = self.clients.write() else { return };
        for (id, address) in members {
            if *id == self.me || clients.get(id).is_some_and(|(a, _)| a == address) {
                continue;
            }
            match self.new_client(address) {
                Ok(c) => {
                    clients.insert(id.clone(), (address.clone(), c));
                }
                Err(e) => {
                    tracing::warn!(%id, %address, error = %e, "ignoring a peer with a bad address")
                }
            }
        }
    }

    fn new_client(&self, address: &str) -> Result<InternodeClient<Channel>, String> {
        Ok(InternodeClient::new(channel(address, self.timeout * 2 + Duration::from_secs(1))?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// Push-pull gossip with the node at `address` (a member or a seed; names are resolved
    /// on every connection).
    pub async fn gossip(
        &self,
        address: &str,
        view: &View,
        timeout: Duration,
    ) -> Result<View, PeerError> {
        let bytes = serde_json::to_vec(view)
            .map_err(|e| PeerError::Remote { code: 13, message: e.to_string() })?;
        let known = self.clients.read().ok().and_then(|c| {
            c.iter()
                .find(|(_, (a, _))| a == address)
                .map(|(id, (_, client))| (id.clone(), client.clone()))
        });
        if let Some((id, _)) = &known {
            if self.is_blocked(&id.0) {
                return Err(PeerError::Unreachable("partitioned (fault injection)".into()));
            }
        }
        let mut client = match known {
            Some((_, c)) => c,
            None => self.new_client(address).map_err(PeerError::Unreachable)?,
        };
        let reply = client
            .gossip(self.request(GossipRequest { view: bytes }, timeout))
            .await
            .map_err(peer_error)?
            .into_inner();
        let theirs: View = serde_json::from_slice(&reply.view).map_err(|e| PeerError::Remote {
            code: 13,
            message: format!("sent an undecodable view: {e}"),
        })?;
        // Any answer proves the peer is up.
        if let Some(id) = theirs.nodes.values().find(|n| n.address == address).map(|n| n.id.clone())
        {
            if let Ok(mut d) = self.detector.lock() {
                d.record_success(&id);
            }
        }
        Ok(theirs)
    }

    /// One page of a partition from `to`.
    pub async fn stream_partition(
        &self,
        to: &NodeId,
        partition: PartitionId,
        after: Option<Vec<u8>>,
        limit: u32,
    ) -> Result<PartitionPage, PeerError> {
        let request =
            self.request(StreamPartitionRequest { partition, after, limit }, self.timeout * 5);
        let result = match self.client(to) {
            Ok(mut c) => {
                c.stream_partition(request).await.map(|r| r.into_inner()).map_err(peer_error)
            }
            Err(e) => Err(e),
        };
        self.observe(to, &result);
        let reply = result?;
        let mut entries = Vec::with_capacity(reply.entries.len());
        for e in reply.entries {
            let size = e.clock.len();
            let clock = Clock::decode(&e.clock).map_err(|err| PeerError::Remote {
                code: Code::DataLoss as i32,
                message: format!("sent an undecodable version: {err}"),
            })?;
            entries.push((e.key, clock, size));
        }
        Ok(PartitionPage { entries, done: reply.done })
    }

    /// Replaces the set of peers cut off by the fault switch.
    pub fn set_blocked(&self, peers: HashSet<NodeId>) {
        if let Ok(mut b) = self.blocked.write() {
            *b = peers;
        }
    }

    /// Whether the fault switch cuts this node off from `peer`.
    pub fn is_blocked(&self, peer: &str) -> bool {
        self.blocked.read().map(|b| b.iter().any(|p| p.0 == peer)).unwrap_or(false)
    }

    fn client(&self, to: &NodeId) -> Result<InternodeClient<Channel>, PeerError> {
        if self.is_blocked(&to.0) {
            return Err(PeerError::Unreachable("partitioned (fault injection)".into()));
        }
        self.clients
            .read()
            .map_err(|_| PeerError::Unreachable("peer table lock poisoned".into()))?
            .get(to)
            .map(|(_, c)| c.clone())
            .ok_or_else(|| PeerError::Unreachable(format!("{to} is not a known member")))
    }

    /// The address of a peer, if known.
    pub fn address(&self, id: &NodeId) -> Option<String> {
        self.clients.read().ok()?.get(id).map(|(a, _)| a.clone())
    }

    /// Asks a peer who it is, with a short timeout.
    pub async fn ping(&self, to: &NodeId, timeout: Duration) -> Result<PingResponse, PeerError> {
        let request = self.request(PingRequest { from: self.me.0.clone() }, timeout);
        let result = match self.client(to) {
            Ok(mut client) => {
                client.ping(request).await.map(|r| r.into_inner()).map_err(peer_error)
            }
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
        Code::Unavailable | Code::Unknown | Code::Internal => {
            PeerError::Unreachable(dynamo_api::contract::transport_cause(&status))
        }
        code => PeerError::Remote { code: code as i32, message: status.message().to_string() },
    }
}

impl Transport for Peers {
    fn is_up(&self, node: &NodeId) -> bool {
        *node == self.me || self.detector.lock().map(|d| d.is_up(node)).unwrap_or(true)
    }

    fn replicate(
        &self,
        to: &NodeId,
        key: &[u8],
        clock: &Clock,
        hint_for: Option<&NodeId>,
    ) -> impl std::future::Future<Output = Result<(), PeerError>> + Send {
        let request = self.request(
            ReplicateRequest {
                key: key.to_vec(),
                clock: clock.encode(),
                from: self.me.0.clone(),
                hint_for: hint_for.map(|h| h.0.clone()).unwrap_or_default(),
            },
            self.timeout,
        );
        let client = self.client(to);
        async move {
            let result = match client {
                Ok(mut c) => c.replicate(request).await.map(|_| ()).map_err(peer_error),
                Err(e) => Err(e),
            };
            self.observe(to, &result);
            result
        }
    }

    fn fetch(
        &self,
        to: &NodeId,
        key: &[u8],
        hint_for: Option<&NodeId>,
    ) -> impl std::future::Future<Output = Result<Clock, PeerError>> + Send {
        let request = self.request(
            FetchRequest {
                key: key.to_vec(),
                hint_for: hint_for.map(|h| h.0.clone()).unwrap_or_default(),
            },
            self.timeout,
        );
        let client = self.client(to);
        async move {
            let result = match client {
                Ok(mut c) => c.fetch(request).await.map(|r| r.into_inner()).map_err(peer_error),
                Err(e) => Err(e),
            };
            self.observe(to, &result);
            let reply = result?;
            if reply.clock.is_empty() {
                return Ok(Clock::new());
            }
            Clock::decode(&reply.clock).map_err(|e| PeerError::Remote {
                code: Code::DataLoss as i32,
                message: format!("sent an undecodable version: {e}"),
            })
        }
    }

    fn merkle_hashes(
        &self,
        to: &NodeId,
        partition: PartitionId,
        level: u32,
        indices: Vec<u32>,
    ) -> impl std::future::Future<Output = Result<Vec<Hash>, PeerError>> + Send {
        let request = self.request(
            MerkleHashesRequest {
                partition,
                level,
                indices,
                fanout: TREE_SHAPE.fanout,
                depth: TREE_SHAPE.depth,
            },
            self.timeout,
        );
        let client = self.client(to);
        async move {
            let result = match client {
                Ok(mut c) => {
                    c.merkle_hashes(request).await.map(|r| r.into_inner()).map_err(peer_error)
                }
                Err(e) => Err(e),
            };
            self.observe(to, &result);
            result?.hashes.into_iter().map(|h| to_hash(&h)).collect()
        }
    }

    fn merkle_items(
        &self,
        to: &NodeId,
        partition: PartitionId,
        leaves: Vec<u32>,
    ) -> impl std::future::Future<Output = Result<Vec<(Vec<u8>, Hash)>, PeerError>> + Send {
        let request = self.request(
            MerkleItemsRequest {
                partition,
                leaves,
                fanout: TREE_SHAPE.fanout,
                depth: TREE_SHAPE.depth,
            },
            self.timeout,
        );
        let client = self.client(to);
        async move {
            let result = match client {
                Ok(mut c) => {
                    c.merkle_items(request).await.map(|r| r.into_inner()).map_err(peer_error)
                }
                Err(e) => Err(e),
            };
            self.observe(to, &result);
            result?.items.into_iter().map(|i| Ok((i.key, to_hash(&i.digest)?))).collect()
        }
    }

    fn coordinate_put(
        &self,
        to: &NodeId,
        put: ForwardedPut,
    ) -> impl std::future::Future<Output = Result<PutOutcome, PeerError>> + Send {
        let request = self.request(
            CoordinatePutRequest {
                key: put.key,
                value: put.value,
                context: put.context,
                w: put.w,
                from: self.me.0.clone(),
                hops: put.hops,
            },
            self.timeout * 2 + Duration::from_secs(1),
        );
        let client = self.client(to);
        async move {
            let result = match client {
                Ok(mut c) => {
                    c.coordinate_put(request).await.map(|r| r.into_inner()).map_err(peer_error)
                }
                Err(e) => Err(e),
            };
            self.observe(to, &result);
            let reply = result?;
            Ok(PutOutcome { context: reply.context, acks: reply.acks as usize })
        }
    }
}

fn to_hash(bytes: &[u8]) -> Result<Hash, PeerError> {
    bytes.try_into().map_err(|_| PeerError::Remote {
        code: Code::DataLoss as i32,
        message: format!("sent a {}-byte hash where 32 bytes were expected", bytes.len()),
    })
}
