//! The long randomized soak: rounds of a random workload under random faults (kill -9, pause,
//! partition, and one wipe of a data directory per round), each round ending with heal,
//! convergence and a check of the whole history so far. Ignored by default; run it with
//!
//! ```sh
//! cargo build --bins && cargo test -p dynamo-tests --test soak -- --ignored --nocapture
//! SOAK_SEED=1234 SOAK_SECONDS=3600 SOAK_NODES=5 cargo test -p dynamo-tests --test soak -- --ignored --nocapture
//! ```
//!
//! `SOAK_SEED` (default: random) seeds everything random (round lengths, workload shape and
//! choices, fault schedule) and is printed first, so a failure can be replayed; timing still
//! varies between runs, so a replay repeats the same schedule, not the same interleaving.
//! `SOAK_SECONDS` (default 600) is the total time of the rounds; `SOAK_NODES` (default 5) the
//! cluster size (N=3 R=2 W=2 always).

use std::sync::Arc;
use std::time::Duration;

use dynamo_tests::history::check;
use dynamo_tests::nemesis::{faulty_round, FaultKind, Nemesis, NemesisOptions};
use dynamo_tests::workload::{Recorder, WorkloadOptions};
use dynamo_tests::{Cluster, ClusterOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(v.parse().unwrap_or_else(|e| panic!("{name}={v:?} is not a whole number: {e}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long randomized soak: cargo test -p dynamo-tests --test soak -- --ignored --nocapture"]
async fn soak() {
    let seed = env_u64("SOAK_SEED").unwrap_or_else(rand::random);
    let seconds = env_u64("SOAK_SECONDS").unwrap_or(600);
    let nodes = env_u64("SOAK_NODES").unwrap_or(5) as usize;
    let replay = format!("SOAK_SEED={seed} SOAK_SECONDS={seconds} SOAK_NODES={nodes}");
    println!("soak: seed {seed}, {seconds} s, {nodes} nodes, N=3 R=2 W=2 (replay: {replay})");

    let mut rng = StdRng::seed_from_u64(seed);
    let mut cluster =
        Cluster::start(ClusterOptions { nodes, ..ClusterOptions::default() }).await.unwrap();
    let recorder = Arc::new(Recorder::new());
    // The keys stay the same for the whole run: every round's final state covers them all.
    let keys = rng.gen_range(3..=16);
    let mut nemesis = Nemesis::new(NemesisOptions {
        kinds: vec![FaultKind::Kill, FaultKind::Pause, FaultKind::Partition, FaultKind::Wipe],
        fault: (Duration::from_millis(300), Duration::from_millis(rng.gen_range(2000..=8000))),
        calm: (Duration::ZERO, Duration::from_millis(rng.gen_range(500..=4000))),
        max_wipes: 1,
        seed: rng.gen(),
    });

    let end = Instant::now() + Duration::from_secs(seconds);
    for round in 0.. {
        let left = end.saturating_duration_since(Instant::now());
        if left < Duration::from_secs(5) {
            break;
        }
        let length = Duration::from_secs(rng.gen_range(20..=90)).min(left);
        let workload = WorkloadOptions {
            clients: rng.gen_range(2..=10),
            keys,
            max_think: Duration::from_millis(rng.gen_range(0..=50)),
            seed: rng.gen(),
            prefix: format!("r{round}c"),
            ..WorkloadOptions::default()
        };
        println!(
            "round {round}: {} s, {} clients on {keys} keys, think <= {:?}",
            length.as_secs(),
            workload.clients,
            workload.max_think
        );
        let final_state = faulty_round(&mut cluster, &recorder, &workload, &mut nemesis, length)
            .await
            .unwrap_or_else(|e| panic!("round {round} ({replay}): {e:#}"));
        let history = recorder.history();
        let report = check(&history, &final_state);
        println!("{}", report.stats);
        assert!(
            report.is_ok(),
            "round {round} ({replay}): the history breaks a property\n{report}"
        );
    }
    println!("soak passed ({replay})");
}
