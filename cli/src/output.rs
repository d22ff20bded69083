//! How dynamoctl prints answers, as text for people and JSON for programs. Pure functions from
//! responses to strings, so the formats are tested without a cluster.

use std::fmt::Write as _;

use base64::Engine as _;
use serde_json::json;

use dynamo_client::{ClusterStatus, RepairReport, RingLayout, Versions};

use crate::data::encode_context;
use crate::Format;

/// `get`: values as UTF-8 strings when every value is valid UTF-8, otherwise every value in
/// base64; `encoding` says which.
pub fn get(key: &str, out: &Versions, format: Format) -> String {
    let texts: Option<Vec<&str>> = out.values.iter().map(|v| std::str::from_utf8(v).ok()).collect();
    let (encoding, values): (&str, Vec<String>) = match texts {
        Some(t) => ("utf-8", t.into_iter().map(str::to_string).collect()),
        None => (
            "base64",
            out.values
                .iter()
                .map(|v| base64::engine::general_purpose::STANDARD.encode(v))
                .collect(),
        ),
    };
    let context = encode_context(&out.context);
    match format {
        Format::Json => {
            let doc =
                json!({ "key": key, "values": values, "encoding": encoding, "context": context });
            format!("{doc}\n")
        }
        Format::Text => {
            let mut s = String::new();
            if values.is_empty() {
                let _ = writeln!(s, "{key}: not found");
            } else if values.len() == 1 {
                let _ = writeln!(s, "{}", values[0]);
            } else {
                let _ = writeln!(s, "{key} has {} concurrent values (siblings); resolve them by writing one value back with the context below:", values.len());
                for (i, v) in values.iter().enumerate() {
                    let _ = writeln!(s, "  [{}] {v}", i + 1);
                }
            }
            if encoding == "base64" {
                let _ = writeln!(s, "(values are binary, shown in base64)");
            }
            if !context.is_empty() {
                let _ = writeln!(s, "context: {context}");
            }
            s
        }
    }
}

/// `get -o raw`: the value's bytes, when there is exactly one value.
pub fn raw<'a>(key: &str, out: &'a Versions) -> Result<&'a [u8], String> {
    match out.values.as_slice() {
        [one] => Ok(one),
        [] => Err(format!("{key}: not found")),
        many => Err(format!(
            "{key} has {} concurrent values (siblings) and -o raw writes exactly one: read them \
             with -o json, resolve them, and write one value back with the context",
            many.len()
        )),
    }
}

/// `status`.
pub fn status(out: &ClusterStatus, format: Format) -> String {
    match format {
        Format::Json => {
            let nodes: Vec<_> = out
                .nodes
                .iter()
                .map(|n| {
                    json!({
                        "id": n.id, "zone": n.zone, "address": n.address,
                        "peer_address": n.peer_address, "weight": n.weight,
                        "reachable": n.reachable, "error": n.error, "self": n.is_self,
                        "down_for_ms": n.down_for.map(|d| d.as_millis() as u64),
                        "membership": n.membership.as_str(),
                        "primary_partitions": n.primary_partitions,
                        "replica_partitions": n.replica_partitions,
                    })
                })
                .collect();
            let hints: Vec<_> = out
                .hints
                .iter()
                .map(|h| json!({ "target": h.target, "count": h.count, "bytes": h.bytes }))
                .collect();
            let transfers: Vec<_> = out
                .transfers
                .iter()
                .map(|t| {
                    json!({ "partition": t.partition, "from": t.from, "to": t.to, "keys": t.keys_sent,
                            "bytes": t.bytes_sent, "bytes_per_second": t.bytes_per_second,
                            "state": t.state.as_str() })
                })
                .collect();
            let doc = json!({
                "node": out.node_id, "cluster": out.cluster, "n": out.n, "r": out.r, "w": out.w,
                "partitions": out.partitions, "local_keys": out.local_keys,
                "tombstones": out.tombstones, "tombstones_reaped": out.tombstones_reaped, "nodes": nodes,
                "hints": hints, "pending_partitions": out.pending_partitions, "transfers": transfers,
                "workers": out.workers.iter()
                    .map(|w| json!({ "name": w.name, "state": w.state, "steps": w.steps }))
                    .collect::<Vec<_>>(),
            });
            format!("{doc}\n")
        }
        Format::Text => {
            let mut s = format!(
                "cluster {} (seen from {}): N={} R={} W={}, {} partitions\n",
                out.cluster, out.node_id, out.n, out.r, out.w, out.partitions
            );
            let _ = writeln!(
                s,
                "{:<16} {:<10} {:<22} {:<10} {:>8} {:>8}",
                "NODE", "ZONE", "ADDRESS", "STATE", "PRIMARY", "REPLICA"
            );
            for n in &out.nodes {
                let state = format!("{}{}", n.membership, if n.reachable { "" } else { ",DOWN" });
                let _ = writeln!(
                    s,
                    "{:<16} {:<10} {:<22} {:<10} {:>8} {:>8}{}",
                    n.id,
                    n.zone,
                    n.address,
                    state,
                    n.primary_partitions,
                    n.replica_partitions,
                    if n.error.is_empty() { String::new() } else { format!("  ({})", n.error) }
                );
            }
            if out.pending_partitions > 0 {
                let _ = writeln!(
                    s,
                    "rebalancing: {} partition replica(s) still to move",
                    out.pending_partitions
                );
            }
            for t in &out.transfers {
                let _ = writeln!(
                    s,
                    "transfer of partition {} from {} to {}: {} ({} keys, {} bytes, {} bytes/s)",
                    t.partition,
                    t.from,
                    t.to,
                    t.state,
                    t.keys_sent,
                    t.bytes_sent,
                    t.bytes_per_second
                );
            }
            for h in &out.hints {
                let _ =
                    writeln!(s, "holding {} hint(s), {} bytes, for {}", h.count, h.bytes, h.target);
            }
            let _ = writeln!(
                s,
                "keys on {}: about {}, {} tombstone(s) held, {} reaped since start",
                out.node_id, out.local_keys, out.tombstones, out.tombstones_reaped
            );
            if !out.workers.is_empty() {
                let workers: Vec<String> = out
                    .workers
                    .iter()
                    .map(|w| format!("{} {} ({} steps)", w.name, w.state, w.steps))
                    .collect();
                let _ = writeln!(s, "workers on {}: {}", out.node_id, workers.join(", "));
            }
            s
        }
    }
}

/// A one-line progress bar: `[#####-----] 5/10 partitions moved (label)`.
pub fn progress_bar(done: u32, total: u32, label: &str) -> String {
    const WIDTH: u32 = 30;
    let filled = (done.min(total) * WIDTH).checked_div(total).unwrap_or(0) as usize;
    format!(
        "[{}{}] {done}/{total} partitions moved ({label})",
        "#".repeat(filled),
        "-".repeat(WIDTH as usize - filled)
    )
}

/// `repair`.
pub fn repair(out: &RepairReport, format: Format) -> String {
    match format {
        Format::Json => format!(
            "{}\n",
            json!({
                "partitions": out.partitions, "exchanges": out.exchanges,
                "keys_compared": out.keys_compared, "keys_pulled": out.keys_pulled,
                "keys_pushed": out.keys_pushed, "errors": out.errors,
            })
        ),
        Format::Text => {
            let mut s = format!(
                "{} partition(s), {} exchange(s): compared {} keys, pulled {}, pushed {}\n",
                out.partitions, out.exchanges, out.keys_compared, out.keys_pulled, out.keys_pushed
            );
            for e in &out.errors {
                let _ = writeln!(s, "error: {e}");
            }
            s
        }
    }
}

/// `ring`: partitions per node.
pub fn ring(out: &RingLayout, format: Format) -> String {
    let owned = |i: usize| -> Vec<u32> {
        out.owners
            .iter()
            .enumerate()
            .filter(|(_, o)| **o as usize == i)
            .map(|(p, _)| p as u32)
            .collect()
    };
    match format {
        Format::Json => {
            let nodes: Vec<_> = out
                .members
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    json!({ "id": m.id, "zone": m.zone, "address": m.address, "peer_address": m.peer_address,
                            "weight": m.weight, "partitions": owned(i) })
                })
                .collect();
            format!("{}\n", json!({ "partitions": out.partitions, "n": out.n, "nodes": nodes }))
        }
        Format::Text => {
            let mut s = format!("{} partitions, N={}\n", out.partitions, out.n);
            let _ =
                writeln!(s, "{:<16} {:<10} {:>6} {:>10}", "NODE", "ZONE", "WEIGHT", "PARTITIONS");
            for (i, m) in out.members.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "{:<16} {:<10} {:>6} {:>10}",
                    m.id,
                    m.zone,
                    m.weight,
                    owned(i).len()
                );
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamo_client::RingMember;

    #[test]
    fn get_json_has_the_documented_shape() {
        let out = Versions {
            values: vec![b"a".to_vec(), b"b".to_vec()],
            context: vec![1, 2],
            replies: 2,
        };
        let v: serde_json::Value = serde_json::from_str(&get("k", &out, Format::Json)).unwrap();
        assert_eq!(
            v,
            json!({"key": "k", "values": ["a", "b"], "encoding": "utf-8", "context": "AQI="})
        );
        let missing = Versions::default();
        let v: serde_json::Value = serde_json::from_str(&get("k", &missing, Format::Json)).unwrap();
        assert_eq!(v["values"], json!([]));
    }

    #[test]
    fn binary_values_are_base64_and_say_so() {
        let out = Versions { values: vec![vec![0xff, 0x00]], context: vec![], replies: 1 };
        let v: serde_json::Value = serde_json::from_str(&get("k", &out, Format::Json)).unwrap();
        assert_eq!(v["encoding"], "base64");
        assert_eq!(v["values"], json!(["/wA="]));
        assert!(get("k", &out, Format::Text).contains("binary"));
    }

    #[test]
    fn text_get_lists_siblings_and_context() {
        let out =
            Versions { values: vec![b"a".to_vec(), b"b".to_vec()], context: vec![7], replies: 2 };
        let text = get("k", &out, Format::Text);
        assert!(
            text.contains("2 concurrent values")
                && text.contains("[2] b")
                && text.contains("context: Bw=="),
            "{text}"
        );
        assert_eq!(get("k", &Versions::default(), Format::Text), "k: not found\n");
    }

    #[test]
    fn raw_is_the_one_value_or_an_error_saying_why() {
        let one = Versions { values: vec![vec![0, 159, 255]], context: vec![1], replies: 2 };
        assert_eq!(raw("k", &one).unwrap(), &[0, 159, 255]);
        assert_eq!(raw("k", &Versions::default()).unwrap_err(), "k: not found");
        let two = Versions { values: vec![b"a".to_vec(), b"b".to_vec()], ..one };
        assert!(raw("k", &two).unwrap_err().contains("2 concurrent values"));
    }

    #[test]
    fn progress_bar_fills_in_proportion() {
        assert_eq!(
            progress_bar(0, 0, "x"),
            format!("[{}] 0/0 partitions moved (x)", "-".repeat(30))
        );
        assert!(progress_bar(15, 30, "n").starts_with(&format!(
            "[{}{}]",
            "#".repeat(15),
            "-".repeat(15)
        )));
        assert!(progress_bar(40, 30, "n").starts_with(&format!("[{}]", "#".repeat(30))));
    }

    #[test]
    fn ring_counts_partitions_per_node() {
        let m = |id: &str| RingMember {
            id: id.into(),
            address: "a:1".into(),
            peer_address: "a:2".into(),
            zone: "z".into(),
            weight: 1,
        };
        let out = RingLayout {
            partitions: 4,
            n: 1,
            members: vec![m("a"), m("b")],
            owners: vec![0, 1, 0, 0],
            epoch: 1,
        };
        let v: serde_json::Value = serde_json::from_str(&ring(&out, Format::Json)).unwrap();
        assert_eq!(v["nodes"][0]["partitions"], json!([0, 2, 3]));
        assert_eq!(v["nodes"][1]["partitions"], json!([1]));
        assert!(ring(&out, Format::Text).contains("a                z               1          3"));
    }
}
