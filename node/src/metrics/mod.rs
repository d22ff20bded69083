//! Prometheus metrics of a node: one registry ([`METRICS`]) holding every event counter and
//! histogram (requests, quorum failures, hints, anti-entropy, transfers), the gauges read from
//! the node's state at each scrape ([`Sample`], filled by `node.rs`), the standard `process_`
//! metrics ([`process`]), and the HTTP endpoint serving them ([`http`]).
//!
//! The registry is per process, as with every Prometheus client library's default registry: a
//! node is one process, and components record events without being handed a handle (so no
//! constructor changes for instrumentation). Every metric is declared once here, with its help
//! text; [`catalogue`] lists them (the README's metric table is generated from it and a test
//! fails when the README is stale).
//!
//! Names follow Prometheus' conventions: `dynamo_` prefix, base units (seconds, bytes) in the
//! name, `_total` on counters (added by the encoder).

pub mod http;
pub mod process;

use std::fmt::Write as _;
use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Metric, Registry};

/// The process's metrics. See the module docs.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Labels of a request metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `coordinator` (the client API) or `replica` (internode replicate/fetch).
    pub role: &'static str,
    /// get, put, delete (coordinator); replicate, fetch (replica).
    pub op: &'static str,
    /// `ok`, or the error kind (the `dynamo-error` value: quorum, invalid-argument, ...).
    pub outcome: &'static str,
}

/// Labels of a latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleOp {
    pub role: &'static str,
    pub op: &'static str,
}

/// One label naming an operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: &'static str,
}

/// Labels of a quorum failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuorumLabels {
    pub op: &'static str,
    /// `timeout` (the deadline passed with too few answers), `replicas_failed` (too many
    /// replicas answered with an error or were unreachable), `no_coordinator` (a forwarded
    /// write reached none of the key's replicas).
    pub cause: &'static str,
}

/// One label giving a reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// One label giving an outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// One label giving a direction.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    /// `pulled` (fetched from the peer, merged here) or `pushed` (sent to the peer).
    pub direction: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets, seconds: 0.25 ms to about 16 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00025, 2.0, 17))
}

/// Siblings-per-read buckets.
fn siblings_histogram() -> Histogram {
    Histogram::new([0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 16.0, 32.0, 64.0])
}

/// One metric as the README lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// The exposed name (with `_total` for counters).
    pub name: String,
    /// counter, gauge or histogram.
    pub kind: &'static str,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

/// Every event metric of a node. Fields are public so a component records with one line.
pub struct Metrics {
    registry: Registry,
    descriptors: Vec<Descriptor>,
    /// Client requests by role, operation and outcome.
    pub requests: Family<RequestLabels, Counter>,
    /// Their latency.
    pub request_duration: HistogramFamily<RoleOp>,
    /// Writes handed to another node to coordinate (`sent`) or coordinated for another node
    /// (`received`).
    pub forwarded: Family<ForwardLabels, Counter>,
    pub quorum_failures: Family<QuorumLabels, Counter>,
    /// Live values per successful read.
    pub siblings: Histogram,
    /// Versions sent to stale replicas after a read.
    pub read_repairs: Counter,
    /// Hints written (this node stood in for an unreachable replica).
    pub hints_stored: Counter,
    /// Hints handed to their target (or, once it left, to the key's replicas) and removed.
    pub hints_delivered: Counter,
    /// Hints this node refused to keep.
    pub hints_dropped: Family<ReasonLabel, Counter>,
    pub antientropy_exchanges: Family<OutcomeLabel, Counter>,
    pub antientropy_keys_compared: Counter,
    pub antientropy_keys_repaired: Family<DirectionLabel, Counter>,
    pub transfer_keys: Counter,
    pub transfer_bytes: Counter,
    /// Partitions dropped after the ring no longer placed them here, and their keys.
    pub cleanup_partitions: Counter,
    pub cleanup_keys: Counter,
}

/// Labels of a forwarded write.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ForwardLabels {
    pub op: &'static str,
    /// `sent` or `received`.
    pub direction: &'static str,
}

impl Metrics {
    fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::default(),
            descriptors: Vec::new(),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            forwarded: Family::default(),
            quorum_failures: Family::default(),
            siblings: siblings_histogram(),
            read_repairs: Counter::default(),
            hints_stored: Counter::default(),
            hints_delivered: Counter::default(),
            hints_dropped: Family::default(),
            antientropy_exchanges: Family::default(),
            antientropy_keys_compared: Counter::default(),
            antientropy_keys_repaired: Family::default(),
            transfer_keys: Counter::default(),
            transfer_bytes: Counter::default(),
            cleanup_partitions: Counter::default(),
            cleanup_keys: Counter::default(),
        };
        let requests = m.requests.clone();
        m.register(
            "dynamo_requests",
            "Requests handled, by role (coordinator: the client API; replica: internode \
             replicate/fetch), operation and outcome (ok or the error kind).",
            &["role", "op", "outcome"],
            requests,
        );
        let durations = m.request_duration.clone();
        m.register(
            "dynamo_request_duration_seconds",
            "Latency of the requests counted in dynamo_requests_total, by role and operation.",
            &["role", "op"],
            durations,
        );
        let forwarded = m.forwarded.clone();
        m.register(
            "dynamo_forwarded_requests",
            "Writes forwarded to one of the key's replicas to coordinate (direction sent), or \
             coordinated here for the node that received them (received).",
            &["op", "direction"],
            forwarded,
        );
        let quorum = m.quorum_failures.clone();
        m.register(
            "dynamo_quorum_failures",
            "Requests that did not reach their quorum, by operation and cause (timeout, \
             replicas_failed, no_coordinator).",
            &["op", "cause"],
            quorum,
        );
        let siblings = m.siblings.clone();
        m.register(
            "dynamo_read_siblings",
            "Concurrent values (siblings) returned per successful get.",
            &[],
            siblings,
        );
        let c = m.read_repairs.clone();
        m.register(
            "dynamo_read_repairs",
            "Merged versions sent to stale replicas after a get.",
            &[],
            c,
        );
        let c = m.hints_stored.clone();
        m.register(
            "dynamo_hints_stored",
            "Hints written here for an unreachable replica (sloppy quorum).",
            &[],
            c,
        );
        let c = m.hints_delivered.clone();
        m.register(
            "dynamo_hints_delivered",
            "Hints delivered to their target (or its successors) and removed.",
            &[],
            c,
        );
        let c = m.hints_dropped.clone();
        m.register(
            "dynamo_hints_dropped",
            "Hints refused, by reason (not_member, past_window, over_cap).",
            &["reason"],
            c,
        );
        let c = m.antientropy_exchanges.clone();
        m.register(
            "dynamo_antientropy_exchanges",
            "Merkle-tree exchanges with another replica, by outcome (ok, error).",
            &["outcome"],
            c,
        );
        let c = m.antientropy_keys_compared.clone();
        m.register(
            "dynamo_antientropy_keys_compared",
            "Keys compared in differing Merkle leaves (both sides).",
            &[],
            c,
        );
        let c = m.antientropy_keys_repaired.clone();
        m.register(
            "dynamo_antientropy_keys_repaired",
            "Keys repaired by anti-entropy, by direction (pulled: merged here; pushed: sent).",
            &["direction"],
            c,
        );
        let c = m.transfer_keys.clone();
        m.register(
            "dynamo_transfer_keys",
            "Keys received by partition transfers (join, decommission).",
            &[],
            c,
        );
        let c = m.transfer_bytes.clone();
        m.register("dynamo_transfer_bytes", "Bytes received by partition transfers.", &[], c);
        let c = m.cleanup_partitions.clone();
        m.register(
            "dynamo_cleanup_partitions",
            "Partitions deleted here after the ring stopped placing them on this node.",
            &[],
            c,
        );
        let c = m.cleanup_keys.clone();
        m.register("dynamo_cleanup_keys", "Keys deleted by those cleanups.", &[], c);
        m
    }

    /// Registers `metric` under `name` (a counter's without `_total`) and records its
    /// descriptor for [`catalogue`].
    fn register(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        metric: impl Metric,
    ) {
        let kind = kind_name(metric.metric_type());
        let shown = if kind == "counter" { format!("{name}_total") } else { name.to_string() };
        self.descriptors.push(Descriptor { name: shown, kind, labels, help });
        // The encoder ends the help with a full stop of its own.
        self.registry.register(name, help.trim_end_matches('.'), metric);
    }

    /// Counts one request and its latency. `outcome` is `ok` or the error kind.
    pub fn request(
        &self,
        role: &'static str,
        op: &'static str,
        outcome: &'static str,
        took: Duration,
    ) {
        self.requests.get_or_create(&RequestLabels { role, op, outcome }).inc();
        self.request_duration.get_or_create(&RoleOp { role, op }).observe(took.as_secs_f64());
    }

    /// Counts a quorum failure.
    pub fn quorum_failed(&self, op: &'static str, cause: &'static str) {
        self.quorum_failures.get_or_create(&QuorumLabels { op, cause }).inc();
    }

    /// Counts a forwarded write.
    pub fn forwarded(&self, op: &'static str, direction: &'static str) {
        self.forwarded.get_or_create(&ForwardLabels { op, direction }).inc();
    }

    /// Counts a refused hint.
    pub fn hint_dropped(&self, reason: &'static str) {
        self.hints_dropped.get_or_create(&ReasonLabel { reason }).inc();
    }
}

fn kind_name(t: MetricType) -> &'static str {
    match t {
        MetricType::Counter => "counter",
        MetricType::Gauge => "gauge",
        MetricType::Histogram => "histogram",
        _ => "untyped",
    }
}

/// Storage engine figures read at scrape time (zero for the in-memory engine).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStats {
    /// RocksDB's estimate of live data, bytes.
    pub live_data_bytes: u64,
    /// Table (SST) files, every level and column family.
    pub sst_files: u64,
    /// Bytes in memtables (active and immutable).
    pub memtable_bytes: u64,
    /// Bytes compaction has yet to rewrite.
    pub pending_compaction_bytes: u64,
    /// Whether writes are stopped right now (1) or not (0).
    pub write_stopped: u64,
    /// Time writes were stalled or slowed since start, microseconds.
    pub write_stall_micros: u64,
    pub block_cache_hits: u64,
    pub block_cache_misses: u64,
    /// Estimated keys, all keyspaces.
    pub keys: u64,
}

/// The node's state at one scrape, read by `node.rs` from membership, storage and transfers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub node: String,
    pub zone: String,
    /// Members of this node's view by state (joining, normal, leaving, left), every state
    /// present (zero when none).
    pub members: Vec<(&'static str, u64)>,
    pub ring_epoch: u64,
    /// Partitions this node replicates in the current ring (as one of the first N).
    pub partitions_owned: u64,
    /// Other members this node's failure detector counts as down.
    pub peers_down: u64,
    /// Hints held here, per target: (target, keys, bytes).
    pub hints: Vec<(String, u64, u64)>,
    /// Partitions moving here in the layout change under way, not done yet.
    pub transfers_in_progress: u64,
    pub storage: EngineStats,
}

/// A scrape-time metric: name, kind, labels, help.
type Gauge = (&'static str, &'static str, &'static [&'static str], &'static str);

/// The metrics [`Sample`] produces, in order (see [`Sample::encode`]).
const SAMPLED: &[Gauge] = &[
    ("dynamo_node_info", "gauge", &["node", "zone"], "Always 1; names this node and its zone."),
    ("dynamo_members", "gauge", &["state"], "Members of this node's view of the ring, by state."),
    ("dynamo_ring_epoch", "gauge", &[], "Layout epoch of this node's ring."),
    (
        "dynamo_partitions_owned",
        "gauge",
        &[],
        "Partitions this node replicates (among the first N).",
    ),
    ("dynamo_peers_down", "gauge", &[], "Other members this node's failure detector sees as down."),
    ("dynamo_hints_keys", "gauge", &["target"], "Hints held here, keys, per target node."),
    ("dynamo_hints_bytes", "gauge", &["target"], "Hints held here, bytes, per target node."),
    (
        "dynamo_transfers_in_progress",
        "gauge",
        &[],
        "Partitions moving to this node in the layout change under way.",
    ),
    ("dynamo_storage_keys", "gauge", &[], "Estimated keys stored (every keyspace)."),
    ("dynamo_storage_live_data_bytes", "gauge", &[], "RocksDB's estimate of live data."),
    ("dynamo_storage_sst_files", "gauge", &[], "RocksDB table (SST) files."),
    ("dynamo_storage_memtable_bytes", "gauge", &[], "Bytes in RocksDB memtables."),
    (
        "dynamo_storage_pending_compaction_bytes",
        "gauge",
        &[],
        "Bytes RocksDB compaction has yet to rewrite.",
    ),
    ("dynamo_storage_write_stopped", "gauge", &[], "1 while RocksDB stops writes, else 0."),
    (
        "dynamo_storage_write_stall_seconds_total",
        "counter",
        &[],
        "Time RocksDB stalled or slowed writes.",
    ),
    (
        "dynamo_storage_block_cache_hits_total",
        "counter",
        &[],
        "RocksDB block cache hits (hit ratio: hits / (hits + misses)).",
    ),
    ("dynamo_storage_block_cache_misses_total", "counter", &[], "RocksDB block cache misses."),
];

impl Sample {
    /// Writes the sample in the Prometheus text format.
    fn encode(&self, out: &mut String) -> std::fmt::Result {
        let s = &self.storage;
        for (name, kind, _, help) in SAMPLED {
            writeln!(out, "# HELP {name} {help}")?;
            writeln!(out, "# TYPE {name} {kind}")?;
            let value = match *name {
                "dynamo_node_info" => {
                    writeln!(
                        out,
                        "{name}{{node=\"{}\",zone=\"{}\"}} 1",
                        escape(&self.node),
                        escape(&self.zone)
                    )?;
                    continue;
                }
                "dynamo_members" => {
                    for (state, count) in &self.members {
                        writeln!(out, "{name}{{state=\"{state}\"}} {count}")?;
                    }
                    continue;
                }
                "dynamo_hints_keys" | "dynamo_hints_bytes" => {
                    for (target, keys, bytes) in &self.hints {
                        let v = if *name == "dynamo_hints_keys" { keys } else { bytes };
                        writeln!(out, "{name}{{target=\"{}\"}} {v}", escape(target))?;
                    }
                    continue;
                }
                "dynamo_ring_epoch" => self.ring_epoch as f64,
                "dynamo_partitions_owned" => self.partitions_owned as f64,
                "dynamo_peers_down" => self.peers_down as f64,
                "dynamo_transfers_in_progress" => self.transfers_in_progress as f64,
                "dynamo_storage_keys" => s.keys as f64,
                "dynamo_storage_live_data_bytes" => s.live_data_bytes as f64,
                "dynamo_storage_sst_files" => s.sst_files as f64,
                "dynamo_storage_memtable_bytes" => s.memtable_bytes as f64,
                "dynamo_storage_pending_compaction_bytes" => s.pending_compaction_bytes as f64,
                "dynamo_storage_write_stopped" => s.write_stopped as f64,
                "dynamo_storage_write_stall_seconds_total" => s.write_stall_micros as f64 / 1e6,
                "dynamo_storage_block_cache_hits_total" => s.block_cache_hits as f64,
                "dynamo_storage_block_cache_misses_total" => s.block_cache_misses as f64,
                other => unreachable!("sampled metric {other} has no value"),
            };
            writeln!(out, "{name} {value}")?;
        }
        Ok(())
    }
}

/// A label value escaped for the text format.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Renders every metric of this process in the Prometheus text format (0.0.4): the event
/// metrics, `sample` (the node's state), and the `process_` metrics.
pub fn render(sample: &Sample) -> String {
    render_with(&METRICS, sample)
}

fn render_with(metrics: &Metrics, sample: &Sample) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &metrics.registry);
    let _ = sample.encode(&mut out);
    let _ = process::encode(&mut out);
    out
}

/// Every metric a node exposes: name, type, labels, help. The README's table is made from it.
pub fn catalogue() -> Vec<Descriptor> {
    let mut all = METRICS.descriptors.clone();
    all.extend(SAMPLED.iter().map(|(name, kind, labels, help)| Descriptor {
        name: name.to_string(),
        kind,
        labels,
        help,
    }));
    all.extend(process::DESCRIPTORS.iter().map(|(name, kind, help)| Descriptor {
        name: name.to_string(),
        kind,
        labels: &[],
        help,
    }));
    all
}

/// The README's metric table (Markdown), from [`catalogue`].
pub fn markdown_table() -> String {
    let mut out = String::from("| metric | type | labels | meaning |\n| --- | --- | --- | --- |\n");
    for d in catalogue() {
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} |",
            d.name,
            d.kind,
            d.labels.join(", "),
            d.help.replace('|', "\\|")
        );
    }
    out
}

#[cfg(test)]
mod tests;
