//! Exchanges between two in-memory stores over the simulated network.

use std::sync::Arc;

use super::*;
use crate::ring::{key_hash, partition_of_hash};
use crate::storage::MemoryEngine;
use crate::version::{Clock, Value, VersionVector};

const Q: u32 = 8;

use crate::net::sim::SimNet;

fn partition(key: &[u8]) -> PartitionId {
    partition_of_hash(key_hash(key), Q)
}

fn value(v: &str, actor: u64) -> Clock {
    Clock::new().update(&VersionVector::default(), Value::Data(v.as_bytes().to_vec()), actor)
}

fn put(store: &Store, key: &str, clock: &Clock) {
    store.merge(partition(key.as_bytes()), key.as_bytes(), clock).unwrap();
}

#[tokio::test]
async fn exchange_moves_only_the_differing_keys_and_both_sides_end_equal() {
    let a = Arc::new(Store::open(Arc::new(MemoryEngine::default()), Q).unwrap());
    let b = Arc::new(Store::open(Arc::new(MemoryEngine::default()), Q).unwrap());
    for i in 0..2000 {
        let c = value(&format!("v{i}"), 1);
        put(&a, &format!("k{i}"), &c);
        // b misses 1% of the keys
        if i % 100 != 0 {
            put(&b, &format!("k{i}"), &c);
        }
    }
    // ...and holds a concurrent version of 5 others.
    for i in [1, 2, 3, 4, 5] {
        put(&b, &format!("k{i}"), &value("other", 2));
    }
    let (ida, idb) = (NodeId("a".into()), NodeId("b".into()));
    let net = SimNet::new(Q);
    net.add(&ida, a.clone());
    net.add(&idb, b.clone());
    let mut throttle = Throttle::new(0);
    let mut total = ExchangeStats::default();
    for p in 0..Q {
        total.add(exchange(&a, &net, p, &idb, &mut throttle).await.unwrap());
    }
    assert_eq!(total.keys_pushed, 25, "20 missing + 5 divergent: {total:?}");
    assert_eq!(total.keys_pulled, 5, "the 5 divergent ones: {total:?}");
    assert!(total.keys_compared < 1000, "only differing leaves are listed: {total:?}");
    for p in 0..Q {
        assert_eq!(a.with_tree(p, |t| t.root()).unwrap(), b.with_tree(p, |t| t.root()).unwrap());
    }
    // Concurrent versions end as siblings on both sides, none lost.
    let k1 = b"k1";
    assert_eq!(a.get(partition(k1), k1).unwrap().sibling_count(), 2);
    assert_eq!(a.get(partition(k1), k1).unwrap(), b.get(partition(k1), k1).unwrap());
    // A second pass finds nothing to do.
    for p in 0..Q {
        let s = exchange(&a, &net, p, &idb, &mut throttle).await.unwrap();
        assert_eq!((s.keys_pulled, s.keys_pushed, s.keys_compared), (0, 0, 0));
    }
}

#[tokio::test]
async fn an_exchange_pages_through_the_peers_items_and_misses_nothing() {
    let a = Arc::new(Store::open(Arc::new(MemoryEngine::default()), Q).unwrap());
    let b = Arc::new(Store::open(Arc::new(MemoryEngine::default()), Q).unwrap());
    // Every key differs: a holds the even ones, b the odd ones, so every leaf is listed.
    for i in 0..600 {
        let store = if i % 2 == 0 { &a } else { &b };
        put(store, &format!("k{i}"), &value(&format!("v{i}"), 1));
    }
    let (ida, idb) = (NodeId("a".into()), NodeId("b".into()));
    let net = SimNet::new(Q);
    net.add(&ida, a.clone());
    net.add(&idb, b.clone());
    let mut throttle = Throttle::new(0);
    // Pages of at most ~4 items (key + 32-byte digest each).
    let page = Budget { items: usize::MAX, bytes: 150 };
    let mut total = ExchangeStats::default();
    for p in 0..Q {
        total.add(exchange_paged(&a, &net, p, &idb, &mut throttle, page).await.unwrap());
    }
    assert_eq!((total.keys_pulled, total.keys_pushed), (300, 300), "{total:?}");
    for p in 0..Q {
        assert_eq!(a.with_tree(p, |t| t.root()).unwrap(), b.with_tree(p, |t| t.root()).unwrap());
    }
}
