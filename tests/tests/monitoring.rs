//! promtool on what the nodes really serve: `promtool check metrics` on a node's `/metrics`
//! after traffic (so every labelled family has samples) finds nothing to complain about. Needs
//! promtool: run through `scripts/promtool-check`, which builds it from its Go module and sets
//! DYNAMO_PROMTOOL (the tests are ignored in a plain `cargo test`).

use std::io::Write as _;
use std::process::{Command, Stdio};

use dynamo_tests::{Cluster, ClusterOptions};

fn promtool() -> String {
    std::env::var("DYNAMO_PROMTOOL").unwrap_or_else(|_| "promtool".into())
}

/// Runs `promtool args...` with `input` on standard input; Err(its output) when it complains
/// (a non-zero exit, or anything printed: promtool's lint findings).
fn run_promtool(args: &[&str], input: &str) -> Result<(), String> {
    let mut child = Command::new(promtool())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {} (run scripts/promtool-check): {e}", promtool()));
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("promtool {args:?} ({}): {said}", out.status))
    }
}

#[test]
#[ignore = "needs promtool: run scripts/promtool-check"]
fn promtool_finds_a_problem_in_a_bad_exposition() {
    // The check itself works: a counter without `_total` and a metric without help.
    let bad = "# TYPE dynamo_bad counter\ndynamo_bad 1\n";
    assert!(run_promtool(&["check", "metrics"], bad).is_err());
}

#[tokio::test]
#[ignore = "needs promtool: run scripts/promtool-check"]
async fn a_nodes_metrics_pass_promtool_check_metrics() {
    let cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    let client = cluster.client(0);
    for i in 0..20 {
        let key = format!("k-{i}");
        client.put(key.as_bytes(), b"v".to_vec(), vec![], None).await.unwrap();
        client.get(key.as_bytes(), None).await.unwrap();
    }
    // An error outcome, too.
    assert!(client.get(b"", None).await.is_err());
    for i in 0..cluster.nodes.len() {
        let text = cluster.metrics_text(i).await.unwrap();
        assert!(text.contains("dynamo_requests_total{"), "node {i} counted no request:\n{text}");
        if let Err(e) = run_promtool(&["check", "metrics"], &text) {
            panic!("node {i}: {e}\n{text}");
        }
    }
}
