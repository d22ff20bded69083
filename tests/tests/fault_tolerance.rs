//! Sloppy quorum with hinted handoff, and Merkle-tree anti-entropy, on real processes.

use std::time::Duration;

use dynamo_tests::{Cluster, ClusterOptions};

async fn poll<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn total_hints(cluster: &Cluster, target: &str) -> u64 {
    let mut total = 0;
    for i in 0..cluster.nodes.len() {
        if !cluster.is_running(i) {
            continue;
        }
        let status = cluster.status(i).await.unwrap();
        total += status.hints.iter().filter(|h| h.target == target).map(|h| h.count).sum::<u64>();
    }
    total
}

/// Keys (of `count` written) for which node `down` is one of the N replicas.
async fn keys_replicated_by(cluster: &Cluster, down: usize, count: usize) -> Vec<String> {
    let mut keys = Vec::new();
    for i in 0..count {
        let key = format!("key-{i}");
        if cluster.replicas_of(key.as_bytes(), 3).await.unwrap().contains(&down) {
            keys.push(key);
        }
    }
    keys
}

async fn holds_all(cluster: &Cluster, node: usize, keys: &[String]) -> bool {
    for key in keys {
        if cluster.local_values(node, key.as_bytes()).await.unwrap()
            != vec![format!("v-{key}").into_bytes()]
        {
            return false;
        }
    }
    true
}

async fn write_keys(cluster: &Cluster, via: usize, count: usize) {
    let client = cluster.client(via);
    for i in 0..count {
        let key = format!("key-{i}");
        client.put(key.as_bytes(), format!("v-{key}").into_bytes(), vec![], None).await.unwrap();
    }
}

fn four_nodes() -> ClusterOptions {
    ClusterOptions { nodes: 4, zones: 2, ..ClusterOptions::default() }
}

#[tokio::test]
async fn writes_for_a_down_replica_land_as_hints_and_are_handed_off_without_reads() {
    let mut cluster = Cluster::start(four_nodes()).await.unwrap();
    let down = 3;
    let target = cluster.nodes[down].id.clone();
    cluster.kill(down);
    write_keys(&cluster, 0, 200).await;
    let expected = keys_replicated_by(&cluster, down, 200).await;
    assert!(expected.len() > 50, "node-4 replicates about 3/4 of the keys");
    // Replication to stand-ins may finish just after the client's W acknowledgements.
    poll("one hint per write meant for the down node", Duration::from_secs(10), || async {
        total_hints(&cluster, &target).await == expected.len() as u64
    })
    .await;
    println!("{} hints held for {target} while it was down", expected.len());
    // The others report for how long they have found it down (the operator's grace period
    // for a forced removal counts on it).
    let down_for = |status: dynamo_client::ClusterStatus| {
        status.nodes.iter().find(|n| n.id == target).and_then(|n| n.down_for)
    };
    let first = down_for(cluster.status(0).await.unwrap()).expect("seen down");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = down_for(cluster.status(1).await.unwrap()).expect("seen down by another");
    let third = down_for(cluster.status(0).await.unwrap()).expect("still down");
    assert!(third >= first + Duration::from_millis(1500), "{first:?} then {third:?}");
    assert!(second > Duration::ZERO);

    cluster.restart(down).await.unwrap();
    poll("every hint is delivered", Duration::from_secs(30), || async {
        total_hints(&cluster, &target).await == 0
    })
    .await;
    assert!(
        holds_all(&cluster, down, &expected).await,
        "the returned node holds every write meant for it"
    );
}

#[tokio::test]
async fn hints_survive_a_restart_of_the_stand_in() {
    let mut cluster = Cluster::start(four_nodes()).await.unwrap();
    let down = 3;
    let target = cluster.nodes[down].id.clone();
    cluster.kill(down);
    write_keys(&cluster, 0, 100).await;
    let expected = keys_replicated_by(&cluster, down, 100).await;
    poll("every hint is stored", Duration::from_secs(10), || async {
        total_hints(&cluster, &target).await == expected.len() as u64
    })
    .await;
    // Restart every stand-in holding hints before the target comes back.
    for i in 0..3 {
        let held: u64 = cluster.status(i).await.unwrap().hints.iter().map(|h| h.count).sum();
        if held > 0 {
            cluster.kill(i);
            cluster.restart(i).await.unwrap();
        }
    }
    assert_eq!(total_hints(&cluster, &target).await, expected.len() as u64, "hints are durable");
    cluster.restart(down).await.unwrap();
    poll("hints delivered after the stand-ins restarted", Duration::from_secs(30), || async {
        total_hints(&cluster, &target).await == 0
    })
    .await;
    assert!(holds_all(&cluster, down, &expected).await);
}

#[tokio::test]
async fn anti_entropy_alone_restores_a_wiped_replica() {
    let opts = ClusterOptions { anti_entropy_interval_ms: 50, ..ClusterOptions::default() };
    let mut cluster = Cluster::start(opts).await.unwrap();
    write_keys(&cluster, 0, 300).await;
    cluster.kill(2);
    cluster.wipe(2).unwrap();
    cluster.restart(2).await.unwrap();
    let keys: Vec<String> = (0..300).map(|i| format!("key-{i}")).collect();
    assert!(
        cluster.local_values(2, b"key-0").await.unwrap().is_empty(),
        "the wipe removed the data"
    );
    poll(
        "anti-entropy restored all 300 keys on the wiped node",
        Duration::from_secs(60),
        || async { holds_all(&cluster, 2, &keys).await },
    )
    .await;
}

#[tokio::test]
async fn repair_moves_about_what_is_missing_not_the_whole_data_set() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    write_keys(&cluster, 0, 1000).await;
    cluster.kill(2);
    // 1% more keys while node-3 is down: with 3 nodes and N=3 there is no stand-in, so only
    // anti-entropy can bring them to node-3.
    let client = cluster.client(0);
    let missing: Vec<String> = (0..10).map(|i| format!("late-{i}")).collect();
    for key in &missing {
        client.put(key.as_bytes(), format!("v-{key}").into_bytes(), vec![], None).await.unwrap();
    }
    cluster.restart(2).await.unwrap();
    assert!(!holds_all(&cluster, 2, &missing).await);
    let stats = cluster.client(2).repair(None).await.unwrap();
    println!(
        "repair: {} partitions, {} exchanges, compared {} keys, pulled {}, pushed {} (10 of 1010 were missing)",
        stats.partitions, stats.exchanges, stats.keys_compared, stats.keys_pulled, stats.keys_pushed
    );
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
    // Each missing key is pulled once from each of the two other replicas at most.
    assert!((10..=20).contains(&stats.keys_pulled), "pulled {}", stats.keys_pulled);
    assert_eq!(stats.keys_pushed, 0);
    assert!(
        stats.keys_compared < 1010 / 2,
        "compared {} items: only differing leaves are listed",
        stats.keys_compared
    );
    assert!(holds_all(&cluster, 2, &missing).await);
    let again = cluster.client(2).repair(None).await.unwrap();
    assert_eq!((again.keys_pulled, again.keys_pushed), (0, 0), "nothing left to repair");
}

#[tokio::test]
async fn divergent_writes_on_both_sides_of_a_partition_end_as_siblings_everywhere() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    cluster.partition(&[&[0], &[1, 2]]).await.unwrap();
    cluster.client(0).put(b"split", b"left".to_vec(), vec![], Some(1)).await.unwrap();
    cluster.client(1).put(b"split", b"right".to_vec(), vec![], Some(1)).await.unwrap();
    cluster.heal().await.unwrap();
    assert_eq!(cluster.local_values(0, b"split").await.unwrap(), vec![b"left".to_vec()]);
    let stats = cluster.client(0).repair(None).await.unwrap();
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
    for i in 0..3 {
        assert_eq!(
            cluster.local_values(i, b"split").await.unwrap(),
            vec![b"left".to_vec(), b"right".to_vec()],
            "node {i} holds both sides"
        );
    }
}
