//! Fault injection on real processes (N=3 R=2 W=2): clients read and write while the nemesis
//! kills (-9) and restarts, pauses (SIGSTOP) and resumes, and isolates nodes (and, on five
//! nodes, wipes one node's data once), one node at a time; then everything is healed and the
//! replicas converged, and the history checker proves that no acknowledged write was lost, no
//! value came from nowhere and every replica agrees.
//!
//! Tombstone reaping is on (grace 2 s): besides the hot keys, one client writes fresh keys and
//! deletes them, so they are reaped during the faults; the checker's no-resurrection rule then
//! covers "nothing deleted and reaped comes back", and some node must have reaped some
//! (the counts restart with a node, so a restarted node may show none).
//!
//! The schedule and the clients' choices are seeded (default seed below, `FAULTS_SEED` to try
//! another); `FAULTS_SECONDS` changes how long faults are injected. The longer randomized run
//! is `tests/soak.rs`.

use std::sync::Arc;
use std::time::Duration;

use dynamo_tests::history::{check, Violation};
use dynamo_tests::nemesis::{
    converge, endpoints, faulty_round, FaultKind, Nemesis, NemesisOptions,
};
use dynamo_tests::workload::{
    recorded_delete, recorded_get, recorded_put, Endpoint, Recorder, WorkloadOptions,
};
use dynamo_tests::{Cluster, ClusterOptions};

/// The fault tests run one after the other: on two cores, two clusters under faults at once
/// would mostly measure CPU starvation.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const DEFAULT_SEED: u64 = 20_070_101;

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|e| panic!("{name}={v:?} is not a whole number: {e}")),
        Err(_) => default,
    }
}

/// Keys the deleting client writes once and deletes (`d0`, `d1`, ...), at most this many.
const DELETED_KEYS: usize = 300;

/// Puts a fresh key, reads it, deletes it with the read's context, and moves on, until
/// `stop` or [`DELETED_KEYS`]; returns the keys it touched.
async fn deleter(
    recorder: Arc<Recorder>,
    via: Vec<Endpoint>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<String> {
    let mut keys = Vec::new();
    for i in 0..DELETED_KEYS {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        let (key, e) = (format!("d{i}"), &via[i % via.len()]);
        keys.push(key.clone());
        recorded_put(&recorder, "del", e, &key, format!("del-{i}"), None).await;
        let (g, got) = recorded_get(&recorder, "del", e, &key, None).await;
        if let Some(got) = got.filter(|g| !g.values.is_empty()) {
            recorded_delete(&recorder, "del", e, &key, g, got.context).await;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    keys
}

/// Starts `nodes` nodes, runs the workload while injecting `kinds` of faults for `seconds`
/// (or `FAULTS_SECONDS`), heals, converges and checks; every kind must have occurred.
async fn faults_lose_no_acknowledged_write(nodes: usize, seconds: u64, kinds: &[FaultKind]) {
    let _serial = SERIAL.lock().await;
    let seed = env_u64("FAULTS_SEED", DEFAULT_SEED);
    let seconds = env_u64("FAULTS_SECONDS", seconds);
    let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
    println!(
        "faults: {nodes} nodes, N=3 R=2 W=2, {seconds} s of {}, seed {seed} (replay: \
         FAULTS_SEED={seed} FAULTS_SECONDS={seconds})",
        names.join(", ")
    );
    let mut cluster = Cluster::start(ClusterOptions {
        nodes,
        delete_grace_ms: 2000,
        reap_interval_ms: 300,
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let recorder = Arc::new(Recorder::new());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let deleting = tokio::spawn(deleter(
        recorder.clone(),
        endpoints(&cluster, Duration::from_secs(3)),
        stop.clone(),
    ));
    let workload = WorkloadOptions { seed, ..WorkloadOptions::default() };
    let mut nemesis = Nemesis::new(NemesisOptions {
        kinds: kinds.to_vec(),
        max_wipes: 1,
        seed,
        ..NemesisOptions::default()
    });

    let final_state = faulty_round(
        &mut cluster,
        &recorder,
        &workload,
        &mut nemesis,
        Duration::from_secs(seconds),
    )
    .await
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let deleted = deleting.await.unwrap();
    // Reaping goes on after the faults: give it a few grace periods, then converge those keys.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut final_state = final_state;
    let deleted_state = converge(&cluster, &deleted, &recorder).await.unwrap();
    final_state.keys.extend(deleted_state.keys);
    final_state.notes.extend(deleted_state.notes);
    let mut reaped = Vec::new();
    for i in 0..nodes {
        let s = cluster.status(i).await.unwrap();
        reaped.push((s.node_id, s.tombstones, s.tombstones_reaped));
    }
    println!("{} keys deleted; (node, tombstones held, reaped): {reaped:?}", deleted.len());
    let history = recorder.history();
    let report = check(&history, &final_state);
    println!("{report}");
    assert!(
        reaped.iter().any(|r| r.2 > 0),
        "reaping never happened, so the run proves nothing about it: {reaped:?}"
    );
    if !report.is_ok() {
        let logs: Vec<String> = (0..nodes)
            .map(|i| format!("--- {} log (tail):\n{}", cluster.nodes[i].id, cluster.log(i)))
            .collect();
        panic!("seed {seed}: the history breaks a property\n{report}\n{}", logs.join("\n"));
    }
    let stats = &report.stats;
    assert!(stats.acked_writes() >= 100, "too few acknowledged writes to prove anything:\n{stats}");
    for kind in names {
        assert!(
            stats.faults.get(kind).copied().unwrap_or(0) >= 1,
            "no {kind} was injected:\n{stats}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_under_kills_pauses_and_partitions_lose_no_acknowledged_write() {
    let kinds = [FaultKind::Kill, FaultKind::Pause, FaultKind::Partition];
    faults_lose_no_acknowledged_write(3, 60, &kinds).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_under_kills_pauses_partitions_and_a_wipe_lose_no_acknowledged_write() {
    let kinds = [FaultKind::Kill, FaultKind::Pause, FaultKind::Partition, FaultKind::Wipe];
    faults_lose_no_acknowledged_write(5, 40, &kinds).await;
}

/// The whole pipeline has teeth: destroy acknowledged writes on purpose (beyond what N=3 W=2
/// tolerates: both nodes that acknowledged them lose their disks) and the checker must report
/// exactly those writes as lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_destroyed_beyond_the_fault_tolerance_are_reported_lost() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    let recorder = Recorder::new();
    let via = endpoints(&cluster, Duration::from_secs(3));

    let down = recorder.fault_started("kill", "kill node-3".into());
    cluster.kill(2);
    let mut doomed = Vec::new();
    for i in 0..4 {
        let value = format!("c0-{i}");
        let w =
            recorded_put(&recorder, "c0", &via[i % 2], &format!("k{}", i % 2), value, None).await;
        doomed.push(w);
    }
    let wipe = recorder.fault_started("wipe", "wipe node-1 and node-2".into());
    for i in [0, 1] {
        cluster.kill(i);
        cluster.wipe(i).unwrap();
    }
    for i in [2, 0, 1] {
        cluster.restart(i).await.unwrap();
    }
    recorder.fault_ended(down);
    recorder.fault_ended(wipe);

    let keys = vec!["k0".to_string(), "k1".to_string()];
    let final_state = converge(&cluster, &keys, &recorder).await.unwrap();
    let history = recorder.history();
    let report = check(&history, &final_state);
    println!("{report}");
    let lost: Vec<usize> = report
        .violations
        .iter()
        .filter_map(|v| match v {
            Violation::LostWrite { write, .. } => Some(*write),
            _ => None,
        })
        .collect();
    assert_eq!(lost, doomed, "{report}");
    assert_eq!(report.violations.len(), doomed.len(), "{report}");
    assert!(report.to_string().contains("LOST WRITE: key k0: acknowledged value \"c0-0\""));
}
