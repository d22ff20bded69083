//! Data lifecycle on real processes (N=3 R=2 W=2): version dots are never reused, whatever
//! happens to a node's data directory (KV679); tombstones are reaped once every replica holds
//! them and the grace period passed, and nothing deleted comes back.

use std::path::Path;
use std::time::Duration;

use dynamo_tests::history::check;
use dynamo_tests::nemesis::{converge, endpoints};
use dynamo_tests::workload::{recorded_get, recorded_put, Recorder};
use dynamo_tests::{Cluster, ClusterOptions};

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// The log without its colour codes.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_escape = false;
    for c in text.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (false, c) => out.push(c),
            (true, 'm') => in_escape = false,
            (true, _) => {}
        }
    }
    out
}

/// Polls until nodes `others` each hold exactly `value` for every key (`value(key)`).
async fn wait_replicated(
    cluster: &Cluster,
    others: &[usize],
    keys: &[String],
    value: fn(&str) -> String,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for &i in others {
        for key in keys {
            loop {
                let held = cluster.local_values(i, key.as_bytes()).await.unwrap();
                if held == vec![value(key).into_bytes()] {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{} holds {held:?} for {key}, not {}",
                    cluster.nodes[i].id,
                    value(key)
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Riak's KV679: copy a node's data directory, write more through that node, stop it, restore
/// the copy, restart it and write again. Under a reused actor the last writes would carry the
/// dots of the writes made after the copy, and the other replicas would discard them as
/// already seen; the restored node must take a fresh actor, and the history checker must find
/// every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restored_from_a_copy_of_its_data_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    let recorder = Recorder::new();
    let via = endpoints(&cluster, Duration::from_secs(3));
    let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
    let acked =
        |id: usize| recorder.history().ops[id].outcome == dynamo_tests::history::Outcome::Acked;

    // 1. Blind writes coordinated by node-1 (every node replicates every key).
    for key in &keys {
        let w = recorded_put(&recorder, "c0", &via[0], key, format!("{key}-1"), None).await;
        assert!(acked(w), "{:?}", recorder.history().ops[w]);
    }
    wait_replicated(&cluster, &[1, 2], &keys, |k| format!("{k}-1")).await;

    // 2. A clean stop, a copy of the directory, and more writes through node-1.
    cluster.stop(0).await.unwrap();
    let data = cluster.nodes[0].data_dir.clone();
    let copy = data.with_file_name("data-copy");
    copy_dir(&data, &copy).unwrap();
    cluster.restart(0).await.unwrap();
    for key in &keys {
        let (g, got) = recorded_get(&recorder, "c0", &via[0], key, None).await;
        let context = got.expect("the get answers").context;
        let w = recorded_put(&recorder, "c0", &via[0], key, format!("{key}-2"), Some((g, context)))
            .await;
        assert!(acked(w), "{:?}", recorder.history().ops[w]);
    }
    wait_replicated(&cluster, &[1, 2], &keys, |k| format!("{k}-2")).await;

    // 3. The copy replaces the directory (a restore), and node-1 writes again.
    let restore =
        recorder.fault_started("restore", "node-1 restarted on a copy of its data".into());
    cluster.stop(0).await.unwrap();
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::rename(&copy, &data).unwrap();
    cluster.restart(0).await.unwrap();
    recorder.fault_ended(restore);
    for key in &keys {
        let w = recorded_put(&recorder, "c0", &via[0], key, format!("{key}-3"), None).await;
        assert!(acked(w), "{:?}", recorder.history().ops[w]);
    }

    let final_state = converge(&cluster, &keys, &recorder).await.unwrap();
    let history = recorder.history();
    let report = check(&history, &final_state);
    println!("{report}");
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.stats.acked_writes(), 3 * keys.len(), "{report}");
    // Each key ends with the write made after the copy and the blind one after the restore.
    for key in &keys {
        let values = final_state.values(key);
        let expected: std::collections::BTreeSet<String> =
            [format!("{key}-2"), format!("{key}-3")].into();
        assert_eq!(values, expected, "{key}");
    }
    // The starts said which actor they took: fresh on a new directory, the same after the
    // clean stop on the same directory, fresh on the restored copy.
    let log = strip_ansi(&std::fs::read_to_string(&cluster.nodes[0].log).unwrap());
    let starts: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("serving"))
        .map(|l| {
            l.split("fresh_actor=").nth(1).unwrap_or("?").split_whitespace().next().unwrap_or("?")
        })
        .collect();
    assert_eq!(starts, ["Some(NewDirectory)", "None", "Some(CopiedOrRestored)"], "{log}");
}

/// Every running node's (keys, tombstones held, tombstones reaped) from its status.
async fn key_figures(cluster: &Cluster) -> Vec<(String, u64, u64, u64)> {
    let mut out = Vec::new();
    for i in (0..cluster.nodes.len()).filter(|&i| cluster.is_running(i)) {
        let s = cluster.status(i).await.unwrap();
        out.push((s.node_id, s.local_keys, s.tombstones, s.tombstones_reaped));
    }
    out
}

/// Puts then deletes (with the put's context) `keys` through `client`, 16 at a time.
async fn put_then_delete(client: &dynamo_client::Client, keys: &[String]) {
    let mut tasks = Vec::new();
    for chunk in keys.chunks(keys.len().div_ceil(16)) {
        let (client, chunk) = (client.clone(), chunk.to_vec());
        tasks.push(tokio::spawn(async move {
            for key in &chunk {
                let w = client.put(key.as_bytes(), vec![7; 100], vec![], None).await.unwrap();
                client.delete(key.as_bytes(), w.context, None).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_deleted_keys_are_reaped_after_the_grace_period() {
    let grace = Duration::from_secs(3);
    let cluster = Cluster::start(ClusterOptions {
        delete_grace_ms: grace.as_millis() as u64,
        reap_interval_ms: 500,
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let keys: Vec<String> = (0..10_000).map(|i| format!("gone-{i}")).collect();
    let client = cluster.routing_client(Duration::from_secs(5));
    put_then_delete(&client, &keys).await;
    let deleted_at = tokio::time::Instant::now();
    let before = key_figures(&cluster).await;
    println!("after 10000 puts and deletes: (node, keys, tombstones held, reaped) {before:?}");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let after = loop {
        let figures = key_figures(&cluster).await;
        if figures.iter().all(|f| f.2 == 0 && f.3 >= 9_900) {
            break figures;
        }
        assert!(tokio::time::Instant::now() < deadline, "tombstones not reaped: {figures:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!(
        "{:.1} s after the deletes (grace {} s): (node, keys, tombstones held, reaped) {after:?}",
        deleted_at.elapsed().as_secs_f64(),
        grace.as_secs()
    );
    assert!(deleted_at.elapsed() >= grace, "nothing may go before the grace period");
    for (node, _, held, reaped) in &after {
        assert_eq!((*held, *reaped), (0, 10_000), "{node}: every replica reaps each key once");
    }
    // Before: every key (a tombstone) on every node; after: none.
    for (node, keys, _, _) in &after {
        assert_eq!(*keys, 0, "{node} still holds {keys} keys");
    }
    for key in keys.iter().step_by(97) {
        for i in 0..3 {
            assert!(cluster.local_replica(i, key.as_bytes()).await.unwrap().is_empty(), "{key}");
        }
    }
}

/// A replica down during the deletes blocks reaping of its keys (it still holds the values);
/// back after the grace period, it gets the tombstones (hints, anti-entropy), then everything
/// is reaped, and no deleted value comes back: reads at r = N find nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_down_during_the_deletes_brings_nothing_back() {
    let grace = Duration::from_secs(2);
    let mut cluster = Cluster::start(ClusterOptions {
        nodes: 4,
        zones: 2,
        delete_grace_ms: grace.as_millis() as u64,
        reap_interval_ms: 300,
        anti_entropy_interval_ms: 300,
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let keys: Vec<String> = (0..300).map(|i| format!("k{i}")).collect();
    let client = cluster.client(0);
    let mut contexts = Vec::new();
    for key in &keys {
        contexts
            .push(client.put(key.as_bytes(), b"old".to_vec(), vec![], None).await.unwrap().context);
    }
    // Every replica holds the value before one goes down.
    let down = 3;
    let placement = cluster.placement().await.unwrap();
    let on_down: Vec<&String> =
        keys.iter().filter(|k| placement.replicas(k.as_bytes()).contains(&down)).collect();
    assert!(on_down.len() > 100, "node-4 replicates about 3/4 of the keys");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for key in &on_down {
        while cluster.local_values(down, key.as_bytes()).await.unwrap() != vec![b"old".to_vec()] {
            assert!(tokio::time::Instant::now() < deadline, "{key} not replicated to node-4");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    cluster.kill(down);
    for (key, context) in keys.iter().zip(contexts) {
        client.delete(key.as_bytes(), context, None).await.unwrap();
    }
    tokio::time::sleep(grace * 3).await;
    let figures = key_figures(&cluster).await;
    println!("node-4 down, {} s after the deletes: {figures:?}", (grace * 3).as_secs());
    // The keys node-4 replicates cannot be reaped while it is down (the others hold their
    // tombstones, or hints of them); the rest can.
    let held: u64 = figures.iter().map(|f| f.2).sum();
    assert!(held >= 2 * on_down.len() as u64, "tombstones of node-4's keys are kept: {figures:?}");

    cluster.restart(down).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let after = loop {
        let figures = key_figures(&cluster).await;
        if figures.iter().all(|f| f.2 == 0) {
            break figures;
        }
        assert!(tokio::time::Instant::now() < deadline, "tombstones not reaped: {figures:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    println!("node-4 back: {after:?}");
    // Anti-entropy and hints had their chance to bring "old" back; nothing does.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for key in &keys {
        let got = client.get(key.as_bytes(), Some(3)).await.unwrap();
        assert!(got.values.is_empty(), "{key} came back: {:?}", got.values);
        for i in 0..4 {
            assert!(
                cluster.local_values(i, key.as_bytes()).await.unwrap().is_empty(),
                "{key} on node-{}",
                i + 1
            );
        }
    }
}
