//! Partitions, ownership and preference lists: which nodes hold which keys (pure, no I/O).
//!
//! The 128-bit MD5 hash space is split into `Q` equal partitions (`Q` a power of two), the
//! unit of ownership, transfer, Merkle trees and hint delivery (the Dynamo paper's
//! "strategy 3", as in Riak). Each partition has exactly one owner; members own shares
//! proportional to their weights. A key's preference list is the walk of the ring from its
//! partition, collecting distinct members and spreading over zones before repeating one.
//!
//! Every function here is deterministic: two nodes with the same membership compute the same
//! [`Ring`], and a ring sent over the wire ([`Ring::owners`]) is rebuilt exactly by
//! [`Ring::from_parts`]. How partitions are claimed is explained in [`claim`].

mod claim;
mod placement;
#[cfg(test)]
mod tests;

pub use placement::{NotJoined, Placement};

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

/// Index of a partition: `0..ring.partitions()`, in ring order (partition `p` covers the
/// hashes whose top `log2(Q)` bits equal `p`).
pub type PartitionId = u32;

/// Node identity as configured (e.g. "node-1"); the sort key of members everywhere.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub String);

impl NodeId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for NodeId {
    fn from(id: &str) -> Self {
        NodeId(id.to_string())
    }
}

impl From<String> for NodeId {
    fn from(id: String) -> Self {
        NodeId(id)
    }
}

/// A node taking part in the ring.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Unique, non-empty identity.
    pub id: NodeId,
    /// Failure domain (a Dynamo "data center"; an availability zone on Kubernetes). Preference
    /// lists use as many zones as exist before repeating one.
    pub zone: String,
    /// Relative capacity (> 0): a member owns about `Q * weight / sum(weights)` partitions.
    pub weight: u32,
}

/// Why a ring could not be built. Building never changes an existing ring.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RingError {
    /// `Q` must be a power of two so that a partition is a prefix of the hash.
    #[error(
        "partition count {partitions} is not a power of two: use 64, 128, 256, 512, 1024, ..."
    )]
    PartitionsNotPowerOfTwo {
        /// The rejected count.
        partitions: u32,
    },
    /// `Q` outside the supported range (member indices are stored in 16 bits).
    #[error(
        "partition count {partitions} is outside 1..=65536: use a power of two such as 256 or 1024"
    )]
    PartitionsOutOfRange {
        /// The rejected count.
        partitions: u32,
    },
    /// Every member must own at least one partition to appear in preference lists.
    #[error("{partitions} partitions cannot be shared by {members} members: use at least as many partitions as members (a power of two, e.g. 256 or 1024)")]
    TooFewPartitions {
        /// The partition count.
        partitions: u32,
        /// The number of members.
        members: usize,
    },
    /// An empty membership owns nothing.
    #[error("a ring needs at least one member: add a member")]
    NoMembers,
    /// A member with an empty id cannot be addressed.
    #[error("a member has an empty id: give every member a non-empty id")]
    EmptyId,
    /// Zones drive replica placement, so each member needs one.
    #[error("member {id} has an empty zone: give it a zone (use one name for all members if there is a single failure domain)")]
    EmptyZone {
        /// The member without a zone.
        id: NodeId,
    },
    /// A zero-weight member would own nothing.
    #[error("member {id} has weight 0: use a weight of at least 1, or remove the member")]
    ZeroWeight {
        /// The member with weight 0.
        id: NodeId,
    },
    /// Ids identify members, so they must be unique.
    #[error("member {id} is listed more than once: list each member once")]
    DuplicateMember {
        /// The repeated id.
        id: NodeId,
    },
    /// A received ring whose owner list does not cover the partitions exactly.
    #[error("the ring lists {owners} owners for {partitions} partitions: send exactly one owner per partition")]
    OwnerCountMismatch {
        /// The partition count.
        partitions: u32,
        /// The number of owners received.
        owners: usize,
    },
    /// A received ring whose owner index points past its member list.
    #[error("partition {partition} is owned by member #{index}, but the ring has {members} members: send the members and owners of the same ring")]
    OwnerIndexOutOfRange {
        /// The partition.
        partition: PartitionId,
        /// The index received.
        index: u32,
        /// The number of members.
        members: usize,
    },
    /// A received ring naming an owner that is not among its members.
    #[error("partition {partition} is owned by {owner}, which is not a member: send the members and owners of the same ring")]
    UnknownOwner {
        /// The partition.
        partition: PartitionId,
        /// The unknown owner.
        owner: NodeId,
    },
}

/// MD5 of the key as a big-endian `u128`: the key's position on the ring.
pub fn key_hash(key: &[u8]) -> u128 {
    u128::from_be_bytes(Md5::digest(key).into())
}

/// The partition holding `hash` in a ring of `partitions` partitions: the top `log2(Q)` bits,
/// so partitions are contiguous, equal slices of the hash space in ring order.
///
/// `partitions` should be a power of two (as every [`Ring`] has); for any other value the
/// result still lies in `0..partitions` (it uses `floor(log2(partitions))` bits).
pub fn partition_of_hash(hash: u128, partitions: u32) -> PartitionId {
    if partitions <= 1 {
        return 0;
    }
    let bits = partitions.ilog2();
    // `bits` is in 1..=31, so the shift is in 97..=127 and the result fits in `bits` bits.
    (hash >> (128 - bits)) as PartitionId
}

/// The partition layout of a cluster: `Q` partitions, their owners and, precomputed, every
/// partition's preference list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ring {
    /// `Q`: a power of two in 1..=65536, fixed when the cluster is created.
    partitions: u32,
    /// Sorted by id, so that indices (and so the whole ring) do not depend on input order.
    members: Vec<Member>,
    /// `owners[p]` is the index in `members` of partition `p`'s owner. `u16` suffices because
    /// there are at most 65536 members (one per partition) and halves the memory.
    owners: Vec<u16>,
    /// Preference lists, flattened: partition `p`'s list is `prefs[p * S..(p + 1) * S]`
    /// (indices into `members`), computed once because every request needs one.
    prefs: Vec<u16>,
}

impl Ring {
    /// The default `Q`: room for clusters of up to about 64 nodes with good balance.
    pub const DEFAULT_PARTITIONS: u32 = 256;

    /// Claims a ring from scratch (see [`claim`]). Deterministic: the same `partitions` and the
    /// same set of members, in any order, give the same ring on every machine.
    pub fn new(partitions: u32, members: Vec<Member>) -> Result<Ring, RingError> {
        let members = validate(partitions, members)?;
        let owners = claim::claim_new(partitions, &members);
        Ok(Ring::assemble(partitions, members, owners))
    }

    /// The layout for a new member set (joins, leaves, weight or zone changes), derived from
    /// this one so that as few partitions as possible change owner: partitions of departed
    /// members and the surplus of over-target members go to under-target members, nothing
    /// else moves (see [`claim`]). Deterministic in `(self, set of members)`.
    pub fn rebalance(&self, members: Vec<Member>) -> Result<Ring, RingError> {
        let members = validate(self.partitions, members)?;
        let index: HashMap<&NodeId, u16> =
            members.iter().enumerate().map(|(i, m)| (&m.id, i as u16)).collect();
        let previous: Vec<Option<u16>> = self
            .owners
            .iter()
            .map(|&o| index.get(&self.members[usize::from(o)].id).copied())
            .collect();
        let owners = claim::claim_incremental(self.partitions, &members, &previous);
        Ok(Ring::assemble(self.partitions, members, owners))
    }

    /// Rebuilds a ring received over the wire: `owners[p]` is the id of partition `p`'s owner.
    /// Checks the partition count, the members (as [`Ring::new`] does) and that there is one
    /// owner per partition, each of them a member.
    pub fn from_parts(
        partitions: u32,
        members: Vec<Member>,
        owners: Vec<NodeId>,
    ) -> Result<Ring, RingError> {
        let members = validate(partitions, members)?;
        if owners.len() != partitions as usize {
            return Err(RingError::OwnerCountMismatch { partitions, owners: owners.len() });
        }
        let index: HashMap<&NodeId, u16> =
            members.iter().enumerate().map(|(i, m)| (&m.id, i as u16)).collect();
        let mut indices = Vec::with_capacity(owners.len());
        for (p, owner) in owners.iter().enumerate() {
            match index.get(owner) {
                Some(&i) => indices.push(i),
                None => {
                    return Err(RingError::UnknownOwner {
                        partition: p as PartitionId,
                        owner: owner.clone(),
                    })
                }
            }
        }
        drop(index);
        Ok(Ring::assemble(partitions, members, indices))
    }

    /// `Q`, the number of partitions.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The members, sorted by id.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The member with this id, if any.
    pub fn member(&self, id: &NodeId) -> Option<&Member> {
        self.index_of(id).map(|i| &self.members[i])
    }

    /// The partition holding `key`.
    pub fn partition_of(&self, key: &[u8]) -> PartitionId {
        partition_of_hash(key_hash(key), self.partitions)
    }

    /// The owner of partition `p`. `p` is taken modulo [`Ring::partitions`] so that no input
    /// can panic; check `p < partitions()` first where `p` comes from outside.
    pub fn owner(&self, p: PartitionId) -> &Member {
        &self.members[usize::from(self.owners[self.slot(p)])]
    }

    /// The owner of every partition, in partition order: what [`Ring::from_parts`] takes.
    pub fn owners(&self) -> Vec<NodeId> {
        self.owners.iter().map(|&o| self.members[usize::from(o)].id.clone()).collect()
    }

    /// The owner of every partition as its index in [`Ring::members`]: the ring's wire form
    /// (the admin API's `owners`, with the members in the same order).
    pub fn owner_indices(&self) -> Vec<u32> {
        self.owners.iter().map(|&o| u32::from(o)).collect()
    }

    /// Every member exactly once, in preference order for partition `p` (taken modulo
    /// [`Ring::partitions`]). The first N are the replicas; the rest extend the list for
    /// sloppy quorum.
    ///
    /// The order is the walk of the ring from `p` in rounds: a round takes a member only if no
    /// member of its zone was taken in that round, and ends once every zone that still has
    /// untaken members has been used; the next round walks from `p` again. So the first
    /// `min(N, zones)` entries are in distinct zones. Members owning no partition (possible
    /// only through [`Ring::from_parts`]) are met after every owner, in id order.
    pub fn preference_list(&self, p: PartitionId) -> Vec<&Member> {
        self.pref_indices(self.slot(p)).iter().map(|&i| &self.members[usize::from(i)]).collect()
    }

    /// The ids of the first `n` members of `p`'s preference list: the partition's replicas with
    /// replication factor `n` (fewer when the ring has fewer members).
    pub fn replicas(&self, p: PartitionId, n: usize) -> Vec<NodeId> {
        let list = self.pref_indices(self.slot(p));
        list[..n.min(list.len())].iter().map(|&i| self.members[usize::from(i)].id.clone()).collect()
    }

    /// The partitions `id` owns, in ascending order (empty for a non-member).
    pub fn primary_partitions(&self, id: &NodeId) -> Vec<PartitionId> {
        let Some(i) = self.index_of(id) else { return Vec::new() };
        (0..self.partitions).filter(|&p| usize::from(self.owners[p as usize]) == i).collect()
    }

    /// The partitions for which `id` is among the first `n` of the preference list (the
    /// partitions it replicates with replication factor `n`), in ascending order.
    pub fn replica_partitions(&self, id: &NodeId, n: usize) -> Vec<PartitionId> {
        let Some(i) = self.index_of(id) else { return Vec::new() };
        (0..self.partitions)
            .filter(|&p| {
                let list = self.pref_indices(p as usize);
                list[..n.min(list.len())].iter().any(|&m| usize::from(m) == i)
            })
            .collect()
    }

    /// Builds the ring from validated parts, precomputing the preference lists.
    fn assemble(partitions: u32, members: Vec<Member>, owners: Vec<u16>) -> Ring {
        let prefs = preference_lists(&members, &owners);
        Ring { partitions, members, owners, prefs }
    }

    /// Index of `p` in `owners`, wrapping out-of-range input instead of panicking.
    fn slot(&self, p: PartitionId) -> usize {
        (p & (self.partitions - 1)) as usize
    }

    fn index_of(&self, id: &NodeId) -> Option<usize> {
        self.members.binary_search_by(|m| m.id.cmp(id)).ok()
    }

    fn pref_indices(&self, slot: usize) -> &[u16] {
        let s = self.members.len();
        &self.prefs[slot * s..(slot + 1) * s]
    }
}

/// Checks the partition count and the members; returns the members sorted by id.
fn validate(partitions: u32, mut members: Vec<Member>) -> Result<Vec<Member>, RingError> {
    if partitions == 0 || partitions > 65536 {
        return Err(RingError::PartitionsOutOfRange { partitions });
    }
    if !partitions.is_power_of_two() {
        return Err(RingError::PartitionsNotPowerOfTwo { partitions });
    }
    if members.is_empty() {
        return Err(RingError::NoMembers);
    }
    if members.len() > partitions as usize {
        return Err(RingError::TooFewPartitions { partitions, members: members.len() });
    }
    members.sort_by(|a, b| a.id.cmp(&b.id));
    for (i, m) in members.iter().enumerate() {
        if m.id.0.is_empty() {
            return Err(RingError::EmptyId);
        }
        if m.zone.is_empty() {
            return Err(RingError::EmptyZone { id: m.id.clone() });
        }
        if m.weight == 0 {
            return Err(RingError::ZeroWeight { id: m.id.clone() });
        }
        if i > 0 && members[i - 1].id == m.id {
            return Err(RingError::DuplicateMember { id: m.id.clone() });
        }
    }
    Ok(members)
}

/// Every partition's preference list, flattened (`S` entries per partition).
///
/// Equivalent to the round walk documented on [`Ring::preference_list`], in `O(Q * S)`:
/// let `d(m)` be the distance from `p` to the first partition `m` owns (infinite if none).
/// A round takes, for each zone with untaken members, the untaken member of that zone with
/// the smallest `d` (a member skipped because its zone was used is skipped at every later
/// position of that round too), and takes them in order of `d`. So if `rank(m)` is the number
/// of members of `m`'s zone with a smaller `d`, the list is the members sorted by
/// `(rank, d)`. Members by `d` for `p` are those for `p + 1` with `owner(p)` moved to the
/// front, which is how the loop below walks the ring backwards.
fn preference_lists(members: &[Member], owners: &[u16]) -> Vec<u16> {
    let s = members.len();
    let q = owners.len();
    let mut zone_ids: BTreeMap<&str, usize> = BTreeMap::new();
    for m in members {
        let next = zone_ids.len();
        zone_ids.entry(m.zone.as_str()).or_insert(next);
    }
    let zone_of: Vec<usize> = members.iter().map(|m| zone_ids[m.zone.as_str()]).collect();

    // Members by first occurrence at or after partition 0; non-owners last, by id.
    let mut first = vec![usize::MAX; s];
    for (p, &o) in owners.iter().enumerate().rev() {
        first[usize::from(o)] = p;
    }
    let mut order: Vec<u16> = (0..s as u16).collect();
    order.sort_by_key(|&m| (first[usize::from(m)], m));

    let mut prefs = vec![0u16; q * s];
    let mut rank = vec![0usize; s];
    let mut seen_in_zone = vec![0usize; zone_ids.len()];
    let mut by_rank: Vec<Vec<u16>> = Vec::new();
    for p in (0..q).rev() {
        let o = owners[p];
        if let Some(pos) = order.iter().position(|&m| m == o) {
            order[..=pos].rotate_right(1);
        }
        seen_in_zone.iter_mut().for_each(|c| *c = 0);
        for &m in &order {
            let z = zone_of[usize::from(m)];
            rank[usize::from(m)] = seen_in_zone[z];
            seen_in_zone[z] += 1;
        }
        let rounds = seen_in_zone.iter().copied().max().unwrap_or(0);
        by_rank.resize_with(rounds.max(by_rank.len()), Vec::new);
        by_rank.iter_mut().for_each(Vec::clear);
        for &m in &order {
            by_rank[rank[usize::from(m)]].push(m);
        }
        let out = &mut prefs[p * s..(p + 1) * s];
        for (slot, &m) in out.iter_mut().zip(by_rank.iter().flatten()) {
            *slot = m;
        }
    }
    prefs
}
