//! The gRPC services this node serves. They translate between protobuf messages and the
//! node's components; all decisions live in those components, all error mapping in `status`.
//! Every handler goes through one envelope ([`handle`]).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::faults::FaultSwitch;
use super::pb::admin::{self, admin_server::Admin};
use super::pb::client::{self, client_server::Client};
use super::pb::internode::{self, internode_server::Internode};
use super::peers::{ClusterIdentity, MAX_VIEW_BYTES};
use crate::antientropy::AntiEntropy;
use crate::config::Quorum;
use crate::coordinator::Coordinator;
use crate::error::Error;
use crate::handoff::transfer::{Progress, TransferState};
use crate::membership::claimant::gains;
use crate::membership::gossip::Membership;
use crate::membership::view::View;
use crate::metrics::METRICS;
use crate::net::{Net, PeerError};
use crate::ring::NodeId;
use crate::storage::{blocking, Budget, Store, SCAN_BYTES, TREE_SHAPE};
use crate::version::Clock;
use crate::worker::Statuses;
use dynamo_api::security::Credentials;

/// Most entries one partition page may ask for.
const MAX_PAGE_ITEMS: u32 = 4096;

/// Most bytes one partition page may ask for: well under the message limit, which must also
/// hold one object of up to `limits.max_object_bytes` (a page always carries at least one).
pub const MAX_PAGE_BYTES: usize = 16 << 20;

/// The byte budget of a page a caller asked for: its `max_bytes` (0: the default), at most
/// [`MAX_PAGE_BYTES`].
fn page_bytes(max_bytes: u64) -> usize {
    match max_bytes {
        0 => SCAN_BYTES,
        b => b.min(MAX_PAGE_BYTES as u64) as usize,
    }
}

/// How long `Status` waits for each peer's ping.
const STATUS_PING_TIMEOUT: Duration = Duration::from_millis(800);

/// What the three services need, handed out by the node context.
pub struct Shared<N> {
    pub me: NodeId,
    pub store: Arc<Store>,
    pub net: Arc<N>,
    pub coordinator: Arc<Coordinator<N>>,
    pub membership: Arc<Membership>,
    pub antientropy: Arc<AntiEntropy<N>>,
    /// This node's cluster (name and CA fingerprint).
    pub cluster: ClusterIdentity,
    /// What this node presents when it calls another node itself (a forwarded decommission).
    pub credentials: Credentials,
    pub quorum: Quorum,
    /// Q, fixed for the cluster.
    pub partitions: u32,
    /// The test-only fault switch; `None` unless the node runs with `fault_injection = true`,
    /// and then SetFaults is refused.
    pub faults: Option<Arc<FaultSwitch>>,
    /// Partitions moving to this node in the current layout change.
    pub progress: Arc<Mutex<Progress>>,
    /// The background workers' states, reported by `Status`.
    pub workers: Statuses,
    /// The RocksDB data directory (None on the memory engine): checkpoints and restores.
    pub data_dir: Option<std::path::PathBuf>,
}

/// The envelope every handler shares: takes the message out of the request, runs the handler
/// on it, and wraps its answer; errors become statuses in `status`.
async fn handle<M, R, Fut>(req: Request<M>, f: impl FnOnce(M) -> Fut) -> Result<Response<R>, Status>
where
    Fut: Future<Output = Result<R, Error>>,
{
    f(req.into_inner()).await.map(Response::new).map_err(Status::from)
}

/// Runs a request handler, counting it with its outcome (`ok` or the error kind) and latency
/// in `dynamo_requests_total` and `dynamo_request_duration_seconds`.
async fn measured<R>(
    role: &'static str,
    op: &'static str,
    handler: impl Future<Output = Result<R, Error>>,
) -> Result<R, Error> {
    let started = std::time::Instant::now();
    let result = handler.await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => super::status::kind(e),
    };
    METRICS.request(role, op, outcome, started.elapsed());
    result
}

/// Where clients reach a node: its client address, or (in a view written before the ports were
/// separate) its one address.
fn client_address(node: &crate::membership::view::NodeState) -> String {
    if node.client_address.is_empty() {
        node.address.clone()
    } else {
        node.client_address.clone()
    }
}

/// The node named by a request's `hint_for` field (empty means none).
fn hint_target(hint_for: &str) -> Option<NodeId> {
    (!hint_for.is_empty()).then(|| NodeId(hint_for.to_string()))
}

/// Both sides of an anti-entropy exchange must use the same tree shape.
fn check_shape(fanout: u32, depth: u32) -> Result<(), Error> {
    if fanout != TREE_SHAPE.fanout || depth != TREE_SHAPE.depth {
        return Err(Error::InvalidArgument(format!(
            "Merkle tree shape {fanout}x{depth} differs from this node's {}x{}: run the same \
             version on every node",
            TREE_SHAPE.fanout, TREE_SHAPE.depth
        )));
    }
    Ok(())
}

macro_rules! service {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub struct $name<N>(pub Arc<Shared<N>>);

        impl<N> Clone for $name<N> {
            fn clone(&self) -> Self {
                $name(self.0.clone())
            }
        }
    };
}

service!(
    /// The client API.
    ClientService
);
service!(
    /// The internode API.
    InternodeService
);
service!(
    /// The admin API.
    AdminService
);

impl<N: Net> ClientService<N> {
    /// A client API response carrying this node's layout epoch, so a partition-aware client
    /// learns when its ring is stale.
    fn with_epoch<T>(&self, response: Result<Response<T>, Status>) -> Result<Response<T>, Status> {
        let mut response = response?;
        let epoch = self.0.coordinator.placement().epoch;
        response.metadata_mut().insert(dynamo_api::contract::EPOCH_KEY, epoch.into());
        Ok(response)
    }
}

#[tonic::async_trait]
impl<N: Net> Client for ClientService<N> {
    async fn get(
        &self,
        req: Request<client::GetRequest>,
    ) -> Result<Response<client::GetResponse>, Status> {
        self.with_epoch(
            handle(req, |req| {
                measured("coordinator", "get", async move {
                    let out = self.0.coordinator.get(&req.key, req.r).await?;
                    Ok(client::GetResponse {
                        values: out.values,
                        context: out.context,
                        replies: out.replies as u32,
                    })
                })
            })
            .await,
        )
    }

    async fn put(
        &self,
        req: Request<client::PutRequest>,
    ) -> Result<Response<client::PutResponse>, Status> {
        self.with_epoch(
            handle(req, |req| {
                measured("coordinator", "put", async move {
                    let out = self
                        .0
                        .coordinator
                        .put(&req.key, Some(req.value), &req.context, req.w, 0)
                        .await?;
                    Ok(client::PutResponse { context: out.context, acks: out.acks as u32 })
                })
            })
            .await,
        )
    }

    async fn delete(
        &self,
        req: Request<client::DeleteRequest>,
    ) -> Result<Response<client::PutResponse>, Status> {
        self.with_epoch(
            handle(req, |req| {
                measured("coordinator", "delete", async move {
                    let out =
                        self.0.coordinator.put(&req.key, None, &req.context, req.w, 0).await?;
                    Ok(client::PutResponse { context: out.context, acks: out.acks as u32 })
                })
            })
            .await,
        )
    }

    async fn ring(
        &self,
        req: Request<client::RingRequest>,
    ) -> Result<Response<client::RingResponse>, Status> {
        handle(req, |_| async move {
            let shared = &self.0;
            let placement = shared.coordinator.placement();
            let ring = placement.ring()?;
            let view = shared.membership.view();
            let members: Vec<client::RingMember> = ring
                .members()
                .iter()
                .map(|m| client::RingMember {
                    address: view.nodes.get(&m.id).map(client_address).unwrap_or_default(),
                    peer_address: view
                        .nodes
                        .get(&m.id)
                        .map(|n| n.address.clone())
                        .unwrap_or_default(),
                    id: m.id.0.clone(),
                    zone: m.zone.clone(),
                    weight: m.weight,
                })
                .collect();
            let owners = ring.owner_indices();
            Ok(client::RingResponse {
                partitions: ring.partitions(),
                n: shared.quorum.n as u32,
                members,
                owners,
                epoch: placement.epoch,
            })
        })
        .await
    }
}

#[tonic::async_trait]
impl<N: Net> Internode for InternodeService<N> {
    async fn replicate(
        &self,
        req: Request<internode::ReplicateRequest>,
    ) -> Result<Response<internode::ReplicateResponse>, Status> {
        handle(req, |req| {
            measured("replica", "replicate", async move {
                let clock = Clock::decode(&req.clock)?;
                let hint_for = hint_target(&req.hint_for);
                self.0.coordinator.apply_replica(&req.key, &clock, hint_for.as_ref())?;
                Ok(internode::ReplicateResponse {})
            })
        })
        .await
    }

    async fn fetch(
        &self,
        req: Request<internode::FetchRequest>,
    ) -> Result<Response<internode::FetchResponse>, Status> {
        handle(req, |req| {
            measured("replica", "fetch", async move {
                let hint_for = hint_target(&req.hint_for);
                let clock = self.0.coordinator.local_replica(&req.key, hint_for.as_ref())?;
                let clock = if clock.is_empty() { Vec::new() } else { clock.encode() };
                Ok(internode::FetchResponse { clock })
            })
        })
        .await
    }

    async fn coordinate_put(
        &self,
        req: Request<internode::CoordinatePutRequest>,
    ) -> Result<Response<internode::CoordinatePutResponse>, Status> {
        handle(req, |req| async move {
            let op = if req.value.is_some() { "put" } else { "delete" };
            METRICS.forwarded(op, "received");
            let hops = req.hops.max(1);
            let out =
                self.0.coordinator.put(&req.key, req.value, &req.context, req.w, hops).await?;
            Ok(internode::CoordinatePutResponse { context: out.context, acks: out.acks as u32 })
        })
        .await
    }

    async fn merkle_hashes(
        &self,
        req: Request<internode::MerkleHashesRequest>,
    ) -> Result<Response<internode::MerkleHashesResponse>, Status> {
        handle(req, |req| async move {
            check_shape(req.fanout, req.depth)?;
            let len = TREE_SHAPE.level_len(req.level.min(TREE_SHAPE.depth));
            if req.level > TREE_SHAPE.depth
                || req.indices.len() > len as usize
                || req.indices.iter().any(|&i| i >= len)
            {
                return Err(Error::InvalidArgument(format!(
                    "MerkleHashes asks for {} nodes of level {}; the tree has {} levels below \
                     the root and {len} nodes at that level",
                    req.indices.len(),
                    req.level,
                    TREE_SHAPE.depth
                )));
            }
            let hashes = self
                .0
                .store
                .with_tree(req.partition, |t| t.level_hashes(req.level, &req.indices))?;
            Ok(internode::MerkleHashesResponse {
                hashes: hashes.into_iter().map(|h| h.to_vec()).collect(),
            })
        })
        .await
    }

    async fn merkle_items(
        &self,
        req: Request<internode::MerkleItemsRequest>,
    ) -> Result<Response<internode::MerkleItemsResponse>, Status> {
        handle(req, |req| async move {
            check_shape(req.fanout, req.depth)?;
            let leaves = TREE_SHAPE.level_len(TREE_SHAPE.depth);
            if req.leaves.len() > leaves as usize || req.leaves.iter().any(|&l| l >= leaves) {
                return Err(Error::InvalidArgument(format!(
                    "MerkleItems asks for {} leaves; a tree has {leaves}, numbered from 0",
                    req.leaves.len()
                )));
            }
            let budget = Budget { items: usize::MAX, bytes: page_bytes(req.max_bytes) };
            let (items, done) = blocking(|| {
                self.0.store.items_in_leaves(
                    req.partition,
                    &req.leaves,
                    req.after.as_deref(),
                    None,
                    budget,
                )
            })?;
            Ok(internode::MerkleItemsResponse {
                items: items
                    .into_iter()
                    .map(|(key, d)| internode::MerkleItem { key, digest: d.to_vec() })
                    .collect(),
                more: !done,
            })
        })
        .await
    }

    async fn gossip(
        &self,
        req: Request<internode::GossipRequest>,
    ) -> Result<Response<internode::GossipResponse>, Status> {
        handle(req, |req| async move {
            let cluster = &self.0.cluster;
            if let Err(e) = cluster.check(&req.cluster, &req.ca_fingerprint) {
                tracing::warn!(error = %e, "refused gossip from another cluster");
                return Err(Error::PermissionDenied(format!("gossip refused: {e}")));
            }
            if req.view.len() > MAX_VIEW_BYTES {
                return Err(Error::InvalidArgument(format!(
                    "a {}-byte membership view is over the {MAX_VIEW_BYTES}-byte limit",
                    req.view.len()
                )));
            }
            let theirs: View = serde_json::from_slice(&req.view)
                .map_err(|e| Error::InvalidArgument(format!("undecodable membership view: {e}")))?;
            let ours = self.0.membership.receive(&theirs)?;
            let view = serde_json::to_vec(&ours).map_err(|e| Error::Internal(e.to_string()))?;
            Ok(internode::GossipResponse {
                view,
                cluster: cluster.name.clone(),
                ca_fingerprint: cluster.ca_fingerprint.clone(),
            })
        })
        .await
    }

    async fn stream_partition(
        &self,
        req: Request<internode::StreamPartitionRequest>,
    ) -> Result<Response<internode::StreamPartitionResponse>, Status> {
        handle(req, |req| async move {
            let budget = Budget {
                items: req.limit.clamp(1, MAX_PAGE_ITEMS) as usize,
                bytes: page_bytes(req.max_bytes),
            };
            let (page, done) = blocking(|| {
                self.0.store.partition_page(req.partition, req.after.as_deref(), budget)
            })?;
            Ok(internode::StreamPartitionResponse {
                entries: page
                    .into_iter()
                    .map(|(key, clock)| internode::PartitionEntry { key, clock })
                    .collect(),
                done,
            })
        })
        .await
    }

    async fn ping(
        &self,
        req: Request<internode::PingRequest>,
    ) -> Result<Response<internode::PingResponse>, Status> {
        handle(req, |_| async move {
            Ok(internode::PingResponse {
                node_id: self.0.me.0.clone(),
                cluster: self.0.cluster.name.clone(),
            })
        })
        .await
    }
}

#[tonic::async_trait]
impl<N: Net> Admin for AdminService<N> {
    async fn status(
        &self,
        req: Request<admin::StatusRequest>,
    ) -> Result<Response<admin::StatusResponse>, Status> {
        handle(req, |_| self.status_now()).await
    }

    async fn decommission(
        &self,
        req: Request<admin::DecommissionRequest>,
    ) -> Result<Response<admin::DecommissionResponse>, Status> {
        let shared = &self.0;
        let admin::DecommissionRequest { node_id: target, force } = req.into_inner();
        let me = &shared.me;
        if target.is_empty() || target == me.0 {
            let state = shared.membership.decommission()?;
            tracing::info!(node = %me, "decommission requested");
            return Ok(Response::new(admin::DecommissionResponse {
                node_id: me.0.clone(),
                state: member_state(state) as i32,
            }));
        }
        // Another node: ask it, since only a node changes its own membership entry.
        let view = shared.membership.view();
        let Some(node) = view.nodes.get(&NodeId(target.clone())) else {
            return Err(Error::InvalidArgument(format!(
                "there is no node '{target}' in this cluster: `dynamoctl status` lists the nodes"
            ))
            .into());
        };
        let channel =
            super::peers::channel(&node.address, STATUS_PING_TIMEOUT * 5, &shared.credentials)
                .map_err(|e| Status::from(Error::Internal(e)))?;
        let forwarded = admin::admin_client::AdminClient::new(channel)
            .decommission(admin::DecommissionRequest { node_id: target.clone(), force: false })
            .await;
        match forwarded {
            Ok(reply) => Ok(reply),
            // It does not answer: remove it on its behalf.
            Err(e)
                if force
                    && matches!(
                        e.code(),
                        tonic::Code::Unavailable
                            | tonic::Code::DeadlineExceeded
                            | tonic::Code::Cancelled
                    ) =>
            {
                let state = shared.membership.force_remove(&NodeId(target.clone()))?;
                Ok(Response::new(admin::DecommissionResponse {
                    node_id: target,
                    state: member_state(state) as i32,
                }))
            }
            Err(e) => Err(Status::from(Error::Unavailable {
                op: crate::error::Op::Put,
                errors: vec![format!(
                    "{target} at {}: {}; if it is gone for good, remove it with \
                     `dynamoctl decommission {target} --force`",
                    node.address,
                    e.message()
                )],
            })),
        }
    }

    async fn repair(
        &self,
        req: Request<admin::RepairRequest>,
    ) -> Result<Response<admin::RepairResponse>, Status> {
        handle(req, |req| async move {
            let q = self.0.partitions;
            if let Some(p) = req.partition.filter(|p| *p >= q) {
                return Err(Error::InvalidArgument(format!(
                    "partition {p} does not exist: this cluster has partitions 0..{q}"
                )));
            }
            let stats = self.0.antientropy.repair(req.partition).await;
            Ok(admin::RepairResponse {
                partitions: stats.partitions,
                exchanges: stats.exchanges,
                keys_compared: stats.keys_compared,
                keys_pulled: stats.keys_pulled,
                keys_pushed: stats.keys_pushed,
                errors: stats.errors,
            })
        })
        .await
    }

    async fn backup(
        &self,
        req: Request<admin::BackupRequest>,
    ) -> Result<Response<admin::BackupResponse>, Status> {
        handle(req, |req| super::backup::backup(&self.0, req)).await
    }

    async fn restore(
        &self,
        req: Request<admin::RestoreRequest>,
    ) -> Result<Response<admin::RestoreResponse>, Status> {
        handle(req, |req| super::backup::restore(&self.0, req)).await
    }

    async fn list_backups(
        &self,
        req: Request<admin::ListBackupsRequest>,
    ) -> Result<Response<admin::ListBackupsResponse>, Status> {
        handle(req, super::backup::list).await
    }

    async fn delete_backup(
        &self,
        req: Request<admin::DeleteBackupRequest>,
    ) -> Result<Response<admin::DeleteBackupResponse>, Status> {
        handle(req, super::backup::delete).await
    }

    async fn set_faults(
        &self,
        req: Request<admin::SetFaultsRequest>,
    ) -> Result<Response<admin::SetFaultsResponse>, Status> {
        handle(req, |req| async move {
            let Some(switch) = &self.0.faults else {
                return Err(Error::InvalidArgument(
                    "fault injection is disabled on this node; it is for tests: start the node \
                     with --fault-injection true"
                        .into(),
                ));
            };
            switch.set_blocked(req.blocked_peers.into_iter().map(NodeId).collect());
            Ok(admin::SetFaultsResponse {})
        })
        .await
    }
}

impl<N: Net> AdminService<N> {
    /// This node's view of the cluster, with every node pinged.
    async fn status_now(&self) -> Result<admin::StatusResponse, Error> {
        let shared = &self.0;
        let placement = shared.coordinator.placement();
        let view = shared.membership.view();
        let me = shared.me.clone();
        let n = shared.quorum.n;
        let probes = view.nodes.values().map(|node| {
            let (net, me, cluster) = (shared.net.clone(), me.clone(), shared.cluster.name.clone());
            let node = node.clone();
            async move {
                if node.id == me {
                    return (node, Ok(()));
                }
                // Bounded here whatever the transport does (a peer whose address has no route
                // can hold a connection attempt far longer than the call's own deadline).
                let ping = tokio::time::timeout(
                    STATUS_PING_TIMEOUT,
                    net.ping(&node.id, STATUS_PING_TIMEOUT),
                );
                let answer = ping.await.unwrap_or_else(|_| {
                    net.lost(&node.id, "no answer to a status ping in time");
                    Err(PeerError::Timeout)
                });
                let result = match answer {
                    Ok(p) if p.node_id != node.id.0 => Err(format!(
                        "the node at {} is '{}', not '{}'",
                        node.address, p.node_id, node.id
                    )),
                    Ok(p) if p.cluster != cluster => Err(format!(
                        "the node at {} belongs to cluster '{}', not '{cluster}'",
                        node.address, p.cluster
                    )),
                    Ok(_) => Ok(()),
                    Err(e) => Err(e.to_string()),
                };
                (node, result)
            }
        });
        let count = |f: &dyn Fn(&crate::ring::Ring) -> usize| {
            placement.current.as_ref().map_or(0, |r| f(r) as u32)
        };
        let nodes = futures::future::join_all(probes)
            .await
            .into_iter()
            .map(|(node, result)| admin::NodeStatus {
                down_for_ms: match &result {
                    Ok(()) => 0,
                    // Failed just now: at least that long, and as long as it has been down.
                    Err(_) => {
                        shared.net.down_for(&node.id).map_or(1, |d| d.as_millis().max(1) as u64)
                    }
                },
                reachable: result.is_ok(),
                error: result.err().unwrap_or_default(),
                is_self: node.id == me,
                primary_partitions: count(&|r| r.primary_partitions(&node.id).len()),
                replica_partitions: count(&|r| r.replica_partitions(&node.id, n).len()),
                membership: member_state(node.status) as i32,
                address: client_address(&node),
                metrics_address: node.metrics_address,
                peer_address: node.address,
                id: node.id.0,
                zone: node.zone,
                weight: node.weight,
            })
            .collect();
        let pending_partitions = match (&placement.current, &placement.next) {
            (Some(c), Some(x)) => gains(c, x, n).values().map(Vec::len).sum::<usize>() as u32,
            _ => 0,
        };
        let transfers = shared
            .progress
            .lock()
            .map(|p| {
                p.partitions
                    .iter()
                    .filter(|_| p.epoch == placement.epoch)
                    .map(|(partition, t)| admin::Transfer {
                        partition: *partition,
                        from: t.from.clone(),
                        to: t.to.clone(),
                        keys_sent: t.keys,
                        bytes_sent: t.bytes,
                        state: transfer_state(t.state) as i32,
                        bytes_per_second: t.bytes_per_second(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(admin::StatusResponse {
            node_id: me.0,
            cluster: shared.cluster.name.clone(),
            n: shared.quorum.n as u32,
            r: shared.quorum.r as u32,
            w: shared.quorum.w as u32,
            partitions: shared.partitions,
            nodes,
            local_keys: shared.store.keys(),
            tombstones: shared.store.tombstone_stats().held,
            tombstones_reaped: shared.store.tombstone_stats().reaped,
            transfers,
            pending_partitions,
            hints: shared
                .store
                .hint_stats()
                .into_iter()
                .map(|(target, s)| admin::HintSummary {
                    target: target.0,
                    count: s.count,
                    bytes: s.bytes,
                })
                .collect(),
            workers: shared
                .workers
                .snapshot()
                .into_iter()
                .map(|(name, w)| admin::WorkerStatus {
                    name: name.to_string(),
                    state: worker_state(&w) as i32,
                    steps: w.steps,
                })
                .collect(),
        })
    }
}

/// A worker's status as the admin API reports it.
fn worker_state(status: &crate::worker::WorkerStatus) -> admin::WorkerState {
    use crate::worker::WorkerState;
    match (status.stopped, status.state) {
        (true, _) | (_, Some(WorkerState::Done)) => admin::WorkerState::Stopped,
        (false, Some(WorkerState::Busy)) => admin::WorkerState::Busy,
        (false, Some(WorkerState::Idle)) => admin::WorkerState::Idle,
        (false, None) => admin::WorkerState::Unspecified,
    }
}

/// A membership status as the admin API reports it.
fn member_state(status: crate::membership::view::Status) -> admin::MemberState {
    use crate::membership::view::Status;
    match status {
        Status::Joining => admin::MemberState::Joining,
        Status::Normal => admin::MemberState::Normal,
        Status::Leaving => admin::MemberState::Leaving,
        Status::Left => admin::MemberState::Left,
    }
}

/// A transfer's progress as the admin API reports it.
fn transfer_state(state: TransferState) -> admin::TransferState {
    match state {
        TransferState::Pending => admin::TransferState::Pending,
        TransferState::Streaming => admin::TransferState::Streaming,
        TransferState::Done => admin::TransferState::Done,
    }
}
