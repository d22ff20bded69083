//! Comparing two trees level by level from hash lists ([`DiffWalk`]), and the keys that
//! differ once the differing leaves are known ([`diff_items`]).

use std::collections::HashMap;

use super::{Hash, MerkleTree, TreeShape};

/// Most node hashes a [`DiffWalk`] asks for in one request: 1024 hashes are a 32 KiB answer,
/// well under gRPC's default 4 MiB message limit even with framing.
pub const DEFAULT_MAX_BATCH: usize = 1024;

/// Level-by-level comparison of a local tree with a remote one, as a pure state machine: the
/// caller sends [`DiffWalk::next_request`] to the remote, which answers with
/// [`MerkleTree::level_hashes`], and feeds the answer to [`DiffWalk::on_remote_hashes`],
/// until `next_request` returns `None`; then [`DiffWalk::differing_leaves`] is the result.
///
/// The walk is breadth-first: it asks for the root, then for the children of every differing
/// node of a level in one batch (split at `max_batch` indices), so it needs `depth + 1`
/// round trips plus one per extra batch. One differing key costs `1 + depth * fanout`
/// compared hashes.
///
/// Both trees must have the walk's shape. If the local tree does not, every node is treated
/// as differing (the walk still terminates, and reports every leaf it reaches); a remote
/// answer with missing hashes likewise counts the unanswered nodes as differing. Reporting
/// too much only costs a larger key exchange; reporting too little would hide divergence.
#[derive(Clone, Debug)]
pub struct DiffWalk {
    /// Shape of both trees (valid: an invalid one is replaced like in [`MerkleTree::new`]).
    shape: TreeShape,
    /// Most indices per request (at least 1).
    max_batch: usize,
    /// Level whose nodes are being compared; past `depth` once done.
    level: u32,
    /// Nodes of `level` still to compare, in increasing order; `frontier[cursor..]` are
    /// pending, and the next request is the head of that slice.
    frontier: Vec<u32>,
    /// Position in `frontier` of the first node not yet compared.
    cursor: usize,
    /// Children of the differing nodes of `level`: the next level's frontier.
    next_frontier: Vec<u32>,
    /// Differing leaves found so far, increasing.
    differing: Vec<u32>,
    /// Hashes compared so far.
    visited: usize,
}

impl DiffWalk {
    /// A walk starting at the root, with [`DEFAULT_MAX_BATCH`] indices per request at most.
    pub fn new(shape: TreeShape) -> DiffWalk {
        DiffWalk::with_max_batch(shape, DEFAULT_MAX_BATCH)
    }

    /// A walk with at most `max_batch` indices per request (0 is taken as 1). An invalid
    /// shape is replaced by the default one, as [`MerkleTree::new`] does.
    pub fn with_max_batch(shape: TreeShape, max_batch: usize) -> DiffWalk {
        DiffWalk {
            shape: if shape.validate().is_ok() { shape } else { TreeShape::default() },
            max_batch: max_batch.max(1),
            level: 0,
            frontier: vec![0],
            cursor: 0,
            next_frontier: Vec::new(),
            differing: Vec::new(),
            visited: 0,
        }
    }

    /// The node hashes to ask the remote for: `(level, indices)`, or `None` once the walk is
    /// done. Asking again before an answer returns the same request (retries are safe).
    pub fn next_request(&self) -> Option<(u32, Vec<u32>)> {
        self.pending().map(|indices| (self.level, indices.to_vec()))
    }

    /// Feeds the remote's answer to the current request: `remote_hashes[k]` is the remote
    /// hash of node `indices[k]` of `level`. Nodes whose hash differs from `local`'s are
    /// descended into (or, at the leaf level, reported). An answer that is not for the
    /// current request (stale, duplicated, or another level) is ignored and changes nothing.
    pub fn on_remote_hashes(
        &mut self,
        local: &mut MerkleTree,
        level: u32,
        indices: &[u32],
        remote_hashes: &[Hash],
    ) {
        if self.pending() != Some(indices) || level != self.level {
            return;
        }
        let local_hashes = if local.shape() == &self.shape {
            local.level_hashes(level, indices)
        } else {
            Vec::new()
        };
        let fanout = self.shape.fanout;
        for (k, &index) in indices.iter().enumerate() {
            let same = match (local_hashes.get(k), remote_hashes.get(k)) {
                (Some(ours), Some(theirs)) => ours == theirs,
                _ => false,
            };
            if same {
                continue;
            }
            if level >= self.shape.depth {
                self.differing.push(index);
            } else {
                // In range: `index` came from our own frontier and the shape is valid.
                let first = index * fanout;
                self.next_frontier.extend(first..first + fanout);
            }
        }
        self.visited += indices.len();
        self.cursor += indices.len();
        if self.cursor >= self.frontier.len() {
            self.level += 1;
            self.frontier = std::mem::take(&mut self.next_frontier);
            self.cursor = 0;
        }
    }

    /// True once every differing node has been followed down to the leaves.
    pub fn is_done(&self) -> bool {
        self.pending().is_none()
    }

    /// The differing leaves found so far, in increasing order (complete once done).
    pub fn differing_leaves(&self) -> Vec<u32> {
        self.differing.clone()
    }

    /// Number of node hashes compared so far (the exchange's cost in hashes).
    pub fn nodes_visited(&self) -> usize {
        self.visited
    }

    /// Indices of the current request, if any.
    fn pending(&self) -> Option<&[u32]> {
        if self.level > self.shape.depth || self.cursor >= self.frontier.len() {
            return None;
        }
        let end = self.frontier.len().min(self.cursor + self.max_batch);
        Some(&self.frontier[self.cursor..end])
    }
}

/// Compares two local trees: the differing leaves (increasing) and the number of node hashes
/// compared. Runs a [`DiffWalk`] answered from `b`, so it behaves exactly like an exchange
/// over the network. Trees of different shapes cannot be compared node by node: then every
/// leaf of `a` is reported, with 0 hashes compared.
pub fn diff(a: &mut MerkleTree, b: &mut MerkleTree) -> (Vec<u32>, usize) {
    if a.shape() != b.shape() {
        return ((0..a.shape().leaves()).collect(), 0);
    }
    let mut walk = DiffWalk::new(a.shape().clone());
    while let Some((level, indices)) = walk.next_request() {
        let remote = b.level_hashes(level, &indices);
        walk.on_remote_hashes(a, level, &indices, &remote);
    }
    (walk.differing_leaves(), walk.nodes_visited())
}

/// The keys two replicas disagree on, from the sides' (key, digest) lists of the differing
/// leaves. Each list is sorted by key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ItemDiff {
    /// Keys only the remote has: fetch them.
    pub missing_locally: Vec<Vec<u8>>,
    /// Keys only the local side has: push them.
    pub missing_remotely: Vec<Vec<u8>>,
    /// Keys both have with different version digests: exchange and merge their versions.
    pub different: Vec<Vec<u8>>,
}

/// Compares the (key, digest) lists of both sides (unsorted is fine). If a key appears more
/// than once in one list, its last occurrence counts. O(n + m) expected, plus sorting the
/// output.
pub fn diff_items(local: &[(Vec<u8>, Hash)], remote: &[(Vec<u8>, Hash)]) -> ItemDiff {
    let ours: HashMap<&[u8], &Hash> = local.iter().map(|(k, d)| (k.as_slice(), d)).collect();
    let theirs: HashMap<&[u8], &Hash> = remote.iter().map(|(k, d)| (k.as_slice(), d)).collect();
    let mut out = ItemDiff::default();
    for (&key, &digest) in &ours {
        match theirs.get(key) {
            None => out.missing_remotely.push(key.to_vec()),
            Some(&other) if other != digest => out.different.push(key.to_vec()),
            Some(_) => {}
        }
    }
    for &key in theirs.keys() {
        if !ours.contains_key(key) {
            out.missing_locally.push(key.to_vec());
        }
    }
    out.missing_locally.sort_unstable();
    out.missing_remotely.sort_unstable();
    out.different.sort_unstable();
    out
}
