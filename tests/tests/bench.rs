//! `dynamoctl bench` against a real 3-node cluster (N=3 R=2 W=2): a short run of every kind of
//! operation reports sane counts, no errors and ordered percentiles, in JSON and in text. No
//! timing is asserted: the machine may be busy.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dynamo_api::pb::internode::{internode_client::InternodeClient, StreamPartitionRequest};

use dynamo_tests::cluster::node_binary;
use dynamo_tests::{Cluster, ClusterOptions};
use serde_json::Value;

/// dynamoctl, built next to dynamo-node.
fn dynamoctl() -> PathBuf {
    node_binary().expect("dynamo-node is built").with_file_name("dynamoctl")
}

/// Runs `dynamoctl <connection flags> bench <args>`.
async fn bench(connection: &[String], args: &[&str]) -> String {
    let out = tokio::process::Command::new(dynamoctl())
        .args(connection)
        .arg("bench")
        .args(args)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dynamoctl bench {args:?} failed: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// Checks one phase of the JSON report: `ops` operations without error, ordered percentiles.
fn check_phase(phase: &Value, ops: u64) {
    assert_eq!(phase["ops"], ops, "{phase}");
    assert_eq!(phase["errors"], 0, "{phase}");
    assert!(phase["ops_per_s"].as_f64().unwrap() > 0.0, "{phase}");
    let operations = phase["operations"].as_object().unwrap();
    let mut total = 0;
    for (name, op) in operations {
        let l = &op["latency_us"];
        let p = |q: &str| l[q].as_u64().unwrap_or_else(|| panic!("{name}: no {q} in {op}"));
        assert!(p("p50") >= 1, "{name}: {op}");
        assert!(
            p("p50") <= p("p95") && p("p95") <= p("p99") && p("p99") <= p("p999"),
            "{name}: {op}"
        );
        assert!(p("p999") <= p("max"), "{name}: {op}");
        for kind in ["unavailable", "timeout", "invalid", "other"] {
            assert_eq!(op["errors"][kind], 0, "{name}: {op}");
        }
        total += op["ops"].as_u64().unwrap();
    }
    assert_eq!(total, ops, "{phase}");
}

#[tokio::test]
async fn bench_runs_every_workload_without_errors() {
    let cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    let endpoints: Vec<&str> = cluster.nodes.iter().map(|n| n.address.as_str()).collect();
    let endpoints = endpoints.join(",");

    let out = bench(
        &cluster.dynamoctl_args(0),
        &[
            "--endpoints",
            &endpoints,
            "--records",
            "200",
            "--value-size",
            "100",
            "--workload",
            "a,b,c,f,w",
            "--concurrency",
            "1,4",
            "--ops",
            "150",
            "-o",
            "json",
        ],
    )
    .await;
    let doc: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(doc["cluster"], "test: N=3 R=2 W=2, 3 nodes", "{doc}");
    assert_eq!(doc["tls"], true, "the harness's clusters run TLS: {doc}");
    // Routing is on by default: one partition-aware client routed with the cluster's ring.
    let epoch = cluster.client(0).ring().await.unwrap().epoch;
    assert_eq!(doc["partition_aware"], true, "{doc}");
    assert_eq!(doc["ring_epoch"], epoch, "{doc}");
    check_phase(&doc["load"], 200);
    assert!(doc["load"]["operations"]["insert"].is_object(), "{doc}");
    let runs = doc["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 10, "{doc}");
    for run in runs {
        check_phase(run, 150);
        // Every key was loaded, so no read finds nothing, and updates know their contexts.
        for op in run["operations"].as_object().unwrap().values() {
            assert_eq!(op["not_found"], 0, "{run}");
        }
        assert_eq!(run["context_reads"], 0, "{run}");
    }
    let kinds = |i: usize| -> Vec<String> {
        runs[i]["operations"].as_object().unwrap().keys().cloned().collect()
    };
    assert_eq!(kinds(0), ["read", "update"]); // a
    assert_eq!(kinds(4), ["read"]); // c
    assert_eq!(kinds(6), ["read", "rmw"]); // f
    assert_eq!(kinds(8), ["update"]); // w

    // Text, open loop at a modest rate, on records loaded above (--no-load): the report has
    // its table and says nothing went wrong.
    let text = bench(
        &cluster.dynamoctl_args(1),
        &[
            "--no-load",
            "--records",
            "200",
            "--workload",
            "a",
            "--concurrency",
            "2",
            "--duration-s",
            "1",
            "--rate",
            "100",
            "--partition-aware",
            "false",
        ],
    )
    .await;
    assert!(text.contains("partition-aware routing off"), "{text}");
    assert!(text.contains(" over TLS, "), "{text}");
    assert!(text.contains("workload a (50% read, 50% update)"), "{text}");
    assert!(text.contains("open loop at 100 ops/s"), "{text}");
    assert!(text.contains(", 0 errors"), "{text}");
    assert!(text.contains("p99.9 ms"), "{text}");
}

/// Runs `dynamoctl bench <args> -o json` against a 3-node cluster started with `opts` (every
/// node as an endpoint, admin credentials), then stops the cluster.
async fn bench_cluster(opts: ClusterOptions, args: &[&str]) -> Value {
    let cluster = Cluster::start(opts).await.unwrap();
    let endpoints: Vec<&str> = cluster.nodes.iter().map(|n| n.address.as_str()).collect();
    let endpoints = endpoints.join(",");
    let mut all = vec!["--endpoints", &endpoints];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    let out = bench(&cluster.dynamoctl_args(0), &all).await;
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The same bench against a TLS cluster, then (the first one stopped, so they do not share
/// the CPU) against a `--dev --insecure` one: the two reports.
async fn tls_and_insecure(opts: ClusterOptions, args: &[&str]) -> (Value, Value) {
    let tls = bench_cluster(ClusterOptions { tls: true, ..opts.clone() }, args).await;
    let insecure = bench_cluster(ClusterOptions { tls: false, ..opts }, args).await;
    (tls, insecure)
}

/// One line per run: throughput and latency on both clusters, and TLS's share of the
/// insecure throughput.
fn comparison(tls: &Value, insecure: &Value) -> String {
    let mut out = String::from(
        "workload  conc   TLS ops/s  p50 ms  p99 ms | insecure ops/s  p50 ms  p99 ms | TLS/insecure\n",
    );
    let runs = |doc: &Value| doc["runs"].as_array().cloned().unwrap_or_default();
    let latency = |run: &Value, q: &str| {
        // The slowest operation kind of the run at this quantile (reads and writes differ).
        run["operations"]
            .as_object()
            .map(|ops| ops.values().filter_map(|op| op["latency_us"][q].as_u64()).max())
            .unwrap_or_default()
            .unwrap_or(0) as f64
            / 1000.0
    };
    for (a, b) in runs(tls).iter().zip(runs(insecure).iter()) {
        let (ta, tb) = (a["ops_per_s"].as_f64().unwrap(), b["ops_per_s"].as_f64().unwrap());
        out.push_str(&format!(
            "{:<9} {:>4} {:>11.0} {:>7.2} {:>7.2} | {:>14.0} {:>7.2} {:>7.2} | {:>11.2}\n",
            a["workload"].as_str().unwrap_or("?"),
            a["concurrency"],
            ta,
            latency(a, "p50"),
            latency(a, "p99"),
            tb,
            latency(b, "p50"),
            latency(b, "p99"),
            ta / tb
        ));
    }
    out
}

#[tokio::test]
async fn bench_runs_against_a_tls_and_an_insecure_cluster_in_one_run() {
    let args = ["--records", "100", "--workload", "a", "--concurrency", "4", "--ops", "100"];
    let (tls, insecure) = tls_and_insecure(ClusterOptions::default(), &args).await;
    assert_eq!(tls["tls"], true, "{tls}");
    assert_eq!(insecure["tls"], false, "{insecure}");
    for doc in [&tls, &insecure] {
        check_phase(&doc["load"], 100);
        check_phase(&doc["runs"][0], 100);
    }
    let table = comparison(&tls, &insecure);
    assert_eq!(table.lines().count(), 2, "{table}");
    eprintln!("{table}");
}

/// The measurement behind the README's TLS figure (run by hand on a quiet machine, not in CI):
/// `DYNAMO_BENCH_ARGS="--records 20000 --workload a,c --concurrency 1,16 --duration-s 10"
/// cargo test -p dynamo-tests --test bench -- --ignored --nocapture tls_overhead`.
/// 256 partitions, as `dynamoctl dev up` has.
#[tokio::test]
#[ignore = "a measurement: run by hand on a quiet machine"]
async fn tls_overhead() {
    let args = std::env::var("DYNAMO_BENCH_ARGS").unwrap_or_else(|_| {
        "--records 20000 --workload a,c --concurrency 1,16 --duration-s 10".into()
    });
    let args: Vec<&str> = args.split_whitespace().collect();
    let opts = ClusterOptions { partitions: 256, ..ClusterOptions::default() };
    let (tls, insecure) = tls_and_insecure(opts, &args).await;
    println!("dynamoctl bench {}\n{}", args.join(" "), comparison(&tls, &insecure));
    println!("TLS report: {tls}\ninsecure report: {insecure}");
}

/// Pages through every partition of node `i` with `StreamPartition` (the default page budget),
/// over and over, as a joining node's transfer reads its source, until `stop`; returns the
/// bytes and full passes scanned.
async fn scan_until(
    cluster: &Cluster,
    i: usize,
    partitions: u32,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, u64)> {
    let channel = dynamo_client::channel(
        &cluster.nodes[i].peer_address,
        Duration::from_secs(30),
        &cluster.access().peer,
    )
    .unwrap();
    tokio::spawn(async move {
        let mut node = InternodeClient::new(channel).max_decoding_message_size(64 << 20);
        let (mut bytes, mut passes) = (0u64, 0u64);
        while !stop.load(Ordering::Relaxed) {
            for partition in 0..partitions {
                let mut after = None;
                loop {
                    let request = StreamPartitionRequest {
                        partition,
                        after: after.clone(),
                        limit: 4096,
                        max_bytes: 0,
                    };
                    let page = node.stream_partition(request).await.unwrap().into_inner();
                    bytes += page
                        .entries
                        .iter()
                        .map(|e| (e.key.len() + e.clock.len()) as u64)
                        .sum::<u64>();
                    after = page.entries.last().map(|e| e.key.clone());
                    if page.done || stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
            }
            passes += 1;
        }
        (bytes, passes)
    })
}

/// The measurement behind the README's figure for full-partition scans under load (run by hand
/// on a quiet machine, not in CI): the same closed-loop bench on one 3-node cluster, first
/// alone, then while a peer pages through every partition of node-1 again and again (what a
/// transfer to a joining node or a repair of a wiped replica reads):
/// `DYNAMO_BENCH_ARGS="--records 50000 --workload a,c --concurrency 16 --duration-s 15"
/// cargo test --workspace --test bench -- --ignored --nocapture scan_under_load`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run by hand on a quiet machine"]
async fn scan_under_load() {
    let args = std::env::var("DYNAMO_BENCH_ARGS").unwrap_or_else(|_| {
        "--records 50000 --workload a,c --concurrency 16 --duration-s 15".into()
    });
    let args: Vec<&str> = args.split_whitespace().collect();
    let partitions = 8;
    let cluster =
        Cluster::start(ClusterOptions { partitions, ..ClusterOptions::default() }).await.unwrap();
    let endpoints: Vec<&str> = cluster.nodes.iter().map(|n| n.address.as_str()).collect();
    let endpoints = endpoints.join(",");
    let run = |extra: &'static [&'static str]| {
        let mut all = vec!["--endpoints", endpoints.as_str()];
        all.extend_from_slice(&args);
        all.extend_from_slice(extra);
        all.extend_from_slice(&["-o", "json"]);
        let connection = cluster.dynamoctl_args(0);
        let all: Vec<String> = all.into_iter().map(String::from).collect();
        async move {
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            let out = bench(&connection, &all).await;
            serde_json::from_str::<Value>(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
        }
    };
    let quiet = run(&[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let scanner = scan_until(&cluster, 0, partitions, stop.clone()).await;
    let started = std::time::Instant::now();
    let scanned = run(&["--no-load"]).await;
    stop.store(true, Ordering::Relaxed);
    let (bytes, passes) = scanner.await.unwrap();
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "scans: {passes} full passes over node-1's {partitions} partitions, {:.0} MB/s",
        bytes as f64 / seconds / 1e6
    );
    println!(
        "workload  conc  ops/s alone  p99.9 ms | ops/s scanned  p99.9 ms | ops ratio  p99.9 ratio"
    );
    let runs = |doc: &Value| doc["runs"].as_array().cloned().unwrap_or_default();
    let p999 = |run: &Value| {
        run["operations"]
            .as_object()
            .and_then(|ops| ops.values().filter_map(|op| op["latency_us"]["p999"].as_u64()).max())
            .unwrap_or(0) as f64
            / 1000.0
    };
    for (a, b) in runs(&quiet).iter().zip(runs(&scanned).iter()) {
        let (ta, tb) = (a["ops_per_s"].as_f64().unwrap(), b["ops_per_s"].as_f64().unwrap());
        println!(
            "{:<9} {:>4} {:>12.0} {:>9.2} | {:>13.0} {:>9.2} | {:>9.2} {:>12.2}",
            a["workload"].as_str().unwrap_or("?"),
            a["concurrency"],
            ta,
            p999(a),
            tb,
            p999(b),
            tb / ta,
            p999(b) / p999(a)
        );
    }
}
