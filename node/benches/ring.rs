//! Ring lookup, the first step of every request: MD5 of the key to its partition, then the
//! partition's preference list (precomputed) and, as the coordinator does, its node ids.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use dynamo_node::ring::{Member, NodeId, Ring};

fn ring(nodes: usize, zones: usize, partitions: u32) -> Ring {
    let members = (0..nodes)
        .map(|i| Member {
            id: NodeId(format!("node-{i}")),
            zone: format!("zone-{}", i % zones),
            weight: 1,
        })
        .collect();
    Ring::new(partitions, members).expect("valid ring")
}

fn lookup(c: &mut Criterion) {
    let keys: Vec<Vec<u8>> = (0..1024).map(|i| format!("bench:{i}").into_bytes()).collect();
    let mut group = c.benchmark_group("ring");
    for (nodes, partitions) in [(3, 256), (16, 1024), (64, 4096)] {
        let ring = ring(nodes, 3, partitions);
        let id = format!("{nodes}n/{partitions}p");
        group.bench_with_input(BenchmarkId::new("partition_of", &id), &ring, |b, ring| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % keys.len();
                ring.partition_of(black_box(&keys[i]))
            })
        });
        group.bench_with_input(
            BenchmarkId::new("partition_of+preference_list", &id),
            &ring,
            |b, ring| {
                let mut i = 0;
                b.iter(|| {
                    i = (i + 1) % keys.len();
                    let p = ring.partition_of(black_box(&keys[i]));
                    ring.preference_list(p).len()
                })
            },
        );
        // What `Coordinator::preference` does per request: the list as owned node ids.
        group.bench_with_input(BenchmarkId::new("preference_ids", &id), &ring, |b, ring| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % keys.len();
                let p = ring.partition_of(black_box(&keys[i]));
                ring.preference_list(p).iter().map(|m| m.id.clone()).collect::<Vec<NodeId>>()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
