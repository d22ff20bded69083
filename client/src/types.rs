//! What the client returns: plain Rust types, so an application never handles generated
//! protobuf types (the wire format can change without breaking it).

use std::fmt;

use dynamo_api::pb::admin;
use dynamo_api::pb::client as wire;
use dynamo_api::ring::{Member, NodeId, Ring, RingError};

/// What a get returns: every concurrent value and one context covering them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Versions {
    /// Every live concurrent value (siblings); empty when the key is absent or deleted.
    pub values: Vec<Vec<u8>>,
    /// Opaque; pass it to the next put or delete of this key. Empty when nothing was stored.
    pub context: Vec<u8>,
    /// How many replicas answered.
    pub replies: u32,
}

/// What a put or delete returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    /// The context of the version just written.
    pub context: Vec<u8>,
    /// How many replicas acknowledged before the answer.
    pub acks: u32,
}

/// Ring membership of a node, in the order a node goes through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MemberState {
    /// Announced itself; not in the committed layout yet.
    Joining,
    /// In the committed layout, serving.
    Normal,
    /// Decommissioning: its partitions are being moved away.
    Leaving,
    /// Decommissioned: out of the layout; can be stopped.
    Left,
    /// A state this client does not know (a newer node).
    Unknown,
}

impl MemberState {
    /// The lowercase name printed by `dynamoctl` ("joining", "normal", ...).
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Joining => "joining",
            MemberState::Normal => "normal",
            MemberState::Leaving => "leaving",
            MemberState::Left => "left",
            MemberState::Unknown => "unknown",
        }
    }

    fn from_wire(v: i32) -> MemberState {
        match admin::MemberState::try_from(v) {
            Ok(admin::MemberState::Joining) => MemberState::Joining,
            Ok(admin::MemberState::Normal) => MemberState::Normal,
            Ok(admin::MemberState::Leaving) => MemberState::Leaving,
            Ok(admin::MemberState::Left) => MemberState::Left,
            _ => MemberState::Unknown,
        }
    }
}

impl fmt::Display for MemberState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Progress of one partition transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransferState {
    Pending,
    Streaming,
    Done,
    Unknown,
}

impl TransferState {
    /// The lowercase name printed by `dynamoctl`.
    pub fn as_str(self) -> &'static str {
        match self {
            TransferState::Pending => "pending",
            TransferState::Streaming => "streaming",
            TransferState::Done => "done",
            TransferState::Unknown => "unknown",
        }
    }

    fn from_wire(v: i32) -> TransferState {
        match admin::TransferState::try_from(v) {
            Ok(admin::TransferState::Pending) => TransferState::Pending,
            Ok(admin::TransferState::Streaming) => TransferState::Streaming,
            Ok(admin::TransferState::Done) => TransferState::Done,
            _ => TransferState::Unknown,
        }
    }
}

impl fmt::Display for TransferState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One node as another node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    pub zone: String,
    /// Where clients reach it (its client port).
    pub address: String,
    /// Where other nodes and admins reach it (its peer port: internode and admin APIs).
    pub peer_address: String,
    /// Where it serves Prometheus metrics (`GET /metrics`); empty if it does not say.
    pub metrics_address: String,
    pub weight: u32,
    /// Whether the answering node reached it just now.
    pub reachable: bool,
    /// Why it is unreachable, when it is not.
    pub error: String,
    /// How long the answering node has found it unreachable, without an answer since.
    pub down_for: Option<std::time::Duration>,
    /// Whether this is the node that answered.
    pub is_self: bool,
    /// Partitions it owns as the first of the preference list.
    pub primary_partitions: u32,
    /// Partitions for which it is one of the N replicas.
    pub replica_partitions: u32,
    pub membership: MemberState,
}

/// One partition moving between nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub partition: u32,
    pub from: String,
    pub to: String,
    pub keys_sent: u64,
    pub bytes_sent: u64,
    /// Bytes per second since the partition started streaming (over the whole transfer once
    /// done).
    pub bytes_per_second: u64,
    pub state: TransferState,
}

/// Hints a node holds for one unreachable node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hints {
    pub target: String,
    pub count: u64,
    pub bytes: u64,
}

/// One node's view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    /// The node that answered.
    pub node_id: String,
    pub cluster: String,
    pub n: u32,
    pub r: u32,
    pub w: u32,
    pub partitions: u32,
    pub nodes: Vec<NodeInfo>,
    /// Keys stored on the answering node (replicas, tombstones included; not hints).
    pub local_keys: u64,
    /// Partition transfers the answering node takes part in.
    pub transfers: Vec<Transfer>,
    /// Partitions still to move before the ring is balanced (0 when settled).
    pub pending_partitions: u32,
    /// Hints held for other nodes, per target.
    pub hints: Vec<Hints>,
    /// The answering node's background workers.
    pub workers: Vec<WorkerInfo>,
    /// Keys the answering node holds as tombstones (deleted, not yet reaped).
    pub tombstones: u64,
    /// Tombstones the answering node has reaped since it started.
    pub tombstones_reaped: u64,
}

/// One background worker of a node (gossip, transfer, handoff, anti-entropy, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    pub name: String,
    /// What its last step found: "busy", "idle", "stopped", or "starting" before its first.
    pub state: &'static str,
    /// Steps completed since the node started.
    pub steps: u64,
}

fn worker_state(v: i32) -> &'static str {
    match admin::WorkerState::try_from(v) {
        Ok(admin::WorkerState::Busy) => "busy",
        Ok(admin::WorkerState::Idle) => "idle",
        Ok(admin::WorkerState::Stopped) => "stopped",
        _ => "starting",
    }
}

impl ClusterStatus {
    /// The membership of `node` as the answering node sees it.
    pub fn membership_of(&self, node: &str) -> Option<MemberState> {
        self.nodes.iter().find(|n| n.id == node).map(|n| n.membership)
    }
}

/// A member of the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingMember {
    pub id: String,
    /// Where clients reach it (its client port): what a partition-aware client routes to.
    pub address: String,
    /// Where other nodes and admins reach it (its peer port).
    pub peer_address: String,
    pub zone: String,
    pub weight: u32,
}

/// The partition layout: enough to compute every key's preference list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingLayout {
    pub partitions: u32,
    pub n: u32,
    pub members: Vec<RingMember>,
    /// `owners[p]` is the index in `members` of partition `p`'s owner.
    pub owners: Vec<u32>,
    /// Grows with every layout change.
    pub epoch: u64,
}

impl RingLayout {
    /// The ring itself, rebuilt and checked: the same [`Ring`] the node computes preference
    /// lists with.
    pub fn to_ring(&self) -> Result<Ring, RingError> {
        let members: Vec<Member> = self
            .members
            .iter()
            .map(|m| Member { id: NodeId(m.id.clone()), zone: m.zone.clone(), weight: m.weight })
            .collect();
        let owners = self
            .owners
            .iter()
            .enumerate()
            .map(|(p, &o)| {
                members.get(o as usize).map(|m| m.id.clone()).ok_or(
                    RingError::OwnerIndexOutOfRange {
                        partition: p as u32,
                        index: o,
                        members: members.len(),
                    },
                )
            })
            .collect::<Result<Vec<NodeId>, RingError>>()?;
        Ring::from_parts(self.partitions, members, owners)
    }
}

/// What an anti-entropy run compared and moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairReport {
    pub partitions: u32,
    pub exchanges: u32,
    pub keys_compared: u64,
    pub keys_pulled: u64,
    pub keys_pushed: u64,
    /// Exchanges that failed.
    pub errors: Vec<String>,
}

/// The answer to a decommission request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decommissioned {
    pub node_id: String,
    /// Leaving (transfer under way) or left (done).
    pub state: MemberState,
}

impl From<wire::GetResponse> for Versions {
    fn from(r: wire::GetResponse) -> Versions {
        Versions { values: r.values, context: r.context, replies: r.replies }
    }
}

impl From<wire::PutResponse> for Written {
    fn from(r: wire::PutResponse) -> Written {
        Written { context: r.context, acks: r.acks }
    }
}

impl From<admin::StatusResponse> for ClusterStatus {
    fn from(r: admin::StatusResponse) -> ClusterStatus {
        ClusterStatus {
            node_id: r.node_id,
            cluster: r.cluster,
            n: r.n,
            r: r.r,
            w: r.w,
            partitions: r.partitions,
            nodes: r
                .nodes
                .into_iter()
                .map(|n| NodeInfo {
                    membership: MemberState::from_wire(n.membership),
                    id: n.id,
                    zone: n.zone,
                    address: n.address,
                    peer_address: n.peer_address,
                    metrics_address: n.metrics_address,
                    weight: n.weight,
                    reachable: n.reachable,
                    down_for: (!n.reachable)
                        .then(|| std::time::Duration::from_millis(n.down_for_ms)),
                    error: n.error,
                    is_self: n.is_self,
                    primary_partitions: n.primary_partitions,
                    replica_partitions: n.replica_partitions,
                })
                .collect(),
            local_keys: r.local_keys,
            tombstones: r.tombstones,
            tombstones_reaped: r.tombstones_reaped,
            transfers: r
                .transfers
                .into_iter()
                .map(|t| Transfer {
                    state: TransferState::from_wire(t.state),
                    partition: t.partition,
                    from: t.from,
                    to: t.to,
                    keys_sent: t.keys_sent,
                    bytes_sent: t.bytes_sent,
                    bytes_per_second: t.bytes_per_second,
                })
                .collect(),
            pending_partitions: r.pending_partitions,
            hints: r
                .hints
                .into_iter()
                .map(|h| Hints { target: h.target, count: h.count, bytes: h.bytes })
                .collect(),
            workers: r
                .workers
                .into_iter()
                .map(|w| WorkerInfo { state: worker_state(w.state), name: w.name, steps: w.steps })
                .collect(),
        }
    }
}

impl From<wire::RingResponse> for RingLayout {
    fn from(r: wire::RingResponse) -> RingLayout {
        RingLayout {
            partitions: r.partitions,
            n: r.n,
            members: r
                .members
                .into_iter()
                .map(|m| RingMember {
                    id: m.id,
                    address: m.address,
                    peer_address: m.peer_address,
                    zone: m.zone,
                    weight: m.weight,
                })
                .collect(),
            owners: r.owners,
            epoch: r.epoch,
        }
    }
}

impl From<admin::RepairResponse> for RepairReport {
    fn from(r: admin::RepairResponse) -> RepairReport {
        RepairReport {
            partitions: r.partitions,
            exchanges: r.exchanges,
            keys_compared: r.keys_compared,
            keys_pulled: r.keys_pulled,
            keys_pushed: r.keys_pushed,
            errors: r.errors,
        }
    }
}

impl From<admin::DecommissionResponse> for Decommissioned {
    fn from(r: admin::DecommissionResponse) -> Decommissioned {
        Decommissioned { node_id: r.node_id, state: MemberState::from_wire(r.state) }
    }
}

/// One node's part of a backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeBackup {
    pub node_id: String,
    /// Files in the node's checkpoint and their bytes.
    pub files: u32,
    pub bytes_total: u64,
    /// Bytes this backup uploaded (files an earlier backup uploaded are not sent again).
    pub bytes_uploaded: u64,
}

/// A complete backup: what [`crate::Client::backup`] took, or one [`crate::Client::backups`]
/// found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupInfo {
    pub backup_id: String,
    /// The cluster it was taken from (empty in the answer to a backup).
    pub cluster: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub finished_at: String,
    pub nodes: Vec<NodeBackup>,
}

impl BackupInfo {
    /// Bytes in every node's checkpoint.
    pub fn bytes_total(&self) -> u64 {
        self.nodes.iter().map(|n| n.bytes_total).sum()
    }

    /// Bytes the backup uploaded.
    pub fn bytes_uploaded(&self) -> u64 {
        self.nodes.iter().map(|n| n.bytes_uploaded).sum()
    }
}

/// What each node of the restoring cluster read and kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRestore {
    pub node_id: String,
    /// Keys read from the backup's files.
    pub keys_read: u64,
    /// Keys the node replicates, merged into its store.
    pub keys_kept: u64,
}

impl From<admin::NodeBackup> for NodeBackup {
    fn from(n: admin::NodeBackup) -> NodeBackup {
        NodeBackup {
            node_id: n.node_id,
            files: n.files,
            bytes_total: n.bytes_total,
            bytes_uploaded: n.bytes_uploaded,
        }
    }
}

impl From<admin::BackupResponse> for BackupInfo {
    fn from(r: admin::BackupResponse) -> BackupInfo {
        BackupInfo {
            backup_id: r.backup_id,
            cluster: String::new(),
            started_at: r.started_at,
            finished_at: r.finished_at,
            nodes: r.nodes.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<admin::BackupSummary> for BackupInfo {
    fn from(r: admin::BackupSummary) -> BackupInfo {
        BackupInfo {
            backup_id: r.backup_id,
            cluster: r.cluster,
            started_at: r.started_at,
            finished_at: r.finished_at,
            nodes: r.nodes.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<admin::NodeRestore> for NodeRestore {
    fn from(n: admin::NodeRestore) -> NodeRestore {
        NodeRestore { node_id: n.node_id, keys_read: n.keys_read, keys_kept: n.keys_kept }
    }
}
