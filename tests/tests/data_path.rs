//! The data path on real processes: three `dynamo-node`s on loopback with RocksDB, N=3 R=2 W=2.

use std::time::Duration;

use dynamo_client::ClientError;
use dynamo_tests::{Cluster, ClusterOptions};
use tonic::Code;

fn sorted(mut v: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    v.sort();
    v
}

async fn poll<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn put_get_siblings_and_delete_through_any_node() {
    let cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    let (a, b, c) = (cluster.client(0), cluster.client(1), cluster.client(2));

    let put = a.put(b"cart:42", b"{\"items\":[1]}".to_vec(), vec![], None).await.unwrap();
    assert!(put.acks >= 2);
    let got = b.get(b"cart:42", None).await.unwrap();
    assert_eq!(got.values, vec![b"{\"items\":[1]}".to_vec()]);
    assert!(got.replies >= 2);

    // Two writes without a context, through different coordinators: two siblings.
    a.put(b"k", b"one".to_vec(), vec![], None).await.unwrap();
    c.put(b"k", b"two".to_vec(), vec![], None).await.unwrap();
    let got = b.get(b"k", Some(3)).await.unwrap();
    assert_eq!(sorted(got.values), vec![b"one".to_vec(), b"two".to_vec()]);
    // A write with that context supersedes both.
    b.put(b"k", b"merged".to_vec(), got.context, None).await.unwrap();
    let got = c.get(b"k", Some(3)).await.unwrap();
    assert_eq!(got.values, vec![b"merged".to_vec()]);

    // Delete with the context: gone everywhere, and a later write is not shadowed.
    a.delete(b"k", got.context, None).await.unwrap();
    let got = b.get(b"k", Some(3)).await.unwrap();
    assert!(got.values.is_empty());
    b.put(b"k", b"again".to_vec(), got.context, None).await.unwrap();
    assert_eq!(a.get(b"k", Some(3)).await.unwrap().values, vec![b"again".to_vec()]);

    // A key never written: no values, no context.
    let got = a.get(b"never", None).await.unwrap();
    assert!(got.values.is_empty() && got.context.is_empty());
}

#[tokio::test]
async fn quorums_survive_one_killed_node_and_fail_clearly_with_two() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    cluster.client(0).put(b"before", b"v".to_vec(), vec![], Some(3)).await.unwrap();

    cluster.kill(2);
    let a = cluster.client(0);
    a.put(b"during", b"v".to_vec(), vec![], None).await.unwrap();
    assert_eq!(a.get(b"during", None).await.unwrap().values, vec![b"v".to_vec()]);
    assert_eq!(cluster.client(1).get(b"before", None).await.unwrap().values, vec![b"v".to_vec()]);

    cluster.kill(1);
    let err = a.put(b"after", b"v".to_vec(), vec![], None).await.unwrap_err();
    let ClientError::Node { code, message } = &err else { panic!("unexpected {err:?}") };
    assert_eq!(*code, Code::Unavailable);
    assert!(message.starts_with("put failed: 1 of the 2 required replicas answered"), "{message}");
    assert!(message.contains("node-2") && message.contains("node-3"), "{message}");
    let err = a.get(b"before", None).await.unwrap_err().to_string();
    assert!(err.starts_with("get failed: 1 of the 2 required replicas answered"), "{err}");
    // Weaker per-request quorums still work on the surviving node.
    assert_eq!(a.get(b"before", Some(1)).await.unwrap().values, vec![b"v".to_vec()]);
}

#[tokio::test]
async fn a_killed_node_restarted_on_its_data_dir_still_has_its_data() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    let a = cluster.client(0);
    for i in 0..50 {
        a.put(format!("key-{i}").as_bytes(), format!("value-{i}").into_bytes(), vec![], Some(3))
            .await
            .unwrap();
    }
    cluster.kill(1);
    cluster.restart(1).await.unwrap();
    for i in 0..50 {
        let values = cluster.local_values(1, format!("key-{i}").as_bytes()).await.unwrap();
        assert_eq!(
            values,
            vec![format!("value-{i}").into_bytes()],
            "key-{i} on the restarted node"
        );
    }
}

#[tokio::test]
async fn read_repair_makes_a_stale_replica_current() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    cluster.kill(2);
    cluster.client(0).put(b"stale", b"fresh".to_vec(), vec![], None).await.unwrap();
    cluster.restart(2).await.unwrap();
    assert!(cluster.local_values(2, b"stale").await.unwrap().is_empty(), "node-3 missed the write");

    let got = cluster.client(1).get(b"stale", Some(3)).await.unwrap();
    assert_eq!(got.values, vec![b"fresh".to_vec()]);
    poll("node-3 is repaired", || async {
        cluster.local_values(2, b"stale").await.unwrap() == vec![b"fresh".to_vec()]
    })
    .await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_writes_nothing() {
    let cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    let a = cluster.client(0);
    let invalid = |e: ClientError| match e {
        ClientError::Node { code, message } => {
            assert_eq!(code, Code::InvalidArgument, "{message}");
            message
        }
        other => panic!("expected a node error, got {other:?}"),
    };
    assert!(invalid(a.put(b"", b"v".to_vec(), vec![], None).await.unwrap_err())
        .contains("the key is empty"));
    assert!(invalid(a.put(&[b'k'; 2000], b"v".to_vec(), vec![], None).await.unwrap_err())
        .contains("limit of 1024"));
    assert!(invalid(a.put(b"big", vec![b'x'; (1 << 20) + 1], vec![], None).await.unwrap_err())
        .contains("max_value_bytes"));
    assert!(invalid(a.get(b"k", Some(4)).await.unwrap_err()).contains("r=4 is outside 1..=3"));
    assert!(invalid(a.put(b"k", b"v".to_vec(), vec![], Some(4)).await.unwrap_err())
        .contains("w=4 is outside 1..=3"));
    assert!(invalid(
        a.put(b"k", b"v".to_vec(), b"not a context".to_vec(), None).await.unwrap_err()
    )
    .contains("context"));

    // A real context, tampered with, or used on another key.
    let real = a.put(b"k1", b"v".to_vec(), vec![], None).await.unwrap().context;
    let mut forged = real.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert!(
        invalid(a.put(b"k", b"v".to_vec(), forged, None).await.unwrap_err()).contains("context")
    );
    assert!(invalid(a.delete(b"k", real, None).await.unwrap_err()).contains("context"));

    for key in [&b"k"[..], b"big"] {
        assert!(a.get(key, Some(3)).await.unwrap().values.is_empty(), "nothing was written");
        for i in 0..3 {
            assert!(cluster.local_replica(i, key).await.unwrap().is_empty());
        }
    }

    // No node at the endpoint.
    let dead = dynamo_client::Client::new("127.0.0.1:1", Duration::from_secs(2)).unwrap();
    let err = dead.get(b"k", None).await.unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains("cannot reach a dynamo node at 127.0.0.1:1"), "{err}");
}
