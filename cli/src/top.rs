//! `top`: a live view of every node (like `riak-admin top` or `nodetool tpstats`), made from
//! the nodes' Prometheus metrics. The endpoint's status names the nodes and their metrics
//! addresses; each refresh scrapes them all and shows, per node, requests per second and p99
//! latency by operation, errors, hints held, transfers and disk, computed from the difference
//! between two scrapes. `-o json` prints one such measurement and exits.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use dynamo_client::metrics::{parse, quantile, scrape, sum, Sample};
use dynamo_client::Client;
use serde::Serialize;

use crate::Format;

/// Arguments of `top`.
#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// Time between refreshes (and, with `-o json`, the span rates are measured over), in
    /// milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub interval_ms: u64,
    /// `json`: measure once and print it, for scripts.
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: Format,
}

/// The operations shown, as the metrics name them.
const OPS: [&str; 3] = ["get", "put", "delete"];

/// A node to watch.
#[derive(Debug, Clone)]
struct Target {
    id: String,
    zone: String,
    metrics: String,
}

/// What one node did between two scrapes, and its state at the second.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeFigures {
    pub node: String,
    pub zone: String,
    /// Client requests per second, by operation.
    pub ops_per_second: BTreeMap<String, f64>,
    /// p99 latency in milliseconds over the interval, by operation (absent without requests).
    pub p99_ms: BTreeMap<String, f64>,
    /// Client requests that failed, per second.
    pub errors_per_second: f64,
    /// Quorum failures, per second.
    pub quorum_failures_per_second: f64,
    /// Hints held here for other nodes (keys).
    pub hints: f64,
    /// Partitions moving to this node.
    pub transfers: f64,
    /// Live data on disk, bytes.
    pub disk_bytes: f64,
    /// Other nodes this one sees as down.
    pub peers_down: f64,
}

/// The figures of one node from two scrapes `seconds` apart.
pub fn figures(
    node: &str,
    zone: &str,
    before: &[Sample],
    after: &[Sample],
    seconds: f64,
) -> NodeFigures {
    let seconds = seconds.max(1e-3);
    let rate = |name: &str, labels: &[(&str, &str)]| {
        ((sum(after, name, labels) - sum(before, name, labels)) / seconds).max(0.0)
    };
    let mut ops = BTreeMap::new();
    let mut p99 = BTreeMap::new();
    for op in OPS {
        let labels = [("role", "coordinator"), ("op", op)];
        ops.insert(op.to_string(), rate("dynamo_requests_total", &labels));
        // Cumulative bucket counts of the interval: after minus before, per `le`.
        let mut buckets: BTreeMap<String, (f64, f64)> = BTreeMap::new();
        for (samples, sign) in [(after, 1.0), (before, -1.0)] {
            for s in samples.iter().filter(|s| {
                s.name == "dynamo_request_duration_seconds_bucket"
                    && s.label("role") == "coordinator"
                    && s.label("op") == op
            }) {
                let le = s.label("le");
                let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(0.0) };
                buckets.entry(le.to_string()).or_insert((bound, 0.0)).1 += sign * s.value;
            }
        }
        let buckets: Vec<(f64, f64)> = buckets.into_values().collect();
        if let Some(q) = quantile(&buckets, 0.99) {
            p99.insert(op.to_string(), q * 1000.0);
        }
    }
    let all = rate("dynamo_requests_total", &[("role", "coordinator")]);
    let ok = rate("dynamo_requests_total", &[("role", "coordinator"), ("outcome", "ok")]);
    NodeFigures {
        node: node.into(),
        zone: zone.into(),
        ops_per_second: ops,
        p99_ms: p99,
        errors_per_second: (all - ok).max(0.0),
        quorum_failures_per_second: rate("dynamo_quorum_failures_total", &[]),
        hints: sum(after, "dynamo_hints_keys", &[]),
        transfers: sum(after, "dynamo_transfers_in_progress", &[]),
        disk_bytes: sum(after, "dynamo_storage_live_data_bytes", &[]),
        peers_down: sum(after, "dynamo_peers_down", &[]),
    }
}

/// Every node's metrics now (`None` for a node that did not answer, with why).
async fn scrape_all(targets: &[Target], timeout: Duration) -> Vec<Result<Vec<Sample>, String>> {
    futures::future::join_all(targets.iter().map(|t| async move {
        if t.metrics.is_empty() {
            return Err("publishes no metrics address".to_string());
        }
        scrape(&t.metrics, timeout).await.map(|text| parse(&text)).map_err(|e| e.to_string())
    }))
    .await
}

/// The nodes of the ring, as the endpoint reports them.
async fn targets(client: &Client) -> Result<Vec<Target>, String> {
    let status = client.status().await.map_err(|e| e.to_string())?;
    Ok(status
        .nodes
        .into_iter()
        .filter(|n| n.membership != dynamo_client::MemberState::Left)
        .map(|n| Target { id: n.id, zone: n.zone, metrics: n.metrics_address })
        .collect())
}

pub async fn run(client: &Client, args: TopArgs) -> Result<(), String> {
    let interval = Duration::from_millis(args.interval_ms.max(100));
    let timeout = interval.min(Duration::from_secs(5));
    let mut targets = targets(client).await?;
    let mut before = scrape_all(&targets, timeout).await;
    let mut taken = Instant::now();
    let shutdown = crate::shutdown_on_signals();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
        let after = scrape_all(&targets, timeout).await;
        let seconds = taken.elapsed().as_secs_f64();
        taken = Instant::now();
        let rows: Vec<Result<NodeFigures, String>> = targets
            .iter()
            .zip(before.iter().zip(&after))
            .map(|(t, pair)| match pair {
                (Ok(b), Ok(a)) => Ok(figures(&t.id, &t.zone, b, a, seconds)),
                (_, Err(e)) | (Err(e), _) => Err(format!("{}: {e}", t.id)),
            })
            .collect();
        if args.output == Format::Json {
            let json: Vec<serde_json::Value> = rows
                .into_iter()
                .zip(&targets)
                .map(|(r, t)| match r {
                    Ok(f) => serde_json::to_value(f).unwrap_or_default(),
                    Err(e) => serde_json::json!({"node": t.id, "zone": t.zone, "error": e}),
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?);
            return Ok(());
        }
        // Clear the screen and draw from the top-left corner.
        print!("\x1b[2J\x1b[H{}", render(&rows, interval));
        // A node added or removed since: follow the ring (the next frame starts afresh).
        let now = targets_or(client, &targets).await;
        if now.len() != targets.len() || now.iter().zip(&targets).any(|(a, b)| a.id != b.id) {
            targets = now;
            before = scrape_all(&targets, timeout).await;
            taken = Instant::now();
        } else {
            before = after;
        }
    }
}

/// The ring's nodes now, or the previous list if the endpoint does not answer.
async fn targets_or(client: &Client, previous: &[Target]) -> Vec<Target> {
    targets(client).await.unwrap_or_else(|_| previous.to_vec())
}

fn bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The text view of one refresh.
pub fn render(rows: &[Result<NodeFigures, String>], interval: Duration) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "dynamoctl top: {} nodes, every {:.1} s (Ctrl-C to quit)\n",
        rows.len(),
        interval.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "{:<12} {:<10} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>7} {:>7} {:>5} {:>10} {:>4}",
        "NODE",
        "ZONE",
        "GET/s",
        "PUT/s",
        "DEL/s",
        "P99 GET",
        "P99 PUT",
        "P99 DEL",
        "ERR/s",
        "HINTS",
        "XFER",
        "DISK",
        "DOWN"
    );
    let ms = |f: &NodeFigures, op: &str| {
        f.p99_ms.get(op).map_or("-".to_string(), |v| {
            if *v < 10.0 {
                format!("{v:.2}ms")
            } else {
                format!("{v:.1}ms")
            }
        })
    };
    for row in rows {
        match row {
            Ok(f) => {
                let _ = writeln!(
                    out,
                    "{:<12} {:<10} {:>8.1} {:>8.1} {:>8.1} {:>9} {:>9} {:>9} {:>7.1} {:>7.0} {:>5.0} {:>10} {:>4.0}",
                    f.node,
                    f.zone,
                    f.ops_per_second["get"],
                    f.ops_per_second["put"],
                    f.ops_per_second["delete"],
                    ms(f, "get"),
                    ms(f, "put"),
                    ms(f, "delete"),
                    f.errors_per_second,
                    f.hints,
                    f.transfers,
                    bytes(f.disk_bytes),
                    f.peers_down
                );
            }
            Err(e) => {
                let _ = writeln!(out, "{e}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape_of(text: &str) -> Vec<Sample> {
        parse(text)
    }

    #[test]
    fn rates_and_p99_come_from_the_difference_of_two_scrapes() {
        let before = scrape_of(
            "dynamo_requests_total{role=\"coordinator\",op=\"put\",outcome=\"ok\"} 100\n\
             dynamo_request_duration_seconds_bucket{role=\"coordinator\",op=\"put\",le=\"0.001\"} 100\n\
             dynamo_request_duration_seconds_bucket{role=\"coordinator\",op=\"put\",le=\"0.002\"} 100\n\
             dynamo_request_duration_seconds_bucket{role=\"coordinator\",op=\"put\",le=\"+Inf\"} 100\n",
        );
        // 200 more puts in 2 s, 10 of them failing; all new ones between 1 and 2 ms.
        let after = scrape_of(
            "dynamo_requests_total{role=\"coordinator\",op=\"put\",outcome=\"ok\"} 290\n\
             dynamo_requests_total{role=\"coordinator\",op=\"put\",outcome=\"quorum\"} 10\n\
             dynamo_quorum_failures_total{op=\"put\",cause=\"timeout\"} 10\n\
             dynamo_request_duration_seconds_bucket{role=\"coordinator\",op=\"put\",le=\"0.001\"} 100\n\
             dynamo_request_duration_seconds_bucket{role=\"coordinator\",op=\"put\",le=\"0.002\"} 300\n\
             dynamo_request_duration_seconds_bucket{role=\"coordinator\",op=\"put\",le=\"+Inf\"} 300\n\
             dynamo_hints_keys{target=\"n2\"} 4\n\
             dynamo_hints_keys{target=\"n3\"} 1\n\
             dynamo_storage_live_data_bytes 2048\n",
        );
        let f = figures("n1", "a", &before, &after, 2.0);
        assert_eq!(f.ops_per_second["put"], 100.0);
        assert_eq!(f.ops_per_second["get"], 0.0);
        assert_eq!(f.errors_per_second, 5.0);
        assert_eq!(f.quorum_failures_per_second, 5.0);
        // The 198th of 200 new observations, all in (1, 2] ms.
        assert!((f.p99_ms["put"] - 1.99).abs() < 1e-9, "{:?}", f.p99_ms);
        assert!(!f.p99_ms.contains_key("get"), "no gets, no p99");
        assert_eq!(f.hints, 5.0);
        let text = render(&[Ok(f), Err("n2: unreachable".into())], Duration::from_secs(2));
        assert!(text.contains("2.0 KiB"), "{text}");
        assert!(text.contains("1.99ms"), "{text}");
        assert!(text.lines().any(|l| l == "n2: unreachable"), "{text}");
    }
}
