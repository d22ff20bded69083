//! The partition-aware client on real processes: it sends each request to a replica of its key
//! (by the cluster's own ring), and follows the ring through a join while writing, without a
//! failed request, ending on the cluster's new epoch.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dynamo_client::Client;
use dynamo_tests::{Cluster, ClusterOptions};

/// Every key's first endpoint is the first replica in the cluster's ring.
async fn assert_routed_to_replicas(cluster: &Cluster, client: &Client) {
    let placement = cluster.placement().await.unwrap();
    for i in 0..200 {
        let key = format!("route-{i}");
        let first = &client.endpoints_for(key.as_bytes())[0];
        let replica = placement.replicas(key.as_bytes())[0];
        assert_eq!(first, &cluster.nodes[replica].address, "{key} goes to its first replica");
    }
}

/// The highest layout epoch any running node reports, once they all report the same one.
async fn settled_epoch(cluster: &Cluster) -> Option<u64> {
    let mut epochs = Vec::new();
    for i in 0..cluster.nodes.len() {
        epochs.push(cluster.client(i).ring().await.ok()?.epoch);
    }
    epochs.windows(2).all(|w| w[0] == w[1]).then(|| epochs[0])
}

#[tokio::test]
async fn a_partition_aware_client_writes_through_a_join_and_ends_on_the_new_ring() {
    // Paced transfers keep the layout change under way for a while (the nodes route with
    // their committed ring and a next one meanwhile).
    let opts = ClusterOptions { transfer_keys_per_sec: 400, ..ClusterOptions::default() };
    let mut cluster = Cluster::start(opts).await.unwrap();
    let client = cluster.routing_client(Duration::from_secs(5));
    assert!(client.is_partition_aware());
    let before = client.refresh_ring().await.unwrap().expect("a partition-aware client");
    assert_routed_to_replicas(&cluster, &client).await;
    for i in 0..400 {
        client.put(format!("pre-{i}").as_bytes(), b"v".to_vec(), vec![], None).await.unwrap();
    }

    let stop = Arc::new(AtomicBool::new(false));
    // Joined below, after the join settled.
    let writer = tokio::spawn({
        let (client, stop) = (client.clone(), stop.clone());
        async move {
            let mut acked = BTreeMap::new();
            let mut failed = Vec::new();
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let (key, value) = (format!("live-{i}"), format!("v{i}"));
                match client.put(key.as_bytes(), value.clone().into_bytes(), vec![], None).await {
                    Ok(_) => {
                        acked.insert(key, value);
                    }
                    Err(e) => failed.push(format!("{key}: {e}")),
                }
                i += 1;
                // Paces the writer so the joining node's transfers get the CPU too.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (acked, failed)
        }
    });

    cluster.add_node().await.unwrap();
    cluster.wait_members(4).await.unwrap();
    // The writer keeps going until the client has fetched the ring the nodes settled on: the
    // answers to its puts carry the new epoch.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let epoch = loop {
        if let Some(epoch) = settled_epoch(&cluster).await {
            if client.ring_epoch() == Some(epoch) {
                break epoch;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the client routes with epoch {:?}, the cluster is at {:?}",
            client.ring_epoch(),
            settled_epoch(&cluster).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop.store(true, Ordering::Relaxed);
    let (acked, failed) = writer.await.unwrap();
    println!("{} writes during the join, epoch {before} -> {epoch}", acked.len());
    assert!(epoch > before, "the join moved the epoch from {before} to {epoch}");
    assert!(
        failed.is_empty(),
        "{} writes failed, e.g. {:?}",
        failed.len(),
        &failed[..3.min(failed.len())]
    );
    assert!(acked.len() > 50, "only {} writes during the join", acked.len());

    for (key, value) in &acked {
        let got = client.get(key.as_bytes(), None).await.unwrap();
        assert!(got.values.contains(&value.clone().into_bytes()), "{key}={value} is lost");
    }
    assert_eq!(client.ring_epoch(), Some(epoch));
    // Routing follows the new ring, in which the new node replicates some keys.
    assert_routed_to_replicas(&cluster, &client).await;
    let new_node = &cluster.nodes[3].address;
    assert!(
        (0..200).any(|i| client.endpoints_for(format!("route-{i}").as_bytes())[0] == *new_node),
        "no key is routed to the new node"
    );
}
