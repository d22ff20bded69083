//! `dynamoctl bench` against a real 3-node cluster (N=3 R=2 W=2): a short run of every kind of
//! operation reports sane counts, no errors and ordered percentiles, in JSON and in text. No
//! timing is asserted: the machine may be busy.

use std::path::PathBuf;

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
