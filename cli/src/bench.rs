//! `dynamoctl bench`: a YCSB-style load generator. It loads `--records` keys, then runs one or
//! more workloads (read/update mixes over a uniform or zipfian key choice) at one or more
//! concurrency levels, and reports per operation type the throughput, latency percentiles from
//! HDR histograms, and errors by kind.
//!
//! Updates are Dynamo-style writes: each carries the newest context this run has for the key
//! (from its load, its last read or its last write), so a run overwrites values instead of
//! piling up siblings. A key this run has not seen yet (`--no-load`) is read once, untimed,
//! to learn its context; the report says how often that happened.
//!
//! With `--rate`, the run is open loop: operation `k` is scheduled at `start + k / rate` by a
//! pacing thread, whatever the cluster does, and its latency is measured from that scheduled
//! time. A stall then shows up in the percentiles of every operation it delayed instead of
//! silently lowering the request rate (coordinated omission). Without `--rate` each of the
//! `--concurrency` workers sends its next request as soon as the previous one is answered
//! (closed loop), which measures the throughput the cluster sustains.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::{json, Value as Json};
use tonic::Code;

use dynamo_client::{Client, ClientError};

use crate::connect::ConnectArgs;

use crate::Format;

/// Arguments of `dynamoctl bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Workloads to run one after the other (comma-separated): a = 50% read / 50% update,
    /// b = 95% read / 5% update, c = read only, f = 50% read / 50% read-modify-write (get, then
    /// put with the get's context), w = update only.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "a")]
    pub workload: Vec<Workload>,
    /// Number of records (keys) the workloads choose from.
    #[arg(long, default_value_t = 10_000)]
    pub records: u64,
    /// How keys are chosen: uniform, or zipfian (YCSB's, constant 0.99: a few keys are hot).
    #[arg(long, value_enum, default_value_t = Distribution::Zipfian)]
    pub distribution: Distribution,
    /// Size of every written value, in bytes.
    #[arg(long, default_value_t = 1024)]
    pub value_size: usize,
    /// Write every record before the runs (the default). On keys that exist already a load
    /// adds a sibling, which the first update of the key resolves.
    #[arg(long, overrides_with = "no_load")]
    pub load: bool,
    /// Skip the load phase: the records were loaded before (same --records and --key-prefix).
    #[arg(long, overrides_with = "load")]
    pub no_load: bool,
    /// Requests in flight (comma-separated to run each workload at several levels). The load
    /// phase uses the largest.
    #[arg(long, value_delimiter = ',', default_value = "16")]
    pub concurrency: Vec<usize>,
    /// How long each run lasts, in seconds (ignored with --ops).
    #[arg(long, default_value_t = 10.0)]
    pub duration_s: f64,
    /// Stop each run after this many operations instead of after --duration-s.
    #[arg(long)]
    pub ops: Option<u64>,
    /// Target rate in operations per second over all workers (open loop: latency is measured
    /// from each operation's scheduled start). Default: as fast as the cluster answers.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Read quorum for every get (1..=N; default: the cluster's R).
    #[arg(long)]
    pub r: Option<u32>,
    /// Write quorum for every put (1..=N; default: the cluster's W).
    #[arg(long)]
    pub w: Option<u32>,
    /// Nodes to spread the requests over, HOST:PORT,HOST:PORT (default: --endpoint).
    #[arg(long, value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Keys are KEY_PREFIX followed by the record number.
    #[arg(long, default_value = "bench:")]
    pub key_prefix: String,
    /// Seed of the key and operation choices, for repeatable runs.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Report format: text tables, or one JSON document at the end.
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: Format,
}

/// A YCSB-style operation mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    A,
    B,
    C,
    F,
    W,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::A => "a",
            Workload::B => "b",
            Workload::C => "c",
            Workload::F => "f",
            Workload::W => "w",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Workload::A => "50% read, 50% update",
            Workload::B => "95% read, 5% update",
            Workload::C => "100% read",
            Workload::F => "50% read, 50% read-modify-write",
            Workload::W => "100% update",
        }
    }

    /// The operation for a uniform draw `u` in `[0, 1)`.
    pub fn choose(self, u: f64) -> OpKind {
        let (read_share, other) = match self {
            Workload::A => (0.5, OpKind::Update),
            Workload::B => (0.95, OpKind::Update),
            Workload::C => (1.0, OpKind::Update),
            Workload::F => (0.5, OpKind::ReadModifyWrite),
            Workload::W => (0.0, OpKind::Update),
        };
        if u < read_share {
            OpKind::Read
        } else {
            other
        }
    }
}

/// Key choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Distribution {
    Uniform,
    Zipfian,
}

/// Operation types, each with its own histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// A put of the load phase (blind write).
    Insert,
    Read,
    /// A put with the newest context known for the key.
    Update,
    /// A get, then a put with the get's context; timed as a whole.
    ReadModifyWrite,
}

impl OpKind {
    const ALL: [OpKind; 4] =
        [OpKind::Insert, OpKind::Read, OpKind::Update, OpKind::ReadModifyWrite];

    fn name(self) -> &'static str {
        match self {
            OpKind::Insert => "insert",
            OpKind::Read => "read",
            OpKind::Update => "update",
            OpKind::ReadModifyWrite => "rmw",
        }
    }
}

/// Why an operation failed, as counted in the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Too few replicas answered (quorum), no coordinator reachable, node not ready, or the
    /// endpoint itself unreachable.
    Unavailable,
    /// No answer within --timeout-ms.
    Timeout,
    /// The node refused the request (bad argument or context, a limit exceeded).
    Invalid,
    Other,
}

impl ErrorKind {
    const ALL: [ErrorKind; 4] =
        [ErrorKind::Unavailable, ErrorKind::Timeout, ErrorKind::Invalid, ErrorKind::Other];

    fn name(self) -> &'static str {
        match self {
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Other => "other",
        }
    }

    /// Classifies a client error.
    pub fn of(e: &ClientError) -> ErrorKind {
        match e {
            ClientError::Timeout { .. } => ErrorKind::Timeout,
            ClientError::Connect { .. } | ClientError::Exhausted { .. } => ErrorKind::Unavailable,
            ClientError::InvalidRing { .. }
            | ClientError::NoEndpoint
            | ClientError::StillMember { .. }
            | ClientError::Unauthenticated { .. }
            | ClientError::PermissionDenied { .. }
            | ClientError::NotAdminPort { .. }
            | ClientError::Tls { .. }
            | ClientError::Settings(_) => ErrorKind::Other,
            ClientError::Node { code, .. } => match code {
                Code::Unavailable => ErrorKind::Unavailable,
                Code::DeadlineExceeded => ErrorKind::Timeout,
                Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
                    ErrorKind::Invalid
                }
                _ => ErrorKind::Other,
            },
        }
    }
}

/// YCSB's zipfian generator (Gray et al., "Quickly generating billion-record synthetic
/// databases", SIGMOD 1994): item `i` (0-based) is drawn with probability proportional to
/// `1 / (i + 1)^theta`, so low record numbers are the hot keys.
#[derive(Debug, Clone)]
pub struct Zipfian {
    items: u64,
    theta: f64,
    zetan: f64,
    alpha: f64,
    eta: f64,
}

impl Zipfian {
    /// YCSB's default skew.
    pub const THETA: f64 = 0.99;

    /// A generator over `0..items` (`items >= 1`). O(items) to set up (computes zeta(n)).
    pub fn new(items: u64, theta: f64) -> Zipfian {
        let items = items.max(1);
        let zeta = |n: u64| (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let zetan = zeta(items);
        let zeta2 = zeta(2);
        let eta = (1.0 - (2.0 / items as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan);
        Zipfian { items, theta, zetan, alpha: 1.0 / (1.0 - theta), eta }
    }

    /// The item for a uniform draw `u` in `[0, 1)`.
    pub fn sample(&self, u: f64) -> u64 {
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1.min(self.items - 1);
        }
        let v = self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha);
        (v as u64).min(self.items - 1)
    }
}

/// Picks record numbers.
#[derive(Debug, Clone)]
enum KeyChooser {
    Uniform(u64),
    Zipfian(Zipfian),
}

impl KeyChooser {
    fn next(&self, rng: &mut StdRng) -> u64 {
        match self {
            KeyChooser::Uniform(n) => rng.gen_range(0..*n),
            KeyChooser::Zipfian(z) => z.sample(rng.gen::<f64>()),
        }
    }
}

/// The newest context this run has for each record it has seen, sharded to keep lock hold
/// times short and memory proportional to the keys touched.
struct Contexts {
    shards: Vec<Mutex<HashMap<u64, Vec<u8>>>>,
}

impl Contexts {
    const SHARDS: usize = 64;

    fn new() -> Contexts {
        Contexts { shards: (0..Self::SHARDS).map(|_| Mutex::new(HashMap::new())).collect() }
    }

    fn shard(&self, record: u64) -> &Mutex<HashMap<u64, Vec<u8>>> {
        &self.shards[(record % Self::SHARDS as u64) as usize]
    }

    fn get(&self, record: u64) -> Option<Vec<u8>> {
        self.shard(record).lock().ok()?.get(&record).cloned()
    }

    fn set(&self, record: u64, context: Vec<u8>) {
        if context.is_empty() {
            return;
        }
        if let Ok(mut shard) = self.shard(record).lock() {
            shard.insert(record, context);
        }
    }
}

/// Latencies and outcomes of one operation type in one run.
#[derive(Debug, Clone)]
pub struct OpStats {
    /// Latencies of successful operations, in microseconds.
    pub latency_us: Histogram<u64>,
    pub errors: [u64; 4],
    /// First error message of each kind, to show the user what went wrong.
    pub first_error: [Option<String>; 4],
    /// Reads (and rmw reads) that found no value.
    pub not_found: u64,
    /// Reads that returned more than one concurrent value.
    pub siblings: u64,
}

/// Longest latency the histograms track exactly; longer ones are recorded as this.
const MAX_LATENCY_US: u64 = 3_600_000_000;

impl Default for OpStats {
    fn default() -> Self {
        OpStats {
            latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("valid histogram bounds"),
            errors: [0; 4],
            first_error: Default::default(),
            not_found: 0,
            siblings: 0,
        }
    }
}

impl OpStats {
    fn error_count(&self) -> u64 {
        self.errors.iter().sum()
    }

    fn record_error(&mut self, e: &ClientError) {
        let i = ErrorKind::ALL.iter().position(|k| *k == ErrorKind::of(e)).unwrap_or(3);
        self.errors[i] += 1;
        if self.first_error[i].is_none() {
            self.first_error[i] = Some(e.to_string());
        }
    }
}

/// The measurements of one phase (the load or one workload at one concurrency).
#[derive(Debug, Clone)]
pub struct PhaseReport {
    /// `None` for the load phase.
    pub workload: Option<Workload>,
    pub concurrency: usize,
    pub rate: Option<f64>,
    pub elapsed: Duration,
    /// Per operation type, in [`OpKind::ALL`] order; only types that ran.
    pub ops: Vec<(OpKind, OpStats)>,
    /// Updates that first read their key (untimed) to learn its context.
    pub context_reads: u64,
}

impl PhaseReport {
    /// Successful operations.
    pub fn total_ops(&self) -> u64 {
        self.ops.iter().map(|(_, s)| s.latency_us.len()).sum()
    }

    pub fn total_errors(&self) -> u64 {
        self.ops.iter().map(|(_, s)| s.error_count()).sum()
    }

    fn per_second(&self, n: u64) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            n as f64 / secs
        } else {
            0.0
        }
    }

    fn title(&self, setup: &Setup) -> String {
        let mode = match self.rate {
            Some(r) => format!("open loop at {r} ops/s"),
            None => "closed loop".into(),
        };
        match self.workload {
            None => format!(
                "load: {} records of {} bytes, concurrency {}",
                setup.records, setup.value_size, self.concurrency
            ),
            Some(w) => format!(
                "workload {} ({}), {} over {} records, concurrency {}, {mode}",
                w.name(),
                w.describe(),
                setup.distribution_name(),
                setup.records,
                self.concurrency
            ),
        }
    }

    /// The text report of this phase.
    pub fn text(&self, setup: &Setup) -> String {
        let mut s = format!(
            "{}: {} ops in {:.1} s = {:.0} ops/s, {} errors\n",
            self.title(setup),
            self.total_ops(),
            self.elapsed.as_secs_f64(),
            self.per_second(self.total_ops()),
            self.total_errors()
        );
        let _ = writeln!(
            s,
            "  {:<7} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9} {:>7}",
            "op", "ops", "ops/s", "p50 ms", "p95 ms", "p99 ms", "p99.9 ms", "max ms", "errors"
        );
        let ms = |us: u64| us as f64 / 1000.0;
        for (kind, st) in &self.ops {
            let h = &st.latency_us;
            let _ = writeln!(
                s,
                "  {:<7} {:>9} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9.2} {:>7}",
                kind.name(),
                h.len(),
                self.per_second(h.len()),
                ms(h.value_at_quantile(0.50)),
                ms(h.value_at_quantile(0.95)),
                ms(h.value_at_quantile(0.99)),
                ms(h.value_at_quantile(0.999)),
                ms(h.max()),
                st.error_count()
            );
        }
        for (kind, st) in &self.ops {
            for (i, k) in ErrorKind::ALL.iter().enumerate() {
                if st.errors[i] > 0 {
                    let _ = writeln!(
                        s,
                        "  {} {} error(s) ({}), first: {}",
                        kind.name(),
                        st.errors[i],
                        if *k == ErrorKind::Unavailable { "quorum/unavailable" } else { k.name() },
                        st.first_error[i].as_deref().unwrap_or("")
                    );
                }
            }
            if st.siblings > 0 {
                let _ = writeln!(
                    s,
                    "  {} {} answer(s) had concurrent values (siblings)",
                    kind.name(),
                    st.siblings
                );
            }
            if st.not_found > 0 {
                let _ = writeln!(
                    s,
                    "  {} {} key(s) not found (load the records first: drop --no-load)",
                    kind.name(),
                    st.not_found
                );
            }
        }
        if self.context_reads > 0 {
            let _ = writeln!(
                s,
                "  {} update(s) first read their key (untimed) to learn its context",
                self.context_reads
            );
        }
        s
    }

    /// The JSON report of this phase.
    pub fn json(&self) -> Json {
        let mut ops = serde_json::Map::new();
        for (kind, st) in &self.ops {
            let h = &st.latency_us;
            let errors: serde_json::Map<String, Json> = ErrorKind::ALL
                .iter()
                .zip(st.errors)
                .map(|(k, n)| (k.name().to_string(), json!(n)))
                .collect();
            ops.insert(
                kind.name().into(),
                json!({
                    "ops": h.len(),
                    "ops_per_s": self.per_second(h.len()),
                    "latency_us": {
                        "p50": h.value_at_quantile(0.50),
                        "p95": h.value_at_quantile(0.95),
                        "p99": h.value_at_quantile(0.99),
                        "p999": h.value_at_quantile(0.999),
                        "max": h.max(),
                        "mean": h.mean(),
                    },
                    "errors": errors,
                    "not_found": st.not_found,
                    "siblings": st.siblings,
                }),
            );
        }
        json!({
            "workload": self.workload.map(Workload::name).unwrap_or("load"),
            "concurrency": self.concurrency,
            "target_rate": self.rate,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "ops": self.total_ops(),
            "ops_per_s": self.per_second(self.total_ops()),
            "errors": self.total_errors(),
            "context_reads": self.context_reads,
            "operations": ops,
        })
    }
}

/// What every phase of one bench invocation shares.
pub struct Setup {
    pub endpoints: Vec<String>,
    pub records: u64,
    pub value_size: usize,
    pub distribution: Distribution,
    pub r: Option<u32>,
    pub w: Option<u32>,
    pub key_prefix: String,
    pub seed: u64,
    /// How the endpoint node describes the cluster ("N=3 R=2 W=2, 3 nodes").
    pub cluster: String,
    /// Whether the clients talk TLS to the nodes (false: a `--dev --insecure` cluster).
    pub tls: bool,
    /// Whether requests were routed to their key's replicas by one partition-aware client
    /// (else each endpoint's own client sends to that node, which coordinates or forwards).
    pub partition_aware: bool,
}

impl Setup {
    fn distribution_name(&self) -> &'static str {
        match self.distribution {
            Distribution::Uniform => "uniform",
            Distribution::Zipfian => "zipfian",
        }
    }

    fn key(&self, record: u64) -> Vec<u8> {
        format!("{}{record}", self.key_prefix).into_bytes()
    }
}

/// When a phase ends.
#[derive(Debug, Clone, Copy)]
enum Limit {
    /// The load: records `0..n`, each once.
    Records(u64),
    Ops(u64),
    Duration(Duration),
}

/// State shared by the workers of one phase.
struct Phase {
    setup: Arc<Setup>,
    clients: Vec<Client>,
    contexts: Arc<Contexts>,
    workload: Option<Workload>,
    limit: Limit,
    keys: KeyChooser,
    /// Operations handed out (closed loop) or scheduled (open loop).
    issued: AtomicU64,
    /// Operations finished, with or without error (for the progress line).
    finished: AtomicU64,
    failed: AtomicU64,
    context_reads: AtomicU64,
    /// Set when the duration is over or on Ctrl-C.
    stop: Arc<AtomicBool>,
    stats: [Mutex<OpStats>; 4],
    /// Random bytes values are cut from (value_size + 4 KiB).
    pool: Vec<u8>,
}

fn kind_index(kind: OpKind) -> usize {
    OpKind::ALL.iter().position(|k| *k == kind).unwrap_or(0)
}

impl Phase {
    /// Closed loop: the next operation's sequence number, or `None` when the phase is over.
    fn next_closed(&self) -> Option<u64> {
        if self.stop.load(Ordering::Relaxed) {
            return None;
        }
        let seq = self.issued.fetch_add(1, Ordering::Relaxed);
        match self.limit {
            Limit::Records(n) | Limit::Ops(n) if seq >= n => None,
            _ => Some(seq),
        }
    }

    fn record(&self, kind: OpKind, f: impl FnOnce(&mut OpStats)) {
        if let Ok(mut st) = self.stats[kind_index(kind)].lock() {
            f(&mut st);
        }
    }

    /// A value of `value_size` random-looking bytes: a window of the phase's random pool at a
    /// random offset (a copy, not a fresh random fill, to spend the client's CPU on requests).
    fn value(&self, rng: &mut StdRng) -> Vec<u8> {
        let offset = rng.gen_range(0..=self.pool.len() - self.setup.value_size);
        self.pool[offset..offset + self.setup.value_size].to_vec()
    }

    /// Runs one operation; `scheduled` is when it was due (open loop) or `None` (closed loop:
    /// timed from when it is sent).
    async fn run_one(
        &self,
        seq: u64,
        client: &Client,
        rng: &mut StdRng,
        scheduled: Option<Instant>,
    ) {
        let (kind, record) = match self.workload {
            None => (OpKind::Insert, seq),
            Some(w) => (w.choose(rng.gen::<f64>()), self.keys.next(rng)),
        };
        let key = self.setup.key(record);
        let (r, w) = (self.setup.r, self.setup.w);
        let mut context = Vec::new();
        if kind == OpKind::Update {
            context = match self.contexts.get(record) {
                Some(c) => c,
                None => {
                    // Untimed: the update's latency is the put's.
                    self.context_reads.fetch_add(1, Ordering::Relaxed);
                    match client.get(&key, r).await {
                        Ok(got) => got.context,
                        Err(_) => Vec::new(),
                    }
                }
            };
        }
        let value = if kind == OpKind::Read { Vec::new() } else { self.value(rng) };
        let start = scheduled.unwrap_or_else(Instant::now);
        let outcome: Result<(bool, bool), ClientError> = match kind {
            OpKind::Insert | OpKind::Update => {
                client.put(&key, value, context, w).await.map(|out| {
                    self.contexts.set(record, out.context);
                    (false, false)
                })
            }
            OpKind::Read => client.get(&key, r).await.map(|got| {
                self.contexts.set(record, got.context);
                (got.values.is_empty(), got.values.len() > 1)
            }),
            OpKind::ReadModifyWrite => match client.get(&key, r).await {
                Ok(got) => {
                    let found = (got.values.is_empty(), got.values.len() > 1);
                    client.put(&key, value, got.context, w).await.map(|out| {
                        self.contexts.set(record, out.context);
                        found
                    })
                }
                Err(e) => Err(e),
            },
        };
        let elapsed = start.elapsed();
        match outcome {
            Ok((not_found, siblings)) => self.record(kind, |st| {
                st.latency_us.saturating_record((elapsed.as_micros() as u64).max(1));
                st.not_found += u64::from(not_found);
                st.siblings += u64::from(siblings);
            }),
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.record(kind, |st| st.record_error(&e));
            }
        }
        self.finished.fetch_add(1, Ordering::Relaxed);
    }
}

/// The open-loop pacer: a thread (for sub-millisecond sleeps; tokio's timer has a 1 ms
/// resolution) that sends each operation's scheduled time at that time. Workers take the
/// times from the shared receiver; when all are busy the times queue up, and the queueing
/// delay counts in the latency of the operations that waited.
fn spawn_pacer(
    rate: f64,
    limit: Limit,
    stop: Arc<AtomicBool>,
    tx: tokio::sync::mpsc::UnboundedSender<Instant>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let interval = Duration::from_secs_f64(1.0 / rate);
        for k in 0u64.. {
            let due = start + interval.mul_f64(k as f64);
            match limit {
                Limit::Records(n) | Limit::Ops(n) if k >= n => return,
                Limit::Duration(d) if due >= start + d => return,
                _ => {}
            }
            // Sleep in short steps so a stop (Ctrl-C) is noticed even at low rates.
            loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let now = Instant::now();
                if now >= due {
                    break;
                }
                std::thread::sleep((due - now).min(Duration::from_millis(50)));
            }
            if tx.send(due).is_err() {
                return;
            }
        }
    })
}

/// One worker of a phase: runs operations until the phase is over.
async fn worker(
    phase: Arc<Phase>,
    client: Client,
    seed: u64,
    schedule: Option<Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Instant>>>>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    loop {
        let (seq, scheduled) = match &schedule {
            None => match phase.next_closed() {
                Some(seq) => (seq, None),
                None => return,
            },
            Some(rx) => {
                let due = rx.lock().await.recv().await;
                match due {
                    Some(due) if !phase.stop.load(Ordering::Relaxed) => {
                        (phase.issued.fetch_add(1, Ordering::Relaxed), Some(due))
                    }
                    _ => return,
                }
            }
        };
        phase.run_one(seq, &client, &mut rng, scheduled).await;
    }
}

/// Draws the progress line on stderr until `done` is set.
async fn progress(phase: Arc<Phase>, label: String, started: Instant, done: Arc<AtomicBool>) {
    const WIDTH: usize = 30;
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    while !done.load(Ordering::Relaxed) {
        ticker.tick().await;
        let finished = phase.finished.load(Ordering::Relaxed);
        let elapsed = started.elapsed().as_secs_f64();
        let fraction = match phase.limit {
            Limit::Records(n) | Limit::Ops(n) => finished as f64 / n.max(1) as f64,
            Limit::Duration(d) => elapsed / d.as_secs_f64().max(f64::MIN_POSITIVE),
        }
        .clamp(0.0, 1.0);
        let filled = (fraction * WIDTH as f64) as usize;
        eprint!(
            "\r{label} [{}{}] {finished} ops, {:.0} ops/s, {} errors   ",
            "#".repeat(filled),
            "-".repeat(WIDTH - filled),
            if elapsed > 0.0 { finished as f64 / elapsed } else { 0.0 },
            phase.failed.load(Ordering::Relaxed)
        );
        let _ = std::io::stderr().flush();
    }
    eprint!("\r{}\r", " ".repeat(label.len() + WIDTH + 60));
    let _ = std::io::stderr().flush();
}

/// What every phase of one invocation talks to and shares.
struct Bench {
    setup: Arc<Setup>,
    /// One per endpoint, or one partition-aware client for all; worker `i` uses
    /// `clients[i % len]`.
    clients: Vec<Client>,
    contexts: Arc<Contexts>,
    /// Set on Ctrl-C: ends the current phase and skips the rest.
    interrupted: Arc<AtomicBool>,
}

/// Runs one phase to its end and reports it.
async fn run_phase(
    bench: &Bench,
    workload: Option<Workload>,
    concurrency: usize,
    limit: Limit,
    rate: Option<f64>,
) -> PhaseReport {
    let (setup, stop) = (&bench.setup, &bench.interrupted);
    let keys = match setup.distribution {
        Distribution::Uniform => KeyChooser::Uniform(setup.records),
        Distribution::Zipfian => KeyChooser::Zipfian(Zipfian::new(setup.records, Zipfian::THETA)),
    };
    // A fresh flag per phase, set by the global one (Ctrl-C) or by this phase's timer.
    let phase_stop = Arc::new(AtomicBool::new(stop.load(Ordering::Relaxed)));
    let phase = Arc::new(Phase {
        setup: setup.clone(),
        clients: bench.clients.clone(),
        contexts: bench.contexts.clone(),
        workload,
        limit,
        keys,
        issued: AtomicU64::new(0),
        finished: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        context_reads: AtomicU64::new(0),
        stop: phase_stop.clone(),
        stats: Default::default(),
        pool: {
            let mut pool = vec![0u8; setup.value_size + 4096];
            StdRng::seed_from_u64(setup.seed).fill_bytes(&mut pool);
            pool
        },
    });
    let label = match workload {
        Some(w) => format!("{} c={concurrency}", w.name()),
        None => "load".into(),
    };
    let started = Instant::now();
    let (pacer, schedule) = match rate {
        Some(rate) => {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            (
                Some(spawn_pacer(rate, limit, phase_stop.clone(), tx)),
                Some(Arc::new(tokio::sync::Mutex::new(rx))),
            )
        }
        None => (None, None),
    };
    let workers: Vec<_> = (0..concurrency)
        .map(|i| {
            let client = phase.clients[i % phase.clients.len()].clone();
            let seed = setup.seed
                ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
                ^ workload.map_or(0, |w| w as u64 + 1) << 56;
            tokio::spawn(worker(phase.clone(), client, seed, schedule.clone()))
        })
        .collect();
    let done = Arc::new(AtomicBool::new(false));
    let bar = std::io::stderr()
        .is_terminal()
        .then(|| tokio::spawn(progress(phase.clone(), label, started, done.clone())));
    // The stopper ends the phase at its deadline or on the global stop (Ctrl-C), and exits
    // when the phase ends by itself (operation count reached).
    let deadline = match limit {
        Limit::Duration(d) => Some(tokio::time::Instant::now() + d),
        _ => None,
    };
    let stopper = {
        let (stop, phase_stop, done) = (stop.clone(), phase_stop.clone(), done.clone());
        tokio::spawn(async move {
            loop {
                if stop.load(Ordering::Relaxed)
                    || deadline.is_some_and(|d| tokio::time::Instant::now() >= d)
                {
                    phase_stop.store(true, Ordering::Relaxed);
                    return;
                }
                if done.load(Ordering::Relaxed) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    for w in workers {
        let _ = w.await;
    }
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    phase_stop.store(true, Ordering::Relaxed);
    let _ = stopper.await;
    if let Some(bar) = bar {
        let _ = bar.await;
    }
    if let Some(pacer) = pacer {
        // The pacer sees the stop flag within 50 ms.
        let _ = tokio::task::spawn_blocking(move || pacer.join()).await;
    }
    let ops = OpKind::ALL
        .iter()
        .zip(&phase.stats)
        .filter_map(|(kind, st)| {
            let st = st.lock().ok()?.clone();
            (st.latency_us.len() + st.error_count() > 0).then_some((*kind, st))
        })
        .collect();
    PhaseReport {
        workload,
        concurrency,
        rate,
        elapsed,
        ops,
        context_reads: phase.context_reads.load(Ordering::Relaxed),
    }
}

/// Checks the arguments; returns the endpoints to use.
fn validate(args: &BenchArgs, default_endpoint: &str) -> Result<Vec<String>, String> {
    if args.records == 0 {
        return Err("--records must be at least 1".into());
    }
    if args.concurrency.is_empty() || args.concurrency.contains(&0) {
        return Err("--concurrency must be at least 1".into());
    }
    if args.ops == Some(0) {
        return Err("--ops must be at least 1".into());
    }
    if args.ops.is_none() && !(args.duration_s.is_finite() && args.duration_s > 0.0) {
        return Err(format!(
            "--duration-s {} must be a positive number of seconds",
            args.duration_s
        ));
    }
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(format!(
                "--rate {rate} must be a positive number of operations per second"
            ));
        }
    }
    if args.workload.is_empty() {
        return Err("--workload needs at least one of a, b, c, f, w".into());
    }
    let endpoints: Vec<String> = if args.endpoints.is_empty() {
        vec![default_endpoint.to_string()]
    } else {
        args.endpoints.iter().map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect()
    };
    if endpoints.is_empty() {
        return Err("--endpoints is empty: give HOST:PORT[,HOST:PORT...]".into());
    }
    Ok(endpoints)
}

/// The whole report as one JSON document. `ring_epoch`: the layout epoch the partition-aware
/// client routed with at the end (null without routing).
pub fn json_report(
    setup: &Setup,
    ring_epoch: Option<u64>,
    load: Option<&PhaseReport>,
    runs: &[PhaseReport],
) -> Json {
    json!({
        "endpoints": setup.endpoints,
        "cluster": setup.cluster,
        "tls": setup.tls,
        "partition_aware": setup.partition_aware,
        "ring_epoch": ring_epoch,
        "records": setup.records,
        "value_size": setup.value_size,
        "distribution": setup.distribution_name(),
        "r": setup.r,
        "w": setup.w,
        "load": load.map(PhaseReport::json),
        "runs": runs.iter().map(PhaseReport::json).collect::<Vec<_>>(),
    })
}

/// Runs `dynamoctl bench`. With `partition_aware`, one client seeded with every endpoint
/// routes each request to its key's replicas; without, worker `i` talks to endpoint
/// `i % endpoints` only.
pub async fn run(
    args: BenchArgs,
    connect: &ConnectArgs,
    timeout: Duration,
    partition_aware: bool,
) -> Result<(), String> {
    let endpoints = validate(&args, &connect.endpoint)?;
    let tls = connect.credentials()?.is_tls();
    let per_endpoint = endpoints
        .iter()
        .map(|e| connect.client([e.as_str()], timeout, false))
        .collect::<Result<Vec<_>, _>>()?;
    // Fail early, with the client's advice, when an endpoint does not answer or refuses the
    // credentials (the ring needs only the read role, as the workload does).
    let mut ring = None;
    for client in &per_endpoint {
        let layout = client.ring().await.map_err(|e| e.to_string())?;
        ring.get_or_insert(layout);
    }
    let ring = ring.expect("validate gives at least one endpoint");
    // N, R and W as the cluster has them need the admin API; with a data credential only, the
    // ring's N and size describe the cluster.
    let cluster = match per_endpoint[0].status().await {
        Ok(status) => format!(
            "{}: N={} R={} W={}, {} nodes",
            status.cluster,
            status.n,
            status.r,
            status.w,
            status.nodes.len()
        ),
        Err(_) => format!(
            "N={}, {} nodes (R and W: pass an admin credential and --admin-addr to show them)",
            ring.n,
            ring.members.len()
        ),
    };
    let setup = Arc::new(Setup {
        endpoints,
        records: args.records,
        value_size: args.value_size,
        distribution: args.distribution,
        r: args.r,
        w: args.w,
        key_prefix: args.key_prefix.clone(),
        seed: args.seed,
        cluster,
        tls,
        partition_aware,
    });
    let clients = if partition_aware {
        let client = connect.client(setup.endpoints.iter().cloned(), timeout, true)?;
        // Route from the first request on, so the load is measured with routing too.
        client.refresh_ring().await.map_err(|e| {
            format!(
                "cannot fetch the ring to route requests: {e}; bench without routing with \
                 --partition-aware false"
            )
        })?;
        vec![client]
    } else {
        per_endpoint
    };
    let text = args.output == Format::Text;
    if text {
        let routing = match clients[0].ring_epoch() {
            Some(epoch) => format!("partition-aware routing on (ring epoch {epoch})"),
            None => "partition-aware routing off".to_string(),
        };
        let transport = if setup.tls { "TLS" } else { "plaintext (insecure)" };
        println!(
            "cluster {} via {} over {transport}, {routing}",
            setup.cluster,
            setup.endpoints.join(",")
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // Detached on purpose: lives as long as the command; Ctrl-C ends the current phase
        // early and skips the rest, and the report covers what was measured.
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.store(true, Ordering::Relaxed);
            }
        });
    }
    let bench = Bench {
        setup: setup.clone(),
        clients,
        contexts: Arc::new(Contexts::new()),
        interrupted: stop.clone(),
    };
    let max_concurrency = args.concurrency.iter().copied().max().unwrap_or(1);
    let load = if args.no_load {
        None
    } else {
        let report =
            run_phase(&bench, None, max_concurrency, Limit::Records(args.records), None).await;
        if text {
            println!("{}", report.text(&setup));
        }
        Some(report)
    };
    let limit = match args.ops {
        Some(n) => Limit::Ops(n),
        None => Limit::Duration(Duration::from_secs_f64(args.duration_s)),
    };
    let mut runs = Vec::new();
    'all: for workload in &args.workload {
        for &concurrency in &args.concurrency {
            if stop.load(Ordering::Relaxed) {
                break 'all;
            }
            let report = run_phase(&bench, Some(*workload), concurrency, limit, args.rate).await;
            if text {
                println!("{}", report.text(&setup));
            }
            runs.push(report);
        }
    }
    if !text {
        let ring_epoch = bench.clients[0].ring_epoch();
        println!("{}", json_report(&setup, ring_epoch, load.as_ref(), &runs));
    }
    if stop.load(Ordering::Relaxed) {
        eprintln!("interrupted: the report covers what ran before Ctrl-C");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_mix_reads_and_writes_as_documented() {
        let share = |w: Workload, kind: OpKind| {
            (0..1000).filter(|i| w.choose(*i as f64 / 1000.0) == kind).count()
        };
        assert_eq!(share(Workload::A, OpKind::Read), 500);
        assert_eq!(share(Workload::A, OpKind::Update), 500);
        assert_eq!(share(Workload::B, OpKind::Read), 950);
        assert_eq!(share(Workload::C, OpKind::Read), 1000);
        assert_eq!(share(Workload::F, OpKind::ReadModifyWrite), 500);
        assert_eq!(share(Workload::W, OpKind::Update), 1000);
    }

    #[test]
    fn zipfian_stays_in_range_and_favours_low_records() {
        let z = Zipfian::new(1000, Zipfian::THETA);
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            counts[z.sample(rng.gen::<f64>()) as usize] += 1;
        }
        // Item 0 has probability 1/zeta(1000, 0.99), about 13%; the hottest ten about 39%.
        assert!((11_000..15_000).contains(&counts[0]), "{}", counts[0]);
        let top10: u32 = counts[..10].iter().sum();
        assert!((35_000..43_000).contains(&top10), "{top10}");
        assert!(counts[0] > counts[1] && counts[1] > counts[10] && counts[10] > counts[999]);
        assert_eq!(Zipfian::new(1, Zipfian::THETA).sample(0.999), 0);
        assert_eq!(z.sample(0.999_999_999), z.sample(0.999_999_999).min(999));
    }

    #[test]
    fn errors_are_classified_by_kind() {
        let node = |code| ClientError::Node { code, message: "m".into() };
        assert_eq!(ErrorKind::of(&node(Code::Unavailable)), ErrorKind::Unavailable);
        assert_eq!(ErrorKind::of(&node(Code::InvalidArgument)), ErrorKind::Invalid);
        assert_eq!(ErrorKind::of(&node(Code::FailedPrecondition)), ErrorKind::Invalid);
        assert_eq!(ErrorKind::of(&node(Code::Internal)), ErrorKind::Other);
        let timeout = ClientError::Timeout { endpoint: "e".into(), timeout_ms: 1 };
        assert_eq!(ErrorKind::of(&timeout), ErrorKind::Timeout);
        let connect = ClientError::Connect { endpoint: "e".into(), cause: "refused".into() };
        assert_eq!(ErrorKind::of(&connect), ErrorKind::Unavailable);
    }

    fn setup() -> Setup {
        Setup {
            endpoints: vec!["127.0.0.1:1".into()],
            records: 100,
            value_size: 10,
            distribution: Distribution::Zipfian,
            r: None,
            w: Some(1),
            key_prefix: "bench:".into(),
            seed: 1,
            cluster: "dev: N=1 R=1 W=1, 1 nodes".into(),
            tls: true,
            partition_aware: true,
        }
    }

    #[test]
    fn reports_have_ordered_percentiles_and_error_counts() {
        let mut read = OpStats::default();
        for us in 1..=1000u64 {
            read.latency_us.saturating_record(us * 10);
        }
        read.record_error(&ClientError::Timeout { endpoint: "e".into(), timeout_ms: 5 });
        let report = PhaseReport {
            workload: Some(Workload::C),
            concurrency: 4,
            rate: None,
            elapsed: Duration::from_secs(2),
            ops: vec![(OpKind::Read, read)],
            context_reads: 0,
        };
        let doc = json_report(&setup(), Some(7), None, std::slice::from_ref(&report));
        assert_eq!(doc["partition_aware"], true);
        assert_eq!(doc["ring_epoch"], 7);
        let run = &doc["runs"][0];
        assert_eq!(run["workload"], "c");
        assert_eq!(run["ops"], 1000);
        assert_eq!(run["ops_per_s"], 500.0);
        assert_eq!(run["errors"], 1);
        let read = &run["operations"]["read"];
        assert_eq!(read["errors"]["timeout"], 1);
        assert_eq!(read["errors"]["unavailable"], 0);
        let p = |q: &str| read["latency_us"][q].as_u64().unwrap();
        assert!(p("p50") <= p("p95") && p("p95") <= p("p99") && p("p99") <= p("p999"));
        assert!(p("p999") <= p("max") && p("max") >= 9_990, "{read}");
        assert!((4_990..=5_010).contains(&p("p50")), "{read}");
        assert!(doc["load"].is_null());
        let text = report.text(&setup());
        assert!(text.contains("workload c (100% read)") && text.contains("1000 ops"), "{text}");
        assert!(text.contains("1 error(s) (timeout), first: no answer from e"), "{text}");
    }

    #[test]
    fn bad_arguments_are_refused_with_the_flag_named() {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            bench: BenchArgs,
        }
        let parse = |args: &[&str]| {
            let wrap =
                Wrap::try_parse_from(std::iter::once("bench").chain(args.iter().copied())).unwrap();
            validate(&wrap.bench, "127.0.0.1:7070")
        };
        assert_eq!(parse(&[]).unwrap(), vec!["127.0.0.1:7070".to_string()]);
        assert_eq!(parse(&["--endpoints", "a:1,b:2"]).unwrap(), vec!["a:1", "b:2"]);
        assert!(parse(&["--records", "0"]).unwrap_err().contains("--records"));
        assert!(parse(&["--concurrency", "1,0"]).unwrap_err().contains("--concurrency"));
        assert!(parse(&["--rate", "0"]).unwrap_err().contains("--rate"));
        assert!(parse(&["--duration-s", "0"]).unwrap_err().contains("--duration-s"));
        assert!(parse(&["--ops", "5", "--duration-s", "0"]).is_ok());
        let wrap = Wrap::try_parse_from(["bench", "--workload", "a,c", "--no-load"]).unwrap();
        assert_eq!(wrap.bench.workload, vec![Workload::A, Workload::C]);
        assert!(wrap.bench.no_load);
        let wrap = Wrap::try_parse_from(["bench", "--no-load", "--load"]).unwrap();
        assert!(!wrap.bench.no_load);
    }
}
