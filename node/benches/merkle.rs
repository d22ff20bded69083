//! Merkle tree maintenance on every write (`MerkleTree::update` with the old and new version
//! digests), and the root recomputation anti-entropy does before comparing trees.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use dynamo_node::merkle::{version_digest, MerkleTree, TreeShape};
use dynamo_node::storage::TREE_SHAPE;

fn digest(key: usize, version: u32) -> [u8; 32] {
    version_digest(format!("{key}/{version}").as_bytes())
}

fn tree(shape: &TreeShape, items: usize) -> MerkleTree {
    MerkleTree::from_items(
        shape.clone(),
        (0..items).map(|k| (format!("bench:{k}").into_bytes(), digest(k, 0))),
    )
}

fn merkle(c: &mut Criterion) {
    let mut group = c.benchmark_group("merkle");
    let keys: Vec<Vec<u8>> = (0..10_000).map(|k| format!("bench:{k}").into_bytes()).collect();
    let old: Vec<[u8; 32]> = (0..keys.len()).map(|k| digest(k, 0)).collect();
    let new: Vec<[u8; 32]> = (0..keys.len()).map(|k| digest(k, 1)).collect();
    for (name, shape) in [("16x2", TREE_SHAPE), ("16x3", TreeShape { fanout: 16, depth: 3 })] {
        let mut base = tree(&shape, keys.len());
        // Clean: every interior hash computed, as after the first exchange.
        base.root();
        // One overwrite as the store does it. Passes over the keys alternate between the two
        // versions, so every update replaces the digest the tree holds and the tree keeps its
        // size.
        group.bench_function(format!("update/{name}"), |b| {
            let mut t = base.clone();
            let mut n = 0usize;
            b.iter(|| {
                let i = n % keys.len();
                let (from, to) =
                    if (n / keys.len()).is_multiple_of(2) { (&old, &new) } else { (&new, &old) };
                n += 1;
                t.update(black_box(&keys[i]), Some(&from[i]), Some(&to[i]));
            })
        });
        // One overwrite, then the root: the cost of the first exchange after a write.
        group.bench_function(format!("update+root/{name}"), |b| {
            let mut i = 0;
            b.iter_batched_ref(
                || base.clone(),
                |t| {
                    i = (i + 1) % keys.len();
                    t.update(&keys[i], Some(&old[i]), Some(&new[i]));
                    t.root()
                },
                BatchSize::SmallInput,
            )
        });
        // Every leaf dirty: the root after a burst of writes (e.g. a load).
        group.bench_function(format!("root_after_rebuild/{name}/10k"), |b| {
            b.iter_batched_ref(|| tree(&shape, keys.len()), |t| t.root(), BatchSize::LargeInput)
        });
    }
    group.finish();
}

criterion_group!(benches, merkle);
criterion_main!(benches);
