//! Fuzz targets, driven by proptest, for every decoder a network message reaches beyond the
//! version codec (fuzzed in `version::codec`'s own tests): sealed contexts, gossiped views and
//! their layouts, and page cursors. Arbitrary and mutated inputs must never panic, and whatever
//! is accepted must be usable. `DYNAMO_FUZZ_CASES` runs more cases (CI runs the default, a few
//! seconds); a crash found becomes a regression test below.

use std::collections::BTreeMap;
use std::sync::Arc;

use dynamo_node::membership::view::{Layout, NodeState, Status, View};
use dynamo_node::ring::{Member, NodeId, Ring};
use dynamo_node::storage::{Budget, MemoryEngine, Store};
use dynamo_node::version::{Clock, ContextSealer, Value, VersionVector};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("DYNAMO_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512)
}

/// A valid view of `members` nodes over 8 partitions, with a committed layout.
fn valid_view(members: usize) -> View {
    let ms: Vec<Member> = (0..members)
        .map(|i| Member { id: NodeId(format!("n{i}")), zone: format!("z{}", i % 3), weight: 1 })
        .collect();
    let ring = Ring::new(8, ms.clone()).unwrap();
    let mut nodes = BTreeMap::new();
    for m in &ms {
        nodes.insert(
            m.id.clone(),
            NodeState {
                id: m.id.clone(),
                address: format!("{}:7071", m.id),
                client_address: format!("{}:7070", m.id),
                metrics_address: String::new(),
                zone: m.zone.clone(),
                weight: 1,
                status: Status::Normal,
                generation: 1,
                version: 0,
                heartbeat: 3,
                synced_epoch: 1,
                removed_by: None,
            },
        );
    }
    View {
        nodes,
        layout: Layout {
            epoch: 1,
            author: NodeId("n0".into()),
            partitions: 8,
            members: ms,
            owners: ring.owners(),
            next: None,
        },
    }
}

/// What must hold for any view gossip accepts: its rings build, and merging it is safe.
fn accepted_view_is_usable(view: &View) {
    if view.validate(8).is_ok() {
        view.layout.ring().expect("a validated layout is a ring");
        view.layout.next_ring().expect("a validated target is a ring");
        let mut ours = valid_view(3);
        ours.merge(view);
        ours.layout.ring().expect("a merge with a validated view leaves a ring");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn arbitrary_bytes_as_a_view_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(view) = serde_json::from_slice::<View>(&bytes) {
            accepted_view_is_usable(&view);
        }
    }

    /// Byte flips of a real view's JSON reach the fields the checks are about.
    #[test]
    fn mutated_views_are_refused_or_usable(
        members in 1usize..5,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut bytes = serde_json::to_vec(&valid_view(members)).unwrap();
        for (at, byte) in flips {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        if let Ok(view) = serde_json::from_slice::<View>(&bytes) {
            accepted_view_is_usable(&view);
        }
    }

    /// Structural edits (owners, members, partitions, epoch) of a valid view.
    #[test]
    fn edited_layouts_are_refused_or_usable(
        members in 1usize..5,
        drop_owner in any::<bool>(),
        owner in "[a-z0-9]{1,3}",
        partitions in prop_oneof![Just(8u32), any::<u32>()],
        epoch in prop_oneof![Just(0u64), Just(1u64), any::<u64>()],
        drop_member in any::<bool>(),
    ) {
        let mut view = valid_view(members);
        if drop_owner {
            view.layout.owners.pop();
        } else {
            view.layout.owners[0] = NodeId(owner);
        }
        view.layout.partitions = partitions;
        view.layout.epoch = epoch;
        if drop_member {
            view.layout.members.pop();
        }
        accepted_view_is_usable(&view);
    }

    #[test]
    fn arbitrary_contexts_never_panic_and_forgeries_fail(
        key in proptest::collection::vec(any::<u8>(), 0..20),
        sealed in proptest::collection::vec(any::<u8>(), 0..200),
        at in any::<prop::sample::Index>(),
    ) {
        let sealer = ContextSealer::new(b"secret");
        let _ = sealer.open(&key, &sealed);
        let vv = VersionVector::from_entries(vec![(1, 3), (7, 2)]);
        let mut good = sealer.seal(&key, &vv);
        prop_assert_eq!(sealer.open(&key, &good).unwrap(), vv);
        let i = at.index(good.len());
        good[i] ^= 0x01;
        prop_assert!(sealer.open(&key, &good).is_err(), "a flipped bit must not verify");
    }

    /// A page cursor is whatever key a peer sends: any bytes, any partition.
    #[test]
    fn arbitrary_page_cursors_never_panic(
        partition in prop_oneof![0u32..8, any::<u32>()],
        after in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
        leaves in proptest::collection::vec(any::<u32>(), 0..8),
        bytes in 0usize..200,
    ) {
        let store = Store::open(Arc::new(MemoryEngine::default()), 8).unwrap();
        let clock = Clock::new().update(&VersionVector::default(), Value::Data(b"v".to_vec()), 1);
        for i in 0..20u8 {
            store.merge(i as u32 % 8, &[i, i], &clock).unwrap();
        }
        let budget = Budget { items: 5, bytes };
        if let Ok((page, _)) = store.partition_page(partition, after.as_deref(), budget) {
            prop_assert!(page.len() <= 5);
            if let (Some(a), Some((first, _))) = (&after, page.first()) {
                prop_assert!(first > a, "a page starts after its cursor");
            }
        }
        let _ = store.items_in_leaves(partition, &leaves, after.as_deref(), None, budget);
    }
}
