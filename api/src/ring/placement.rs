//! Where keys live at one moment: the committed ring and, during a layout change, the ring
//! partitions are moving to. The coordinator writes to both while a change is under way, and
//! the partition-aware client routes with the same rules.

use super::{NodeId, PartitionId, Ring};

/// Where keys live now, and where they are moving to during a layout change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Placement {
    /// Grows with every layout change (a proposal or a commit); a higher epoch is newer.
    pub epoch: u64,
    /// The committed ring; `None` until this node has joined a cluster.
    pub current: Option<Ring>,
    /// The ring being moved to while partitions are transferred.
    pub next: Option<Ring>,
}

/// The node has no ring yet, so it cannot place keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "this node has not joined a cluster yet: it is waiting for the ring from its seeds (check \
     --seeds and that the seed nodes run)"
)]
pub struct NotJoined;

impl Placement {
    /// A fixed placement (tests, and nodes that need no membership changes).
    pub fn fixed(ring: Ring) -> Placement {
        Placement { epoch: 1, current: Some(ring), next: None }
    }

    /// The committed ring, or [`NotJoined`] while there is none.
    pub fn ring(&self) -> Result<&Ring, NotJoined> {
        self.current.as_ref().ok_or(NotJoined)
    }

    /// The replicas of `partition` in the committed ring (the first `n` of its preference
    /// list), then those of the next ring that are not among them: the nodes that may
    /// coordinate a write that was forwarded to them (one sent by a client must reach a
    /// replica of the committed ring).
    pub fn replicas(&self, partition: PartitionId, n: usize) -> Vec<NodeId> {
        let mut out: Vec<NodeId> = Vec::new();
        for ring in self.current.iter().chain(self.next.iter()) {
            for id in ring.replicas(partition, n) {
                if !out.contains(&id) {
                    out.push(id);
                }
            }
        }
        out
    }
}
