//! Unit and property tests of the Merkle trees, the level walk and the item diff.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use sha2::{Digest, Sha256};

use super::*;

/// A small shape whose leaves fill up quickly, so leaves hold several items.
fn small() -> TreeShape {
    TreeShape { fanout: 4, depth: 2 }
}

/// Digest of version number `v`.
fn dig(v: u8) -> Hash {
    version_digest(&[v])
}

/// Every node hash of every level, root first.
fn all_hashes(tree: &mut MerkleTree) -> Vec<Vec<Hash>> {
    let shape = tree.shape().clone();
    (0..=shape.depth)
        .map(|level| {
            let indices: Vec<u32> = (0..shape.level_len(level)).collect();
            tree.level_hashes(level, &indices)
        })
        .collect()
}

fn build(shape: &TreeShape, items: &BTreeMap<Vec<u8>, Hash>) -> MerkleTree {
    MerkleTree::from_items(shape.clone(), items.iter())
}

/// Every node hash computed from scratch, straight from the definitions (no `MerkleTree`):
/// the reference the incremental tree is checked against.
fn reference_hashes(shape: &TreeShape, items: &BTreeMap<Vec<u8>, Hash>) -> Vec<Vec<Hash>> {
    let mut level = vec![EMPTY; shape.leaves() as usize];
    for (key, digest) in items {
        let leaf = &mut level[shape.leaf_of(key) as usize];
        for (a, b) in leaf.iter_mut().zip(item_hash(key, digest)) {
            *a ^= b;
        }
    }
    let mut levels = vec![level];
    while levels[0].len() > 1 {
        let parents = levels[0]
            .chunks(shape.fanout as usize)
            .map(|children| {
                if children.iter().all(|c| *c == EMPTY) {
                    EMPTY
                } else {
                    Sha256::digest(children.concat()).into()
                }
            })
            .collect();
        levels.insert(0, parents);
    }
    levels
}

/// Runs a [`DiffWalk`] on `a`, answering its requests from `b` as a remote would.
fn walk(a: &mut MerkleTree, b: &mut MerkleTree, max_batch: usize) -> (Vec<u32>, usize, usize) {
    let mut walk = DiffWalk::with_max_batch(a.shape().clone(), max_batch);
    let mut round_trips = 0;
    while let Some((level, indices)) = walk.next_request() {
        assert!(indices.len() <= max_batch.max(1));
        let remote = b.level_hashes(level, &indices);
        walk.on_remote_hashes(a, level, &indices, &remote);
        round_trips += 1;
    }
    assert!(walk.is_done());
    (walk.differing_leaves(), walk.nodes_visited(), round_trips)
}

/// The leaves holding a key that is on one side only or has different digests.
fn expected_leaves(
    tree: &MerkleTree,
    a: &BTreeMap<Vec<u8>, Hash>,
    b: &BTreeMap<Vec<u8>, Hash>,
) -> Vec<u32> {
    let keys: BTreeSet<&Vec<u8>> = a.keys().chain(b.keys()).collect();
    let leaves: BTreeSet<u32> =
        keys.into_iter().filter(|k| a.get(*k) != b.get(*k)).map(|k| tree.leaf_of(k)).collect();
    leaves.into_iter().collect()
}

#[test]
fn default_shape_and_validation() {
    let shape = TreeShape::default();
    assert_eq!(shape, TreeShape { fanout: 16, depth: 3 });
    assert_eq!(shape.leaves(), 4096);
    assert_eq!(shape.validate(), Ok(()));
    assert_eq!(TreeShape { fanout: 3, depth: 2 }.validate(), Err(ShapeError::Fanout(3)));
    assert_eq!(TreeShape { fanout: 1, depth: 2 }.validate(), Err(ShapeError::Fanout(1)));
    assert_eq!(TreeShape { fanout: 512, depth: 1 }.validate(), Err(ShapeError::Fanout(512)));
    assert_eq!(TreeShape { fanout: 2, depth: 0 }.validate(), Err(ShapeError::Depth(0)));
    assert_eq!(TreeShape { fanout: 2, depth: 7 }.validate(), Err(ShapeError::Depth(7)));
    assert!(matches!(
        TreeShape { fanout: 256, depth: 3 }.validate(),
        Err(ShapeError::TooManyLeaves { .. })
    ));
    assert_eq!(TreeShape { fanout: 32, depth: 4 }.validate(), Ok(()));
    assert_eq!(TreeShape { fanout: 2, depth: 6 }.validate(), Ok(()));
    // Invalid shapes fall back to the default instead of panicking.
    let tree = MerkleTree::new(TreeShape { fanout: 0, depth: 99 });
    assert_eq!(tree.shape(), &TreeShape::default());
    assert!(MerkleTree::try_new(TreeShape { fanout: 6, depth: 1 }).is_err());
}

#[test]
fn known_vectors() {
    // SHA-256("abc").
    assert_eq!(
        version_digest(b"abc")[..4],
        [0xba, 0x78, 0x16, 0xbf],
        "version_digest is plain SHA-256"
    );
    // MD5("") = d41d8cd98f00b204e9800998ecf8427e: the low 12 bits are 0x27e.
    let tree = MerkleTree::new(TreeShape::default());
    assert_eq!(tree.leaf_of(b""), 0x27e);
    assert_eq!(TreeShape { fanout: 4, depth: 2 }.leaf_of(b""), 0xe);
    let mut expected = Sha256::new();
    expected.update(3u64.to_be_bytes());
    expected.update(b"key");
    expected.update(b"digest");
    assert_eq!(item_hash(b"key", b"digest"), <[u8; 32]>::from(expected.finalize()));
}

#[test]
fn interior_hash_is_sha256_of_children() {
    let mut tree = MerkleTree::new(TreeShape { fanout: 4, depth: 1 });
    tree.update(b"k", None, Some(&dig(1)));
    let children = tree.children(0, 0);
    assert_eq!(children.len(), 4);
    assert_eq!(children[tree.leaf_of(b"k") as usize], item_hash(b"k", &dig(1)));
    let mut hasher = Sha256::new();
    for child in &children {
        hasher.update(child);
    }
    assert_eq!(tree.root(), <[u8; 32]>::from(hasher.finalize()));
}

#[test]
fn empty_trees_are_equal_and_insert_delete_cancels() {
    let mut a = MerkleTree::new(TreeShape::default());
    let mut b = MerkleTree::new(TreeShape::default());
    assert_eq!(a.root(), EMPTY);
    assert_eq!(a.root(), b.root());
    assert_eq!(diff(&mut a, &mut b), (vec![], 1));

    b.update(b"key", None, Some(&dig(1)));
    assert_ne!(b.root(), EMPTY);
    assert_eq!(b.item_count(), 1);
    b.update(b"key", Some(&dig(1)), None);
    assert_eq!(b.item_count(), 0);
    assert_eq!(b.root(), EMPTY);
    assert_eq!(all_hashes(&mut a), all_hashes(&mut b));
    assert_eq!(diff(&mut a, &mut b), (vec![], 1));
}

#[test]
fn noop_updates_change_nothing() {
    let mut tree = MerkleTree::new(small());
    tree.update(b"k", None, None);
    assert_eq!((tree.root(), tree.item_count()), (EMPTY, 0));
    tree.update(b"k", None, Some(&dig(1)));
    let root = tree.root();
    tree.update(b"k", Some(&dig(1)), Some(&dig(1)));
    assert_eq!((tree.root(), tree.item_count()), (root, 1));
    // Overwrite keeps the count.
    tree.update(b"k", Some(&dig(1)), Some(&dig(2)));
    assert_ne!(tree.root(), root);
    assert_eq!(tree.item_count(), 1);
}

#[test]
fn clear_resets_to_empty() {
    let mut tree = MerkleTree::new(small());
    for i in 0..50u8 {
        tree.update(&[i], None, Some(&dig(i)));
    }
    assert_eq!(tree.item_count(), 50);
    tree.clear();
    assert_eq!((tree.root(), tree.item_count()), (EMPTY, 0));
    assert_eq!(tree.shape(), &small());
    tree.update(b"x", None, Some(&dig(0)));
    let mut fresh = MerkleTree::from_items(small(), [(b"x", dig(0))]);
    assert_eq!(all_hashes(&mut tree), all_hashes(&mut fresh));
}

#[test]
fn out_of_range_queries_are_empty() {
    let mut tree = MerkleTree::new(small());
    tree.update(b"k", None, Some(&dig(1)));
    assert_eq!(tree.children(0, 0).len(), 4);
    assert_eq!(tree.children(1, 3).len(), 4);
    assert!(tree.children(0, 1).is_empty());
    assert!(tree.children(1, 4).is_empty());
    assert!(tree.children(2, 0).is_empty(), "leaves have no children");
    assert!(tree.children(u32::MAX, u32::MAX).is_empty());
    assert_eq!(tree.level_hashes(2, &[0, 15, 3]).len(), 3);
    assert!(tree.level_hashes(2, &[0, 16]).is_empty());
    assert!(tree.level_hashes(3, &[0]).is_empty());
    assert!(tree.level_hashes(u32::MAX, &[0]).is_empty());
    assert!(tree.level_hashes(1, &[]).is_empty());
    // An unallocated tree answers the same way.
    let mut empty = MerkleTree::new(small());
    assert_eq!(empty.children(0, 0), vec![EMPTY; 4]);
    assert!(empty.children(0, 1).is_empty());
}

#[test]
fn one_differing_key_costs_depth_times_fanout_plus_one() {
    let shape = TreeShape::default();
    let items: BTreeMap<Vec<u8>, Hash> =
        (0..3000u32).map(|i| (format!("key-{i}").into_bytes(), dig(i as u8))).collect();
    let mut a = build(&shape, &items);
    let bound = (shape.depth * shape.fanout + 1) as usize;

    // An extra key on one side.
    let mut b = build(&shape, &items);
    b.update(b"extra", None, Some(&dig(7)));
    let (leaves, visited) = diff(&mut a, &mut b);
    assert_eq!(leaves, vec![a.leaf_of(b"extra")]);
    assert!(visited <= bound, "{visited} > {bound}");
    assert_eq!(visited, bound);
    let (walked, walked_visited, round_trips) = walk(&mut a, &mut b, DEFAULT_MAX_BATCH);
    assert_eq!((walked, walked_visited), (leaves, visited));
    assert_eq!(round_trips, shape.depth as usize + 1);

    // A different version of a shared key.
    let mut c = build(&shape, &items);
    c.update(b"key-42", Some(&dig(42)), Some(&dig(43)));
    let (leaves, visited) = diff(&mut a, &mut c);
    assert_eq!(leaves, vec![a.leaf_of(b"key-42")]);
    assert!(visited <= bound);
}

#[test]
fn walk_ignores_stale_answers_and_treats_missing_hashes_as_different() {
    let mut a = MerkleTree::new(small());
    let mut b = MerkleTree::new(small());
    let mut w = DiffWalk::new(small());
    assert_eq!(w.next_request(), Some((0, vec![0])));
    // Wrong level, wrong indices: ignored.
    w.on_remote_hashes(&mut a, 1, &[0], &[EMPTY]);
    w.on_remote_hashes(&mut a, 0, &[1], &[EMPTY]);
    assert_eq!((w.next_request(), w.nodes_visited()), (Some((0, vec![0])), 0));
    // An answer without hashes: the root counts as different, all its children are asked.
    w.on_remote_hashes(&mut a, 0, &[0], &[]);
    assert_eq!(w.next_request(), Some((1, vec![0, 1, 2, 3])));
    // Then real answers from an equal tree: nothing more differs.
    while let Some((level, indices)) = w.next_request() {
        let remote = b.level_hashes(level, &indices);
        w.on_remote_hashes(&mut a, level, &indices, &remote);
    }
    assert!(w.differing_leaves().is_empty());
    assert_eq!(w.nodes_visited(), 5);
    // A finished walk ignores further answers.
    w.on_remote_hashes(&mut a, 2, &[0], &[EMPTY]);
    assert_eq!(w.nodes_visited(), 5);
}

#[test]
fn walk_with_a_local_tree_of_another_shape_reports_everything() {
    // Both empty, so equal hashes, but the shapes differ: nothing can be concluded.
    let mut a = MerkleTree::new(TreeShape { fanout: 2, depth: 2 });
    let mut b = MerkleTree::new(small());
    let mut w = DiffWalk::new(small());
    while let Some((level, indices)) = w.next_request() {
        let remote = b.level_hashes(level, &indices);
        w.on_remote_hashes(&mut a, level, &indices, &remote);
    }
    assert_eq!(w.differing_leaves(), (0..16).collect::<Vec<u32>>());
    assert_eq!(w.nodes_visited(), 1 + 4 + 16);
    let (leaves, visited) = diff(&mut a, &mut b);
    assert_eq!((leaves, visited), (vec![0, 1, 2, 3], 0));
}

#[test]
fn diff_items_classifies_keys() {
    let local = vec![
        (b"c".to_vec(), dig(1)),
        (b"a".to_vec(), dig(1)),
        (b"b".to_vec(), dig(1)),
        (b"d".to_vec(), dig(9)),
        (b"d".to_vec(), dig(1)), // last occurrence wins
    ];
    let remote = vec![(b"e".to_vec(), dig(1)), (b"b".to_vec(), dig(2)), (b"a".to_vec(), dig(1))];
    let out = diff_items(&local, &remote);
    assert_eq!(out.missing_locally, vec![b"e".to_vec()]);
    assert_eq!(out.missing_remotely, vec![b"c".to_vec(), b"d".to_vec()]);
    assert_eq!(out.different, vec![b"b".to_vec()]);
    assert_eq!(diff_items(&[], &[]), ItemDiff::default());
}

/// A shape for property tests: small ones (crowded leaves) and the default.
fn any_shape() -> impl Strategy<Value = TreeShape> {
    prop_oneof![
        Just(TreeShape { fanout: 2, depth: 1 }),
        Just(TreeShape { fanout: 4, depth: 2 }),
        Just(TreeShape { fanout: 2, depth: 4 }),
        Just(TreeShape { fanout: 16, depth: 2 }),
        Just(TreeShape::default()),
    ]
}

/// Operations on one tree, over a small key space so keys get overwritten and deleted.
#[derive(Clone, Debug)]
enum Op {
    /// Set key `k` to version `v` (insert or overwrite).
    Put(u8, u8),
    /// Remove key `k` (no-op when absent).
    Delete(u8),
    /// Ask for the root, forcing a partial recompute between updates.
    Root,
    /// Ask for the children of a node, forcing a recompute of only part of the tree.
    Children(u32, u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..40, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        3 => (0u8..40).prop_map(Op::Delete),
        1 => Just(Op::Root),
        1 => (0u32..4, 0u32..300).prop_map(|(l, i)| Op::Children(l, i)),
    ]
}

/// Two item sets `(a, b)` sharing most items: some keys only in `a`, some only in `b`, some
/// with another digest in `b`.
fn two_sets() -> impl Strategy<Value = (BTreeMap<Vec<u8>, Hash>, BTreeMap<Vec<u8>, Hash>)> {
    (
        prop::collection::btree_map(prop::collection::vec(any::<u8>(), 0..12), any::<u8>(), 0..200),
        prop::collection::btree_map(prop::collection::vec(any::<u8>(), 0..12), any::<u8>(), 0..6),
        prop::collection::btree_map(prop::collection::vec(any::<u8>(), 0..12), any::<u8>(), 0..6),
        prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    )
        .prop_map(|(shared, a_only, b_only, changed)| {
            let mut a: BTreeMap<Vec<u8>, Hash> =
                shared.into_iter().map(|(k, v)| (k, dig(v))).collect();
            let mut b = a.clone();
            let keys: Vec<Vec<u8>> = a.keys().cloned().collect();
            for index in changed {
                if !keys.is_empty() {
                    let key = &keys[index.index(keys.len())];
                    let mut other = b[key];
                    other[0] ^= 1;
                    b.insert(key.clone(), other);
                }
            }
            for (k, v) in a_only {
                a.insert(k, dig(v));
            }
            for (k, v) in b_only {
                b.insert(k, dig(v.wrapping_add(1)));
            }
            (a, b)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn root_is_independent_of_insertion_order(
        shape in any_shape(),
        items in prop::collection::btree_map(
            prop::collection::vec(any::<u8>(), 0..16), any::<u8>(), 0..100),
        seed in any::<u64>(),
    ) {
        let mut forward = MerkleTree::new(shape.clone());
        for (k, v) in &items {
            forward.update(k, None, Some(&dig(*v)));
        }
        // A deterministic shuffle driven by the seed.
        let mut shuffled: Vec<(&Vec<u8>, &u8)> = items.iter().collect();
        shuffled.sort_by_key(|(k, _)| item_hash(k, &seed.to_be_bytes()));
        let mut other = MerkleTree::new(shape);
        for (k, v) in shuffled {
            other.update(k, None, Some(&dig(*v)));
        }
        prop_assert_eq!(forward.root(), other.root());
        prop_assert_eq!(forward.item_count(), items.len() as u64);
        prop_assert_eq!(other.item_count(), items.len() as u64);
        prop_assert_eq!(diff(&mut forward, &mut other).0, Vec::<u32>::new());
    }

    #[test]
    fn incremental_maintenance_matches_a_fresh_build(
        shape in any_shape(),
        ops in prop::collection::vec(op(), 0..200),
    ) {
        let mut tree = MerkleTree::new(shape.clone());
        let mut model: BTreeMap<Vec<u8>, Hash> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Put(k, v) => {
                    let key = vec![k];
                    let new = dig(v);
                    let old = model.insert(key.clone(), new);
                    tree.update(&key, old.as_ref().map(|d| &d[..]), Some(&new));
                }
                Op::Delete(k) => {
                    let key = vec![k];
                    let old = model.remove(&key);
                    tree.update(&key, old.as_ref().map(|d| &d[..]), None);
                }
                Op::Root => {
                    tree.root();
                }
                Op::Children(level, index) => {
                    tree.children(level, index);
                }
            }
            prop_assert_eq!(tree.item_count(), model.len() as u64);
        }
        let mut fresh = build(&shape, &model);
        let reference = reference_hashes(&shape, &model);
        prop_assert_eq!(&all_hashes(&mut tree), &reference);
        prop_assert_eq!(&all_hashes(&mut fresh), &reference);
        prop_assert_eq!(tree.root(), fresh.root());
        if model.is_empty() {
            prop_assert_eq!(tree.root(), EMPTY);
        }
    }

    #[test]
    fn diff_finds_exactly_the_differing_leaves_and_keys(
        shape in any_shape(),
        (a_items, b_items) in two_sets(),
        max_batch in 1usize..40,
    ) {
        let mut a = build(&shape, &a_items);
        let mut b = build(&shape, &b_items);
        let expected = expected_leaves(&a, &a_items, &b_items);
        let (leaves, visited) = diff(&mut a, &mut b);
        prop_assert_eq!(&leaves, &expected);
        // Each differing leaf makes at most one node per level differ.
        prop_assert!(visited <= 1 + expected.len() * (shape.depth * shape.fanout) as usize);
        prop_assert_eq!(diff(&mut b, &mut a).0, expected.clone());

        // The walk over a "network", whatever the batch size, agrees with `diff`.
        let (walked, walked_visited, _) = walk(&mut a, &mut b, max_batch);
        prop_assert_eq!(&walked, &leaves);
        prop_assert_eq!(walked_visited, visited);

        // Exchanging the items of those leaves yields exactly the differing keys.
        let in_leaves = |items: &BTreeMap<Vec<u8>, Hash>, tree: &MerkleTree| {
            let mut list: Vec<(Vec<u8>, Hash)> = items
                .iter()
                .filter(|(k, _)| leaves.binary_search(&tree.leaf_of(k)).is_ok())
                .map(|(k, d)| (k.clone(), *d))
                .collect();
            list.reverse(); // unsorted input is fine
            list
        };
        let out = diff_items(&in_leaves(&a_items, &a), &in_leaves(&b_items, &b));
        let only_b: Vec<Vec<u8>> =
            b_items.keys().filter(|k| !a_items.contains_key(*k)).cloned().collect();
        let only_a: Vec<Vec<u8>> =
            a_items.keys().filter(|k| !b_items.contains_key(*k)).cloned().collect();
        let changed: Vec<Vec<u8>> = a_items
            .iter()
            .filter(|(k, d)| b_items.get(*k).is_some_and(|other| other != *d))
            .map(|(k, _)| k.clone())
            .collect();
        prop_assert_eq!(out.missing_locally, only_b);
        prop_assert_eq!(out.missing_remotely, only_a);
        prop_assert_eq!(out.different, changed);
    }
}
