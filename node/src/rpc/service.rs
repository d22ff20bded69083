//! The gRPC services this node serves. They translate between protobuf messages and the
//! coordinator; all decisions live in the coordinator, all error mapping in `status`.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::pb::admin::{self, admin_server::Admin};
use super::pb::client::{self, client_server::Client};
use super::pb::internode::{self, internode_server::Internode};
use super::peers::Peers;
use crate::config::Quorum;
use crate::coordinator::Coordinator;
use crate::error::Error;
use crate::handoff::transfer::Progress;
use crate::membership::claimant::gains;
use crate::membership::gossip::Membership;
use crate::membership::view::View;
use crate::ring::NodeId;
use crate::storage::TREE_SHAPE;
use crate::version::Clock;

/// How long `Status` waits for each peer's ping.
const STATUS_PING_TIMEOUT: Duration = Duration::from_millis(800);

/// State shared by the three services.
pub struct Shared {
    pub coordinator: Arc<Coordinator<Peers>>,
    pub peers: Arc<Peers>,
    pub cluster: String,
    /// This node's advertised address.
    pub address: String,
    pub quorum: Quorum,
    /// Whether the test-only SetFaults call is accepted.
    pub fault_injection: bool,
    pub membership: Arc<Membership>,
    /// Partitions moving to this node in the current layout change.
    pub progress: Arc<std::sync::Mutex<Progress>>,
}

/// The node named by a request's `hint_for` field (empty means none).
fn hint_target(hint_for: &str) -> Option<NodeId> {
    (!hint_for.is_empty()).then(|| NodeId(hint_for.to_string()))
}

/// Both sides of an anti-entropy exchange must use the same tree shape.
fn check_shape(fanout: u32, depth: u32) -> Result<(), Status> {
    if fanout != TREE_SHAPE.fanout || depth != TREE_SHAPE.depth {
        return Err(Error::InvalidArgument(format!(
            "Merkle tree shape {fanout}x{depth} differs from this node's {}x{}: run the same \
             version on every node",
            TREE_SHAPE.fanout, TREE_SHAPE.depth
        ))
        .into());
    }
    Ok(())
}

/// Refuses internode calls from peers cut off by the fault switch, with a status that callers
/// classify as "unreachable" (no node-error marker), as a real partition would look.
fn check_partition<T>(shared: &Shared, req: &Request<T>) -> Result<(), Status> {
    let from = req.metadata().get(super::peers::FROM_KEY).and_then(|v| v.to_str().ok());
    match from {
        Some(peer) if shared.peers.is_blocked(peer) => {
            Err(Status::unavailable("partitioned (fault injection)"))
        }
        _ => Ok(()),
    }
}

/// The client API.
#[derive(Clone)]
pub struct ClientService(pub Arc<Shared>);
/// The internode API.
#[derive(Clone)]
pub struct InternodeService(pub Arc<Shared>);
/// The admin API.
#[derive(Clone)]
pub struct AdminService(pub Arc<Shared>);

impl ClientService {
    /// A client API response carrying this node's layout epoch, so a partition-aware client
    /// learns when its ring is stale.
    fn answer<T>(&self, body: T) -> Response<T> {
        let mut response = Response::new(body);
        let epoch = self.0.coordinator.placement().epoch;
        response.metadata_mut().insert(dynamo_api::contract::EPOCH_KEY, epoch.into());
        response
    }
}

#[tonic::async_trait]
impl Client for ClientService {
    async fn get(
        &self,
        req: Request<client::GetRequest>,
    ) -> Result<Response<client::GetResponse>, Status> {
        let req = req.into_inner();
        let out = self.0.coordinator.get(&req.key, req.r).await?;
        Ok(self.answer(client::GetResponse {
            values: out.values,
            context: out.context,
            replies: out.replies as u32,
        }))
    }

    async fn put(
        &self,
        req: Request<client::PutRequest>,
    ) -> Result<Response<client::PutResponse>, Status> {
        let req = req.into_inner();
        let out = self.0.coordinator.put(&req.key, Some(req.value), &req.context, req.w, 0).await?;
        Ok(self.answer(client::PutResponse { context: out.context, acks: out.acks as u32 }))
    }

    async fn delete(
        &self,
        req: Request<client::DeleteRequest>,
    ) -> Result<Response<client::PutResponse>, Status> {
        let req = req.into_inner();
        let out = self.0.coordinator.put(&req.key, None, &req.context, req.w, 0).await?;
        Ok(self.answer(client::PutResponse { context: out.context, acks: out.acks as u32 }))
    }
}

#[tonic::async_trait]
impl Internode for InternodeService {
    async fn replicate(
        &self,
        req: Request<internode::ReplicateRequest>,
    ) -> Result<Response<internode::ReplicateResponse>, Status> {
        check_partition(&self.0, &req)?;
        let req = req.into_inner();
        let clock = Clock::decode(&req.clock).map_err(Error::Corrupt)?;
        self.0.coordinator.apply_replica(&req.key, &clock, hint_target(&req.hint_for).as_ref())?;
        Ok(Response::new(internode::ReplicateResponse {}))
    }

    async fn fetch(
        &self,
        req: Request<internode::FetchRequest>,
    ) -> Result<Response<internode::FetchResponse>, Status> {
        check_partition(&self.0, &req)?;
        let req = req.into_inner();
        let clock =
            self.0.coordinator.local_replica(&req.key, hint_target(&req.hint_for).as_ref())?;
        let clock = if clock.is_empty() { Vec::new() } else { clock.encode() };
        Ok(Response::new(internode::FetchResponse { clock }))
    }

    async fn coordinate_put(
        &self,
        req: Request<internode::CoordinatePutRequest>,
    ) -> Result<Response<internode::CoordinatePutResponse>, Status> {
        check_partition(&self.0, &req)?;
        let req = req.into_inner();
        let out = self
            .0
            .coordinator
            .put(&req.key, req.value, &req.context, req.w, req.hops.max(1))
            .await?;
        Ok(Response::new(internode::CoordinatePutResponse {
            context: out.context,
            acks: out.acks as u32,
        }))
    }

    async fn merkle_hashes(
        &self,
        req: Request<internode::MerkleHashesRequest>,
    ) -> Result<Response<internode::MerkleHashesResponse>, Status> {
        check_partition(&self.0, &req)?;
        let req = req.into_inner();
        check_shape(req.fanout, req.depth)?;
        let store = self.0.coordinator.store();
        let hashes = store.with_tree(req.partition, |t| t.level_hashes(req.level, &req.indices))?;
        Ok(Response::new(internode::MerkleHashesResponse {
            hashes: hashes.into_iter().map(|h| h.to_vec()).collect(),
        }))
    }

    async fn merkle_items(
        &self,
        req: Request<internode::MerkleItemsRequest>,
    ) -> Result<Response<internode::MerkleItemsResponse>, Status> {
        check_partition(&self.0, &req)?;
        let req = req.into_inner();
        check_shape(req.fanout, req.depth)?;
        let items = self.0.coordinator.store().items_in_leaves(req.partition, &req.leaves)?;
        Ok(Response::new(internode::MerkleItemsResponse {
            items: items
                .into_iter()
                .map(|(key, d)| internode::MerkleItem { key, digest: d.to_vec() })
                .collect(),
        }))
    }

    async fn gossip(
        &self,
        req: Request<internode::GossipRequest>,
    ) -> Result<Response<internode::GossipResponse>, Status> {
        check_partition(&self.0, &req)?;
        let theirs: View = serde_json::from_slice(&req.into_inner().view).map_err(|e| {
            Status::from(Error::InvalidArgument(format!("undecodable membership view: {e}")))
        })?;
        let ours = self.0.membership.receive(&theirs)?;
        let view =
            serde_json::to_vec(&ours).map_err(|e| Status::from(Error::Internal(e.to_string())))?;
        Ok(Response::new(internode::GossipResponse { view }))
    }

    async fn stream_partition(
        &self,
        req: Request<internode::StreamPartitionRequest>,
    ) -> Result<Response<internode::StreamPartitionResponse>, Status> {
        check_partition(&self.0, &req)?;
        let req = req.into_inner();
        let limit = req.limit.clamp(1, 4096) as usize;
        let page = self.0.coordinator.store().scan_partition(
            req.partition,
            req.after.as_deref(),
            limit,
        )?;
        let done = page.len() < limit;
        Ok(Response::new(internode::StreamPartitionResponse {
            entries: page
                .into_iter()
                .map(|(key, clock)| internode::PartitionEntry { key, clock })
                .collect(),
            done,
        }))
    }

    async fn ping(
        &self,
        req: Request<internode::PingRequest>,
    ) -> Result<Response<internode::PingResponse>, Status> {
        check_partition(&self.0, &req)?;
        Ok(Response::new(internode::PingResponse {
            node_id: self.0.coordinator.me().0.clone(),
            cluster: self.0.cluster.clone(),
        }))
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        _req: Request<admin::StatusRequest>,
    ) -> Result<Response<admin::StatusResponse>, Status> {
        let shared = &self.0;
        let placement = shared.coordinator.placement();
        let view = shared.membership.view();
        let me = shared.coordinator.me().clone();
        let n = shared.quorum.n;
        let probes = view.nodes.values().map(|node| {
            let (peers, me, cluster) = (shared.peers.clone(), me.clone(), shared.cluster.clone());
            let node = node.clone();
            async move {
                if node.id == me {
                    return (node, Ok(()));
                }
                let result = match peers.ping(&node.id, STATUS_PING_TIMEOUT).await {
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
                reachable: result.is_ok(),
                error: result.err().unwrap_or_default(),
                is_self: node.id == me,
                primary_partitions: count(&|r| r.primary_partitions(&node.id).len()),
                replica_partitions: count(&|r| r.replica_partitions(&node.id, n).len()),
                membership: member_state(node.status) as i32,
                address: node.address,
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
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Response::new(admin::StatusResponse {
            node_id: me.0,
            cluster: shared.cluster.clone(),
            n: shared.quorum.n as u32,
            r: shared.quorum.r as u32,
            w: shared.quorum.w as u32,
            partitions: shared.coordinator.settings().partitions,
            nodes,
            local_keys: shared.coordinator.store().approximate_keys(),
            transfers,
            pending_partitions,
            hints: shared
                .coordinator
                .store()
                .hint_stats()
                .into_iter()
                .map(|(target, s)| admin::HintSummary {
                    target: target.0,
                    count: s.count,
                    bytes: s.bytes,
                })
                .collect(),
        }))
    }

    async fn ring(
        &self,
        _req: Request<admin::RingRequest>,
    ) -> Result<Response<admin::RingResponse>, Status> {
        let shared = &self.0;
        let placement = shared.coordinator.placement();
        let ring = placement.ring().map_err(Error::from)?;
        let view = shared.membership.view();
        let members: Vec<admin::RingMember> = ring
            .members()
            .iter()
            .map(|m| admin::RingMember {
                address: view.nodes.get(&m.id).map(|n| n.address.clone()).unwrap_or_default(),
                id: m.id.0.clone(),
                zone: m.zone.clone(),
                weight: m.weight,
            })
            .collect();
        let owners = ring
            .owners()
            .iter()
            .map(|o| members.iter().position(|m| m.id == o.0).unwrap_or_default() as u32)
            .collect();
        Ok(Response::new(admin::RingResponse {
            partitions: ring.partitions(),
            n: shared.quorum.n as u32,
            members,
            owners,
            epoch: placement.epoch,
        }))
    }

    async fn decommission(
        &self,
        req: Request<admin::DecommissionRequest>,
    ) -> Result<Response<admin::DecommissionResponse>, Status> {
        let shared = &self.0;
        let admin::DecommissionRequest { node_id: target, force } = req.into_inner();
        let me = shared.coordinator.me();
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
        let channel = super::peers::channel(&node.address, STATUS_PING_TIMEOUT * 5)
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
        let partition = req.into_inner().partition;
        let q = self.0.coordinator.settings().partitions;
        if let Some(p) = partition {
            if p >= q {
                return Err(Error::InvalidArgument(format!(
                    "partition {p} does not exist: this cluster has partitions 0..{q}"
                ))
                .into());
            }
        }
        let stats = crate::antientropy::repair(&self.0.coordinator, partition).await;
        Ok(Response::new(admin::RepairResponse {
            partitions: stats.partitions,
            exchanges: stats.exchanges,
            keys_compared: stats.keys_compared,
            keys_pulled: stats.keys_pulled,
            keys_pushed: stats.keys_pushed,
            errors: stats.errors,
        }))
    }

    async fn set_faults(
        &self,
        req: Request<admin::SetFaultsRequest>,
    ) -> Result<Response<admin::SetFaultsResponse>, Status> {
        if !self.0.fault_injection {
            return Err(Error::InvalidArgument(
                "fault injection is disabled on this node; it is for tests: start the node with \
                 --fault-injection true"
                    .into(),
            )
            .into());
        }
        let blocked = req.into_inner().blocked_peers.into_iter().map(crate::ring::NodeId).collect();
        self.0.peers.set_blocked(blocked);
        Ok(Response::new(admin::SetFaultsResponse {}))
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
fn transfer_state(state: &str) -> admin::TransferState {
    match state {
        "pending" => admin::TransferState::Pending,
        "streaming" => admin::TransferState::Streaming,
        "done" => admin::TransferState::Done,
        _ => admin::TransferState::Unspecified,
    }
}
