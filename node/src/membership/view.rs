//! The gossiped cluster view (paper section 4.8): every node's own entry (address, zone,
//! weight, membership status, generation, heartbeat) and the partition layout. Pure: merging
//! two views is a join (commutative, associative, idempotent), so views converge whatever the
//! order and repetition of gossip exchanges.
//!
//! Who writes what:
//! - a node's entry is written only by that node (status changes, heartbeats); the copy with
//!   the greatest (generation, version, heartbeat) wins, so a restarted node (new generation)
//!   always overrides what others remember of it;
//! - the layout is written by the claimant (see `claimant`); the layout with the greatest
//!   (epoch, author) wins.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ring::{Member, NodeId, Ring, RingError};

/// Membership status of a node, as it declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Announced itself; not in the committed layout yet.
    Joining,
    /// In the committed layout, serving.
    Normal,
    /// Decommissioning: its partitions are being moved away.
    Leaving,
    /// Decommissioned: out of the layout; can be stopped.
    Left,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Joining => "joining",
            Status::Normal => "normal",
            Status::Leaving => "leaving",
            Status::Left => "left",
        }
    }
}

/// One node's entry, written only by that node (but see [`NodeState::removed_by`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    pub id: NodeId,
    /// HOST:PORT of its peer port (internode and admin APIs).
    pub address: String,
    /// HOST:PORT of its client port; empty in views written before the ports were separate.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_address: String,
    /// HOST:PORT of its Prometheus metrics (`GET /metrics`); empty in views written before
    /// nodes served metrics.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metrics_address: String,
    pub zone: String,
    pub weight: u32,
    pub status: Status,
    /// Grows on every restart of the node.
    pub generation: u64,
    /// Grows on every change of the fields above within a generation.
    pub version: u64,
    /// Grows on every gossip round of the node.
    pub heartbeat: u64,
    /// The layout epoch for which this node has received every partition it gains (0: none).
    pub synced_epoch: u64,
    /// Set when another node wrote this entry on the node's behalf, because the node did not
    /// answer: a forced removal (`decommission --force`), the one exception to "written only by
    /// that node". The node, if it is alive in the same generation, accepts it and leaves; a
    /// restart (a newer generation) overrides it and the node joins again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_by: Option<NodeId>,
}

impl NodeState {
    /// What a merge orders copies of one entry by: the greatest (generation, version, heartbeat).
    pub(crate) fn rank(&self) -> (u64, u64, u64) {
        (self.generation, self.version, self.heartbeat)
    }

    pub fn member(&self) -> Member {
        Member { id: self.id.clone(), zone: self.zone.clone(), weight: self.weight }
    }
}

/// A committed partition layout plus, during a change, the target being moved to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// Grows on every change (a new target, a commit). 0 means no layout yet.
    pub epoch: u64,
    /// The claimant that wrote this epoch; breaks ties between concurrent claimants.
    pub author: NodeId,
    pub partitions: u32,
    pub members: Vec<Member>,
    /// Owner of each partition.
    pub owners: Vec<NodeId>,
    /// The layout being moved to, while partitions are transferred.
    pub next: Option<Target>,
}

/// The target of a layout change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub members: Vec<Member>,
    pub owners: Vec<NodeId>,
}

impl Layout {
    /// No layout yet.
    pub fn empty(partitions: u32) -> Layout {
        Layout {
            epoch: 0,
            author: NodeId(String::new()),
            partitions,
            members: Vec::new(),
            owners: Vec::new(),
            next: None,
        }
    }

    fn rank(&self) -> (u64, &NodeId) {
        (self.epoch, &self.author)
    }

    /// The committed ring (None before the first layout).
    pub fn ring(&self) -> Result<Option<Ring>, RingError> {
        if self.epoch == 0 || self.members.is_empty() {
            return Ok(None);
        }
        Ring::from_parts(self.partitions, self.members.clone(), self.owners.clone()).map(Some)
    }

    /// The ring being moved to, during a change.
    pub fn next_ring(&self) -> Result<Option<Ring>, RingError> {
        match &self.next {
            Some(t) => {
                Ring::from_parts(self.partitions, t.members.clone(), t.owners.clone()).map(Some)
            }
            None => Ok(None),
        }
    }
}

/// A node's whole view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub nodes: BTreeMap<NodeId, NodeState>,
    pub layout: Layout,
}

impl View {
    pub fn new(partitions: u32) -> View {
        View { nodes: BTreeMap::new(), layout: Layout::empty(partitions) }
    }

    /// Merges another view into this one; returns whether anything changed. A join:
    /// commutative, associative and idempotent.
    pub fn merge(&mut self, other: &View) -> bool {
        let mut changed = false;
        for (id, theirs) in &other.nodes {
            match self.nodes.get(id) {
                Some(ours) if ours.rank() >= theirs.rank() => {}
                _ => {
                    self.nodes.insert(id.clone(), theirs.clone());
                    changed = true;
                }
            }
        }
        if other.layout.partitions == self.layout.partitions
            && other.layout.rank() > self.layout.rank()
        {
            self.layout = other.layout.clone();
            changed = true;
        }
        changed
    }

    /// The status of a node, if known.
    pub fn status(&self, id: &NodeId) -> Option<Status> {
        self.nodes.get(id).map(|n| n.status)
    }

    /// Checks a view received from elsewhere before anything of it is merged or saved: its
    /// size, its entries, and that its layout (and the target of a change) is a valid ring of
    /// `partitions` partitions over members it knows. A view that fails is dropped whole.
    pub fn validate(&self, partitions: u32) -> Result<(), String> {
        if self.nodes.len() > MAX_MEMBERS {
            return Err(format!(
                "it lists {} nodes, more than the {MAX_MEMBERS} a cluster may have",
                self.nodes.len()
            ));
        }
        for (id, node) in &self.nodes {
            if *id != node.id {
                return Err(format!("its entry under '{id}' is for '{}'", node.id));
            }
            let valid_id = !id.0.is_empty()
                && id.0.len() <= 64
                && id.0.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !valid_id {
                return Err(format!("node id '{}' is not a valid node id", id.0.escape_debug()));
            }
            if node.address.len() > 255
                || node.client_address.len() > 255
                || node.metrics_address.len() > 255
                || node.zone.len() > 255
            {
                return Err(format!("node '{id}' has an address or zone over 255 bytes"));
            }
            if node.weight == 0 || node.weight > 1000 {
                return Err(format!("node '{id}' has weight {}, outside 1..=1000", node.weight));
            }
        }
        let layout = &self.layout;
        if layout.partitions != partitions {
            return Err(format!(
                "its layout has {} partitions, this cluster {partitions}",
                layout.partitions
            ));
        }
        if layout.members.len() > MAX_MEMBERS {
            return Err(format!("its layout has {} members", layout.members.len()));
        }
        if layout.epoch == 0 {
            if !layout.members.is_empty() || !layout.owners.is_empty() || layout.next.is_some() {
                return Err("its layout has members but epoch 0".into());
            }
            return Ok(());
        }
        if layout.members.is_empty() {
            return Err(format!("its layout of epoch {} has no members", layout.epoch));
        }
        layout
            .ring()
            .map_err(|e| format!("its layout of epoch {} is invalid: {e}", layout.epoch))?;
        if let Some(next) = &layout.next {
            if next.members.len() > MAX_MEMBERS || next.members.is_empty() {
                return Err("the target of its layout change has no or too many members".into());
            }
        }
        layout
            .next_ring()
            .map_err(|e| format!("the target of its layout change is invalid: {e}"))?;
        Ok(())
    }
}

/// The most nodes a view may list (a bound on what gossip accepts).
pub const MAX_MEMBERS: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(id: &str, generation: u64, version: u64, heartbeat: u64, status: Status) -> NodeState {
        NodeState {
            id: NodeId(id.into()),
            address: format!("{id}:1"),
            client_address: String::new(),
            metrics_address: String::new(),
            zone: "z".into(),
            weight: 1,
            status,
            generation,
            version,
            heartbeat,
            synced_epoch: 0,
            removed_by: None,
        }
    }

    fn view(nodes: Vec<NodeState>, epoch: u64, author: &str) -> View {
        let mut v = View::new(8);
        for n in nodes {
            v.nodes.insert(n.id.clone(), n);
        }
        v.layout.epoch = epoch;
        v.layout.author = NodeId(author.into());
        v
    }

    #[test]
    fn newer_generation_wins_over_higher_heartbeat() {
        let mut a = view(vec![node("x", 1, 9, 1000, Status::Leaving)], 0, "");
        let b = view(vec![node("x", 2, 0, 1, Status::Normal)], 0, "");
        assert!(a.merge(&b));
        assert_eq!(a.status(&NodeId("x".into())), Some(Status::Normal));
        assert!(!a.merge(&b), "merging again changes nothing");
    }

    #[test]
    fn higher_epoch_layout_wins_and_ties_break_by_author() {
        let mut a = view(vec![], 3, "b");
        assert!(!a.merge(&view(vec![], 3, "a")));
        assert!(a.merge(&view(vec![], 3, "c")));
        assert_eq!(a.layout.author, NodeId("c".into()));
        assert!(a.merge(&view(vec![], 4, "a")));
        assert_eq!(a.layout.epoch, 4);
    }

    fn arb_view() -> impl Strategy<Value = View> {
        let entry = (0..4usize, 0..3u64, 0..3u64, 0..3u64, 0..4u8);
        (proptest::collection::vec(entry, 0..6), 0..3u64, 0..3usize).prop_map(
            |(entries, epoch, author)| {
                let statuses = [Status::Joining, Status::Normal, Status::Leaving, Status::Left];
                let mut v = View::new(8);
                for (id, g, ver, hb, st) in entries {
                    // The same (id, rank) always carries the same content, as it does in a real
                    // cluster, where only the owner writes its entry.
                    let status = statuses[((g + ver + hb) as usize + id) % 4];
                    let _ = st;
                    let n = node(&format!("n{id}"), g, ver, hb, status);
                    v.merge(&view(vec![n], 0, ""));
                }
                v.layout.epoch = epoch;
                v.layout.author = NodeId(format!("a{author}"));
                v.layout.owners = vec![NodeId(format!("o{epoch}{author}"))];
                v
            },
        )
    }

    proptest! {
        #[test]
        fn merge_is_commutative_associative_and_idempotent(a in arb_view(), b in arb_view(), c in arb_view()) {
            let mut ab = a.clone(); ab.merge(&b);
            let mut ba = b.clone(); ba.merge(&a);
            prop_assert_eq!(&ab, &ba);
            let mut ab_c = ab.clone(); ab_c.merge(&c);
            let mut bc = b.clone(); bc.merge(&c);
            let mut a_bc = a.clone(); a_bc.merge(&bc);
            prop_assert_eq!(&ab_c, &a_bc);
            let mut aa = a.clone();
            prop_assert!(!aa.merge(&a));
            prop_assert_eq!(aa, a);
        }
    }
}
