//! Dotted version vector sets on the data path: a coordinator's update (put with the context of
//! the previous write), the sync that merges replies and replicas, the encoding every store
//! read and write goes through, and context sealing (HMAC) done once per request.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use dynamo_node::version::{Actor, Clock, ContextSealer, Value, VersionVector};

const A: Actor = 0x1111;
const B: Actor = 0x2222;
const C: Actor = 0x3333;

fn value(i: u8) -> Value {
    Value::Data(vec![i; 1024])
}

/// A key written `writes` times by actor `a`, each write with the previous one's context.
fn history(a: Actor, writes: u8) -> Clock {
    (0..writes).fold(Clock::new(), |c, i| c.update(&c.context(), value(i), a))
}

fn versions(c: &mut Criterion) {
    let mut group = c.benchmark_group("version");
    let one = history(A, 5);
    let ctx = one.context();
    group.bench_function("update/overwrite_1KiB", |b| {
        b.iter(|| black_box(&one).update(black_box(&ctx), value(9), A))
    });
    group.bench_function("update/blind_sibling", |b| {
        b.iter(|| black_box(&one).update(&VersionVector::new(), value(9), B))
    });
    let same = one.clone();
    group.bench_function("sync/equal_replicas", |b| b.iter(|| black_box(&one).sync(&same)));
    let newer = one.update(&ctx, value(7), A);
    group.bench_function("sync/stale_vs_newer", |b| b.iter(|| black_box(&one).sync(&newer)));
    // Three actors, concurrent writes: three siblings to merge.
    let x = one.update(&ctx, value(1), A);
    let y = one.update(&ctx, value(2), B);
    let z = one.update(&ctx, value(3), C);
    group.bench_function("sync/three_siblings", |b| b.iter(|| black_box(&x).sync(&y).sync(&z)));
    let bytes = one.encode();
    group.bench_function("encode_1KiB", |b| b.iter(|| black_box(&one).encode()));
    group.bench_function("decode_1KiB", |b| b.iter(|| Clock::decode(black_box(&bytes))));
    let sealer = ContextSealer::new(b"bench secret");
    let sealed = sealer.seal(b"bench:42", &ctx);
    group.bench_function("context/seal", |b| b.iter(|| sealer.seal(b"bench:42", black_box(&ctx))));
    group.bench_function("context/open", |b| {
        b.iter(|| sealer.open(b"bench:42", black_box(&sealed)))
    });
    group.finish();
}

criterion_group!(benches, versions);
criterion_main!(benches);
