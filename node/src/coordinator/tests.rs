//! Coordinator state machines against a simulated network: quorum reached and missed,
//! timeouts, forwarding, read repair and input validation, deterministic and without sleeps
//! (tokio's paused clock advances time only when every task waits).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::watch;

use super::*;
use crate::config::Limits;
use crate::net::sim::{remote, Fault, SimNet};
use crate::ring::{Member, Ring};
use crate::storage::MemoryEngine;
use crate::version::ContextSealer;

struct Sim {
    net: Arc<SimNet>,
    nodes: HashMap<NodeId, Arc<Coordinator<SimNet>>>,
    ring: Arc<Ring>,
}

fn id(s: &str) -> NodeId {
    NodeId(s.into())
}

impl Sim {
    fn new(count: usize, n: usize, r: usize, w: usize) -> Sim {
        Sim::with_hint_window(count, n, r, w, Duration::from_secs(3600))
    }

    fn with_hint_window(count: usize, n: usize, r: usize, w: usize, hint_window: Duration) -> Sim {
        let members: Vec<Member> = (1..=count)
            .map(|i| Member { id: id(&format!("n{i}")), zone: format!("z{}", i % 3), weight: 1 })
            .collect();
        let ring = Arc::new(Ring::new(64, members.clone()).unwrap());
        let (_tx, rx) = watch::channel(Arc::new(Placement::fixed((*ring).clone())));
        let net = Arc::new(SimNet::new(64));
        let settings = Settings {
            hint_window,
            n,
            r,
            w,
            timeout: Duration::from_millis(500),
            limits: Limits { max_siblings: 3, ..Limits::default() },
            partitions: 64,
        };
        let nodes: HashMap<NodeId, Arc<Coordinator<SimNet>>> = members
            .iter()
            .map(|m| {
                let store = Arc::new(Store::open(Arc::new(MemoryEngine::default()), 64).unwrap());
                net.add(&m.id, store.clone());
                let c = Arc::new(Coordinator::new(
                    m.id.clone(),
                    settings.clone(),
                    rx.clone(),
                    store,
                    net.clone(),
                    ContextSealer::new(b"secret"),
                ));
                // Weak: the network must not keep the coordinators (which hold it) alive.
                let weak = Arc::downgrade(&c);
                net.on_forward(
                    &m.id,
                    Arc::new(move |put: ForwardedPut| -> BoxFuture<'static, _> {
                        let node = weak.upgrade();
                        Box::pin(async move {
                            let node = node.ok_or(PeerError::Unreachable("stopped".into()))?;
                            node.put(&put.key, put.value, &put.context, put.w, put.hops)
                                .await
                                .map_err(remote)
                        })
                    }),
                );
                (m.id.clone(), c)
            })
            .collect();
        Sim { net, nodes, ring }
    }

    fn node(&self, name: &str) -> &Arc<Coordinator<SimNet>> {
        &self.nodes[&id(name)]
    }

    fn replicas(&self, key: &[u8], n: usize) -> Vec<NodeId> {
        self.ring
            .preference_list(self.ring.partition_of(key))
            .iter()
            .take(n)
            .map(|m| m.id.clone())
            .collect()
    }

    fn fault(&self, node: &NodeId, fault: Option<Fault>) {
        self.net.fault(node, fault);
    }

    fn local_values(&self, node: &NodeId, key: &[u8]) -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = self.nodes[node]
            .local_replica(key, None)
            .unwrap()
            .live_values()
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect();
        v.sort();
        v
    }

    fn calls(&self) -> Vec<(&'static str, NodeId)> {
        self.net.calls()
    }
}

fn sorted(mut v: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    v.sort();
    v
}

#[tokio::test(start_paused = true)]
async fn put_then_get_round_trips_on_every_replica() {
    let sim = Sim::new(3, 3, 2, 2);
    let out = sim.node("n1").put(b"k", Some(b"v".to_vec()), b"", None, 0).await.unwrap();
    assert!(out.acks >= 2);
    let got = sim.node("n2").get(b"k", None).await.unwrap();
    assert_eq!(got.values, vec![b"v".to_vec()]);
    assert!(got.replies >= 2);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for n in sim.replicas(b"k", 3) {
        assert_eq!(sim.local_values(&n, b"k"), vec![b"v".to_vec()], "replica {n}");
    }
}

#[tokio::test(start_paused = true)]
async fn blind_writes_become_siblings_and_a_contextual_write_collapses_them() {
    let sim = Sim::new(3, 3, 2, 2);
    sim.node("n1").put(b"k", Some(b"a".to_vec()), b"", None, 0).await.unwrap();
    sim.node("n2").put(b"k", Some(b"b".to_vec()), b"", None, 0).await.unwrap();
    let got = sim.node("n3").get(b"k", Some(3)).await.unwrap();
    assert_eq!(sorted(got.values), vec![b"a".to_vec(), b"b".to_vec()]);
    sim.node("n3").put(b"k", Some(b"c".to_vec()), &got.context, None, 0).await.unwrap();
    let got = sim.node("n1").get(b"k", Some(3)).await.unwrap();
    assert_eq!(got.values, vec![b"c".to_vec()]);
    // Delete with that context: the key reads as absent, with a context to write over it.
    sim.node("n2").put(b"k", None, &got.context, None, 0).await.unwrap();
    let got = sim.node("n1").get(b"k", Some(3)).await.unwrap();
    assert!(got.values.is_empty());
    assert!(!got.context.is_empty());
}

#[tokio::test(start_paused = true)]
async fn one_replica_down_still_reaches_quorum_two_down_fails_fast_with_counts() {
    let sim = Sim::new(3, 3, 2, 2);
    sim.fault(&id("n3"), Some(Fault::Down));
    sim.node("n1").put(b"k", Some(b"v".to_vec()), b"", None, 0).await.unwrap();
    assert_eq!(sim.node("n1").get(b"k", None).await.unwrap().values, vec![b"v".to_vec()]);

    sim.fault(&id("n2"), Some(Fault::Down));
    let start = tokio::time::Instant::now();
    let err = sim.node("n1").put(b"k", Some(b"w".to_vec()), b"", None, 0).await.unwrap_err();
    assert!(start.elapsed() < Duration::from_millis(500), "fails as soon as quorum is impossible");
    let msg = err.to_string();
    assert!(msg.starts_with("put failed: 1 of the 2 required replicas answered"), "{msg}");
    assert!(msg.contains("n2: unreachable") && msg.contains("n3: unreachable"), "{msg}");
    let err = sim.node("n1").get(b"k", None).await.unwrap_err().to_string();
    assert!(err.starts_with("get failed: 1 of the 2 required"), "{err}");
    // R=1 still reads the local replica.
    assert!(sim.node("n1").get(b"k", Some(1)).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_hanging_replica_makes_the_request_time_out_with_a_clear_error() {
    let sim = Sim::new(3, 3, 3, 3);
    sim.fault(&id("n2"), Some(Fault::Hang));
    let start = tokio::time::Instant::now();
    let err = sim.node("n1").put(b"k", Some(b"v".to_vec()), b"", None, 0).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_millis(500));
    let msg = err.to_string();
    assert!(msg.contains("2 of the 3 required replicas answered within 500 ms"), "{msg}");
    assert!(msg.contains("n2: no answer in time"), "{msg}");
    // With W=2 the same write succeeds without waiting for the hanging replica.
    let start = tokio::time::Instant::now();
    sim.node("n1").put(b"k", Some(b"v".to_vec()), b"", Some(2), 0).await.unwrap();
    assert!(start.elapsed() < Duration::from_millis(500));
}

#[tokio::test(start_paused = true)]
async fn non_replicas_forward_puts_to_the_first_reachable_replica() {
    let sim = Sim::new(5, 3, 2, 2);
    let key = (0..1000)
        .map(|i| format!("key-{i}"))
        .find(|k| !sim.replicas(k.as_bytes(), 3).contains(&id("n1")))
        .unwrap();
    let key = key.as_bytes();
    let replicas = sim.replicas(key, 3);
    sim.calls();
    sim.node("n1").put(key, Some(b"v".to_vec()), b"", None, 0).await.unwrap();
    let calls = sim.calls();
    assert_eq!(calls[0], ("coordinate_put", replicas[0].clone()));
    assert!(sim.local_values(&id("n1"), key).is_empty(), "the forwarder stores nothing");

    sim.fault(&replicas[0], Some(Fault::Down));
    sim.node("n1").put(key, Some(b"w".to_vec()), b"", None, 0).await.unwrap();
    let calls = sim.calls();
    assert_eq!(calls[0], ("coordinate_put", replicas[0].clone()));
    assert_eq!(calls[1], ("coordinate_put", replicas[1].clone()));

    // The first replica applies the write but the answer is lost: the forwarder must not hand
    // it to a second replica, which would write it again as a second version (a sibling).
    // (Every replica resets, so whichever the forwarder tries first applies it.)
    for r in &replicas {
        sim.fault(r, Some(Fault::Reset));
    }
    let err = sim.node("n1").put(key, Some(b"z".to_vec()), b"", None, 0).await.unwrap_err();
    let calls = sim.calls();
    assert_eq!(calls.iter().filter(|(c, _)| *c == "coordinate_put").count(), 1, "{calls:?}");
    assert!(err.to_string().contains("may have been applied"), "{err}");

    for r in &replicas {
        sim.fault(r, Some(Fault::Down));
    }
    let err = sim.node("n1").put(key, Some(b"x".to_vec()), b"", None, 0).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("no replica of this key could coordinate the put"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn read_repair_brings_a_stale_replica_up_to_date() {
    let sim = Sim::new(3, 3, 2, 2);
    sim.fault(&id("n3"), Some(Fault::Down));
    sim.node("n1").put(b"k", Some(b"v".to_vec()), b"", None, 0).await.unwrap();
    sim.fault(&id("n3"), None);
    assert!(sim.local_values(&id("n3"), b"k").is_empty());
    sim.calls();
    let got = sim.node("n1").get(b"k", None).await.unwrap();
    assert_eq!(got.values, vec![b"v".to_vec()]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(sim.local_values(&id("n3"), b"k"), vec![b"v".to_vec()]);
    let repairs =
        sim.calls().into_iter().filter(|(c, n)| *c == "replicate" && *n == id("n3")).count();
    assert_eq!(repairs, 1, "exactly the stale replica is repaired, once");
}

#[tokio::test(start_paused = true)]
async fn bad_requests_are_rejected_and_write_nothing() {
    let sim = Sim::new(3, 3, 2, 2);
    let n1 = sim.node("n1");
    let cases: Vec<(Result<PutOutcome>, &str)> = vec![
        (n1.put(b"", Some(b"v".to_vec()), b"", None, 0).await, "the key is empty"),
        (
            n1.put(&[b'k'; 1025], Some(b"v".to_vec()), b"", None, 0).await,
            "more than the limit of 1024",
        ),
        (n1.put(b"k", Some(vec![0; (1 << 20) + 1]), b"", None, 0).await, "max_value_bytes"),
        (n1.put(b"k", Some(b"v".to_vec()), b"", Some(4), 0).await, "w=4 is outside 1..=3"),
        (n1.put(b"k", Some(b"v".to_vec()), b"", Some(0), 0).await, "w=0 is outside 1..=3"),
        (n1.put(b"k", Some(b"v".to_vec()), b"garbage-context", None, 0).await, "invalid context"),
    ];
    for (result, expected) in cases {
        let err = result.unwrap_err().to_string();
        assert!(err.contains(expected), "{err:?} should contain {expected:?}");
    }
    assert!(n1.get(b"k", Some(4)).await.unwrap_err().to_string().contains("r=4 is outside 1..=3"));
    // A context from another key is rejected too.
    let other = n1.put(b"other", Some(b"v".to_vec()), b"", None, 0).await.unwrap();
    let err = n1.put(b"k", Some(b"v".to_vec()), &other.context, None, 0).await.unwrap_err();
    assert!(matches!(err, Error::Context(_)), "{err}");
    for n in sim.nodes.keys() {
        assert!(sim.nodes[n].local_replica(b"k", None).unwrap().is_empty(), "{n} stored something");
    }
}

#[tokio::test(start_paused = true)]
async fn sibling_limit_rejects_the_write_that_would_exceed_it() {
    let sim = Sim::new(3, 3, 2, 2);
    for v in ["a", "b", "c"] {
        sim.node("n1").put(b"k", Some(v.as_bytes().to_vec()), b"", None, 0).await.unwrap();
    }
    let err = sim.node("n1").put(b"k", Some(b"d".to_vec()), b"", None, 0).await.unwrap_err();
    assert!(matches!(err, Error::TooManySiblings { siblings: 4, max: 3 }), "{err}");
    let got = sim.node("n1").get(b"k", Some(3)).await.unwrap();
    assert_eq!(got.values.len(), 3, "the rejected write left nothing behind");
    sim.node("n1").put(b"k", Some(b"merged".to_vec()), &got.context, None, 0).await.unwrap();
    assert_eq!(sim.node("n2").get(b"k", None).await.unwrap().values, vec![b"merged".to_vec()]);
}

#[tokio::test(start_paused = true)]
async fn sloppy_quorum_sends_a_down_replicas_write_to_a_stand_in_as_a_hint() {
    let sim = Sim::new(5, 3, 2, 3);
    let key = b"sloppy";
    let preference: Vec<NodeId> =
        sim.ring.preference_list(sim.ring.partition_of(key)).iter().map(|m| m.id.clone()).collect();
    let (coordinator, down, stand_in) = (&preference[0], &preference[2], &preference[3]);
    sim.fault(down, Some(Fault::Down));
    // W=3 needs the stand-in's acknowledgement: the write succeeds only through the hint.
    let out = sim.nodes[coordinator].put(key, Some(b"v".to_vec()), b"", None, 0).await.unwrap();
    assert_eq!(out.acks, 3);
    let store = &sim.nodes[stand_in].store;
    let partition = sim.ring.partition_of(key);
    assert!(
        store.get(partition, key).unwrap().is_empty(),
        "a stand-in keeps hints apart from its replicas"
    );
    assert_eq!(store.hint(down, partition, key).unwrap().live_values(), vec![&b"v"[..]]);
    assert_eq!(store.hint_stats()[down].count, 1);
    // The next request already knows the replica is down and goes to the stand-in directly.
    sim.calls();
    sim.nodes[coordinator].put(key, Some(b"w".to_vec()), &out.context, None, 0).await.unwrap();
    assert!(!sim.calls().iter().any(|(c, n)| *c == "replicate" && n == down));
    // A get with R=3 reads the stand-in's hint too.
    let got = sim.nodes[&preference[1]].get(key, Some(3)).await.unwrap();
    assert_eq!(got.values, vec![b"w".to_vec()]);
}

#[test]
fn replicas_are_distinct() {
    let sim = Sim::new(5, 3, 2, 2);
    for i in 0..100 {
        let r: HashSet<NodeId> = sim.replicas(format!("k{i}").as_bytes(), 3).into_iter().collect();
        assert_eq!(r.len(), 3);
    }
}

#[tokio::test]
async fn hints_are_kept_only_for_members_down_less_than_the_window() {
    use crate::net::Liveness as _;
    use crate::version::VersionVector;
    let sim = Sim::with_hint_window(4, 3, 2, 2, Duration::from_millis(50));
    let node = sim.node("n1");
    let clock = Clock::new().update(&VersionVector::default(), Value::Data(b"v".to_vec()), 9);
    let err = node.apply_replica(b"k", &clock, Some(&id("stranger"))).unwrap_err();
    assert!(matches!(err, Error::HintRefused(_)), "{err}");
    assert!(err.to_string().contains("not a member"), "{err}");
    // n2 is down, but only just: its hints are kept.
    sim.net.lost(&id("n2"), "test");
    node.apply_replica(b"k", &clock, Some(&id("n2"))).unwrap();
    tokio::time::sleep(Duration::from_millis(80)).await;
    let err = node.apply_replica(b"k2", &clock, Some(&id("n2"))).unwrap_err();
    assert!(err.to_string().contains("past the hint window"), "{err}");
    // Others still get hints.
    node.apply_replica(b"k2", &clock, Some(&id("n3"))).unwrap();
}
