//! Data lifecycle on real processes (N=3 R=2 W=2): version dots are never reused, whatever
//! happens to a node's data directory (KV679).

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
