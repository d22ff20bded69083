//! The nodes' Prometheus metrics on real processes: after a known workload (puts, gets, a node
//! killed for a while, writes that miss their quorum, reads that repair), the counters moved by
//! exactly the expected amounts and the histograms counted every request.

use std::time::Duration;

use dynamo_client::metrics::{sum, Sample};
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

/// One metric of node `i` now, minus what it was in `before` (a scrape of the same process).
async fn delta(
    cluster: &Cluster,
    i: usize,
    before: &[Sample],
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    let now = cluster.metrics(i).await.unwrap();
    sum(&now, name, labels) - sum(before, name, labels)
}

/// A metric summed over the running nodes.
async fn cluster_sum(cluster: &Cluster, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut total = 0.0;
    for i in (0..cluster.nodes.len()).filter(|i| cluster.is_running(*i)) {
        total += sum(&cluster.metrics(i).await.unwrap(), name, labels);
    }
    total
}

fn value(key: &str) -> Vec<u8> {
    format!("v-{key}").into_bytes()
}

#[tokio::test]
async fn counters_move_by_the_workload_and_histograms_count_every_request() {
    let mut cluster =
        Cluster::start(ClusterOptions { nodes: 4, zones: 2, ..ClusterOptions::default() })
            .await
            .unwrap();
    let client = cluster.client(0);
    let (k, m, k2, c) = (40, 30, 40, 8);
    let target = cluster.nodes[3].id.clone();
    for i in 0..4 {
        let samples = cluster.metrics(i).await.unwrap();
        assert_eq!(sum(&samples, "dynamo_members", &[("state", "normal")]), 4.0, "node {i}");
        assert!(sum(&samples, "process_open_fds", &[]) > 0.0, "node {i}");
    }
    let mut baselines = Vec::new();
    for i in 0..4 {
        baselines.push(cluster.metrics(i).await.unwrap());
    }
    let before = baselines[0].clone();
    let before_stored = cluster_sum(&cluster, "dynamo_hints_stored_total", &[]).await;

    // k puts and m gets with every node up, all through node 0.
    let mut forwarded = 0;
    let mut acknowledged = Vec::new();
    for i in 0..k {
        let key = format!("a-{i}");
        client.put(key.as_bytes(), value(&key), vec![], None).await.unwrap();
        if !cluster.replicas_of(key.as_bytes(), 3).await.unwrap().contains(&0) {
            forwarded += 1;
        }
        acknowledged.push(key);
    }
    for i in 0..m {
        let key = format!("a-{}", i % k);
        assert_eq!(client.get(key.as_bytes(), None).await.unwrap().values, [value(&key)]);
    }

    // Node 4 down: k2 more puts succeed (sloppy quorum), one hint per write it replicates.
    cluster.kill(3);
    let mut hinted = 0;
    for i in 0..k2 {
        let key = format!("b-{i}");
        client.put(key.as_bytes(), value(&key), vec![], None).await.unwrap();
        let replicas = cluster.replicas_of(key.as_bytes(), 3).await.unwrap();
        forwarded += usize::from(!replicas.contains(&0));
        hinted += usize::from(replicas.contains(&3));
        acknowledged.push(key);
    }
    assert!(hinted > 10, "node 4 replicates about 3/4 of the keys");
    let held = [("target", target.as_str())];
    poll(
        "the stand-ins hold one hint per write meant for node 4",
        Duration::from_secs(10),
        || async { cluster_sum(&cluster, "dynamo_hints_keys", &held).await == hinted as f64 },
    )
    .await;
    let stored = cluster_sum(&cluster, "dynamo_hints_stored_total", &[]).await - before_stored;
    assert_eq!(stored, hinted as f64);
    poll("node 1 counts node 4 as down", Duration::from_secs(10), || async {
        sum(&cluster.metrics(0).await.unwrap(), "dynamo_peers_down", &[]) == 1.0
    })
    .await;

    // Node 3 down too: c writes asking for w=3 fail on their quorum. Their keys have nodes 1
    // and 2 among their replicas, so no stand-in is left and no hint is written: the third
    // replica stays stale until a read repairs it.
    let mut stale: Vec<(String, usize)> = Vec::new();
    for i in 0.. {
        if stale.len() == c {
            break;
        }
        let key = format!("c-{i}");
        let replicas = cluster.replicas_of(key.as_bytes(), 3).await.unwrap();
        if replicas.contains(&0) && replicas.contains(&1) {
            let third = replicas.into_iter().find(|r| *r > 1).unwrap();
            stale.push((key, third));
        }
    }
    cluster.kill(2);
    for (key, _) in &stale {
        let error = client.put(key.as_bytes(), value(key), vec![], Some(3)).await.unwrap_err();
        assert!(error.to_string().contains("of the 3 required"), "{error}");
    }
    assert_eq!(
        delta(&cluster, 0, &before, "dynamo_quorum_failures_total", &[("op", "put")]).await,
        c as f64
    );

    // Both back: every hint is delivered, and the counters say so.
    cluster.restart(2).await.unwrap();
    cluster.restart(3).await.unwrap();
    poll("every hint for node 4 is delivered", Duration::from_secs(30), || async {
        cluster_sum(&cluster, "dynamo_hints_keys", &held).await == 0.0
    })
    .await;
    // Nodes 1 and 2 count from the start; nodes 3 and 4 count from their restart (before it,
    // node 4 was down, so nothing was delivered): together, every hint.
    let mut delivered = 0.0;
    for (i, before) in baselines.iter().enumerate() {
        let before: &[Sample] = if i < 2 { before } else { &[] };
        delivered += delta(&cluster, i, before, "dynamo_hints_delivered_total", &[]).await;
    }
    assert_eq!(delivered, hinted as f64);
    poll("node 1 counts every node as up", Duration::from_secs(10), || async {
        sum(&cluster.metrics(0).await.unwrap(), "dynamo_peers_down", &[]) == 0.0
    })
    .await;

    // Reads of the c keys find their third replica stale and repair it: one repair per key.
    for (key, third) in &stale {
        for holder in [0, 1] {
            assert_eq!(cluster.local_values(holder, key.as_bytes()).await.unwrap(), [value(key)]);
        }
        assert!(cluster.local_values(*third, key.as_bytes()).await.unwrap().is_empty());
    }
    for (key, _) in &stale {
        assert_eq!(client.get(key.as_bytes(), None).await.unwrap().values, [value(key)]);
    }
    poll("one read repair per stale replica", Duration::from_secs(10), || async {
        delta(&cluster, 0, &before, "dynamo_read_repairs_total", &[]).await == c as f64
    })
    .await;
    for (key, third) in &stale {
        assert_eq!(cluster.local_values(*third, key.as_bytes()).await.unwrap(), [value(key)]);
    }

    // Node 1 received every client request: counters and histogram counts agree with them.
    let now = cluster.metrics(0).await.unwrap();
    let d =
        |name: &str, labels: &[(&str, &str)]| sum(&now, name, labels) - sum(&before, name, labels);
    let coordinator = ("role", "coordinator");
    let (puts, gets) = ((k + k2 + c) as f64, (m + c) as f64);
    assert_eq!(
        d("dynamo_requests_total", &[coordinator, ("op", "put"), ("outcome", "ok")]),
        (k + k2) as f64
    );
    assert_eq!(d("dynamo_requests_total", &[coordinator, ("op", "put")]), puts);
    assert_eq!(d("dynamo_request_duration_seconds_count", &[coordinator, ("op", "put")]), puts);
    assert_eq!(d("dynamo_requests_total", &[coordinator, ("op", "get"), ("outcome", "ok")]), gets);
    assert_eq!(d("dynamo_request_duration_seconds_count", &[coordinator, ("op", "get")]), gets);
    assert_eq!(d("dynamo_read_siblings_count", &[]), gets);
    assert_eq!(
        d("dynamo_forwarded_requests_total", &[("op", "put"), ("direction", "sent")]),
        forwarded as f64
    );
    // The +Inf bucket of each histogram is its count.
    assert_eq!(
        d("dynamo_request_duration_seconds_bucket", &[coordinator, ("op", "put"), ("le", "+Inf")]),
        puts
    );

    // No acknowledged write was lost.
    for key in &acknowledged {
        assert_eq!(client.get(key.as_bytes(), None).await.unwrap().values, [value(key)], "{key}");
    }
}

#[tokio::test]
async fn dynamoctl_top_json_measures_every_node_from_its_metrics() {
    let cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    // Puts through node 1 for as long as top measures.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (client, done) = (cluster.client(0), done.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                client.put(format!("t-{i}").as_bytes(), b"v".to_vec(), vec![], None).await.unwrap();
                i += 1;
            }
            i
        })
    };
    let ctl = dynamo_tests::cluster::target_binary("dynamoctl").unwrap();
    let mut args = cluster.dynamoctl_args(0);
    args.extend(["top", "-o", "json", "--interval-ms", "1000"].map(String::from));
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(ctl).args(&args).output().unwrap()
    })
    .await
    .unwrap();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(writer.await.unwrap() > 0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dynamoctl top failed: {stderr}");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut ids: Vec<&str> = rows.iter().map(|r| r["node"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, ["node-1", "node-2", "node-3"]);
    for row in &rows {
        assert!(row.get("error").is_none(), "{row}");
        assert_eq!(row["peers_down"], 0.0, "{row}");
    }
    let first = rows.iter().find(|r| r["node"] == "node-1").unwrap();
    assert!(first["ops_per_second"]["put"].as_f64().unwrap() > 0.0, "{first}");
    assert!(first["p99_ms"]["put"].as_f64().unwrap() > 0.0, "{first}");
}
