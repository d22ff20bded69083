//! Gossip membership on real processes: nodes join and leave one at a time while clients
//! write, partitions move before ownership flips, and nothing acknowledged is lost.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dynamo_client::MemberState;
use dynamo_tests::{Cluster, ClusterOptions};

/// Writes unique keys through every node in turn until stopped; returns the acknowledged ones.
fn spawn_writer(
    cluster: &Cluster,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(BTreeMap<String, String>, Vec<String>)> {
    let clients: Vec<_> = (0..cluster.nodes.len()).map(|i| cluster.client(i)).collect();
    tokio::spawn(async move {
        let mut acked = BTreeMap::new();
        let mut failed = Vec::new();
        let mut i = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let key = format!("live-{i}");
            let value = format!("v{i}");
            match clients[i % clients.len()]
                .put(key.as_bytes(), value.clone().into_bytes(), vec![], None)
                .await
            {
                Ok(_) => {
                    acked.insert(key, value);
                }
                Err(e) => failed.push(e.to_string()),
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (acked, failed)
    })
}

async fn assert_all_readable(cluster: &Cluster, via: usize, acked: &BTreeMap<String, String>) {
    let client = cluster.client(via);
    for (key, value) in acked {
        let got = client.get(key.as_bytes(), Some(3)).await.unwrap();
        assert!(
            got.values.contains(&value.clone().into_bytes()),
            "acknowledged {key}={value} is lost: {:?}",
            got.values
        );
    }
}

/// Every key has exactly N replicas on the nodes its preference list names.
async fn assert_replicas_in_place(cluster: &Cluster, keys: &[&String]) {
    let ring = cluster.ring(0).await.unwrap();
    for key in keys {
        let replicas = cluster.replicas_of(key.as_bytes(), 3).await.unwrap();
        assert_eq!(replicas.len(), 3);
        for r in &replicas {
            let values = cluster.local_values(*r, key.as_bytes()).await.unwrap();
            assert!(!values.is_empty(), "{key} is missing on its replica {}", cluster.nodes[*r].id);
        }
        assert!(ring.members().len() >= 3);
    }
}

#[tokio::test]
async fn grow_from_three_to_five_and_shrink_back_while_writing() {
    let opts = ClusterOptions { anti_entropy_interval_ms: 0, ..ClusterOptions::default() };
    let mut cluster = Cluster::start(opts).await.unwrap();
    // Some data before the changes.
    for i in 0..300 {
        cluster
            .client(0)
            .put(format!("pre-{i}").as_bytes(), b"v".to_vec(), vec![], Some(3))
            .await
            .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(&cluster, stop.clone());

    let d = cluster.add_node().await.unwrap();
    cluster.wait_members(4).await.unwrap();
    let e = cluster.add_node().await.unwrap();
    cluster.wait_members(5).await.unwrap();
    let status = cluster.status(0).await.unwrap();
    assert!(status.nodes.iter().all(|n| n.membership == MemberState::Normal), "{:?}", status.nodes);
    // Status reports the node's background workers, and they run.
    let names: Vec<&str> = status.workers.iter().map(|w| w.name.as_str()).collect();
    for worker in ["gossip", "handoff", "prober", "readiness", "transfer"] {
        assert!(names.contains(&worker), "{worker} missing from {:?}", status.workers);
    }
    let gossip = status.workers.iter().find(|w| w.name == "gossip").unwrap();
    assert!(gossip.steps > 0 && gossip.state != "stopped", "{gossip:?}");

    cluster.decommission(e).await.unwrap();
    cluster.wait_members(4).await.unwrap();
    cluster.decommission(d).await.unwrap();
    cluster.wait_members(3).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let (acked, failed) = writer.await.unwrap();
    println!(
        "writes during the membership changes: {} acknowledged, {} failed",
        acked.len(),
        failed.len()
    );
    for e in failed.iter().take(10) {
        println!("  failed write: {e}");
    }
    assert!(acked.len() > 100);

    // The decommissioned nodes are out of the ring and own nothing.
    let ring = cluster.ring(0).await.unwrap();
    assert_eq!(ring.members().len(), 3);
    for gone in [d, e] {
        assert!(ring.member(&dynamo_api::ring::NodeId(cluster.nodes[gone].id.clone())).is_none());
        cluster.kill(gone);
    }
    assert_all_readable(&cluster, 0, &acked).await;
    let pre: Vec<String> = (0..300).map(|i| format!("pre-{i}")).collect();
    let sample: Vec<&String> = pre.iter().chain(acked.keys()).step_by(7).collect();
    assert_replicas_in_place(&cluster, &sample).await;
}

#[tokio::test]
async fn a_node_killed_during_its_transfer_finishes_after_a_restart() {
    let opts = ClusterOptions { transfer_keys_per_sec: 400, ..ClusterOptions::default() };
    let mut cluster = Cluster::start(opts).await.unwrap();
    let client = cluster.client(0);
    for i in 0..1500 {
        client
            .put(format!("k{i}").as_bytes(), format!("v{i}").into_bytes(), vec![], Some(3))
            .await
            .unwrap();
    }
    let d = cluster.add_node().await.unwrap();
    // Wait until the new node is streaming, then kill it mid-transfer.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = cluster.status(d).await.unwrap();
        if s.transfers.iter().any(|t| t.keys_sent > 0) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no transfer started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.kill(d);
    cluster.restart(d).await.unwrap();
    cluster.wait_members(4).await.unwrap();
    let replicated: Vec<String> = (0..1500).map(|i| format!("k{i}")).collect();
    for key in replicated.iter().step_by(5) {
        let replicas = cluster.replicas_of(key.as_bytes(), 3).await.unwrap();
        for r in replicas {
            let values = cluster.local_values(r, key.as_bytes()).await.unwrap();
            assert!(!values.is_empty(), "{key} missing on replica {}", cluster.nodes[r].id);
        }
    }
}

#[tokio::test]
async fn a_restarted_node_rejoins_with_its_data_without_a_new_transfer() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    for i in 0..100 {
        cluster
            .client(0)
            .put(format!("k{i}").as_bytes(), b"v".to_vec(), vec![], Some(3))
            .await
            .unwrap();
    }
    let epoch = cluster.client(0).ring().await.unwrap().epoch;
    cluster.kill(1);
    cluster.restart(1).await.unwrap();
    cluster.wait_members(3).await.unwrap();
    let status = cluster.status(1).await.unwrap();
    let me = status.nodes.iter().find(|n| n.is_self).unwrap();
    assert_eq!(me.membership, MemberState::Normal);
    assert_eq!(cluster.client(1).ring().await.unwrap().epoch, epoch, "no layout change");
    assert!(status.transfers.is_empty());
    for i in 0..100 {
        assert_eq!(
            cluster.local_values(1, format!("k{i}").as_bytes()).await.unwrap(),
            vec![b"v".to_vec()]
        );
    }
}

#[tokio::test]
async fn a_crashed_node_is_removed_by_force_and_its_data_survives_on_the_others() {
    let opts = ClusterOptions { nodes: 4, ..ClusterOptions::default() };
    let mut cluster = Cluster::start(opts).await.unwrap();
    cluster.wait_members(4).await.unwrap();
    let keys: Vec<String> = (0..400).map(|i| format!("k{i}")).collect();
    for key in &keys {
        cluster.client(0).put(key.as_bytes(), b"v".to_vec(), vec![], Some(2)).await.unwrap();
    }
    let dead = 3;
    let dead_id = cluster.nodes[dead].id.clone();
    cluster.kill(dead);
    // Writes while it is down: stand-ins keep hints for it.
    let mut keys = keys;
    for i in 0..200 {
        let key = format!("during-{i}");
        cluster.client(i % 3).put(key.as_bytes(), b"v".to_vec(), vec![], Some(2)).await.unwrap();
        keys.push(key);
    }
    let hinted: u64 = {
        let mut total = 0;
        for i in 0..3 {
            total += cluster.status(i).await.unwrap().hints.iter().map(|h| h.count).sum::<u64>();
        }
        total
    };
    assert!(hinted > 0, "no write was hinted for the dead node");

    // Without --force the request names the way out; nothing changes.
    let err = cluster.client(0).decommission(&dead_id, false).await.unwrap_err().to_string();
    assert!(err.contains("--force"), "{err}");
    let status = cluster.status(1).await.unwrap();
    let entry = status.nodes.iter().find(|n| n.id == dead_id).unwrap();
    assert_eq!(entry.membership, MemberState::Normal);

    let answer = cluster.client(0).decommission(&dead_id, true).await.unwrap();
    assert_eq!(answer.state, MemberState::Leaving);
    cluster.wait_members(3).await.unwrap();
    // Every live node ends up reporting it as left.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for i in 0..3 {
        loop {
            let status = cluster.status(i).await.unwrap();
            if status.nodes.iter().any(|n| n.id == dead_id && n.membership == MemberState::Left) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{dead_id} never left: {status:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let ring = cluster.ring(0).await.unwrap();
    assert!(ring.member(&dynamo_api::ring::NodeId(dead_id.clone())).is_none());
    // The hints held for it went to the current replicas instead, and are gone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for i in 0..3 {
        loop {
            let status = cluster.status(i).await.unwrap();
            if status.hints.iter().all(|h| h.count == 0) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "hints remain: {:?}", status.hints);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // With N=3 on the three remaining nodes, each holds every key: the partitions the dead node
    // owned were pulled from the surviving replicas before ownership moved.
    for key in &keys {
        for i in 0..3 {
            assert_eq!(
                cluster.local_values(i, key.as_bytes()).await.unwrap(),
                vec![b"v".to_vec()],
                "{key} on {}",
                cluster.nodes[i].id
            );
        }
    }
}

#[tokio::test]
async fn after_a_join_settles_old_replicas_delete_the_partitions_they_gave_away() {
    let opts = ClusterOptions { cleanup_after_ms: 1000, ..ClusterOptions::default() };
    let mut cluster = Cluster::start(opts).await.unwrap();
    let keys: Vec<String> = (0..300).map(|i| format!("k{i}")).collect();
    for key in &keys {
        cluster.client(0).put(key.as_bytes(), b"v".to_vec(), vec![], Some(3)).await.unwrap();
    }
    cluster.add_node().await.unwrap();
    cluster.add_node().await.unwrap();
    cluster.wait_members(5).await.unwrap();
    // Every key ends up on exactly its 3 replicas of the 5: the others deleted their copies.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut extra = Vec::new();
        for key in keys.iter().step_by(3) {
            let replicas = cluster.replicas_of(key.as_bytes(), 3).await.unwrap();
            for i in 0..5 {
                let held = !cluster.local_values(i, key.as_bytes()).await.unwrap().is_empty();
                assert!(held || !replicas.contains(&i), "{key} missing on its replica {i}");
                if held && !replicas.contains(&i) {
                    extra.push((key.clone(), i));
                }
            }
        }
        if extra.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stale copies remain, e.g. {:?}",
            &extra[..extra.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for key in &keys {
        let got = cluster.client(4).get(key.as_bytes(), Some(3)).await.unwrap();
        assert_eq!(got.values, vec![b"v".to_vec()], "{key}");
    }
}
