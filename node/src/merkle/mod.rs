//! Per-partition Merkle trees for anti-entropy: summarise a partition's (key, version) set and
//! find the keys two replicas disagree on by exchanging a few hashes per level (pure, no I/O).
//!
//! # Structure
//!
//! A tree has a fixed [`TreeShape`]: level 0 is the root, levels `1..depth` are interior,
//! level `depth` holds the `fanout^depth` leaves, and node `i` of level `l` has the children
//! `i * fanout .. (i + 1) * fanout` of level `l + 1`.
//! The shape never depends on the data, so two replicas name the same node the same way and
//! can compare trees from lists of hashes sent over the network ([`DiffWalk`]).
//!
//! A key lives in leaf [`MerkleTree::leaf_of`]: the LOW bits of MD5(key). The ring picks the
//! partition from the TOP bits of the same MD5, so the keys of one partition still spread
//! evenly over all leaves (as long as `log2(Q) + log2(leaves) <= 128`, which always holds).
//!
//! # Hashes
//!
//! * Item hash ([`item_hash`]): `Sha256(key length as u64 big-endian || key || digest)`, where
//!   `digest` is normally [`version_digest`] of the encoded version clock. The length prefix
//!   makes the encoding unambiguous.
//! * Leaf hash: the XOR of the item hashes of its items. XOR is what makes maintenance O(1):
//!   it is commutative, associative and self-inverse, so a leaf's hash is a function of its
//!   *set* of items only (insertion order does not matter), and replacing a version is
//!   "XOR out the old item, XOR in the new one" ([`MerkleTree::update`]) without looking at
//!   the other items of the leaf (which the tree does not even store). A sorted-list hash
//!   would need every item of the leaf on each write.
//! * Interior hash: `Sha256` of the concatenation of its children's hashes, except that a
//!   node whose children are all [`EMPTY`] (all zeros) is itself [`EMPTY`]. An empty leaf XORs
//!   to zero, so an empty subtree hashes to zero at every level and two empty trees (or an
//!   unallocated one, see below) are equal without any hashing.
//!
//! # Incremental maintenance
//!
//! [`MerkleTree::update`] touches one leaf and marks its ancestors dirty, stopping at the
//! first ancestor already dirty (invariant: a dirty node's parent is dirty). Interior hashes
//! are recomputed lazily, only when asked for ([`MerkleTree::root`],
//! [`MerkleTree::children`], [`MerkleTree::level_hashes`]), and only along dirty paths: a
//! burst of writes costs O(1) each plus one O(dirty nodes) recompute at exchange time.
//!
//! Improvements over the plain design:
//! * Leaves and interior nodes are allocated on the first update and freed by
//!   [`MerkleTree::clear`]: a node holds one tree per partition it replicates, and an empty
//!   tree then costs a few words instead of `32 * fanout^depth` bytes.
//! * [`DiffWalk`] is breadth-first and batched: all the differing nodes of one level are asked
//!   for in the same request, so a comparison takes `depth + 1` round trips whatever the
//!   number of differences, and requests are capped ([`DEFAULT_MAX_BATCH`]) so a tree that
//!   differs everywhere does not turn into one oversized message.
//!
//! # Limits
//!
//! * The tree trusts its caller: `update(key, old, new)` must be given the digest actually
//!   summarised for `key` (or `None` if absent). Passing a wrong `old` leaves a stray item in
//!   the leaf, which anti-entropy then reports as a difference forever (until the tree is
//!   rebuilt with [`MerkleTree::clear`] and a scan), never a silent agreement.
//! * An XOR set hash is linear: someone choosing hundreds of (key, version) pairs could in
//!   principle build two different sets with the same leaf hash. Replicas and versions are
//!   not under a client's full control, and read repair covers what anti-entropy would miss,
//!   so this is accepted; a keyed item hash (cluster secret) would remove it.
//! * Trees are not persisted: after a restart they are rebuilt from a scan of the partition
//!   ([`MerkleTree::from_items`]).

mod walk;

#[cfg(test)]
mod tests;

pub use walk::{diff, diff_items, DiffWalk, ItemDiff, DEFAULT_MAX_BATCH};

use md5::{Digest, Md5};
use sha2::Sha256;

/// A node hash (SHA-256 size).
pub type Hash = [u8; 32];

/// Hash of an empty leaf or subtree: all zeros, so empty trees compare equal cheaply.
pub const EMPTY: Hash = [0; 32];

/// Largest number of leaves a shape may have (32 MiB of leaf hashes per tree).
pub const MAX_LEAVES: u64 = 1 << 20;

/// Why a [`TreeShape`] is not usable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// `fanout` is not 2, 4, 8, 16, 32, 64, 128 or 256.
    #[error("Merkle tree fanout {0} is invalid: use a power of two between 2 and 256")]
    Fanout(u32),
    /// `depth` is outside `1..=6`.
    #[error("Merkle tree depth {0} is invalid: use 1 to 6 levels below the root")]
    Depth(u32),
    /// `fanout^depth` is above [`MAX_LEAVES`].
    #[error(
        "Merkle tree shape {fanout}^{depth} has too many leaves (max {max}): lower the fanout \
         or the depth"
    )]
    TooManyLeaves {
        /// The requested fanout.
        fanout: u32,
        /// The requested depth.
        depth: u32,
        /// [`MAX_LEAVES`].
        max: u64,
    },
}

/// The fixed shape of a tree. Both sides of an exchange must use the same shape (it belongs
/// in cluster-wide configuration, like the number of partitions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeShape {
    /// Children per interior node: a power of two in `2..=256`. Default 16.
    pub fanout: u32,
    /// Levels of nodes below the root (the last one being the leaves): `1..=6`. Default 3.
    pub depth: u32,
}

impl Default for TreeShape {
    /// 16^3 = 4096 leaves: with a few million keys per partition, a leaf holds about a
    /// thousand keys, and a single difference costs 49 hashes over 4 round trips.
    fn default() -> Self {
        TreeShape { fanout: 16, depth: 3 }
    }
}

impl TreeShape {
    /// Checks the limits documented on the fields and [`MAX_LEAVES`]. Call it when loading
    /// configuration; [`MerkleTree::new`] falls back to the default shape on invalid input.
    pub fn validate(&self) -> Result<(), ShapeError> {
        if !(2..=256).contains(&self.fanout) || !self.fanout.is_power_of_two() {
            return Err(ShapeError::Fanout(self.fanout));
        }
        if !(1..=6).contains(&self.depth) {
            return Err(ShapeError::Depth(self.depth));
        }
        if u64::from(self.fanout).pow(self.depth) > MAX_LEAVES {
            return Err(ShapeError::TooManyLeaves {
                fanout: self.fanout,
                depth: self.depth,
                max: MAX_LEAVES,
            });
        }
        Ok(())
    }

    /// Number of leaves, `fanout^depth` (meaningful for a valid shape only).
    pub fn leaves(&self) -> u32 {
        self.level_len(self.depth)
    }

    /// Number of nodes at `level` (`fanout^level`), 0 past the leaves (meaningful for a valid
    /// shape only), e.g. to bound the indices of an exchange request.
    pub fn level_len(&self, level: u32) -> u32 {
        if level > self.depth {
            return 0;
        }
        1u32 << (self.fanout_bits() * level)
    }

    /// Leaf of `key` in a tree of this shape (valid shapes only): see
    /// [`MerkleTree::leaf_of`]. Lets the storage side select a leaf's keys without a tree.
    pub fn leaf_of(&self, key: &[u8]) -> u32 {
        let position = u128::from_be_bytes(Md5::digest(key).into());
        (position & u128::from(self.leaves() - 1)) as u32
    }

    /// `log2(fanout)`.
    fn fanout_bits(&self) -> u32 {
        self.fanout.trailing_zeros()
    }
}

/// SHA-256 of an encoded version (callers pass the encoded version clock): the `digest` that
/// [`MerkleTree::update`] and [`diff_items`] expect.
pub fn version_digest(encoded_version: &[u8]) -> Hash {
    Sha256::digest(encoded_version).into()
}

/// Hash of one item as XORed into its leaf: `Sha256(len(key) as u64 BE || key || digest)`.
pub fn item_hash(key: &[u8], digest: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update((key.len() as u64).to_be_bytes());
    hasher.update(key);
    hasher.update(digest);
    hasher.finalize().into()
}

/// The Merkle tree of one partition. See the module documentation for the layout.
#[derive(Clone, Debug)]
pub struct MerkleTree {
    /// The (valid) shape in use.
    shape: TreeShape,
    /// `nodes[l]` holds the `fanout^l` hashes of level `l`; `nodes[depth]` are the leaves.
    /// Empty (no level allocated) while the tree has never been updated: every hash is then
    /// [`EMPTY`]. Interior entries are stale where `dirty` says so.
    nodes: Vec<Vec<Hash>>,
    /// `dirty[l][i]`: interior node `i` of level `l < depth` must be recomputed before use.
    /// A dirty node's parent is always dirty, which lets `update` stop early.
    dirty: Vec<Vec<bool>>,
    /// Items currently summarised (inserts minus deletes, as reported by `update`).
    items: u64,
}

impl MerkleTree {
    /// An empty tree of the given shape; an invalid shape (see [`TreeShape::validate`]) is
    /// replaced by [`TreeShape::default`], which [`MerkleTree::shape`] then reports.
    /// Nothing is allocated until the first update.
    pub fn new(shape: TreeShape) -> MerkleTree {
        let shape = if shape.validate().is_ok() { shape } else { TreeShape::default() };
        MerkleTree { shape, nodes: Vec::new(), dirty: Vec::new(), items: 0 }
    }

    /// An empty tree, or why the shape is invalid.
    pub fn try_new(shape: TreeShape) -> Result<MerkleTree, ShapeError> {
        shape.validate()?;
        Ok(MerkleTree::new(shape))
    }

    /// A tree summarising `items` (key, digest), e.g. rebuilt from a partition scan. Keys are
    /// expected to be distinct.
    pub fn from_items<K, D, I>(shape: TreeShape, items: I) -> MerkleTree
    where
        K: AsRef<[u8]>,
        D: AsRef<[u8]>,
        I: IntoIterator<Item = (K, D)>,
    {
        let mut tree = MerkleTree::new(shape);
        for (key, digest) in items {
            tree.update(key.as_ref(), None, Some(digest.as_ref()));
        }
        tree
    }

    /// The shape in use.
    pub fn shape(&self) -> &TreeShape {
        &self.shape
    }

    /// Leaf holding `key`: the low `log2(leaves)` bits of MD5(key) read as a big-endian
    /// integer (the ring uses the top bits, so the two choices are independent).
    pub fn leaf_of(&self, key: &[u8]) -> u32 {
        self.shape.leaf_of(key)
    }

    /// Records that `key` went from version digest `old_digest` to `new_digest` (`None` =
    /// absent): insert is `(None, Some)`, delete `(Some, None)`, overwrite `(Some, Some)`.
    /// O(1) amortised; interior hashes are recomputed when next asked for.
    /// `old_digest` must be the digest this tree currently holds for `key` (see module doc).
    pub fn update(&mut self, key: &[u8], old_digest: Option<&[u8]>, new_digest: Option<&[u8]>) {
        if old_digest == new_digest {
            // Covers (None, None) and rewriting the same version: nothing changes.
            return;
        }
        self.allocate();
        let leaf = self.leaf_of(key);
        let depth = self.shape.depth as usize;
        let slot = &mut self.nodes[depth][leaf as usize];
        for digest in [old_digest, new_digest].into_iter().flatten() {
            xor_into(slot, &item_hash(key, digest));
        }
        match (old_digest, new_digest) {
            (None, Some(_)) => self.items += 1,
            (Some(_), None) => self.items = self.items.saturating_sub(1),
            _ => {}
        }
        // Mark the path dirty bottom-up; an already dirty node has dirty ancestors.
        let bits = self.shape.fanout_bits();
        for level in (0..depth).rev() {
            let index = (leaf >> (bits * (depth - level) as u32)) as usize;
            let flag = &mut self.dirty[level][index];
            if *flag {
                break;
            }
            *flag = true;
        }
    }

    /// The root hash ([`EMPTY`] for an empty tree). Recomputes dirty nodes first.
    pub fn root(&mut self) -> Hash {
        self.node_hash(0, 0)
    }

    /// Hashes of the `fanout` children of node `index` at `level` (level 0 = root, index 0;
    /// level `depth` = leaves), in index order: nodes `index * fanout ..` of `level + 1`.
    /// Empty if `level >= depth` (leaves have no children) or `index` is out of range.
    pub fn children(&mut self, level: u32, index: u32) -> Vec<Hash> {
        if level >= self.shape.depth || index >= self.shape.level_len(level) {
            return Vec::new();
        }
        let first = index << self.shape.fanout_bits();
        (first..first + self.shape.fanout).map(|child| self.node_hash(level + 1, child)).collect()
    }

    /// Hashes of nodes `indices` of `level`, in the same order (batched exchange requests).
    /// Empty if `level > depth` or any index is out of range, so a malformed request gets an
    /// answer the requester cannot mistake for a complete one.
    pub fn level_hashes(&mut self, level: u32, indices: &[u32]) -> Vec<Hash> {
        let len = self.shape.level_len(level);
        if level > self.shape.depth || indices.iter().any(|&index| index >= len) {
            return Vec::new();
        }
        indices.iter().map(|&index| self.node_hash(level, index)).collect()
    }

    /// Items currently summarised, as counted from the updates (inserts minus deletes).
    pub fn item_count(&self) -> u64 {
        self.items
    }

    /// Forgets every item and frees the node storage (same shape), e.g. before a rebuild.
    pub fn clear(&mut self) {
        self.nodes = Vec::new();
        self.dirty = Vec::new();
        self.items = 0;
    }

    /// Allocates every level on first use (all [`EMPTY`], nothing dirty).
    fn allocate(&mut self) {
        if !self.nodes.is_empty() {
            return;
        }
        let depth = self.shape.depth;
        self.nodes = (0..=depth).map(|l| vec![EMPTY; self.shape.level_len(l) as usize]).collect();
        self.dirty = (0..depth).map(|l| vec![false; self.shape.level_len(l) as usize]).collect();
    }

    /// Hash of an in-range node, recomputing it (and its dirty descendants) if dirty.
    fn node_hash(&mut self, level: u32, index: u32) -> Hash {
        let (l, i) = (level as usize, index as usize);
        if self.nodes.is_empty() {
            return EMPTY;
        }
        if level == self.shape.depth || !self.dirty[l][i] {
            return self.nodes[l][i];
        }
        let first = index << self.shape.fanout_bits();
        let mut hasher = Sha256::new();
        let mut all_empty = true;
        for child in first..first + self.shape.fanout {
            let hash = self.node_hash(level + 1, child);
            all_empty &= hash == EMPTY;
            hasher.update(hash);
        }
        let hash = if all_empty { EMPTY } else { hasher.finalize().into() };
        self.nodes[l][i] = hash;
        self.dirty[l][i] = false;
        hash
    }
}

/// `acc ^= other`, byte by byte.
fn xor_into(acc: &mut Hash, other: &Hash) {
    for (a, b) in acc.iter_mut().zip(other) {
        *a ^= b;
    }
}
